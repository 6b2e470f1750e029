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

Before a file is decoded, its bytes are checked (:func:`file_problem`): a JPEG with no end-of-image
marker after its first scan or a PNG without ``IEND`` is truncated (OpenCV would decode it with
a grey tail) and refused; an image whose header declares more than :func:`max_image_pixels`
pixels (default 256 megapixels, ``MEGZOO_MAX_IMAGE_PIXELS`` changes it) is refused before any
pixel is decoded (JPEG, PNG, BMP, GIF, WebP, TIFF, PPM/PGM headers are read; other formats are
checked once decoded). Every reader of images (predict, eval, train, clean, calibration) goes
through :func:`decode_image`, so all apply the same checks.

Arrays are never modified; a conforming array (C-contiguous (H, W, 3) ``uint8``) is returned as
it is, without a copy.
"""
import os
import re
from typing import Optional, Tuple, Union

import cv2
import numpy as np

__all__ = ["ImageError", "ImageSource", "read_image", "decode_image", "to_bgr_uint8", "describe_source",
           "IMAGE_EXTENSIONS", "is_image_file", "file_problem", "declared_size", "max_image_pixels",
           "DEFAULT_MAX_IMAGE_PIXELS", "TOO_LARGE"]

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, np.ndarray]

#: file name endings :func:`is_image_file` accepts (the set ``megengine.data.dataset.ImageFolder`` uses)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_EOI = re.compile(b"\xff\xd9")  # a JPEG's end-of-image marker (searched in place, without a copy)
_ANY_COLOR = cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH

#: decoded pixels (width x height) an image may have unless ``MEGZOO_MAX_IMAGE_PIXELS`` says otherwise
#: (256 megapixels: above the largest phone cameras' 200; 768 MB decoded as BGR, while a 20000x20000
#: image would take 1.2 GB and more in every step after)
DEFAULT_MAX_IMAGE_PIXELS = 256_000_000
#: how :func:`file_problem`'s answer for an image over the pixel bound starts
TOO_LARGE = "too large"


class ImageError(ValueError):
    """An input that is not a usable image; the message names the file (or the input)."""

    def __init__(self, message: str, source: Optional[str] = None, reason: Optional[str] = None):
        super().__init__(message)
        self.source = source  #: the file name, or a description of the input
        self.reason = reason or message  #: why, without the name ("zero-byte file", "truncated JPEG (...)", ...)


def max_image_pixels() -> int:
    """The bound on decoded pixels per image: ``MEGZOO_MAX_IMAGE_PIXELS`` (a positive whole
    number) or :data:`DEFAULT_MAX_IMAGE_PIXELS`; read at each call, so worker processes see it."""
    text = os.environ.get("MEGZOO_MAX_IMAGE_PIXELS", "").strip().replace("_", "")
    if not text:
        return DEFAULT_MAX_IMAGE_PIXELS
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"MEGZOO_MAX_IMAGE_PIXELS must be a positive whole number of pixels (e.g. 200000000), "
                         f"got {os.environ['MEGZOO_MAX_IMAGE_PIXELS']!r}")
    return int(text)


def _jpeg_segments(data):
    """(marker, offset) of a JPEG's header segments up to and including its first top-level
    start-of-scan, stepping over segments by their lengths (so an EXIF thumbnail's own markers
    are not taken for the image's)."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        yield marker, i
        if marker == 0xDA:
            return
        i += 2 if (0xD0 <= marker <= 0xD8 or marker == 0x01) else 2 + int.from_bytes(data[i + 2:i + 4], "big")


def _pnm_size(data) -> Optional[Tuple[int, int]]:
    """Width and height of a PPM/PGM/PBM/PFM header (whitespace-separated, ``#`` comments)."""
    head = bytes(data[:1024])
    text = b" ".join(line.split(b"#")[0] for line in head[2:].split(b"\n"))
    fields = text.split()
    if len(fields) >= 2 and fields[0].isdigit() and fields[1].isdigit():
        return int(fields[0]), int(fields[1])
    return None


def _tiff_size(data) -> Optional[Tuple[int, int]]:
    """ImageWidth (256) and ImageLength (257) of a TIFF's first image file directory."""
    order = "little" if bytes(data[:2]) == b"II" else "big"
    ifd = _number(data, 4, 4, order)
    size = {}
    for k in range(min(_number(data, ifd, 2, order), 512)):
        at = ifd + 2 + 12 * k
        if at + 12 > len(data):
            break
        tag, kind = _number(data, at, 2, order), _number(data, at + 2, 2, order)
        if tag in (256, 257):
            size[tag] = _number(data, at + 8, 2 if kind == 3 else 4, order)  # SHORT or LONG
    return (size[256], size[257]) if len(size) == 2 else None


def _number(data, at: int, size: int, order: str, signed: bool = False) -> int:
    return int.from_bytes(bytes(data[at:at + size]), order, signed=signed)


def declared_size(data) -> Optional[Tuple[int, int]]:
    """(width, height) an encoded image's header declares, without decoding: JPEG, PNG, BMP, GIF,
    WebP, TIFF, PPM/PGM/PBM; None for other formats or a header too short to tell."""
    head = bytes(data[:32])
    if head[:8] == _PNG_MAGIC and len(head) >= 24:  # IHDR: width, height
        return _number(head, 16, 4, "big"), _number(head, 20, 4, "big")
    if head[:3] == _JPEG_MAGIC:  # the frame header (SOFn): height, width
        for marker, at in _jpeg_segments(data):
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and at + 9 <= len(data):
                return _number(data, at + 7, 2, "big"), _number(data, at + 5, 2, "big")
        return None
    if head[:2] == b"BM" and len(head) >= 26:
        if _number(head, 14, 4, "little") == 12:  # OS/2 header: 16-bit sides
            return _number(head, 18, 2, "little"), _number(head, 20, 2, "little")
        return (abs(_number(head, 18, 4, "little", signed=True)),
                abs(_number(head, 22, 4, "little", signed=True)))  # negative height: stored top-down
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        return _number(head, 6, 2, "little"), _number(head, 8, 2, "little")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and len(head) >= 30:
        chunk = head[12:16]
        if chunk == b"VP8 ":  # lossy: 14-bit sides after the start code
            return _number(head, 26, 2, "little") & 0x3FFF, _number(head, 28, 2, "little") & 0x3FFF
        if chunk == b"VP8L":  # lossless: two 14-bit fields, side - 1
            bits = _number(head, 21, 4, "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if chunk == b"VP8X":  # extended: 24-bit canvas sides - 1
            return _number(head, 24, 3, "little") + 1, _number(head, 27, 3, "little") + 1
        return None
    if head[:4] in (b"II*\x00", b"MM\x00*") and len(head) >= 8:
        return _tiff_size(data)
    if head[:1] == b"P" and head[1:2] in b"123456fF" and len(head) >= 3:
        return _pnm_size(data)
    return None


def _too_large(width: int, height: int) -> str:
    limit = max_image_pixels()
    if width * height <= limit:
        return ""
    return (f"{TOO_LARGE}: {width}x{height} pixels ({width * height / 1e6:.1f} megapixels), over the limit of "
            f"{limit / 1e6:g} megapixels (set MEGZOO_MAX_IMAGE_PIXELS to allow more)")


def file_problem(data) -> str:
    """Why an encoded image (bytes or a 1-d ``uint8`` array) cannot be used, from its bytes alone,
    before decoding; "" if none found: ``"zero-byte file"``, ``"truncated JPEG (no end-of-image
    marker)"``, ``"truncated PNG (no IEND chunk)"``, or :data:`TOO_LARGE` and the size for more
    pixels than :func:`max_image_pixels`. A JPEG is complete when an end-of-image marker follows
    its first scan (entropy-coded data cannot hold one), whatever comes after it (motion photos
    append a video)."""
    buffer = memoryview(np.ascontiguousarray(data, dtype=np.uint8) if isinstance(data, np.ndarray) else data).cast("B")
    if len(buffer) == 0:  # (a memoryview: bytes read in place; an array's items are slow to index one by one)
        return "zero-byte file"
    size = declared_size(buffer)
    if size is not None and _too_large(*size):
        return _too_large(*size)
    head = bytes(buffer[:8])
    if head[:3] == _JPEG_MAGIC:
        scan = next((at for marker, at in _jpeg_segments(buffer) if marker == 0xDA), -1)
        ends = scan >= 0 and bytes(buffer[-2:]) == b"\xff\xd9"  # the usual case, without a search
        if scan < 0 or not (ends or _EOI.search(buffer, scan)):
            return "truncated JPEG (no end-of-image marker)"
    if head == _PNG_MAGIC and b"IEND" not in bytes(buffer[-16:]):
        return "truncated PNG (no IEND chunk)"
    return ""


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
    """Decode an encoded image file's contents (bytes or a 1-d ``uint8`` array) by the rules above,
    after :func:`file_problem`'s checks (an :class:`ImageError` names the file and the reason)."""
    buffer = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    problem = file_problem(buffer)
    if problem == "zero-byte file":
        raise ImageError(f"{name} is not an image: it is empty", name, problem)
    if problem.startswith(TOO_LARGE):
        raise ImageError(f"{name} is {problem}", name, problem)
    if problem:
        raise ImageError(f"{name} is not an image OpenCV can decode: {problem}", name, problem)
    flags = cv2.IMREAD_COLOR if bytes(buffer[:3]) == _JPEG_MAGIC else _ANY_COLOR
    try:
        image = cv2.imdecode(buffer, flags)
    except cv2.error as exc:  # OpenCV's own size limit, or a decoder's error
        raise ImageError(f"{name} is not an image OpenCV can decode ({exc})", name,
                         "not an image OpenCV can decode") from None
    if image is None:
        raise ImageError(f"{name} is not an image OpenCV can decode (unknown format or damaged file)", name,
                         "not an image OpenCV can decode")
    problem = _too_large(image.shape[1], image.shape[0])  # a format whose header is not read above
    if problem:
        raise ImageError(f"{name} is {problem}", name, problem)
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
    if image.dtype == np.uint16:  # row blocks of about 1M values: no full-size 32-bit copies
        scaled = np.empty(image.shape, np.uint8)
        rows = max(1, (1 << 20) // max(1, image[0].size))
        for top in range(0, image.shape[0], rows):
            block = image[top:top + rows].astype(np.uint32)
            block += 128
            block //= 257
            scaled[top:top + rows] = block
        image = scaled
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
