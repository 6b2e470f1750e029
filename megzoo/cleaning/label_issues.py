"""Label issues from out-of-sample probabilities (confident learning, by cleanlab) and feature checks.

The array-level core of ``megzoo clean``: given labels (N,) and out-of-sample predicted
probabilities (N, K), :func:`label_issues` returns which labels are likely wrong
(``cleanlab.filter.find_label_issues``, pruned by the estimated noise rate of each class pair),
a label-quality score per image (``cleanlab.rank.get_label_quality_scores``, self-confidence: the
probability of the given label) and the dataset's health (``cleanlab.dataset.health_summary``:
per-class label quality, the class pairs most often confused). :func:`argmax_issues` is the
baseline it is measured against ("predicted != given"). From pooled features (N, D),
:func:`near_duplicates` and :func:`outliers` (``cleanlab.outlier.OutOfDistribution``: mean
distance to the nearest neighbours) find near-copies and images unlike the rest.

cleanlab is an optional extra (``pip install 'megzoo[clean]'``, ``cleanlab>=2.8``: Apache-2.0
from 2.8; earlier releases are AGPL-3.0), imported only here.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .dataset import CleaningInputError

__all__ = ["LabelIssues", "label_issues", "argmax_issues", "check_pred_probs", "near_duplicates", "outliers",
           "require_cleanlab", "MIN_CLEANLAB", "NEAR_DUPLICATE_COSINE", "OUTLIER_QUANTILE"]

MIN_CLEANLAB = (2, 8)
#: two images whose centred pooled features have at least this cosine similarity ...
NEAR_DUPLICATE_COSINE = 0.995
#: ... and whose grey 16-px thumbnails correlate at least this much are near-duplicates (features
#: alone pair look-alikes of one class: a trained classifier maps them close together)
NEAR_DUPLICATE_PIXELS = 0.99
#: images whose outlier score is below this quantile of the scores are flagged ``outlier``
OUTLIER_QUANTILE = 0.01


def require_cleanlab():
    """The ``cleanlab`` module, >= 2.8; else an ImportError saying how to install it."""
    try:
        import cleanlab
    except ImportError:
        raise ImportError("megzoo clean needs cleanlab >= 2.8: pip install 'megzoo[clean]' "
                          "(or pip install 'cleanlab>=2.8' scikit-learn)") from None
    version = tuple(int(p) for p in cleanlab.__version__.split(".")[:2] if p.isdigit())
    if version < MIN_CLEANLAB:
        raise ImportError(f"cleanlab {cleanlab.__version__} is too old (and AGPL-licensed): megzoo clean needs "
                          "cleanlab >= 2.8 (Apache-2.0): pip install -U 'cleanlab>=2.8'")
    return cleanlab


@dataclass
class LabelIssues:
    """:func:`label_issues`'s answer, aligned with its inputs (N,). ``is_issue``: bool;
    ``quality``: label-quality score in [0, 1] (low: likely wrong); ``suggested``: the most
    probable class; ``health``: dataset-level figures (JSON-ready)."""

    is_issue: np.ndarray
    quality: np.ndarray
    suggested: np.ndarray
    health: Dict

    @property
    def ranked(self) -> np.ndarray:
        """Indices of the label issues, worst (lowest quality) first."""
        idx = np.flatnonzero(self.is_issue)
        return idx[np.argsort(self.quality[idx], kind="stable")]


def check_pred_probs(pred_probs, n: int, classes: Sequence[str], what: str = "pred_probs",
                     allow_nan_rows: bool = False) -> np.ndarray:
    """``pred_probs`` as a float64 (n, K) array whose rows sum to 1; else a
    :class:`CleaningInputError` naming the shape expected and the column order. With
    ``allow_nan_rows``, rows that are all NaN (images that could not be predicted) pass as NaN."""
    k = len(classes)
    p = np.asarray(pred_probs, dtype=np.float64)
    order = f"columns in class-folder order ({', '.join(list(classes)[:4])}{', ...' if k > 4 else ''})"
    if p.ndim != 2 or p.shape != (n, k):
        raise CleaningInputError(f"{what} has shape {p.shape}; expected ({n}, {k}): one row per image in the order "
                                 f"megzoo clean lists them, {order}")
    skipped = np.isnan(p).all(axis=1) if allow_nan_rows else np.zeros(len(p), dtype=bool)
    if not np.isfinite(p[~skipped]).all() or (p[~skipped] < 0).any():
        raise CleaningInputError(f"{what} holds negative or non-finite values; give probabilities (softmax outputs)"
                                 + (" (a row of NaN marks an image that could not be predicted)" if allow_nan_rows
                                    else ""))
    sums = np.where(skipped, 1.0, p.sum(axis=1))
    bad = np.flatnonzero(np.abs(sums - 1) > 1e-3)
    if len(bad):
        raise CleaningInputError(f"{what}: {len(bad)} row(s) do not sum to 1 "
                                 f"(row {bad[0]} sums to {sums[bad[0]]:.4g}); "
                                 "give probabilities (softmax of the logits), not logits")
    return p / sums[:, None]


def label_issues(labels, pred_probs, class_names: Optional[Sequence[str]] = None,
                 filter_by: str = "prune_by_noise_rate") -> LabelIssues:
    """Likely label errors among ``labels`` (N,) ints given out-of-sample ``pred_probs`` (N, K)
    (see the module docstring). Every class must have at least one image."""
    require_cleanlab()
    from cleanlab.dataset import health_summary
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, dtype=np.int64)
    names = list(class_names) if class_names is not None else [str(i) for i in range(np.shape(pred_probs)[1])]
    p = check_pred_probs(pred_probs, len(labels), names)
    counts = np.bincount(labels, minlength=len(names))
    if len(counts) > len(names) or (counts == 0).any():
        empty = [names[i] for i in np.flatnonzero(counts[:len(names)] == 0)]
        raise CleaningInputError(f"class(es) {', '.join(empty[:5]) or '?'} have no images with a usable label: every "
                                 "class needs images (remove empty class folders)")
    # n_jobs=1: no worker processes forked from a process MegEngine's threads run in
    is_issue = find_label_issues(labels, p, filter_by=filter_by, n_jobs=1)
    quality = get_label_quality_scores(labels, p, method="self_confidence")
    summary = health_summary(labels, p, class_names=names, verbose=False)
    per_class = summary["classes_by_label_quality"]
    pairs = summary["overlapping_classes"]
    health = {
        "overall_label_health_score": float(summary["overall_label_health_score"]),
        "classes": [{"class": str(r["Class Name"]), "images": int(counts[int(r["Class Index"])]),
                     "label_issues": int(r["Label Issues"]), "label_noise": float(r["Label Noise"]),
                     "label_quality": float(r["Label Quality Score"])}
                    for _, r in per_class.sort_values("Class Index").iterrows()],
        "confused_pairs": [{"classes": [str(r["Class Name A"]), str(r["Class Name B"])],
                            "images": int(r["Num Overlapping Examples"]),
                            "joint_probability": float(r["Joint Probability"])}
                           for _, r in pairs.head(10).iterrows() if int(r["Num Overlapping Examples"]) > 0],
    }
    return LabelIssues(np.asarray(is_issue, dtype=bool), np.asarray(quality, dtype=np.float64),
                       p.argmax(axis=1), health)


def argmax_issues(labels, pred_probs) -> np.ndarray:
    """The baseline: an image is flagged when its most probable class is not its label."""
    return np.asarray(pred_probs).argmax(axis=1) != np.asarray(labels)


def near_duplicates(features: np.ndarray, threshold: float = NEAR_DUPLICATE_COSINE,
                    exclude: Sequence[Tuple[int, int]] = (), thumbnails: Optional[np.ndarray] = None,
                    pixel_threshold: float = NEAR_DUPLICATE_PIXELS) -> List[Tuple[int, int, float]]:
    """Pairs ``(i, j, cosine)`` (i < j) of rows of ``features`` (N, D) whose centred features
    (the mean feature subtracted) are at least ``threshold`` similar, each ``j`` paired with its
    most similar earlier ``i``; with ``thumbnails`` (N, P: zero-mean unit-norm pixels), only pairs
    that also correlate ``pixel_threshold`` in pixels. Pairs in ``exclude`` (exact duplicates,
    already reported) are left out. Memory: blocks of 1024 rows."""
    f = np.asarray(features, dtype=np.float32)
    f = f - f.mean(axis=0)  # centred: post-ReLU features share a large common direction
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    skip = {(min(a, b), max(a, b)) for a, b in exclude}
    best: Dict[int, Tuple[int, float]] = {}
    for start in range(0, len(f), 1024):
        sims = f[start:start + 1024] @ f.T
        for row, j in enumerate(range(start, min(start + 1024, len(f)))):
            earlier = sims[row, :j]
            if not len(earlier):
                continue
            if thumbnails is not None:
                pixels = thumbnails[:j] @ thumbnails[j]
                earlier = np.where(pixels >= pixel_threshold, earlier, -1.0)
            i = int(np.argmax(earlier))
            if earlier[i] >= threshold and (i, j) not in skip:
                best[j] = (i, float(earlier[i]))
    return sorted((i, j, s) for j, (i, s) in best.items())


def outliers(features: np.ndarray, quantile: float = OUTLIER_QUANTILE) -> Tuple[np.ndarray, np.ndarray]:
    """``(scores, is_outlier)`` for ``features`` (N, D): cleanlab's out-of-distribution score
    (in (0, 1], low: far from its nearest neighbours) and the images below the ``quantile``."""
    require_cleanlab()
    from cleanlab.outlier import OutOfDistribution

    f = np.asarray(features, dtype=np.float32)
    if len(f) < 3:
        return np.ones(len(f)), np.zeros(len(f), dtype=bool)
    k = min(10, len(f) - 1)
    scores = OutOfDistribution(params={"k": k}).fit_score(features=f, verbose=False)
    return scores, scores < np.quantile(scores, quantile)
