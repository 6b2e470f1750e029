"""Out-of-sample predicted probabilities, the input confident learning needs, three ways.

* :func:`kfold_pred_probs`: stratified K folds; for each, a fresh model is trained with megzoo's
  trainer on the other folds and predicts the held-out fold with the evaluation preprocessing.
  Works offline and on data far from ImageNet; costs K trainings.
* :func:`probe_pred_probs`: pooled features from a pretrained backbone, once; a standardised
  multinomial logistic regression (scikit-learn) cross-validated over K folds on them. Cheap
  where ImageNet weights fit the data.
* :func:`load_pred_probs`: the user's own out-of-sample probabilities (``.npy``), checked.

Each returns probabilities (N, K) for the images it is given (rows in their order) and, where
the method has them, pooled features (N, D) for near-duplicates and outliers: the probe's
backbone features, or those of the last fold's model for ``kfold``.
"""
import contextlib
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .dataset import CleaningInputError

__all__ = ["stratified_folds", "kfold_pred_probs", "probe_pred_probs", "load_pred_probs", "predict_files",
           "KFoldSettings", "softmax"]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def stratified_folds(labels: np.ndarray, folds: int, seed: int, classes: Sequence[str]) -> np.ndarray:
    """The fold (0..folds-1) of each image, stratified by label (scikit-learn's
    ``StratifiedKFold``, shuffled with ``seed``). Every class needs at least ``folds`` images."""
    from sklearn.model_selection import StratifiedKFold

    if not isinstance(folds, int) or isinstance(folds, bool) or folds < 2:
        raise CleaningInputError(f"folds must be an int >= 2, got {folds!r}")
    counts = np.bincount(labels, minlength=len(classes))
    small = [(classes[i], int(c)) for i, c in enumerate(counts) if c < folds]
    if small:
        name, n = min(small, key=lambda t: t[1])
        raise CleaningInputError(
            f"class {name!r} has {n} usable image(s), fewer than the {folds} folds (every fold holds out images of "
            "every class): " + (f"lower --folds to {n} or add images to it" if n >= 2 else
                                f"add at least {2 - n} image(s) to it (2 folds need 2 images of every class)")
            + (f" ({len(small)} classes are that small)" if len(small) > 1 else ""))
    assignment = np.empty(len(labels), dtype=np.int64)
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, held) in enumerate(split.split(np.zeros(len(labels)), labels)):
        assignment[held] = k
    return assignment


def embed_files(model, files: Sequence[str], preprocess, batch_size: int = 64, progress: bool = False,
                desc: str = "features") -> np.ndarray:
    """Pre-logit features (N, D) float32 of a megzoo model without classifier (``num_classes=0``)
    on image files read with ``preprocess``, run compiled (``megzoo.compile``: ONNX Runtime or
    Lite, 10x or more eager MegEngine on small CPU batches)."""
    from tqdm import tqdm

    from ..inference import compile as compile_model
    from ..transforms import EvalPreprocessor

    model.eval()
    compiled = compile_model(model)
    feats = []
    bar = tqdm(total=len(files), desc=desc, unit="img", file=sys.stderr, disable=not progress, leave=False)
    try:
        with EvalPreprocessor(preprocess, workers=None) as pre:
            for batch in pre.batches(list(files), batch_size):
                out = compiled(batch)
                feats.append(np.asarray(out[0] if isinstance(out, list) else out, dtype=np.float32))
                bar.update(len(batch))
    finally:
        bar.close()
    return np.concatenate(feats)


def predict_files(model, files: Sequence[str], preprocess, batch_size: int = 64, progress: bool = False,
                  desc: str = "predicting") -> Tuple[np.ndarray, np.ndarray]:
    """``(probabilities (N, K), pre-logit features (N, D))`` of a trained megzoo classifier on
    image files: a fresh copy of ``model`` (its weights; not the training-time module, whose
    convolutions the trainer may have patched) without its classifier gives the features
    (:func:`embed_files`), the classifier's weights then give the logits in float64."""
    from ..registry import get_model

    state = {k: np.asarray(v.numpy() if hasattr(v, "numpy") else v) for k, v in model.state_dict().items()}
    clean = get_model(model.model_name, pretrained=False, num_classes=model.num_classes)
    clean.load_state_dict(state, strict=True)
    fc = clean.get_classifier()
    weight, bias = fc.weight.numpy().astype(np.float64), fc.bias.numpy().astype(np.float64).reshape(-1)
    clean.reset_classifier(0)
    feats = embed_files(clean, files, preprocess, batch_size, progress, desc)
    logits = feats.astype(np.float64) @ weight.reshape(weight.shape[0], -1).T + bias
    return softmax(logits), feats


@dataclass
class KFoldSettings:
    """How ``kfold`` trains each fold's model (saved in ``summary.json``). ``input_size`` (px):
    training crop and evaluation size (the whole image, short side resized, centre square);
    ``pretrained``: weights to start from (a tag or file; None: from scratch, offline)."""

    model: str = "resnet18"
    input_size: int = 224
    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.05
    weight_decay: float = 5e-4
    hflip: float = 0.5
    crop_scale: Tuple[float, float] = (0.5, 1.0)
    pretrained: Optional[str] = None
    workers: int = 0
    extra: Dict[str, Any] = field(default_factory=dict)  #: more TrainConfig fields


def kfold_pred_probs(files: Sequence[str], labels: np.ndarray, classes: Sequence[str], folds: int, seed: int,
                     settings: KFoldSettings, work_dir: str, progress: bool = True,
                     log=None) -> Tuple[np.ndarray, np.ndarray, Dict[str, Any]]:
    """K-fold out-of-sample probabilities (module docstring). Each fold's run goes to
    ``work_dir/plan-HASH/fold-K``, HASH naming the files, labels, folds, settings and seed
    (``folds.json`` beside), so an interrupted run resumes where it stopped and a changed one
    starts afresh; returns ``(probs (N, K), features (N, D) from the last fold's model, info)``."""
    from tqdm import tqdm

    from ..train import TrainConfig
    from ..train.data import FolderData, ImageSamples
    from ..train.trainer import Trainer

    import hashlib

    from ..host import atomic_write_text

    labels = np.asarray(labels, dtype=np.int64)
    assignment = stratified_folds(labels, folds, seed, classes)
    plan = {"files": [os.path.abspath(f) for f in files], "labels": labels.tolist(), "folds": assignment.tolist(),
            "settings": asdict(settings), "seed": seed, "classes": list(classes)}
    text = json.dumps(plan, sort_keys=True)
    # one folder per plan: a fold's last.pkl is only ever resumed by the plan that wrote it
    run_dir = os.path.join(work_dir, "plan-" + hashlib.sha256(text.encode()).hexdigest()[:16])
    os.makedirs(run_dir, exist_ok=True)
    atomic_write_text(os.path.join(run_dir, "folds.json"), text + "\n")
    probs = np.zeros((len(files), len(classes)), dtype=np.float64)
    model = None
    accuracies: List[float] = []
    for k in tqdm(range(folds), desc="folds", unit="fold", file=sys.stderr, disable=not progress):
        held = np.flatnonzero(assignment == k)
        kept = np.flatnonzero(assignment != k)
        samples = ImageSamples([(files[i], int(labels[i])) for i in kept], replace_unreadable=True)
        data = FolderData(samples, None, list(classes), f"{len(kept)} images of folds != {k}", None)
        config = TrainConfig(model=settings.model, num_classes=len(classes), pretrained=settings.pretrained,
                             input_size=settings.input_size, resize_size=settings.input_size,
                             crop_scale=tuple(settings.crop_scale), hflip=settings.hflip, epochs=settings.epochs,
                             batch_size=min(settings.batch_size, len(kept)), lr=settings.lr,
                             schedule="cosine", warmup_epochs=min(1.0, settings.epochs / 4),
                             weight_decay=settings.weight_decay, no_bn_decay=True, workers=settings.workers,
                             output=os.path.join(run_dir, f"fold-{k}"), resume=True, seed=seed + k,
                             progress=False, plot=False, **settings.extra)
        with contextlib.redirect_stdout(sys.stderr):  # the trainer's log lines: stdout stays for --json
            trainer = Trainer(config, data=data)
            trainer.fit()
        model = trainer.model
        p, _ = predict_files(model, [files[i] for i in held], trainer.preprocess, progress=False)
        probs[held] = p
        accuracies.append(float((p.argmax(axis=1) == labels[held]).mean()))
        if log:
            log(f"fold {k + 1}/{folds}: held-out top-1 against the given labels {100 * accuracies[-1]:.2f}% "
                f"({len(held)} images)")
    _, features = predict_files(model, files, trainer.preprocess, progress=progress, desc="features")
    info = {"fold_top1_vs_given": accuracies, "train": asdict(settings), "work_dir": os.path.abspath(run_dir)}
    return probs, features, info


def probe_pred_probs(files: Sequence[str], labels: np.ndarray, classes: Sequence[str], folds: int, seed: int,
                     model_name: str, weights, input_size: Optional[int] = None,
                     progress: bool = True) -> Tuple[np.ndarray, np.ndarray, Dict[str, Any]]:
    """Linear-probe out-of-sample probabilities (module docstring): ``(probs, features, info)``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from ..registry import get_model
    from ..transforms import resolve_preprocess

    labels = np.asarray(labels, dtype=np.int64)
    stratified_folds(labels, folds, seed, classes)  # the same size checks as kfold
    backbone = get_model(model_name, pretrained=True if weights in (None, True) else weights, num_classes=0)
    pre = resolve_preprocess(backbone, input_size=input_size)
    features = embed_files(backbone, files, pre, progress=progress)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    probs = cross_val_predict(clf, features, labels, cv=cv, method="predict_proba", n_jobs=1)
    report = getattr(backbone, "load_report", None)
    info = {"preprocess": {"input_size": pre.input_size, "resize_size": pre.resize_size},
            "weights_file": getattr(report, "file", None)}
    return probs, features, info


def load_pred_probs(path: str, n: int, classes: Sequence[str]) -> np.ndarray:
    """The user's probabilities from ``path`` (``.npy``; plain numeric arrays only, nothing
    unpickled), checked to be (n, K) with rows summing to 1; rows of NaN are allowed for images
    that could not be predicted (the caller checks that those are the unreadable ones)."""
    from .label_issues import check_pred_probs

    if not os.path.isfile(path):
        raise CleaningInputError(f"--pred-probs {path} does not exist")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise CleaningInputError(f"{path} is not a plain .npy array of probabilities ({exc}); save it with "
                                 "numpy.save(path, probs) (float array, no objects)") from None
    return check_pred_probs(array, n, classes, what=f"--pred-probs {os.path.basename(path)}", allow_nan_rows=True)
