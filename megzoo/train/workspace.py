"""The old path of :mod:`megzoo.train.cpu_engine.workspace` (the host arrays' workspace):
``import megzoo.train.workspace`` gives that module itself. Loaded only when imported, so the
trainer runs without the engine."""
import sys

from .cpu_engine import workspace as _module

sys.modules[__name__] = _module
