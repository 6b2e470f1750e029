"""Where a CPU training step's time goes, by kind of work: megzoo's trainer path and PyTorch eager.

    .venv/bin/python benchmarks/profile_training.py [--archs resnet18,resnet50] [--size 224]
        [--batch-size 16] [--steps 2] [--warmup 1] [--path fused|per-conv]
        [--torch-python /tmp/tvenv/bin/python] [--json FILE]

megzoo side (a fresh process, what ``megzoo train`` does on a CPU: ``multithread<T>:0``,
``fast_conv.enable(model, forward="blas")`` and, with ``--path fused`` (the default, as
``megzoo train``), ``fused_blocks.enable(model)``, SGD with momentum and weight decay, MegEngine's
poller thread under ``megzoo.device.poller_yields()``): MegEngine runs
synchronously (``megengine.config.async_level = 0``) so that wall-clock timers around Python
calls measure the work inside them; each of megzoo's host pieces is wrapped with an exclusive
timer (a piece's time excludes the pieces it calls).

``--path fused`` (residual blocks whole on channels-last host arrays, ``megzoo.train.cpu_engine.kernels``):

* ``im2col``, ``GEMM forward`` / ``GEMM data grad`` / ``GEMM weight grad`` as below (the patches of a
  convolution computed by blocks, ``host_kernels.BlockedPatches``, are formed inside the GEMM timers,
  and so is the col2im of a strided data gradient: each core forms or sums a block as it multiplies it);
* ``BatchNorm forward`` / ``BatchNorm backward`` (ReLU masks included), ``max-pool`` (both passes);
* ``host plan rest``: layout changes at the plan's ends, residual adds, Tensor conversions;
* ``other forward`` / ``other backward`` / ``optimizer``: what MegEngine still does (head, loss, SGD).

``--path per-conv`` (the trainer before the fused blocks: only the convolutions on the host):

* ``im2col`` / ``col2im``: the NumPy copies that turn images into patch matrices and back;
* ``GEMM forward`` / ``GEMM data grad`` / ``GEMM weight grad``: the BLAS products;
* ``conv conversions``: the rest of the convolution Function (``Tensor.numpy()``, ``Tensor(...)``);
* ``BatchNorm forward``: ``BatchNorm2d.forward``;
* ``other forward``: ReLU, pooling, residual adds, the FC layer, the loss and Python dispatch;
* ``other backward``: MegEngine's autodiff outside the convolutions (BN, ReLU, pooling, adds, FC
  backward, gradient accumulation);
* ``optimizer``: ``SGD.step()`` and ``clear_grad()``.

A plain timed step (asynchronous, as in training) is given beside the profiled one. The data
loading of one batch (``megzoo.transforms.train_transform`` on decoded 500x375 JPEGs, one thread)
is timed apart: the trainer's workers overlap it with the step, on the same cores.

PyTorch side (``--torch-python``, a Python with torch and torchvision): ``torch.profiler`` on the
same step of torchvision's model, self CPU time per operator grouped into the same kinds by
name and by the range it runs in (``forward``, ``backward``, ``optimizer``: everything inside
``opt.step()``); PyTorch's convolution backward computes the data and weight gradients together.

The load average is printed before and after; only figures from one run compare.
"""
import argparse
import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))
from bench_training import seconds_per_step  # noqa: E402  (stdlib only: both Pythons import it)


def cores() -> int:
    return len(os.sched_getaffinity(0))


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


# -- megzoo worker -------------------------------------------------------------------------------

class Timers:
    """Exclusive wall-clock seconds per label: a wrapped call's time excludes wrapped calls inside it."""

    def __init__(self):
        self.seconds = collections.Counter()
        self.stack = []  # [label, seconds of wrapped children]

    def wrap(self, fn, label):
        def timed(*args, **kwargs):
            lab = label(args) if callable(label) else label
            self.stack.append([lab, 0.0])
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                total = time.perf_counter() - start
                _, children = self.stack.pop()
                self.seconds[lab] += total - children
                if self.stack:
                    self.stack[-1][1] += total
        return timed


def megzoo_worker(arch: str, size: int, batch: int, steps: int, warmup: int, path: str = "fused") -> dict:
    import numpy as np

    sys.path.insert(0, str(ROOT))
    import megengine
    import megengine.functional as F
    import megengine.optimizer as optim
    from megengine.autodiff import GradManager

    from megzoo.device import quiet_stderr

    with quiet_stderr():
        megengine.is_cuda_available()
    threads = cores()
    megengine.set_default_device(f"multithread{threads}:0" if threads > 1 else "cpu0")
    import megzoo
    from megzoo.train.cpu_engine import conv as fast_conv
    from megzoo.train.optim import inplace_update

    model = megzoo.get_model(arch)
    model.train()
    fast_conv.enable(model, forward="blas")
    if path == "fused":
        from megzoo.train.cpu_engine import blocks as fused_blocks

        fused_blocks.enable(model)
    gm = GradManager().attach(model.parameters())
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    rng = np.random.RandomState(0)
    images = rng.standard_normal((batch, 3, size, size)).astype("float32")
    labels = rng.randint(0, 1000, batch).astype("int32")
    phase = {"now": "forward"}

    def step(t=None):
        t = t or (lambda name, fn: fn())
        with gm:
            phase["now"] = "forward"
            loss = t("other forward", lambda: F.nn.cross_entropy(model(megengine.Tensor(images)),
                                                               megengine.Tensor(labels)))
            phase["now"] = "backward"
            t("other backward", lambda: gm.backward(loss))
        with inplace_update():  # as `megzoo train` updates
            t("optimizer", lambda: opt.step().clear_grad())
        return loss.item()

    from megzoo.device import poller_yields

    with poller_yields():
        return profile_steps(step, phase, steps, warmup, batch, size, path)


def wrap_fused(timers: Timers, phase: dict) -> None:
    """Exclusive timers on the fused path's host kernels (``--path fused``)."""
    from megzoo.train.cpu_engine import blocks as fused_blocks
    from megzoo.train.cpu_engine import kernels as hk

    gemm = {"forward": "GEMM forward", "backward": "GEMM data grad"}  # a stride-1 data grad is a convolution
    for name, label in [("conv_forward", lambda args: gemm[phase["now"]]), ("conv_input_grad", "GEMM data grad"),
                        ("conv_weight_grad", "GEMM weight grad"), ("bn_forward", "BatchNorm forward"),
                        ("bn_backward", "BatchNorm backward"), ("maxpool_forward", "max-pool"),
                        ("maxpool_backward", "max-pool")]:
        timed = timers.wrap(getattr(hk, name), label)
        setattr(hk, name, timed)
        setattr(fused_blocks, name, timed)  # fused_blocks imported the names
    hk._im2col = timers.wrap(hk._im2col, "im2col")
    hk.im2col_nchw = timers.wrap(hk.im2col_nchw, "im2col")
    cls = fused_blocks._PlanFunction
    cls.forward = timers.wrap(cls.forward, "host plan rest")
    cls.backward = timers.wrap(cls.backward, "host plan rest")


def profile_steps(step, phase: dict, steps: int, warmup: int, batch: int, size: int, path: str = "fused") -> dict:
    """Plain and profiled seconds per ``step()``, the profiled ones by kind (module docstring)."""
    import megengine
    import megengine.module as M

    from megzoo.train.cpu_engine import conv as fast_conv

    plain = seconds_per_step(step, warmup, steps)

    timers = Timers()
    if path == "fused":
        wrap_fused(timers, phase)
    gemm = {"forward": "GEMM forward", "backward": "GEMM data grad"}
    fast_conv.im2col_nchw = timers.wrap(fast_conv.im2col_nchw, "im2col")
    fast_conv._np_col2im = timers.wrap(fast_conv._np_col2im, "col2im")
    fast_conv._np_matmul_nb = timers.wrap(fast_conv._np_matmul_nb, lambda args: gemm[phase["now"]])
    fast_conv.blas_weight_grad = timers.wrap(fast_conv.blas_weight_grad, "GEMM weight grad")
    cls = fast_conv._Conv2dFunction
    cls.forward = timers.wrap(cls.forward, "conv conversions")
    cls.backward = timers.wrap(cls.backward, "conv conversions")
    M.BatchNorm2d.forward = timers.wrap(M.BatchNorm2d.forward, "BatchNorm forward")
    megengine.config.async_level = 0
    step(lambda name, fn: timers.wrap(fn, name)())  # warm-up under the timers
    timers.seconds.clear()
    start = time.perf_counter()
    for _ in range(steps):
        step(lambda name, fn: timers.wrap(fn, name)())
    profiled = (time.perf_counter() - start) / steps
    return {"seconds_per_step": plain, "profiled_seconds_per_step": profiled,
            "kinds": {k: v / steps for k, v in timers.seconds.items()}, "data_loading": data_loading(batch, size)}


def data_loading(batch: int, size: int) -> float:
    """Seconds to decode ``batch`` 500x375 JPEGs and apply megzoo's training transform, one thread."""
    import cv2
    import numpy as np

    from megzoo.transforms import train_transform

    rng = np.random.RandomState(0)
    base = cv2.GaussianBlur(rng.randint(0, 256, (375, 500, 3)).astype(np.uint8), (0, 0), 3)
    blobs = [cv2.imencode(".jpg", np.roll(base, i * 7, axis=1))[1] for i in range(batch)]
    transform = train_transform(input_size=size)
    for blob in blobs[:2]:
        transform.apply(cv2.imdecode(blob, cv2.IMREAD_COLOR))
    start = time.perf_counter()
    for blob in blobs:
        transform.apply(cv2.imdecode(blob, cv2.IMREAD_COLOR))
    return time.perf_counter() - start


# -- PyTorch worker ------------------------------------------------------------------------------

TORCH_KINDS = [  # (kind, substrings of aten operator names), first match wins
    ("conv backward (data + weight)", ("convolution_backward",)),
    ("BatchNorm backward", ("batch_norm_backward",)),
    ("conv forward", ("convolution", "conv2d")),
    ("BatchNorm forward", ("batch_norm",)),
]


def torch_kind(name: str, root: str) -> str:
    """The kind of a PyTorch operator event, given the name of its outermost enclosing range."""
    if root == "optimizer":
        return "optimizer"
    kind = next((k for k, keys in TORCH_KINDS if any(s in name for s in keys)), None)
    if kind is not None:
        return kind
    return "other forward" if root == "forward" else "other backward"


def torch_worker(arch: str, size: int, batch: int, steps: int, warmup: int) -> dict:
    import torch
    import torchvision
    from torch.profiler import ProfilerActivity, profile, record_function

    torch.set_num_threads(cores())
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    images, labels = torch.randn(batch, 3, size, size), torch.randint(0, 1000, (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        with record_function("forward"):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        with record_function("backward"):
            loss.backward()
        with record_function("optimizer"):
            opt.step()
        return loss.item()

    plain = seconds_per_step(step, warmup, steps)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        profiled = (time.perf_counter() - start) / steps
    kinds = collections.Counter()
    for event in prof.events():
        if event.name in ("forward", "backward", "optimizer"):
            continue
        root = event
        while root.cpu_parent is not None:
            root = root.cpu_parent
        kinds[torch_kind(event.name, root.name)] += event.self_cpu_time_total / 1e6 / steps
    return {"seconds_per_step": plain, "profiled_seconds_per_step": profiled, "kinds": dict(kinds),
            "torch": torch.__version__}


# -- driver --------------------------------------------------------------------------------------

def run(python: str, spec: dict) -> dict:
    proc = subprocess.run([python, str(HERE), "--worker", json.dumps(spec)], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=3600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        tail = " | ".join(line for line in proc.stderr.splitlines()[-3:])
        return {"error": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def table(name: str, result: dict) -> None:
    if "error" in result:
        print(f"  {name}: {result['error']}")
        return
    total = result["profiled_seconds_per_step"]
    print(f"  {name}: {result['seconds_per_step']:.2f} s/step timed plainly, {total:.2f} s/step profiled")
    for kind, seconds in sorted(result["kinds"].items(), key=lambda kv: -kv[1]):
        print(f"    {kind:<32} {seconds:7.3f} s  {100 * seconds / total:5.1f}%")
    if "data_loading" in result:
        print(f"    {'(data loading, one thread)':<32} {result['data_loading']:7.3f} s")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default="resnet18,resnet50")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--path", choices=("fused", "per-conv"), default="fused",
                   help="megzoo's trainer path: fused blocks (the default, as megzoo train) or per convolution")
    p.add_argument("--torch-python", default=None, help="a Python with torch and torchvision (default: no PyTorch)")
    p.add_argument("--json", default=None)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        fn = torch_worker if spec.pop("side") == "pytorch" else megzoo_worker
        if fn is torch_worker:
            spec.pop("path", None)
        print(json.dumps(fn(**spec)))
        return 0
    print(f"{cores()} cores; load average before: {load()}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}",
          flush=True)
    results = {}
    for arch in args.archs.split(","):
        spec = {"arch": arch, "size": args.size, "batch": args.batch_size, "steps": args.steps, "warmup": args.warmup}
        print(f"{arch}, batch {args.batch_size}, {args.size} px, {args.steps} steps after {args.warmup} warm-up:")
        results[arch] = {"megzoo": run(sys.executable, dict(spec, side="megzoo", path=args.path))}
        table("megzoo", results[arch]["megzoo"])
        if args.torch_python:
            results[arch]["pytorch"] = run(args.torch_python, dict(spec, side="pytorch"))
            table("pytorch", results[arch]["pytorch"])
    print(f"load average after: {load()}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
