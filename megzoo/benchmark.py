"""Inference benchmark harness: eager MegEngine vs megzoo's compiled backends, one process per configuration.

:func:`run_benchmark` runs each (model, batch, mode) in a fresh ``megzoo/bench_worker.py``
process (so peak-memory figures do not mix) and returns rows of :data:`RESULT_KEYS`;
:func:`format_table` prints them. ``megzoo benchmark`` and ``benchmarks/bench_inference.py``
(which adds PyTorch in the same run) are both built on it. The modes are ``eager`` and those the
registered backends contribute (:func:`modes`; :class:`megzoo.inference.backends.BenchMode`).
"""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .bench_worker import RESULT_MARK
from .host import cpu_info
from .inference.backends import BenchMode, bench_modes
from .inference.backends.registry import NameView
from .registry import get_model_entry

__all__ = ["RESULT_KEYS", "MODES", "DEFAULT_MODES", "modes", "mode_name", "modes_help", "run_benchmark",
           "format_table", "cpu_peak_gflops", "measure_fma_peak", "measure_int8_peak", "run_worker",
           "parse_micro_batch", "BenchRun"]

#: keys of one row of ``megzoo benchmark --json`` (documented in docs/performance.md)
RESULT_KEYS = ("model", "batch", "input_size", "threads", "mode", "images_per_s", "latency_p50_ms",
               "latency_p90_ms", "peak_rss_mib", "gmacs", "gflops", "peak_fraction", "int8_fraction", "repeats",
               "error")
#: ``eager``: the model called eagerly (1 thread), the baseline every backend's modes are set against
EAGER = BenchMode("eager", "the model called eagerly by MegEngine (1 thread)", default=True)


def modes() -> Tuple[str, ...]:
    """Every mode: ``eager`` and the registered backends' (``megzoo benchmark --modes``)."""
    return tuple(m.name for m in _all_modes())


def _all_modes() -> List[BenchMode]:
    return [EAGER] + bench_modes()


def mode_name(name: str) -> str:
    """The current name of the mode ``name`` (an old alias such as ``optimised`` -> ``lite``),
    for reading rows written before a rename; ``name`` itself when it is no alias."""
    return next((m.name for m in _all_modes() if name in m.aliases), name)


def modes_help() -> str:
    """One line per mode: its name and what it runs."""
    return "\n".join(f"{m.name}: {m.help}" for m in _all_modes())


#: the modes (:func:`modes`; follows backend registrations)
MODES = NameView(modes)
#: the modes ``run_benchmark`` runs unless told: eager and each backend's main one
DEFAULT_MODES = NameView(lambda: tuple(m.name for m in _all_modes() if m.default))
#: the modes that quantize the model first
INT8_MODES = NameView(lambda: tuple(m.name for m in _all_modes() if m.int8))
WORKER = Path(__file__).resolve().parent / "bench_worker.py"


def cpu_peak_gflops(threads: int) -> Dict[str, object]:
    """fp32 peak estimate (the fallback of :func:`measure_fma_peak`): cores x FLOP/cycle x clock,
    with the assumptions spelled out. FLOP/cycle: 2 FMA pipes x vector lanes x 2 (AVX-512 with
    FMA: 64 per core, but 32 on Zen 4, which runs AVX-512 on two 256-bit pipes; AVX2 with FMA:
    32; AVX without FMA: 16; SSE: 8)."""
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
    zen4 = info.get("vendor") == "AuthenticAMD" and str(info.get("family")) == "25"
    if "fma" in flags and "avx512f" in flags and not zen4:
        per_cycle, isa = 64, "AVX-512 + FMA: 2 FMA units x 16 fp32 lanes x 2"
    elif "fma" in flags and ("avx512f" in flags or "avx2" in flags):
        per_cycle, isa = 32, "AVX2 (or Zen 4's double-pumped AVX-512) + FMA: 2 FMA units x 8 fp32 lanes x 2"
    elif "avx" in flags:
        per_cycle, isa = 16, "AVX without FMA: 2 units x 8 lanes"
    else:
        per_cycle, isa = 8, "SSE: 2 units x 4 lanes"
    ghz = mhz / 1000 if mhz else 3.0
    return {"cpu": info["model_name"], "cpu_family": info["family"], "cores": threads, "flop_per_cycle": per_cycle,
            "clock_ghz": round(ghz, 3), "isa": isa + ("" if mhz else " (clock unknown, 3 GHz assumed)"),
            "peak_gflops": round(threads * per_cycle * ghz, 1)}


#: the ``main`` the C loops share: ``argv[1]`` threads each run ``work`` for ``argv[2]`` iterations,
#: timed by the wall clock; the loop defines ``iters``, ``work``, ``RESULT_T`` and ``REPORT``
C_THREADS_MAIN = r"""
int main(int argc, char **argv) {
    int threads = atoi(argv[1]);
    iters = atol(argv[2]);
    pthread_t *t = malloc(sizeof(pthread_t) * threads);
    RESULT_T *out = malloc(sizeof(RESULT_T) * threads);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, work, &out[i]);
    for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    REPORT((t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec), out[0]);
    return 0;
}
"""


#: a register-resident FMA loop: ``threads`` threads x 12 independent vector accumulators, the
#: widest fp32 FMA the compiler targets (``-march=native``); prints GFLOP/s
FMA_LOOP_C = r"""
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#if defined(__AVX512F__)
typedef __m512 vec;
#define LANES 16
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define ADD _mm512_add_ps
#define SUM(v) _mm512_reduce_add_ps(v)
#elif defined(__FMA__)
typedef __m256 vec;
#define LANES 8
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define ADD _mm256_add_ps
static float SUM(__m256 v) { float f[8]; _mm256_storeu_ps(f, v); return f[0]+f[1]+f[2]+f[3]+f[4]+f[5]+f[6]+f[7]; }
#else
#error "no FMA instructions"
#endif
static long iters;
static void *work(void *out) {
    vec b = SET1(0.9999999f), c = SET1(1e-7f);
    vec a0 = SET1(1.0f), a1 = SET1(1.1f), a2 = SET1(1.2f), a3 = SET1(1.3f), a4 = SET1(1.4f), a5 = SET1(1.5f);
    vec a6 = SET1(1.6f), a7 = SET1(1.7f), a8 = SET1(1.8f), a9 = SET1(1.9f), a10 = SET1(2.0f), a11 = SET1(2.1f);
    for (long i = 0; i < iters; i++) {
        a0 = FMA(a0, b, c); a1 = FMA(a1, b, c); a2 = FMA(a2, b, c); a3 = FMA(a3, b, c);
        a4 = FMA(a4, b, c); a5 = FMA(a5, b, c); a6 = FMA(a6, b, c); a7 = FMA(a7, b, c);
        a8 = FMA(a8, b, c); a9 = FMA(a9, b, c); a10 = FMA(a10, b, c); a11 = FMA(a11, b, c);
    }
    vec s = ADD(ADD(ADD(a0, a1), ADD(a2, a3)), ADD(ADD(a4, a5), ADD(a6, a7)));
    s = ADD(s, ADD(ADD(a8, a9), ADD(a10, a11)));
    *(float *)out = SUM(s);
    return NULL;
}
#define RESULT_T float
#define REPORT(seconds, first) \
    printf("%.1f %d %g\n", 2.0 * 12 * LANES * iters * threads / (seconds) / 1e9, LANES, first)
""" + C_THREADS_MAIN


def measure_fma_peak(threads: int, repeats: int = 5, compiler: Optional[str] = None) -> Dict[str, object]:
    """The machine's fp32 limit measured now: :data:`FMA_LOOP_C` compiled with ``cc``/``gcc``
    (``-O2 -march=native -pthread``) and run ``repeats`` times on ``threads`` threads (about 0.5 s
    each, at ~2 cores of AVX-512). ``{"gflops": best, "runs": [...], "lanes": vector width, "how": ...}``, or
    ``{"gflops": None, "error": ...}`` without a C compiler."""
    try:  # about 0.5 s per run at 2 x 230 GFLOP/s
        runs, (lanes, _) = _run_c_loop(FMA_LOOP_C, "FMA", threads, 300_000_000, repeats, compiler)
    except _LoopError as exc:
        return {"gflops": None, "error": str(exc)}
    return {"gflops": max(runs), "runs": runs, "lanes": int(lanes), "threads": threads,
            "how": f"{threads} threads x 12 independent {32 * int(lanes)}-bit FMA chains, best of {repeats}"}


#: a register-resident int8 multiply-accumulate loop: ``threads`` threads x 12 independent s32
#: accumulators, each step the instructions int8 kernels (oneDNN, MLAS, OpenVINO) use on this CPU
#: (``-march=native``): ``vpdpbusd`` (u8 x s8 -> s32, 4 MACs per 32-bit lane) with AVX512-VNNI or
#: AVX-VNNI, else ``vpmaddubsw`` (u8 x s8 -> s16 pairs) + ``vpmaddwd`` by ones (-> s32) + ``vpaddd``,
#: 1 MAC per byte per step; prints G MAC/s, a checksum and the instruction. Each step is one asm
#: statement that updates its accumulator (so it is neither hoisted nor dropped): GCC 12's
#: intrinsics add register copies to ``vpdpbusd`` and spill accumulators on 16 ymm registers.
INT8_LOOP_C = r"""
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#if defined(__AVX512VNNI__)
typedef __m512i vec;
#define BYTES 64
#define NAME "vpdpbusd zmm"
#define CHAIN(acc) __asm__("vpdpbusd %[w], %[x], %[a]" : [a] "+v"(acc) : [x] "v"(x), [w] "v"(w))
#elif defined(__AVXVNNI__)
typedef __m256i vec;
#define BYTES 32
#define NAME "vpdpbusd ymm (AVX-VNNI)"
#define CHAIN(acc) __asm__("%{vex%} vpdpbusd %[w], %[x], %[a]" : [a] "+x"(acc) : [x] "x"(x), [w] "x"(w))
#elif defined(__AVX512BW__) || defined(__AVX2__)
#if defined(__AVX512BW__)
typedef __m512i vec;
#define BYTES 64
#define NAME "vpmaddubsw+vpmaddwd zmm"
#else
typedef __m256i vec;
#define BYTES 32
#define NAME "vpmaddubsw+vpmaddwd ymm"
#endif
#define CHAIN(acc) __asm__("vpmaddubsw %[w], %[x], %[t]\n\tvpmaddwd %[one], %[t], %[t]\n\tvpaddd %[t], %[a], %[a]" \
                           : [a] "+v"(acc), [t] "=&v"(t) : [x] "v"(x), [w] "v"(w), [one] "v"(one))
#else
#error "no AVX2 int8 instructions"
#endif
#if BYTES == 64
#define SET1 _mm512_set1_epi32
#define ADD _mm512_add_epi32
#define SUM(v) _mm512_reduce_add_epi32(v)
#else
#define SET1 _mm256_set1_epi32
#define ADD _mm256_add_epi32
static int SUM(__m256i v) { int s[8]; _mm256_storeu_si256((__m256i *)s, v);
    return s[0]+s[1]+s[2]+s[3]+s[4]+s[5]+s[6]+s[7]; }
#endif
static long iters;
static void *work(void *out) {
    vec x = SET1(0x7F017F01), w = SET1(0x01FF02FE), one = SET1(0x00010001), t;
    vec a0 = SET1(1), a1 = SET1(2), a2 = SET1(3), a3 = SET1(4), a4 = SET1(5), a5 = SET1(6);
    vec a6 = SET1(7), a7 = SET1(8), a8 = SET1(9), a9 = SET1(10), a10 = SET1(11), a11 = SET1(12);
    (void)one; (void)t;
    for (long i = 0; i < iters; i++) {
        CHAIN(a0); CHAIN(a1); CHAIN(a2); CHAIN(a3); CHAIN(a4); CHAIN(a5);
        CHAIN(a6); CHAIN(a7); CHAIN(a8); CHAIN(a9); CHAIN(a10); CHAIN(a11);
    }
    vec s = ADD(ADD(ADD(a0, a1), ADD(a2, a3)), ADD(ADD(a4, a5), ADD(a6, a7)));
    s = ADD(s, ADD(ADD(a8, a9), ADD(a10, a11)));
    *(int *)out = SUM(s);
    return NULL;
}
#define RESULT_T int
#define REPORT(seconds, first) printf("%.1f %d %s\n", 12.0 * BYTES * iters * threads / (seconds) / 1e9, first, NAME)
""" + C_THREADS_MAIN


def measure_int8_peak(threads: int, repeats: int = 5, compiler: Optional[str] = None,
                      iters: int = 150_000_000) -> Dict[str, object]:
    """The machine's int8 limit measured now: :data:`INT8_LOOP_C` compiled as :func:`measure_fma_peak`
    compiles its loop, run ``repeats`` times on ``threads`` threads x ``iters`` iterations (about
    0.7 s each on 2 Zen 3 cores). ``{"gmacs": best G int8 MAC/s, "runs": [...], "instruction": ...,
    "threads": n, "how": ...}``, or ``{"gmacs": None, "error": ...}`` without a C compiler."""
    try:
        runs, (_, instruction) = _run_c_loop(INT8_LOOP_C, "int8", threads, iters, repeats, compiler)
    except _LoopError as exc:
        return {"gmacs": None, "error": str(exc)}
    return {"gmacs": max(runs), "runs": runs, "instruction": instruction, "threads": threads,
            "how": f"{threads} threads x 12 independent {instruction} accumulator chains, best of {repeats}"}


class _LoopError(RuntimeError):
    """A limit loop could not be compiled or run (its message says why)."""


def _run_c_loop(source: str, label: str, threads: int, iters: int, repeats: int,
                compiler: Optional[str]) -> Tuple[List[float], List[str]]:
    """Compile ``source`` with ``compiler`` (default ``cc``, else ``gcc``; ``-O2 -march=native -pthread``)
    and run it ``repeats`` times as ``loop THREADS ITERS``; each run prints ``RATE FIELD FIELD`` (the
    last field may hold spaces). Returns the rates and the last run's two fields; :class:`_LoopError`
    when there is no compiler or it or the loop fails; ValueError for ``threads``, ``iters`` or ``repeats`` below 1."""
    import shutil

    if not all(isinstance(n, int) and n >= 1 for n in (threads, iters, repeats)):
        raise ValueError(f"threads, iters and repeats must be integers of at least 1, got threads={threads!r}, "
                         f"iters={iters!r}, repeats={repeats!r}")
    cc = compiler or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise _LoopError("no C compiler (cc or gcc) on PATH")
    with tempfile.TemporaryDirectory(prefix=f"megzoo-{label.lower()}-") as tmp:
        src, exe = Path(tmp) / "loop.c", Path(tmp) / "loop"
        src.write_text(source)
        try:
            build = subprocess.run([cc, "-O2", "-march=native", "-pthread", str(src), "-o", str(exe)],
                                   capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as exc:
            raise _LoopError(f"cannot run {cc}: {exc}") from None
        if build.returncode != 0:
            raise _LoopError(f"{cc} failed: {(build.stderr.strip().splitlines() or [''])[-1][:200]}")
        runs, fields = [], []
        for _ in range(repeats):
            try:
                out = subprocess.run([str(exe), str(threads), str(iters)], capture_output=True, text=True, timeout=120)
                parts = out.stdout.split(None, 2)
                if out.returncode != 0 or len(parts) != 3:
                    raise ValueError(f"exit status {out.returncode}, printed {out.stdout.strip()!r}")
                runs.append(float(parts[0]))
                fields = parts[1:]
            except (subprocess.SubprocessError, OSError, ValueError) as exc:
                raise _LoopError(f"the {label} loop failed: {exc}") from None
    return runs, [f.strip() for f in fields]


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
    alone = "standalone" in cfg
    cmd = [sys.executable, str(WORKER)] if alone else [sys.executable, "-m", "megzoo.bench_worker"]
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


@dataclass
class BenchRun:
    """What a mode's ``plan`` (:class:`~megzoo.inference.backends.BenchMode`) works with: a scratch
    folder shared by the modes of one run, the ``cold`` flag, the list of compile reports,
    ``timeout`` per worker and ``say`` for progress."""

    tmp: Path
    cold: bool = False
    timeout: float = 1800
    say: Callable[[str], None] = print
    compiles: list = field(default_factory=list)

    def worker(self, cfg: dict) -> dict:
        """Run ``cfg`` in a fresh worker process (:func:`run_worker`)."""
        return run_worker(cfg, self.timeout)

    def row(self, cfg: dict, mode: str, **extra) -> dict:
        """The row of ``mode``: one worker run of ``cfg`` with ``extra`` keys."""
        self.say(f"{cfg['model']} batch {cfg['batch']}: {mode} ...")
        return {**cfg, **self.worker(dict(cfg, mode=mode, **extra)), "mode": mode}


def _chosen_modes(asked: Sequence[str]) -> List[BenchMode]:
    """The modes asked for (aliases taken), each after the modes it needs; ValueError otherwise."""
    known = {m.name: m for m in _all_modes()}
    names = [mode_name(m) for m in asked]
    bad = [m for m in names if m not in known]
    if bad or not names:
        raise ValueError(f"modes must be some of {MODES}, got {tuple(asked)!r}")
    chosen: List[BenchMode] = []
    for name in dict.fromkeys(names):
        mode = known[name]
        missing = [n for n in mode.needs if n not in names]
        if missing:
            raise ValueError(f"{name} {mode.needs_why}: add {', '.join(missing)} to the modes")
        chosen.append(mode)
    order = {m.name: i for i, m in enumerate(chosen)}  # a needed mode runs first
    return sorted(chosen, key=lambda m: max([order[m.name]] + [order[n] + 0.5 for n in m.needs]))


def _measured_machine(threads: int, peak_gflops: Optional[float], measure_peak: bool) -> dict:
    """The machine record: the peak estimate, replaced by ``peak_gflops`` or the FMA loop's figure, and
    with ``measure_peak`` the int8 limit (``int8_peak_gmacs``, None when not measured or failed)."""
    machine = cpu_peak_gflops(threads)
    if peak_gflops:
        machine["peak_gflops"] = peak_gflops
        machine["isa"] = "given with --peak-gflops"
    elif measure_peak:  # the physical limit, measured now, instead of the estimate
        fma = measure_fma_peak(threads)
        machine["fma_loop"] = fma
        if fma.get("gflops"):
            machine["estimated_peak_gflops"] = machine["peak_gflops"]
            machine["peak_gflops"] = fma["gflops"]
            machine["isa"] = f"measured: {fma['how']}"
            machine["flop_per_cycle"] = None
    machine["int8_peak_gmacs"] = None
    if measure_peak:  # no option gives the int8 limit, so it is measured even with peak_gflops
        machine["int8_loop"] = measure_int8_peak(threads)
        machine["int8_peak_gmacs"] = machine["int8_loop"].get("gmacs")
    machine["load_average"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return machine


def _mode_row(mode: BenchMode, cfg: dict, run: BenchRun) -> dict:
    """The row of ``mode`` for ``cfg``: its own plan, else one worker run."""
    return mode.plan(cfg, run) if mode.plan is not None else run.row(cfg, mode.name)


def limit_fraction(gmacs: float, images_per_s: float, limit: float, threads: int, limit_threads: int) -> float:
    """The share of a measured limit a row reached: ``gmacs`` x ``images_per_s`` (G MAC/s) over
    ``limit`` (G MAC/s on ``limit_threads`` threads) scaled to the row's ``threads``. With the
    int8 limit: the rows' ``int8_fraction``."""
    return gmacs * images_per_s / (limit * threads / limit_threads)


def _finish_row(row: dict, gmacs: float, machine: dict, threads: int) -> dict:
    """``row`` with its error, GMACs, GFLOP/s, peak fraction (of the fp32 limit) and, in an int8 mode
    (:data:`INT8_MODES`), int8 fraction (MAC/s of the int8 limit), reduced to :data:`RESULT_KEYS`."""
    row.setdefault("error", None)
    row["gmacs"] = round(gmacs, 3)
    ips = row.get("images_per_s")
    if ips:
        row["gflops"] = gmacs * 2 * ips
        cores = row.get("threads") or threads  # of the machine["cores"] threads the limits were measured on
        row["peak_fraction"] = row["gflops"] / (machine["peak_gflops"] * cores / machine["cores"])
        if machine.get("int8_peak_gmacs") and row.get("mode") in INT8_MODES:
            row["int8_fraction"] = limit_fraction(gmacs, ips, machine["int8_peak_gmacs"], cores, machine["cores"])
    return {k: row.get(k) for k in RESULT_KEYS}


def run_benchmark(models: Sequence[str], batches: Sequence[int], *, threads: int, input_size: int = 224,
                  modes: Sequence[str] = DEFAULT_MODES, repeats: int = 20, min_repeats: int = 3, warmup: int = 2,
                  time_budget: float = 20.0, algo: str = "profile", layout: str = "auto", cold: bool = False,
                  peak_gflops: Optional[float] = None, timeout: float = 1800, split_batch: bool = True,
                  profile_batch: Optional[int] = None, micro_batch="auto", measure_peak: bool = True,
                  log: Optional[Callable[[str], None]] = None) -> dict:
    """Run the benchmark; returns ``{"machine": {...}, "results": [row, ...], "compile": [...],
    "int8": [...]}`` with rows of :data:`RESULT_KEYS` in the order of ``modes`` (a mode after those
    it needs; ``int8``: the quantize and compile seconds of each int8 row). A configuration a mode
    refuses (e.g. a ``layout`` that failed its probe on this machine:
    :class:`~megzoo.inference.LayoutUnavailableError`) raises before anything runs."""
    chosen = _chosen_modes(modes)
    base = dict(input_size=input_size, threads=threads, algo=algo, layout=layout, repeats=repeats,
                min_repeats=min_repeats, warmup=warmup, time_budget=time_budget, split_batch=split_batch,
                profile_batch=profile_batch, micro_batch=micro_batch)
    for mode in chosen:
        if mode.check is not None:
            mode.check(base)
    machine = _measured_machine(threads, peak_gflops, measure_peak)
    results, int8 = [], []
    with tempfile.TemporaryDirectory(prefix="megzoo-bench-") as tmp:
        run = BenchRun(Path(tmp), cold=cold, timeout=timeout, say=log or (lambda msg: None))
        for name in models:
            gmacs = get_model_entry(name).gmacs * (input_size / 224) ** 2  # conv MACs scale with the pixel count
            for batch in batches:
                cfg = dict(base, model=name, batch=batch)
                for mode in chosen:
                    row = _mode_row(mode, cfg, run)
                    if mode.int8:
                        int8.append({"model": name, "batch": batch, "mode": mode.name, "error": row.get("error"),
                                     **{k: row.get(k) for k in ("precision", "quantize_s", "compile_s")}})
                    results.append(_finish_row(row, gmacs, machine, threads))
    return {"machine": machine, "results": results, "compile": run.compiles, "int8": int8}


def format_table(report: dict) -> str:
    """The report of :func:`run_benchmark` as a plain-text table (machine line, rows, compile times)."""
    m = report["machine"]
    if m.get("flop_per_cycle"):
        peak = (f"fp32 peak assumed {m['peak_gflops']} GFLOP/s = {m['cores']} cores x {m['flop_per_cycle']} "
                f"FLOP/cycle x "
                f"{m['clock_ghz']} GHz ({m['isa']})")
    else:
        peak = f"fp32 limit {m['peak_gflops']} GFLOP/s ({m['isa']})"
    lines = [f"machine: {m['cpu'] or 'unknown CPU'} (family {m.get('cpu_family') or '?'}), {m['cores']} threads; "
             f"{peak}{_int8_limit_text(m)}; load average at start {m.get('load_average')}",
             "% peak = GMACs x 2 x images/s / fp32 limit of the threads used (eager uses 1 thread; int8 rows too); "
             "% int8 (int8 rows) = GMACs x images/s / int8 limit of the threads used",
             f"{'model':<10} {'batch':>5} {'mode':<19} {'thr':>3} {'img/s':>8} {'p50 ms':>9} {'p90 ms':>9} "
             f"{'peak MiB':>9} {'% peak':>7} {'% int8':>7}"]
    for r in report["results"]:
        if r.get("error"):
            lines.append(f"{r['model']:<10} {r['batch']:>5} {r['mode']:<19} error: {r['error']}")
            continue
        lines.append(f"{r['model']:<10} {r['batch']:>5} {r['mode']:<19} {r['threads']:>3} {r['images_per_s']:>8.2f} "
                     f"{r['latency_p50_ms']:>9.1f} {r['latency_p90_ms']:>9.1f} {r['peak_rss_mib']:>9.0f} "
                     f"{100 * r['peak_fraction']:>6.1f}%"
                     + ("" if r.get("int8_fraction") is None else f" {100 * r['int8_fraction']:>6.1f}%"))
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
    if report.get("int8"):
        lines.append("int8 (megzoo.quantization.quantize on random calibration batches, then megzoo.compile):")
        for q in report["int8"]:
            if q.get("error"):
                lines.append(f"  {q['model']} batch {q['batch']} {q['mode']}: error: {q['error']}")
            else:
                lines.append(f"  {q['model']:<10} batch {q['batch']:>3}  {q['mode']:<17} "
                             f"quantize {q['quantize_s']:.1f} s, "
                             f"compile {q['compile_s']:.1f} s")
    return "\n".join(lines)


def _int8_limit_text(machine: dict) -> str:
    """The machine line's int8 part: ``; int8 limit G G MAC/s (how)``, why it is missing, or nothing
    when it was not measured."""
    loop = machine.get("int8_loop") or {}
    if machine.get("int8_peak_gmacs"):
        how = f"measured: {loop['how']}" if loop.get("how") else "given"
        return f"; int8 limit {machine['int8_peak_gmacs']:.1f} G MAC/s ({how})"
    return f"; int8 limit not measured: {loop['error']}" if loop.get("error") else ""
