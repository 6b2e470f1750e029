"""The ONNX Runtime backend of ``megzoo.compile``: a module converted to ONNX in memory, run by ONNX Runtime.

:class:`OrtCompiledModel` traces the module and converts its graph
(:func:`onnx_model`: :mod:`megzoo.inference.graph_onnx`, BatchNorm folded) for each input
(C, H, W) it meets (the batch axis is dynamic), keeps the last ``max_shapes`` sessions, and runs
every call with MegEngine's poller thread out of the way (:func:`megzoo.device.poller_yields`).
It also runs an exported ``.onnx`` (:func:`megzoo.inference.load`). The call contract is
:class:`~megzoo.inference.CompiledModelBase`'s: numpy (N, C, H, W) float32 in, numpy outputs out.
The backend itself: :mod:`megzoo.inference.backends.onnxruntime`.
"""
import os
import time
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..device import poller_yields
from .backends.base import NEW_SIZE_HINT, CompiledModelBase, CompileInfo
from .graph_onnx import DEFAULT_OPSET, check_opset, module_to_onnx
from .ort import OrtRunner
from .threads import require_megengine_thread

__all__ = ["OrtCompiledModel", "onnx_model"]

PathLike = Union[str, "os.PathLike[str]"]


def onnx_model(model, input_shape: Sequence[int], *, opset: int = DEFAULT_OPSET, dynamic_batch: bool = True,
               fuse: bool = True, check: bool = True):
    """``model`` (float32 or int8) as an ``onnx.ModelProto`` for (N, C, H, W) ``input_shape``
    inputs: traced and converted by :mod:`~megzoo.inference.graph_onnx` (an int8 model as QDQ,
    :mod:`~megzoo.inference.graph_onnx.qdq`); ``fuse`` folds BatchNorm into the convolutions. A
    quantizable model not yet quantized is refused (its float form is the float model's)."""
    from ..models.quantizable import QuantizableModel, QuantizationError

    if isinstance(model, QuantizableModel) and model.precision != "int8":
        raise QuantizationError(f"{model.model_name} is in {model.precision} form: export the float model, or "
                                "quantize it first (megzoo.quantization.quantize / convert_qat)")
    return module_to_onnx(model, input_shape, opset=opset, dynamic_batch=dynamic_batch, fold_bn=fuse, check=check)


class OrtCompiledModel(CompiledModelBase):
    """A model compiled for ONNX Runtime; call it with a numpy (N, C, H, W) float32 batch (or a
    megengine Tensor). Give a ``model`` to export (:func:`megzoo.compile` with
    ``backend="onnxruntime"``) or an ``onnx_file`` to run (:func:`megzoo.inference.load`).

    ``threads``: ONNX Runtime intra-op threads (default: the CPUs this process may use);
    ``fuse``: fold BatchNorm into the convolutions (else ``BatchNormalization`` nodes);
    ``dynamic_batch``: one session serves every batch size (else one per full shape);
    ``max_shapes``: sessions kept (least recently used dropped); ``opset``: ONNX opset;
    ``split_batch``: run batches of ``2 * threads`` images or more as ``threads`` single-thread
    parts side by side (default: for int8 models, where it was measured faster; see
    :class:`~megzoo.inference.ort.OrtRunner`).

    Threads: a ``model`` is compiled in the main thread (MegEngine runs there only); calls work
    from any thread, every batch size included; a new (C, H, W) is traced, so its first call
    must come from the main thread (as with Lite)."""

    backend = "onnxruntime"
    file_kind = "onnx"
    run_under_lock = False  # ONNX Runtime sessions may run from several threads at once

    def __init__(self, model=None, *, onnx_file: Optional[PathLike] = None, input_shape: Optional[Sequence[int]] = None,
                 threads: Optional[int] = None, fuse: bool = True, dynamic_batch: bool = True, max_shapes: int = 4,
                 opset: int = DEFAULT_OPSET, split_batch: Optional[bool] = None):
        check_opset(opset)
        self._init_onnx_source(model, onnx_file, "compiling a model for ONNX Runtime (megzoo.compile)",
                               input_shape=input_shape, threads=threads, fuse=fuse, dynamic_batch=dynamic_batch,
                               max_shapes=max_shapes)
        self.opset = opset
        self.split_batch = self.int8 if split_batch is None else bool(split_batch)
        # compile_log's ``trace_dump_s`` is building the ONNX graph, ``load_s`` creating the session
        if self.input_shape is not None:
            self.runner_for(self.input_shape)

    def export(self, path: PathLike, input_shape: Optional[Sequence[int]] = None) -> Path:
        """Write the ONNX graph for ``input_shape`` (default: the compile shape) to ``path``
        (no parity check or metadata: :func:`megzoo.inference.export` does those)."""
        from ..host import atomic_write_bytes

        shape = tuple(input_shape or self.input_shape or ())
        if not shape:
            raise ValueError("export needs an input_shape (none was given to compile)")
        if self.model is None:
            raise ValueError("this model was loaded from an .onnx file; copy that file instead")
        require_megengine_thread("exporting this model", "export it in the main thread")
        proto = onnx_model(self.model, shape, opset=self.opset, dynamic_batch=self.dynamic_batch, fuse=self.fuse)
        atomic_write_bytes(path, proto.SerializeToString())
        return Path(path)

    def __repr__(self) -> str:
        return (f"OrtCompiledModel(threads={self.threads}, opset={self.opset}, int8={self.int8}, "
                f"split_batch={self.split_batch}, shapes={self.cached_shapes})")

    def _dropped(self, runner: OrtRunner) -> None:
        runner.close()

    # --- internals ----------------------------------------------------------------------------
    def _check_call(self, runner: OrtRunner, shape: tuple) -> None:
        self._check_onnx_file_shape(runner, shape)

    def _build(self, shape: tuple) -> OrtRunner:
        t0 = time.perf_counter()
        if self.onnx_file is not None:
            source: Union[bytes, Path] = self.onnx_file
        else:
            require_megengine_thread(f"compiling input size {shape[1:]} for the onnxruntime backend (tracing the "
                                     "model)", NEW_SIZE_HINT)
            proto = onnx_model(self.model, (1,) + shape[1:] if self.dynamic_batch else shape, opset=self.opset,
                               dynamic_batch=self.dynamic_batch, fuse=self.fuse, check=False)
            source = proto.SerializeToString()
        built = time.perf_counter()
        runner = OrtRunner(source, self.threads, split_batch=self.split_batch)
        self._check_onnx_file_shape(runner, shape)
        loaded = time.perf_counter()
        with poller_yields():
            runner.run(np.zeros(shape, dtype=np.float32))  # ONNX Runtime plans its memory at the first run
            if runner.split_batch:  # and the single-thread session its own
                runner.run(np.zeros((2 * self.threads,) + shape[1:], dtype=np.float32))
        ran = time.perf_counter()
        if not self.output_names:
            self.output_names = list(runner.output_names)
        self.compile_log.append(CompileInfo(shape, built - t0, loaded - built, ran - loaded, False, False))
        if self.input_shape is None:
            self.input_shape = shape
        return runner
