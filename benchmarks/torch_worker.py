"""PyTorch side of ``benchmarks/bench_inference.py``: one model, batch and mode per process.

Run with a Python that has torch and torchvision (not megzoo's):

    /tmp/tvenv/bin/python benchmarks/torch_worker.py '{"model": "resnet50", "batch": 1, "mode": "eager", ...}'

Modes: ``eager`` (NCHW, inference_mode), ``channels_last`` (NHWC memory format), ``jit``
(``torch.jit.trace`` + ``torch.jit.freeze``, channels_last when it helps is left to the caller);
``int8`` (``torch.ao.quantization`` FX graph mode, the ``x86`` backend and its default qconfig
mapping: per-channel weights, histogram activation observers, calibrated on 2 random batches)
and ``int8_jit`` (that model traced and frozen); ``bf16`` (the eager model, channels_last, called
under ``torch.autocast("cpu", dtype=torch.bfloat16)``) and ``bf16_jit`` (traced and frozen under
autocast, so the bf16 casts are in the graph, and called under it). The bf16 rows' ``output_dtype``
shows that bf16 ran: PyTorch runs it on a CPU without BF16 arithmetic too, converting in software
(bench_inference.py records which kind of CPU it was).
Prints one line ``@@RESULT@@{json}`` with images/s (median), p50/p90 latency and peak RSS.
"""
import contextlib
import importlib.util
import json
import sys
from pathlib import Path

# megzoo's own timing code, loaded by path (this Python has torch, not megzoo): both sides of the
# comparison are timed alike
_spec = importlib.util.spec_from_file_location(
    "megzoo_bench_worker", Path(__file__).resolve().parents[1] / "megzoo" / "bench_worker.py")
bench_worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_worker)

MODES = ("eager", "channels_last", "jit", "jit_channels_last", "int8", "int8_jit", "bf16", "bf16_jit")


def main(cfg):
    import torch
    import torchvision

    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    model = getattr(torchvision.models, cfg["model"])(weights=None).eval()
    shape = (cfg["batch"], 3, cfg["input_size"], cfg["input_size"])
    x = torch.randn(shape)
    mode = cfg["mode"]
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    if mode.startswith("int8"):
        model = _int8(torch, model, x, mode == "int8_jit")
    bf16 = mode.startswith("bf16")
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        if mode in ("channels_last", "jit_channels_last") or bf16:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        if mode.startswith("jit") or mode == "bf16_jit":
            model = torch.jit.freeze(torch.jit.trace(model, x))

        def fn():
            model(x)

        result = bench_worker.measure(fn, cfg)
        extra = {"output_dtype": str(model(x).dtype)} if bf16 else {}
    return {"model": cfg["model"], "batch": cfg["batch"], "input_size": cfg["input_size"], "mode": f"torch_{mode}",
            "threads": torch.get_num_threads(), **result, "torch_version": torch.__version__, **extra}


def _int8(torch, model, x, jit: bool):
    """``model`` quantized by PyTorch's FX graph mode for the x86 backend (calibrated on random
    batches: speed only)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    prepared = prepare_fx(model, get_default_qconfig_mapping("x86"), (x,))
    with torch.inference_mode():
        for _ in range(2):
            prepared(torch.randn(x.shape))
    model = convert_fx(prepared)
    if jit:
        with torch.inference_mode():
            model = torch.jit.freeze(torch.jit.trace(model, x))
    return model


if __name__ == "__main__":
    print("@@RESULT@@" + json.dumps(main(json.loads(sys.argv[1]))), flush=True)
