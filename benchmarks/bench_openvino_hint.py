"""Which OpenVINO ``PERFORMANCE_HINT`` the openvino backend should set: LATENCY or THROUGHPUT, measured.

megzoo's compiled models are called one batch at a time (``compiled(x)``), from one thread or a
few. For each model and batch size this times, in one process, OpenVINO's CPU plugin compiled from
megzoo's ONNX graph (random weights, 224 px, fp32 unless ``--int8``) with:

* ``LATENCY``: one stream, every thread on the one request (what the backend sets);
* ``THROUGHPUT``, one request at a time: what a megzoo call gets under that hint;
* ``THROUGHPUT``, ``optimal_number_of_infer_requests`` requests in flight (``AsyncInferQueue``): the
  aggregate a server feeding it concurrently would get.

Rounds are interleaved (round 1 of every variant, then round 2 ...); each round runs for
``--seconds``; the table gives the median images/s of the rounds and their spread. The 1-minute
load average is printed at the start of each round; a round that starts above 0.5 is marked
disturbed. Nothing else may run meanwhile (docs/performance.md).

    .venv/bin/python benchmarks/bench_openvino_hint.py --models resnet18,resnet50 --batch 1,16 \
        --rounds 3 --json benchmarks/results/bench_openvino_hint.json
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_inference import is_disturbed, spread  # noqa: E402  (one copy of the rounds' steps)

VARIANTS = ("latency", "throughput_1_request", "throughput_all_requests")


def onnx_bytes(name: str, int8: bool) -> bytes:
    """megzoo's ONNX graph of ``name`` (random weights; int8: quantized on random batches)."""
    import megzoo
    from megzoo.inference.ort_compiled import onnx_model

    model = megzoo.get_model(name)
    model.eval()
    if int8:
        rng = np.random.RandomState(1)
        model = megzoo.quantize(model, [rng.standard_normal((8, 3, 224, 224)).astype(np.float32)], progress=False)
    return onnx_model(model, (1, 3, 224, 224), dynamic_batch=True, fuse=True, check=False).SerializeToString()


def compile_variant(core, graph: bytes, hint: str, threads: int):
    return core.compile_model(core.read_model(graph), "CPU", {
        "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": "f32"})


def time_one_request(compiled, x: np.ndarray, seconds: float) -> float:
    """Images/s of synchronous calls, one at a time, for ``seconds``."""
    request = compiled.create_infer_request()
    request.infer({0: x})
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        request.infer({0: x})
        done += x.shape[0]
    return done / (time.perf_counter() - start)


def time_all_requests(compiled, x: np.ndarray, seconds: float) -> float:
    """Images/s with the plugin's optimal number of requests kept in flight, for ``seconds``."""
    import openvino as ov

    queue = ov.AsyncInferQueue(compiled, compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    for _ in range(len(queue)):
        queue.start_async({0: x})
    queue.wait_all()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        queue.start_async({0: x})
        done += x.shape[0]
    queue.wait_all()
    return done / (time.perf_counter() - start)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet18,resnet50")
    p.add_argument("--batch", default="1,16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=6.0, help="timed seconds per variant and round")
    p.add_argument("--int8", action="store_true", help="megzoo's QDQ int8 graph instead of fp32")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    import openvino as ov

    core = ov.Core()
    models = [m for m in args.models.split(",") if m]
    batches = [int(b) for b in args.batch.split(",") if b]
    configs = {}
    for name in models:
        graph = onnx_bytes(name, args.int8)
        lat = compile_variant(core, graph, "LATENCY", args.threads)
        thr = compile_variant(core, graph, "THROUGHPUT", args.threads)
        streams = {"latency": lat.get_property("NUM_STREAMS"), "throughput": thr.get_property("NUM_STREAMS"),
                   "throughput_requests": thr.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")}
        print(f"{name}: streams {streams}", flush=True)
        for batch in batches:
            configs[(name, batch)] = (lat, thr, streams)
    figures = {(n, b, v): [] for (n, b) in configs for v in VARIANTS}
    starts = []
    for r in range(args.rounds):
        load = os.getloadavg()[0]
        starts.append({"round": r + 1, "load_1min": round(load, 2), "disturbed": is_disturbed(load)})
        print(f"round {r + 1}: load average {load:.2f}{' (disturbed)' if is_disturbed(load) else ''}", flush=True)
        for (name, batch), (lat, thr, _) in configs.items():
            x = np.random.RandomState(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
            figures[(name, batch, "latency")].append(time_one_request(lat, x, args.seconds))
            figures[(name, batch, "throughput_1_request")].append(time_one_request(thr, x, args.seconds))
            figures[(name, batch, "throughput_all_requests")].append(time_all_requests(thr, x, args.seconds))
    rows = []
    print(f"\n{'model':<10} {'batch':>5} " + " ".join(f"{v:>26}" for v in VARIANTS) + "   (images/s: median [min-max])")
    for (name, batch), (_, _, streams) in configs.items():
        cells, row = [], {"model": name, "batch": batch, "streams": streams}
        for v in VARIANTS:
            runs = figures[(name, batch, v)]
            s = spread(runs)
            row[v] = {"median": round(s["median"], 2), "runs": [round(f, 2) for f in runs],
                      "spread_pct": round(s["spread_pct"], 1)}
            cells.append(f"{s['median']:8.1f} [{s['min']:6.1f}-{s['max']:6.1f}]")
        row["throughput_1_request_vs_latency"] = round(row["throughput_1_request"]["median"]
                                                       / row["latency"]["median"], 3)
        row["throughput_all_vs_latency"] = round(row["throughput_all_requests"]["median"] / row["latency"]["median"], 3)
        rows.append(row)
        print(f"{name:<10} {batch:>5} " + " ".join(f"{c:>26}" for c in cells))
    report = {"command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "date": time.strftime("%Y-%m-%d"),
              "openvino": ov.__version__, "threads": args.threads, "int8": args.int8, "rounds": starts, "rows": rows,
              "cpu": _cpu()}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _cpu() -> dict:
    from megzoo.host import cpu_info
    from megzoo.inference.backends.openvino import BF16_FLAGS

    info = cpu_info()
    return {"model_name": info["model_name"], "family": info["family"], "model": info.get("model"),
            "bf16": bool(set(BF16_FLAGS) & set(info["flags"])),
            "vnni": bool({"avx512_vnni", "avx_vnni"} & set(info["flags"]))}


if __name__ == "__main__":
    sys.exit(main())
