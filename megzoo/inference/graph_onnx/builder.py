"""An ONNX graph under construction: nodes, constants and value names, built with the ``onnx``
package's helpers (imported lazily: importing megzoo does not import onnx).

Every value is a name; :class:`OnnxBuilder` remembers each value's numpy dtype (``float32``,
``int64`` or ``bool``) so an operator mapping can tell a shape computation (integers: MegEngine's
int32 shape values are written as ONNX's int64) from a tensor of the model.
"""
from typing import Dict, List, Optional, Sequence

import numpy as np

__all__ = ["OnnxBuilder", "check_structure"]


class OnnxBuilder:
    """Nodes and initializers of one ONNX graph for ``opset``."""

    def __init__(self, opset: int):
        self.opset = int(opset)
        self.nodes: List = []
        self.initializers: List = []
        self.dtypes: Dict[str, np.dtype] = {}
        self._used: Dict[str, int] = {}
        self._constants: Dict[tuple, str] = {}

    def fresh(self, base: str) -> str:
        """A value or node name not used yet, from ``base`` (a MegEngine variable name, which
        carries the module path: ``layer1.0.conv1.Convolution``)."""
        base = base or "value"
        count = self._used.get(base, 0)
        self._used[base] = count + 1
        return base if count == 0 else f"{base}__{count}"

    def constant(self, array, name: str = "const", dtype=None) -> str:
        """An initializer holding ``array`` (floats as float32, integers as int64 unless
        ``dtype`` says otherwise); equal small constants are shared."""
        from onnx import numpy_helper

        array = np.asarray(array)
        if dtype is None:
            dtype = np.int64 if array.dtype.kind in "iu" else np.bool_ if array.dtype.kind == "b" else np.float32
        array = np.ascontiguousarray(array.astype(dtype))
        key = (array.dtype.str, array.shape, array.tobytes()) if array.size <= 16 else None
        if key is not None and key in self._constants:
            return self._constants[key]
        out = self.fresh(name)
        self.initializers.append(numpy_helper.from_array(array, out))
        self.dtypes[out] = array.dtype
        if key is not None:
            self._constants[key] = out
        return out

    def node(self, op: str, inputs: Sequence[str], name: str, dtype=np.float32, outputs: int = 1,
             **attrs) -> str:
        """Append one ``op`` node named after ``name``; its output (a list of ``outputs`` names when
        there are several) is returned, of ``dtype``."""
        from onnx import helper

        node_name = self.fresh(name)
        outs = [node_name] + [self.fresh(f"{node_name}:{i}") for i in range(1, outputs)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=node_name, **attrs))
        for out in outs:
            self.dtypes[out] = np.dtype(dtype)
        return outs[0] if outputs == 1 else outs

    def dtype(self, value: str) -> np.dtype:
        return self.dtypes.get(value, np.dtype(np.float32))

    def as_int64(self, value: str, name: str) -> str:
        """``value`` as int64 (shape arithmetic), cast when it is not."""
        if self.dtype(value) == np.int64:
            return value
        return self.node("Cast", [value], f"{name}/to_int64", dtype=np.int64, to=7)  # TensorProto.INT64

    def axes_input_or_attr(self, op: str, inputs: List[str], axes: Sequence[int], since: int, name: str,
                           dtype=np.float32, **attrs) -> str:
        """``op`` with ``axes`` given as an input (opset >= ``since``) or an attribute (before)."""
        if self.opset >= since:
            return self.node(op, inputs + [self.constant(np.asarray(list(axes), np.int64), "axes")], name,
                             dtype=dtype, **attrs)
        return self.node(op, inputs, name, dtype=dtype, axes=list(axes), **attrs)

    def _reachable(self, outputs: Sequence[str]):
        """The nodes and initializers the ``outputs`` depend on, in order (a value a mapping made
        but nothing reads, e.g. a float bias an int8 convolution rounded itself, is left out)."""
        needed, kept = set(outputs), []
        for node in reversed(self.nodes):
            if needed.intersection(node.output):
                kept.append(node)
                needed.update(i for i in node.input if i)
        return kept[::-1], [t for t in self.initializers if t.name in needed]

    def model(self, inputs, outputs, doc: str = "", metadata: Optional[Dict[str, str]] = None, check: bool = True):
        """The checked ``onnx.ModelProto`` (``inputs``/``outputs``: value infos)."""
        from onnx import helper

        nodes, initializers = self._reachable([o.name for o in outputs])
        graph = helper.make_graph(nodes, "megzoo", list(inputs), list(outputs), initializers)
        opsets = [helper.make_opsetid("", self.opset)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="megzoo", doc_string=doc)
        model.ir_version = helper.find_min_ir_version_for(opsets)
        if metadata:
            helper.set_model_props(model, {str(k): str(v) for k, v in metadata.items()})
        if check:
            check_structure(nodes, inputs, outputs, initializers, opsets)
        return model


#: initializers above this many elements are weights: the structure check sees them as typed inputs
WEIGHT_ELEMENTS = 4096


def check_structure(nodes, inputs, outputs, initializers, opsets) -> None:
    """``onnx.checker`` with full shape inference on the graph, its weights (initializers over
    :data:`WEIGHT_ELEMENTS` elements) seen as graph inputs of their dtypes and shapes. The checker
    serializes the model it checks: for VGG's 530 MB of weights that took longer than the
    conversion, to verify bytes ``numpy_helper.from_array`` wrote from arrays of those very shapes.
    Small constants stay initializers, so shape inference still reads reshape targets and the like.
    What the full check adds, each weight's byte count against its shape, holds by construction:
    :meth:`OnnxBuilder.constant` writes both from one array."""
    import onnx
    from onnx import helper

    weights = [t for t in initializers if int(np.prod(t.dims)) > WEIGHT_ELEMENTS]
    as_inputs = [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in weights]
    kept = [t for t in initializers if int(np.prod(t.dims)) <= WEIGHT_ELEMENTS]
    graph = helper.make_graph(nodes, "megzoo", list(inputs) + as_inputs, list(outputs), kept)
    skeleton = helper.make_model(graph, opset_imports=opsets)
    skeleton.ir_version = helper.find_min_ir_version_for(opsets)
    onnx.checker.check_model(skeleton, full_check=True)
