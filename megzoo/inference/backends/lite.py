"""The MegEngine Lite backend (``"lite"``): a module traced, optimised and run by Lite, or a ``.mge`` file run.

The work is done by :class:`~megzoo.inference.compiled.LiteCompiledModel` (tracing, layouts,
kernel caches) and the standalone runtime :mod:`megzoo.inference.lite`; this module says what
the backend is: its options, its file kind, its part in ``backend="auto"`` and its benchmark
modes (``lite``, once called ``optimised``: the exported ``.mge`` timed in a process that loads
``lite.py`` alone; ``lite_int8``).
"""
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..layouts import megengine_version, resolve_layout
from ..model_files import MGE_FILE
from .base import Backend, BenchMode, float32_options

__all__ = ["LiteBackend", "LITE_OPTIONS", "LITE_PY"]

NAME = "lite"
#: the Lite-only options of :func:`megzoo.compile` and their defaults (:class:`~megzoo.inference.CompiledModel`)
LITE_OPTIONS = {"layout": "auto", "algo": "profile", "profile_batch": None, "cache_dir": None, "split_batch": True,
                "micro_batch": "auto"}
#: the runtime file a deployment process (and the ``lite`` benchmark mode) loads by path
LITE_PY = Path(__file__).resolve().parents[1] / "lite.py"


class LiteBackend(Backend):
    """MegEngine Lite: runs any MegEngine graph; its kernel choices are profiled and cached."""

    name = NAME
    file_kinds = (MGE_FILE,)
    options = LITE_OPTIONS
    record_tag = "mge"
    precisions = ("fp32", "int8")  # int8: MegEngine's own int8 operators, NCHW

    def version(self) -> Optional[str]:
        return megengine_version()

    def compile(self, model, input_shape, threads, options: Dict[str, Any]):
        from ..compiled import LiteCompiledModel

        return LiteCompiledModel(model, input_shape=input_shape, threads=threads, **float32_options(options))

    def load(self, path: Path, threads, options: Dict[str, Any], metadata):
        from ..compiled import LiteCompiledModel

        return LiteCompiledModel(mge_file=path, threads=threads, max_shapes=1, **float32_options(options))

    def requested_by_environment(self) -> List[str]:
        layout = os.environ.get("MEGZOO_LAYOUT", "").strip().lower()
        return ["MEGZOO_LAYOUT"] if layout not in ("", "auto") else []

    def measure_options(self, tmp_dir: str) -> Dict[str, Any]:
        # the heuristic kernel choice: profiling would take 15-30 s here, for ~10% more speed
        return {"cache_dir": tmp_dir, "algo": "heuristic"}

    def bench_modes(self):
        return (BenchMode(NAME, "the traced, fused graph exported to .mge and run by MegEngine Lite in a process "
                                "without megzoo (was: optimised)", worker=_compile_step, plan=_lite_row,
                          aliases=("optimised",), check=_check_layout, default=True),
                BenchMode(NAME + "_int8", "the model quantized to int8 on random calibration batches, then run by "
                                          "MegEngine Lite (NCHW)", worker=_int8_worker, int8=True))


def _lite_options(cfg: dict, **overrides) -> Dict[str, Any]:
    """The Lite options of a benchmark configuration."""
    options = dict(algo=cfg["algo"], cache_dir=cfg.get("cache_dir"), layout=cfg.get("layout", "auto"),
                   split_batch=cfg.get("split_batch", True), profile_batch=cfg.get("profile_batch"),
                   micro_batch=cfg.get("micro_batch", "auto"))
    options.update(overrides)
    return options


def _check_layout(cfg: dict) -> None:
    resolve_layout(cfg.get("layout", "auto"))  # a layout that failed its probe: refused before anything runs


def _compile_step(cfg: dict, x, out: dict) -> None:
    """Benchmark worker: compile with Lite, report the compile times, export to ``cfg["mge_path"]``."""
    import time

    from ...bench_worker import build_model, peak_rss_mib
    from . import compile as compile_model

    model = build_model(cfg)
    t0 = time.perf_counter()
    compiled = compile_model(model, x.shape, threads=cfg["threads"], backend=NAME, **_lite_options(cfg))
    out["compile_s"] = time.perf_counter() - t0
    info = compiled.compile_log[0]
    out.update(layout=compiled.layout, micro_batch=compiled.micro_batch, trace_dump_s=info.trace_dump_s,
               load_s=info.load_s, first_run_s=info.first_run_s, algo_cache_existed=info.algo_cache_existed,
               algo_cache_hit=info.algo_cache_hit,
               algo_cache_file=str(compiled.algo_cache_file) if compiled.algo_cache_file else None,
               split_algo_cache_file=str(compiled.split_algo_cache_file) if compiled.split_algo_cache_file else None,
               peak_rss_mib=peak_rss_mib())
    compiled.export(cfg["mge_path"], x.shape)
    return None


def _int8_worker(cfg: dict, x, out: dict):
    """Benchmark worker: the model quantized, compiled by Lite (NCHW: MegEngine's int8 kernels), timed."""
    import time

    from ...bench_worker import build_model, quantize_for_bench
    from . import compile as compile_model

    qmodel = quantize_for_bench(build_model(cfg, warm=x), cfg, x.shape, out)
    t0 = time.perf_counter()
    compiled = compile_model(qmodel, x.shape, threads=cfg["threads"], backend=NAME,
                             **_lite_options(cfg, layout="nchw"))
    out.update(compile_s=time.perf_counter() - t0, threads=cfg["threads"], precision=qmodel.precision)
    return lambda: compiled(x)


def _lite_row(cfg: dict, run) -> dict:
    """Compile (cold and cached first with ``run.cold``) and export in a megzoo process, then time
    the exported graph in a process that loads only :data:`LITE_PY`."""
    name, batch = cfg["model"], cfg["batch"]
    mge_path = str(run.tmp / f"{name}-b{batch}.mge")
    step = dict(cfg, mode=NAME, mge_path=mge_path)
    if run.cold:
        cold_dir = str(run.tmp / f"cold-{name}-{batch}")
        for label in ("first", "cached"):
            run.say(f"{name} batch {batch}: compile ({label}, cache {cold_dir}) ...")
            r = run.worker(dict(step, cache_dir=cold_dir))
            run.compiles.append({**r, "model": name, "batch": batch,
                                 "cache": "cached" if r.get("algo_cache_hit") else "first"})
    run.say(f"{name} batch {batch}: compile ...")
    r = run.worker(step)
    cache = ("cached" if r.get("algo_cache_hit") else "first") if cfg["algo"] == "profile" else "none"
    run.compiles.append({**r, "model": name, "batch": batch, "cache": cache})
    if "error" in r:
        return {**cfg, "mode": NAME, "error": r["error"]}
    run.say(f"{name} batch {batch}: {NAME} ...")
    args = [mge_path, cfg["threads"], cfg["algo"], r.get("algo_cache_file"), cfg.get("profile_batch"),
            cfg.get("split_batch", True), r.get("micro_batch"), r.get("split_algo_cache_file")]
    standalone = {"file": str(LITE_PY), "runner": "LiteRunner", "args": args}
    return {**cfg, "mode": NAME, **run.worker(dict(cfg, mode=NAME, standalone=standalone))}
