"""Transform presets (built from ``megengine.data.transform``) and a fast batch path for inference.

Presets, to plug into ``megengine.data.DataLoader`` (images in BGR uint8 (H, W, 3), as
``megengine.data.dataset.ImageFolder`` gives them; output float32 (3, H, W)):

* :func:`train_transform`: ``RandomResizedCrop(224)`` + ``RandomHorizontalFlip`` (+ optional
  ``ColorJitter`` / ``Lighting``, off by default) + ``Normalize`` + ``ToMode("CHW")``;
* :func:`eval_transform`: ``Resize`` (shorter side to ``resize_size``) + ``CenterCrop`` +
  ``Normalize`` + ``ToMode("CHW")``, parameterised by size, resize size and interpolation, or
  read from a weight's metadata: ``eval_transform("resnet50")`` (its default weights),
  ``eval_transform("resnet50.tv2_in1k")`` (resize 232), ``eval_transform(weights_object)``.

The fast path, :class:`EvalPreprocessor`, gives the same arrays as :func:`eval_transform` (bit for
bit on every input tried: same ``cv2.resize`` call, same output shape rounding, same crop offsets,
and a per-channel float32 look-up table holding exactly ``(v - mean) / std`` for each of the 256
values ``v``) for a whole batch at once: it decodes and resizes with OpenCV, writes the normalised
planes straight into one preallocated (N, 3, H, W) float32 array with ``cv2.LUT``, and can spread
images over a thread pool (OpenCV releases the GIL while decoding and resizing).
"""
import collections
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import cv2
import megengine.data.transform as T
import megengine.module as M
import numpy as np

from .host import usable_cpus
from .images import ImageSource, describe_source, read_image
from .registry import get_model_entry, get_weights
from .weights.catalog import MEAN_BGR, STD_BGR, WEIGHTS, Preprocess, Weights, weights_for
from .weights.limits import check_size

__all__ = ["INTERPOLATIONS", "interpolation_flag", "resolve_preprocess", "train_transform", "eval_transform",
           "resized_shape", "center_crop_offsets", "EvalPreprocessor", "SwapRB", "default_workers", "as_image_list"]

#: interpolation names accepted by ``Preprocess.interpolation`` and every ``interpolation=`` argument
INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "linear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "cubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
    "lanczos4": cv2.INTER_LANCZOS4,
}
_FLAG_NAMES = {cv2.INTER_NEAREST: "nearest", cv2.INTER_LINEAR: "bilinear", cv2.INTER_CUBIC: "bicubic",
               cv2.INTER_AREA: "area", cv2.INTER_LANCZOS4: "lanczos"}


def interpolation_flag(interpolation: Union[str, int]) -> int:
    """The ``cv2.INTER_*`` flag of ``interpolation`` (a name from :data:`INTERPOLATIONS` or a flag)."""
    if isinstance(interpolation, str):
        flag = INTERPOLATIONS.get(interpolation.lower())
        if flag is None:
            raise ValueError(f"unknown interpolation {interpolation!r}; use one of {', '.join(INTERPOLATIONS)}")
        return flag
    if isinstance(interpolation, (int, np.integer)) and not isinstance(interpolation, bool) \
            and int(interpolation) in _FLAG_NAMES:
        return int(interpolation)
    raise ValueError(f"interpolation must be a name ({', '.join(INTERPOLATIONS)}) or a cv2.INTER_* flag, "
                     f"got {interpolation!r}")


# -- which preprocessing ---------------------------------------------------------------------------

def resolve_preprocess(spec=None, **overrides) -> Preprocess:
    """The :class:`~megzoo.weights.Preprocess` record for ``spec``, with ``overrides`` applied.

    ``spec`` may be None (megzoo's defaults: 224 crop of a 256 resize, bilinear, BGR, MegEngine
    mean/std), a model name (its default weights' record, e.g. ``"resnet50"``), a weight name
    ``"ARCH.TAG"`` (e.g. ``"resnet50.tv2_in1k"``, resize 232), a :class:`Weights`, a
    :class:`Preprocess`, a dict of its fields, or a megzoo model (the record of the registered
    weights it was loaded with, else the defaults). ``overrides`` are ``input_size``,
    ``resize_size``, ``interpolation``, ``color_order``, ``mean``, ``std``; None values are ignored.
    """
    from dataclasses import fields, replace

    if spec is None:
        record = Preprocess()
    elif isinstance(spec, Preprocess):
        record = spec
    elif isinstance(spec, Weights):
        record = spec.preprocess
    elif isinstance(spec, str):
        record = _preprocess_of_name(spec)
    elif isinstance(spec, dict):
        record = Preprocess(**spec)
    elif isinstance(spec, M.Module) or hasattr(spec, "load_report"):
        record = _preprocess_of_model(spec)
    else:
        raise TypeError(f"cannot take preprocessing from {type(spec).__name__}: give a model or weight name, "
                        "a Weights or Preprocess object, a dict, a model or None")
    known = {f.name for f in fields(Preprocess)}
    unknown = set(overrides) - known
    if unknown:
        raise TypeError(f"unknown preprocessing option(s): {', '.join(sorted(unknown))}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    for key in ("mean", "std"):
        if key in changes:
            changes[key] = tuple(float(v) for v in changes[key])
    record = replace(record, **changes) if changes else record
    _check_preprocess(record)
    return record


def _preprocess_of_name(name: str) -> Preprocess:
    arch = name.partition(".")[0]
    if "." not in name:
        get_model_entry(arch)  # unknown names -> UnknownModelError with close names
        if not weights_for(arch):
            return Preprocess()
    return get_weights(name).preprocess


def _preprocess_of_model(model) -> Preprocess:
    report = getattr(model, "load_report", None)
    source = getattr(report, "source", None)
    if isinstance(source, str) and source in WEIGHTS:
        return WEIGHTS[source].preprocess
    return Preprocess()


def _check_preprocess(p: Preprocess) -> None:
    for key in ("input_size", "resize_size"):
        check_size(key, getattr(p, key))  # positive, within megzoo.weights.limits
    if p.resize_size < p.input_size:
        raise ValueError(f"resize_size ({p.resize_size}) must be at least input_size ({p.input_size}): the centre "
                         "crop is taken from the resized image")
    interpolation_flag(p.interpolation)
    if p.color_order not in ("BGR", "RGB"):
        raise ValueError(f"color_order must be 'BGR' or 'RGB', got {p.color_order!r}")
    for key in ("mean", "std"):
        if len(getattr(p, key)) != 3:
            raise ValueError(f"{key} must have 3 values (one per channel), got {getattr(p, key)!r}")
    if any(s == 0 for s in p.std):
        raise ValueError(f"std must not contain 0, got {p.std!r}")


# -- MegEngine presets -----------------------------------------------------------------------------

class SwapRB(T.VisionTransform):
    """BGR <-> RGB on the image (for weights whose ``color_order`` is ``"RGB"``)."""

    def _apply_image(self, image):
        return np.ascontiguousarray(image[:, :, ::-1])

    def _apply_coords(self, coords):
        return coords

    def _apply_mask(self, mask):
        return mask


def train_transform(input_size: int = 224, *, scale: Tuple[float, float] = (0.08, 1.0),
                    ratio: Tuple[float, float] = (3.0 / 4, 4.0 / 3), interpolation: Union[str, int] = "bilinear",
                    hflip: float = 0.5, color_jitter: Union[float, Sequence[float]] = 0.0, lighting: float = 0.0,
                    mean: Sequence[float] = MEAN_BGR, std: Sequence[float] = STD_BGR,
                    color_order: str = "BGR", augment: Optional[T.VisionTransform] = None,
                    random_erasing: float = 0.0) -> T.Compose:
    """ImageNet training augmentation as a ``megengine.data.transform.Compose``.

    ``RandomResizedCrop(input_size, scale, ratio, interpolation)``, ``RandomHorizontalFlip(hflip)``
    (left out when 0), then, when asked: ``ColorJitter`` (``color_jitter``: one number for
    brightness, contrast and saturation alike, or a (brightness, contrast, saturation[, hue])
    tuple; 0 = off) and ``Lighting(lighting)`` (AlexNet-style PCA noise, e.g. 0.1; 0 = off),
    then ``Normalize(mean, std)`` and ``ToMode("CHW")``. Input: BGR uint8 (H, W, 3); output
    float32 (3, input_size, input_size). ``color_order="RGB"`` adds :class:`SwapRB` just before
    ``Normalize`` (give RGB ``mean``/``std`` with it). ``augment``: a policy of
    :mod:`megzoo.augment` (TrivialAugmentWide, RandAugment, AutoAugment), after the flip and the
    jitter; ``random_erasing``: probability of :class:`megzoo.augment.RandomErasing` (value 0, the
    mean), last, on the normalised image.
    """
    flag = interpolation_flag(interpolation)
    if not 0.0 <= hflip <= 1.0:
        raise ValueError(f"hflip is a probability in [0, 1], got {hflip!r}")
    steps: List[T.VisionTransform] = [T.RandomResizedCrop(input_size, scale_range=tuple(scale),
                                                          ratio_range=tuple(ratio), interpolation=flag)]
    if hflip > 0:
        steps.append(T.RandomHorizontalFlip(hflip))
    jitter = _jitter_values(color_jitter)
    if any(jitter):
        brightness, contrast, saturation, hue = jitter
        steps.append(T.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue))
    if lighting:
        steps.append(T.Lighting(lighting))
    if augment is not None:
        steps.append(augment)
    tail = _tail(mean, std, color_order)
    if random_erasing:
        from .augment import RandomErasing

        tail.append(RandomErasing(random_erasing))
    return T.Compose(steps + tail)


def _jitter_values(color_jitter) -> Tuple[float, float, float, float]:
    if isinstance(color_jitter, (int, float)):
        value = float(color_jitter)
        return value, value, value, 0.0
    values = tuple(float(v) for v in color_jitter)
    if len(values) == 3:
        values += (0.0,)
    if len(values) != 4:
        raise ValueError("color_jitter is a number or (brightness, contrast, saturation[, hue]), "
                         f"got {color_jitter!r}")
    return values  # type: ignore[return-value]


def _tail(mean, std, color_order: str) -> List[T.VisionTransform]:
    steps: List[T.VisionTransform] = [SwapRB()] if color_order == "RGB" else []
    return steps + [T.Normalize(mean=list(mean), std=list(std)), T.ToMode("CHW")]


def eval_transform(spec=None, *, input_size: Optional[int] = None, resize_size: Optional[int] = None,
                   interpolation: Union[None, str, int] = None, mean: Optional[Sequence[float]] = None,
                   std: Optional[Sequence[float]] = None) -> T.Compose:
    """Evaluation preprocessing as a ``megengine.data.transform.Compose``:
    ``Resize(resize_size)`` (the shorter side; MegEngine computes the longer one as
    ``int(resize_size * long / short)``), ``CenterCrop(input_size)``, ``Normalize(mean, std)``,
    ``ToMode("CHW")``. ``spec`` picks the record (see :func:`resolve_preprocess`: a model name,
    ``"ARCH.TAG"``, a Weights/Preprocess object, a model, or None for 224/256 bilinear); the
    keywords override it. Input BGR uint8 (H, W, 3); output float32 (3, input_size, input_size).
    """
    p = resolve_preprocess(spec, input_size=input_size, resize_size=resize_size,
                           interpolation=_interp_name(interpolation), mean=mean, std=std)
    return T.Compose([T.Resize(p.resize_size, interpolation_flag(p.interpolation)), T.CenterCrop(p.input_size)]
                     + _tail(p.mean, p.std, p.color_order))


def _interp_name(interpolation):
    if interpolation is None or isinstance(interpolation, str):
        return interpolation
    return _FLAG_NAMES[interpolation_flag(interpolation)]


# -- geometry, exactly as MegEngine's Resize(int) and CenterCrop compute it ------------------------

def resized_shape(height: int, width: int, resize_size: int) -> Tuple[int, int]:
    """(height, width) after ``megengine.data.transform.Resize(resize_size)``: the shorter side
    becomes ``resize_size`` and the other ``int(resize_size * long / short)`` (truncated, in
    float64); a square image or one whose shorter side already is ``resize_size`` is unchanged."""
    if min(height, width) == resize_size:
        return height, width
    if height < width:
        return resize_size, int(resize_size * width / height)
    return int(resize_size * height / width), resize_size


def center_crop_offsets(height: int, width: int, size: int) -> Tuple[int, int]:
    """(top, left) of ``megengine.data.transform.CenterCrop(size)``: ``int(round((side - size) / 2))``
    with Python's round (ties to even: a 117-px margin puts 58 px before the crop)."""
    if size > height or size > width:
        raise ValueError(f"crop of {size} px is larger than the {height}x{width} image")
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


# -- the fast path ---------------------------------------------------------------------------------

def default_workers() -> int:
    """Decode threads used when ``workers=None``: the CPU cores this process may use, at most 8."""
    return max(1, min(8, usable_cpus()))


class EvalPreprocessor:
    """Batch evaluation preprocessing: images (paths, bytes or arrays, see :mod:`megzoo.images`)
    -> float32 (N, 3, input_size, input_size), equal to :func:`eval_transform` of the same record
    applied to each decoded image and stacked.

    ``spec`` and the keywords choose the record as in :func:`eval_transform`. ``workers`` is the
    number of decode/resize threads: 0 works in the calling thread, None uses
    :func:`default_workers`. Use as a context manager (or call :meth:`close`) to stop the threads.

        pre = EvalPreprocessor("resnet50.tv2_in1k", workers=2)
        batch = pre(["a.jpg", "b.png"])             # (2, 3, 224, 224) float32
        for batch in pre.batches(paths, 32): ...    # decodes the next batches while you use this one
    """

    def __init__(self, spec=None, *, input_size: Optional[int] = None, resize_size: Optional[int] = None,
                 interpolation: Union[None, str, int] = None, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, workers: Optional[int] = 0):
        self.preprocess = resolve_preprocess(spec, input_size=input_size, resize_size=resize_size,
                                             interpolation=_interp_name(interpolation), mean=mean, std=std)
        p = self.preprocess
        self.size = int(p.input_size)
        self.resize_size = int(p.resize_size)
        self.flag = interpolation_flag(p.interpolation)
        # the exact float32 values Normalize computes, (uint8 v - float32 mean) / float32 std, per channel
        mean32 = np.asarray(p.mean, dtype=np.float32)
        std32 = np.asarray(p.std, dtype=np.float32)
        table = (np.arange(256, dtype=np.uint8)[:, None] - mean32) / std32  # (256, 3) float32
        self._luts = [np.ascontiguousarray(table[:, c]).reshape(1, 256) for c in range(3)]
        # output channel c comes from input plane _planes[c] (BGR input; reversed for RGB weights)
        self._planes = (2, 1, 0) if p.color_order == "RGB" else (0, 1, 2)
        if workers is None:
            workers = default_workers()
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
            raise ValueError(f"workers must be an int >= 0 (0: no threads), got {workers!r}")
        self.workers = workers
        self._pool: Optional[ThreadPoolExecutor] = None

    def __repr__(self) -> str:
        p = self.preprocess
        return (f"EvalPreprocessor(input_size={p.input_size}, resize_size={p.resize_size}, "
                f"interpolation={p.interpolation!r}, color_order={p.color_order!r}, mean={p.mean}, std={p.std}, "
                f"workers={self.workers})")

    # -- one image
    def transform(self, image: ImageSource, out: Optional[np.ndarray] = None, name: Optional[str] = None) -> np.ndarray:
        """One image -> (3, size, size) float32, written into ``out`` when given (a C-contiguous
        float32 array of that shape, e.g. ``batch[i]``)."""
        image = read_image(image, name)
        h, w = image.shape[:2]
        th, tw = resized_shape(h, w, self.resize_size)
        if (th, tw) != (h, w):
            image = cv2.resize(image, (tw, th), interpolation=self.flag)
        top, left = center_crop_offsets(th, tw, self.size)
        crop = image[top:top + self.size, left:left + self.size]
        if out is None:
            out = np.empty((3, self.size, self.size), dtype=np.float32)
        planes = cv2.split(crop)
        for c, source in enumerate(self._planes):
            cv2.LUT(planes[source], self._luts[c], dst=out[c])
        return out

    # -- batches
    def new_batch(self, n: int) -> np.ndarray:
        return np.empty((n, 3, self.size, self.size), dtype=np.float32)

    def __call__(self, images: Union[ImageSource, Sequence[ImageSource]],
                 out: Optional[np.ndarray] = None) -> np.ndarray:
        """A list of images -> (N, 3, size, size) float32 (into ``out`` when given); a single
        image (a path, bytes or an array of 2 or 3 dimensions) -> (1, 3, size, size)."""
        images = as_image_list(images)
        if out is None:
            out = self.new_batch(len(images))
        else:
            shape = (len(images), 3, self.size, self.size)
            if out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
                raise ValueError(f"out must be a C-contiguous float32 array of shape {shape}")
        if not self.workers:
            for i, image in enumerate(images):
                self.transform(image, out[i], _name(image, i))
        else:
            _wait(self._submit(images, out, 0))
        return out

    def batches(self, images: Iterable[ImageSource], batch_size: int, prefetch: int = 2) -> Iterator[np.ndarray]:
        """Yield (n, 3, size, size) float32 batches of ``batch_size`` images (the last may be
        smaller), in order. With workers, the next ``prefetch`` batches are decoded while the
        caller uses the current one; every yielded array is a new one the caller may keep."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        images = list(images)
        chunks = [images[i:i + batch_size] for i in range(0, len(images), batch_size)]
        if not self.workers:
            for start, chunk in zip(range(0, len(images), batch_size), chunks):
                out = self.new_batch(len(chunk))
                for i, image in enumerate(chunk):
                    self.transform(image, out[i], _name(image, start + i))
                yield out
            return
        pending: "collections.deque[Tuple[np.ndarray, List[Future]]]" = collections.deque()
        starts = iter(range(0, len(images), batch_size))
        chunk_iter = iter(chunks)
        try:
            while True:
                while len(pending) <= prefetch:
                    chunk = next(chunk_iter, None)
                    if chunk is None:
                        break
                    out = self.new_batch(len(chunk))
                    pending.append((out, self._submit(chunk, out, next(starts))))
                if not pending:
                    return
                out, futures = pending.popleft()
                _wait(futures)
                yield out
        finally:
            for _, futures in pending:
                for future in futures:
                    future.cancel()

    def _submit(self, images: Sequence[ImageSource], out: np.ndarray, start: int) -> List[Future]:
        """Queue ``transform(images[i], out[i])`` on the worker threads."""
        pool = self._get_pool()
        return [pool.submit(self.transform, image, out[i], _name(image, start + i)) for i, image in enumerate(images)]

    def _get_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="megzoo-decode")
        return self._pool

    def close(self) -> None:
        """Stop the worker threads (they are started again when needed)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "EvalPreprocessor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _wait(futures: List[Future]) -> None:
    """Wait for every future in order; on the first error cancel those not started and raise it."""
    try:
        for future in futures:
            future.result()
    except BaseException:
        for future in futures:
            future.cancel()
        raise


def _name(image: ImageSource, index: int) -> Optional[str]:
    """Error-message name of the ``index``-th input (paths name themselves)."""
    if isinstance(image, (str, os.PathLike)):
        return None
    return describe_source(image, index)


def as_image_list(images) -> list:
    """``images`` as a list: a single path, bytes object or image array becomes a list of one."""
    if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview)):
        return [images]
    if isinstance(images, np.ndarray):
        if images.ndim in (2, 3):
            return [images]
        if images.ndim == 4:
            return list(images)
        raise ValueError(f"an image array has 2 or 3 dimensions (a batch 4), got shape {images.shape}")
    return list(images)
