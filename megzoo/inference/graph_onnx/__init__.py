"""MegEngine graphs to ONNX, operator by operator: any module megzoo traces, any ``.mge`` file.

:func:`module_to_onnx` traces a module (:mod:`.reader`) and converts its graph
(:mod:`.convert`, with one mapping per MegEngine operator in :mod:`.ops`); :func:`mge_to_onnx`
converts a graph file MegEngine dumped.
"""
from typing import Dict, Optional, Sequence

from .convert import BATCH_AXIS, UnsupportedOperatorError, network_to_onnx
from .reader import trace_module

__all__ = ["module_to_onnx", "mge_to_onnx", "UnsupportedOperatorError", "UnsupportedModuleError", "BATCH_AXIS",
           "DEFAULT_OPSET", "MIN_OPSET", "MAX_OPSET", "check_opset"]

#: the opset written unless told (ONNX Runtime 1.14+, TensorRT 8.6+, OpenVINO 2023+ read it)
DEFAULT_OPSET = 17
#: the range the mappings are written for and tested in
MIN_OPSET, MAX_OPSET = 13, 21
#: the name megzoo's module-tree exporter gave this error (kept for code that catches it)
UnsupportedModuleError = UnsupportedOperatorError


def check_opset(opset) -> int:
    """``opset`` if it is an int in [:data:`MIN_OPSET`, :data:`MAX_OPSET`], else ValueError."""
    if not isinstance(opset, int) or isinstance(opset, bool) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset must be an int in [{MIN_OPSET}, {MAX_OPSET}], got {opset!r}")
    return opset


def module_to_onnx(model, input_shape: Sequence[int], *, opset: int = DEFAULT_OPSET, dynamic_batch: bool = True,
                   fold_bn: bool = True, output_names: Optional[Sequence[str]] = None,
                   metadata: Optional[Dict[str, str]] = None, check: bool = True):
    """``model`` (any MegEngine module) traced on (N, C, H, W) ``input_shape`` inputs and
    converted: an ``onnx.ModelProto`` whose input is ``data`` and whose batch axis is dynamic
    unless ``dynamic_batch=False``."""
    check_opset(opset)
    network, names = trace_module(model, input_shape)
    return network_to_onnx(network, opset=opset, dynamic_batch=dynamic_batch, fold_bn=fold_bn,
                           output_names=output_names or names, doc=getattr(model, "model_name", type(model).__name__),
                           metadata=metadata, check=check)


def mge_to_onnx(path, *, opset: int = DEFAULT_OPSET, dynamic_batch: bool = True, check: bool = True):
    """A ``.mge`` graph file (one float32 NCHW input; dumped with or without
    ``optimize_for_inference``) converted to an ``onnx.ModelProto``; a blocked layout (NCHW88,
    NCHW44) or another input is refused (:mod:`.mge_file`)."""
    from .mge_file import graph_file_to_onnx

    check_opset(opset)
    return graph_file_to_onnx(path, opset=opset, dynamic_batch=dynamic_batch, check=check)
