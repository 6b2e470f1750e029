"""A module's weights read once, so its ONNX graph can be built again without MegEngine.

The ONNX Runtime backend builds a graph per input size from the module tree, reading every
parameter and buffer. Reading a MegEngine tensor (even its ``.shape``) works only in the thread
that imported MegEngine (:mod:`~megzoo.inference.threads`), so the values are read once, at
compile time (:func:`tensor_values`), and a later build reads them from there
(:func:`reading_values`, :func:`tensor_value`) in whatever thread it runs. On the CPU the values
are the read-only views MegEngine keeps of its tensors (no copy); they stay what they were when
read if the module's weights are replaced afterwards (the compiled model is a snapshot).
"""
import contextlib
import itertools
import threading
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np

__all__ = ["TensorValues", "tensor_values", "reading_values", "tensor_value"]

#: id(tensor) -> (the tensor, its value as numpy); the tensor is kept so a recycled id cannot match
TensorValues = Dict[int, Tuple[Any, np.ndarray]]

_local = threading.local()


def tensor_values(module) -> TensorValues:
    """Every parameter and buffer of ``module`` with its value (``tensor.numpy()``)."""
    return {id(t): (t, t.numpy()) for t in itertools.chain(module.parameters(), module.buffers())}


@contextlib.contextmanager
def reading_values(values: Optional[TensorValues]) -> Iterator[None]:
    """Within, in this thread: :func:`tensor_value` answers from ``values`` where it can."""
    saved = getattr(_local, "values", None)
    _local.values = values
    try:
        yield
    finally:
        _local.values = saved


def tensor_value(tensor) -> np.ndarray:
    """The value of a MegEngine tensor as numpy (a quantized tensor's dtype carries its scale):
    from the values being read (:func:`reading_values`), else from MegEngine."""
    values = getattr(_local, "values", None)
    entry = values.get(id(tensor)) if values else None
    if entry is not None and entry[0] is tensor:
        return entry[1]
    return tensor.numpy()
