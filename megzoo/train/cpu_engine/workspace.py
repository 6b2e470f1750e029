"""Host arrays reused from one training step to the next.

Why: a fresh NumPy array of more than a few MB is new memory from the kernel, which faults in and
zeroes every page on first touch: more than the copy that then fills it, for every patch
matrix, activation and gradient of every training step, a sizeable part of a ResNet step
(``benchmarks/profile_training.py``; docs/training-speed.md). The kernels
(:mod:`.kernels`) take their outputs and temporaries from a :class:`Workspace` instead, and the
block plans (:mod:`.blocks`) give them back once the backward pass is done with them, so
the next step finds the same, already mapped memory.

Rules: :meth:`Workspace.take` lends an uninitialised array (or :meth:`Workspace.zeros`); whoever
holds it may :meth:`Workspace.give` it back exactly once when nothing reads it any more. Not giving
back is harmless (the array is freed as usual when unreferenced); giving back an array that is not
lent, or twice, raises. A request is served by the smallest free buffer that holds it, if that is
at most twice its size. Free buffers are kept up to 1.5 times the peak of lent bytes so far, least recently
used dropped first; :meth:`Workspace.clear` drops them all.
"""
import threading
import weakref
from collections import OrderedDict
from typing import Optional

import numpy as np

__all__ = ["Workspace", "WORKSPACE"]

#: below this many bytes a fresh allocation is served by the C heap without page faults: not pooled
_SMALL = 1 << 20
#: free buffers kept, as a multiple of the peak of lent bytes (sizes never match exactly: some slack)
_KEEP = 1.5


def _root(a: np.ndarray) -> np.ndarray:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


class Workspace:
    """A pool of flat host buffers; a lent array is a C-contiguous view of one (any shape, dtype)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._free: "OrderedDict[int, np.ndarray]" = OrderedDict()  # id -> free uint8 buffer, oldest first
        self._lent = weakref.WeakValueDictionary()  # id(buffer) -> buffer; a lost one simply drops out
        self.peak_bytes = 0  #: most bytes lent at once so far: free arrays beyond it are dropped
        self.free_bytes = 0
        self.allocations = 0  #: buffers newly allocated (a reused one does not count)

    def take(self, shape, dtype=np.float32) -> np.ndarray:
        """An uninitialised C-contiguous array of ``shape``, in a free buffer when one fits."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes < _SMALL:
            return np.empty(shape, dtype)
        with self._lock:
            fits = [(b.nbytes, ident) for ident, b in self._free.items() if nbytes <= b.nbytes <= 2 * nbytes]
            if fits:
                buffer = self._free.pop(min(fits)[1])
                self.free_bytes -= buffer.nbytes
            else:
                buffer = np.empty(nbytes, np.uint8)
                self.allocations += 1
            self._lent[id(buffer)] = buffer
            self.peak_bytes = max(self.peak_bytes, self._lent_bytes())
        return buffer[:nbytes].view(dtype).reshape(shape)

    def zeros(self, shape, dtype=np.float32) -> np.ndarray:
        """:meth:`take`, filled with zeros."""
        a = self.take(shape, dtype)
        a.fill(0)
        return a

    def give(self, *arrays: Optional[np.ndarray]) -> None:
        """Return lent arrays (any view of the whole array; ``None`` is skipped). Raises
        ``ValueError`` for an array that is not lent from here (or was given back already)."""
        for a in arrays:
            if a is None or a.nbytes < _SMALL:
                continue
            buffer = _root(a)
            with self._lock:
                if self._lent.get(id(buffer)) is not buffer:
                    raise ValueError(f"Workspace.give: an array of shape {a.shape} that is not lent from this "
                                     "workspace (or was given back already); give back what take() returned, once")
                del self._lent[id(buffer)]
                self._free[id(buffer)] = buffer
                self.free_bytes += buffer.nbytes
                while self.free_bytes > _KEEP * self.peak_bytes and self._free:
                    _, dropped = self._free.popitem(last=False)
                    self.free_bytes -= dropped.nbytes

    def clear(self) -> None:
        """Drop every free array (lent ones stay valid) and forget the peak."""
        with self._lock:
            self._free.clear()
            self.free_bytes = 0
            self.peak_bytes = self._lent_bytes()

    @property
    def lent_bytes(self) -> int:
        """Bytes lent now (arrays not given back and still referenced somewhere)."""
        with self._lock:
            return self._lent_bytes()

    def _lent_bytes(self) -> int:
        return sum(b.nbytes for b in list(self._lent.values()))


#: the workspace of the host kernels and plans
WORKSPACE = Workspace()
