"""megzoo inference vs PyTorch on this machine, in one run.

    .venv/bin/python benchmarks/bench_inference.py --torch-python /tmp/tvenv/bin/python \\
        --models resnet18,resnet50,vgg16 --batch 1,16 --threads 2 --markdown

For every model and batch size it measures, each in a fresh process (so peak memory is per
configuration): MegEngine eager (1 thread: eager MegEngine does not use more), megzoo's optimised
path (``megzoo.compile``: traced, fused graph run by MegEngine Lite with profiled kernels; the
timed process loads the exported ``.mge``), and, when ``--torch-python`` has torch and
torchvision, PyTorch eager, channels_last and ``jit.trace`` + ``freeze`` with the same threads.
It prints images/s (median), p50/p90 latency, peak RSS, the fraction of the fp32 peak, the
ratio megzoo optimised / best PyTorch mode, and the compile times.

A PyTorch venv: ``python3.11 -m venv DIR && DIR/bin/pip install torch==2.14.1 torchvision==0.29.1``.
Figures taken while ``uptime`` shows a load above ~0.5 on a 2-core machine are unreliable; the
load average is recorded before and after the run.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megzoo.benchmark import format_table, parse_micro_batch, run_benchmark  # noqa: E402
from megzoo.inference import default_threads  # noqa: E402
from megzoo.registry import get_model_entry  # noqa: E402

TORCH_MODES = ("eager", "channels_last", "jit")
WORKER = Path(__file__).resolve().parent / "torch_worker.py"


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


SGEMM_CODE = """
import sys, time
import numpy as np
n = 2048
a = np.random.RandomState(0).rand(n, n).astype(np.float32)
b = np.random.RandomState(1).rand(n, n).astype(np.float32)
a @ b
times = []
for _ in range(8):
    t = time.perf_counter()
    a @ b
    times.append(time.perf_counter() - t)
print(2 * n ** 3 / min(times) / 1e9)
"""


def measure_sgemm_gflops(threads: int):
    """GFLOP/s of a 2048 x 2048 float32 matrix product with NumPy's BLAS on ``threads`` threads
    (best of 8): a practical fp32 ceiling of this machine *now*, taken in the same run."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    try:
        out = subprocess.run([sys.executable, "-c", SGEMM_CODE], capture_output=True, text=True, env=env, timeout=300)
        return float(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError, OSError):
        return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet18,resnet50,vgg16")
    p.add_argument("--batch", default="1,16")
    p.add_argument("--threads", type=int, default=None, help="default: the CPUs this process may use")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--min-repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--time-budget", type=float, default=20.0, help="seconds of timed runs per configuration")
    p.add_argument("--torch-python", default=None, help="a Python with torch + torchvision (e.g. /tmp/tvenv/bin/python)")
    p.add_argument("--torch-modes", default=",".join(TORCH_MODES))
    p.add_argument("--no-eager", action="store_true", help="skip MegEngine eager (slow at batch 16)")
    p.add_argument("--layout", choices=("auto", "nchw", "nchw88"), default="auto",
                   help="internal convolution layout of megzoo's optimised path")
    p.add_argument("--no-split-batch", dest="split_batch", action="store_false",
                   help="run every batch on one network using all threads (megzoo.compile(split_batch=False))")
    p.add_argument("--micro-batch", default="auto", metavar="auto|none|N",
                   help="images each Lite network runs at a time (megzoo.compile(micro_batch=...); default auto: "
                        "1 with the NCHW layout, else whole shares)")
    p.add_argument("--cold", action="store_true", help="also time the first compile with an empty algorithm cache")
    p.add_argument("--ceiling-gflops", type=float, default=None,
                   help="measured fp32 ceiling of the machine (GFLOP/s, all threads) for a second %% column")
    p.add_argument("--no-measure-ceiling", dest="measure_ceiling", action="store_false",
                   help="skip timing NumPy's float32 matrix product before and after the run (the "
                        "same-run ceiling used for the %% column when --ceiling-gflops is not given)")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--json", metavar="FILE", help="also write everything as JSON to FILE")
    p.add_argument("--markdown", action="store_true", help="print the summary as a Markdown table")
    args = p.parse_args(argv)

    threads = args.threads or default_threads()
    models = [m for m in args.models.split(",") if m]
    batches = [int(b) for b in args.batch.split(",") if b]
    load_before = os.getloadavg()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    log(f"load average before: {load_before}")
    ceiling_before = measure_sgemm_gflops(threads) if args.measure_ceiling else None
    if ceiling_before:
        log(f"sgemm ceiling ({threads} threads, NumPy's BLAS): {ceiling_before:.1f} GFLOP/s")
    torch_modes = [m for m in args.torch_modes.split(",") if m] if args.torch_python else []
    report, rows = None, []
    for name in models:  # megzoo and PyTorch back to back per configuration, so drifting load hits both alike
        gmacs = get_model_entry(name).gmacs * (args.input_size / 224) ** 2
        for batch in batches:
            part = run_benchmark([name], [batch], threads=threads, input_size=args.input_size,
                                 modes=("optimised",) if args.no_eager else ("eager", "optimised"),
                                 repeats=args.repeats, min_repeats=args.min_repeats, warmup=args.warmup,
                                 time_budget=args.time_budget, layout=args.layout, cold=args.cold,
                                 timeout=args.timeout, split_batch=args.split_batch,
                                 micro_batch=parse_micro_batch(args.micro_batch), log=log)
            if report is None:
                report = {**part, "results": [], "compile": []}
            report["compile"] += part["compile"]
            rows += part["results"]
            for mode in torch_modes:
                log(f"{name} batch {batch}: torch {mode} ...")
                cfg = dict(model=name, batch=batch, input_size=args.input_size, threads=threads, mode=mode,
                           repeats=args.repeats, min_repeats=args.min_repeats, warmup=args.warmup,
                           time_budget=args.time_budget)
                r = run_torch(args.torch_python, cfg, args.timeout)
                row = {**cfg, "mode": f"torch_{mode}", "error": None, **r, "gmacs": round(gmacs, 3)}
                if row.get("images_per_s"):
                    row["gflops"] = gmacs * 2 * row["images_per_s"]
                    row["peak_fraction"] = row["gflops"] / (report["machine"]["peak_gflops"] * row["threads"]
                                                            / report["machine"]["cores"])
                rows.append(row)
    report["results"] = rows
    ceiling_after = measure_sgemm_gflops(threads) if args.measure_ceiling else None
    if ceiling_after:
        log(f"sgemm ceiling after: {ceiling_after:.1f} GFLOP/s")
    report["sgemm_gflops"] = {"before": ceiling_before, "after": ceiling_after}
    if args.ceiling_gflops is None and ceiling_before:
        args.ceiling_gflops = round(max(ceiling_before, ceiling_after or 0), 1)
    report["load_average"] = {"before": list(load_before), "after": list(os.getloadavg())}
    log(f"load average after: {report['load_average']['after']}")

    summary = []
    for name in models:
        for batch in batches:
            sel = [r for r in rows if r["model"] == name and r["batch"] == batch and not r.get("error")]
            opt = next((r for r in sel if r["mode"] == "optimised"), None)
            eager = next((r for r in sel if r["mode"] == "eager"), None)
            torch_rows = [r for r in sel if r["mode"].startswith("torch_")]
            best = max(torch_rows, key=lambda r: r["images_per_s"], default=None)
            teager = next((r for r in torch_rows if r["mode"] == "torch_eager"), None)
            summary.append({
                "model": name, "batch": batch,
                "megengine_eager": eager and eager["images_per_s"],
                "megzoo_optimised": opt and opt["images_per_s"],
                "torch_eager": teager and teager["images_per_s"],
                "torch_best": best and best["images_per_s"], "torch_best_mode": best and best["mode"][6:],
                "ratio_vs_torch_best": opt and best and opt["images_per_s"] / best["images_per_s"],
                "ratio_vs_torch_eager": opt and teager and opt["images_per_s"] / teager["images_per_s"],
                "optimised_peak_fraction": opt and opt.get("peak_fraction"),
                "ceiling_fraction": opt and args.ceiling_gflops and opt["gflops"] / args.ceiling_gflops,
                "peak_mib": {r["mode"]: round(r["peak_rss_mib"]) for r in sel},
            })
    report["summary"] = summary
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")

    print(format_table({**report, "results": [r for r in rows if not r["mode"].startswith("torch_")]}))
    for r in rows:
        if r["mode"].startswith("torch_"):
            if r.get("error"):
                print(f"{r['model']:<10} {r['batch']:>5} {r['mode']:<16} error: {r['error']}")
            else:
                print(f"{r['model']:<10} {r['batch']:>5} {r['mode']:<16} {r['threads']:>3} {r['images_per_s']:>8.2f} "
                      f"{r['latency_p50_ms']:>9.1f} {r['latency_p90_ms']:>9.1f} {r['peak_rss_mib']:>9.0f} "
                      f"{100 * r['peak_fraction']:>6.1f}%")
    fmt = lambda v, spec=".2f": "-" if v is None else format(v, spec)  # noqa: E731
    ceiling = f" | % of {args.ceiling_gflops:g} GFLOP/s" if args.ceiling_gflops else ""
    if args.markdown:
        print(f"\n| model | batch | MegEngine eager | megzoo optimised | PyTorch eager | PyTorch best (mode) | "
              f"megzoo / PyTorch best{ceiling} | peak MiB (MGE eager / megzoo / torch best) |")
        print("|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if ceiling else "") + "---|")
    else:
        print("\nimages/s            MGE eager  megzoo opt  torch eager  torch best (mode)        opt/torch best")
    for s in summary:
        best_mode = s["torch_best_mode"] or ""
        peaks = s["peak_mib"]
        torch_peak = peaks.get(f"torch_{best_mode}") if best_mode else None
        if args.markdown:
            extra = f" | {fmt(s['ceiling_fraction'] and 100 * s['ceiling_fraction'], '.0f')}%" if ceiling else ""
            print(f"| {s['model']} | {s['batch']} | {fmt(s['megengine_eager'])} | {fmt(s['megzoo_optimised'])} | "
                  f"{fmt(s['torch_eager'])} | {fmt(s['torch_best'])} ({best_mode}) | {fmt(s['ratio_vs_torch_best'])}"
                  f"{extra} | {peaks.get('eager', '-')} / {peaks.get('optimised', '-')} / {torch_peak or '-'} |")
        else:
            print(f"{s['model']:<10} b{s['batch']:<3}  {fmt(s['megengine_eager']):>10} {fmt(s['megzoo_optimised']):>11} "
                  f"{fmt(s['torch_eager']):>12} {fmt(s['torch_best']):>11} ({best_mode:<18}) "
                  f"{fmt(s['ratio_vs_torch_best']):>8}")
    print(f"\nload average before {tuple(round(v, 2) for v in load_before)}, "
          f"after {tuple(round(v, 2) for v in report['load_average']['after'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
