"""Build an ONNX model from a megzoo module tree: one emitter per layer kind, the flow from the model.

:class:`OnnxGraph` knows layer kinds, not model families. It emits one ONNX operator (or a few)
per MegEngine module (``Conv2d`` with a following BatchNorm folded into it, ``BatchNorm2d``,
``GroupNorm``, ``ReLU``, ``MaxPool2d``, ``AvgPool2d``, ``Linear``, ``Dropout``/``Identity`` (no-ops in
inference), ``Sequential``, megzoo's :class:`~megzoo.layers.AdaptiveAvgPool2d`) and a module
that is none of these emits itself through its ``to_onnx(graph, x)`` method: that is how a family
(``models/resnet.py``, ``models/vgg.py``) says how its blocks and its head are wired, the same way
their ``forward`` does. :func:`build_onnx` drives the model's own ``to_onnx`` and returns a checked
``onnx.ModelProto``.

Values are named strings; the graph keeps each value's shape without the batch axis ((C, H, W)
for maps, (F,) for vectors), so layers that depend on the spatial size (adaptive pooling) are
emitted for the export's input size. The batch axis is symbolic (``"N"``) unless the export is
static. Everything is built with the ``onnx`` package's helpers (imported only here).
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..layers import pair
from .graph import INPUT_NAME
from .snapshot import tensor_value

__all__ = ["OnnxGraph", "UnsupportedModuleError", "build_onnx", "check_opset", "unsupported_modules", "DEFAULT_OPSET", "MIN_OPSET", "MAX_OPSET", "BATCH_AXIS"]

#: the opset written unless told (ONNX Runtime 1.14+, TensorRT 8.6+, OpenVINO 2023+ read it)
DEFAULT_OPSET = 17
#: the range megzoo's operators are written for and tested in
MIN_OPSET, MAX_OPSET = 13, 21
#: the name of the symbolic batch dimension of the input and of every output
BATCH_AXIS = "N"

Shape = Tuple[int, ...]


class UnsupportedModuleError(TypeError):
    """A module in the model has no ONNX mapping (e.g. a custom norm layer)."""


def check_opset(opset) -> int:
    """``opset`` if it is an int in [:data:`MIN_OPSET`, :data:`MAX_OPSET`], else ValueError."""
    if not isinstance(opset, int) or isinstance(opset, bool) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset must be an int in [{MIN_OPSET}, {MAX_OPSET}], got {opset!r}")
    return opset


def _leaf_kinds():
    """The module kinds with a mapping here, by exact type (a subclass may compute something else,
    e.g. ``ConvRelu2d``), and the BatchNorm kinds that compute plain BatchNorm in inference."""
    import megengine.module as M

    from ..layers import AdaptiveAvgPool2d, FrozenBatchNorm2d

    from .onnx_qdq import quantized_kinds

    batch_norms = (M.BatchNorm2d, FrozenBatchNorm2d, M.SyncBatchNorm)
    return batch_norms, (M.Conv2d, M.GroupNorm, M.ReLU, M.MaxPool2d, M.AvgPool2d, AdaptiveAvgPool2d, M.Linear,
                         M.Dropout, M.Identity, M.Sequential) + batch_norms + quantized_kinds()


def _kind(module, kinds) -> bool:
    return type(module) in kinds and not hasattr(module, "to_onnx")


def unsupported_modules(model) -> List[str]:
    """``"name (Type)"`` of every module in ``model`` the exporter cannot emit: a module without
    ``to_onnx`` that is not one of the layer kinds mapped here (found without building anything,
    so ``megzoo.compile(backend="auto")`` can choose Lite for such a model)."""
    _, kinds = _leaf_kinds()
    if not hasattr(model, "to_onnx"):
        return [f"the model ({type(model).__name__}: no to_onnx)"]
    found = []
    for name, module in model.named_modules():
        if name and not hasattr(module, "to_onnx") and type(module) not in kinds:
            found.append(f"{name} ({type(module).__name__})")
    return found


def _array(tensor, dtype=np.float32) -> np.ndarray:
    return np.asarray(tensor_value(tensor), dtype=dtype)


class OnnxGraph:
    """An ONNX graph under construction, fed by the module tree (module docstring).

    ``input_shape``: the (N, C, H, W) the model is exported for; ``dynamic_batch``: the batch axis
    is :data:`BATCH_AXIS` instead of N; ``fold_bn``: a BatchNorm right after a convolution is
    folded into the convolution's weights and bias (else it is a ``BatchNormalization`` node)."""

    def __init__(self, input_shape: Sequence[int], *, dynamic_batch: bool = True, fold_bn: bool = True):
        shape = tuple(int(s) for s in input_shape)
        if len(shape) != 4 or min(shape) < 1:
            raise ValueError(f"input_shape must be (N, C, H, W) of positive sizes, got {input_shape!r}")
        self.input_shape = shape
        self.dynamic_batch = dynamic_batch
        self.fold_bn = fold_bn
        self.nodes: List[Any] = []
        self.initializers: List[Any] = []
        self.shapes: Dict[str, Shape] = {INPUT_NAME: shape[1:]}
        self._count: Dict[str, int] = {}
        self._path: List[str] = []  # module names down to the one being emitted (for error messages)
        self._names: Dict[int, str] = {}  # id(module) -> its name in the exported model (error messages)
        #: value name -> (scale, zero point, ONNX element type) of the int8 values (``onnx_qdq``)
        self.qparams: Dict[str, Tuple[float, int, int]] = {}

    def name_modules(self, root) -> None:
        """Error messages name modules by their path in ``root`` (``layer1.0.bn1``)."""
        self._names = {id(m): name for name, m in root.named_modules() if name}

    # --- plumbing ---------------------------------------------------------------------------
    def _fresh(self, kind: str) -> str:
        self._count[kind] = self._count.get(kind, 0) + 1
        return f"{kind}_{self._count[kind]}"

    def constant(self, array: np.ndarray, kind: str = "const") -> str:
        """A float32 (or int64) initializer; returns its name."""
        from onnx import numpy_helper

        name = self._fresh(kind)
        array = np.asarray(array)
        array = array.astype(np.int64 if array.dtype.kind in "iu" else np.float32)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def raw_constant(self, array: np.ndarray, kind: str = "const") -> str:
        """An initializer of ``array``'s own dtype (int8, uint8, int32 for the int8 graphs)."""
        from onnx import numpy_helper

        name = self._fresh(kind)
        self.initializers.append(numpy_helper.from_array(np.array(array, order="C"), name))  # 0-d stays 0-d
        return name

    def node(self, op: str, inputs: Sequence[str], shape: Shape, **attrs) -> str:
        """Append one ``op`` node; its single output (per-image ``shape``) is returned."""
        from onnx import helper

        out = self._fresh(op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out, **attrs))
        self.shapes[out] = tuple(int(s) for s in shape)
        return out

    def shape_of(self, x: str) -> Shape:
        return self.shapes[x]

    def _where(self, module) -> str:
        return self._names.get(id(module)) or ".".join(self._path) or "the model"

    def _unsupported(self, module, why: str) -> UnsupportedModuleError:
        where = self._where(module)
        return UnsupportedModuleError(f"cannot export {where} ({type(module).__name__}) to ONNX: {why}; "
                                      "megzoo.compile(..., backend='lite') and the .mge export run any module")

    # --- one emitter per layer kind -----------------------------------------------------------
    def conv(self, conv, x: str, norm=None) -> str:
        """``Conv2d`` (grouped, dilated, with or without bias), with ``norm`` (a BatchNorm2d that
        follows it) folded in when ``fold_bn``; other norms are emitted after it."""
        if getattr(conv, "padding_mode", "zeros") != "zeros" or getattr(conv, "conv_mode", "cross_correlation") not in (
                "cross_correlation", "CROSS_CORRELATION"):
            raise self._unsupported(conv, "only zero padding and cross-correlation convolutions have a mapping")
        c, h, w = self.shape_of(x)
        groups = int(conv.groups)
        weight = _array(conv.weight)
        if weight.ndim == 5:  # MegEngine's grouped layout (G, O/G, I/G, kh, kw)
            weight = weight.reshape((-1,) + weight.shape[2:])
        out_channels = weight.shape[0]
        bias = _array(conv.bias).reshape(-1) if conv.bias is not None else np.zeros(out_channels)
        if c != weight.shape[1] * groups:
            raise ValueError(f"{self._where(conv)} expects {weight.shape[1] * groups} input channels, the graph has {c}: "
                             "check the export's input shape")
        if norm is not None and self.fold_bn and self._is_batch_norm(norm):
            scale, shift = self._bn_affine(norm)  # folded in float64, written as float32
            weight = weight.astype(np.float64) * scale[:, None, None, None]
            bias = bias.astype(np.float64) * scale + shift
            norm = None
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (pair(conv.kernel_size), pair(conv.stride), pair(conv.padding),
                                                  pair(conv.dilation))
        oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        y = self.node("Conv", [x, self.constant(weight, "weight"), self.constant(bias, "bias")], (out_channels, oh, ow),
                      kernel_shape=[kh, kw], strides=[sh, sw], pads=[ph, pw, ph, pw], dilations=[dh, dw], group=groups)
        return self.norm(norm, y) if norm is not None else y

    @staticmethod
    def _is_batch_norm(module) -> bool:
        return _kind(module, _leaf_kinds()[0])

    @staticmethod
    def _bn_affine(bn) -> Tuple[np.ndarray, np.ndarray]:
        """Inference BatchNorm as ``y = x * scale + shift`` per channel (float64)."""
        f64 = np.float64
        mean, var = _array(bn.running_mean, f64).reshape(-1), _array(bn.running_var, f64).reshape(-1)
        gamma = _array(bn.weight, f64).reshape(-1) if bn.weight is not None else np.ones_like(mean)
        beta = _array(bn.bias, f64).reshape(-1) if bn.bias is not None else np.zeros_like(mean)
        scale = gamma / np.sqrt(var + float(bn.eps))
        return scale, beta - mean * scale

    def norm(self, module, x: str) -> str:
        """``BatchNorm2d`` (inference statistics) or ``GroupNorm`` on a (C, H, W) map."""
        import megengine.module as M

        c, h, w = self.shape_of(x)
        if self._is_batch_norm(module):
            if module.running_mean is None or module.running_var is None:
                raise self._unsupported(module, "no running statistics (track_running_stats=False) to normalise with")
            scale, shift = self._bn_affine(module)
            if self.fold_bn:  # a BN without a convolution before it: one multiply-add
                y = self.node("Mul", [x, self.constant(scale.reshape(c, 1, 1), "bn_scale")], (c, h, w))
                return self.node("Add", [y, self.constant(shift.reshape(c, 1, 1), "bn_shift")], (c, h, w))
            mean = _array(module.running_mean, np.float64).reshape(-1)
            var = _array(module.running_var, np.float64).reshape(-1)
            gamma = scale * np.sqrt(var + float(module.eps))
            beta = shift + mean * scale
            return self.node("BatchNormalization", [x, self.constant(gamma, "bn_gamma"), self.constant(beta, "bn_beta"),
                                                    self.constant(mean, "bn_mean"), self.constant(var, "bn_var")],
                             (c, h, w), epsilon=float(module.eps))
        if type(module) is M.GroupNorm:
            groups = int(module.num_groups)
            # (N, C, H, W) -> (N, G, C/G*H*W), normalised per group, back, then the per-channel affine
            grouped = self.node("Reshape", [x, self.constant(np.array([0, groups, -1]), "shape")],
                                (groups, (c // groups) * h * w))
            normed = self.node("InstanceNormalization", [grouped, self.constant(np.ones(groups), "ones"),
                                                         self.constant(np.zeros(groups), "zeros")],
                               self.shape_of(grouped), epsilon=float(module.eps))
            y = self.node("Reshape", [normed, self.constant(np.array([0, c, h, w]), "shape")], (c, h, w))
            if getattr(module, "affine", True) and module.weight is not None:
                y = self.node("Mul", [y, self.constant(_array(module.weight).reshape(c, 1, 1), "gn_gamma")], (c, h, w))
                y = self.node("Add", [y, self.constant(_array(module.bias).reshape(c, 1, 1), "gn_beta")], (c, h, w))
            return y
        raise self._unsupported(module, "not a BatchNorm2d or GroupNorm")

    def relu(self, x: str) -> str:
        return self.node("Relu", [x], self.shape_of(x))

    def add(self, a: str, b: str) -> str:
        if self.shape_of(a) != self.shape_of(b):
            raise ValueError(f"cannot add maps of shapes {self.shape_of(a)} and {self.shape_of(b)}")
        return self.node("Add", [a, b], self.shape_of(a))

    def _pool(self, op: str, x: str, kernel, stride, padding, **attrs) -> str:
        """One pooling node (floor mode) over a (C, H, W) map; ``stride`` None means ``kernel``."""
        (kh, kw), (ph, pw) = pair(kernel), pair(padding)
        sh, sw = pair(stride if stride is not None else kernel)
        c, h, w = self.shape_of(x)
        shape = (c, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)
        return self.node(op, [x], shape, kernel_shape=[kh, kw], strides=[sh, sw], pads=[ph, pw, ph, pw], **attrs)

    def max_pool(self, pool, x: str) -> str:
        """``MaxPool2d`` (floor mode, padding with -inf as MegEngine does); on an int8 value, at
        the same scale (ONNX Runtime then pools the 8-bit values)."""
        from .onnx_qdq import requantize_like

        return requantize_like(self, self._pool("MaxPool", x, pool.kernel_size, pool.stride, pool.padding), x)

    def elemwise(self, module, *inputs: str) -> str:
        """A MegEngine ``Elemwise`` of several values: int8 ``ADD``/``FUSE_ADD_RELU``
        (:mod:`~megzoo.inference.onnx_qdq`), or float ``ADD``/``FUSE_ADD_RELU``."""
        import megengine.module as M

        from .onnx_qdq import emit_elemwise, quantized_kinds

        if type(module) in quantized_kinds():
            return emit_elemwise(self, module, inputs)
        if type(module) is M.Elemwise and str(module.method).upper() in ("ADD", "FUSE_ADD_RELU"):
            y = self.add(*inputs)
            return self.relu(y) if str(module.method).upper() == "FUSE_ADD_RELU" else y
        raise self._unsupported(module, f"Elemwise {getattr(module, 'method', '?')!r} has no mapping")

    def avg_pool(self, x: str, kernel, stride=None, padding=0, count_include_pad: bool = False) -> str:
        return self._pool("AveragePool", x, kernel, stride, padding, count_include_pad=int(count_include_pad))

    def adaptive_avg_pool(self, pool, x: str) -> str:
        """megzoo's :class:`~megzoo.layers.AdaptiveAvgPool2d` for this graph's map size: nothing,
        an ``AveragePool`` (sizes that divide) or two ``MatMul`` with PyTorch's bin matrices."""
        from ..layers import _pooling_matrix

        c, h, w = self.shape_of(x)
        oh, ow = pool.output_size
        if (h, w) == (oh, ow):
            return x
        if h < 1 or w < 1:
            raise ValueError(f"{self._where(pool)} gets a {h}x{w} map: the export's input is too small for the model")
        if h % oh == 0 and w % ow == 0:
            return self.avg_pool(x, (h // oh, w // ow))
        rows = self.node("MatMul", [self.constant(_pooling_matrix(h, oh), "pool_rows"), x], (c, oh, w))
        return self.node("MatMul", [rows, self.constant(_pooling_matrix(w, ow).T, "pool_cols")], (c, oh, ow))

    def global_avg_pool(self, x: str) -> str:
        """Mean over H and W: (C, H, W) -> (C,)."""
        c = self.shape_of(x)[0]
        return self.flatten(self.node("GlobalAveragePool", [x], (c, 1, 1)))

    def flatten(self, x: str) -> str:
        """(C, H, W) -> (C*H*W,), the batch axis kept."""
        return self.node("Flatten", [x], (int(np.prod(self.shape_of(x))),), axis=1)

    def linear(self, linear, x: str) -> str:
        """``Linear`` on (F,) vectors: ``Gemm`` with the (out, in) weight transposed."""
        (features,) = self.shape_of(x)
        weight = _array(linear.weight)
        if weight.shape[1] != features:
            raise ValueError(f"{self._where(linear)} expects {weight.shape[1]} features, the graph has {features}: "
                             "check the export's input shape")
        bias = _array(linear.bias) if linear.bias is not None else np.zeros(weight.shape[0])
        return self.node("Gemm", [x, self.constant(weight, "weight"), self.constant(bias, "bias")], (weight.shape[0],),
                         transB=1)

    def sequential(self, seq, x: str) -> str:
        """Each child in order; a BatchNorm right after a convolution is folded into it."""
        children = list(seq)
        i = 0
        while i < len(children):
            child = children[i]
            follower = children[i + 1] if i + 1 < len(children) else None
            with self._at(str(i)):
                if self._is_conv(child) and follower is not None and self.fold_bn and self._is_batch_norm(follower):
                    x = self.conv(child, x, norm=follower)
                    i += 2
                    continue
                x = self.module(child, x)
            i += 1
        return x

    @staticmethod
    def _is_conv(module) -> bool:
        import megengine.module as M

        return _kind(module, (M.Conv2d,))

    def module(self, module, x: str, name: Optional[str] = None) -> str:
        """Emit any supported module (its own ``to_onnx`` first, then the layer kinds above)."""
        import megengine.module as M

        from ..layers import AdaptiveAvgPool2d

        kind = type(module)
        with self._at(name):
            if hasattr(module, "to_onnx"):
                return module.to_onnx(self, x)
            from .onnx_qdq import emit_quantized, quantized_kinds

            if kind in quantized_kinds():
                return emit_quantized(self, module, x)
            if kind is M.Sequential:
                return self.sequential(module, x)
            if kind is M.Conv2d:
                return self.conv(module, x)
            if self._is_batch_norm(module) or kind is M.GroupNorm:
                return self.norm(module, x)
            if kind is M.ReLU:
                return self.relu(x)
            if kind is M.MaxPool2d:
                return self.max_pool(module, x)
            if kind is M.AvgPool2d:
                return self.avg_pool(x, module.kernel_size, module.stride, module.padding,
                                     count_include_pad=str(module.mode).lower() == "average")
            if kind is AdaptiveAvgPool2d:
                return self.adaptive_avg_pool(module, x)
            if kind is M.Linear:
                return self.linear(module, x)
            if kind in (M.Dropout, M.Identity):
                return x  # inference: nothing to do
            raise self._unsupported(module, "no ONNX mapping for this layer kind (supported: Conv2d, BatchNorm2d, "
                                    "GroupNorm, ReLU, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Linear, Dropout, "
                                    "Identity, Sequential, or a module with a to_onnx(graph, x) method)")

    class _At:
        def __init__(self, graph: "OnnxGraph", name: Optional[str]):
            self.graph, self.name = graph, name

        def __enter__(self):
            if self.name is not None:
                self.graph._path.append(self.name)

        def __exit__(self, *exc):
            if self.name is not None:
                self.graph._path.pop()

    def _at(self, name: Optional[str]) -> "OnnxGraph._At":
        """Error messages name the module path being emitted (``layer2.0.conv1``)."""
        return OnnxGraph._At(self, name)

    # --- the finished model ---------------------------------------------------------------------
    def to_model(self, outputs: Sequence[str], output_names: Sequence[str], opset: int, doc: str = "",
                 metadata: Optional[Dict[str, str]] = None, check: bool = True):
        """The ``onnx.ModelProto`` with ``outputs`` renamed to ``output_names``, checked by
        ``onnx.checker`` with shape inference when ``check``."""
        import onnx
        from onnx import TensorProto, helper

        batch = BATCH_AXIS if self.dynamic_batch else self.input_shape[0]
        nodes = list(self.nodes)
        for value, name in zip(outputs, output_names):  # outputs get their public names
            nodes.append(helper.make_node("Identity", [value], [name], name=f"output_{name}"))
        graph = helper.make_graph(
            nodes, "megzoo",
            [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [batch, *self.input_shape[1:]])],
            [helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, *self.shapes[value]])
             for value, name in zip(outputs, output_names)],
            self.initializers)
        opsets = [helper.make_opsetid("", int(opset))]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="megzoo", doc_string=doc)
        model.ir_version = helper.find_min_ir_version_for(opsets)  # readable by runtimes of that opset's time
        if metadata:
            helper.set_model_props(model, {str(k): str(v) for k, v in metadata.items()})
        if check:
            onnx.checker.check_model(model, full_check=True)
        return model


def build_onnx(model, input_shape: Sequence[int], *, opset: int = DEFAULT_OPSET, dynamic_batch: bool = True,
               fold_bn: bool = True, output_names: Optional[Sequence[str]] = None,
               metadata: Optional[Dict[str, str]] = None, check: bool = True):
    """``model`` (a megzoo model, or any module with ``to_onnx(graph, x)`` returning one value
    name or a list of them) as a checked ``onnx.ModelProto`` for (N, C, H, W) ``input_shape``
    inputs named :data:`~megzoo.inference.graph.INPUT_NAME`. Outputs are named ``output`` (one)
    or ``output0``, ``output1``, ... (a list, e.g. a ``features_only`` backbone). ``check``: run
    ``onnx.checker`` (a second serialisation: 6 of VGG-16's 11 s; the compile path leaves it to
    ONNX Runtime's own loading checks)."""
    from .graph import output_names as default_names

    check_opset(opset)
    if not hasattr(model, "to_onnx"):
        raise UnsupportedModuleError(f"{type(model).__name__} has no to_onnx(graph, x): ONNX export covers megzoo's "
                                     "model families (ResNet/ResNeXt/Wide-ResNet, VGG) and modules that emit themselves; "
                                     "megzoo.compile(..., backend='lite') and the .mge export run any module")
    graph = OnnxGraph(input_shape, dynamic_batch=dynamic_batch, fold_bn=fold_bn)
    graph.name_modules(model)
    outputs = model.to_onnx(graph, INPUT_NAME)
    listed = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    names = list(output_names) if output_names is not None else default_names(outputs)
    if len(names) != len(listed):
        raise ValueError(f"{len(listed)} outputs but {len(names)} output names")
    return graph.to_model(listed, names, opset, doc=getattr(model, "model_name", type(model).__name__),
                          metadata=metadata, check=check)
