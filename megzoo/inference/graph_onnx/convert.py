"""A MegEngine graph (``Network``) as an ONNX model: one mapping per MegEngine operator.

:func:`network_to_onnx` walks the graph's operators in order and asks :data:`~.ops.MAPPINGS` for
each one's ONNX nodes. Before that, :func:`_fusions` finds what is written as one node: a
convolution with the bias added after it and the inference BatchNorm that follows (folded in
float64, as :class:`~megzoo.layers.FrozenBatchNorm2d` computes), a matrix product with its bias
(``Gemm``), and a mean over both spatial axes (``GlobalAveragePool``). An operator without a
mapping is refused before anything is written, naming the operator and the variable it makes
(which carries the module path, e.g. ``head.fc.MatrixMul``).
"""
from typing import Dict, List, Optional, Sequence

import numpy as np

from .builder import OnnxBuilder

__all__ = ["UnsupportedOperatorError", "Converter", "network_to_onnx", "BATCH_AXIS"]

#: the name of the symbolic batch dimension of the input and of every output
BATCH_AXIS = "N"
#: operators that make a constant the converter reads as a numpy array
CONSTANT_KINDS = ("ImmutableTensor", "SharedDeviceTensor", "VolatileSharedDeviceTensor",
                  "MultipleDeviceTensorHolder", "MultipleDeviceTensorWithFormatHolder")
#: the way out an operator refusal ends with (a .mge file's conversion says its own, mge_file.LITE_RUNS_IT)
LITE_HINT = "megzoo.compile(..., backend='lite') and the .mge export run any MegEngine graph"


class UnsupportedOperatorError(TypeError):
    """A graph operator (or one of its parameters) has no ONNX mapping."""


class Converter:
    """The state of one conversion: ONNX names of MegEngine variables, constants, fusions."""

    def __init__(self, network, builder: OnnxBuilder, *, fold_bn: bool):
        self.network = network
        self.b = builder
        self.fold_bn = fold_bn
        self.names: Dict[int, str] = {}
        self.users: Dict[int, List] = {}
        for op in network.all_oprs:
            for var in op.inputs:
                self.users.setdefault(id(var), []).append(op)
        self.outputs = {id(v) for v in network.output_vars}
        self.fused: Dict[int, tuple] = {}  # id(first op) -> the ops written as one node
        self.skipped: set = set()  # ids of ops a fusion already wrote
        #: ONNX value -> (scale, zero point, ONNX element type) of the int8 values (:mod:`.qdq`)
        self.qparams: Dict[str, tuple] = {}

    # --- values ------------------------------------------------------------------------------
    @staticmethod
    def constant_value(var) -> Optional[np.ndarray]:
        """The value of ``var`` when a constant operator makes it, else None."""
        owner = var.owner
        if type(owner).__name__ in CONSTANT_KINDS or getattr(owner, "type", "") in CONSTANT_KINDS:
            return np.asarray(owner.numpy() if hasattr(owner, "numpy") else var.numpy())
        return None

    def value(self, var) -> str:
        """The ONNX name of ``var`` (a constant becomes an initializer on first use)."""
        key = id(var)
        if key not in self.names:
            array = self.constant_value(var)
            if array is None:
                raise KeyError(f"{var.name} is used before the operator that makes it")
            self.names[key] = self.b.constant(array, var.name)
        return self.names[key]

    def set(self, var, name: str) -> None:
        self.names[id(var)] = name

    def single_user(self, var) -> bool:
        return len(self.users.get(id(var), ())) == 1 and id(var) not in self.outputs

    def unsupported(self, op, why: str) -> UnsupportedOperatorError:
        where = op.outputs[0].name if op.outputs else op.name
        return UnsupportedOperatorError(
            f"cannot convert MegEngine operator {_kind(op)} (making {where}) to ONNX: {why}; {LITE_HINT}")


def _kind(op) -> str:
    kind = type(op).__name__
    return getattr(op, "type", kind) if kind == "ReadOnlyOpNode" else kind


def _global_mean(conv: Converter, op):
    """``F.mean(x, axis=(2, 3))`` of an NCHW map, as traced (mean over W, drop it, mean over H,
    drop it): the four operators, when ``op`` starts them, else None."""
    chain, x = [op], op.inputs[0]
    if len(x.shape or ()) != 4 or op.params.get("mode") != "MEAN" or op.params.get("axis") != 3:
        return None
    for kind, check in (("AxisAddRemove", [3]), ("Reduce", 2), ("AxisAddRemove", [2])):
        out = chain[-1].outputs[0]
        if not conv.single_user(out):
            return None
        (user,) = conv.users[id(out)]
        value = user.params.get("axis") if kind == "Reduce" else [int(a) for a in user.params.get("axis", ())]
        if _kind(user) != kind or value != check or (kind == "Reduce" and user.params.get("mode") != "MEAN"):
            return None
        chain.append(user)
    return tuple(chain)


def _fusions(conv: Converter) -> None:
    """Mark what is written as one node: conv (+ bias add) (+ BatchNorm), matmul + bias add, a
    mean over both spatial axes (``GlobalAveragePool``)."""
    for op in conv.network.all_oprs:
        kind = _kind(op)
        if kind == "Reduce":
            chain = _global_mean(conv, op)
            if chain:
                conv.fused[id(op)] = chain
                conv.skipped.update(id(o) for o in chain[1:])
            continue
        if kind not in ("ConvolutionForward", "MatrixMul"):
            continue
        chain = [op]
        out = op.outputs[0]
        add = _bias_add(conv, out, channel_axis=1 if kind == "ConvolutionForward" else -1)
        if add is not None:
            chain.append(add)
            out = add.outputs[0]
        if kind == "ConvolutionForward" and conv.fold_bn and conv.single_user(out):
            (user,) = conv.users[id(out)]
            if _kind(user) == "BatchNormForward" and user.params.get("fwd_mode") == "INFERENCE" \
                    and user.inputs[0] is out and all(conv.constant_value(v) is not None for v in user.inputs[1:]):
                chain.append(user)
        if len(chain) > 1:
            conv.fused[id(op)] = tuple(chain)
            conv.skipped.update(id(o) for o in chain[1:])


def _bias_add(conv: Converter, out, channel_axis: int):
    """The ``Elemwise ADD`` of a constant per-channel bias that alone uses ``out``, if any."""
    if not conv.single_user(out):
        return None
    (user,) = conv.users[id(out)]
    if _kind(user) != "Elemwise" or user.params.get("mode") != "ADD" or len(user.inputs) != 2:
        return None
    other = user.inputs[1] if user.inputs[0] is out else user.inputs[0]
    bias = conv.constant_value(other)
    channels = out.shape[channel_axis] if out.shape else None
    if bias is None or channels is None or bias.size != channels:
        return None
    expected = [1] * len(out.shape)
    expected[channel_axis] = channels
    if list(bias.shape) not in (expected, [channels]) or (list(bias.shape) == [channels] and channel_axis != -1):
        return None
    return user


def network_to_onnx(network, *, opset: int, dynamic_batch: bool = True, fold_bn: bool = True,
                    output_names: Optional[Sequence[str]] = None, input_name: str = "data", doc: str = "",
                    metadata: Optional[Dict[str, str]] = None, check: bool = True):
    """The ``onnx.ModelProto`` of a MegEngine ``Network`` with one float32 input. Outputs are
    named ``output_names`` (default ``output`` / ``output0``, ``output1``, ...); the first axis
    of the input and of every output is :data:`BATCH_AXIS` when ``dynamic_batch``.
    Raises :class:`UnsupportedOperatorError` before anything is built for an operator without
    a mapping."""
    from onnx import TensorProto, helper

    from . import qdq  # the int8 mappings, routed by the operators' dtypes
    from .ops import MAPPINGS, check_supported

    builder = OnnxBuilder(opset)
    outputs = network.output_vars
    names = list(output_names) if output_names is not None else (
        ["output"] if len(outputs) == 1 else [f"output{i}" for i in range(len(outputs))])
    if len(names) != len(outputs):
        raise ValueError(f"{len(outputs)} outputs but {len(names)} output names")
    for public in [input_name] + names:  # the graph's own values never take the public names
        builder.fresh(public)
    conv = Converter(network, builder, fold_bn=fold_bn)
    ops = [op for op in network.all_oprs if _kind(op) not in CONSTANT_KINDS and _kind(op) != "Host2DeviceCopy"]
    check_supported(conv, ops)
    qdq.check_quantized(conv, ops)
    inputs = network.input_vars
    if len(inputs) != 1:
        raise UnsupportedOperatorError(f"the graph has {len(inputs)} inputs; megzoo converts graphs of one input")
    (data,) = inputs
    conv.set(data, input_name)
    _fusions(conv)
    for op in ops:
        if id(op) in conv.skipped:
            continue
        MAPPINGS[_kind(op)](conv, op)
    for var, name in zip(outputs, names):
        builder.nodes.append(helper.make_node("Identity", [conv.value(var)], [name], name=f"output_{name}"))
    batch = BATCH_AXIS if dynamic_batch else int(data.shape[0])

    def info(name, var, elem):
        shape = list(var.shape) if var.shape else None
        if shape and dynamic_batch:
            shape[0] = batch
        return helper.make_tensor_value_info(name, elem, shape)

    model = builder.model([info(input_name, data, TensorProto.FLOAT)],
                          [info(name, var, TensorProto.FLOAT) for var, name in zip(outputs, names)],
                          doc=doc, metadata=metadata, check=check)
    return model
