"""Temporary: the old path of :mod:`megzoo.train.cpu_engine.kernels` (the same module object), until
its importers move."""
import sys

from .cpu_engine import kernels

sys.modules[__name__] = kernels
