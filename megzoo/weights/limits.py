"""Upper bounds on the sizes a file (a checkpoint's ``best.json``) or a command line may ask for.

A size is multiplied into memory before anything can fail: ``"input_size": 30000`` in a
``best.json`` made ``megzoo predict`` resize and run a 30000-pixel image (23.5 GB until the kernel
killed it). Every size read from a file or an option is checked against these bounds first:

* :data:`MAX_INPUT_SIZE` (1024 px): the side of the square crop a model sees (``input_size``,
  ``eval_size``, ``--input-size``, H and W of ``--input-shape``). megzoo's models are ImageNet
  classifiers made for 224-320 px; at 1024 px the first VGG-16 activation is already 256 MiB
  per image (64 x 1024 x 1024 float32) and ResNet-50 runs 21x the work of 224 px.
* :data:`MAX_RESIZE_SIZE` (2048 px): the shorter side an image is resized to before the centre
  crop (``resize_size``): twice the largest crop. Recipes use 1.0-1.32 times the crop; a 4:3
  photo resized to 2048 px is 16 MiB of uint8 pixels per decode thread. No bound relative to
  ``input_size``: a weights record's 256 px resize legitimately meets a small crop
  (``megzoo clean --method probe --input-size 32``).
* :data:`MAX_NUM_CLASSES` (100,000): classifier outputs (ImageNet-21k has 21,843); the head of a
  ResNet-50 is then 0.8 GB of float32.
"""
import numbers
from typing import Optional

__all__ = ["MAX_INPUT_SIZE", "MAX_RESIZE_SIZE", "MAX_NUM_CLASSES", "check_size"]

MAX_INPUT_SIZE = 1024  #: px, side of the crop a model sees
MAX_RESIZE_SIZE = 2 * MAX_INPUT_SIZE  #: px, shorter side of the resized image before the crop
MAX_NUM_CLASSES = 100_000  #: classifier outputs

_MAXIMA = {"input_size": MAX_INPUT_SIZE, "eval_size": MAX_INPUT_SIZE, "resize_size": MAX_RESIZE_SIZE,
           "num_classes": MAX_NUM_CLASSES}


def check_size(name: str, value, maximum: Optional[int] = None, source: Optional[str] = None,
               fix: str = "give a smaller value") -> int:
    """``value`` as an int in 1 ... ``maximum`` (default: the bound of ``name``, one of
    ``input_size``, ``eval_size``, ``resize_size``, ``num_classes``); else a ValueError naming
    ``name``, the value, the bound, ``source`` (the file or option it came from) and ``fix``."""
    maximum = _MAXIMA[name] if maximum is None else maximum
    where = f"{source}: " if source else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{where}{name} must be a positive int, got {value!r}")
    if value > maximum:
        unit = "" if name == "num_classes" else " px"
        raise ValueError(f"{where}{name} {int(value)} is larger than megzoo's bound of {maximum}{unit} "
                         f"(docs/cli.md#size-limits): {fix}")
    return int(value)
