"""MegEngine's int8 modules as ONNX QDQ nodes (QuantizeLinear / DequantizeLinear around float ops).

An int8 model (:class:`megzoo.models.quantizable.QuantizableModel` after
:func:`megzoo.quantization.quantize`) carries MegEngine's calibrated scales: per-tensor,
symmetric int8 for every activation and ``qint8_narrow`` for every weight. They are written as
they are, so the ONNX file computes the int8 function the eager MegEngine model computes, in the
form ONNX Runtime fuses into ``QLinearConv`` / ``QLinearAdd`` kernels:

* an activation value is a float tensor ``DQ(Q(y))``; the graph remembers its (scale, zero
  point, element type) in ``graph.qparams``, so a consumer knows the step it was rounded to;
* signed activations are uint8 with zero point 128, the same 256 values as MegEngine's int8
  with zero point 0 (ONNX Runtime runs its x86 kernels on unsigned activations);
* activations after a ReLU are uint8 with zero point 0 over MegEngine's calibrated range
  [0, 127 x scale]: the step is 127/255 of MegEngine's (its int8 spends half its codes on
  negative values a ReLU never makes), the range and so the clipping are the same, and ONNX
  Runtime drops the ReLU into the quantization. This finer rounding is the one difference
  from the eager model;
* weights are int8 (zero point 0) and biases int32 at scale ``input scale x weight scale``,
  rounded as MegEngine rounds them.

Functions here are called by :class:`~megzoo.inference.onnx_graph.OnnxGraph` for the module
kinds :func:`quantized_kinds` lists.
"""
import numpy as np

from .snapshot import tensor_value

__all__ = ["quantized_kinds", "emit_quantized", "requantize_like", "int8_scale"]

_UINT8, _INT8, _INT32 = 2, 3, 6  # onnx.TensorProto element types (kept numeric: onnx imports lazily)


def quantized_kinds() -> tuple:
    """The MegEngine int8 module kinds emitted here (exact types)."""
    import megengine.module.quantized as Q

    return (Q.QuantStub, Q.DequantStub, Q.Conv2d, Q.ConvRelu2d, Q.ConvBn2d, Q.ConvBnRelu2d, Q.Elemwise)


def int8_scale(dtype) -> float:
    """The scale of a MegEngine quantized dtype (``qint8(s)``, ``qint32(s)``)."""
    from megengine.core.tensor import dtype as qdtype

    return float(qdtype.get_scale(dtype))


def _quantize(graph, y: str, scale: float, zero_point: int, elem: int) -> str:
    """``DQ(Q(y))`` at ``scale``/``zero_point`` (uint8 or int8); the result carries its qparams."""
    zp = np.array(zero_point, dtype=np.uint8 if elem == _UINT8 else np.int8)
    s, z = graph.raw_constant(np.array(scale, dtype=np.float32), "scale"), graph.raw_constant(zp, "zero_point")
    q = graph.node("QuantizeLinear", [y, s, z], graph.shape_of(y))
    dq = graph.node("DequantizeLinear", [q, s, z], graph.shape_of(y))
    graph.qparams[dq] = (float(scale), int(zero_point), elem)
    return dq


def _activation(graph, y: str, dtype, relu: bool) -> str:
    """``y`` rounded to MegEngine's output dtype: unsigned after a ReLU, else zero point 128."""
    scale = int8_scale(dtype)
    if relu:  # the same range [0, 127 scale], all 256 codes
        return _quantize(graph, graph.relu(y), float(np.float32(scale * 127.0 / 255.0)), 0, _UINT8)
    return _quantize(graph, y, scale, 128, _UINT8)


def requantize_like(graph, y: str, x: str) -> str:
    """``y`` (computed from the quantized ``x`` by an op that keeps values, e.g. max-pooling)
    rounded to ``x``'s qparams, so the op runs on 8-bit values; ``y`` itself when ``x`` is float."""
    if x not in graph.qparams:
        return y
    scale, zero_point, elem = graph.qparams[x]
    return _quantize(graph, y, scale, zero_point, elem)


def _input_scale(graph, module, x: str) -> float:
    if x not in graph.qparams:
        raise ValueError(f"{graph._where(module)} ({type(module).__name__}) gets a float input: an int8 module must "
                         "follow the model's QuantStub")
    scale, _, _ = graph.qparams[x]
    return scale


def _conv(graph, conv, x: str) -> str:
    from ..layers import pair

    relu = type(conv).__name__ in ("ConvRelu2d", "ConvBnRelu2d")
    c, h, w = graph.shape_of(x)
    in_scale = _input_scale(graph, conv, x)
    value = tensor_value(conv.weight)  # a numpy qint8 dtype carries MegEngine's scale
    w_scale = int8_scale(value.dtype)
    weight = np.asarray(value).astype(np.int8)
    if weight.ndim == 5:  # MegEngine's grouped layout (G, O/G, I/G, kh, kw)
        weight = weight.reshape((-1,) + weight.shape[2:])
    out_channels = weight.shape[0]
    bias = np.asarray(tensor_value(conv.bias), dtype=np.float64).reshape(-1) if conv.bias is not None else np.zeros(out_channels)
    bias_scale = np.float32(in_scale) * np.float32(w_scale)  # float32, as MegEngine multiplies them
    bias_q = np.round(bias / np.float64(bias_scale)).astype(np.int32)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (pair(conv.kernel_size), pair(conv.stride), pair(conv.padding),
                                              pair(conv.dilation))
    wq = graph.node("DequantizeLinear", [graph.raw_constant(weight, "weight_q"),
                                         graph.raw_constant(np.array(w_scale, dtype=np.float32), "weight_scale"),
                                         graph.raw_constant(np.array(0, dtype=np.int8), "weight_zp")], weight.shape)
    bq = graph.node("DequantizeLinear", [graph.raw_constant(bias_q, "bias_q"),
                                         graph.raw_constant(np.array(bias_scale, dtype=np.float32), "bias_scale"),
                                         graph.raw_constant(np.array(0, dtype=np.int32), "bias_zp")], (out_channels,))
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    y = graph.node("Conv", [x, wq, bq], (out_channels, oh, ow), kernel_shape=[kh, kw], strides=[sh, sw],
                   pads=[ph, pw, ph, pw], dilations=[dh, dw], group=int(conv.groups))
    return _activation(graph, y, conv.output_dtype, relu)


def emit_quantized(graph, module, x: str) -> str:
    """One MegEngine int8 module (a kind of :func:`quantized_kinds` other than ``Elemwise``,
    which takes two inputs: :meth:`OnnxGraph.elemwise`) applied to the value ``x``."""
    import megengine.module.quantized as Q

    kind = type(module)
    if kind is Q.QuantStub:
        return _quantize(graph, x, int8_scale(module.output_dtype), 128, _UINT8)
    if kind is Q.DequantStub:
        return x  # values are float tensors already (DQ outputs)
    if kind in (Q.Conv2d, Q.ConvRelu2d, Q.ConvBn2d, Q.ConvBnRelu2d):
        if getattr(module, "padding_mode", "zeros") != "zeros":
            raise graph._unsupported(module, "only zero-padded int8 convolutions have a mapping")
        return _conv(graph, module, x)
    raise graph._unsupported(module, "this int8 module takes more than one input; its block's to_onnx wires it")


def emit_elemwise(graph, module, inputs) -> str:
    """An int8 ``Elemwise`` (``ADD`` or ``FUSE_ADD_RELU``) of quantized values."""
    method = str(module.method).upper().lstrip("Q")
    if method not in ("ADD", "FUSE_ADD_RELU"):
        raise graph._unsupported(module, f"int8 Elemwise {module.method!r} has no mapping (ADD, FUSE_ADD_RELU have)")
    for x in inputs:
        _input_scale(graph, module, x)
    y = graph.add(*inputs)
    return _activation(graph, y, module.output_dtype, method == "FUSE_ADD_RELU")
