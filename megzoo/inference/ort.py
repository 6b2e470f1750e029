"""The ONNX Runtime runtime: run an ``.onnx`` file (or its bytes) on the CPU.

Contract (tested), as for :mod:`megzoo.inference.lite`: this module imports only the standard
library, numpy and ``onnxruntime``, never another megzoo module, so a deployment process may
load this one file by path and run an exported model with it.

:class:`OrtRunner` is one ``InferenceSession`` with ``threads`` intra-op threads, every graph
optimisation, sequential execution, the CPU execution provider; with ``split_batch``, a second,
single-threaded session runs large batches as ``threads`` parts side by side (ONNX Runtime's
int8 kernels share a batch between threads less well than they run one part per core:
docs/quantization.md).
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
    threads (the calling thread is one of them); ``split_batch``: a batch of at least
    ``2 * threads`` images runs as ``threads`` parts at once, one thread each."""

    def __init__(self, model: Union[PathLike, bytes], threads: int = 1, split_batch: bool = False):
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ValueError(f"threads must be an int >= 1, got {threads!r}")
        source = model if isinstance(model, (bytes, bytearray)) else os.fspath(model)
        self.session = _session(source, threads)
        self.threads = threads
        self._pool = None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"expected a model with one input, this one has {len(inputs)}")
        self.input_name = inputs[0].name
        #: the input's dimensions; a str (e.g. ``"N"``) is a symbolic (dynamic) one
        self.input_shape = list(inputs[0].shape)
        self.output_names: List[str] = [o.name for o in self.session.get_outputs()]
        # a static-batch model runs its one batch size whole: nothing to split
        self._single = _session(source, 1) if split_batch and threads > 1 and self.dynamic_batch else None

    @property
    def dynamic_batch(self) -> bool:
        return not isinstance(self.input_shape[0], int)

    @property
    def split_batch(self) -> bool:
        return self._single is not None

    def run(self, x: np.ndarray) -> List[np.ndarray]:
        """Outputs for the (N, C, H, W) batch ``x`` (converted to contiguous float32)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self._single is None or len(x) < 2 * self.threads:
            return self.session.run(self.output_names, {self.input_name: x})
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="megzoo-ort")
        parts = np.array_split(x, self.threads)
        results = list(self._pool.map(lambda part: self._single.run(self.output_names, {self.input_name: part}), parts))
        return [np.concatenate([r[i] for r in results]) for i in range(len(self.output_names))]

    def close(self) -> None:
        """Stop the split-batch threads (the sessions go with the object)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None


def _session(source, threads: int):
    """An ``InferenceSession`` on the CPU with ``threads`` intra-op threads and every optimisation."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: no per-session warnings on stderr
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
