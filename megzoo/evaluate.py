"""Top-1/top-5 accuracy of a classifier on an image folder: :func:`evaluate` (``megzoo eval``).

The folder holds one sub-folder per class, images anywhere below it (``DIR/CLASS/**/IMAGE``,
files ending in :data:`megzoo.images.IMAGE_EXTENSIONS`), listed by the trainer's lister
(:func:`megzoo.data.folders.list_image_folder`: hidden folders and files left out, links to
folders followed only inside their class folder, so a link loop ends and a link to a parent
files nothing under the wrong class). Class folders map to classifier outputs by ``labels``:

* ``"wnid"``: folders named by WordNet id (the ImageNet validation layout, ``n01440764`` ...)
  map through the shipped ImageNet-1k list (:func:`megzoo.data.imagenet1k_wnids`); any subset
  of the 1000 classes may be present; needs a 1000-class model;
* ``"index"``: folders named by the class index (``0`` ... ``num_classes - 1``; ``007`` is 7);
* ``"sorted"``: the i-th folder in sorted order is class i (``ImageFolder``'s own rule);
* ``"auto"`` (default): ``wnid`` when every folder is an ImageNet-1k WordNet id, else ``index``
  when every folder name is a number, else ``sorted`` when there are exactly ``num_classes``
  folders; otherwise an error explains the choices.

Accuracy is counted with :func:`megzoo.metrics.topk_correct` per batch; the result keeps the
exact counts. Images are preprocessed by the weights' evaluation preset on the fast batch path,
decoded by a thread pool while the model runs.
"""
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from .data import imagenet1k_wnids
from .data.folders import folder_listing
from .metrics import topk_correct
from .predict import Classifier

__all__ = ["EvalResult", "find_samples", "evaluate", "LABEL_MODES", "spread_indices"]

LABEL_MODES = ("auto", "wnid", "index", "sorted")


@dataclass
class EvalResult:
    model: str  #: model name
    weights: Optional[str]  #: weight name, path or URL the model was loaded from
    data: str  #: the evaluated folder
    labels: str  #: how folders mapped to classes: "wnid", "index" or "sorted"
    classes: int  #: class folders holding at least one evaluated image
    images: int  #: images evaluated
    top1_correct: int
    top5_correct: int  #: counted at k = min(5, num_classes)
    top1: float  #: top1_correct / images
    top5: float
    seconds: float  #: wall time of the evaluation loop
    images_per_second: float
    preprocess: Dict = field(default_factory=dict)  #: the evaluation preset used
    backend: str = "eager"  #: how the model ran: "compiled", a registered backend, "eager" or "custom" (a runner=)
    runtime: Optional[str] = None  #: the registered backend of the compiled model (None when not compiled)
    compile_seconds: float = 0.0  #: of ``seconds``, the time spent compiling (the compiled backend)
    precision: str = "fp32"  #: the model's arithmetic: "fp32", "bf16" (asked for) or "int8" (a quantized model)

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (f"top-1 {self.top1:.3%} ({self.top1_correct}/{self.images})   "
                f"top-5 {self.top5:.3%} ({self.top5_correct}/{self.images})")


def _label_map(root: str, names: List[str], labels: str, num_classes: int) -> Tuple[str, Dict[str, int]]:
    if labels not in LABEL_MODES:
        raise ValueError(f"labels must be one of {', '.join(LABEL_MODES)}, got {labels!r}")
    wnids = {wnid: i for i, wnid in enumerate(imagenet1k_wnids())}
    if labels == "auto":
        if all(n in wnids for n in names):
            labels = "wnid"
        elif all(re.fullmatch(r"\d+", n) for n in names):
            labels = "index"
        elif len(names) == num_classes:
            labels = "sorted"
        else:
            raise ValueError(
                f"cannot tell which of the model's {num_classes} classes the {len(names)} class folders of {root} "
                f"are (e.g. {names[0]!r}): name them by ImageNet WordNet id (n01440764, ...) or by class index "
                f"(0 ... {num_classes - 1}), or pass --labels sorted (labels='sorted') to take them as classes "
                f"0 ... {len(names) - 1} in sorted order")
    if labels == "wnid":
        if num_classes != 1000:
            raise ValueError("folders named by WordNet id need a 1000-class ImageNet model; "
                             f"this one has {num_classes}")
        unknown = [n for n in names if n not in wnids]
        if unknown:
            raise ValueError(f"{len(unknown)} class folders of {root} are not ImageNet-1k WordNet ids "
                             f"(first: {', '.join(unknown[:3])})")
        return labels, {n: wnids[n] for n in names}
    if labels == "index":
        bad = [n for n in names if not re.fullmatch(r"\d+", n) or int(n) >= num_classes]
        if bad:
            raise ValueError(f"{len(bad)} class folders of {root} are not class indices 0 ... {num_classes - 1} "
                             f"(first: {', '.join(bad[:3])})")
        return labels, {n: int(n) for n in names}
    if len(names) > num_classes:
        raise ValueError(f"{root} has {len(names)} class folders but the model only {num_classes} classes")
    return labels, {n: i for i, n in enumerate(names)}


def find_samples(root, labels: str = "auto", num_classes: int = 1000) -> Tuple[List[Tuple[str, int]], str]:
    """``([(path, label), ...], labels_used)`` for the image folder ``root`` (see the module
    docstring), in the lister's order (class folder, then folder by folder with names sorted).
    Says so once on stderr when links leaving a class folder were skipped."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise ValueError(f"{root}: not a directory (give a folder with one sub-folder per class)")
    listing = folder_listing(root)
    names = listing.classes
    if not names:
        raise ValueError(f"{root} has no class sub-folders (expected {root}/CLASS/IMAGE files)")
    mode, mapping = _label_map(root, names, labels, num_classes)
    listing.warn()
    samples = [(path, mapping[names[label]]) for path, label in listing.samples]
    if not samples:
        raise ValueError(f"no images under {root} (expected {root}/CLASS/IMAGE files ending in .jpg, .png, ...)")
    return samples, mode


def spread_indices(total: int, limit: Optional[int]) -> List[int]:
    """``limit`` indices spread evenly over ``range(total)``: ``i * total // limit`` (all when
    ``limit`` is None or not smaller), so that a limited run still samples every class."""
    if limit is None or limit >= total:
        return list(range(total))
    if limit < 1:
        raise ValueError(f"limit must be a positive int, got {limit!r}")
    return [i * total // limit for i in range(limit)]


def evaluate(data, model="resnet50", weights=None, *, batch_size: int = 32, workers: Optional[int] = None,
             limit: Optional[int] = None, labels: str = "auto", num_classes: Optional[int] = None, runner=None,
             preprocess=None, progress: bool = False, device: Optional[str] = None, classifier=None,
             backend: str = "auto", threads: Optional[int] = None, precision: str = "fp32") -> EvalResult:
    """Top-1/top-5 accuracy of ``model`` (name or built model) with ``weights`` on the image folder
    ``data``. ``limit`` evaluates that many images spread over the folder (see
    :func:`spread_indices`); ``labels`` is how class folders map to outputs (module docstring);
    ``workers`` decode threads (None: one per core, up to 8); ``backend`` (:data:`megzoo.predict.BACKENDS`:
    ``auto``, ``compiled``, a registered backend, ``eager``) and ``threads`` choose how the model
    runs and ``runner`` replaces both (see :mod:`megzoo.predict`; ``auto`` compiles on the CPU for
    :data:`~megzoo.predict.AUTO_COMPILE_MIN_IMAGES` images or more); ``progress`` shows a tqdm bar
    with images/s on stderr; ``precision``: the compiled model's, ``"fp32"`` or ``"bf16"`` (see
    :class:`megzoo.Classifier`); ``classifier`` reuses a :class:`megzoo.Classifier` instead of building one."""
    from tqdm import tqdm

    owned = classifier is None
    if not owned and precision != classifier.precision:
        raise ValueError(f"precision={precision!r} differs from the classifier's ({classifier.precision!r}): "
                         "a classifier runs in the precision it was made with; leave precision out")
    if owned:
        classifier = Classifier(model, weights, num_classes=num_classes, preprocess=preprocess, runner=runner,
                                workers=workers, batch_size=batch_size, device=device, progress=progress,
                                backend=backend, threads=threads, precision=precision)
    try:
        samples, mode = find_samples(data, labels, classifier.num_classes)
        samples = [samples[i] for i in spread_indices(len(samples), limit)]
        paths = [path for path, _ in samples]
        targets = np.array([label for _, label in samples], dtype=np.int32)
        k5 = min(5, classifier.num_classes)
        correct1 = correct5 = done = 0
        bar = tqdm(total=len(paths), unit="img", desc="eval", file=sys.stderr, disable=None if progress else True,
                   dynamic_ncols=True, smoothing=0.1)
        backend = classifier.backend_for(len(paths))
        compiled = getattr(classifier.runner_for(len(paths)), "compiled", None)
        # a reused classifier's earlier compiles are not this job's; one made here may have compiled
        # its input size already (a named runtime compiles when the Classifier is made): that counts
        compiles_before = len(compiled.compile_log) if compiled is not None and not owned else 0
        made_here = sum(i.total_s for i in compiled.compile_log) if compiled is not None and owned else 0.0
        start = time.perf_counter() - made_here
        with bar:
            for batch in classifier.preprocessor.batches(paths, classifier.batch_size):
                n = batch.shape[0]
                logits = classifier.run(batch, total=len(paths))
                hits1, hits5 = topk_correct(logits, targets[done:done + n], (1, k5))
                correct1 += hits1
                correct5 += hits5
                done += n
                bar.set_postfix(top1=f"{correct1 / done:.2%}", top5=f"{correct5 / done:.2%}", refresh=False)
                bar.update(n)
        seconds = time.perf_counter() - start
        compile_seconds = (sum(i.total_s for i in compiled.compile_log[compiles_before:]) if compiled is not None
                           else 0.0)
    finally:
        if owned:
            classifier.close()
    return EvalResult(
        model=classifier.model_name, weights=classifier.weights, data=os.fspath(data), labels=mode,
        classes=len(set(targets.tolist())), images=done, top1_correct=correct1, top5_correct=correct5,
        top1=correct1 / done, top5=correct5 / done, seconds=seconds,
        images_per_second=done / seconds if seconds > 0 else float("inf"),
        preprocess=asdict(classifier.preprocess), backend=backend, compile_seconds=compile_seconds,
        runtime=getattr(compiled, "backend", None),
        precision=classifier.precision_run)
