"""megzoo inference vs PyTorch on this machine, in one run.

    .venv/bin/python benchmarks/bench_inference.py --torch-python /tmp/tvenv/bin/python \\
        --models resnet18,resnet50,vgg16 --batch 1,16 --threads 2 --markdown

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
(``torch.ao`` FX, x86 backend) and ``int8_jit`` (that traced and frozen); the summary then adds
megzoo int8 (ONNX Runtime) against the better PyTorch int8 mode and against megzoo's fp32
``onnxruntime`` row.
The machine's fp32 limit is measured first with a compiled FMA loop
(:func:`megzoo.benchmark.measure_fma_peak`, not NumPy's sgemm, whose speed depends on the
OpenBLAS build and settings). It prints images/s (median), p50/p90 latency, peak RSS, the
fraction of that limit, the ratio of megzoo's default backend (``backend="auto"`` here) to the
best PyTorch mode, and the compile times.

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

from megzoo.benchmark import format_table, measure_fma_peak, parse_micro_batch, run_benchmark  # noqa: E402
from megzoo.inference import best_backend, default_threads  # noqa: E402
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
    p.add_argument("--torch-python", default=None,
                   help="a Python with torch + torchvision (e.g. /tmp/tvenv/bin/python)")
    p.add_argument("--torch-modes", default=",".join(TORCH_MODES))
    p.add_argument("--no-eager", action="store_true", help="skip MegEngine eager (slow at batch 16)")
    p.add_argument("--no-lite", action="store_true", help="skip the Lite backend (its first compile profiles)")
    p.add_argument("--int8", action="store_true",
                   help="also int8: megzoo's onnxruntime_int8 and lite_int8 (not with --no-lite) and, with "
                        "--torch-python, PyTorch's int8 and int8_jit")
    p.add_argument("--openvino", action="store_true",
                   help="also the openvino backend (fp32; with --int8 also openvino_int8: megzoo's QDQ graph run by "
                        "OpenVINO); needs megzoo[openvino]")
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

    threads = args.threads or default_threads()
    models = [m for m in args.models.split(",") if m]
    batches = [int(b) for b in args.batch.split(",") if b]
    load_before = os.getloadavg()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    log(f"load average before: {load_before}")
    limit_before = measure_fma_peak(threads)
    log(f"fp32 limit before: {limit_before}")
    default = best_backend()
    log(f"megzoo's default backend here (backend='auto'): {default}")
    modes = (() if args.no_eager else ("eager",)) + (() if args.no_lite else ("lite",)) + (
        "onnxruntime", "ort_alone") + (("onnxruntime_untamed",) if args.poller_check else ())
    if args.int8:
        modes += ("onnxruntime_int8",) + (() if args.no_lite else ("lite_int8",))
    if args.openvino:
        modes += ("openvino",) + (("openvino_int8",) if args.int8 else ())
    torch_modes = [m for m in args.torch_modes.split(",") if m] if args.torch_python else []
    if args.int8 and args.torch_python:
        torch_modes += [m for m in ("int8", "int8_jit") if m not in torch_modes]
    report, rows = None, []
    for name in models:  # megzoo and PyTorch back to back per configuration, so drifting load hits both alike
        gmacs = get_model_entry(name).gmacs * (args.input_size / 224) ** 2
        for batch in batches:
            part = run_benchmark([name], [batch], threads=threads, input_size=args.input_size, modes=modes,
                                 peak_gflops=args.peak_gflops or limit_before.get("gflops"), measure_peak=False,
                                 repeats=args.repeats, min_repeats=args.min_repeats, warmup=args.warmup,
                                 time_budget=args.time_budget, layout=args.layout, cold=args.cold,
                                 timeout=args.timeout, split_batch=args.split_batch,
                                 micro_batch=parse_micro_batch(args.micro_batch), log=log)
            if report is None:
                report = {**part, "results": [], "compile": [], "int8": []}
            report["compile"] += part["compile"]
            report["int8"] += part["int8"]
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
    limit_after = measure_fma_peak(threads)
    log(f"fp32 limit after: {limit_after}")
    report["fma_limit"] = {"before": limit_before, "after": limit_after}
    limit = args.peak_gflops or max(limit_before.get("gflops") or 0, limit_after.get("gflops") or 0) or None
    report["machine"]["isa"] = (f"measured: {limit_before.get('how')}, best of before/after the run"
                                if not args.peak_gflops and limit else report["machine"]["isa"])
    report["machine"]["peak_gflops"] = limit or report["machine"]["peak_gflops"]
    for row in rows:  # every % against the same limit: the better of the two measurements
        if row.get("gflops") and limit:
            row["peak_fraction"] = row["gflops"] / (limit * row["threads"] / report["machine"]["cores"])
    report["default_backend"] = default
    report["load_average"] = {"before": list(load_before), "after": list(os.getloadavg())}
    log(f"load average after: {report['load_average']['after']}")

    summary = []
    default_mode = default  # each backend's main benchmark mode is named after it
    for name in models:
        for batch in batches:
            sel = [r for r in rows if r["model"] == name and r["batch"] == batch and not r.get("error")]
            by_mode = {r["mode"]: r for r in sel}
            ips = lambda mode: by_mode[mode]["images_per_s"] if mode in by_mode else None  # noqa: E731
            torch_rows = [r for r in sel if r["mode"].startswith("torch_") and not r["mode"].startswith("torch_int8")]
            best = max(torch_rows, key=lambda r: r["images_per_s"], default=None)  # fp32 against fp32
            best_int8 = max((r for r in sel if r["mode"].startswith("torch_int8")), key=lambda r: r["images_per_s"],
                            default=None)
            mine = by_mode.get(default_mode)
            int8 = ips("onnxruntime_int8")
            summary.append({
                "model": name, "batch": batch, "megengine_eager": ips("eager"), "megzoo_lite": ips("lite"),
                "megzoo_onnxruntime": ips("onnxruntime"), "ort_alone": ips("ort_alone"),
                "onnxruntime_untamed": ips("onnxruntime_untamed"), "default_backend": default,
                "torch_eager": ips("torch_eager"),
                "torch_best": best and best["images_per_s"], "torch_best_mode": best and best["mode"][6:],
                "ratio_default_vs_torch_best": mine and best and mine["images_per_s"] / best["images_per_s"],
                "ratio_lite_vs_torch_best": ips("lite") and best and ips("lite") / best["images_per_s"],
                "ratio_in_process_vs_alone": ips("onnxruntime") and ips("ort_alone") and
                ips("onnxruntime") / ips("ort_alone"),
                "default_limit_fraction": mine and mine.get("peak_fraction"),
                "megzoo_int8": int8, "megzoo_lite_int8": ips("lite_int8"),
                "torch_int8_best": best_int8 and best_int8["images_per_s"],
                "torch_int8_best_mode": best_int8 and best_int8["mode"][6:],
                "ratio_int8_vs_torch_int8_best": int8 and best_int8 and int8 / best_int8["images_per_s"],
                "ratio_int8_vs_fp32": int8 and ips("onnxruntime") and int8 / ips("onnxruntime"),
                "megzoo_openvino": ips("openvino"), "megzoo_openvino_int8": ips("openvino_int8"),
                "peak_mib": {r["mode"]: round(r["peak_rss_mib"]) for r in sel},
            })
    report["summary"] = summary
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")

    print(format_table({**report, "results": [r for r in rows if not r["mode"].startswith("torch_")]}))
    for r in rows:
        if r["mode"].startswith("torch_"):
            if r.get("error"):
                print(f"{r['model']:<10} {r['batch']:>5} {r['mode']:<19} error: {r['error']}")
            else:
                print(f"{r['model']:<10} {r['batch']:>5} {r['mode']:<19} {r['threads']:>3} {r['images_per_s']:>8.2f} "
                      f"{r['latency_p50_ms']:>9.1f} {r['latency_p90_ms']:>9.1f} {r['peak_rss_mib']:>9.0f} "
                      f"{100 * r['peak_fraction']:>6.1f}%")
    fmt = lambda v, spec=".1f": "-" if v is None else format(v, spec)  # noqa: E731
    header = ["model", "batch", "MegEngine eager", "megzoo Lite", "megzoo ONNX Runtime", "ORT alone",
              "PyTorch fp32 best (mode)", f"default ({default}) / PyTorch best", "default % of limit",
              "ORT in megzoo / alone"]
    if args.poller_check:
        header.append("ORT without poller_yields")
    if args.int8:
        header += ["megzoo int8 (ORT)", "megzoo Lite int8", "PyTorch int8 best (mode)",
                   "megzoo int8 / PyTorch int8 best", "int8 / fp32 (ORT)"]
    if args.openvino:
        header += ["OpenVINO fp32", "OpenVINO / ORT fp32"]
        header += ["OpenVINO int8", "OpenVINO / ORT int8"] if args.int8 else []
    print(f"\nfp32 limit: {report['machine']['peak_gflops']} GFLOP/s ({report['machine']['isa']})")
    print("\n| " + " | ".join(header) + " |" if args.markdown else "\n" + "  ".join(header))
    if args.markdown:
        print("|---|---:|" + "---:|" * (len(header) - 2))
    for s_ in summary:
        cells = [s_["model"], str(s_["batch"]), fmt(s_["megengine_eager"]), fmt(s_["megzoo_lite"]),
                 fmt(s_["megzoo_onnxruntime"]), fmt(s_["ort_alone"]),
                 f"{fmt(s_['torch_best'])} ({s_['torch_best_mode'] or '-'})",
                 fmt(s_["ratio_default_vs_torch_best"], ".2f"),
                 fmt(s_["default_limit_fraction"] and 100 * s_["default_limit_fraction"], ".0f") + "%",
                 fmt(s_["ratio_in_process_vs_alone"], ".2f")]
        if args.poller_check:
            cells.append(fmt(s_["onnxruntime_untamed"]))
        if args.int8:
            cells += [fmt(s_["megzoo_int8"]), fmt(s_["megzoo_lite_int8"]),
                      f"{fmt(s_['torch_int8_best'])} ({s_['torch_int8_best_mode'] or '-'})",
                      fmt(s_["ratio_int8_vs_torch_int8_best"], ".2f"), fmt(s_["ratio_int8_vs_fp32"], ".2f")]
        if args.openvino:
            ov, ort = s_["megzoo_openvino"], s_["megzoo_onnxruntime"]
            cells += [fmt(ov), fmt(ov and ort and ov / ort, ".2f")]
            if args.int8:
                ov8, ort8 = s_["megzoo_openvino_int8"], s_["megzoo_int8"]
                cells += [fmt(ov8), fmt(ov8 and ort8 and ov8 / ort8, ".2f")]
        print("| " + " | ".join(cells) + " |" if args.markdown else "  ".join(cells))
    if args.int8 and args.json:
        print(f"\nint8 in {args.json}: rows onnxruntime_int8, lite_int8, torch_int8, torch_int8_jit; report['int8'] "
              "(quantize_s, compile_s); summary keys megzoo_int8, megzoo_lite_int8, torch_int8_best, "
              "torch_int8_best_mode, ratio_int8_vs_torch_int8_best, ratio_int8_vs_fp32")
    print(f"\nload average before {tuple(round(v, 2) for v in load_before)}, "
          f"after {tuple(round(v, 2) for v in report['load_average']['after'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
