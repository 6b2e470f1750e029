"""Image input rules: what megzoo's transforms, ``megzoo.predict`` and ``megzoo eval`` accept.

An image may be given as

* a path (``str`` or ``os.PathLike``) of a file OpenCV can decode (JPEG, PNG, BMP, WebP, TIFF,
  PPM/PGM, ...), read with ``np.fromfile`` + ``cv2.imdecode`` (so non-ASCII paths work);
* ``bytes`` / ``bytearray`` / ``memoryview`` holding such a file;
* a ``numpy.ndarray`` in OpenCV's convention: (H, W, 3) BGR ``uint8``.

Whatever the source, :func:`read_image` returns a C-contiguous (H, W, 3) ``uint8`` BGR array:

* grayscale ((H, W), (H, W, 1), or a gray file) becomes 3 equal channels;
* an alpha channel ((H, W, 4) BGRA, (H, W, 2) gray + alpha, or in a file) is dropped, not
  composited: transparent pixels keep the colour stored under them;
* 16-bit pixels (``uint16`` arrays, 16-bit PNG/TIFF files) are scaled to 8-bit by
  ``v8 = round(v16 / 257)`` (computed as ``(v16 + 128) // 257``), which maps 0 -> 0 and
  65535 -> 255 exactly; OpenCV's own 8-bit decoding would instead drop the low byte (``v16 >> 8``);
* files are decoded with EXIF orientation applied (OpenCV's ``IMREAD_COLOR``); JPEG files are
  decoded exactly as ``cv2.imread(path, cv2.IMREAD_COLOR)`` does, which is what
  ``megengine.data.dataset.ImageFolder`` uses;
* anything else (float or other integer arrays, other channel counts, empty images, files that
  cannot be read or decoded) raises :class:`ImageError` (a ``ValueError``) naming the file.

Arrays are never modified; a conforming array (C-contiguous (H, W, 3) ``uint8``) is returned as
it is, without a copy.
"""
import os
from typing import Optional, Union

import cv2
import numpy as np

__all__ = ["ImageError", "ImageSource", "read_image", "decode_image", "to_bgr_uint8", "describe_source",
           "IMAGE_EXTENSIONS", "is_image_file"]

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, np.ndarray]

#: file name endings :func:`is_image_file` accepts (the set ``megengine.data.dataset.ImageFolder`` uses)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

_JPEG_MAGIC = b"\xff\xd8\xff"
_ANY_COLOR = cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH


class ImageError(ValueError):
    """An input that is not a usable image; the message names the file (or the input)."""

    def __init__(self, message: str, source: Optional[str] = None):
        super().__init__(message)
        self.source = source  #: the file name, or a description of the input


def is_image_file(path: Union[str, os.PathLike]) -> bool:
    """True when ``path`` ends with one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return os.fspath(path).lower().endswith(IMAGE_EXTENSIONS)


def describe_source(source: ImageSource, index: Optional[int] = None) -> str:
    """How messages and results name ``source``: the path, or ``<bytes #i>`` / ``<array #i>``."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    kind = "array" if isinstance(source, np.ndarray) else "bytes"
    return f"<{kind}>" if index is None else f"<{kind} #{index}>"


def read_image(source: ImageSource, name: Optional[str] = None) -> np.ndarray:
    """``source`` (path, encoded bytes or array; see the module docstring) as a C-contiguous
    (H, W, 3) BGR ``uint8`` array. ``name`` replaces the source's description in error messages."""
    if isinstance(source, np.ndarray):
        return to_bgr_uint8(source, name or "<array>")
    if isinstance(source, (bytes, bytearray, memoryview)):
        return decode_image(source, name or f"<{len(source)} bytes>")
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        label = name or path
        try:
            data = np.fromfile(path, dtype=np.uint8)
        except IsADirectoryError:
            raise ImageError(f"cannot read image {label}: it is a directory", label) from None
        except OSError as exc:
            raise ImageError(f"cannot read image {label}: {exc.strerror or exc}", label) from None
        return decode_image(data, label)
    raise ImageError(f"unsupported image input of type {type(source).__name__}: give a path, the file's bytes "
                     "or an (H, W, 3) BGR uint8 array", name)


def decode_image(data: Union[bytes, bytearray, memoryview, np.ndarray], name: str = "<bytes>") -> np.ndarray:
    """Decode an encoded image file's contents (bytes or a 1-d ``uint8`` array) by the rules above."""
    buffer = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    if buffer.size == 0:
        raise ImageError(f"{name} is not an image: it is empty", name)
    flags = cv2.IMREAD_COLOR if bytes(buffer[:3]) == _JPEG_MAGIC else _ANY_COLOR
    try:
        image = cv2.imdecode(buffer, flags)
    except cv2.error as exc:  # pragma: no cover - OpenCV raises only for empty buffers, handled above
        raise ImageError(f"{name} is not an image OpenCV can decode ({exc})", name) from None
    if image is None:
        raise ImageError(f"{name} is not an image OpenCV can decode (unknown format or damaged file)", name)
    return to_bgr_uint8(image, name)


def to_bgr_uint8(image: np.ndarray, name: str = "<array>") -> np.ndarray:
    """An array by the rules above: gray -> 3 channels, alpha dropped, 16-bit -> 8-bit."""
    if not isinstance(image, np.ndarray):
        raise ImageError(f"{name}: expected a numpy array, got {type(image).__name__}", name)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (2, 3, 4)):
        raise ImageError(f"{name}: an image array must be (H, W), (H, W, 1), (H, W, 3) BGR or (H, W, 4) BGRA, "
                         f"got shape {image.shape}", name)
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError(f"{name}: the image is empty (shape {image.shape})", name)
    if image.dtype == np.uint16:
        image = ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageError(f"{name}: pixels must be uint8 (or uint16, scaled by 1/257), got {image.dtype}; "
                         "convert float images with e.g. (img * 255).round().astype(np.uint8)", name)
    if image.ndim == 2:
        return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 2:  # gray + alpha
        return cv2.cvtColor(np.ascontiguousarray(image[:, :, 0]), cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        image = image[:, :, :3]
    return np.ascontiguousarray(image)
