"""Classification metrics on numpy arrays, shared by training's validation and ``megzoo eval``."""
from typing import Optional, Sequence, Tuple

import numpy as np

__all__ = ["topk_correct", "same_top1", "log_softmax", "softmax"]


def topk_correct(logits: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5)) -> Tuple[int, ...]:
    """How many of the N rows of ``logits`` (N, C) have their label (N,) among their ``k`` highest
    scores, for each ``k`` of ``ks`` (each capped at C). Ties go to the lower class index (a
    stable sort), so the counts are reproducible."""
    logits = np.asarray(logits)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"expected logits (N, C) and labels (N,), got {logits.shape} and {labels.shape}")
    order = np.argsort(-logits, axis=1, kind="stable")
    hits = order == labels[:, None]
    return tuple(int(hits[:, :min(int(k), logits.shape[1])].any(axis=1).sum()) for k in ks)


def same_top1(logits: np.ndarray, reference: np.ndarray) -> Optional[Tuple[int, int]]:
    """(rows whose arg-max class is the same in ``logits`` and ``reference``, rows) for (N, classes)
    arrays of one shape with more than one class; None for other outputs."""
    logits, reference = np.asarray(logits), np.asarray(reference)
    if logits.ndim != 2 or logits.shape != reference.shape or logits.shape[1] < 2:
        return None
    return int(np.sum(logits.argmax(axis=1) == reference.argmax(axis=1))), int(logits.shape[0])


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """``log(softmax(logits))`` along the last axis, computed stably (float64 inside)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    """``softmax(logits)`` along the last axis in float64 (stable: the maximum is subtracted first)."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)
