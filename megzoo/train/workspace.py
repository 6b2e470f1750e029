"""Temporary: the old path of :mod:`megzoo.train.cpu_engine.workspace` (the same module object), until
its importers move."""
import sys

from .cpu_engine import workspace

sys.modules[__name__] = workspace
