"""Temporary: the old path of :mod:`megzoo.train.cpu_engine.blocks` (the same module object), until
its importers move."""
import sys

from .cpu_engine import blocks

sys.modules[__name__] = blocks
