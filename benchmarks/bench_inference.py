"""megzoo inference vs PyTorch on this machine, in one run, in interleaved rounds.

    .venv/bin/python benchmarks/bench_inference.py --torch-python /tmp/tvenv/bin/python \\
        --models resnet18,resnet50,vgg16 --batch 1,16 --threads 2 --rounds 3 --wait-quiet 120 --markdown

For every model and batch size it measures, each in a fresh process (so peak memory is per
configuration): MegEngine eager (1 thread: eager MegEngine does not use more), megzoo's two
backends: Lite (``lite``, once called ``optimised``: the traced, fused graph run by MegEngine Lite
with profiled kernels; the timed process loads the exported ``.mge``) and ONNX Runtime (``onnxruntime``:
``megzoo.compile(backend="onnxruntime")`` inside a megzoo process that has run MegEngine
eagerly, as a user's has; ``ort_alone``: the same ``.onnx`` in a process without megzoo or
MegEngine, the standalone speed; with ``--poller-check`` also ``onnxruntime_untamed``, without
keeping MegEngine's poller thread back), and, when ``--torch-python`` has torch and
torchvision, PyTorch eager, channels_last and ``jit.trace`` + ``freeze`` with the same threads.
With ``--int8`` also int8: ``onnxruntime_int8`` (the model quantized by
:func:`megzoo.quantization.quantize` on 2 random batches, run by ONNX Runtime on its QDQ graph),
``lite_int8`` (the same on MegEngine Lite, NCHW; off with ``--no-lite``) and PyTorch's ``int8``
(``torch.ao`` FX, x86 backend) and ``int8_jit`` (that traced and frozen).
With ``--openvino`` also ``openvino`` (fp32) and, with ``--int8``, ``openvino_int8`` (megzoo's QDQ
graph run by OpenVINO); needs ``megzoo[openvino]``.
With ``--bf16`` also ``openvino_bf16`` (OpenVINO with ``precision="bf16"``; a CPU without BF16
arithmetic refuses it, and the row keeps the refusal as its error, printed instead of a figure) and
PyTorch's ``bf16`` and ``bf16_jit`` (``torch.autocast("cpu", dtype=torch.bfloat16)``, channels_last;
PyTorch runs these on any CPU, converting in software where it has no BF16: the JSON's ``cpu_bf16``
says which CPU this was).

Rounds: ``--rounds N`` (default 2) runs the whole set N times, interleaved (round 1 of every
configuration, then round 2, ...), so drifting load hits every configuration alike; each figure is
the median over the rounds, with its min-max and spread (max - min, % of the median). At the start
of every round the 1-minute load average is printed and recorded; a round that starts above 0.5 is
``disturbed`` (``*`` in the rounds table). ``--wait-quiet S`` first waits up to S seconds for the
load to fall to 0.5 (polling every 5 s). The benchmark's own work raises the load too: after a
round of 2 busy threads the 1-minute load is near 2 on a 2-core machine and takes about 80 s to
fall to 0.5, so rounds after the first are marked disturbed unless ``--wait-quiet`` is about 120.

The machine's fp32 limit is measured before and after the rounds with a compiled FMA loop
(:func:`megzoo.benchmark.measure_fma_peak`, not NumPy's sgemm, whose speed depends on the
OpenBLAS build and settings), and with ``--int8`` the int8 limit
(:func:`megzoo.benchmark.measure_int8_peak`, GMAC/s); the better of before/after is the limit.

Printed: a row per configuration (images/s, p50/p90 latency: medians over the rounds; peak RSS: the
largest; % of the fp32 limit), the rounds table (median, min-max, spread, each round's images/s)
and the summary table, whose columns are: MegEngine eager, megzoo Lite, megzoo ONNX Runtime and ONNX
Runtime alone (images/s), PyTorch's best fp32 mode, megzoo's default backend (``backend="auto"``
here) / that best, the default's % of the fp32 limit, ONNX Runtime in megzoo / alone; with
``--int8`` megzoo int8 (ONNX Runtime), Lite int8, PyTorch's best int8 mode, the ratios int8 /
PyTorch int8 and int8 / fp32, and ``% int8 limit`` (GMACs x images/s / the int8 limit) of megzoo
int8, OpenVINO int8 and PyTorch's best int8; with ``--openvino`` OpenVINO fp32 (and int8) and their
ratios to ONNX Runtime; with ``--bf16`` OpenVINO bf16 (or why it did not run), OpenVINO bf16 /
megzoo's default fp32, PyTorch's best bf16 mode and OpenVINO bf16 / that.

A PyTorch venv: ``python3.11 -m venv DIR && DIR/bin/pip install torch==2.14.1 torchvision==0.29.1``.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megzoo.benchmark import (  # noqa: E402
    INT8_MODES, format_table, limit_fraction, measure_fma_peak, measure_int8_peak, modes as megzoo_modes,
    parse_micro_batch, run_benchmark)
from megzoo.host import cpu_flags  # noqa: E402
from megzoo.inference import best_backend, default_threads  # noqa: E402
from megzoo.inference.backends.openvino import BF16_FLAGS  # noqa: E402
from megzoo.registry import get_model_entry  # noqa: E402

TORCH_MODES = ("eager", "channels_last", "jit")
WORKER = Path(__file__).resolve().parent / "torch_worker.py"
#: a round whose 1-minute load average at its start is above this is marked disturbed (2-core machines)
QUIET_LOAD = 0.5
#: seconds between load polls of --wait-quiet
POLL_S = 5.0
#: the figures of a row that are medians over the rounds
MEDIAN_KEYS = ("images_per_s", "latency_p50_ms", "latency_p90_ms")


def run_torch(python, cfg, timeout):
    try:
        proc = subprocess.run([python, str(WORKER), json.dumps(cfg)], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    except OSError as exc:
        return {"error": str(exc)}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("@@RESULT@@"):
            return json.loads(line[len("@@RESULT@@"):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit {proc.returncode}: {tail}"}


# --- rounds, load and the figures' classes: pure steps (tests/test_bench_inference_rounds.py) ---

def spread(values: Sequence[float]) -> Optional[dict]:
    """``{"median", "min", "max", "spread_pct", "rounds"}`` of ``values`` (images/s of the rounds):
    ``spread_pct`` = 100 x (max - min) / median; None for no values."""
    if not values:
        return None
    median, lo, hi = statistics.median(values), min(values), max(values)
    return {"median": median, "min": lo, "max": hi, "spread_pct": 100 * (hi - lo) / median, "rounds": len(values)}


def is_disturbed(load_1min: float) -> bool:
    """True when a round starting at this 1-minute load average is disturbed (above :data:`QUIET_LOAD`)."""
    return load_1min > QUIET_LOAD


def wait_quiet(max_s: float, say: Callable[[str], None], loadavg=os.getloadavg, sleep=time.sleep) -> float:
    """Wait, polling every :data:`POLL_S` s, until the 1-minute load is at most :data:`QUIET_LOAD`
    or ``max_s`` seconds have passed; returns the seconds waited (0 when quiet already or ``max_s`` <= 0)."""
    load = loadavg()[0]
    if load <= QUIET_LOAD or max_s <= 0:
        return 0.0
    say(f"waiting up to {max_s:g} s for the 1-minute load ({load:.2f}) to fall to {QUIET_LOAD} ...")
    waited = 0.0
    while load > QUIET_LOAD and waited < max_s:
        step = min(POLL_S, max_s - waited)
        sleep(step)
        waited += step
        load = loadavg()[0]
    say(f"... load {load:.2f} after {waited:g} s" + ("" if load <= QUIET_LOAD else ": running anyway"))
    return waited


def start_round(number: int, wait_s: float, say: Callable[[str], None], loadavg=os.getloadavg,
                sleep=time.sleep) -> dict:
    """The record of round ``number`` once it may start (after :func:`wait_quiet`): ``round``,
    ``load_average_start`` (1, 5, 15 minutes), ``load_1min``, ``disturbed``, ``waited_s``."""
    waited = wait_quiet(wait_s, say, loadavg, sleep)
    load = [round(v, 3) for v in loadavg()]
    record = {"round": number, "load_average_start": load, "load_1min": load[0], "disturbed": is_disturbed(load[0]),
              "waited_s": waited}
    say(f"round {number}: 1-minute load {load[0]:.2f} at the start"
        + (f" (above {QUIET_LOAD}: marked disturbed)" if record["disturbed"] else ""))
    return record


def merge_rounds(rounds: Sequence[dict]) -> List[dict]:
    """One row per (model, batch, mode), in the order they first ran, from ``rounds`` (records of
    :func:`start_round` with their ``results``): :data:`MEDIAN_KEYS` the medians over the rounds
    that gave a figure, ``peak_rss_mib`` the largest, ``repeats`` the sum, ``gflops`` from the median,
    ``spread`` (:func:`spread`), ``per_round`` (``round``, ``images_per_s``, ``disturbed``,
    ``error``) and ``disturbed_rounds``; ``error`` only when no round gave a figure (the first round's)."""
    configs: dict = {}
    for record in rounds:
        for row in record["results"]:
            configs.setdefault((row["model"], row["batch"], row["mode"]), []).append((record, row))
    return [_merge_config(pairs) for pairs in configs.values()]


def _merge_config(pairs) -> dict:
    ok = [row for _, row in pairs if not row.get("error") and row.get("images_per_s")]
    merged = dict(ok[0] if ok else pairs[0][1])
    merged["per_round"] = [{"round": rec["round"], "images_per_s": row.get("images_per_s"),
                            "disturbed": rec["disturbed"], "error": row.get("error")} for rec, row in pairs]
    merged["disturbed_rounds"] = [rec["round"] for rec, _ in pairs if rec["disturbed"]]
    merged["spread"] = spread([row["images_per_s"] for row in ok])
    if not ok:
        return merged
    for key in MEDIAN_KEYS:
        merged[key] = statistics.median(row[key] for row in ok)
    merged["peak_rss_mib"] = max(row["peak_rss_mib"] for row in ok)
    merged["repeats"] = sum(row.get("repeats") or 0 for row in ok)
    merged["error"] = None
    if merged.get("gmacs"):
        merged["gflops"] = merged["gmacs"] * 2 * merged["images_per_s"]
    return merged


def short_reason(error: str) -> str:
    """A row's error as a table cell: without the worker's exit status and exception class, up to
    the first ``"; "`` (the refusal's reason without its fix)."""
    text = re.sub(r"^(worker exited with|exit) -?\d+: ", "", error.strip())
    text = re.sub(r"^[\w.]*(Error|Exception): ", "", text)
    return text.split("; ")[0]


def torch_precision(mode: str) -> str:
    """``"int8"``, ``"bf16"`` or ``"fp32"``: what a PyTorch row's mode (``torch_<worker mode>``) computes in."""
    kind = mode[len("torch_"):].split("_")[0]
    return kind if kind in ("int8", "bf16") else "fp32"


def is_int8(mode: str) -> bool:
    """True for the int8 rows: megzoo's int8 modes and PyTorch's."""
    return mode in INT8_MODES or (mode.startswith("torch_") and torch_precision(mode) == "int8")


def int8_fraction(row: dict, limit_gmacs: Optional[float], threads: int) -> Optional[float]:
    """GMACs x images/s of ``row`` over the int8 limit measured on ``threads`` threads, scaled to
    the row's threads (the rows' ``int8_fraction``, as megzoo.benchmark computes it for its own
    runs); None without a figure or a limit."""
    if not (row.get("images_per_s") and row.get("gmacs") and limit_gmacs):
        return None
    return limit_fraction(row["gmacs"], row["images_per_s"], limit_gmacs, row.get("threads") or threads, threads)


# --- the run ---

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet18,resnet50,vgg16")
    p.add_argument("--batch", default="1,16")
    p.add_argument("--threads", type=int, default=None, help="default: the CPUs this process may use")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--min-repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--time-budget", type=float, default=20.0,
                   help="seconds of timed runs per configuration and round")
    p.add_argument("--rounds", type=int, default=2,
                   help="run every configuration this many times, interleaved; figures are the medians")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help=f"before each round wait up to SECONDS for the 1-minute load to fall to {QUIET_LOAD}")
    p.add_argument("--torch-python", default=None,
                   help="a Python with torch + torchvision (e.g. /tmp/tvenv/bin/python)")
    p.add_argument("--torch-modes", default=",".join(TORCH_MODES))
    p.add_argument("--no-eager", action="store_true", help="skip MegEngine eager (slow at batch 16)")
    p.add_argument("--no-lite", action="store_true", help="skip the Lite backend (its first compile profiles)")
    p.add_argument("--int8", action="store_true",
                   help="also int8: megzoo's onnxruntime_int8 and lite_int8 (not with --no-lite) and, with "
                        "--torch-python, PyTorch's int8 and int8_jit; measures the int8 limit")
    p.add_argument("--openvino", action="store_true",
                   help="also the openvino backend (fp32; with --int8 also openvino_int8: megzoo's QDQ graph run by "
                        "OpenVINO); needs megzoo[openvino]")
    p.add_argument("--bf16", action="store_true",
                   help="also bf16: openvino_bf16 (CPUs with BF16 only; elsewhere its row says why) and, with "
                        "--torch-python, PyTorch's bf16 and bf16_jit (autocast)")
    p.add_argument("--poller-check", action="store_true",
                   help="also time ONNX Runtime in a megzoo process without megzoo.device.poller_yields")
    p.add_argument("--layout", choices=("auto", "nchw", "nchw88"), default="auto",
                   help="internal convolution layout of megzoo's Lite path")
    p.add_argument("--no-split-batch", dest="split_batch", action="store_false",
                   help="run every batch on one network using all threads (megzoo.compile(split_batch=False))")
    p.add_argument("--micro-batch", default="auto", metavar="auto|none|N",
                   help="images each Lite network runs at a time (megzoo.compile(micro_batch=...); default auto: "
                        "1 with the NCHW layout, else whole shares)")
    p.add_argument("--cold", action="store_true", help="also time the first compile with an empty algorithm cache")
    p.add_argument("--peak-gflops", type=float, default=None,
                   help="the machine's fp32 limit in GFLOP/s (default: measured with a compiled FMA loop)")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--json", metavar="FILE", help="also write everything as JSON to FILE")
    p.add_argument("--markdown", action="store_true", help="print the summary as a Markdown table")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error(f"--rounds must be 1 or more, got {args.rounds}")
    if args.wait_quiet < 0:
        p.error(f"--wait-quiet must be 0 or more seconds, got {args.wait_quiet:g}")
    return args


def chosen_modes(args, default: str):
    """(megzoo's benchmark modes, PyTorch worker modes) the arguments ask for; megzoo's default
    backend's mode (named after it) is among them unless ``--no-lite`` leaves out a default ``lite``."""
    modes = (() if args.no_eager else ("eager",)) + (() if args.no_lite else ("lite",)) + (
        "onnxruntime", "ort_alone") + (("onnxruntime_untamed",) if args.poller_check else ())
    if args.int8:
        modes += ("onnxruntime_int8",) + (() if args.no_lite else ("lite_int8",))
    if args.openvino:
        modes += ("openvino",) + (("openvino_int8",) if args.int8 else ())
    if args.bf16:
        modes += ("openvino_bf16",)
    if default not in modes and default in megzoo_modes() and not (default == "lite" and args.no_lite):
        modes += (default,)
    torch_modes = [m for m in args.torch_modes.split(",") if m] if args.torch_python else []
    extra = (("int8", "int8_jit") if args.int8 else ()) + (("bf16", "bf16_jit") if args.bf16 else ())
    if args.torch_python:
        torch_modes += [m for m in extra if m not in torch_modes]
    return modes, torch_modes


def measure_limits(threads: int, int8: bool, log) -> dict:
    """``{"fp32": measure_fma_peak(threads), "int8": measure_int8_peak(threads) or None}``, logged."""
    limits = {"fp32": measure_fma_peak(threads),
              "int8": measure_int8_peak(threads) if int8 else None}
    log(f"fp32 limit: {limits['fp32']}" + (f"; int8 limit: {limits['int8']}" if int8 else ""))
    return limits


def torch_row(args, name: str, batch: int, mode: str, threads: int, gmacs: float, log) -> dict:
    """One PyTorch configuration run by ``--torch-python`` (``torch_worker.py``), as a result row."""
    log(f"{name} batch {batch}: torch {mode} ...")
    cfg = dict(model=name, batch=batch, input_size=args.input_size, threads=threads, mode=mode,
               repeats=args.repeats, min_repeats=args.min_repeats, warmup=args.warmup, time_budget=args.time_budget)
    r = run_torch(args.torch_python, cfg, args.timeout)
    row = {**cfg, "mode": f"torch_{mode}", "error": None, **r, "gmacs": round(gmacs, 3)}
    if row.get("images_per_s"):
        row["gflops"] = gmacs * 2 * row["images_per_s"]
    return row


def run_round(args, record: dict, models, batches, modes, torch_modes, threads: int, peak_gflops, log) -> dict:
    """Every configuration once (megzoo's modes and PyTorch's back to back per model and batch):
    ``record`` with ``results``, ``compile``, ``int8`` (each tagged with the round) and ``machine``."""
    record.update(results=[], compile=[], int8=[])
    for name in models:
        gmacs = get_model_entry(name).gmacs * (args.input_size / 224) ** 2
        for batch in batches:
            part = run_benchmark([name], [batch], threads=threads, input_size=args.input_size, modes=modes,
                                 peak_gflops=peak_gflops, measure_peak=False,
                                 repeats=args.repeats, min_repeats=args.min_repeats, warmup=args.warmup,
                                 time_budget=args.time_budget, layout=args.layout, cold=args.cold,
                                 timeout=args.timeout, split_batch=args.split_batch,
                                 micro_batch=parse_micro_batch(args.micro_batch), log=log)
            record.setdefault("machine", part["machine"])
            record["compile"] += [{**c, "round": record["round"]} for c in part["compile"]]
            record["int8"] += [{**q, "round": record["round"]} for q in part["int8"]]
            record["results"] += part["results"]
            record["results"] += [torch_row(args, name, batch, m, threads, gmacs, log) for m in torch_modes]
    return record


def best_limit(before: Optional[dict], after: Optional[dict], key: str) -> Optional[float]:
    """The better of two limit measurements' ``key`` (``gflops``, ``gmacs``); None when neither has one."""
    return max((m or {}).get(key) or 0 for m in (before, after)) or None


def record_limits(machine: dict, before: dict, after: dict, peak_gflops: Optional[float]) -> None:
    """``machine`` (megzoo.benchmark's record, which format_table reads) with the better of the limits
    measured before and after the rounds: ``peak_gflops`` (unless given), ``fma_loop``, ``isa`` and,
    when the int8 limit was measured, ``int8_peak_gmacs`` and ``int8_loop``."""
    limit = best_limit(before["fp32"], after["fp32"], "gflops")
    if limit and not peak_gflops:
        machine.update(isa=f"measured: {before['fp32'].get('how')}, best of before/after the run",
                       estimated_peak_gflops=machine["peak_gflops"], flop_per_cycle=None, peak_gflops=limit,
                       fma_loop=max((before["fp32"], after["fp32"]), key=lambda m: m.get("gflops") or 0))
    if before["int8"] is not None:
        machine["int8_peak_gmacs"] = best_limit(before["int8"], after["int8"], "gmacs")
        machine["int8_loop"] = max((before["int8"], after["int8"]), key=lambda m: m.get("gmacs") or 0)


def finish_rows(rows, machine: dict, threads: int) -> None:
    """Every row's % of the fp32 limit (``machine["peak_gflops"]``) and, for int8 rows, of the int8
    limit (``machine["int8_peak_gmacs"]``)."""
    for row in rows:
        if row.get("gflops") and machine["peak_gflops"]:
            row["peak_fraction"] = row["gflops"] / (machine["peak_gflops"] * (row.get("threads") or threads)
                                                    / machine["cores"])
        if is_int8(row["mode"]):
            row["int8_fraction"] = int8_fraction(row, machine.get("int8_peak_gmacs"), threads)


def summarize(rows, models, batches, default: str) -> List[dict]:
    """One summary per (model, batch) from the merged rows: images/s per column, the ratios, % of limits."""
    summary = []
    for name in models:
        for batch in batches:
            here = [r for r in rows if r["model"] == name and r["batch"] == batch]
            summary.append(_summary(here, default))
    return summary


def _best_torch(sel, precision: str):
    return max((r for r in sel if r["mode"].startswith("torch_") and torch_precision(r["mode"]) == precision),
               key=lambda r: r["images_per_s"], default=None)


def _summary(here, default: str) -> dict:
    sel = [r for r in here if not r.get("error")]
    by_mode = {r["mode"]: r for r in sel}
    ips = lambda mode: by_mode[mode]["images_per_s"] if mode in by_mode else None  # noqa: E731
    frac = lambda row, key: row and row.get(key)  # noqa: E731
    ratio = lambda a, b: a and b and a / b  # noqa: E731
    best, best_int8, best_bf16 = (_best_torch(sel, p) for p in ("fp32", "int8", "bf16"))
    mine = by_mode.get(default)  # each backend's main benchmark mode is named after it
    int8, ov_bf16 = ips("onnxruntime_int8"), ips("openvino_bf16")
    refused = next((r["error"] for r in here if r["mode"] == "openvino_bf16" and r.get("error")), None)
    return {
        "model": here[0]["model"], "batch": here[0]["batch"], "megengine_eager": ips("eager"),
        "megzoo_lite": ips("lite"), "megzoo_onnxruntime": ips("onnxruntime"), "ort_alone": ips("ort_alone"),
        "onnxruntime_untamed": ips("onnxruntime_untamed"), "default_backend": default,
        "torch_eager": ips("torch_eager"),
        "torch_best": best and best["images_per_s"], "torch_best_mode": best and best["mode"][6:],
        "ratio_default_vs_torch_best": ratio(mine and mine["images_per_s"], best and best["images_per_s"]),
        "ratio_lite_vs_torch_best": ratio(ips("lite"), best and best["images_per_s"]),
        "ratio_in_process_vs_alone": ratio(ips("onnxruntime"), ips("ort_alone")),
        "default_limit_fraction": frac(mine, "peak_fraction"),
        "megzoo_int8": int8, "megzoo_lite_int8": ips("lite_int8"),
        "torch_int8_best": best_int8 and best_int8["images_per_s"],
        "torch_int8_best_mode": best_int8 and best_int8["mode"][6:],
        "ratio_int8_vs_torch_int8_best": ratio(int8, best_int8 and best_int8["images_per_s"]),
        "ratio_int8_vs_fp32": ratio(int8, ips("onnxruntime")),
        "megzoo_openvino": ips("openvino"), "megzoo_openvino_int8": ips("openvino_int8"),
        "int8_fraction": {"megzoo_int8": frac(by_mode.get("onnxruntime_int8"), "int8_fraction"),
                          "openvino_int8": frac(by_mode.get("openvino_int8"), "int8_fraction"),
                          "torch_int8_best": frac(best_int8, "int8_fraction")},
        "megzoo_openvino_bf16": ov_bf16, "openvino_bf16_error": refused,
        "torch_bf16_best": best_bf16 and best_bf16["images_per_s"],
        "torch_bf16_best_mode": best_bf16 and best_bf16["mode"][6:],
        "ratio_openvino_bf16_vs_default_fp32": ratio(ov_bf16, mine and mine["images_per_s"]),
        "ratio_openvino_bf16_vs_torch_bf16_best": ratio(ov_bf16, best_bf16 and best_bf16["images_per_s"]),
        "peak_mib": {r["mode"]: round(r["peak_rss_mib"]) for r in sel},
        "spread_pct": {r["mode"]: r["spread"] and round(r["spread"]["spread_pct"], 1) for r in sel},
    }


def runtime_versions() -> dict:
    """The versions of the runtimes measured (None for one not installed)."""
    from megzoo.inference.backends import get_backend

    return {name: get_backend(name).version() for name in ("onnxruntime", "openvino", "lite")}


def main(argv=None):
    args = parse_args(argv)
    threads = args.threads or default_threads()
    models = [m for m in args.models.split(",") if m]
    batches = [int(b) for b in args.batch.split(",") if b]
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    load_before = os.getloadavg()
    log(f"load average before: {load_before}")
    before = measure_limits(threads, args.int8, log)
    default = best_backend()
    log(f"megzoo's default backend here (backend='auto'): {default}")
    modes, torch_modes = chosen_modes(args, default)
    rounds = []
    for number in range(1, args.rounds + 1):  # interleaved: round 1 of every configuration, then round 2 ...
        record = start_round(number, args.wait_quiet, log)
        rounds.append(run_round(args, record, models, batches, modes, torch_modes, threads,
                                args.peak_gflops or before["fp32"].get("gflops"), log))
    after = measure_limits(threads, args.int8, log)
    report = {"command": " ".join(["benchmarks/bench_inference.py"] + list(sys.argv[1:] if argv is None else argv)),
              "date": time.strftime("%Y-%m-%d"), "versions": runtime_versions(),
              "machine": rounds[0]["machine"], "default_backend": default, "quiet_load": QUIET_LOAD,
              "cpu_bf16": {flag: flag in cpu_flags() for flag in BF16_FLAGS},
              "fma_limit": {"before": before["fp32"], "after": after["fp32"]},
              "int8_limit": {"before": before["int8"], "after": after["int8"]} if args.int8 else None,
              "compile": [c for r in rounds for c in r["compile"]], "int8": [q for r in rounds for q in r["int8"]],
              "rounds": [{k: v for k, v in r.items() if k != "machine"} for r in rounds]}
    record_limits(report["machine"], before, after, args.peak_gflops)
    rows = merge_rounds(rounds)
    finish_rows(rows, report["machine"], threads)  # every % against the same limits: the better measurements
    report["results"] = rows
    report["load_average"] = {"before": list(load_before), "after": list(os.getloadavg())}
    log(f"load average after: {report['load_average']['after']}")
    report["summary"] = summarize(rows, models, batches, default)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print_report(report, args, rounds)
    return 0


# --- printing ---

def fmt(value, spec: str = ".1f") -> str:
    """A table cell: ``value`` formatted, ``-`` for None."""
    return "-" if value is None else format(value, spec)


def print_report(report: dict, args, rounds) -> None:
    """The rows (megzoo's table, then PyTorch's), the rounds table and the summary table."""
    rows = report["results"]
    megzoo_rows = [r for r in rows if not r["mode"].startswith("torch_")]
    print(format_table({**report, "results": megzoo_rows, "compile": rounds[0]["compile"], "int8": rounds[0]["int8"]}))
    if len(rounds) > 1 and (rounds[0]["compile"] or rounds[0]["int8"]):
        print("(compile and quantize times of round 1; every round's are in the JSON)")
    for r in rows:
        if r["mode"].startswith("torch_"):
            if r.get("error"):
                print(f"{r['model']:<10} {r['batch']:>5} {r['mode']:<19} error: {r['error']}")
            else:
                print(f"{r['model']:<10} {r['batch']:>5} {r['mode']:<19} {r['threads']:>3} {r['images_per_s']:>8.2f} "
                      f"{r['latency_p50_ms']:>9.1f} {r['latency_p90_ms']:>9.1f} {r['peak_rss_mib']:>9.0f} "
                      f"{100 * r['peak_fraction']:>6.1f}%"
                      + ("" if r.get("int8_fraction") is None else f" {100 * r['int8_fraction']:>6.1f}%"))
    print("\n" + rounds_table(rows, report["rounds"]))
    print_summary(report, args)
    loads = report["load_average"]
    print(f"\nload average before {tuple(round(v, 2) for v in loads['before'])}, "
          f"after {tuple(round(v, 2) for v in loads['after'])}")


def rounds_table(rows, records) -> str:
    """Each configuration's median, min-max and spread over the rounds and every round's images/s,
    ``*`` on the rounds that started disturbed, with the footnote saying so."""
    marks = {rec["round"]: "*" if rec["disturbed"] else "" for rec in records}
    loads = ", ".join(f"round {rec['round']} {rec['load_1min']:.2f}{marks[rec['round']]}" for rec in records)
    lines = [f"rounds (images/s): 1-minute load at the start: {loads}",
             f"{'model':<10} {'batch':>5} {'mode':<19} {'median':>8} {'min-max':>15} {'spread':>7}  "
             + " ".join(f"{'round ' + str(rec['round']):>9}" for rec in records)]
    for r in rows:
        s = r["spread"]
        cells = [f"{fmt(p['images_per_s'], '.2f') if p['images_per_s'] else 'error'}{marks[p['round']]}"
                 for p in r["per_round"]]
        figures = (f"{s['median']:>8.2f} {s['min']:>7.2f}-{s['max']:<7.2f} {s['spread_pct']:>6.1f}%" if s
                   else f"{'-':>8} {'-':>15} {'-':>7}")
        lines.append(f"{r['model']:<10} {r['batch']:>5} {r['mode']:<19} {figures}  "
                     + " ".join(f"{c:>9}" for c in cells))
    if any(rec["disturbed"] for rec in records):
        lines.append(f"* the round started with the 1-minute load above {QUIET_LOAD} (other work, or this "
                     "benchmark's previous round: see --wait-quiet); its figures may be low")
    return "\n".join(lines)


def print_summary(report: dict, args) -> None:
    """The summary table (plain, or Markdown with ``--markdown``) and the limits it is measured against."""
    default, summary = report["default_backend"], report["summary"]
    header = ["model", "batch", "MegEngine eager", "megzoo Lite", "megzoo ONNX Runtime", "ORT alone",
              "PyTorch fp32 best (mode)", f"default ({default}) / PyTorch best", "default % of limit",
              "ORT in megzoo / alone"]
    if args.poller_check:
        header.append("ORT without poller_yields")
    if args.int8:
        header += ["megzoo int8 (ORT)", "megzoo Lite int8", "PyTorch int8 best (mode)",
                   "megzoo int8 / PyTorch int8 best", "int8 / fp32 (ORT)", "megzoo int8 % int8 limit",
                   "PyTorch int8 % int8 limit"]
    if args.openvino:
        header += ["OpenVINO fp32", "OpenVINO / ORT fp32"]
        header += ["OpenVINO int8", "OpenVINO / ORT int8", "OpenVINO int8 % int8 limit"] if args.int8 else []
    if args.bf16:
        header += ["OpenVINO bf16", f"OV bf16 / megzoo fp32 ({default})", "PyTorch bf16 best (mode)",
                   "OV bf16 / PyTorch bf16 best"]
    print(f"\nfp32 limit: {report['machine']['peak_gflops']} GFLOP/s ({report['machine']['isa']})")
    if args.int8:
        loop = report["machine"]["int8_loop"]
        print(f"int8 limit: {fmt(report['machine']['int8_peak_gmacs'])} G MAC/s "
              f"({loop.get('how') or loop.get('error')}; the better of before/after the run)")
    if args.bf16:
        print(f"BF16 arithmetic on this CPU: {report['cpu_bf16']}")
    print("\n| " + " | ".join(header) + " |" if args.markdown else "\n" + "  ".join(header))
    if args.markdown:
        print("|---|---:|" + "---:|" * (len(header) - 2))
    for s_ in summary:
        cells = summary_cells(s_, args)
        print("| " + " | ".join(cells) + " |" if args.markdown else "  ".join(cells))
    if args.int8 and args.json:
        print(f"\nint8 in {args.json}: rows onnxruntime_int8, lite_int8, torch_int8, torch_int8_jit (with "
              "int8_fraction); report['int8'] (quantize_s, compile_s); report['int8_limit']; summary keys "
              "megzoo_int8, megzoo_lite_int8, torch_int8_best, torch_int8_best_mode, ratio_int8_vs_torch_int8_best, "
              "ratio_int8_vs_fp32, int8_fraction")


def summary_cells(s_: dict, args) -> List[str]:
    """One summary's cells, in the order of :func:`print_summary`'s header."""
    pct = lambda v: fmt(v and 100 * v, ".0f") + "%"  # noqa: E731
    ratio = lambda a, b: fmt(a and b and a / b, ".2f")  # noqa: E731
    cells = [s_["model"], str(s_["batch"]), fmt(s_["megengine_eager"]), fmt(s_["megzoo_lite"]),
             fmt(s_["megzoo_onnxruntime"]), fmt(s_["ort_alone"]),
             f"{fmt(s_['torch_best'])} ({s_['torch_best_mode'] or '-'})",
             fmt(s_["ratio_default_vs_torch_best"], ".2f"), pct(s_["default_limit_fraction"]),
             fmt(s_["ratio_in_process_vs_alone"], ".2f")]
    if args.poller_check:
        cells.append(fmt(s_["onnxruntime_untamed"]))
    if args.int8:
        cells += [fmt(s_["megzoo_int8"]), fmt(s_["megzoo_lite_int8"]),
                  f"{fmt(s_['torch_int8_best'])} ({s_['torch_int8_best_mode'] or '-'})",
                  fmt(s_["ratio_int8_vs_torch_int8_best"], ".2f"), fmt(s_["ratio_int8_vs_fp32"], ".2f"),
                  pct(s_["int8_fraction"]["megzoo_int8"]), pct(s_["int8_fraction"]["torch_int8_best"])]
    if args.openvino:
        cells += [fmt(s_["megzoo_openvino"]), ratio(s_["megzoo_openvino"], s_["megzoo_onnxruntime"])]
        if args.int8:
            cells += [fmt(s_["megzoo_openvino_int8"]), ratio(s_["megzoo_openvino_int8"], s_["megzoo_int8"]),
                      pct(s_["int8_fraction"]["openvino_int8"])]
    if args.bf16:
        refused = s_["openvino_bf16_error"]
        cells += [short_reason(refused) if refused else fmt(s_["megzoo_openvino_bf16"]),
                  fmt(s_["ratio_openvino_bf16_vs_default_fp32"], ".2f"),
                  f"{fmt(s_['torch_bf16_best'])} ({s_['torch_bf16_best_mode'] or '-'})",
                  fmt(s_["ratio_openvino_bf16_vs_torch_bf16_best"], ".2f")]
    return cells


if __name__ == "__main__":
    sys.exit(main())
