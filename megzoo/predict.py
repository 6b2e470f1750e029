"""Classify images with a pretrained megzoo model: :class:`Classifier` and :func:`predict`.

    import megzoo
    for p in megzoo.predict(["cat.jpg", "dog.png"], model="resnet50", topk=3):
        print(p.image, [(s.name, round(s.probability, 3)) for s in p.topk])

    clf = megzoo.Classifier("resnet50", weights="tv2_in1k")   # its preprocessing: resize 232, crop 224
    clf.predict(bgr_array)[0].top.name

Images follow :mod:`megzoo.images` (paths, encoded bytes, BGR uint8 arrays). Preprocessing is
the weights' own evaluation preset (:func:`megzoo.eval_transform`), run by the fast batch path
(:class:`megzoo.transforms.EvalPreprocessor`). The network itself is called through one function,
the *runner*: ``runner(batch)`` takes a float32 (N, 3, H, W) numpy array and returns the logits
as an (N, num_classes) array. Two are built in, chosen by ``backend``: ``"compiled"``
(:func:`megzoo.compile` with its own ``backend="auto"``: the faster registered backend on this
machine, several times faster than eager after a compile of a second or a few, see
docs/backends.md; a backend's name, e.g. ``"onnxruntime"`` or ``"lite"``, names the runtime:
:func:`megzoo.inference.backend_names`) and ``"eager"`` (:func:`eager_runner`: the module called
as it is). ``"auto"`` (default) compiles when the model is on the CPU and a
call brings at least :data:`AUTO_COMPILE_MIN_IMAGES` images (or a compiled graph exists already),
so classifying one photo does not wait for a compile and a folder does not wait for eager
MegEngine. Any callable with the runner contract can replace both (``runner=``).
"""
from dataclasses import asdict, dataclass, field
from typing import Callable, List, Optional, Sequence

import numpy as np

from .data import imagenet1k_categories, imagenet1k_wnids
from .device import is_cpu_device, quiet_device, using_device
from .images import describe_source
from .inference import backend_names
from .inference import compile as compile_model
from .inference.backends import resolve_backend
from .inference.backends.base import check_precision_name, is_int8, run_precision
from .inference.backends.registry import NameView
from .inference.model_files import or_list
from .inference.threads import MegEngineThreadError, on_megengine_thread, thread_message
from .metrics import softmax
from .registry import get_model
from .weights.sidecar import read_weights_metadata as checkpoint_metadata
from .transforms import EvalPreprocessor, as_image_list, resolve_preprocess
from .weights.errors import WeightsError

__all__ = ["Runner", "eager_runner", "compiled_runner", "checkpoint_metadata", "ClassScore", "Prediction", "Classifier",
           "predict", "softmax", "class_names", "BACKENDS", "AUTO_COMPILE_MIN_IMAGES"]

#: ``runner(batch)``: float32 (N, 3, H, W) numpy array -> (N, num_classes) logits (numpy array)
Runner = Callable[[np.ndarray], np.ndarray]

#: ``compiled`` = :func:`megzoo.compile`'s ``auto`` runtime; a registered backend's name names it
#: (both follow :func:`megzoo.inference.register_backend`)
COMPILED_BACKENDS = NameView(lambda: ("compiled",) + backend_names())
BACKENDS = NameView(lambda: ("auto",) + tuple(COMPILED_BACKENDS) + ("eager",))
#: with ``backend="auto"``, a call with at least this many images compiles the model first: about
#: where a compile pays for itself against eager MegEngine (docs/performance.md)
AUTO_COMPILE_MIN_IMAGES = 12


def eager_runner(model) -> Runner:
    """The default runner: ``model`` (a MegEngine module, put in eval mode) called eagerly, its
    input placed on the device of the model's parameters (whatever the default device is now)."""
    import megengine

    model.eval()
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else None

    def run(batch: np.ndarray) -> np.ndarray:
        return model(megengine.Tensor(batch, device=device)).numpy()

    run.model = model  # type: ignore[attr-defined]
    return run


def compiled_runner(model, threads: Optional[int] = None, runtime: str = "auto",
                    input_shape: Optional[Sequence[int]] = None, precision: str = "fp32") -> Runner:
    """A runner on :func:`megzoo.compile` of ``model`` (compiled for ``input_shape`` now, else at
    its first batch; later batch sizes reuse the graph). ``threads``: default the CPUs this
    process may use; ``runtime``: ``compile``'s ``backend`` (``"auto"`` or a registered backend);
    ``precision``: ``compile``'s (``"fp32"`` or ``"bf16"``)."""

    compiled = compile_model(model, input_shape=input_shape, threads=threads, backend=runtime, precision=precision)

    def run(batch: np.ndarray) -> np.ndarray:
        return compiled(np.ascontiguousarray(batch, dtype=np.float32))

    run.compiled = compiled  # type: ignore[attr-defined]
    return run


def _on_cpu(model) -> bool:
    first = next(iter(model.parameters()), None)
    return first is None or is_cpu_device(first.device)


def class_names(num_classes: int):
    """(names, wnids) for ``num_classes`` outputs: ImageNet-1k's for 1000, else ``"class N"`` and None."""
    if num_classes == 1000:
        return imagenet1k_categories(), imagenet1k_wnids()
    return [f"class {i}" for i in range(num_classes)], None


@dataclass(frozen=True)
class ClassScore:
    index: int  #: class index (classifier output)
    name: str  #: e.g. "tabby"
    probability: float  #: softmax probability
    wnid: Optional[str] = None  #: WordNet id for ImageNet-1k classes, e.g. "n02123045"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Prediction:
    image: str  #: the path, or "<bytes #i>" / "<array #i>"
    topk: List[ClassScore] = field(default_factory=list)  #: best first

    @property
    def top(self) -> ClassScore:
        return self.topk[0]

    def as_dict(self) -> dict:
        return {"image": self.image, "topk": [s.as_dict() for s in self.topk]}


class Classifier:
    """A model, its evaluation preprocessing and its class names, ready to classify images.

    Args:
        model: a registered model name (e.g. ``"resnet50"``) or a built megzoo model.
        weights: for a model name: None (its default pretrained weights), a tag (``"tv2_in1k"``),
            ``"ARCH.TAG"``, a path/URL of a checkpoint, or False (random initialisation); ignored
            for a built model.
        num_classes: classifier size for a checkpoint of your own (default 1000).
        preprocess: None (the weights' record; megzoo's defaults for checkpoint files), or what
            :func:`megzoo.transforms.resolve_preprocess` takes (name, Weights, Preprocess, dict).
        runner: the function computing logits (see the module docstring); replaces ``backend``.
        backend: ``"auto"`` (default), ``"compiled"``, a registered backend (``"onnxruntime"``,
            ``"lite"``, ...: :data:`BACKENDS`) or ``"eager"``: how the model is run (module
            docstring). ``threads``: threads of the compiled path (default: all usable CPUs).
            A named compiled runtime is compiled when the Classifier is made, for its preprocessing's
            input size. Threads: MegEngine runs in the main thread only, so in another thread predict
            needs such a compiled model, made in the main thread (docs/performance.md).
        categories: class names, index -> name (default: ImageNet-1k's for 1000 classes).
        workers: decode threads (0: none; None: one per core, up to 8).
        batch_size: images per runner call.
        device: where a model built from its name goes (``"cpu"``, ``"gpu0"``, ...); None:
            ``$MEGZOO_DEVICE``, else a default device set by the program, else the GPU when usable
            and the CPU otherwise, chosen without MegEngine's CUDA probing messages (see
            :func:`megzoo.device.quiet_device`). MegEngine's default device is left as it is; a
            built model stays where it is, and inputs go to the device of its parameters.
        progress: show the weights download progress bar (and the calibration's).
        int8: run the model quantized to int8 (:func:`megzoo.quantize`): calibrated on
            ``calibration`` (a folder of images, read with this classifier's preprocessing;
            ``observer`` as there), or loaded as it is from a ``megzoo train --qat`` checkpoint
            given as ``weights`` (no calibration needed). An int8 model given as ``model`` is used as it is.
        precision: ``"fp32"`` (default) or ``"bf16"``: the compiled model's arithmetic
            (:func:`megzoo.compile`; bf16 on CPUs with BF16 and a backend that runs it, else refused
            when the Classifier is made). With bf16 the model is compiled when the Classifier is made
            (``"auto"`` then means ``"compiled"``); ``backend="eager"`` runs fp32 only and is refused.

    A checkpoint saved by ``megzoo train`` (``best.pkl`` with its ``best.json``) brings its own
    number of classes, class names and preprocessing (:func:`checkpoint_metadata`); explicit
    ``num_classes``, ``preprocess`` and ``categories`` still win.
    """

    def __init__(self, model="resnet50", weights=None, *, num_classes: Optional[int] = None, preprocess=None,
                 runner: Optional[Runner] = None, categories: Optional[Sequence[str]] = None,
                 workers: Optional[int] = 0, batch_size: int = 32, device: Optional[str] = None,
                 progress: bool = True, backend: str = "auto", threads: Optional[int] = None,
                 int8: bool = False, calibration=None, observer: Optional[str] = None, precision: str = "fp32"):
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        check_precision_name(precision)
        if precision != "fp32" and (backend == "eager" or runner is not None):
            raise ValueError(f"precision={precision!r} is run by a compiled backend; backend='eager' and runner= "
                             "run the model as it is: use backend='auto' or a compiled backend")
        if precision != "fp32" and backend == "auto":
            backend = "compiled"  # never eager: it would run fp32
        if precision != "fp32":  # the reason now, before weights are read, where nothing runs it here
            resolve_backend("auto" if backend == "compiled" else backend, precision=precision)
        self.backend = backend
        self.precision = precision
        self.threads = threads
        self.batch_size = batch_size
        meta = checkpoint_metadata(weights) if isinstance(model, str) else None
        if meta:
            num_classes = meta.get("num_classes") if num_classes is None else num_classes
            preprocess = meta.get("preprocess") if preprocess is None else preprocess
            classes = meta.get("classes")
            if categories is None and classes and len(classes) == num_classes:
                categories = classes
        from .quantization import is_qat_checkpoint, load_qat_checkpoint

        qat = int8 and isinstance(model, str) and is_qat_checkpoint(weights)
        if isinstance(model, str):
            with using_device(quiet_device(device)):
                self.model = (load_qat_checkpoint(weights, model, num_classes) if qat
                              else _build(model, weights, num_classes, progress))
        else:
            self.model = model
        report = getattr(self.model, "load_report", None)
        #: where the weights came from (registered name, path or URL), None for untrained models
        self.weights = getattr(report, "source", None)
        self.num_classes = int(getattr(self.model, "num_classes", 0) or 0)
        self.preprocess = resolve_preprocess(self.model if preprocess is None else preprocess)
        if int8 and getattr(self.model, "precision", None) != "int8":
            self.model = _quantized(self.model, calibration, self.preprocess, observer, progress)
        elif calibration is not None and not int8:
            raise ValueError("calibration images are for int8=True (--int8)")
        self.preprocessor = EvalPreprocessor(self.preprocess, workers=workers)
        self._custom_runner = runner
        self._runners = {}  # "eager" / "compiled", made when first used; a named runtime now, in this thread
        if runner is None and backend in COMPILED_BACKENDS:  # so predict may run in other threads (docs/performance.md)
            size = int(self.preprocess.input_size)  # every image is cropped to it: one graph, compiled now
            self._runners[backend] = compiled_runner(self.model, threads, "auto" if backend == "compiled" else backend,
                                                     (1, int(getattr(self.model, "in_channels", 3)), size, size),
                                                     precision)
        names, wnids = class_names(self.num_classes)
        if categories is not None:
            names, wnids = list(categories), None
        self.categories: List[str] = list(names)
        self.wnids: Optional[List[str]] = wnids

    @property
    def precision_run(self) -> str:
        """The arithmetic the model runs in: ``"int8"`` for a quantized model, else ``precision``."""
        return run_precision(is_int8(self.model), self.precision)

    @property
    def model_name(self) -> str:
        return getattr(self.model, "model_name", type(self.model).__name__)

    def __repr__(self) -> str:
        return f"Classifier({self.model_name!r}, weights={self.weights!r}, {self.preprocessor!r})"

    def backend_for(self, images: int) -> str:
        """The backend a job of ``images`` images runs on: ``"custom"`` (a ``runner=``),
        ``"compiled"`` (or the registered backend asked for) or ``"eager"``."""
        if self._custom_runner is not None:
            return "custom"
        if self.backend != "auto":
            return self.backend
        if "compiled" in self._runners or (images >= AUTO_COMPILE_MIN_IMAGES and on_megengine_thread()
                                           and _on_cpu(self.model)):
            return "compiled"
        return "eager"

    def runner_for(self, images: int) -> Runner:
        """The runner for a job of ``images`` images (see :meth:`backend_for`)."""
        kind = self.backend_for(images)
        if kind == "custom":
            return self._custom_runner
        if (kind == "eager" or kind not in self._runners) and not on_megengine_thread():
            raise MegEngineThreadError(thread_message(
                f"Classifier.predict {'running the model eagerly' if kind == 'eager' else 'compiling the model'}",
                f"make the Classifier in the main thread with backend={or_list([repr(n) for n in backend_names()])} "
                "(compiled there for its input size), then predict from any thread"))
        if kind not in self._runners:
            if kind in COMPILED_BACKENDS:
                runtime = "auto" if kind == "compiled" else kind
                self._runners[kind] = compiled_runner(self.model, self.threads, runtime, precision=self.precision)
            else:
                self._runners[kind] = eager_runner(self.model)
        return self._runners[kind]

    @property
    def runner(self) -> Runner:
        """The runner a batch of ``batch_size`` images would use."""
        return self.runner_for(self.batch_size)

    def logits(self, images) -> np.ndarray:
        """Logits (N, num_classes) of ``images`` (one image or a list)."""
        items = as_image_list(images)
        chunks = [self.run(batch, total=len(items)) for batch in self.preprocessor.batches(items, self.batch_size)]
        if not chunks:
            return np.zeros((0, self.num_classes), dtype=np.float32)
        return np.concatenate(chunks)

    def run(self, batch: np.ndarray, total: Optional[int] = None) -> np.ndarray:
        """The runner on one preprocessed batch, checked: (N, C) logits as a numpy array.
        ``total``: the images of the whole job this batch belongs to (chooses the backend with
        ``"auto"``; default the batch's own size)."""
        logits = np.asarray(self.runner_for(batch.shape[0] if total is None else total)(batch))
        if logits.ndim != 2 or logits.shape[0] != batch.shape[0]:
            raise ValueError(f"the runner returned shape {logits.shape} for a batch of {batch.shape[0]}; "
                             "it must return (N, num_classes) logits")
        return logits

    def probabilities(self, images) -> np.ndarray:
        """Softmax probabilities (N, num_classes), float64."""
        return softmax(self.logits(images))

    def predict(self, images, topk: int = 5) -> List[Prediction]:
        """The ``topk`` classes of each image (one image or a list), best first; ties keep the
        lower class index first. Always returns a list, one :class:`Prediction` per image."""
        items = as_image_list(images)
        if not isinstance(topk, int) or isinstance(topk, bool) or topk < 1:
            raise ValueError(f"topk must be a positive int, got {topk!r}")
        probs = self.probabilities(items)
        k = min(topk, probs.shape[1])
        results = []
        for i, (item, row) in enumerate(zip(items, probs)):
            order = np.argsort(-row, kind="stable")[:k]
            scores = [ClassScore(int(c), self._name(int(c)), float(row[c]), self.wnids[c] if self.wnids else None)
                      for c in order]
            results.append(Prediction(describe_source(item, i), scores))
        return results

    __call__ = predict

    def _name(self, index: int) -> str:
        return self.categories[index] if index < len(self.categories) else f"class {index}"

    def close(self) -> None:
        self.preprocessor.close()

    def __enter__(self) -> "Classifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _quantized(model, calibration, preprocess, observer: Optional[str], progress: bool):
    """``model`` quantized on ``calibration`` (a folder) with ``preprocess``."""
    from .quantization import DEFAULT_OBSERVER, quantize

    if calibration is None:
        raise ValueError("int8 needs calibration images (calibration=DIR, --calibration DIR: e.g. the training "
                         "images), or a QAT checkpoint (megzoo train --qat) as the weights")
    return quantize(model, calibration, observer=observer or DEFAULT_OBSERVER, preprocess=preprocess, progress=progress)


def _build(name: str, weights, num_classes: Optional[int], progress: bool):
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    pretrained = True if weights is None else weights
    model = get_model(name, pretrained=pretrained, progress=progress, **kwargs)
    report = model.load_report
    if report is not None and report.reinitialized:
        raise WeightsError(f"{report.source}: the checkpoint's classifier does not fit {name} with "
                           f"num_classes={model.num_classes} ({', '.join(report.reinitialized)} would be random); "
                           "give the number of classes it was trained with (num_classes=N, --num-classes N)")
    return model


def predict(images, model="resnet50", weights=None, topk: int = 5, **kwargs) -> List[Prediction]:
    """Classify ``images`` (one image or a list: paths, bytes, BGR uint8 arrays) with ``model``
    and ``weights`` (see :class:`Classifier`, which takes the other keywords); returns one
    :class:`Prediction` per image with the ``topk`` classes and their probabilities."""
    with Classifier(model, weights, **kwargs) as classifier:
        return classifier.predict(images, topk=topk)

