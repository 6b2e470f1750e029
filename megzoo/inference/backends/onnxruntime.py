"""The ONNX Runtime backend (``"onnxruntime"``): a module converted to ONNX in memory and run by ONNX Runtime,
or an ``.onnx`` file run.

The work is done by :class:`~megzoo.inference.ort_compiled.OrtCompiledModel` (the conversion,
:mod:`~megzoo.inference.graph_onnx`) and the standalone runtime :mod:`megzoo.inference.ort`; this
module says what the backend is: its option (``opset``), its file kind, its precisions (fp32 and
int8: ONNX Runtime has no bf16 convolutions on CPU), its part in ``backend="auto"`` (a graph the
converter refuses goes to the next backend) and its benchmark modes.
"""
from functools import partial
from pathlib import Path
from typing import Any, Dict, Optional

from ..graph_onnx import DEFAULT_OPSET, UnsupportedOperatorError
from ..model_files import ONNX_FILE
from ..ort import onnxruntime_version
from .base import Backend, BenchMode, float32_options

__all__ = ["OnnxRuntimeBackend", "ORT_PY"]

NAME = "onnxruntime"
#: the runtime file a deployment process (and the ``ort_alone`` benchmark mode) loads by path
ORT_PY = Path(__file__).resolve().parents[1] / "ort.py"


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime: every graph optimisation, the CPU execution provider."""

    name = NAME
    file_kinds = (ONNX_FILE,)
    options = {"opset": DEFAULT_OPSET}
    record_tag = "ort"
    precisions = ("fp32", "int8")

    def available(self) -> Optional[str]:
        if onnxruntime_version() is None:
            return ("needs ONNX Runtime, which is not installed: pip install 'onnxruntime>=1.20' (a default "
                    "dependency of megzoo), or use the lite backend")
        return None

    def version(self) -> Optional[str]:
        return onnxruntime_version()

    def compile(self, model, input_shape, threads, options: Dict[str, Any]):
        from ..ort_compiled import OrtCompiledModel

        return OrtCompiledModel(model, input_shape=input_shape, threads=threads, **float32_options(options))

    def load(self, path: Path, threads, options: Dict[str, Any], metadata):
        from ..ort_compiled import OrtCompiledModel

        int8 = bool((metadata or {}).get("int8"))
        compiled = OrtCompiledModel(onnx_file=path, threads=threads, max_shapes=1, split_batch=int8,
                                    **float32_options(options))
        compiled.int8 = int8
        return compiled

    def declines(self):
        return (UnsupportedOperatorError,)

    def refuse_options(self, names, hint: str, running: str) -> str:
        return f"{', '.join(names)} applies to the {NAME} backend only"

    def bench_modes(self):
        return (BenchMode(NAME, "megzoo.compile(backend='onnxruntime') inside a megzoo process that ran MegEngine "
                                "eagerly", worker=_ort_worker, plan=partial(_ort_row, NAME), default=True),
                BenchMode("ort_alone", "the .onnx the onnxruntime mode exports, in a process without megzoo",
                          plan=_alone_row, needs=(NAME,), needs_why="runs the file the onnxruntime mode exports"),
                BenchMode(NAME + "_untamed", "as onnxruntime without keeping MegEngine's poller thread back",
                          worker=_ort_worker, plan=partial(_ort_row, NAME + "_untamed", poller_yields=False)),
                BenchMode(NAME + "_int8", "the model quantized to int8 on random calibration batches, then run by "
                                          "ONNX Runtime", worker=_int8_worker, plan=_int8_row, int8=True))


def _onnx_path(cfg: dict, run, suffix: str = "") -> str:
    return str(run.tmp / f"{cfg['model']}-b{cfg['batch']}{suffix}.onnx")


def _ort_row(mode: str, cfg: dict, run, poller_yields: bool = True) -> dict:
    return run.row(cfg, mode, onnx_path=_onnx_path(cfg, run), poller_yields=poller_yields)


def _alone_row(cfg: dict, run) -> dict:
    standalone = {"file": str(ORT_PY), "runner": "OrtRunner", "args": [_onnx_path(cfg, run), cfg["threads"]]}
    return run.row(cfg, "ort_alone", standalone=standalone)


def _int8_row(cfg: dict, run) -> dict:
    return run.row(cfg, NAME + "_int8", onnx_path=_onnx_path(cfg, run, "-int8"))


def _ort_worker(cfg: dict, x, out: dict):
    """Benchmark worker: compiled in a megzoo process after one eager forward, as a user's process
    is, exported to ``cfg["onnx_path"]``; with ``cfg["poller_yields"]`` false the session is
    called directly, without :func:`megzoo.device.poller_yields`."""
    import time

    from ...bench_worker import build_model
    from ...device import poller_threads
    from . import compile as compile_model

    model = build_model(cfg, warm=x)
    t0 = time.perf_counter()
    compiled = compile_model(model, x.shape, threads=cfg["threads"], backend=NAME)
    out.update(compile_s=time.perf_counter() - t0, threads=cfg["threads"], poller_threads=len(poller_threads()),
               poller_yields=cfg.get("poller_yields", True))
    if cfg.get("onnx_path"):
        compiled.export(cfg["onnx_path"], x.shape)
    if out["poller_yields"]:
        return lambda: compiled(x)
    runner = compiled.runner_for(x.shape)
    return lambda: runner.run(x)


def _int8_worker(cfg: dict, x, out: dict):
    """Benchmark worker: the model quantized, compiled for ONNX Runtime (its QDQ graph), timed."""
    import time

    from ...bench_worker import build_model, quantize_for_bench
    from . import compile as compile_model

    qmodel = quantize_for_bench(build_model(cfg, warm=x), cfg, x.shape, out)
    t0 = time.perf_counter()
    compiled = compile_model(qmodel, x.shape, threads=cfg["threads"], backend=NAME)
    out.update(compile_s=time.perf_counter() - t0, threads=cfg["threads"], precision=qmodel.precision)
    if cfg.get("onnx_path"):
        compiled.export(cfg["onnx_path"], x.shape)
    return lambda: compiled(x)
