"""A ``.mge`` graph file MegEngine dumped, read for conversion: what the converter needs, or why not.

:func:`read_graph_file` reads the file with ``megengine.utils.network.Network`` and

* refuses a graph ONNX cannot express before any conversion: a file that is not a MegEngine graph
  (named for what it is), a graph dumped for a blocked layout (NCHW88: channels in blocks of 8
  inside the graph for x86's AVX2 kernels; NCHW44: blocks of 4 for ARM), and a graph whose input is
  not one float32 (N, C, H, W) batch;
* gives back the parameters MegEngine 1.13's reader drops: ``SoftmaxForward``'s ``axis`` and
  ``LayerNormForward``'s ``affine``, ``eps`` and ``normalized_dim`` are read from the file's own
  FlatBuffers (format v2, ``mgv2``: ``Model.oprs[i].param`` is a union whose type says which
  parameter table follows) and matched to the reader's operators by the name of their first output.

A graph dumped with ``optimize_for_inference`` converts as one dumped without it: its
``ConvBiasForward`` (bias, residual input and nonlinearity in one operator), folded BatchNorm and
fused element-wise modes have mappings in :mod:`.ops`.
"""
import json
import os
import struct
from typing import Dict, Tuple, Union

__all__ = ["graph_file_to_onnx", "read_graph_file", "graph_params", "BLOCKED_LAYOUTS", "CONVERT_ACCEPTS",
           "LITE_RUNS_IT"]

PathLike = Union[str, "os.PathLike[str]"]

#: what megzoo convert takes, as its refusals say it
CONVERT_ACCEPTS = ("megzoo convert takes a MegEngine .mge graph (megengine.jit.trace(...).dump, "
                   "`megzoo export -o FILE.mge`)")
#: the way out an operator refusal of a .mge names
LITE_RUNS_IT = "MegEngine Lite runs the .mge as it is (megzoo.inference.load(FILE))"
#: blocked layout (a convolution's ``format``) -> what it is, for the refusal
BLOCKED_LAYOUTS = {
    "NCHW88": "channels in blocks of 8 inside the graph, for x86 AVX2 kernels",
    "NCHW44": "channels in blocks of 4 inside the graph, for ARM kernels",
    "NCHW44_DOT": "channels in blocks of 4 inside the graph, for ARM dot-product kernels",
    "NCHW4": "channels in blocks of 4 inside the graph",
    "NCHW8": "channels in blocks of 8 inside the graph",
    "NCHW32": "channels in blocks of 32 inside the graph",
    "NCHW64": "channels in blocks of 64 inside the graph",
    "NHWCD4": "an image layout for mobile GPUs",
    "CHWN4": "channels in blocks of 4, batch last",
}

# FlatBuffers schema v2 (MegEngine src/serialization/impl/schema_v2.fbs): field slots used here
_MODEL_OPRS = 2
_MODEL_MIDDLE_TENSORS = 3
_OPERATOR_PARAM_TYPE, _OPERATOR_PARAM, _OPERATOR_OUTPUTS = 3, 4, 8
_TENSOR_NAME = 0
#: OperatorParam union member -> (reader kind, [(field, flatbuffers type, default), ...] in slot order)
_PARAM_TABLES = {
    85: ("LayerNormForward", [("affine", "Bool", True), ("eps", "Float32", 1e-5), ("normalized_dim", "Uint64", 1),
                              ("normalized_size", "Uint64", 1)]),
    90: ("SoftmaxForward", [("axis", "Int32", -1)]),
}


def graph_params(path: PathLike) -> Dict[Tuple[str, str], dict]:
    """``{(reader kind, first output name): params}`` of the operators whose parameters MegEngine
    1.13's reader drops (:data:`_PARAM_TABLES`), read from a v2 ``.mge``; ``{}`` for another format
    or a file whose tables cannot be read (those operators are then refused by name)."""
    with open(path, "rb") as f:
        buf = bytearray(f.read())
    if buf[8:12] != b"mgv2":
        return {}
    try:
        return _v2_params(buf)
    except (struct.error, IndexError, UnicodeDecodeError, ValueError):
        return {}


def _v2_params(buf: bytearray) -> Dict[Tuple[str, str], dict]:
    from flatbuffers import number_types
    from flatbuffers.table import Table

    def slot(i: int) -> int:
        return 4 + 2 * i

    def vector(table: Table, field: int):
        offset = table.Offset(slot(field))
        if not offset:
            return 0, 0
        return table.Vector(offset), table.VectorLen(offset)

    def get(table: Table, field: int, kind: str, default):
        offset = table.Offset(slot(field))
        return table.Get(getattr(number_types, kind + "Flags"), table.Pos + offset) if offset else default

    root = Table(buf, 4 + struct.unpack_from("<I", buf, 4)[0])  # a size-prefixed buffer
    start, count = vector(root, _MODEL_MIDDLE_TENSORS)
    names = []
    for i in range(count):
        tensor = Table(buf, root.Indirect(start + 4 * i))
        offset = tensor.Offset(slot(_TENSOR_NAME))
        names.append(tensor.String(tensor.Pos + offset).decode() if offset else "")
    found: Dict[Tuple[str, str], dict] = {}
    seen = set()
    start, count = vector(root, _MODEL_OPRS)
    for i in range(count):
        opr = Table(buf, root.Indirect(start + 4 * i))
        table = _PARAM_TABLES.get(get(opr, _OPERATOR_PARAM_TYPE, "Uint8", 0))
        out_start, out_count = vector(opr, _OPERATOR_OUTPUTS)
        if table is None or not out_count:
            continue
        kind, fields = table
        param = Table(buf, opr.Indirect(opr.Pos + opr.Offset(slot(_OPERATOR_PARAM))))
        values = {name: get(param, k, fb_type, default) for k, (name, fb_type, default) in enumerate(fields)}
        first = names[struct.unpack_from("<I", buf, out_start)[0]]
        key = (kind, first)
        if key in seen:  # two operators whose outputs share a name: neither can be told apart
            found.pop(key, None)
            continue
        seen.add(key)
        found[key] = values
    return found


def _kind(op) -> str:
    kind = type(op).__name__
    return getattr(op, "type", kind) if kind == "ReadOnlyOpNode" else kind


def _file_kind(path: PathLike) -> str:
    """``"mge"`` for a MegEngine graph; ValueError naming what any other file is."""
    from ..model_files import ACCEPTED, model_file_kind

    try:
        kind = model_file_kind(path)
    except ValueError as exc:
        message = str(exc).replace("is not a model file load can run", "is not a MegEngine .mge graph")
        raise ValueError(message.replace(ACCEPTED, CONVERT_ACCEPTS)) from None
    if kind != "mge":
        raise ValueError(f"{path} is an ONNX model already; {CONVERT_ACCEPTS}")
    return kind


def _check_layout(network, path: PathLike) -> None:
    from .convert import UnsupportedOperatorError

    formats = [str(op.params.get("format", "")).upper() for op in network.all_oprs
               if isinstance(getattr(op, "params", None), dict)]
    blocked = [f for f in formats if f in BLOCKED_LAYOUTS]
    relayouts = [op for op in network.all_oprs if _kind(op) == "RelayoutFormat"]
    if not blocked and not relayouts:
        return
    if blocked:
        fmt, what = blocked[0], BLOCKED_LAYOUTS[blocked[0]]
    else:  # a relayout without a blocked operator: its mode (NCHW_NCHW88, ...) says which
        fmt, what = str(relayouts[0].params.get("mode", "RelayoutFormat")), "a blocked layout"
    raise UnsupportedOperatorError(
        f"{os.fspath(path)} was dumped with MegEngine's {fmt} layout ({what}), which ONNX cannot express: "
        "ONNX tensors are NCHW. Dump the model again without the layout option (megzoo export -o FILE.mge "
        f"--layout nchw; MegEngine: dump without enable_{fmt.lower()}) and convert that file")


def _check_input(network, path: PathLike) -> None:
    import numpy as np

    from .convert import UnsupportedOperatorError

    inputs = network.input_vars
    wanted = "megzoo converts graphs whose one input is a float32 (N, C, H, W) batch"
    if len(inputs) != 1:
        names = ", ".join(v.name for v in inputs) or "none"
        raise UnsupportedOperatorError(f"{os.fspath(path)} has {len(inputs)} inputs ({names}); {wanted}")
    (data,) = inputs
    shape = tuple(data.shape or ())
    try:
        dtype = np.dtype(data.dtype)
    except (TypeError, RuntimeError):  # a MegEngine dtype numpy does not know
        dtype = None
    if dtype != np.float32 or len(shape) != 4:
        raise UnsupportedOperatorError(f"{os.fspath(path)}: its input {data.name} is {dtype or 'a quantized type'} "
                                       f"of shape {shape}; {wanted}")


def read_graph_file(path: PathLike):
    """The ``Network`` of the ``.mge`` at ``path``, checked (module docstring) and with the
    parameters the reader drops filled in. ``FileNotFoundError``, ``ValueError`` (not a MegEngine
    graph) or :class:`~.convert.UnsupportedOperatorError` (a blocked layout, an input that is not
    one float32 NCHW batch)."""
    from .reader import read_mge

    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such .mge file: {os.fspath(path)}")
    _file_kind(path)
    network = read_mge(path)
    _check_layout(network, path)
    _check_input(network, path)
    lacking = [op for op in network.all_oprs
               if _kind(op) in ("SoftmaxForward", "LayerNormForward") and not op.params and op.outputs]
    params = graph_params(path) if lacking else {}  # the file is read again only for these
    for op in lacking:
        found = params.get((_kind(op), op.outputs[0].name))
        if found is not None:
            op.params = dict(found)
    return network


def graph_file_to_onnx(path: PathLike, *, opset: int, dynamic_batch: bool = True, check: bool = True):
    """The ``onnx.ModelProto`` of the ``.mge`` at ``path`` (:func:`read_graph_file`); its input is
    ``data``, its outputs ``output`` (``output0``, ``output1``, ... for several), its
    ``metadata_props`` say the dumped ``input_shape`` (JSON). An operator
    without a mapping is :class:`~.convert.UnsupportedOperatorError` naming it, the variable it
    makes (with its module path) and that Lite runs the file."""
    from .convert import LITE_HINT, UnsupportedOperatorError, network_to_onnx

    network = read_graph_file(path)
    dumped = [int(v) for v in network.input_vars[0].shape]
    try:
        return network_to_onnx(network, opset=opset, dynamic_batch=dynamic_batch, check=check,
                               metadata={"input_shape": json.dumps(dumped)})
    except UnsupportedOperatorError as exc:
        message = str(exc)
        if message.endswith(LITE_HINT):
            message = message[: -len(LITE_HINT)] + LITE_RUNS_IT
        raise UnsupportedOperatorError(message) from None
