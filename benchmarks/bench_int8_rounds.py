"""megzoo int8 against PyTorch int8, interleaved: several rounds, each measuring both back to back.

This machine is shared and noisy (the same configuration measured 51-75 images/s in one
afternoon), so a single pair of figures decides nothing. Each round runs, per (model, batch):
megzoo's default int8 path (``onnxruntime_int8``: megzoo.quantize + megzoo.compile, ONNX
Runtime on the int8 QDQ graph), megzoo's fp32 default (``onnxruntime``) and PyTorch's int8
(``torch.ao.quantization`` FX, x86 backend, traced and frozen: ``int8_jit``, its faster form
here), each in a fresh process. Printed: the median and range over rounds of each, and of the
per-round ratios int8 / PyTorch int8 and int8 / fp32. Usage::

    .venv/bin/python benchmarks/bench_int8_rounds.py --torch-python /tmp/tvenv/bin/python [--rounds 5]
"""
import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megzoo.benchmark import run_worker  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import run_torch  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,resnet50")
    parser.add_argument("--batch", default="1,16")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--torch-python", required=True)
    parser.add_argument("--torch-mode", default="int8_jit")
    parser.add_argument("--time-budget", type=float, default=6.0)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    base = {"input_size": 224, "threads": args.threads, "warmup": 2, "min_repeats": 3, "repeats": 30,
            "time_budget": args.time_budget, "algo": "heuristic"}
    configs = [(m, int(b)) for m in args.models.split(",") for b in args.batch.split(",")]
    figures = {c: {"int8": [], "fp32": [], "torch_int8": []} for c in configs}
    print(f"load average at start {os.getloadavg()}", flush=True)
    for r in range(args.rounds):
        for model, batch in configs:
            cfg = {**base, "model": model, "batch": batch}
            row = {"int8": run_worker({**cfg, "mode": "onnxruntime_int8"}, 600),
                   "fp32": run_worker({**cfg, "mode": "onnxruntime"}, 600),
                   "torch_int8": run_torch(args.torch_python, {**cfg, "mode": args.torch_mode}, 600)}
            for key, result in row.items():
                if result.get("error"):
                    print(f"{model} b{batch} {key}: {result['error']}", file=sys.stderr)
                    continue
                figures[(model, batch)][key].append(result["images_per_s"])
            line = "  ".join(f"{k} {v[-1]:.1f}" for k, v in figures[(model, batch)].items() if v)
            print(f"round {r + 1}: {model} b{batch}: {line}  (load {os.getloadavg()[0]:.2f})", flush=True)
    print(f"load average at end {os.getloadavg()}")
    print(f"\n{'model':<10} {'batch':>5} {'int8':>16} {'fp32':>16} {'PyTorch ' + args.torch_mode:>22} "
          f"{'int8/PyTorch':>18} {'int8/fp32':>16}")
    summary = []
    for (model, batch), f in figures.items():
        n = min(len(v) for v in f.values())
        if n == 0:
            continue
        vs_torch = [a / b for a, b in zip(f["int8"], f["torch_int8"])]
        vs_fp32 = [a / b for a, b in zip(f["int8"], f["fp32"])]

        def cell(values, digits=1):
            return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"

        print(f"{model:<10} {batch:>5} {cell(f['int8']):>16} {cell(f['fp32']):>16} {cell(f['torch_int8']):>22} "
              f"{cell(vs_torch, 2):>18} {cell(vs_fp32, 2):>16}")
        summary.append({"model": model, "batch": batch, **f, "ratio_vs_torch_int8": vs_torch, "ratio_vs_fp32": vs_fp32})
    if args.json:
        Path(args.json).write_text(json.dumps({"rounds": args.rounds, "torch_mode": args.torch_mode,
                                               "results": summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
