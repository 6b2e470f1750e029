"""Temporary: the old path of :mod:`megzoo.train.cpu_engine.loops` (the same module object), until
its importers move."""
import sys

from .cpu_engine import loops

sys.modules[__name__] = loops
