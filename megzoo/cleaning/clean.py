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
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .dataset import CleaningInputError, LabeledImages, scan_folder
from .health import check_images, duplicate_groups, health_flags
from .label_issues import LabelIssues, argmax_issues, label_issues, near_duplicates, outliers, require_cleanlab
from .probabilities import KFoldSettings, kfold_pred_probs, load_pred_probs, probe_pred_probs
from .report import DEFAULT_EXCLUDE_FLAGS, FLAGS, contact_sheet, sort_rows, write_exclude, write_issues_csv, \
    write_summary

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
    say = log or (lambda message: None)
    if method not in METHODS:
        raise CleaningInputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "given" and pred_probs is None:
        raise CleaningInputError("method 'given' needs the probabilities: --pred-probs FILE.npy (N images x K classes)")
    if pred_probs is not None and method != "given":
        raise CleaningInputError("--pred-probs goes with --method given")
    unknown = sorted(set(exclude_flags) - set(FLAGS))
    if unknown:
        raise CleaningInputError(f"exclude_flags {', '.join(unknown)} unknown: choose from {', '.join(FLAGS)}")
    require_cleanlab()
    images = scan_folder(data)
    n, classes = len(images), images.classes
    given = load_pred_probs(pred_probs, n, classes) if method == "given" else None  # checked before the slow part
    health = check_images(images.paths, progress=progress)
    flags = health_flags(health)
    readable = np.flatnonzero(health.readable)
    if len(readable) == 0:
        raise CleaningInputError(f"no image of {images.root} can be read ({health.problem[0]}, ...)")
    say(f"{n} images in {len(classes)} classes, {n - len(readable)} unreadable")
    if given is not None:
        missing = [i for i in readable if np.isnan(given[i]).any()]
        if missing:
            raise CleaningInputError(f"--pred-probs has no probabilities (NaN) for {len(missing)} readable image(s), "
                                     f"the first {images.relative(missing[0])}: give a row for every readable image "
                                     "(NaN rows only for unreadable ones)")
    # classes left with no readable image (all their files broken) are flagged through their
    # files and left out of the label analysis, which needs examples of every class it scores
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
    files = [images.paths[i] for i in readable]
    labels = to_present[images.labels[readable]]
    used = [classes[i] for i in present]
    features = None
    info: Dict[str, Any] = {}
    weights_file = None
    if method == "kfold":
        size = input_size or int(min(224, max(32, np.median(np.minimum(
            np.asarray(health.height)[readable], np.asarray(health.width)[readable])))))
        settings = KFoldSettings(model=model, input_size=size, epochs=epochs, pretrained=weights,
                                 **(train_settings or {}))
        temporary = None
        if out:
            work = os.path.join(out, "folds")
        else:
            import tempfile

            work = temporary = tempfile.mkdtemp(prefix="megzoo-clean-")
        try:
            probs, features, info = kfold_pred_probs(files, labels, used, folds, seed, settings, work,
                                                     progress=progress, log=say)
        finally:
            if temporary is not None:  # nothing to resume from without --out
                import shutil

                shutil.rmtree(temporary, ignore_errors=True)
                info.pop("work_dir", None)
        weights_file = weights if isinstance(weights, str) and os.path.isfile(weights) else None
    elif method == "probe":
        probs, features, info = probe_pred_probs(files, labels, used, folds, seed, model, weights,
                                                 input_size=input_size, progress=progress)
        weights_file = info.get("weights_file")
    else:
        probs = given[readable][:, present]
        probs = probs / np.maximum(probs.sum(axis=1, keepdims=True), 1e-12)
    found = label_issues(labels, probs, used)
    baseline = argmax_issues(labels, probs)
    full = np.zeros((len(readable), len(classes)))
    full[:, present] = probs
    probs = full
    found.suggested = present[found.suggested]  # back to indices into all classes

    # per-image flags over all N images
    flag = {name: np.zeros(n, dtype=bool) for name in FLAGS}
    for name in ("unreadable", "grayscale", "odd_size", "near_constant"):
        flag[name] = flags[name]
    flag["label"][readable] = found.is_issue
    notes: Dict[int, List[str]] = {}
    duplicate_of: Dict[int, str] = {}
    for i, problem in enumerate(health.problem):
        if problem:
            notes.setdefault(i, []).append(problem)
    groups = duplicate_groups(health.digest)
    conflicts = 0
    for group in groups:
        first = group[0]
        labels_differ = len({int(images.labels[i]) for i in group}) > 1
        splits_differ = len({images.splits[i] for i in group}) > 1
        members = group if (labels_differ or splits_differ) else group[1:]
        conflicts += int(labels_differ or splits_differ)
        for i in members:
            flag["duplicate"][i] = True
            others = [images.relative(j) for j in group if j != i]
            duplicate_of[i] = images.relative(first) if i != first else others[0]
            if labels_differ:
                notes.setdefault(i, []).append("copies carry different labels: " + ", ".join(
                    sorted({classes[int(images.labels[j])] for j in group})))
            if splits_differ:
                notes.setdefault(i, []).append("copies in " + " and ".join(sorted({images.splits[j] for j in group})))
    near_pairs: List = []
    outlier_scores = None
    if features is not None:
        exact = [(int(np.searchsorted(readable, a)), int(np.searchsorted(readable, b)))
                 for g in groups for a in g for b in g if a < b]
        near_pairs = near_duplicates(features, exclude=exact, thumbnails=health.thumbnails()[readable])
        for a, b, sim in near_pairs:
            ia, ib = int(readable[a]), int(readable[b])
            flag["near_duplicate"][ib] = True
            duplicate_of.setdefault(ib, images.relative(ia))
            notes.setdefault(ib, []).append(f"near-duplicate of {images.relative(ia)} (cosine {sim:.4f})")
        outlier_scores, is_out = outliers(features)
        flag["outlier"][readable] = is_out

    # the rows
    full_probs = np.full((n, len(classes)), np.nan)
    full_probs[readable] = probs
    quality = np.full(n, np.nan)
    quality[readable] = found.quality
    any_flag = np.zeros(n, dtype=bool)
    for name in FLAGS:
        any_flag |= flag[name]
    rows = []
    for i in np.flatnonzero(any_flag):
        ok = health.readable[i]
        suggested = int(np.argmax(full_probs[i])) if ok else None
        rows.append({
            "path": images.relative(i), "split": images.splits[i], "given": classes[int(images.labels[i])],
            "suggested": classes[suggested] if suggested is not None else "",
            "p_given": f"{full_probs[i, images.labels[i]]:.4f}" if ok else "",
            "p_suggested": f"{full_probs[i, suggested]:.4f}" if ok else "",
            "label_quality": f"{quality[i]:.4f}" if ok else "",
            "is_label_issue": bool(flag["label"][i]),
            "flags": ";".join(name for name in FLAGS if flag[name][i]),
            "duplicate_of": duplicate_of.get(i, ""),
            "note": "; ".join(notes.get(i, [])),
        })
    rows = sort_rows(rows)

    counts_by_flag = {name: int(flag[name].sum()) for name in FLAGS}
    summary: Dict[str, Any] = {
        "data": images.root, "images": n, "readable": int(len(readable)), "classes": classes,
        "flagged_images": int(any_flag.sum()), "counts": counts_by_flag,
        "label_issues": int(found.is_issue.sum()), "argmax_baseline_flags": int(baseline.sum()),
        "classes_without_readable_images": empty, "exact_duplicate_groups": len(groups), "duplicate_groups_with_conflicts": conflicts,
        "near_duplicate_pairs": len(near_pairs), "health": found.health,
        "settings": {"method": method, "folds": folds if method != "given" else None, "seed": seed,
                     "model": model if method != "given" else None,
                     "weights": None if weights is None else str(weights), "weights_sha256": _file_sha256(weights_file),
                     "pred_probs": os.path.abspath(pred_probs) if pred_probs else None,
                     "features": None if features is None else ("backbone (probe)" if method == "probe"
                                                                 else "last fold's model"),
                     **{k: v for k, v in info.items() if k not in ("weights_file",)},
                     "exclude_flags": list(exclude_flags)},
        "versions": _versions(),
    }
    result = CleaningResult(images, rows, flag, full_probs, found, readable, summary)
    if out:
        os.makedirs(out, exist_ok=True)
        result.files["issues.csv"] = write_issues_csv(os.path.join(out, "issues.csv"), rows)
        excluded = write_exclude(os.path.join(out, "exclude.txt"), rows, images.root, exclude_flags)
        result.files["exclude.txt"] = os.path.join(out, "exclude.txt")
        summary["excluded_images"] = excluded
        worst = [r for r in rows if r["is_label_issue"]][:top]
        sheet = contact_sheet(os.path.join(out, "contact_sheet.png"),
                              [{"file": os.path.join(images.root, r["path"]),
                                "caption": f"{r['given']} -> {r['suggested']} ({float(r['p_suggested']):.2f})"}
                               for r in worst],
                              title=f"{len(worst)} worst of {summary['label_issues']} label issues: given -> "
                                    "suggested (p)")
        if sheet:
            result.files["contact_sheet.png"] = sheet
        summary["seconds"] = round(time.perf_counter() - t0, 1)
        result.files["summary.json"] = write_summary(os.path.join(out, "summary.json"), summary)
    else:
        summary["seconds"] = round(time.perf_counter() - t0, 1)
    return result
