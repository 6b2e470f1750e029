"""How far an int8 model's answers are from the float model's: top-1 agreement on the same batches."""
from typing import Callable, Iterable, Tuple

import numpy as np

__all__ = ["top1_agreement"]


def top1_agreement(reference: Callable, quantized: Callable, batches: Iterable[np.ndarray]) -> Tuple[float, int]:
    """``(fraction of images whose top-1 class is the same, images)`` for two callables taking a
    preprocessed (N, C, H, W) float32 batch and returning (N, classes) logits as numpy arrays (or
    Tensors), e.g. ``megzoo.compile(model)`` and ``megzoo.compile(q)``."""
    same = total = 0
    for batch in batches:
        a = np.asarray(_numpy(reference(batch))).argmax(axis=1)
        b = np.asarray(_numpy(quantized(batch))).argmax(axis=1)
        same += int((a == b).sum())
        total += len(a)
    if total == 0:
        raise ValueError("no images to compare")
    return same / total, total


def _numpy(value):
    return value.numpy() if hasattr(value, "numpy") and not isinstance(value, np.ndarray) else value
