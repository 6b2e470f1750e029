"""Inference benchmark harness: eager MegEngine vs megzoo's optimised path, one process per configuration.

:func:`run_benchmark` runs each (model, batch, mode) in a fresh ``megzoo/bench_worker.py``
process (so peak-memory figures do not mix) and returns rows of :data:`RESULT_KEYS`;
:func:`format_table` prints them. ``megzoo benchmark`` and ``benchmarks/bench_inference.py``
(which adds PyTorch in the same run) are both built on it.
"""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

from .bench_worker import RESULT_MARK
from .host import cpu_info
from .inference.layouts import resolve_layout
from .registry import get_model_entry

__all__ = ["RESULT_KEYS", "MODES", "run_benchmark", "format_table", "cpu_peak_gflops", "run_worker", "parse_micro_batch"]

#: keys of one row of ``megzoo benchmark --json`` (documented in docs/performance.md)
RESULT_KEYS = ("model", "batch", "input_size", "threads", "mode", "images_per_s", "latency_p50_ms",
               "latency_p90_ms", "peak_rss_mib", "gmacs", "gflops", "peak_fraction", "repeats", "error")
MODES = ("eager", "optimised")
WORKER = Path(__file__).resolve().parent / "bench_worker.py"


def cpu_peak_gflops(threads: int) -> Dict[str, object]:
    """fp32 peak estimate: cores x FLOP/cycle x clock, with the assumptions spelled out.
    FLOP/cycle: 2 FMA pipes x vector lanes x 2 (AVX-512/AVX2 with FMA: 32 per core; AVX without
    FMA: 16; SSE: 8). Zen 4 runs AVX-512 on two 256-bit pipes, which is also 32."""
    info = cpu_info()
    flags = info["flags"]
    try:
        mhz = float(info["mhz"] or 0)
    except ValueError:
        mhz = 0.0
    try:
        max_khz = float(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text())
        mhz = max(mhz, max_khz / 1000)
    except (OSError, ValueError):
        pass
    if "fma" in flags and ("avx512f" in flags or "avx2" in flags):
        per_cycle, isa = 32, "AVX-512/AVX2 + FMA: 2 FMA units x 8 fp32 lanes x 2"
    elif "avx" in flags:
        per_cycle, isa = 16, "AVX without FMA: 2 units x 8 lanes"
    else:
        per_cycle, isa = 8, "SSE: 2 units x 4 lanes"
    ghz = mhz / 1000 if mhz else 3.0
    return {"cpu": info["model_name"], "cpu_family": info["family"], "cores": threads, "flop_per_cycle": per_cycle,
            "clock_ghz": round(ghz, 3), "isa": isa + ("" if mhz else " (clock unknown, 3 GHz assumed)"),
            "peak_gflops": round(threads * per_cycle * ghz, 1)}


def parse_micro_batch(text: str):
    """A ``--micro-batch`` value: ``"auto"``, ``"none"`` (None: whole shares) or a positive int."""
    text = str(text).strip().lower()
    if text in ("auto", "none"):
        return None if text == "none" else "auto"
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"expected auto, none or a positive integer, got {text!r}")
    return value


def run_worker(cfg: dict, timeout: float) -> dict:
    """Run ``cfg`` in a fresh worker process; its result row, or ``{"error": ...}``."""
    env = dict(os.environ)
    env.setdefault("PYTHONWARNINGS", "ignore")
    # the deployment process runs the file alone; the others import the package
    cmd = [sys.executable, str(WORKER)] if cfg.get("mode") == "optimised" else [sys.executable, "-m", "megzoo.bench_worker"]
    try:
        proc = subprocess.run(cmd + [json.dumps(cfg)], capture_output=True, text=True,
                              timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"worker exited with {proc.returncode}: {tail}"}


def run_benchmark(models: Sequence[str], batches: Sequence[int], *, threads: int, input_size: int = 224,
                  modes: Sequence[str] = MODES, repeats: int = 20, min_repeats: int = 3, warmup: int = 2,
                  time_budget: float = 20.0, algo: str = "profile", layout: str = "auto", cold: bool = False,
                  peak_gflops: Optional[float] = None, timeout: float = 1800, split_batch: bool = True,
                  profile_batch: Optional[int] = None, micro_batch="auto",
                  log: Optional[Callable[[str], None]] = None) -> dict:
    """Run the benchmark; returns ``{"machine": {...}, "results": [row, ...], "compile": [...]}``
    with rows of :data:`RESULT_KEYS`. A ``layout`` that failed its probe on this machine raises
    :class:`~megzoo.inference.LayoutUnavailableError` before anything runs."""

    say = log or (lambda msg: None)
    bad = set(modes) - set(MODES)
    if bad or not modes:
        raise ValueError(f"modes must be some of {MODES}, got {tuple(modes)!r}")
    if "optimised" in modes:
        resolve_layout(layout)
    machine = cpu_peak_gflops(threads)
    if peak_gflops:
        machine["peak_gflops"] = peak_gflops
        machine["isa"] = "given with --peak-gflops"
    machine["load_average"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    results, compiles = [], []
    base = dict(input_size=input_size, threads=threads, algo=algo, layout=layout, repeats=repeats, min_repeats=min_repeats,
                warmup=warmup, time_budget=time_budget, split_batch=split_batch, profile_batch=profile_batch,
                micro_batch=micro_batch)
    with tempfile.TemporaryDirectory(prefix="megzoo-bench-") as tmp:
        for name in models:
            gmacs = get_model_entry(name).gmacs * (input_size / 224) ** 2  # conv MACs scale with the pixel count
            for batch in batches:
                cfg = dict(base, model=name, batch=batch)
                rows = []
                if "eager" in modes:
                    say(f"{name} batch {batch}: eager ...")
                    rows.append({**cfg, "mode": "eager", **run_worker(dict(cfg, mode="eager"), timeout)})
                if "optimised" in modes:
                    rows.append(_optimised_row(cfg, Path(tmp), cold, compiles, timeout, say))
                for row in rows:
                    row.setdefault("error", None)
                    row["gmacs"] = round(gmacs, 3)
                    ips = row.get("images_per_s")
                    if ips:
                        row["gflops"] = gmacs * 2 * ips
                        cores = row.get("threads") or threads
                        row["peak_fraction"] = row["gflops"] / (machine["peak_gflops"] * cores / machine["cores"])
                    results.append({k: row.get(k) for k in RESULT_KEYS})
    return {"machine": machine, "results": results, "compile": compiles}


def _optimised_row(cfg: dict, tmp: Path, cold: bool, compiles: list, timeout: float, say) -> dict:
    """Compile (cold and cached first with ``cold``), export, then time the exported graph."""
    name, batch = cfg["model"], cfg["batch"]
    mge_path = str(tmp / f"{name}-b{batch}.mge")
    if cold:
        cold_dir = str(tmp / f"cold-{name}-{batch}")
        for label in ("first", "cached"):
            say(f"{name} batch {batch}: compile ({label}, cache {cold_dir}) ...")
            r = run_worker(dict(cfg, mode="compile", mge_path=mge_path, cache_dir=cold_dir), timeout)
            compiles.append({**r, "model": name, "batch": batch, "cache": "cached" if r.get("algo_cache_hit") else "first"})
    say(f"{name} batch {batch}: compile ...")
    r = run_worker(dict(cfg, mode="compile", mge_path=mge_path), timeout)
    compiles.append({**r, "model": name, "batch": batch,
                     "cache": ("cached" if r.get("algo_cache_hit") else "first") if cfg["algo"] == "profile" else "none"})
    if "error" in r:
        return {**cfg, "mode": "optimised", "error": r["error"]}
    say(f"{name} batch {batch}: optimised ...")
    return {**cfg, "mode": "optimised", **run_worker(dict(cfg, mode="optimised", mge_path=mge_path,
                                                          algo_cache_file=r.get("algo_cache_file"),
                                                          split_algo_cache_file=r.get("split_algo_cache_file"),
                                                          micro_batch=r.get("micro_batch")), timeout)}


def format_table(report: dict) -> str:
    """The report of :func:`run_benchmark` as a plain-text table (machine line, rows, compile times)."""
    m = report["machine"]
    lines = [f"machine: {m['cpu'] or 'unknown CPU'} (family {m.get('cpu_family') or '?'}), {m['cores']} threads; "
             f"fp32 peak assumed {m['peak_gflops']} GFLOP/s = {m['cores']} cores x {m['flop_per_cycle']} FLOP/cycle x "
             f"{m['clock_ghz']} GHz ({m['isa']}); load average at start {m.get('load_average')}",
             "peak fraction = GMACs x 2 x images/s / peak of the threads used (eager uses 1 thread)",
             f"{'model':<10} {'batch':>5} {'mode':<10} {'thr':>3} {'img/s':>8} {'p50 ms':>9} {'p90 ms':>9} "
             f"{'peak MiB':>9} {'% peak':>7}"]
    for r in report["results"]:
        if r.get("error"):
            lines.append(f"{r['model']:<10} {r['batch']:>5} {r['mode']:<10} error: {r['error']}")
            continue
        lines.append(f"{r['model']:<10} {r['batch']:>5} {r['mode']:<10} {r['threads']:>3} {r['images_per_s']:>8.2f} "
                     f"{r['latency_p50_ms']:>9.1f} {r['latency_p90_ms']:>9.1f} {r['peak_rss_mib']:>9.0f} "
                     f"{100 * r['peak_fraction']:>6.1f}%")
    if report.get("compile"):
        lines.append("compile (trace + optimise + Lite load + first run incl. algorithm profiling):")
        for c in report["compile"]:
            if c.get("error"):
                lines.append(f"  {c['model']} batch {c['batch']}: error: {c['error']}")
            else:
                micro = c.get("micro_batch")
                lines.append(f"  {c['model']:<10} batch {c['batch']:>3}  {c.get('layout', '?'):<6} "
                             f"{'micro-batch ' + str(micro) if micro else 'whole shares'}  {c['cache']:<6} algo cache: "
                             f"{c['compile_s']:.1f} s (trace+dump {c['trace_dump_s']:.1f}, load {c['load_s']:.1f}, "
                             f"first run {c['first_run_s']:.1f}), peak {c.get('peak_rss_mib', 0):.0f} MiB")
    return "\n".join(lines)
