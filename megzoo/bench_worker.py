"""One benchmark configuration in a fresh process: ``python -m megzoo.bench_worker JSON``, or
``python PATH/bench_worker.py JSON`` for the ``optimised`` mode.

:mod:`megzoo.benchmark` starts one process per configuration, so peak-memory figures do not mix,
and reads the one line ``@@RESULT@@{json}`` it prints. This file imports only the standard library
at the top: the ``optimised`` mode is a deployment process, started by path, that loads
``megzoo/inference/lite.py`` by path and runs an exported ``.mge`` without the megzoo package or
MegEngine's Python runtime; ``eager`` and ``compile`` run as ``-m megzoo.bench_worker`` and import
the package (relatively, as everything inside it does). ``benchmarks/torch_worker.py``
(run by a PyTorch Python without megzoo) loads this file by path for :func:`time_loop` and
:func:`measure`, so the two sides are timed by the same code.

Modes (``cfg["mode"]``): ``eager`` (``model(x)``, 1 thread), ``compile`` (``megzoo.compile``
with the Lite backend, then the graph exported to ``cfg["mge_path"]``; reports compile times),
``optimised`` (the exported graph run by :class:`~megzoo.inference.lite.LiteRunner`, with the
micro-batch the compile chose), ``onnxruntime`` (``megzoo.compile(backend="onnxruntime")`` in a
megzoo process after one eager forward, as a user's process is; with ``cfg["poller_yields"]``
false the session is called directly, without :func:`megzoo.device.poller_yields`; the graph is
exported to ``cfg["onnx_path"]``) and ``ort_alone`` (that file run by
:class:`~megzoo.inference.ort.OrtRunner` loaded by path: no megzoo package, no MegEngine).
The int8 modes quantize the model first (:func:`megzoo.quantization.quantize`, calibrated on
:data:`INT8_CALIBRATION_BATCHES` random batches of the configuration's shape, at most
:data:`INT8_CALIBRATION_BATCH` images each: speed only) and report ``quantize_s`` and
``compile_s``: ``onnxruntime_int8`` (``megzoo.compile(backend="onnxruntime")`` on the int8 QDQ
graph, exported to ``cfg["onnx_path"]`` when given) and ``lite_int8`` (``megzoo.compile(
backend="lite", layout="nchw")``, MegEngine's int8 kernels being NCHW only; ``compiled(x)`` timed).
"""
import importlib.util
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

RESULT_MARK = "@@RESULT@@"
LITE_PY = Path(__file__).resolve().parent / "inference" / "lite.py"
ORT_PY = Path(__file__).resolve().parent / "inference" / "ort.py"
#: calibration of the int8 modes: this many random batches of at most INT8_CALIBRATION_BATCH images
INT8_CALIBRATION_BATCHES = 2
INT8_CALIBRATION_BATCH = 8


def percentile(values: List[float], q: float) -> float:
    """The ``q`` quantile (0-1) of ``values`` by linear interpolation; NaN for none."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def peak_rss_mib() -> float:
    """This process's peak resident memory (``VmHWM``) in MiB since the last :func:`reset_peak`."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def reset_peak() -> None:
    """Reset the peak-memory mark to the current RSS (Linux ``clear_refs``; no-op elsewhere)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def time_loop(fn: Callable[[], object], warmup: int, min_repeats: int, max_repeats: int, budget_s: float) -> List[float]:
    """Per-call seconds of ``fn()`` after ``warmup`` calls: at least ``min_repeats``, at most
    ``max_repeats``, adding runs while the total stays under ``budget_s``."""
    for _ in range(warmup):
        fn()
    times: List[float] = []
    start = time.perf_counter()
    while len(times) < max_repeats:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= min_repeats and time.perf_counter() - start > budget_s:
            break
    return times


def measure(fn: Callable[[], object], cfg: Dict) -> Dict[str, float]:
    """Time ``fn`` (one batch of ``cfg["batch"]`` images) as ``cfg`` says (``warmup``,
    ``min_repeats``, ``repeats``, ``time_budget``): images/s of the median, p50/p90 latency in ms,
    the number of timed runs and the peak RSS in MiB over the timed part."""
    reset_peak()
    times = time_loop(fn, cfg["warmup"], cfg["min_repeats"], cfg["repeats"], cfg["time_budget"])
    median = percentile(times, 0.5)
    return {"images_per_s": cfg["batch"] / median, "latency_p50_ms": median * 1e3,
            "latency_p90_ms": percentile(times, 0.9) * 1e3, "repeats": len(times), "peak_rss_mib": peak_rss_mib()}


def load_standalone(path: Path = LITE_PY, name: str = "megzoo_lite_standalone"):
    """``megzoo/inference/lite.py`` (or ``ort.py``) loaded by path, alone (no megzoo package, no
    MegEngine Python runtime)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_config(cfg: Dict) -> Dict:
    """Run one configuration (module docstring) in this process and return its result row."""
    import numpy as np

    out = {"model": cfg["model"], "batch": cfg["batch"], "input_size": cfg["input_size"], "mode": cfg["mode"]}
    shape = (cfg["batch"], 3, cfg["input_size"], cfg["input_size"])
    x = np.random.RandomState(0).standard_normal(shape).astype(np.float32)
    mode = cfg["mode"]
    if mode == "eager":
        import megengine

        from .registry import get_model

        model = get_model(cfg["model"])
        model.eval()
        out["threads"] = 1

        def fn():
            model(megengine.tensor(x)).numpy()
    elif mode == "compile":
        from .inference import compile as compile_model
        from .registry import get_model

        model = get_model(cfg["model"])
        model.eval()
        t0 = time.perf_counter()
        compiled = compile_model(model, shape, threads=cfg["threads"], backend="lite", algo=cfg["algo"],
                                  cache_dir=cfg.get("cache_dir"),
                                  layout=cfg.get("layout", "auto"), split_batch=cfg.get("split_batch", True),
                                  profile_batch=cfg.get("profile_batch"), micro_batch=cfg.get("micro_batch", "auto"))
        out["compile_s"] = time.perf_counter() - t0
        info = compiled.compile_log[0]
        out.update(layout=compiled.layout, micro_batch=compiled.micro_batch, trace_dump_s=info.trace_dump_s, load_s=info.load_s,
                   first_run_s=info.first_run_s, algo_cache_existed=info.algo_cache_existed,
                   algo_cache_hit=info.algo_cache_hit,
                   algo_cache_file=str(compiled.algo_cache_file) if compiled.algo_cache_file else None,
                   split_algo_cache_file=str(compiled.split_algo_cache_file) if compiled.split_algo_cache_file else None,
                   peak_rss_mib=peak_rss_mib())
        compiled.export(cfg["mge_path"], shape)
        return out
    elif mode == "optimised":
        lite = load_standalone()
        runner = lite.LiteRunner(cfg["mge_path"], cfg["threads"], cfg["algo"], cfg.get("algo_cache_file"),
                                 cfg.get("profile_batch"), cfg.get("split_batch", True), cfg.get("micro_batch"),
                                 cfg.get("split_algo_cache_file"))
        out["threads"] = cfg["threads"]
        out["megengine_imported"] = "megengine" in sys.modules

        def fn():
            runner.run(x)
    elif mode == "onnxruntime":
        import megengine

        from .device import poller_threads
        from .inference import compile as compile_model
        from .registry import get_model

        model = get_model(cfg["model"])
        model.eval()
        model(megengine.tensor(x[:1])).numpy()  # a megzoo user's process has run MegEngine eagerly
        t0 = time.perf_counter()
        compiled = compile_model(model, shape, threads=cfg["threads"], backend="onnxruntime")
        out.update(compile_s=time.perf_counter() - t0, threads=cfg["threads"], poller_threads=len(poller_threads()),
                   poller_yields=cfg.get("poller_yields", True))
        if cfg.get("onnx_path"):
            compiled.export(cfg["onnx_path"], shape)
        if out["poller_yields"]:
            def fn():
                compiled(x)
        else:
            runner = compiled._runner_for(shape)

            def fn():
                runner.run(x)
    elif mode in ("onnxruntime_int8", "lite_int8"):
        import megengine

        from .inference import compile as compile_model
        from .quantization import quantize
        from .registry import get_model

        model = get_model(cfg["model"])
        model.eval()
        model(megengine.tensor(x[:1])).numpy()  # a megzoo user's process has run MegEngine eagerly
        rng = np.random.RandomState(1)
        calib = [rng.standard_normal((min(cfg["batch"], INT8_CALIBRATION_BATCH),) + shape[1:]).astype(np.float32)
                 for _ in range(INT8_CALIBRATION_BATCHES)]
        t0 = time.perf_counter()
        qmodel = quantize(model, calib, progress=False)
        out["quantize_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if mode == "onnxruntime_int8":
            compiled = compile_model(qmodel, shape, threads=cfg["threads"], backend="onnxruntime")
        else:
            compiled = compile_model(qmodel, shape, threads=cfg["threads"], backend="lite", algo=cfg["algo"],
                                      layout="nchw", cache_dir=cfg.get("cache_dir"),
                                      split_batch=cfg.get("split_batch", True), profile_batch=cfg.get("profile_batch"),
                                      micro_batch=cfg.get("micro_batch", "auto"))
        out.update(compile_s=time.perf_counter() - t0, threads=cfg["threads"], precision=qmodel.precision)
        if mode == "onnxruntime_int8" and cfg.get("onnx_path"):
            compiled.export(cfg["onnx_path"], shape)

        def fn():
            compiled(x)
    elif mode == "ort_alone":
        ort = load_standalone(ORT_PY, "megzoo_ort_standalone")
        runner = ort.OrtRunner(cfg["onnx_path"], cfg["threads"])
        out["threads"] = cfg["threads"]
        out["megengine_imported"] = "megengine" in sys.modules

        def fn():
            runner.run(x)
    else:
        raise ValueError(f"unknown mode {mode!r}")
    out.update(measure(fn, cfg))
    return out


if __name__ == "__main__":
    print(RESULT_MARK + json.dumps(run_config(json.loads(sys.argv[1]))), flush=True)
