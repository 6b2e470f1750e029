"""Temporary: the old path of :mod:`megzoo.train.cpu_engine.conv` (the same module object), until
its importers move."""
import sys

from .cpu_engine import conv

sys.modules[__name__] = conv
