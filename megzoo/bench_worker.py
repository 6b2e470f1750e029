"""One benchmark configuration in a fresh process: ``python -m megzoo.bench_worker JSON``, or
``python PATH/bench_worker.py JSON`` for a standalone run.

:mod:`megzoo.benchmark` starts one process per configuration, so peak-memory figures do not mix,
and reads the one line ``@@RESULT@@{json}`` it prints. This file imports only the standard library
at the top: a configuration with ``cfg["standalone"]`` (``{"file", "runner", "args"}``) is a
deployment process, started by path, that loads one runtime file (``megzoo/inference/lite.py`` or
``ort.py``) by path and times ``runner(*args).run(x)`` without the megzoo package or MegEngine's
Python runtime (:func:`run_standalone`). The others run as ``-m megzoo.bench_worker`` and import
the package (relatively, as everything inside it does): ``eager`` (``model(x)``, 1 thread,
:func:`run_eager`) and every backend's modes, whose workers the registry holds
(:class:`megzoo.inference.backends.BenchMode`; a backend without modes of its own gets
:func:`run_compiled`). ``benchmarks/torch_worker.py`` (run by a PyTorch Python without megzoo)
loads this file by path for :func:`time_loop` and :func:`measure`, so the two sides are timed by
the same code.

The int8 modes quantize the model first (:func:`quantize_for_bench`: calibrated on
:data:`INT8_CALIBRATION_BATCHES` random batches of the configuration's shape, at most
:data:`INT8_CALIBRATION_BATCH` images each: speed only) and report ``quantize_s`` and ``compile_s``.
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


def time_loop(fn: Callable[[], object], warmup: int, min_repeats: int, max_repeats: int,
              budget_s: float) -> List[float]:
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


def build_model(cfg: Dict, warm=None):
    """``cfg["model"]`` built with random weights, in eval mode; run once eagerly on ``warm[:1]``
    when given (a megzoo user's process has run MegEngine eagerly)."""
    from .registry import get_model

    model = get_model(cfg["model"])
    model.eval()
    if warm is not None:
        import megengine

        model(megengine.tensor(warm[:1])).numpy()
    return model


def quantize_for_bench(model, cfg: Dict, shape, out: Dict):
    """``model`` quantized on random calibration batches of ``shape`` (speed only); sets ``out["quantize_s"]``."""
    import numpy as np

    from .quantization import quantize

    rng = np.random.RandomState(1)
    calib = [rng.standard_normal((min(cfg["batch"], INT8_CALIBRATION_BATCH),) + tuple(shape[1:])).astype(np.float32)
             for _ in range(INT8_CALIBRATION_BATCHES)]
    t0 = time.perf_counter()
    qmodel = quantize(model, calib, progress=False)
    out["quantize_s"] = time.perf_counter() - t0
    return qmodel


def run_eager(cfg: Dict, x, out: Dict):
    """Mode ``eager``: ``model(x)`` on one thread."""
    import megengine

    model = build_model(cfg)
    out["threads"] = 1
    return lambda: model(megengine.tensor(x)).numpy()


def run_standalone(cfg: Dict, x, out: Dict):
    """A runtime file loaded alone by path (``cfg["standalone"]``: ``file``, ``runner``, ``args``)
    running an exported model: ``runner(*args).run(x)``."""
    spec = cfg["standalone"]
    runtime = load_standalone(Path(spec["file"]), "megzoo_standalone_runtime")
    runner = getattr(runtime, spec["runner"])(*spec["args"])
    out["threads"] = cfg["threads"]
    out["megengine_imported"] = "megengine" in sys.modules
    return lambda: runner.run(x)


def run_compiled(cfg: Dict, x, out: Dict, backend: str = ""):
    """A backend's default mode: ``megzoo.compile(model, backend=backend)`` in a megzoo process
    that has run MegEngine eagerly, ``compiled(x)`` timed."""
    from .inference import compile as compile_model

    model = build_model(cfg, warm=x)
    t0 = time.perf_counter()
    compiled = compile_model(model, x.shape, threads=cfg["threads"], backend=backend)
    out.update(compile_s=time.perf_counter() - t0, threads=cfg["threads"])
    return lambda: compiled(x)


def _worker_for(cfg: Dict):
    if "standalone" in cfg:
        return run_standalone
    if cfg["mode"] == "eager":
        return run_eager
    from .inference.backends import bench_modes

    for mode in bench_modes():
        if cfg["mode"] == mode.name and mode.worker is not None:
            return mode.worker
    raise ValueError(f"unknown mode {cfg['mode']!r}")


def run_config(cfg: Dict) -> Dict:
    """Run one configuration (module docstring) in this process and return its result row."""
    import numpy as np

    out = {"model": cfg["model"], "batch": cfg["batch"], "input_size": cfg["input_size"], "mode": cfg["mode"]}
    shape = (cfg["batch"], 3, cfg["input_size"], cfg["input_size"])
    x = np.random.RandomState(0).standard_normal(shape).astype(np.float32)
    fn = _worker_for(cfg)(cfg, x, out)
    if fn is not None:
        out.update(measure(fn, cfg))
    return out


if __name__ == "__main__":
    print(RESULT_MARK + json.dumps(run_config(json.loads(sys.argv[1]))), flush=True)
