"""Batch-level mixup and cutmix, and the soft-target cross-entropy they train with.

:class:`BatchMixer` mixes each training batch with itself rolled by one (image ``i`` with image
``i - 1``, as torchvision's references do), by one of the enabled methods chosen with equal
probability per batch:

* mixup (Zhang et al. 2018): ``x = lam * x + (1 - lam) * x_rolled``, ``lam ~ Beta(a, a)``;
* cutmix (Yun et al. 2019): a box of area ``(1 - lam)`` of the image (centre uniform, clipped
  at the borders) pasted from the rolled batch; ``lam`` is then recomputed from the box's real
  area so the targets match the pixels.

The targets are ``lam * onehot(y) + (1 - lam) * onehot(y_rolled)`` with label smoothing applied
to the mixed target (``(1 - eps) * t + eps / K``), so every row sums to 1. Randomness is NumPy's
global generator (seeded per epoch by the trainer), so a resumed run mixes as the uninterrupted
one did.
"""
from typing import Optional, Tuple

import numpy as np

__all__ = ["BatchMixer", "soft_targets", "soft_cross_entropy"]


def soft_targets(labels: np.ndarray, num_classes: int, smoothing: float = 0.0) -> np.ndarray:
    """One-hot float32 (N, K) targets of int labels (N,), label-smoothed by ``smoothing``."""
    labels = np.asarray(labels, dtype=np.int64)
    out = np.full((len(labels), num_classes), smoothing / num_classes, dtype=np.float32)
    out[np.arange(len(labels)), labels] += 1.0 - smoothing
    return out


def soft_cross_entropy(logits, targets):
    """Mean over the batch of ``-sum_k targets[:, k] * log_softmax(logits)[:, k]`` (MegEngine
    tensors (N, K)); equal to ``F.nn.cross_entropy`` for one-hot or smoothed targets."""
    import megengine.functional as F

    return -(targets * F.nn.logsoftmax(logits, axis=1)).sum(axis=1).mean()


class BatchMixer:
    """Mixup and/or cutmix of batches (module docstring). ``mixup_alpha``, ``cutmix_alpha``:
    Beta parameters (0: that method off); ``smoothing``: label smoothing of the targets."""

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
                 smoothing: float = 0.0):
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f"mixup and cutmix alphas must be >= 0, got {mixup_alpha!r}, {cutmix_alpha!r}")
        self.num_classes = int(num_classes)
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.smoothing = float(smoothing)
        self.last: Optional[dict] = None  #: what the last call did: method, lam, box

    @property
    def enabled(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    @staticmethod
    def cutmix_box(height: int, width: int, lam: float) -> Tuple[int, int, int, int]:
        """``(top, bottom, left, right)`` of a box of about ``(1 - lam)`` of the area, its centre
        uniform over the image and clipped at the borders."""
        cut = np.sqrt(1.0 - lam)
        h, w = int(height * cut), int(width * cut)
        cy, cx = np.random.randint(height), np.random.randint(width)
        return (int(np.clip(cy - h // 2, 0, height)), int(np.clip(cy + h // 2, 0, height)),
                int(np.clip(cx - w // 2, 0, width)), int(np.clip(cx + w // 2, 0, width)))

    def __call__(self, images: np.ndarray, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """``(mixed images (N, C, H, W) float32, targets (N, K) float32)`` of a batch."""
        labels = np.asarray(labels, dtype=np.int64)
        methods = [m for m, a in (("mixup", self.mixup_alpha), ("cutmix", self.cutmix_alpha)) if a > 0]
        if not methods:
            self.last = None
            return images, soft_targets(labels, self.num_classes, self.smoothing)
        method = methods[np.random.randint(len(methods))]
        lam = float(np.random.beta(*(2 * [self.mixup_alpha if method == "mixup" else self.cutmix_alpha])))
        rolled = np.roll(np.arange(len(labels)), 1)
        images = np.asarray(images, dtype=np.float32)
        box = None
        if method == "mixup":
            mixed = lam * images + (1.0 - lam) * images[rolled]
        else:
            top, bottom, left, right = box = self.cutmix_box(images.shape[2], images.shape[3], lam)
            mixed = images.copy()
            mixed[:, :, top:bottom, left:right] = images[rolled][:, :, top:bottom, left:right]
            lam = 1.0 - (bottom - top) * (right - left) / float(images.shape[2] * images.shape[3])
        one = soft_targets(labels, self.num_classes)
        targets = lam * one + (1.0 - lam) * one[rolled]
        targets = (1.0 - self.smoothing) * targets + self.smoothing / self.num_classes
        self.last = {"method": method, "lam": lam, "box": box}
        return mixed.astype(np.float32), targets.astype(np.float32)
