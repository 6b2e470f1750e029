"""MegEngine graphs to convert: a module traced by megzoo, or a ``.mge`` file, read with
``megengine.utils.network.Network``.

A module is traced as :func:`megzoo.inference.graph.trace_and_dump` does, without the inference
optimisations, so the graph keeps MegEngine's plain operators (``ConvolutionForward``,
``BatchNormForward``, ``Elemwise``, ...) and the module path in every variable name.

MegEngine 1.13's graph reader gives no parameters for ``SoftmaxForward`` and ``LayerNormForward``
(their axis and epsilon are lost). While megzoo traces a module, ``F.softmax`` and
``F.nn.layer_norm`` (and so ``M.Softmax`` and ``M.LayerNorm``) are therefore computed from
primitive operators whose parameters the graph keeps: the same function, within float32 rounding.
"""
import contextlib
import os
import tempfile
from typing import Iterator, Sequence, Union

__all__ = ["trace_module", "read_mge", "primitive_functions"]

PathLike = Union[str, "os.PathLike[str]"]


def _softmax(inp, axis=None):
    """``F.softmax`` written with a reduction axis list: MegEngine's own primitive form."""
    import megengine.functional as F

    if axis is None:
        axis = 0 if inp.ndim in (0, 1, 3) else 1  # MegEngine's default axis
    axes = list(axis) if isinstance(axis, (list, tuple)) else [int(axis)]
    offset = inp.max(axis=axes, keepdims=True).detach()
    shifted = F.exp(inp - offset)
    return shifted / F.sum(shifted, axis=axes, keepdims=True)


def _layer_norm(inp, normalized_shape, affine, weight=None, bias=None, eps=1e-5):
    """``F.nn.layer_norm`` over the last ``len(normalized_shape)`` axes, from primitives."""
    import megengine.functional as F

    dims = 1 if isinstance(normalized_shape, int) else len(normalized_shape)
    axes = [inp.ndim - 1 - i for i in range(dims)][::-1]
    mean = F.mean(inp, axis=axes, keepdims=True)
    centred = inp - mean
    var = F.mean(centred * centred, axis=axes, keepdims=True)
    out = centred / F.sqrt(var + eps)
    if affine:
        out = out * weight + bias
    return out


@contextlib.contextmanager
def primitive_functions() -> Iterator[None]:
    """Within: ``F.softmax`` / ``F.nn.softmax`` / ``M.Softmax`` and ``F.nn.layer_norm`` /
    ``M.LayerNorm`` trace as primitive operators (module docstring)."""
    import megengine.functional as F
    import megengine.functional.nn as nn
    import megengine.module.activation as activation

    saved = [(F, "softmax", F.softmax), (nn, "softmax", nn.softmax), (activation, "softmax", activation.softmax),
             (nn, "layer_norm", nn.layer_norm)]
    for owner, name, _ in saved:
        setattr(owner, name, _layer_norm if name == "layer_norm" else _softmax)
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


def trace_module(model, input_shape: Sequence[int]):
    """``model`` (eval mode for the trace) traced on a zero input of ``input_shape``, as a
    ``Network`` of MegEngine's plain operators (no inference optimisations)."""
    from ..graph import trace_and_dump

    with tempfile.TemporaryDirectory(prefix="megzoo-onnx-") as tmp:
        path = os.path.join(tmp, "graph.mge")
        with primitive_functions():
            names = trace_and_dump(model, input_shape, path, fuse=False)
        return read_mge(path), names


def read_mge(path: PathLike):
    """The ``Network`` of a ``.mge`` graph file."""
    import warnings

    from megengine.utils.network import Network

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # MegEngine's loader leaves its file open
        return Network.load(os.fspath(path))
