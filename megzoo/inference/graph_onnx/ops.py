"""One ONNX mapping per MegEngine graph operator (float32 graphs).

Each mapping takes the :class:`~.convert.Converter` and the operator, writes its ONNX nodes and
records the ONNX names of the operator's outputs. :data:`MAPPINGS` is the table; an operator kind
missing from it, or a parameter a mapping cannot express, is refused by :func:`check_supported`
before anything is written.
"""
import math
from typing import Callable, Dict, Sequence

import numpy as np

__all__ = ["MAPPINGS", "ELEMWISE", "check_supported"]

MAPPINGS: Dict[str, Callable] = {}


def maps(*kinds: str):
    def register(fn):
        for kind in kinds:
            MAPPINGS[kind] = fn
        return fn
    return register


# --- convolution, normalisation -------------------------------------------------------------------
def _conv_attrs(conv, op, weight: np.ndarray) -> dict:
    p = op.params
    if p.get("format", "NCHW") != "NCHW":
        raise conv.unsupported(op, f"the {p['format']} layout (ONNX convolutions are NCHW; export with layout 'nchw')")
    groups = 1
    if p.get("sparse", "DENSE") == "GROUP":
        groups = weight.shape[0]
    return dict(kernel_shape=list(weight.shape[-2:]), strides=[p["stride_h"], p["stride_w"]],
                pads=[p["pad_h"], p["pad_w"], p["pad_h"], p["pad_w"]], dilations=[p["dilate_h"], p["dilate_w"]],
                group=groups)


def _dense_weight(op, weight: np.ndarray) -> np.ndarray:
    """(O, I, kh, kw) from MegEngine's grouped (G, O/G, I/G, kh, kw); a convolution (not a
    cross-correlation) flips its kernel."""
    if weight.ndim == 5:
        weight = weight.reshape((-1,) + weight.shape[2:])
    if op.params.get("mode", "CROSS_CORRELATION") == "CONVOLUTION":
        weight = weight[..., ::-1, ::-1]
    return weight


def _bn_affine(conv, bn) -> tuple:
    """An inference BatchNorm as per-channel ``scale``, ``shift`` (float64)."""
    gamma, beta, mean, var = (conv.constant_value(v).astype(np.float64).reshape(-1) for v in bn.inputs[1:5])
    scale = gamma / np.sqrt(var + float(bn.params["epsilon"]))
    return scale, beta - mean * scale


@maps("ConvolutionForward", "ConvBiasForward")
def convolution(conv, op):
    chain = conv.fused.get(id(op), (op,))
    weight_value = conv.constant_value(op.inputs[1])
    attrs = _conv_attrs(conv, op, weight_value if weight_value is not None else np.zeros(op.inputs[1].shape))
    x = conv.value(op.inputs[0])
    if weight_value is None:  # a weight computed in the graph: no folding
        w = conv.value(op.inputs[1])
        if len(op.inputs[1].shape) == 5:
            shape = conv.b.constant(np.asarray((-1,) + tuple(op.inputs[1].shape[2:]), np.int64), "shape")
            w = conv.b.node("Reshape", [w, shape], f"{op.outputs[0].name}/weight")
        y = conv.b.node("Conv", [x, w], op.outputs[-1].name, **attrs)
        conv.set(op.outputs[-1], _bias_and_nonlinearity(conv, op, y, op.inputs[2:], op.outputs[-1].name))
        return
    weight = _dense_weight(op, weight_value).astype(np.float64)
    bias = np.zeros(weight.shape[0])
    added = []  # a ConvBias's bias or z that is not a per-channel constant (optimize_for_inference's residual)
    for extra in op.inputs[2:]:
        value = conv.constant_value(extra)
        if value is not None and value.size == bias.size and (value.ndim == 1 or value.shape[1] == bias.size):
            bias = bias + value.astype(np.float64).reshape(-1)
        else:
            added.append(extra)
    for follower in chain[1:]:
        if _kind_of(follower) == "Elemwise":  # the bias added after the convolution
            other = follower.inputs[1] if follower.inputs[0] is op.outputs[0] else follower.inputs[0]
            bias = bias + conv.constant_value(other).astype(np.float64).reshape(-1)
        else:  # an inference BatchNorm, folded in float64
            scale, shift = _bn_affine(conv, follower)
            weight = weight * scale[:, None, None, None]
            bias = bias * scale + shift
    last = chain[-1].outputs[-1]
    name = last.name
    out = op.outputs[0].name
    inputs = [x, conv.b.constant(weight, f"{out}.weight"), conv.b.constant(bias, f"{out}.bias")]
    y = conv.b.node("Conv", inputs, name, **attrs)
    conv.set(last, _bias_and_nonlinearity(conv, op, y, added, name))


def _bias_and_nonlinearity(conv, op, y: str, added: Sequence, name: str) -> str:
    """``y`` plus the tensors ``added`` (a ConvBias's computed bias and z: ``conv(x) + b + z``),
    then a ConvBias's nonlinearity."""
    for i, var in enumerate(added):
        y = conv.b.node("Add", [y, conv.value(var)], f"{name}/add{i}")
    return _nonlinearity(conv, op, y, op.params.get("nonlineMode", "IDENTITY"), name)


def _kind_of(op) -> str:
    kind = type(op).__name__
    return getattr(op, "type", kind) if kind == "ReadOnlyOpNode" else kind


def _nonlinearity(conv, op, y: str, mode: str, name: str) -> str:
    if mode == "IDENTITY":
        return y
    if mode in ("RELU", "SIGMOID", "H_SWISH", "TANH"):
        return ELEMWISE[mode][1](conv, [y], f"{name}/{mode.lower()}")
    raise conv.unsupported(op, f"the fused nonlinearity {mode}")


@maps("BatchNormForward")
def batch_norm(conv, op):
    if op.params.get("fwd_mode") != "INFERENCE":
        raise conv.unsupported(op, "a BatchNorm in training mode (export the model in eval mode)")
    x = op.inputs[0]
    values = [conv.constant_value(v) for v in op.inputs[1:5]]
    name = op.outputs[-1].name
    if any(v is None for v in values):
        raise conv.unsupported(op, "a BatchNorm whose statistics are computed in the graph")
    scale, shift = _bn_affine(conv, op)
    shape = [1] * len(x.shape)
    shape[1] = scale.size
    if conv.fold_bn:  # one multiply-add
        y = conv.b.node("Mul", [conv.value(x), conv.b.constant(scale.reshape(shape), f"{name}.scale")], f"{name}/scale")
        conv.set(op.outputs[-1], conv.b.node("Add", [y, conv.b.constant(shift.reshape(shape), f"{name}.shift")], name))
        return
    gamma, beta, mean, var = (v.astype(np.float64).reshape(-1) for v in values)
    conv.set(op.outputs[-1], conv.b.node(
        "BatchNormalization", [conv.value(x)] + [conv.b.constant(a, f"{name}.{k}") for a, k in
                                                  ((gamma, "gamma"), (beta, "beta"), (mean, "mean"), (var, "var"))],
        name, epsilon=float(op.params["epsilon"])))


# --- element-wise ---------------------------------------------------------------------------------
def _unary(onnx_op: str, **attrs):
    return 1, lambda conv, xs, name: conv.b.node(onnx_op, xs, name, **attrs)


def _binary(onnx_op: str, dtype=None):
    def emit(conv, xs, name):
        if dtype is not None:  # a comparison: its inputs as they are, a bool output
            return conv.b.node(onnx_op, xs, name, dtype=dtype)
        if all(conv.b.dtype(x) == np.int64 for x in xs):  # shape arithmetic stays int64
            return conv.b.node(onnx_op, xs, name, dtype=np.int64)
        return conv.b.node(onnx_op, [_as_float(conv, x, name) for x in xs], name)
    return 2, emit


def _as_float(conv, x: str, name: str) -> str:
    if conv.b.dtype(x) == np.float32:
        return x
    return conv.b.node("Cast", [x], f"{name}/to_float", to=1)


def _gelu(conv, xs, name):
    (x,) = xs
    half = conv.b.node("Mul", [x, conv.b.constant(np.float32(0.5), "half")], f"{name}/half")
    erf = conv.b.node("Erf", [conv.b.node("Mul", [x, conv.b.constant(np.float32(1 / math.sqrt(2)), "inv_sqrt2")],
                                          f"{name}/scaled")], f"{name}/erf")
    one_plus_erf = conv.b.node("Add", [erf, conv.b.constant(np.float32(1.0), "one")], f"{name}/1+erf")
    return conv.b.node("Mul", [half, one_plus_erf], name)


def _silu(conv, xs, name):
    (x,) = xs
    return conv.b.node("Mul", [x, conv.b.node("Sigmoid", [x], f"{name}/sigmoid")], name)


def _floor_div(conv, xs, name):
    if all(conv.b.dtype(x) == np.int64 for x in xs):  # shape arithmetic: sizes are >= 0
        return conv.b.node("Div", xs, name, dtype=np.int64)
    xs = [_as_float(conv, x, name) for x in xs]
    return conv.b.node("Floor", [conv.b.node("Div", xs, f"{name}/div")], name)


def _clip(conv, xs, name):
    x, low, high = xs
    return conv.b.node("Min", [conv.b.node("Max", [x, low], f"{name}/max"), high], name)


def _relu6(conv, xs, name):
    bounds = [conv.b.constant(np.float32(0.0), "zero"), conv.b.constant(np.float32(6.0), "six")]
    return conv.b.node("Clip", [xs[0], *bounds], name)


def _mul_add3(conv, xs, name):
    a, b, c = xs
    return conv.b.node("Add", [conv.b.node("Mul", [a, b], f"{name}/mul"), c], name)


def _mul_add4(conv, xs, name):
    a, b, c, d = xs
    return conv.b.node("Add", [conv.b.node("Mul", [a, b], f"{name}/mul0"), conv.b.node("Mul", [c, d], f"{name}/mul1")],
                       name)


def _square(conv, xs, name):
    return conv.b.node("Mul", [xs[0], xs[0]], name)


def _log_sigmoid(conv, xs, name):
    return conv.b.node("Neg", [conv.b.node("Softplus", [conv.b.node("Neg", xs, f"{name}/neg")], f"{name}/softplus")],
                       name)


def _hswish(conv, xs, name):
    """``HardSwish`` (opset 14), or ``x * HardSigmoid(x)`` before it."""
    if conv.b.opset >= 14:
        return conv.b.node("HardSwish", xs, name)
    gate = conv.b.node("HardSigmoid", xs, f"{name}/gate", alpha=1.0 / 6, beta=0.5)
    return conv.b.node("Mul", [xs[0], gate], name)


def _fused_add(activation: str, **attrs):
    return 2, lambda conv, xs, name: conv.b.node(activation, [conv.b.node("Add", xs, f"{name}/add")], name, **attrs)


#: Elemwise mode -> (number of inputs, emitter(conv, inputs, name) -> output)
ELEMWISE: Dict[str, tuple] = {
    "RELU": _unary("Relu"), "SIGMOID": _unary("Sigmoid"), "TANH": _unary("Tanh"), "FAST_TANH": _unary("Tanh"),
    "EXP": _unary("Exp"), "LOG": _unary("Log"), "SQRT": _unary("Sqrt"), "ABS": _unary("Abs"), "NEGATE": _unary("Neg"),
    "FLOOR": _unary("Floor"), "CEIL": _unary("Ceil"), "ERF": _unary("Erf"), "SIN": _unary("Sin"),
    "COS": _unary("Cos"), "SIGN": _unary("Sign"), "SOFTPLUS": _unary("Softplus"),
    "H_SWISH": (1, _hswish), "HSIGMOID": _unary("HardSigmoid", alpha=1.0 / 6, beta=0.5),
    "RELU6": (1, _relu6), "GELU": (1, _gelu), "SILU": (1, _silu), "SQUARE": (1, _square),
    "LOGSIGMOID": (1, _log_sigmoid),
    "ADD": _binary("Add"), "SUB": _binary("Sub"), "MUL": _binary("Mul"), "TRUE_DIV": _binary("Div"),
    "POW": _binary("Pow"), "MAX": _binary("Max"), "MIN": _binary("Min"), "FLOOR_DIV": (2, _floor_div),
    "LT": _binary("Less", dtype=np.bool_), "LEQ": _binary("LessOrEqual", dtype=np.bool_),
    "EQ": _binary("Equal", dtype=np.bool_),
    "FUSE_ADD_RELU": _fused_add("Relu"), "FUSE_ADD_SIGMOID": _fused_add("Sigmoid"),
    "FUSE_ADD_TANH": _fused_add("Tanh"),
    "FUSE_ADD_H_SWISH": (2, lambda conv, xs, name: _hswish(conv, [conv.b.node("Add", xs, f"{name}/add")], name)),
    "FUSE_MUL_ADD3": (3, _mul_add3), "FUSE_MUL_ADD4": (4, _mul_add4), "CLIP": (3, _clip),
    "PRELU": _binary("PRelu"),
}


@maps("Elemwise")
def elemwise(conv, op):
    mode = op.params["mode"]
    if mode not in ELEMWISE:
        raise conv.unsupported(op, f"Elemwise mode {mode} (mapped: {', '.join(sorted(ELEMWISE))})")
    _, emit = ELEMWISE[mode]
    conv.set(op.outputs[0], emit(conv, [conv.value(v) for v in op.inputs], op.outputs[0].name))


# --- pooling --------------------------------------------------------------------------------------
@maps("PoolingForward")
def pooling(conv, op):
    p = op.params
    if p.get("format", "NCHW") != "NCHW":
        raise conv.unsupported(op, f"the {p['format']} layout")
    mode = p["mode"]
    attrs = dict(kernel_shape=[p["window_h"], p["window_w"]], strides=[p["stride_h"], p["stride_w"]],
                 pads=[p["pad_h"], p["pad_w"], p["pad_h"], p["pad_w"]])
    x = conv.value(op.inputs[0])
    name = op.outputs[0].name
    if mode == "MAX":
        y = conv.b.node("MaxPool", [x], name, **attrs)
    elif mode in ("AVERAGE", "AVERAGE_COUNT_EXCLUDE_PADDING"):
        y = conv.b.node("AveragePool", [x], name, count_include_pad=int(mode == "AVERAGE"), **attrs)
    else:
        raise conv.unsupported(op, f"pooling mode {mode}")
    conv.set(op.outputs[0], y)


@maps("AdaptivePoolingForward")
def adaptive_pooling(conv, op):
    """MegEngine's adaptive pooling is a plain pooling with stride ``in // out`` and window
    ``in - (out - 1) * stride`` (not PyTorch's uneven bins)."""
    x_var = op.inputs[0]
    target = conv.constant_value(op.inputs[1]) if len(op.inputs) > 1 else None
    if target is None:
        raise conv.unsupported(op, "an output size computed in the graph")
    (h, w), (oh, ow) = x_var.shape[2:], [int(v) for v in np.asarray(target).reshape(-1)]
    kind = {"MAX": "MaxPool", "AVERAGE": "AveragePool"}.get(op.params["mode"])
    if kind is None:
        raise conv.unsupported(op, f"adaptive pooling mode {op.params['mode']}")
    sh, sw = h // oh, w // ow
    conv.set(op.outputs[0], conv.b.node(kind, [conv.value(x_var)], op.outputs[0].name,
                                        kernel_shape=[h - (oh - 1) * sh, w - (ow - 1) * sw], strides=[sh, sw]))


# --- reductions, products -------------------------------------------------------------------------
_REDUCE = {"SUM": ("ReduceSum", 13), "MEAN": ("ReduceMean", 18), "MAX": ("ReduceMax", 18), "MIN": ("ReduceMin", 18),
           "PRODUCT": ("ReduceProd", 18), "SUM_SQR": ("ReduceSumSquare", 18)}


@maps("Reduce")
def reduce(conv, op):
    mode, axis = op.params["mode"], op.params.get("axis")
    if mode not in _REDUCE:
        raise conv.unsupported(op, f"reduction mode {mode}")
    ndim = len(op.inputs[0].shape)
    if axis is None or not -ndim <= int(axis) < ndim or len(op.inputs) > 1:
        raise conv.unsupported(op, "a reduction to a shape given in the graph (reduce one axis at a time)")
    onnx_op, since = _REDUCE[mode]
    x = conv.value(op.inputs[0])
    chain = conv.fused.get(id(op))
    if chain:  # a mean over H and W (convert._global_mean): (N, C, H, W) -> (N, C)
        last = chain[-1].outputs[0]
        pooled = conv.b.node("GlobalAveragePool", [x], f"{last.name}/pool", dtype=conv.b.dtype(x))
        conv.set(last, conv.b.node("Flatten", [pooled], last.name, dtype=conv.b.dtype(x), axis=1))
        return
    conv.set(op.outputs[0], conv.b.axes_input_or_attr(onnx_op, [x], [int(axis)], since, op.outputs[0].name,
                                                       dtype=conv.b.dtype(x), keepdims=1))


@maps("AxisAddRemove")
def axis_add_remove(conv, op):
    src, dst = op.inputs[0], op.outputs[0]
    axes = [int(a) for a in op.params["axis"]]
    x = conv.value(src)
    kind = "Unsqueeze" if len(dst.shape) > len(src.shape) else "Squeeze"
    conv.set(dst, conv.b.axes_input_or_attr(kind, [x], axes, 13, dst.name, dtype=conv.b.dtype(x)))


@maps("MatrixMul", "BatchedMatrixMul")
def matrix_mul(conv, op):
    p = op.params
    a, b = (conv.value(v) for v in op.inputs)
    name = op.outputs[0].name
    chain = conv.fused.get(id(op), (op,))
    a_nd, b_nd = len(op.inputs[0].shape), len(op.inputs[1].shape)
    if _kind_of(op) == "MatrixMul" and a_nd == 2 and b_nd == 2:
        inputs = [a, b]
        if len(chain) > 1:  # the bias added after the product
            add = chain[1]
            other = add.inputs[1] if add.inputs[0] is op.outputs[0] else add.inputs[0]
            inputs.append(conv.value(other))
            name = add.outputs[0].name
        y = conv.b.node("Gemm", inputs, name, transA=int(bool(p.get("transposeA"))),
                        transB=int(bool(p.get("transposeB"))))
        conv.set(chain[-1].outputs[0], y)
        return
    if p.get("transposeA"):
        a = _swap_last(conv, a, a_nd, f"{name}/a_t")
    if p.get("transposeB"):
        b = _swap_last(conv, b, b_nd, f"{name}/b_t")
    conv.set(op.outputs[0], conv.b.node("MatMul", [a, b], name))
    for add in chain[1:]:
        other = add.inputs[1] if add.inputs[0] is op.outputs[0] else add.inputs[0]
        y = conv.b.node("Add", [conv.value(op.outputs[0]), conv.value(other)], add.outputs[0].name)
        conv.set(add.outputs[0], y)


def _swap_last(conv, x: str, ndim: int, name: str) -> str:
    perm = list(range(ndim))
    perm[-2:] = perm[-1], perm[-2]
    return conv.b.node("Transpose", [x], name, perm=perm)


# --- shapes and layout ----------------------------------------------------------------------------
@maps("GetVarShape")
def get_var_shape(conv, op):
    y = conv.b.node("Shape", [conv.value(op.inputs[0])], op.outputs[0].name, dtype=np.int64)
    axis = op.params.get("axis")
    if axis is not None and axis != 7:  # MegEngine's "all axes" is an invalid axis number
        y = conv.b.node("Gather", [y, conv.b.constant(np.asarray([int(axis)], np.int64), "axis")],
                        f"{op.outputs[0].name}/axis", dtype=np.int64, axis=0)
    conv.set(op.outputs[0], y)


@maps("Reshape")
def reshape(conv, op):
    x = conv.value(op.inputs[0])
    shape = conv.b.as_int64(conv.value(op.inputs[1]), op.outputs[0].name)
    conv.set(op.outputs[0], conv.b.node("Reshape", [x, shape], op.outputs[0].name, dtype=conv.b.dtype(x)))


@maps("Broadcast")
def broadcast(conv, op):
    x = conv.value(op.inputs[0])
    shape = conv.b.as_int64(conv.value(op.inputs[1]), op.outputs[0].name)
    conv.set(op.outputs[0], conv.b.node("Expand", [x, shape], op.outputs[0].name, dtype=conv.b.dtype(x)))


@maps("Dimshuffle")
def dimshuffle(conv, op):
    pattern = [int(p) for p in op.params["pattern"]]
    x = conv.value(op.inputs[0])
    kept = [p for p in pattern if p >= 0]
    if sorted(kept) != list(range(len(op.inputs[0].shape))):
        raise conv.unsupported(op, f"a dimshuffle that drops axes (pattern {pattern})")
    y = conv.b.node("Transpose", [x], op.outputs[0].name, dtype=conv.b.dtype(x), perm=kept)
    new = [i for i, p in enumerate(pattern) if p < 0]
    if new:
        y = conv.b.axes_input_or_attr("Unsqueeze", [y], new, 13, f"{op.outputs[0].name}/new_axes",
                                      dtype=conv.b.dtype(x))
    conv.set(op.outputs[0], y)


@maps("Concat")
def concat(conv, op):
    values = [conv.value(v) for v in op.inputs]
    if any(conv.b.dtype(v) == np.int64 for v in values):
        values = [conv.b.as_int64(v, op.outputs[0].name) for v in values]
        dtype = np.int64
    else:
        dtype = np.float32
    conv.set(op.outputs[0], conv.b.node("Concat", values, op.outputs[0].name, dtype=dtype, axis=int(op.params["axis"])))


@maps("Subtensor")
def subtensor(conv, op):
    """``x[...]``: each item is (axis, has begin, has end, has step, has index); the given values
    follow ``x`` in the operator's inputs, in that order. Every step keeps the number of axes
    (an index as a one-element ``Gather``); the indexed axes are squeezed at the end, except
    where MegEngine keeps a scalar result as shape (1,)."""
    src, dst = op.inputs[0], op.outputs[0]
    y = conv.value(src)
    dtype = conv.b.dtype(y)
    rest = iter(op.inputs[1:])
    name = dst.name
    indexed = []

    def given(present: bool, default) -> str:
        if present:
            return conv.b.as_int64(conv.value(next(rest)), name)
        return conv.b.constant(np.asarray([default]), "bound")

    for axis, has_begin, has_end, has_step, has_index in op.params["items"]:
        axis = int(axis)
        if has_index:
            index = conv.b.node("Reshape", [given(True, 0), conv.b.constant(np.asarray([1]), "one1")],
                                f"{name}/i{axis}", dtype=np.int64)
            y = conv.b.node("Gather", [y, index], f"{name}/index{axis}", dtype=dtype, axis=axis)
            indexed.append(axis)
            continue
        begin, end = given(has_begin, 0), given(has_end, np.iinfo(np.int64).max)
        step = given(has_step, 1)
        y = conv.b.node("Slice", [y, begin, end, conv.b.constant(np.asarray([axis]), "axes"), step],
                        f"{name}/slice{axis}", dtype=dtype)
    squeeze = indexed[:len(src.shape) - len(dst.shape)]
    if squeeze:
        y = conv.b.axes_input_or_attr("Squeeze", [y], squeeze, 13, name, dtype=dtype)
    conv.set(dst, y)


@maps("Split")
def split(conv, op):
    """``F.split``: MegEngine's reader gives no axis, so it is the axis where the traced output
    shapes differ from the input's; the sizes are the graph's own values (one per output)."""
    src = op.inputs[0]
    differs = [a for a in range(len(src.shape)) if any(out.shape[a] != src.shape[a] for out in op.outputs)]
    if len(differs) != 1 or len(op.inputs) != 1 + len(op.outputs):
        raise conv.unsupported(op, "a split whose axis cannot be told from its shapes")
    name = op.outputs[0].name
    sizes = conv.b.node("Concat", [conv.b.as_int64(conv.value(v), name) for v in op.inputs[1:]], f"{name}/sizes",
                        dtype=np.int64, axis=0)
    x = conv.value(src)
    outs = conv.b.node("Split", [x, sizes], name, dtype=conv.b.dtype(x), outputs=len(op.outputs), axis=differs[0])
    for var, out in zip(op.outputs, outs if len(op.outputs) > 1 else [outs]):
        conv.set(var, out)


@maps("TypeCvt")
def type_cvt(conv, op):
    target = np.dtype(op.params["dtype"])
    x = conv.value(op.inputs[0])
    if target.kind == "f":
        y = _as_float(conv, x, op.outputs[0].name) if conv.b.dtype(x) != np.float32 else x
    elif target.kind in "iu" and not getattr(target, "metadata", None):
        y = conv.b.as_int64(x, op.outputs[0].name)
    else:
        raise conv.unsupported(op, f"a conversion to {target} outside the int8 operators qdq.py maps")
    conv.set(op.outputs[0], y)


@maps("Identity", "Copy")
def identity(conv, op):
    conv.set(op.outputs[0], conv.value(op.inputs[0]))


@maps("ResizeForward")
def resize(conv, op):
    p = op.params
    if p.get("format", "NCHW") != "NCHW":
        raise conv.unsupported(op, f"the {p['format']} layout")
    mode = p.get("imode", "LINEAR")
    attrs = {"NEAREST": dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
             "LINEAR": dict(mode="linear", coordinate_transformation_mode="half_pixel")}.get(mode)
    if attrs is None:
        raise conv.unsupported(op, f"resize mode {mode} (NEAREST and LINEAR have a mapping)")
    x = conv.value(op.inputs[0])
    name = op.outputs[0].name
    size = conv.b.as_int64(conv.value(op.inputs[1]), name)
    head = conv.b.node("Slice", [conv.b.node("Shape", [x], f"{name}/shape", dtype=np.int64),
                                 conv.b.constant(np.asarray([0]), "zero1"), conv.b.constant(np.asarray([2]), "two1")],
                       f"{name}/nc", dtype=np.int64)
    sizes = conv.b.node("Concat", [head, size], f"{name}/sizes", dtype=np.int64, axis=0)
    conv.set(op.outputs[0], conv.b.node("Resize", [x, "", "", sizes], name, **attrs))


@maps("PaddingForward")
def padding(conv, op):
    p = op.params
    mode = {"CONSTANT": "constant", "REFLECT": "reflect", "REPLICATE": "edge"}.get(p.get("padding_mode", "CONSTANT"))
    if mode is None:
        raise conv.unsupported(op, f"padding mode {p.get('padding_mode')}")
    ndim = len(op.inputs[0].shape)
    front = [int(p[f"front_offset_dim{i}"]) for i in range(ndim)]
    back = [int(p[f"back_offset_dim{i}"]) for i in range(ndim)]
    inputs = [conv.value(op.inputs[0]), conv.b.constant(np.asarray(front + back), "pads")]
    if mode == "constant":
        inputs.append(conv.b.constant(np.float32(p.get("padding_val", 0.0)), "pad_value"))
    conv.set(op.outputs[0], conv.b.node("Pad", inputs, op.outputs[0].name, mode=mode))


# --- softmax, layer norm: parameters MegEngine 1.13's reader drops, read from the .mge (mge_file) --
@maps("SoftmaxForward")
def softmax(conv, op):
    x = conv.value(op.inputs[0])
    conv.set(op.outputs[0], conv.b.node("Softmax", [x], op.outputs[0].name, axis=int(op.params["axis"])))


@maps("LayerNormForward")
def layer_norm(conv, op):
    """``F.nn.layer_norm`` over the last ``normalized_dim`` axes: ``LayerNormalization`` (opset
    17), its primitive form before. Its other outputs (mean, 1/std) are for training."""
    p = op.params
    if any(conv.users.get(id(v)) or id(v) in conv.outputs for v in op.outputs[1:]):
        raise conv.unsupported(op, "a use of LayerNorm's mean or 1/std output")
    x_var, name = op.inputs[0], op.outputs[0].name
    dims, eps = int(p["normalized_dim"]), float(p["eps"])
    affine = bool(p["affine"]) and len(op.inputs) >= 3
    x = conv.value(x_var)
    if conv.b.opset >= 17:
        scale = conv.value(op.inputs[1]) if affine else conv.b.constant(np.ones(x_var.shape[-dims:]), f"{name}.scale")
        inputs = [x, scale] + ([conv.value(op.inputs[2])] if affine else [])
        conv.set(op.outputs[0], conv.b.node("LayerNormalization", inputs, name, axis=-dims, epsilon=eps))
        return
    axes = list(range(len(x_var.shape) - dims, len(x_var.shape)))
    mean = conv.b.axes_input_or_attr("ReduceMean", [x], axes, 18, f"{name}/mean", keepdims=1)
    centred = conv.b.node("Sub", [x, mean], f"{name}/centred")
    var = conv.b.axes_input_or_attr("ReduceMean", [conv.b.node("Mul", [centred, centred], f"{name}/square")], axes, 18,
                                    f"{name}/var", keepdims=1)
    std = conv.b.node("Sqrt", [conv.b.node("Add", [var, conv.b.constant(np.float32(eps), "eps")], f"{name}/var_eps")],
                      f"{name}/std")
    y = conv.b.node("Div", [centred, std], f"{name}/normed" if affine else name)
    if affine:
        y = conv.b.node("Add", [conv.b.node("Mul", [y, conv.value(op.inputs[1])], f"{name}/scaled"),
                                conv.value(op.inputs[2])], name)
    conv.set(op.outputs[0], y)


# --- refusals -------------------------------------------------------------------------------------
_WHY = {
    "SoftmaxForward": "its axis is not in the graph MegEngine 1.13's reader gives (megzoo reads it from a .mge "
                      "file in MegEngine's v2 format, and traces F.softmax in primitive form)",
    "LayerNormForward": "its epsilon is not in the graph MegEngine 1.13's reader gives (megzoo reads it from a .mge "
                        "file in MegEngine's v2 format, and traces F.nn.layer_norm in primitive form)",
    "RelayoutFormat": "a relayout to a blocked layout (NCHW88/NCHW44) that ONNX cannot express; "
                      "export with layout 'nchw'",
}


def check_supported(conv, ops: Sequence) -> None:
    """:class:`~.convert.UnsupportedOperatorError` for the first operator without a mapping, or
    with a blocked layout, before anything is written."""
    for op in ops:
        kind = _kind_of(op)
        if kind not in MAPPINGS or (kind in _WHY and not op.params):
            raise conv.unsupported(op, _WHY.get(kind, "no mapping for this operator"))
        fmt = getattr(op, "params", {}).get("format") if isinstance(getattr(op, "params", None), dict) else None
        if fmt and fmt not in ("NCHW", "DEFAULT"):
            raise conv.unsupported(op, f"the {fmt} layout that ONNX cannot express (the graph was dumped for a "
                                       "machine-specific layout; export it with layout 'nchw')")
        if kind == "Elemwise" and op.params.get("mode") not in ELEMWISE:
            raise conv.unsupported(op, f"Elemwise mode {op.params.get('mode')} has no mapping")
