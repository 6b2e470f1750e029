"""The images a post-training quantization calibrates on: a folder, an array or an iterator of batches.

:func:`calibration_batches` turns what the user gives into float32 (N, C, H, W) batches for the
model: an image folder is read through the model's evaluation preprocessing (the transform its
weights were trained and evaluated with, :class:`megzoo.transforms.EvalPreprocessor`), so the
calibrated ranges are those the model sees at inference. Calibrate on training images, not on
the images you report accuracy on.
"""
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Union

import numpy as np

from ..data.folders import list_image_files

__all__ = ["CalibrationSet", "calibration_batches", "list_images", "DEFAULT_MAX_IMAGES"]

#: images read from a folder unless told (MegEngine/Models and torchvision calibrate on a few hundred to a few thousand)
DEFAULT_MAX_IMAGES = 512


@dataclass
class CalibrationSet:
    """What a calibration ran on: ``source`` (the folder, or ``"array"``/``"iterator"``),
    ``images`` (how many), ``batches``; kept in the int8 model's metadata."""

    source: str
    images: int = 0
    batches: int = 0

    def as_dict(self) -> dict:
        return {"source": self.source, "images": self.images, "batches": self.batches}


def list_images(folder: Union[str, "os.PathLike[str]"], max_images: Optional[int] = None) -> List[str]:
    """Image files under ``folder`` (any depth, sorted; listed by :func:`megzoo.data.folders.list_image_files`:
    hidden files left out, links to folders followed only inside ``folder``), spread evenly over
    the sorted list when there are more than ``max_images`` (so every class folder contributes)."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"calibration folder {root} does not exist: give a folder of images "
                                "(e.g. the training images, ImageFolder layout or flat)")
    files = sorted(list_image_files(str(root)))
    if not files:
        raise ValueError(f"no image files under {root} (.jpg, .png, ...): give a folder of calibration images")
    if max_images is not None and len(files) > max_images:
        picks = np.linspace(0, len(files) - 1, int(max_images)).round().astype(int)
        files = [files[i] for i in picks]
    return files


def calibration_batches(data, preprocess=None, *, batch_size: int = 32, max_images: Optional[int] = DEFAULT_MAX_IMAGES,
                        record: Optional[CalibrationSet] = None) -> Iterator[np.ndarray]:
    """float32 (N, C, H, W) batches from ``data``: a folder of images (read with
    ``preprocess``, anything :class:`~megzoo.transforms.EvalPreprocessor` takes, e.g. the
    model), a preprocessed array (N, C, H, W), or an iterable of such arrays or Tensors.
    ``max_images`` caps the images used (None: all); ``record`` is filled as batches go."""
    from ..transforms import EvalPreprocessor

    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if max_images is not None and (isinstance(max_images, bool) or not isinstance(max_images, (int, np.integer))
                                   or max_images < 1):
        raise ValueError(f"max_images must be a positive int (or None for all), got {max_images!r}")
    record = record if record is not None else CalibrationSet("")
    limit = None if max_images is None else int(max_images)
    if isinstance(data, (str, os.PathLike)):
        record.source = os.fspath(data)
        files = list_images(data, limit)
        with EvalPreprocessor(preprocess, workers=min(4, os.cpu_count() or 1)) as pre:
            for batch in pre.batches(files, batch_size):
                record.images += len(batch)
                record.batches += 1
                yield batch
        return
    if isinstance(data, np.ndarray):
        record.source = "array"
        chunks: Iterable = (data[i:i + batch_size] for i in range(0, len(data), batch_size))
    else:
        record.source = "iterator"
        chunks = data
    for chunk in chunks:
        batch = np.asarray(chunk.numpy() if hasattr(chunk, "numpy") else chunk, dtype=np.float32)
        if batch.ndim != 4:
            raise ValueError(f"calibration batches must be preprocessed (N, C, H, W) float32 arrays, got shape "
                             f"{batch.shape}; pass a folder of images to have them read with the model's preprocessing")
        if limit is not None:
            batch = batch[: max(0, limit - record.images)]
            if not len(batch):
                break
        record.images += len(batch)
        record.batches += 1
        yield batch
    if record.images == 0:
        raise ValueError("the calibration data holds no images")
