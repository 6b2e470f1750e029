"""Policy augmentations on the OpenCV/NumPy pipeline: TrivialAugmentWide, RandAugment, AutoAugment, random erasing.

Each is a ``megengine.data.transform.VisionTransform``, so it goes into a ``Compose`` with
MegEngine's own transforms and runs in ``DataLoader`` workers. The three policies take and
return BGR uint8 images (H, W, 3), placed after the random-resized crop and flip and before
``Normalize``; :class:`RandomErasing` works on the normalised float32 (C, H, W) image, after
``ToMode("CHW")``. Randomness comes from NumPy's global generator, as in MegEngine's transforms,
which megzoo's trainer seeds per epoch and MegEngine per worker: ``np.random.seed(s)`` before a
call gives the same image every time.

The operations and their magnitude ranges are those of the papers (AutoAugment, Cubuk et al.
2019; RandAugment, Cubuk et al. 2020; TrivialAugment, Mueller and Hutter 2021) as torchvision
sets them: geometric operations fill with black and use nearest-neighbour sampling, signed
magnitudes get a random sign, colour operations blend with a degenerate image (black for
brightness, grey for colour, the mean grey for contrast, a smoothed copy for sharpness).
"""
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import megengine.data.transform as T
import numpy as np

__all__ = ["TrivialAugmentWide", "RandAugment", "AutoAugment", "RandomErasing", "AUTO_AUGMENT_POLICIES",
           "apply_op", "OPS", "policy_transform", "POLICIES"]


# -- the operations: uint8 (H, W, 3) -> uint8 (H, W, 3) -------------------------------------------
def _blend(image: np.ndarray, degenerate: np.ndarray, factor: float) -> np.ndarray:
    """``degenerate + factor * (image - degenerate)``, clipped to 0-255 (factor 1: unchanged)."""
    out = degenerate.astype(np.float32) + factor * (image.astype(np.float32) - degenerate)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _grey(image: np.ndarray) -> np.ndarray:
    """Luminance as a 3-channel uint8 image (ITU-R 601-2, as PIL's "L")."""
    return cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)


def _affine(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    return cv2.warpAffine(image, matrix.astype(np.float64), (w, h), flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def _rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    h, w = image.shape[:2]
    return _affine(image, cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), degrees, 1.0))


def _sharpness(image: np.ndarray, factor: float) -> np.ndarray:
    kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13.0
    smooth = image.copy()
    if image.shape[0] > 2 and image.shape[1] > 2:  # the border keeps its pixels, as in PIL
        inner = cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REPLICATE)
        smooth[1:-1, 1:-1] = inner[1:-1, 1:-1]
    return _blend(image, smooth, factor)


def _autocontrast(image: np.ndarray) -> np.ndarray:
    lo = image.min(axis=(0, 1), keepdims=True).astype(np.float32)
    hi = image.max(axis=(0, 1), keepdims=True).astype(np.float32)
    scale = np.where(hi > lo, 255.0 / np.maximum(hi - lo, 1e-6), 1.0)
    lo = np.where(hi > lo, lo, 0.0)
    return np.clip(np.rint((image - lo) * scale), 0, 255).astype(np.uint8)


def _equalize(image: np.ndarray) -> np.ndarray:
    return np.dstack([cv2.equalizeHist(np.ascontiguousarray(image[:, :, c])) for c in range(image.shape[2])])


#: name -> f(image, magnitude) (magnitude in the op's own unit: px, degrees, blend factor - 1,
#: bits kept, threshold); the shear is a fraction of the side per side
OPS: Dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "Identity": lambda im, m: im,
    "ShearX": lambda im, m: _affine(im, np.array([[1, m, 0], [0, 1, 0]])),
    "ShearY": lambda im, m: _affine(im, np.array([[1, 0, 0], [m, 1, 0]])),
    "TranslateX": lambda im, m: _affine(im, np.array([[1, 0, m], [0, 1, 0]])),
    "TranslateY": lambda im, m: _affine(im, np.array([[1, 0, 0], [0, 1, m]])),
    "Rotate": _rotate,
    "Brightness": lambda im, m: _blend(im, np.zeros_like(im), 1.0 + m),
    "Color": lambda im, m: _blend(im, _grey(im), 1.0 + m),
    "Contrast": lambda im, m: _blend(im, np.full_like(im, int(round(float(_grey(im)[:, :, 0].mean())))), 1.0 + m),
    "Sharpness": lambda im, m: _sharpness(im, 1.0 + m),
    "Posterize": lambda im, m: np.bitwise_and(im, np.uint8((0xFF << (8 - int(m))) & 0xFF)),
    "Solarize": lambda im, m: np.where(im >= m, 255 - im, im).astype(np.uint8),
    "AutoContrast": lambda im, m: _autocontrast(im),
    "Equalize": lambda im, m: _equalize(im),
    "Invert": lambda im, m: (255 - im).astype(np.uint8),
}
_SIGNED = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness"}


def apply_op(image: np.ndarray, name: str, magnitude: float) -> np.ndarray:
    """Operation ``name`` of :data:`OPS` on a uint8 image (H, W, 3) (a grey (H, W) image too)."""
    grey = image.ndim == 2
    out = OPS[name](np.dstack([image] * 3) if grey else image, float(magnitude))
    return out[:, :, 0].copy() if grey else out


def _space(kind: str, bins: int, height: int, width: int) -> Dict[str, Tuple[np.ndarray, bool]]:
    """Magnitude bins of each operation: ``"wide"`` (TrivialAugmentWide) or ``"standard"``
    (RandAugment, AutoAugment), as name -> (magnitudes (bins,), signed)."""
    wide = kind == "wide"
    lin = np.linspace
    shear, colour = (0.99, 0.99) if wide else (0.3, 0.9)
    bits = 6 if wide else 4
    space = {
        "Identity": (np.zeros(bins), False),
        "ShearX": (lin(0.0, shear, bins), True), "ShearY": (lin(0.0, shear, bins), True),
        "TranslateX": (lin(0.0, 32.0 if wide else 150.0 / 331.0 * width, bins), True),
        "TranslateY": (lin(0.0, 32.0 if wide else 150.0 / 331.0 * height, bins), True),
        "Rotate": (lin(0.0, 135.0 if wide else 30.0, bins), True),
        "Brightness": (lin(0.0, colour, bins), True), "Color": (lin(0.0, colour, bins), True),
        "Contrast": (lin(0.0, colour, bins), True), "Sharpness": (lin(0.0, colour, bins), True),
        "Posterize": (8 - np.round(np.arange(bins) / ((bins - 1) / bits)).astype(np.int64), False),
        "Solarize": (lin(255.0, 0.0, bins), False),
        "AutoContrast": (np.zeros(bins), False), "Equalize": (np.zeros(bins), False),
    }
    return space


def _signed(magnitude: float, signed: bool) -> float:
    return -magnitude if signed and np.random.randint(2) else magnitude


class _Policy(T.VisionTransform):
    """Base: the policy's ``_augment(image) -> image`` on uint8 (H, W, 3) or (H, W) images."""

    def _apply_image(self, image):
        if image.dtype != np.uint8:
            raise TypeError(f"{type(self).__name__} works on uint8 images (before Normalize), got {image.dtype}")
        return self._augment(image)

    def _apply_coords(self, coords):
        raise NotImplementedError(f"{type(self).__name__} moves pixels of images only (no boxes or keypoints)")

    def _apply_mask(self, mask):
        raise NotImplementedError(f"{type(self).__name__} changes images only (no masks)")


class TrivialAugmentWide(_Policy):
    """One operation drawn uniformly, at a magnitude drawn uniformly from ``num_magnitude_bins``
    (the "wide" ranges: shear 0.99, translate 32 px, rotate 135 degrees, colour 0.99, posterize
    to 2 bits), per image. No parameter to tune, the point of it."""

    def __init__(self, num_magnitude_bins: int = 31, *, order=None):
        super().__init__(order)
        if num_magnitude_bins < 2:
            raise ValueError(f"num_magnitude_bins must be >= 2, got {num_magnitude_bins}")
        self.bins = int(num_magnitude_bins)

    def _augment(self, image):
        space = _space("wide", self.bins, *image.shape[:2])
        name = list(space)[np.random.randint(len(space))]
        magnitudes, signed = space[name]
        return apply_op(image, name, _signed(float(magnitudes[np.random.randint(self.bins)]), signed))

    def __repr__(self):
        return f"TrivialAugmentWide(num_magnitude_bins={self.bins})"


class RandAugment(_Policy):
    """``num_ops`` operations drawn uniformly (with replacement), all at ``magnitude`` of
    ``num_magnitude_bins`` - 1 (the standard ranges: shear 0.3, translate 150/331 of the side,
    rotate 30 degrees, colour 0.9, posterize to 4 bits)."""

    def __init__(self, num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31, *, order=None):
        super().__init__(order)
        if num_ops < 0:
            raise ValueError(f"num_ops must be >= 0, got {num_ops}")
        if not 0 <= magnitude < num_magnitude_bins:
            raise ValueError(f"magnitude must be in [0, {num_magnitude_bins - 1}] (num_magnitude_bins - 1), "
                             f"got {magnitude}")
        self.num_ops, self.magnitude, self.bins = int(num_ops), int(magnitude), int(num_magnitude_bins)

    def _augment(self, image):
        space = _space("standard", self.bins, *image.shape[:2])
        names = list(space)
        for _ in range(self.num_ops):
            name = names[np.random.randint(len(names))]
            magnitudes, signed = space[name]
            image = apply_op(image, name, _signed(float(magnitudes[self.magnitude]), signed))
        return image

    def __repr__(self):
        return f"RandAugment(num_ops={self.num_ops}, magnitude={self.magnitude}, num_magnitude_bins={self.bins})"


#: the learned ImageNet policy of AutoAugment (Cubuk et al. 2019, appendix): 25 sub-policies of
#: two (operation, probability, magnitude bin of 10 or None)
AUTO_AUGMENT_POLICIES: Dict[str, List[Tuple[Tuple[str, float, Optional[int]], ...]]] = {"imagenet": [
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)), (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)), (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, None)), (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)), (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)), (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
    (("Equalize", 0.0, None), ("Equalize", 0.8, None)), (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)), (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)), (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, None)), (("Color", 0.4, 0), ("Equalize", 0.6, None)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)), (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
]}


class AutoAugment(_Policy):
    """One sub-policy of a learned policy (:data:`AUTO_AUGMENT_POLICIES`, ``"imagenet"``) drawn
    uniformly per image; each of its two operations applied with its probability, at its
    magnitude bin of 10 (standard ranges)."""

    def __init__(self, policy: str = "imagenet", *, order=None):
        super().__init__(order)
        if policy not in AUTO_AUGMENT_POLICIES:
            raise ValueError(f"policy must be one of {', '.join(AUTO_AUGMENT_POLICIES)}, got {policy!r}")
        self.policy = policy

    def _augment(self, image):
        space = _space("standard", 10, *image.shape[:2])
        sub = AUTO_AUGMENT_POLICIES[self.policy]
        ops = sub[np.random.randint(len(sub))]
        for name, p, level in ops:
            if np.random.random() < p:
                magnitudes, signed = space.get(name, (np.zeros(10), False))
                magnitude = float(magnitudes[level]) if level is not None else 0.0
                image = apply_op(image, name, _signed(magnitude, signed))
        return image

    def __repr__(self):
        return f"AutoAugment(policy={self.policy!r})"


class RandomErasing(T.VisionTransform):
    """With probability ``p``, one rectangle of the normalised float image (C, H, W) set to
    ``value`` (0: the dataset mean after ``Normalize``; ``"random"``: standard normal noise per
    pixel), its area a uniform fraction ``scale`` of the image and its aspect ratio log-uniform
    in ``ratio`` (up to 10 tries to fit it; the image is unchanged if none fits)."""

    def __init__(self, p: float = 0.5, scale: Tuple[float, float] = (0.02, 0.33),
                 ratio: Tuple[float, float] = (0.3, 3.3), value=0.0, *, order=None):
        super().__init__(order)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p is a probability, got {p!r}")
        if not 0.0 < scale[0] <= scale[1] <= 1.0 or not 0.0 < ratio[0] <= ratio[1]:
            raise ValueError(f"scale must be 0 < min <= max <= 1 and ratio 0 < min <= max, got {scale!r}, {ratio!r}")
        if not (value == "random" or isinstance(value, (int, float))):
            raise ValueError(f"value must be a number or 'random', got {value!r}")
        self.p, self.scale, self.ratio, self.value = float(p), tuple(scale), tuple(ratio), value

    def box(self, height: int, width: int) -> Optional[Tuple[int, int, int, int]]:
        """``(top, left, h, w)`` of a rectangle drawn as the class docstring says, or None."""
        area = height * width
        log_ratio = np.log(self.ratio)
        for _ in range(10):
            target = area * np.random.uniform(*self.scale)
            aspect = float(np.exp(np.random.uniform(*log_ratio)))
            h, w = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
            if 0 < h < height and 0 < w < width:
                return np.random.randint(0, height - h + 1), np.random.randint(0, width - w + 1), h, w
        return None

    def _apply_image(self, image):
        if image.ndim != 3 or image.dtype != np.float32:
            raise TypeError(f"RandomErasing works on normalised float32 (C, H, W) images (after ToMode('CHW')), "
                            f"got {image.dtype} {image.shape}")
        if np.random.random() >= self.p:
            return image
        found = self.box(image.shape[1], image.shape[2])
        if found is None:
            return image
        top, left, h, w = found
        out = image.copy()
        out[:, top:top + h, left:left + w] = (np.random.standard_normal((image.shape[0], h, w)).astype(np.float32)
                                              if self.value == "random" else float(self.value))
        return out

    def _apply_coords(self, coords):
        return coords

    def _apply_mask(self, mask):
        return mask

    def __repr__(self):
        return f"RandomErasing(p={self.p}, scale={self.scale}, ratio={self.ratio}, value={self.value!r})"


#: ``--augment`` choices: name -> a policy transform
POLICIES = ("none", "ta_wide", "randaugment", "autoaugment")


def policy_transform(name: str, randaugment: Sequence[int] = (2, 9)) -> Optional[T.VisionTransform]:
    """The policy augmentation ``name`` of :data:`POLICIES` (None for ``"none"``);
    ``randaugment``: its (num_ops, magnitude)."""
    if name == "none":
        return None
    if name == "ta_wide":
        return TrivialAugmentWide()
    if name == "randaugment":
        return RandAugment(int(randaugment[0]), int(randaugment[1]))
    if name == "autoaugment":
        return AutoAugment("imagenet")
    raise ValueError(f"augment must be one of {', '.join(POLICIES)}, got {name!r}")
