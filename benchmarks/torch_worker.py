"""PyTorch side of ``benchmarks/bench_inference.py``: one model, batch and mode per process.

Run with a Python that has torch and torchvision (not megzoo's):

    /tmp/tvenv/bin/python benchmarks/torch_worker.py '{"model": "resnet50", "batch": 1, "mode": "eager", ...}'

Modes: ``eager`` (NCHW, inference_mode), ``channels_last`` (NHWC memory format), ``jit``
(``torch.jit.trace`` + ``torch.jit.freeze``, channels_last when it helps is left to the caller).
Prints one line ``@@RESULT@@{json}`` with images/s (median), p50/p90 latency and peak RSS.
"""
import json
import math
import sys
import time


def _percentile(values, q):
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _vm_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def main(cfg):
    import torch
    import torchvision

    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    model = getattr(torchvision.models, cfg["model"])(weights=None).eval()
    shape = (cfg["batch"], 3, cfg["input_size"], cfg["input_size"])
    x = torch.randn(shape)
    mode = cfg["mode"]
    with torch.inference_mode():
        if mode in ("channels_last", "jit_channels_last"):
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        if mode.startswith("jit"):
            model = torch.jit.freeze(torch.jit.trace(model, x))
        elif mode not in ("eager", "channels_last"):
            raise ValueError(f"unknown mode {mode!r}")

        def fn():
            model(x)

        _reset_peak()
        for _ in range(cfg["warmup"]):
            fn()
        times = []
        start = time.perf_counter()
        while len(times) < cfg["repeats"]:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
            if len(times) >= cfg["min_repeats"] and time.perf_counter() - start > cfg["time_budget"]:
                break
    median = _percentile(times, 0.5)
    return {"model": cfg["model"], "batch": cfg["batch"], "input_size": cfg["input_size"], "mode": f"torch_{mode}",
            "threads": torch.get_num_threads(), "images_per_s": cfg["batch"] / median,
            "latency_p50_ms": median * 1e3, "latency_p90_ms": _percentile(times, 0.9) * 1e3,
            "repeats": len(times), "peak_rss_mib": _vm_kib("VmHWM") / 1024,
            "torch_version": torch.__version__}


if __name__ == "__main__":
    print("@@RESULT@@" + json.dumps(main(json.loads(sys.argv[1]))), flush=True)
