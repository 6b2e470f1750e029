"""How far an int8 model's answers are from the float model's: top-1 agreement on the same batches."""
from typing import Callable, Iterable, Tuple

import numpy as np

from ..metrics import same_top1

__all__ = ["top1_agreement"]


def top1_agreement(reference: Callable, quantized: Callable, batches: Iterable[np.ndarray]) -> Tuple[float, int]:
    """``(fraction of images whose top-1 class is the same, images)`` for two callables taking a
    preprocessed (N, C, H, W) float32 batch and returning (N, classes) logits as numpy arrays (or
    Tensors), e.g. ``megzoo.compile(model)`` and ``megzoo.compile(q)``."""
    same = total = 0
    for batch in batches:
        counted = same_top1(_numpy(quantized(batch)), _numpy(reference(batch)))
        if counted is None:
            raise ValueError("top-1 agreement compares (N, classes) logits of one shape")
        same += counted[0]
        total += counted[1]
    if total == 0:
        raise ValueError("no images to compare")
    return same / total, total


def _numpy(value):
    return value.numpy() if hasattr(value, "numpy") and not isinstance(value, np.ndarray) else value
