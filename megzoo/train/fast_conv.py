"""The old path of :mod:`megzoo.train.cpu_engine.conv` (the convolutions' fast CPU backward pass):
``import megzoo.train.fast_conv`` gives that module itself. Loaded only when imported, so the
trainer runs without the engine."""
import sys

from .cpu_engine import conv as _module

sys.modules[__name__] = _module
