"""The OpenVINO backend (``"openvino"``): a module converted to ONNX in memory and run by OpenVINO's CPU plugin,
or an ``.onnx`` file run.

The ONNX graph is megzoo's own (:func:`~megzoo.inference.ort_compiled.onnx_model`: fp32, or QDQ
int8 for a model made by ``megzoo.quantize``), handed to ``openvino.Core().read_model`` as bytes
(no file is written), compiled for ``"CPU"`` with ``INFERENCE_NUM_THREADS`` the compiled model's
``threads`` and ``PERFORMANCE_HINT`` ``LATENCY`` (one stream: the threads work on one batch, as with
the other backends). One compiled model per input (C, H, W), the batch axis dynamic
(:class:`~megzoo.inference.CompiledModelBase`'s cache); once compiled for a shape it runs from any
thread (each concurrent call takes its own infer request).

Precision is never OpenVINO's silent choice: ``INFERENCE_PRECISION_HINT`` is always set, ``f32``
by default (OpenVINO's own default is bf16 on CPUs with BF16). ``precision="bf16"`` (the common
option of :func:`megzoo.compile` and :func:`megzoo.inference.load`; this is the one built-in
backend that runs it) asks for bf16 and is refused, before any work, on a CPU without BF16.

``openvino`` is an optional dependency (``pip install 'megzoo[openvino]'``), imported only when
this backend runs. When installed it is one of ``backend="auto"``'s candidates, measured per
precision beside the others (:mod:`megzoo.inference.backends`).
"""
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from ...device import poller_yields
from ...host import cpu_info
from ..model_files import ONNX_FILE, onnx_header
from ..threads import require_megengine_thread
from .base import NEW_SIZE_HINT, Backend, BenchMode, CompiledModelBase, CompileInfo, check_precision_name

__all__ = ["OpenVinoBackend", "OpenVinoCompiledModel", "OpenVinoRunner", "PRECISION_HINTS", "openvino_version",
           "bf16_supported", "check_precision"]

NAME = "openvino"
#: what ``precision=`` takes -> OpenVINO's ``INFERENCE_PRECISION_HINT``
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}
#: the CPU flags (``/proc/cpuinfo``) of BF16 arithmetic, as the refusal names them
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
INSTALL = "pip install 'megzoo[openvino]'"

_core = None
_core_lock = threading.Lock()


def openvino_version() -> Optional[str]:
    """The installed OpenVINO's version without importing it, or None when it is missing."""
    import importlib.util
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("openvino")
    except PackageNotFoundError:
        return "unknown" if importlib.util.find_spec("openvino") is not None else None


def ov_core():
    """The process's ``openvino.Core`` (made once)."""
    global _core
    with _core_lock:
        if _core is None:
            import openvino

            _core = openvino.Core()
        return _core


def bf16_supported() -> bool:
    """True when OpenVINO's CPU plugin runs bf16 here (its ``OPTIMIZATION_CAPABILITIES`` list BF16)."""
    return "BF16" in ov_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def check_precision(precision) -> None:
    """ValueError (one line, with the fix) for a precision other than :data:`PRECISION_HINTS`'s, or
    bf16 on a CPU without BF16 arithmetic."""
    check_precision_name(precision)
    if precision == "bf16" and not bf16_supported():
        raise ValueError(f"precision='bf16' needs a CPU with BF16 arithmetic ({' or '.join(BF16_FLAGS)}); this "
                         f"CPU ({cpu_info()['model_name']}) has none: use precision='fp32' (the default)")


class OpenVinoRunner:
    """An ONNX model compiled by OpenVINO for the CPU: ``run(x)`` with a float32 (N, C, H, W) array
    returns the list of output arrays. ``model``: the serialized ONNX model (bytes) or a path;
    ``threads``: ``INFERENCE_NUM_THREADS``; ``precision``: a key of :data:`PRECISION_HINTS`. Calls may
    come from several threads at once: each takes an idle infer request (made when none is idle)."""

    def __init__(self, model: Union[bytes, Path], threads: int, precision: str = "fp32"):
        core = ov_core()
        ov_model = core.read_model(bytes(model) if isinstance(model, (bytes, bytearray)) else str(model))
        if len(ov_model.inputs) != 1:
            raise ValueError(f"expected a model with one input, this one has {len(ov_model.inputs)}")
        shape = ov_model.inputs[0].get_partial_shape()
        #: the input's dimensions; a str (``"N"``) is a dynamic one
        self.input_shape: List[Union[int, str]] = [d.get_length() if d.is_static else "N" for d in shape]
        self.threads = threads
        self.precision = precision
        #: the ``openvino.CompiledModel`` (its ``get_property`` reads back what OpenVINO runs with)
        self.compiled_model = core.compile_model(ov_model, "CPU", {
            "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision]})
        self._outputs = list(self.compiled_model.outputs)
        self._idle: list = []
        self._lock = threading.Lock()

    def run(self, x: np.ndarray) -> List[np.ndarray]:
        """Outputs for the (N, C, H, W) batch ``x`` (converted to contiguous float32)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        with self._lock:
            request = self._idle.pop() if self._idle else None
        if request is None:
            request = self.compiled_model.create_infer_request()
        try:
            result = request.infer({0: x}, share_inputs=True, share_outputs=False)  # outputs are copies
            return [result[o] for o in self._outputs]
        finally:
            with self._lock:
                self._idle.append(request)


class OpenVinoCompiledModel(CompiledModelBase):
    """A model compiled by OpenVINO; call it with a numpy (N, C, H, W) float32 batch (or a megengine
    Tensor). Give a ``model`` to convert (:func:`megzoo.compile` with ``backend="openvino"``) or an
    ``onnx_file`` to run (:func:`megzoo.inference.load` with ``backend="openvino"``).

    ``threads``: OpenVINO's ``INFERENCE_NUM_THREADS`` (default: the CPUs this process may use);
    ``precision``: ``"fp32"`` (default) or ``"bf16"`` (CPUs with BF16 only); ``fuse``,
    ``dynamic_batch``, ``max_shapes`` as for the other backends. Threads: a ``model`` is compiled
    in the main thread; calls work from any thread; a new (C, H, W) is traced, so its first call
    must come from the main thread."""

    backend = NAME
    file_kind = "onnx"
    run_under_lock = False  # each concurrent call has its own infer request

    def __init__(self, model=None, *, onnx_file=None, input_shape: Optional[Sequence[int]] = None,
                 threads: Optional[int] = None, fuse: bool = True, dynamic_batch: bool = True, max_shapes: int = 4,
                 precision: str = "fp32"):
        check_precision(precision)
        self._init_onnx_source(model, onnx_file, "compiling a model for OpenVINO (megzoo.compile)",
                               input_shape=input_shape, threads=threads, fuse=fuse, dynamic_batch=dynamic_batch,
                               max_shapes=max_shapes)
        self.precision = precision
        if self.input_shape is not None:
            self.runner_for(self.input_shape)

    def __repr__(self) -> str:
        return (f"OpenVinoCompiledModel(threads={self.threads}, precision={self.precision!r}, int8={self.int8}, "
                f"shapes={self.cached_shapes})")

    def _check_call(self, runner: OpenVinoRunner, shape: tuple) -> None:
        self._check_onnx_file_shape(runner, shape)

    def _build(self, shape: tuple) -> OpenVinoRunner:
        t0 = time.perf_counter()
        if self.onnx_file is not None:
            source: Union[bytes, Path] = self.onnx_file
            names = None
        else:
            from ..ort_compiled import onnx_model

            require_megengine_thread(f"compiling input size {shape[1:]} for the {NAME} backend (tracing the model)",
                                     NEW_SIZE_HINT)
            proto = onnx_model(self.model, (1,) + shape[1:] if self.dynamic_batch else shape,
                               dynamic_batch=self.dynamic_batch, fuse=self.fuse, check=False)
            names = [o.name for o in proto.graph.output]
            source = proto.SerializeToString()
        built = time.perf_counter()
        runner = OpenVinoRunner(source, self.threads, self.precision)
        self._check_onnx_file_shape(runner, shape)
        loaded = time.perf_counter()
        with poller_yields():
            runner.run(np.zeros(shape, dtype=np.float32))  # the first inference allocates its buffers
        ran = time.perf_counter()
        if not self.output_names:  # OpenVINO gives each output several names: the file's own are the graph's
            self.output_names = names or _graph_output_names(self.onnx_file)
        self.compile_log.append(CompileInfo(shape, built - t0, loaded - built, ran - loaded, False, False))
        if self.input_shape is None:
            self.input_shape = shape
        return runner


def _graph_output_names(path: Path) -> List[str]:
    """The output names of the ONNX graph in ``path``."""
    return [o.name for o in onnx_header(path).graph.output]


class OpenVinoBackend(Backend):
    """OpenVINO's CPU plugin: fp32 (default) or bf16, and megzoo's QDQ int8 graphs as they are."""

    name = NAME
    file_kinds = ()  # .onnx files are ONNX Runtime's by default ...
    also_loads = (ONNX_FILE,)  # ... and OpenVINO's too (load's auto measures which runs them faster)
    precisions = ("fp32", "bf16", "int8")
    record_tag = "ov"

    def available(self) -> Optional[str]:
        if openvino_version() is None:
            return f"needs OpenVINO, which is not installed: {INSTALL}"
        return None

    def version(self) -> Optional[str]:
        return openvino_version()

    def precision_unavailable(self, precision: str) -> Optional[str]:
        if precision != "bf16":
            return None
        try:
            check_precision(precision)
        except ValueError as exc:
            return str(exc)
        return None

    def compile(self, model, input_shape, threads, options: Dict[str, Any]):
        return OpenVinoCompiledModel(model, input_shape=input_shape, threads=threads, **options)

    def load(self, path: Path, threads, options: Dict[str, Any], metadata):
        compiled = OpenVinoCompiledModel(onnx_file=path, threads=threads, max_shapes=1, **options)
        compiled.int8 = bool((metadata or {}).get("int8"))
        return compiled

    def declines(self):
        from ..graph_onnx import UnsupportedOperatorError

        return (UnsupportedOperatorError,)  # megzoo's converter refused the graph: auto tries the next backend

    def bench_modes(self):
        return super().bench_modes() + (
            BenchMode(NAME + "_bf16", "megzoo.compile(backend='openvino', precision='bf16'): the float model in "
                                      "bf16 (CPUs with BF16 only)", worker=_bf16_worker, precision="bf16"),
            BenchMode(NAME + "_int8", "the model quantized to int8 on random calibration batches, then run by "
                                      "OpenVINO (its QDQ graph)", worker=_int8_worker, int8=True))


def _bf16_worker(cfg: dict, x, out: dict):
    """Benchmark worker: the float model compiled for OpenVINO in bf16, timed (refused without BF16)."""
    from ...bench_worker import build_model
    from . import compile as compile_model

    model = build_model(cfg, warm=x)
    t0 = time.perf_counter()
    compiled = compile_model(model, x.shape, threads=cfg["threads"], backend=NAME, precision="bf16")
    out.update(compile_s=time.perf_counter() - t0, threads=cfg["threads"], precision="bf16")
    return lambda: compiled(x)


def _int8_worker(cfg: dict, x, out: dict):
    """Benchmark worker: the model quantized, compiled for OpenVINO (megzoo's QDQ graph), timed."""
    from ...bench_worker import build_model, quantize_for_bench
    from . import compile as compile_model

    qmodel = quantize_for_bench(build_model(cfg, warm=x), cfg, x.shape, out)
    t0 = time.perf_counter()
    compiled = compile_model(qmodel, x.shape, threads=cfg["threads"], backend=NAME)
    out.update(compile_s=time.perf_counter() - t0, threads=cfg["threads"], precision=qmodel.precision)
    return lambda: compiled(x)
