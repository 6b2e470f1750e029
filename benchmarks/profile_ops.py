"""Where a compiled model's time goes, per kind of operator, on 1 thread and on N threads.

    .venv/bin/python benchmarks/profile_ops.py --model resnet50 --batch 1 --threads 2

Exports the model as ``megzoo.compile`` would (fused, layout ``auto`` unless ``--layout``), then
in fresh processes (``--rounds`` per thread count, alternating, the fastest kept) loads it in
MegEngine Lite with profiled kernels (reading and writing megzoo's algorithm cache), times it,
and records MegEngine's per-operator profile (``LiteNetwork.enable_profile_performance``) of a
warm run on a second network, the kernels chosen being read from MegEngine's debug log. Operators are grouped by kind
(convolutions by kernel size and stride; the first convolution is the stem) and the table gives,
per group, milliseconds on 1 and on N threads, the speed-up from the extra threads, and GFLOP/s
on 1 thread (2 x MACs, MegEngine's own operation count). Only within-run ratios are meaningful:
the development VM's speed drifts between runs. It answers "which operators do not use the second
core", the question behind ResNet-50's batch-1 figure in benchmarks/results/inference-history.md.
"""
import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONV_TYPES = ("ConvBiasForward", "ConvolutionForward")
BENCH_WORKER_PY = Path(__file__).resolve().parents[1] / "megzoo" / "bench_worker.py"


def child(path: str, threads: int, batch: int, size: int, profile_json: str, cache: str) -> dict:
    """Load ``path`` as megzoo does on ``threads`` threads, twice: one network timed (10 runs after
    warm-up), one with MegEngine's profiler on (which slows every operator down a little) run
    twice, its kernel choices logged."""
    import importlib.util

    import numpy as np
    import megenginelite as lite

    # megzoo's Lite runtime loaded alone, as `megzoo benchmark` times it: importing the megzoo
    # package would import MegEngine's Python runtime, which routes MegEngine's log into Python's
    # logging and drops the debug lines naming the kernels
    spec = importlib.util.spec_from_file_location("megzoo_bench_worker", BENCH_WORKER_PY)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    runtime = worker.load_standalone()
    LiteNet = runtime.LiteNet

    runtime.use_cache_file(cache)
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    lite.set_log_level(lite.LiteLogLevel.DEBUG)  # MegEngine logs each operator's chosen kernel
    profiled = LiteNet(path, threads, "profile", None, operator_profile=profile_json)
    profiled.forward(x)
    lite.set_log_level(lite.LiteLogLevel.WARN)
    profiled.forward(x)  # the profile file keeps the last run: a warm one
    runtime.save_cache_file(cache)
    del profiled  # writes the profile file
    timed = LiteNet(path, threads, "profile", None)
    for _ in range(3):
        timed.forward(x)
    times = []
    for _ in range(10):
        start = time.perf_counter()
        timed.forward(x)
        times.append(time.perf_counter() - start)
    return {"median_ms": float(np.median(times)) * 1e3}


def conv_group(in_channels: int, weight_shape, stride: int) -> str:
    """'stem' (the convolution reading the image's channels; NCHW88 keeps its input NCHW) or
    'conv KxK sS'; ``weight_shape`` in NCHW (O, I, kh, kw), NCHW88 (O/8, I/8, kh, kw, 8, 8) or
    grouped (G, O, I, kh, kw[, 8, 8]) form."""
    if in_channels <= 4:
        return "stem"
    kh, kw = weight_shape[2:4] if len(weight_shape) in (4, 6) else weight_shape[-4:-2]
    return f"conv {kh}x{kw} s{stride}"


def group_of(opr_type: str, footprint: dict) -> str:
    """The group of a profiled operator: :func:`conv_group` for convolutions, else its type."""
    shapes = footprint.get("in_shapes") or []
    if opr_type not in CONV_TYPES or len(shapes) < 2:
        return opr_type
    return conv_group(shapes[0][1], shapes[1], footprint.get("param", {}).get("stride_h", 1))


ALGO_LINE = re.compile(r"(\w+)Forward: tensor layouts\(\{([^}]*)\} , \{([^}]*)\}.*-> \(\{([^}]*)\}.*algo=(\S+)")


def _dims(layout: str) -> list:
    return [int(d) for d in re.findall(r"(\d+)\(", layout)]


def read_algorithms(log: str) -> dict:
    """{group: {kernel names}} from MegEngine's debug log ("setup_algo ... algo=NAME" lines)."""
    algorithms = collections.defaultdict(set)
    for match in ALGO_LINE.finditer(log):
        kind, src, weight, dst, algo = match.groups()
        if kind not in ("ConvBias", "Convolution"):
            continue
        src, weight, dst = _dims(src), _dims(weight), _dims(dst)
        stride = max(1, round(src[2] / dst[2]))  # the log has no parameters: from the heights
        algorithms[conv_group(src[1], weight, stride)].add(algo.replace("CONVOLUTION_DEFAULT_", ""))
    return algorithms


def read_profile(path: str) -> dict:
    """{group: [milliseconds, flops, count]} from a Lite profile file."""
    data = json.loads(Path(path).read_text())
    profiler, operators = data["profiler"], data["graph_exec"]["operator"]
    groups = collections.defaultdict(lambda: [0.0, 0, 0])
    for opr_id, per_node in profiler["device"].items():
        footprint = profiler["opr_footprint"].get(opr_id, {})
        group = group_of(operators.get(opr_id, {}).get("type", "?"), footprint)
        for times in per_node.values():
            groups[group][0] += (times["end"] - times["start"]) * 1e3
        groups[group][1] += footprint.get("computation") or 0  # MegEngine counts FLOPs (2 x MACs)
        groups[group][2] += 1
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--layout", default="auto", help="auto | nchw | nchw88")
    parser.add_argument("--rounds", type=int, default=2, help="processes per thread count, alternating")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(child(**spec)))
        return

    import megzoo
    from megzoo.inference import algo_cache_file, dump_graph, resolve_layout

    layout = resolve_layout(args.layout)  # refused, with the reason, where it failed its probe here
    with tempfile.TemporaryDirectory(prefix="megzoo-profile-") as tmp:
        graph = os.path.join(tmp, "model.mge")
        dump_graph(megzoo.get_model(args.model), (1, 3, args.input_size, args.input_size), graph, layout=layout)
        runs = {}
        for attempt in range(args.rounds):  # alternate 1 / N threads; keep each one's fastest run
            for threads in (1, args.threads):
                spec = {"path": graph, "threads": threads, "batch": args.batch, "size": args.input_size,
                        "profile_json": os.path.join(tmp, f"profile-t{threads}-{attempt}.json"),
                        "cache": str(algo_cache_file(threads))}
                proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                                      capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    raise SystemExit(f"{threads}-thread run failed:\n{proc.stderr[-2000:]}")
                median_ms = json.loads(proc.stdout.strip().splitlines()[-1])["median_ms"]
                if threads not in runs or median_ms < runs[threads][0]:
                    runs[threads] = (median_ms, read_profile(spec["profile_json"]), read_algorithms(proc.stderr))

    (one_ms, one, _), (many_ms, many, algorithms) = runs[1], runs[args.threads]
    n = args.threads
    print(f"{args.model}, batch {args.batch}, {args.input_size} px, layout {layout}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"whole network (median of 10): 1 thread {one_ms:.1f} ms, {n} threads {many_ms:.1f} ms, "
          f"speed-up {one_ms / many_ms:.2f}x\n")
    print(f"{'operators':16} {'count':>5} {'ms, 1 thr':>10} {f'ms, {n} thr':>10} {'speed-up':>9} "
          f"{'share':>6} {'GFLOP/s 1 thr':>14}  kernels chosen on {n} threads")
    total_one = sum(v[0] for v in one.values())
    for group in sorted(one, key=lambda g: -one[g][0]):
        ms1, flops, count = one[group]
        ms_n = many.get(group, [float("nan")])[0]
        if ms1 < 0.05 and ms_n < 0.05:
            continue
        gflops = f"{flops / ms1 / 1e6:14.1f}" if flops and ms1 else f"{'':>14}"
        print(f"{group:16} {count:5d} {ms1:10.2f} {ms_n:10.2f} {ms1 / ms_n if ms_n else float('nan'):8.2f}x "
              f"{ms1 / total_one:6.1%}{gflops}  {', '.join(sorted(algorithms.get(group, ())))}")
    print(f"{'sum of operators':16} {'':5} {total_one:10.2f} {sum(v[0] for v in many.values()):10.2f}")


if __name__ == "__main__":
    main()
