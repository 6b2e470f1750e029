"""int8 graphs: MegEngine's quantized operators as ONNX QDQ nodes, in the form ONNX Runtime fuses.

A MegEngine int8 graph (what ``megzoo.quantize`` makes, traced) holds ``TypeCvt`` float -> qint8
(the input stub), ``ConvBiasForward`` on qint8 with qint32 bias and a fused ``RELU``/``IDENTITY``,
``PoolingForward`` on qint8, ``ElemwiseMultiType`` ``QADD``/``QFUSE_ADD_RELU``, ``TypeCvt``
qint8 -> float (the output stub) and float operators after it. Every quantized variable carries
its scale in its numpy dtype's metadata (``megengine.core.tensor.dtype.get_scale``); a quantized
constant's ``numpy()`` holds its integer values. The choices (those of megzoo's earlier
per-block exporter, measured then against PyTorch's int8):

* a quantized value is the float tensor ``DQ(Q(y))``; :attr:`Converter.qparams` keeps its
  (scale, zero point, ONNX element type) by ONNX value name, so a consumer knows its step;
* signed activations are uint8 with zero point 128 (MegEngine's 256 int8 values, unsigned as
  ONNX Runtime's x86 kernels want them);
* after a ReLU, uint8 with zero point 0 and step ``scale x 127/255``: MegEngine's range
  [0, 127 scale] with all 256 codes (the one difference from the eager model: finer rounding);
* weights int8 (zero point 0) as MegEngine holds them; biases int32 at ``input step x weight
  step`` (float32 product, as MegEngine's): MegEngine's own int32 values where the input step is
  MegEngine's, re-rounded to the finer step after a ReLU; a float bias the graph converts
  (``TypeCvt``) rounded once at that step.

Operators that only move values (reshape, transpose, slicing, concat, max pooling) run on the
dequantized floats and keep their input's quantization when MegEngine's output scale is the
input's; else they are rounded to the output's scale. :func:`install` wraps these kinds in
:data:`~.ops.MAPPINGS` so each operator goes to its int8 or its float mapping by its dtypes;
:func:`check_quantized` refuses an int8 operator without a mapping before anything is built.
"""
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from . import ops

__all__ = ["install", "check_quantized", "is_quantized", "is_int8", "scale_of", "INT8_KINDS", "PASS_THROUGH_KINDS"]

_UINT8 = 2  # onnx.TensorProto.UINT8 (numeric: onnx imports lazily)
#: MegEngine's quantized dtypes mapped here: activations and weights, convolution biases
_DTYPES = ("QuantizedS8", "QuantizedS32")

QParams = Tuple[float, int, int]  # (scale, zero point, ONNX element type)


# --- quantized variables --------------------------------------------------------------------------
def _mgb_dtype(var) -> Optional[dict]:
    try:
        dtype = np.dtype(var.dtype)
    except RuntimeError:  # a dtype numpy does not have (MegEngine's bool "Byte"): not quantized
        return None
    return (getattr(dtype, "metadata", None) or {}).get("mgb_dtype")


def is_quantized(var) -> bool:
    return _mgb_dtype(var) is not None


def is_int8(var) -> bool:
    """A qint8 variable (an activation written as ``DQ(Q(y))``); a qint32 one (an accumulator)
    is written as its float value."""
    return (_mgb_dtype(var) or {}).get("name") == "QuantizedS8"


def scale_of(var) -> float:
    """The scale (step) of a quantized graph variable, from its dtype."""
    from megengine.core.tensor import dtype as qdtype

    return float(qdtype.get_scale(np.dtype(var.dtype)))


def _touches_int8(op) -> bool:
    return any(is_quantized(v) for v in list(op.inputs) + list(op.outputs))


def _scalar(conv, value, dtype, name: str) -> str:
    """A 0-d initializer (ONNX Runtime's QDQ fusion wants per-tensor scales as scalars)."""
    from onnx import numpy_helper

    array = np.array(value, dtype=dtype)
    key = ("scalar", array.dtype.str, array.tobytes())
    if key in conv.b._constants:
        return conv.b._constants[key]
    out = conv.b.fresh(name)
    conv.b.initializers.append(numpy_helper.from_array(array, out))
    conv.b.dtypes[out] = array.dtype
    conv.b._constants[key] = out
    return out


def _raw(conv, array: np.ndarray, name: str) -> str:
    """An initializer of ``array``'s own integer dtype (int8 weights, int32 biases)."""
    from onnx import numpy_helper

    out = conv.b.fresh(name)
    conv.b.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), out))
    conv.b.dtypes[out] = array.dtype
    return out


def _quantize(conv, y: str, qparams: QParams, name: str) -> str:
    """``DQ(Q(y))`` at ``qparams``; the result is registered with them."""
    scale, zero_point, elem = qparams
    s = _scalar(conv, scale, np.float32, "scale")
    z = _scalar(conv, zero_point, np.uint8 if elem == _UINT8 else np.int8, "zero_point")
    q = conv.b.node("QuantizeLinear", [y, s, z], f"{name}/quantize", dtype=np.uint8 if elem == _UINT8 else np.int8)
    dq = conv.b.node("DequantizeLinear", [q, s, z], name)
    conv.qparams[dq] = (float(scale), int(zero_point), elem)
    return dq


def _signed(var) -> QParams:
    """MegEngine's qint8 at ``var``'s scale: uint8 with zero point 128."""
    return float(np.float32(scale_of(var))), 128, _UINT8


def _after_relu(var) -> QParams:
    """``var``'s range [0, 127 scale] after a ReLU, in all 256 uint8 codes."""
    return float(np.float32(scale_of(var) * 127.0 / 255.0)), 0, _UINT8


def _input(conv, op, var) -> Tuple[str, QParams]:
    """The ONNX value of the quantized input ``var`` and its qparams."""
    x = conv.value(var)
    if x not in conv.qparams:
        raise conv.unsupported(op, f"its int8 input {var.name} was not made by an operator with an int8 mapping")
    return x, conv.qparams[x]


def _float_operand(conv, op, var) -> str:
    """An operand as float: a quantized constant dequantized (float32), a qint8 value its ``DQ``
    output, anything else (a qint32 accumulator) as it is."""
    if not is_quantized(var):
        return conv.value(var)
    value = conv.constant_value(var)
    if value is None:
        return _input(conv, op, var)[0] if is_int8(var) else conv.value(var)
    if id(var) not in conv.names:
        conv.set(var, conv.b.constant(value.astype(np.float64) * scale_of(var), var.name))
    return conv.value(var)


# --- the int8 mappings ----------------------------------------------------------------------------
INT8: Dict[str, Callable] = {}


def _int8(*kinds: str):
    def register(fn):
        for kind in kinds:
            INT8[kind] = fn
        return fn
    return register


@_int8("TypeCvt")
def type_cvt(conv, op):
    """float (or a qint32 accumulator) -> qint8: ``Q``/``DQ`` (zero point 128); qint8 -> float:
    the ``DQ`` value itself; qint8 -> qint8 of another scale: rounded again."""
    src, dst = op.inputs[0], op.outputs[0]
    x = _input(conv, op, src)[0] if is_int8(src) else ops._as_float(conv, conv.value(src), dst.name)
    if not is_int8(dst):  # the output stub
        conv.set(dst, x)
        return
    qparams = conv.qparams.get(x)
    same = qparams is not None and qparams[1] == 128 and np.float32(scale_of(dst)) == np.float32(qparams[0])
    conv.set(dst, x if same else _quantize(conv, x, _signed(dst), dst.name))


def _float_source(conv, var):
    """The float constant a ``TypeCvt`` to a quantized type makes ``var`` from, else None."""
    owner = var.owner
    if ops._kind_of(owner) != "TypeCvt" or not is_quantized(var) or len(owner.inputs) != 1:
        return None
    value = conv.constant_value(owner.inputs[0])
    return None if value is None or value.dtype.kind != "f" else value


@_int8("ConvBiasForward", "ConvolutionForward")
def conv_bias(conv, op):
    """An int8 convolution: ``Conv(DQ(x), DQ(int8 weight), DQ(int32 bias))``, its nonlinearity,
    ``Q``/``DQ`` at the output scale (uint8 from 0 after a ReLU, else zero point 128)."""
    x_var, w_var = op.inputs[0], op.inputs[1]
    out = op.outputs[-1]
    name = out.name
    x, (x_scale, _, _) = _input(conv, op, x_var)
    weight = conv.constant_value(w_var)
    if weight is None:
        raise conv.unsupported(op, "an int8 weight computed in the graph")
    attrs = ops._conv_attrs(conv, op, weight)
    weight = np.ascontiguousarray(ops._dense_weight(op, np.asarray(weight, np.int8)))
    w_scale = np.float32(scale_of(w_var))
    bias_scale = np.float32(np.float32(x_scale) * w_scale)  # float32, as MegEngine multiplies them
    bias = np.zeros(weight.shape[0], np.int32)
    if len(op.inputs) >= 3:
        b_var = op.inputs[2]
        given = conv.constant_value(b_var)
        float_bias = _float_source(conv, b_var) if given is None else None
        if float_bias is not None:  # a float bias the graph converts to qint32 (TypeCvt): rounded once, here
            bias = np.round(float_bias.astype(np.float64).reshape(-1) / np.float64(bias_scale))
        elif given is None or not is_quantized(b_var):
            raise conv.unsupported(op, "an int8 convolution whose bias is not a qint32 constant")
        else:
            given = np.asarray(given, np.int64).reshape(-1)
            ratio = np.float64(np.float32(scale_of(b_var))) / np.float64(bias_scale)
            bias = given if ratio == 1.0 else np.round(given * ratio)  # re-rounded to a finer input step
        bias = np.clip(bias, np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
    zero8, zero32 = _scalar(conv, 0, np.int8, "zero_point"), _scalar(conv, 0, np.int32, "zero_point")
    wq = conv.b.node("DequantizeLinear", [_raw(conv, weight, w_var.name), _scalar(conv, w_scale, np.float32, "scale"),
                                          zero8], f"{name}/weight")
    bq = conv.b.node("DequantizeLinear", [_raw(conv, bias, f"{name}.bias"),
                                          _scalar(conv, bias_scale, np.float32, "scale"), zero32], f"{name}/bias")
    y = conv.b.node("Conv", [x, wq, bq], f"{name}/conv", **attrs)
    mode = op.params.get("nonlineMode", "IDENTITY") if ops._kind_of(op) == "ConvBiasForward" else "IDENTITY"
    if not is_int8(out):  # an int8 convolution with a float (or qint32) output
        conv.set(out, ops._nonlinearity(conv, op, y, mode, name))
        return
    if mode == "RELU":
        y = _quantize(conv, conv.b.node("Relu", [y], f"{name}/relu"), _after_relu(out), name)
    else:
        y = _quantize(conv, ops._nonlinearity(conv, op, y, mode, name), _signed(out), name)
    conv.set(out, y)


@_int8("ElemwiseMultiType")
def elemwise_multi_type(conv, op):
    """``QADD``, ``QFUSE_ADD_RELU``, ... : the float mode on the ``DQ`` values, rounded to the
    output scale (uint8 from 0 when the mode ends in a ReLU)."""
    mode = str(op.params["mode"])
    _, emit = ops.ELEMWISE[mode[1:]]
    out = op.outputs[0]
    y = emit(conv, [_float_operand(conv, op, v) for v in op.inputs], f"{out.name}/float")
    if not is_int8(out):
        conv.set(out, y)
        return
    relu = mode[1:] in ("RELU", "FUSE_ADD_RELU")
    conv.set(out, _quantize(conv, y, _after_relu(out) if relu else _signed(out), out.name))


def _elemwise_problem(op) -> Optional[str]:
    mode = str(op.params.get("mode", ""))
    if not mode.startswith("Q") or mode[1:] not in ops.ELEMWISE:
        modes = ", ".join(f"Q{m}" for m in sorted(ops.ELEMWISE))
        return f"ElemwiseMultiType mode {mode} (the quantized modes mapped: {modes})"
    return None


#: operators that keep their input's values (or, pooling, compute from them at the same scale):
#: their float mapping runs on the dequantized values and the result is rounded again, to the
#: input's quantization when MegEngine's output scale is the input's (exact for a max, a
#: reshape, a zero padding), else to the output's scale; the ``Q``/``DQ`` pair after them lets
#: ONNX Runtime run them on 8-bit values and fuse the next convolution
PASS_THROUGH_KINDS = ("PoolingForward", "AdaptivePoolingForward", "PaddingForward", "Reshape", "Dimshuffle",
                      "AxisAddRemove", "Identity", "Copy", "Subtensor", "Broadcast", "Concat", "Split")
INT8_KINDS = tuple(INT8) + PASS_THROUGH_KINDS
#: operators that read only an int8 value's shape: their float mapping serves
_SHAPE_ONLY = ("GetVarShape",)


def _pass_through(float_mapping: Callable) -> Callable:
    def mapping(conv, op):
        data = [v for v in op.inputs if is_quantized(v)]
        kept = {conv.qparams.get(_float_operand(conv, op, v)) for v in data}
        float_mapping(conv, op)
        for out in op.outputs:
            if not is_int8(out):
                continue
            same = len(kept) == 1 and None not in kept and np.float32(scale_of(out)) == np.float32(scale_of(data[0]))
            qparams = next(iter(kept)) if same else _signed(out)
            conv.set(out, _quantize(conv, conv.value(out), qparams, f"{out.name}/int8"))
    return mapping


# --- dispatch and checks --------------------------------------------------------------------------
def _dispatch(int8_mapping: Callable, float_mapping: Optional[Callable]) -> Callable:
    def mapping(conv, op):
        if _touches_int8(op) or float_mapping is None:
            return int8_mapping(conv, op)
        return float_mapping(conv, op)
    mapping.megzoo_int8 = True
    return mapping


def install() -> None:
    """Route the kinds with an int8 mapping to it when an operator has quantized operands
    (idempotent)."""
    for kind, fn in INT8.items():
        current = ops.MAPPINGS.get(kind)
        if not getattr(current, "megzoo_int8", False):
            ops.MAPPINGS[kind] = _dispatch(fn, current)
    for kind in PASS_THROUGH_KINDS:
        current = ops.MAPPINGS.get(kind)
        if current is not None and not getattr(current, "megzoo_int8", False):
            ops.MAPPINGS[kind] = _dispatch(_pass_through(current), current)


def check_quantized(conv, op_list: Sequence) -> None:
    """:class:`~.convert.UnsupportedOperatorError` for the first int8 operator without a
    mapping (or of a quantized dtype other than qint8/qint32), before anything is built."""
    for op in op_list:
        kind = ops._kind_of(op)
        if not _touches_int8(op) or kind in _SHAPE_ONLY:
            continue
        for var in list(op.inputs) + list(op.outputs):
            meta = _mgb_dtype(var)
            if meta is not None and meta.get("name") not in _DTYPES:
                raise conv.unsupported(op, f"the quantized dtype {meta.get('name')} of {var.name} (megzoo maps "
                                           "MegEngine's symmetric qint8 and qint32, megengine.quantization's default)")
        if kind not in INT8_KINDS:
            raise conv.unsupported(op, f"an int8 {kind} has no mapping (int8 operators mapped: "
                                       f"{', '.join(sorted(INT8_KINDS))})")
        problem = _elemwise_problem(op) if kind == "ElemwiseMultiType" else None
        if kind in ("ConvBiasForward", "ConvolutionForward") and len(op.inputs) > 3:
            problem = "an int8 ConvBias with a fourth (z) input"
        if problem:
            raise conv.unsupported(op, problem)


install()
