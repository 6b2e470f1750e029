"""The ONNX Runtime runtime: run an ``.onnx`` file (or its bytes) on the CPU.

Contract (tested), as for :mod:`megzoo.inference.lite`: this module imports only the standard
library, numpy and ``onnxruntime``, never another megzoo module, so a deployment process may
load this one file by path and run an exported model with it.

:class:`OrtRunner` is one ``InferenceSession`` with ``threads`` intra-op threads, every graph
optimisation, sequential execution, the CPU execution provider.
"""
import os
from typing import List, Optional, Union

import numpy as np

__all__ = ["OrtRunner", "onnxruntime_version"]

PathLike = Union[str, "os.PathLike[str]"]


#: the distributions that install the ``onnxruntime`` module
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml",
                     "ort-nightly", "onnxruntime-silicon")


def onnxruntime_version() -> Optional[str]:
    """The installed ONNX Runtime's version without importing it, or None when it is missing."""
    import importlib.util
    from importlib.metadata import PackageNotFoundError, version

    for name in ORT_DISTRIBUTIONS:
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return "unknown" if importlib.util.find_spec("onnxruntime") is not None else None


class OrtRunner:
    """An ONNX model ready to run: ``run(x)`` with a float32 (N, C, H, W) array returns the list
    of output arrays. ``model``: a path or the serialized model (bytes); ``threads``: intra-op
    threads (the calling thread is one of them)."""

    def __init__(self, model: Union[PathLike, bytes], threads: int = 1):
        import onnxruntime as ort

        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ValueError(f"threads must be an int >= 1, got {threads!r}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: no per-session warnings on stderr
        source = model if isinstance(model, (bytes, bytearray)) else os.fspath(model)
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self.threads = threads
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"expected a model with one input, this one has {len(inputs)}")
        self.input_name = inputs[0].name
        #: the input's dimensions; a str (e.g. ``"N"``) is a symbolic (dynamic) one
        self.input_shape = list(inputs[0].shape)
        self.output_names: List[str] = [o.name for o in self.session.get_outputs()]

    @property
    def dynamic_batch(self) -> bool:
        return not isinstance(self.input_shape[0], int)

    def run(self, x: np.ndarray) -> List[np.ndarray]:
        """Outputs for the (N, C, H, W) batch ``x`` (converted to contiguous float32)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        return self.session.run(self.output_names, {self.input_name: x})
