"""Deterministic stand-ins for torchvision weights, shared by the fixture script (run under torch)
and the tests (run under MegEngine, without torch).

``make_state_dict(layout)`` fills every key of a torchvision state-dict layout
(``{key: shape}``) with values drawn from a generator seeded by the key itself, so the same
numbers come out wherever it runs. ``make_image()`` is the BGR uint8 test image.
"""
import zlib

import numpy as np

ARCHS = ("resnet18", "resnext50_32x4d", "vgg11", "vgg11_bn")
IMAGE_SIZE = 96  # not a multiple of 32 * 7: exercises adaptive pooling in the VGG head
TORCHVISION_MEAN_RGB = (0.485, 0.456, 0.406)
TORCHVISION_STD_RGB = (0.229, 0.224, 0.225)


def _rng(key: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(key.encode()))


def make_value(key: str, shape) -> np.ndarray:
    rng = _rng(key)
    shape = tuple(shape)
    if key.endswith("num_batches_tracked"):
        return np.zeros(shape, dtype=np.int64)
    if key.endswith("running_var"):
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if key.endswith("running_mean"):
        return rng.normal(0.0, 0.1, shape).astype(np.float32)
    if len(shape) == 1 and key.endswith("weight"):  # BatchNorm gamma
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if len(shape) == 1:  # biases
        return rng.normal(0.0, 0.05, shape).astype(np.float32)
    fan_in = int(np.prod(shape[1:]))
    return rng.normal(0.0, (1.0 / fan_in) ** 0.5, shape).astype(np.float32)


def make_state_dict(layout):
    """``{key: shape}`` -> ``{key: ndarray}`` with deterministic values."""
    return {key: make_value(key, shape) for key, shape in layout.items()}


def make_image() -> np.ndarray:
    """(IMAGE_SIZE, IMAGE_SIZE, 3) uint8, BGR: a smooth pattern plus noise."""
    rng = np.random.default_rng(1234)
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] / IMAGE_SIZE
    base = np.stack([xx, yy, 1 - xx * yy], axis=-1) * 200
    return np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)


def torchvision_input(image_bgr: np.ndarray) -> np.ndarray:
    """What torchvision's preprocessing gives for this image: RGB, /255, its mean/std; (1, 3, H, W)."""
    rgb = image_bgr[:, :, ::-1].astype(np.float32) / 255.0
    x = (rgb - np.array(TORCHVISION_MEAN_RGB, np.float32)) / np.array(TORCHVISION_STD_RGB, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])
