"""Image health with OpenCV: unreadable, grayscale among colour, odd size, near-constant, exact duplicates.

Each file is read once (:func:`check_images`), with megzoo's image checks
(:func:`megzoo.images.file_problem`): its bytes give the failure kind (zero-byte, not an image, a
JPEG without its end marker or a PNG without ``IEND``: truncated, which OpenCV would otherwise
decode with a grey tail; more pixels than :func:`megzoo.images.max_image_pixels`: "too large to
check", refused from its header before decoding), its pixels the shape, the colour test (all three
channels equal to within :data:`GRAY_TOLERANCE`), the pixel standard deviation and a content hash
(SHA-1 of the decoded pixels and shape, so a copy saved under another name or re-encoded
losslessly is the same image). The statistics are computed in row blocks, without full-size
temporaries: memory per thread is about the decoded image (3 bytes a pixel) and its grey copy.
The flags are then set against the dataset (:func:`health_flags`): ``grayscale`` only when most
images are colour; ``odd_size`` when an image's area or aspect ratio is far from the median.
"""
import hashlib
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..images import TOO_LARGE, ImageError, decode_image, file_problem

__all__ = ["ImageHealth", "check_images", "health_flags", "duplicate_groups", "GRAY_TOLERANCE",
           "CONSTANT_STD", "ODD_AREA_RATIO", "ODD_ASPECT_RATIO", "MIN_SIDE"]

#: a colour image whose channels differ by at most this (0-255) everywhere counts as grayscale
GRAY_TOLERANCE = 2
#: an image whose pixel standard deviation (0-255) is below this is near-constant (blank, one colour)
CONSTANT_STD = 2.0
#: ``odd_size``: area more than this many times the median's, or less than its inverse ...
ODD_AREA_RATIO = 4.0
#: ... or aspect ratio (long side / short side) more than this many times the median's ...
ODD_ASPECT_RATIO = 2.0
#: ... or a side shorter than this (px)
MIN_SIDE = 8
#: side (px) of the grey thumbnail kept for near-duplicate confirmation
THUMB = 16
_NO_THUMB = np.zeros(THUMB * THUMB, np.float32)


@dataclass
class ImageHealth:
    """What one read of each file found, aligned with the paths given (N,). ``problem``: why the
    file cannot be used ("" if readable); ``height``/``width`` (0 if unreadable); ``gray``:
    stored with one channel or with three (nearly) equal ones; ``std``: pixel standard deviation;
    ``digest``: content hash ("" if unreadable); ``sizes``: file sizes in bytes."""

    problem: List[str] = field(default_factory=list)
    height: List[int] = field(default_factory=list)
    width: List[int] = field(default_factory=list)
    gray: List[bool] = field(default_factory=list)
    std: List[float] = field(default_factory=list)
    digest: List[str] = field(default_factory=list)
    sizes: List[int] = field(default_factory=list)
    thumbs: List[np.ndarray] = field(default_factory=list)  #: :data:`THUMB` px grey thumbnails, zero mean, unit norm

    def thumbnails(self) -> np.ndarray:
        """(N, THUMB * THUMB) float32; zero rows for unreadable files."""
        return np.stack(self.thumbs) if self.thumbs else np.zeros((0, THUMB * THUMB), np.float32)

    @property
    def readable(self) -> np.ndarray:
        return np.array([not p for p in self.problem], dtype=bool)


def _thumbnail(image: np.ndarray) -> np.ndarray:
    import cv2

    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    t = cv2.resize(grey, (THUMB, THUMB), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    t -= t.mean()
    return t / max(float(np.linalg.norm(t)), 1e-6)


def _spread_and_std(image: np.ndarray):
    """(the largest channel spread max - min of any pixel, the pixel standard deviation) of a
    (H, W, 3) uint8 image, in row blocks of about 1M pixels (no full-size temporaries)."""
    import cv2

    rows = max(1, (1 << 20) // max(1, image.shape[1]))
    spread = 0
    for top in range(0, image.shape[0], rows):
        block = image[top:top + rows]
        spread = max(spread, int((block.max(axis=2) - block.min(axis=2)).max()))
        if spread > GRAY_TOLERANCE:
            break
    means, stds = cv2.meanStdDev(image)  # per channel, in double precision
    means, stds = means.ravel(), stds.ravel()
    variance = float(np.mean(stds ** 2 + means ** 2) - np.mean(means) ** 2)
    return spread, float(np.sqrt(max(variance, 0.0)))


def _read_one(path: str):
    """(problem, height, width, gray, std, digest, size, thumbnail) of one file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        return f"cannot open ({exc.strerror or exc})", 0, 0, False, 0.0, "", 0, _NO_THUMB
    problem = file_problem(data)
    if problem.startswith(TOO_LARGE):
        problem = "too large to check" + problem[len(TOO_LARGE):]
    if problem:
        return problem, 0, 0, False, 0.0, "", len(data), _NO_THUMB
    # decoded as every reader of megzoo decodes it (megzoo.images: 8-bit BGR, 16-bit scaled by
    # 1/257, alpha dropped, one channel repeated), so health and duplicates are of what the trainer sees
    try:
        image = decode_image(data, path)
    except ImageError as exc:
        return exc.reason, 0, 0, False, 0.0, "", len(data), _NO_THUMB
    h, w = image.shape[:2]
    spread, std = _spread_and_std(image)
    digest = hashlib.sha1(f"{image.shape}".encode())
    digest.update(image.reshape(-1))  # C-contiguous: hashed in place
    return "", int(h), int(w), spread <= GRAY_TOLERANCE, std, digest.hexdigest(), len(data), _thumbnail(image)


def check_images(paths: Sequence[str], progress: bool = True, workers: Optional[int] = None) -> ImageHealth:
    """Read every file of ``paths`` once (in ``workers`` threads; OpenCV decodes without the GIL)
    and record what it found (:class:`ImageHealth`)."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    workers = workers or min(8, os.cpu_count() or 1)
    health = ImageHealth()
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(_read_one, paths, chunksize=16)
        for r in tqdm(results, total=len(paths), desc="reading images", unit="img", file=sys.stderr,
                      disable=not progress, leave=False):
            for name, value in zip(("problem", "height", "width", "gray", "std", "digest", "sizes", "thumbs"), r):
                getattr(health, name).append(value)
    return health


def duplicate_groups(digests: Sequence[str]) -> List[List[int]]:
    """Indices of images with the same content, in groups of two or more (in index order)."""
    groups: Dict[str, List[int]] = {}
    for i, d in enumerate(digests):
        if d:
            groups.setdefault(d, []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def health_flags(health: ImageHealth) -> Dict[str, np.ndarray]:
    """Boolean (N,) arrays per flag: ``unreadable``, ``grayscale`` (only when most readable
    images are colour), ``odd_size``, ``near_constant``."""
    ok = health.readable
    h, w = np.asarray(health.height, dtype=np.float64), np.asarray(health.width, dtype=np.float64)
    gray = np.asarray(health.gray, dtype=bool) & ok
    flags = {"unreadable": ~ok, "grayscale": np.zeros(len(ok), dtype=bool), "odd_size": np.zeros(len(ok), dtype=bool),
             "near_constant": (np.asarray(health.std) < CONSTANT_STD) & ok}
    if ok.any():
        if gray.sum() < 0.5 * ok.sum():
            flags["grayscale"] = gray
        area = h * w
        aspect = np.maximum(h, w) / np.maximum(np.minimum(h, w), 1)
        med_area, med_aspect = np.median(area[ok]), np.median(aspect[ok])
        odd = ((area > ODD_AREA_RATIO * med_area) | (area < med_area / ODD_AREA_RATIO)
               | (aspect > ODD_ASPECT_RATIO * med_aspect) | (np.minimum(h, w) < MIN_SIDE))
        flags["odd_size"] = odd & ok
    return flags
