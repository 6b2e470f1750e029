"""The old path of :mod:`megzoo.train.cpu_engine.blocks` (whole residual blocks on host arrays):
``import megzoo.train.fused_blocks`` gives that module itself. Loaded only when imported, so the
trainer runs without the engine."""
import sys

from .cpu_engine import blocks as _module

sys.modules[__name__] = _module
