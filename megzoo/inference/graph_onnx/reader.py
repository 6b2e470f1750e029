"""MegEngine graphs to convert: a module traced by megzoo, or a ``.mge`` file, read with
``megengine.utils.network.Network``.

A module is traced as :func:`megzoo.inference.graph.trace_and_dump` does, without the inference
optimisations, so the graph keeps MegEngine's plain operators (``ConvolutionForward``,
``BatchNormForward``, ``Elemwise``, ...) and the module path in every variable name.

MegEngine 1.13's graph reader gives no parameters for ``SoftmaxForward`` and ``LayerNormForward``
(their axis and epsilon are lost), and its ``GroupNorm`` operator cannot be dumped at all ("bad
input shape for polyadic operator"). While megzoo traces a module, ``F.softmax``,
``F.nn.layer_norm``, ``F.nn.group_norm`` and ``F.nn.instance_norm`` (and so ``M.Softmax``,
``M.LayerNorm``, ``M.GroupNorm``, ``M.InstanceNorm``) are therefore computed from primitive
operators whose parameters the graph keeps: the same function, within float32 rounding.
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


def _group_norm(inp, num_groups, affine, weight=None, bias=None, eps=1e-5):
    """``F.nn.group_norm`` from primitives: statistics per (image, group) over (N, G, -1)."""
    import megengine.functional as F

    grouped = inp.reshape(inp.shape[0], num_groups, -1)
    mean = F.mean(grouped, axis=2, keepdims=True)
    centred = grouped - mean
    var = F.mean(centred * centred, axis=2, keepdims=True)
    out = (centred / F.sqrt(var + eps)).reshape(inp.shape)
    if affine:
        out = out * weight.reshape(1, -1, 1, 1) + bias.reshape(1, -1, 1, 1)
    return out


def _instance_norm(inp, affine, weight=None, bias=None, eps=1e-5):
    """``F.nn.instance_norm``: a group norm of one channel per group."""
    return _group_norm(inp, inp.shape[1], affine, weight, bias, eps)


@contextlib.contextmanager
def primitive_functions() -> Iterator[None]:
    """Within: softmax, layer, group and instance norm trace as primitive operators (module
    docstring)."""
    import megengine.functional as F
    import megengine.functional.nn as nn
    import megengine.module.activation as activation

    primitive = {"softmax": _softmax, "layer_norm": _layer_norm, "group_norm": _group_norm,
                 "instance_norm": _instance_norm}
    saved = [(F, "softmax", F.softmax), (nn, "softmax", nn.softmax), (activation, "softmax", activation.softmax)]
    saved += [(nn, name, getattr(nn, name)) for name in ("layer_norm", "group_norm", "instance_norm")]
    for owner, name, _ in saved:
        setattr(owner, name, primitive[name])
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


def trace_module(model, input_shape: Sequence[int]):
    """``model`` (eval mode for the trace) traced on a zero input of ``input_shape``, as a
    ``Network`` of MegEngine's plain operators (no inference optimisations), and the output names
    (:func:`megzoo.inference.graph.output_names`)."""
    from ..graph import trace_and_dump

    with tempfile.TemporaryDirectory(prefix="megzoo-onnx-") as tmp:
        path = os.path.join(tmp, "graph.mge")
        with primitive_functions():
            names = trace_and_dump(model, input_shape, path, fuse=False, name_outputs=False)
        return read_mge(path), names


def read_mge(path: PathLike):
    """The ``Network`` of a ``.mge`` graph file."""
    import warnings

    from megengine.utils.network import Network

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # MegEngine's loader leaves its file open
        return Network.load(os.fspath(path))
