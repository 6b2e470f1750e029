"""``megzoo.find_label_issues``: the whole cleaning pass over an image folder, and its outputs.

1. list the images (:func:`~megzoo.cleaning.dataset.scan_folder`) and read each once
   (:mod:`~megzoo.cleaning.health`: unreadable, grayscale among colour, odd size, near-constant,
   exact duplicates);
2. out-of-sample probabilities for the readable ones (:mod:`~megzoo.cleaning.probabilities`:
   ``kfold``, ``probe`` or ``given``), with features where the method has them;
3. label issues, label quality and the dataset's health by confident learning, near-duplicates
   and outliers from the features (:mod:`~megzoo.cleaning.label_issues`);
4. with ``out``, the reports (:mod:`~megzoo.cleaning.report`).
"""
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .dataset import CleaningInputError, LabeledImages, scan_folder
from .health import ImageHealth, check_images, duplicate_groups, health_flags
from .label_issues import LabelIssues, argmax_issues, label_issues, near_duplicates, outliers, require_cleanlab
from .probabilities import KFoldSettings, kfold_pred_probs, load_pred_probs, probe_pred_probs
from .report import (DEFAULT_EXCLUDE_FLAGS, FLAGS, contact_sheet, sort_rows, write_exclude, write_issues_csv,
                     write_summary)

__all__ = ["find_label_issues", "CleaningResult", "METHODS"]

METHODS = ("kfold", "probe", "given")


@dataclass
class CleaningResult:
    """What :func:`find_label_issues` found. ``images``: the images examined; ``rows``: one
    dict per flagged image (the ``issues.csv`` columns); ``flags``: flag -> bool (N,);
    ``pred_probs``: (N, K) out-of-sample probabilities (NaN rows for unreadable images);
    ``labels``: the :class:`LabelIssues` of the readable images (``readable`` maps them back);
    ``summary``: ``summary.json``'s content; ``files``: the reports written (name -> path)."""

    images: LabeledImages
    rows: List[Dict]
    flags: Dict[str, np.ndarray]
    pred_probs: np.ndarray
    labels: LabelIssues
    readable: np.ndarray
    summary: Dict[str, Any]
    files: Dict[str, str] = field(default_factory=dict)

    @property
    def label_issue_paths(self) -> List[str]:
        """Absolute paths of the images with a likely wrong label, worst first."""
        return [self.images.paths[self.readable[i]] for i in self.labels.ranked]


def _versions() -> Dict[str, str]:
    import cv2
    import numpy

    from .._version import __version__

    found = {"megzoo": __version__, "numpy": numpy.__version__, "opencv": cv2.__version__,
             "python": platform.python_version()}
    for name in ("cleanlab", "sklearn", "megengine"):
        module = sys.modules.get(name)
        if module is not None:
            found["scikit-learn" if name == "sklearn" else name] = getattr(module, "__version__", "?")
    return found


def _file_sha256(path: Optional[str]) -> Optional[str]:
    if not path or not os.path.isfile(path):
        return None
    from ..weights.cache import file_sha256

    return file_sha256(path)


def _quiet(message: str):
    """The default ``log``: say nothing."""


@dataclass(frozen=True)
class _Settings:
    """How probabilities are found (:func:`find_label_issues`'s arguments of the same names)."""

    method: str
    folds: int
    model: str
    weights: Any
    input_size: Optional[int]
    epochs: int
    pred_probs: Optional[str]
    seed: int
    progress: bool
    train_settings: Optional[Dict[str, Any]]
    exclude_flags: Sequence[str]


@dataclass
class _Readable:
    """The readable images and the classes they cover. ``index``: (R,) indices into the images;
    ``present``: (P,) ascending indices of the classes with a readable image; ``labels``: (R,) labels
    as indices into ``present``; ``empty``: names of the classes left with no readable image."""

    index: np.ndarray
    present: np.ndarray
    labels: np.ndarray
    empty: List[str]


@dataclass
class _Probabilities:
    """Out-of-sample probabilities of the readable images: ``probs`` (R, P) over the present classes;
    ``features`` (R, D) where the method has them; ``info`` for the summary; ``weights_file`` to hash."""

    probs: np.ndarray
    features: Optional[np.ndarray]
    info: Dict[str, Any]
    weights_file: Optional[str] = None


@dataclass
class _Flags:
    """Per-image findings over all N images: ``flag`` (flag -> bool (N,)), each image's ``notes``,
    the copy it duplicates (``duplicate_of``), the exact-duplicate ``groups`` (``conflicts``: how
    many mix labels or splits) and the near-duplicate pairs ``(a, b, cosine)`` (readable indices)."""

    flag: Dict[str, np.ndarray]
    notes: Dict[int, List[str]] = field(default_factory=dict)
    duplicate_of: Dict[int, str] = field(default_factory=dict)
    groups: List[List[int]] = field(default_factory=list)
    conflicts: int = 0
    near_pairs: List = field(default_factory=list)

    def note(self, i: int, text: str):
        self.notes.setdefault(i, []).append(text)


def _check_arguments(method: str, pred_probs: Optional[str], exclude_flags: Sequence[str]):
    """Refuse a bad combination of arguments before anything is read."""
    if method not in METHODS:
        raise CleaningInputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "given" and pred_probs is None:
        raise CleaningInputError("method 'given' needs the probabilities: --pred-probs FILE.npy (N images x K classes)")
    if pred_probs is not None and method != "given":
        raise CleaningInputError("--pred-probs goes with --method given")
    unknown = sorted(set(exclude_flags) - set(FLAGS))
    if unknown:
        raise CleaningInputError(f"exclude_flags {', '.join(unknown)} unknown: choose from {', '.join(FLAGS)}")


def _check_given(given: np.ndarray, readable: np.ndarray, images: LabeledImages):
    """Refuse given probabilities (N, K) with a NaN row for a readable image."""
    missing = [i for i in readable if np.isnan(given[i]).any()]
    if missing:
        raise CleaningInputError(f"--pred-probs has no probabilities (NaN) for {len(missing)} readable image(s), "
                                 f"the first {images.relative(missing[0])}: give a row for every readable image "
                                 "(NaN rows only for unreadable ones)")


def _read_images(data: str, settings: _Settings, say):
    """List the images of ``data`` and read each once (given probabilities are loaded and checked
    around the slow read). Returns the :class:`LabeledImages`, their :class:`ImageHealth` and the
    given probabilities (N, K) or None."""
    images = scan_folder(data)
    n = len(images)
    given = None
    if settings.method == "given":
        given = load_pred_probs(settings.pred_probs, n, images.classes)  # checked before the slow part
    health = check_images(images.paths, progress=settings.progress)
    readable = np.flatnonzero(health.readable)
    if len(readable) == 0:
        raise CleaningInputError(f"no image of {images.root} can be read ({health.problem[0]}, ...)")
    say(f"{n} images in {len(images.classes)} classes, {n - len(readable)} unreadable")
    if given is not None:
        _check_given(given, readable, images)
    return images, health, given


def _readable_classes(images: LabeledImages, readable: np.ndarray, say) -> _Readable:
    """The classes the label analysis scores: those with a readable image (two or more needed).

    Classes left with no readable image (all their files broken) are flagged through their files
    and left out of the label analysis, which needs examples of every class it scores."""
    classes = images.classes
    counts = np.bincount(images.labels[readable], minlength=len(classes))
    present = np.flatnonzero(counts > 0)
    if len(present) < 2:
        raise CleaningInputError(f"only {len(present)} class of {images.root} has readable images: label issues need "
                                 "two classes or more")
    empty = [classes[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        say(f"class folder(s) {', '.join(empty[:5])} hold no readable image: their files are reported as "
            "unreadable, the label analysis uses the other classes")
    to_present = np.full(len(classes), -1, dtype=np.int64)
    to_present[present] = np.arange(len(present))
    return _Readable(readable, present, to_present[images.labels[readable]], empty)


def _kfold_probabilities(files: List[str], used: List[str], sizes: np.ndarray, readable: _Readable,
                         settings: _Settings, out: Optional[str], say) -> _Probabilities:
    """kfold: fresh models trained on all folds but one, each predicting its held-out fold.

    ``sizes``: (R,) short side of each readable image in px (the default input size is their median,
    32 to 224). The fold runs go to ``out/folds`` (resumable), else to a temporary folder removed here."""
    size = settings.input_size or int(min(224, max(32, np.median(sizes))))
    kfold = KFoldSettings(model=settings.model, input_size=size, epochs=settings.epochs, pretrained=settings.weights,
                          **(settings.train_settings or {}))
    temporary = None
    if out:
        work = os.path.join(out, "folds")
    else:
        work = temporary = tempfile.mkdtemp(prefix="megzoo-clean-")
    info: Dict[str, Any] = {}
    try:
        probs, features, info = kfold_pred_probs(files, readable.labels, used, settings.folds, settings.seed, kfold,
                                                 work, progress=settings.progress, log=say)
    finally:
        if temporary is not None:  # nothing to resume from without --out
            shutil.rmtree(temporary, ignore_errors=True)
            info.pop("work_dir", None)
    weights = settings.weights
    weights_file = weights if isinstance(weights, str) and os.path.isfile(weights) else None
    return _Probabilities(probs, features, info, weights_file)


def _given_probabilities(given: np.ndarray, readable: _Readable) -> _Probabilities:
    """given: the rows (N, K) of the readable images, over the present classes, renormalised."""
    probs = given[readable.index][:, readable.present]
    probs = probs / np.maximum(probs.sum(axis=1, keepdims=True), 1e-12)
    return _Probabilities(probs, None, {})


def _out_of_sample(images: LabeledImages, health: ImageHealth, readable: _Readable, given: Optional[np.ndarray],
                   settings: _Settings, out: Optional[str], say) -> _Probabilities:
    """Out-of-sample probabilities of the readable images by ``settings.method``."""
    if settings.method == "given":
        return _given_probabilities(given, readable)
    files = [images.paths[i] for i in readable.index]
    used = [images.classes[i] for i in readable.present]
    if settings.method == "kfold":
        sizes = np.minimum(np.asarray(health.height)[readable.index], np.asarray(health.width)[readable.index])
        return _kfold_probabilities(files, used, sizes, readable, settings, out, say)
    probs, features, info = probe_pred_probs(files, readable.labels, used, settings.folds, settings.seed,
                                             settings.model, settings.weights, input_size=settings.input_size,
                                             progress=settings.progress)
    return _Probabilities(probs, features, info, info.get("weights_file"))


def _analyse_labels(images: LabeledImages, readable: _Readable, probs: np.ndarray):
    """Confident learning over the present classes, its answer mapped back to all K classes.

    Returns the :class:`LabelIssues` (suggested classes index all classes), the argmax baseline's
    flags (R,) and the probabilities (R, K), zero for the classes left out."""
    used = [images.classes[i] for i in readable.present]
    found = label_issues(readable.labels, probs, used)
    baseline = argmax_issues(readable.labels, probs)
    full = np.zeros((len(readable.index), len(images.classes)))
    full[:, readable.present] = probs
    found.suggested = readable.present[found.suggested]  # back to indices into all classes
    return found, baseline, full


def _health_findings(health: ImageHealth, n: int) -> _Flags:
    """The flags OpenCV's checks raise (unreadable, grayscale, odd size, near-constant), with their notes."""
    flags = _Flags({name: np.zeros(n, dtype=bool) for name in FLAGS})
    checked = health_flags(health)
    for name in ("unreadable", "grayscale", "odd_size", "near_constant"):
        flags.flag[name] = checked[name]
    for i, problem in enumerate(health.problem):
        if problem:
            flags.note(i, problem)
    return flags


def _flag_duplicates(flags: _Flags, images: LabeledImages, health: ImageHealth):
    """Flag exact copies: all but the first of each group, or all of a group whose copies differ
    in label or split (a conflict), each noted with the copy it duplicates."""
    flags.groups = duplicate_groups(health.digest)
    for group in flags.groups:
        first = group[0]
        labels_differ = len({int(images.labels[i]) for i in group}) > 1
        splits_differ = len({images.splits[i] for i in group}) > 1
        members = group if (labels_differ or splits_differ) else group[1:]
        flags.conflicts += int(labels_differ or splits_differ)
        for i in members:
            flags.flag["duplicate"][i] = True
            others = [images.relative(j) for j in group if j != i]
            flags.duplicate_of[i] = images.relative(first) if i != first else others[0]
            if labels_differ:
                flags.note(i, "copies carry different labels: " + ", ".join(
                    sorted({images.classes[int(images.labels[j])] for j in group})))
            if splits_differ:
                flags.note(i, "copies in " + " and ".join(sorted({images.splits[j] for j in group})))


def _flag_from_features(flags: _Flags, images: LabeledImages, health: ImageHealth, readable: np.ndarray,
                        features: np.ndarray):
    """Flag near-duplicates (not already exact copies) and outliers from the features (R, D)."""
    exact = [(int(np.searchsorted(readable, a)), int(np.searchsorted(readable, b)))
             for g in flags.groups for a in g for b in g if a < b]
    flags.near_pairs = near_duplicates(features, exclude=exact, thumbnails=health.thumbnails()[readable])
    for a, b, sim in flags.near_pairs:
        ia, ib = int(readable[a]), int(readable[b])
        flags.flag["near_duplicate"][ib] = True
        flags.duplicate_of.setdefault(ib, images.relative(ia))
        flags.note(ib, f"near-duplicate of {images.relative(ia)} (cosine {sim:.4f})")
    _, is_out = outliers(features)
    flags.flag["outlier"][readable] = is_out


def _find_flags(images: LabeledImages, health: ImageHealth, readable: np.ndarray, labels: LabelIssues,
                features: Optional[np.ndarray]) -> _Flags:
    """Every image's flags: OpenCV's checks, the label analysis's issues, exact copies and, with
    features (R, D), near-duplicates and outliers. ``readable``: (R,) indices of the readable images."""
    flags = _health_findings(health, len(images))
    flags.flag["label"][readable] = labels.is_issue
    _flag_duplicates(flags, images, health)
    if features is not None:
        _flag_from_features(flags, images, health, readable, features)
    return flags


def _per_image(n: int, readable: np.ndarray, probs: np.ndarray, labels: LabelIssues):
    """The probabilities (N, K) and label quality (N,) of all N images, NaN for the unreadable ones."""
    full_probs = np.full((n, probs.shape[1]), np.nan)
    full_probs[readable] = probs
    quality = np.full(n, np.nan)
    quality[readable] = labels.quality
    return full_probs, quality


def _any_flag(flags: _Flags, n: int) -> np.ndarray:
    """bool (N,): images with at least one flag."""
    any_flag = np.zeros(n, dtype=bool)
    for name in FLAGS:
        any_flag |= flags.flag[name]
    return any_flag


def _rows(images: LabeledImages, health: ImageHealth, flags: _Flags, probs: np.ndarray,
          quality: np.ndarray) -> List[Dict]:
    """The ``issues.csv`` rows of the flagged images, sorted; ``probs`` (N, K) and ``quality`` (N,)
    are NaN for unreadable images."""
    rows = []
    for i in np.flatnonzero(_any_flag(flags, len(images))):
        ok = health.readable[i]
        suggested = int(np.argmax(probs[i])) if ok else None
        rows.append({
            "path": images.relative(i), "split": images.splits[i], "given": images.classes[int(images.labels[i])],
            "suggested": images.classes[suggested] if suggested is not None else "",
            "p_given": f"{probs[i, images.labels[i]]:.4f}" if ok else "",
            "p_suggested": f"{probs[i, suggested]:.4f}" if ok else "",
            "label_quality": f"{quality[i]:.4f}" if ok else "",
            "is_label_issue": bool(flags.flag["label"][i]),
            "flags": ";".join(name for name in FLAGS if flags.flag[name][i]),
            "duplicate_of": flags.duplicate_of.get(i, ""),
            "note": "; ".join(flags.notes.get(i, [])),
        })
    return sort_rows(rows)


def _settings_summary(settings: _Settings, found: _Probabilities) -> Dict[str, Any]:
    """``summary.json``'s ``settings``: the method's arguments and what it reported."""
    given = settings.method == "given"
    weights = settings.weights
    features = None
    if found.features is not None:
        features = "backbone (probe)" if settings.method == "probe" else "last fold's model"
    return {"method": settings.method, "folds": None if given else settings.folds, "seed": settings.seed,
            "model": None if given else settings.model,
            "weights": None if weights is None else str(weights), "weights_sha256": _file_sha256(found.weights_file),
            "pred_probs": os.path.abspath(settings.pred_probs) if settings.pred_probs else None,
            "features": features,
            **{k: v for k, v in found.info.items() if k not in ("weights_file",)},
            "exclude_flags": list(settings.exclude_flags)}


def _summary(images: LabeledImages, readable: _Readable, flags: _Flags, labels: LabelIssues, baseline: np.ndarray,
             settings: Dict[str, Any]) -> Dict[str, Any]:
    """``summary.json``'s content (without the seconds and the excluded count, added when written)."""
    return {
        "data": images.root, "images": len(images), "readable": int(len(readable.index)), "classes": images.classes,
        "flagged_images": int(_any_flag(flags, len(images)).sum()),
        "counts": {name: int(flags.flag[name].sum()) for name in FLAGS},
        "label_issues": int(labels.is_issue.sum()), "argmax_baseline_flags": int(baseline.sum()),
        "classes_without_readable_images": readable.empty, "exact_duplicate_groups": len(flags.groups),
        "duplicate_groups_with_conflicts": flags.conflicts,
        "near_duplicate_pairs": len(flags.near_pairs), "health": labels.health,
        "settings": settings,
        "versions": _versions(),
    }


def _write_reports(result: CleaningResult, out: str, top: int, exclude_flags: Sequence[str]):
    """Write ``issues.csv``, ``exclude.txt`` and ``contact_sheet.png`` (the ``top`` worst label issues)
    into ``out``, noting them in ``result.files``; ``summary.json`` is written last, by the caller."""
    rows, root, summary = result.rows, result.images.root, result.summary
    os.makedirs(out, exist_ok=True)
    result.files["issues.csv"] = write_issues_csv(os.path.join(out, "issues.csv"), rows)
    excluded = write_exclude(os.path.join(out, "exclude.txt"), rows, root, exclude_flags)
    result.files["exclude.txt"] = os.path.join(out, "exclude.txt")
    summary["excluded_images"] = excluded
    worst = [r for r in rows if r["is_label_issue"]][:top]
    sheet = contact_sheet(os.path.join(out, "contact_sheet.png"),
                          [{"file": os.path.join(root, r["path"]),
                            "caption": f"{r['given']} -> {r['suggested']} ({float(r['p_suggested']):.2f})"}
                           for r in worst],
                          title=f"{len(worst)} worst of {summary['label_issues']} label issues: given -> "
                                "suggested (p)")
    if sheet:
        result.files["contact_sheet.png"] = sheet


def find_label_issues(data, *, method: str = "kfold", folds: int = 5, model: str = "resnet18", weights=None,
                      input_size: Optional[int] = None, epochs: int = 10, pred_probs: Optional[str] = None,
                      out: Optional[str] = None, top: int = 32, seed: int = 0, progress: bool = True,
                      train_settings: Optional[Dict[str, Any]] = None,
                      exclude_flags: Sequence[str] = DEFAULT_EXCLUDE_FLAGS, log=None) -> CleaningResult:
    """Find mislabelled, broken and duplicated images in the image folder ``data`` (a folder
    of class folders, or ``train/`` + ``val/``).

    Args:
        method: ``"kfold"`` (train ``folds`` fresh ``model`` s, each predicting the fold it did not
            see; from ``weights`` if given, else from scratch), ``"probe"`` (features of the
            pretrained ``model``/``weights``, a cross-validated logistic regression on them) or
            ``"given"`` (``pred_probs``: a ``.npy`` of (N, K) out-of-sample probabilities, rows
            in this function's image order, columns in class-folder order; a row of NaN for an
            unreadable image is accepted).
        input_size: px the images are seen at (default: kfold the median short side, 32 to 224;
            probe the weights' own).
        epochs: kfold training epochs per fold. ``train_settings``: more
            :class:`~megzoo.cleaning.probabilities.KFoldSettings` fields (``lr``, ``hflip``, ...).
        out: folder for ``issues.csv``, ``summary.json``, ``contact_sheet.png`` (the ``top``
            worst label issues) and ``exclude.txt`` (images flagged with ``exclude_flags``);
            kfold's fold runs go to ``out/folds/plan-HASH`` (resumable; else a temporary folder,
            removed at the end).
    Returns a :class:`CleaningResult`.
    """
    t0 = time.perf_counter()
    say = log or _quiet
    _check_arguments(method, pred_probs, exclude_flags)
    settings = _Settings(method, folds, model, weights, input_size, epochs, pred_probs, seed, progress,
                         train_settings, exclude_flags)
    require_cleanlab()
    images, health, given = _read_images(data, settings, say)
    readable = _readable_classes(images, np.flatnonzero(health.readable), say)
    found = _out_of_sample(images, health, readable, given, settings, out, say)
    labels, baseline, probs = _analyse_labels(images, readable, found.probs)
    flags = _find_flags(images, health, readable.index, labels, found.features)
    full_probs, quality = _per_image(len(images), readable.index, probs, labels)
    rows = _rows(images, health, flags, full_probs, quality)
    summary = _summary(images, readable, flags, labels, baseline, _settings_summary(settings, found))
    result = CleaningResult(images, rows, flags.flag, full_probs, labels, readable.index, summary)
    if out:
        _write_reports(result, out, top, exclude_flags)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    if out:
        result.files["summary.json"] = write_summary(os.path.join(out, "summary.json"), summary)
    return result
