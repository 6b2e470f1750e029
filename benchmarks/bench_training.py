"""CPU training speed: megzoo's trainer settings vs plain MegEngine vs PyTorch, images/s.

    .venv/bin/python benchmarks/bench_training.py [--archs resnet18,resnet50] [--sizes 224]
        [--batch-size 16] [--steps 3] [--warmup 1] [--configs plain,megzoo,pytorch]
        [--torch-python /tmp/tvenv/bin/python] [--json FILE]
    .venv/bin/python benchmarks/bench_training.py --layers [--archs resnet18] [--sizes 224]

Each figure is one training step (forward, cross-entropy, backward, SGD with momentum) on a
random batch, timed after ``--warmup`` steps and averaged over ``--steps``, in a fresh process.
Each row also gives that process's peak resident memory (``peak GB``, ``ru_maxrss``).
The ``megzoo*`` configurations update the weights as ``megzoo train`` does (MegEngine's in-place SGD
update, ``megzoo.train.optim.inplace_update``; since 2026-12-04: earlier figures used the plain one).
Configurations (``--configs``, comma-separated; ``all`` for every one):

* ``plain``: MegEngine as it comes: default CPU device (one thread), HEURISTIC algorithms;
* ``profile``: plain + ``set_execution_strategy("PROFILE")`` (the algorithm profiler);
* ``mt``: plain on the ``multithread<T>:0`` device (T = cores);
* ``fast-<method>``: megzoo's convolution backward (``swap``, ``gemm``, ``im2col`` from MegEngine
  operators, ``blas`` with NumPy's BLAS) on the single-thread CPU device, MegEngine's forward;
* ``megzoo-native-fwd``: ``multithread<T>:0`` + fast backward ``auto`` (BLAS), MegEngine's forward
  (``fast_conv.enable(model)``: outputs unchanged bit for bit);
* ``megzoo``: what ``megzoo train`` does on a CPU by default: ``multithread<T>:0``, fast backward
  ``auto`` and the BLAS training forward (``fast_conv.enable(model, forward="blas")``);
* ``megzoo-yield``: megzoo with MegEngine's ``CompNodeSync`` poller thread at the lowest priority
  meanwhile (``megzoo.device.poller_yields()``, as the compiled inference paths do);
* ``megzoo-fused``: megzoo-yield with each residual block (and the stem's conv + BN + ReLU) run
  on host arrays, BatchNorm/ReLU/add included (``megzoo.train.cpu_engine.blocks.enable(model)``);
* ``megzoo-profile``: megzoo + PROFILE;
* ``pytorch``: torchvision's model, eager, ``torch.set_num_threads(T)``, run with
  ``--torch-python`` (a Python with torch and torchvision; create one with
  ``python3.11 -m venv DIR && DIR/bin/pip install torch==2.14.1 torchvision==0.29.1``).

``--layers`` instead times, for every distinct convolution of the model, the forward pass, the
data gradient, MegEngine's own weight gradient and each megzoo formulation (ms, one thread),
which is how ``fast_conv.AUTO_METHOD`` was chosen.

The machine's load average is printed before and after: on a shared machine, figures taken
while other processes run are not reliable.
"""
import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
ALL_CONFIGS = ["plain", "profile", "mt", "fast-swap", "fast-gemm", "fast-im2col", "fast-blas", "megzoo-native-fwd",
               "megzoo", "megzoo-yield", "megzoo-fused", "megzoo-profile", "pytorch"]


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover
        return "?"


# -- workers (run in a fresh process) ------------------------------------------------------------

def megengine_worker(arch: str, size: int, batch: int, steps: int, warmup: int, config: str) -> dict:
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
    multithread = config in ("mt", "megzoo", "megzoo-native-fwd", "megzoo-yield", "megzoo-fused", "megzoo-profile")
    device = f"multithread{threads}:0" if multithread and threads > 1 else "cpu0"
    megengine.set_default_device(device)
    if config in ("profile", "megzoo-profile"):
        from megengine.functional.debug_param import set_execution_strategy

        set_execution_strategy("PROFILE")
    import megzoo
    from megzoo.train.cpu_engine import conv as fast_conv

    model = megzoo.get_model(arch)
    model.train()
    method = config[5:] if config.startswith("fast-") else "auto" if config.startswith("megzoo") else None
    if method:
        forward = "blas" if config in ("megzoo", "megzoo-yield", "megzoo-fused", "megzoo-profile") else "native"
        fast_conv.enable(model, method=method, forward=forward)
    if config == "megzoo-fused":
        from megzoo.train.cpu_engine import blocks as fused_blocks

        fused_blocks.enable(model)
    gm = GradManager().attach(model.parameters())
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    rng = np.random.RandomState(0)
    images = rng.standard_normal((batch, 3, size, size)).astype("float32")
    labels = rng.randint(0, 1000, batch).astype("int32")

    # megzoo's configurations update as `megzoo train` does: MegEngine's in-place SGD update
    from megzoo.train.optim import inplace_update

    update = inplace_update if config.startswith("megzoo") else contextlib.nullcontext

    def step():
        with gm:
            loss = F.nn.cross_entropy(model(megengine.Tensor(images)), megengine.Tensor(labels))
            gm.backward(loss)
        with update():
            opt.step().clear_grad()
        return loss.item()

    if config in ("megzoo-yield", "megzoo-fused"):
        from megzoo.device import poller_yields

        step()  # the poller exists from the first operator on
        with poller_yields():
            seconds = seconds_per_step(step, warmup, steps)
    else:
        seconds = seconds_per_step(step, warmup, steps)
    return {"device": device, "images_per_second": batch / seconds, "seconds_per_step": seconds,
            "peak_rss_gb": peak_rss_gb()}


def seconds_per_step(step, warmup: int, steps: int) -> float:
    """Mean wall time of ``step()`` over ``steps`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def torch_worker(arch: str, size: int, batch: int, steps: int, warmup: int) -> dict:
    import torch
    import torchvision

    threads = cores()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    images = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, 1000, (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        opt.step()
        return loss.item()

    seconds = seconds_per_step(step, warmup, steps)
    return {"device": f"cpu, {threads} threads, torch {torch.__version__}", "images_per_second": batch / seconds,
            "seconds_per_step": seconds, "peak_rss_gb": peak_rss_gb()}


def peak_rss_gb() -> float:
    """This worker process's peak resident memory so far, GB (Linux's ``ru_maxrss`` is in KB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class _Host:
    """A NumPy result posing as a tensor for the timing helper."""

    def __init__(self, array):
        self.array = array

    def numpy(self):
        return self.array


def layers_worker(arch: str, size: int, batch: int) -> list:
    import numpy as np

    sys.path.insert(0, str(ROOT))
    import megengine
    import megengine.functional as F
    import megengine.module as M
    from megengine.autodiff import GradManager

    from megzoo.device import quiet_stderr

    with quiet_stderr():
        megengine.is_cuda_available()
    megengine.set_default_device("cpu0")
    import megzoo
    from megzoo.train.cpu_engine import conv as fast_conv

    model = megzoo.get_model(arch)
    shapes = {}

    def hook(module, inputs, output):
        key = (tuple(inputs[0].shape), tuple(module.weight.shape), tuple(module.stride), tuple(module.padding),
               tuple(module.dilation), module.groups)
        shapes[key] = shapes.get(key, 0) + 1

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, M.Conv2d)]
    model.eval()
    model(megengine.Tensor(np.zeros((batch, 3, size, size), "float32")))
    for h in handles:
        h.remove()

    def best_ms(fn, repeat=2):
        fn().numpy()
        best = float("inf")
        for _ in range(repeat):
            t = time.perf_counter()
            fn().numpy()
            best = min(best, time.perf_counter() - t)
        return 1e3 * best

    rows = []
    rng = np.random.RandomState(0)
    for (xs, ws, s, p, d, g), count in shapes.items():
        x = megengine.Tensor(rng.standard_normal(xs).astype("float32"))
        w = megengine.Parameter(rng.standard_normal(ws).astype("float32"))
        y = F.conv2d(x, w, None, s, p, d, g)
        dy = megengine.Tensor(rng.standard_normal(y.shape).astype("float32"))

        def native():
            w.grad = None
            gm = GradManager().attach([w])
            with gm:
                gm.backward(F.conv2d(x, w, None, s, p, d, g), dy)
            return w.grad

        row = {"input": list(xs), "weight": list(ws), "stride": list(s), "padding": list(p), "groups": g,
               "count": count, "forward": best_ms(lambda: F.conv2d(x, w, None, s, p, d, g)),
               "data_grad": best_ms(lambda: fast_conv.conv2d_input_grad(dy, w, xs, s, p, d, g))}
        row["native_weight_grad"] = max(0.0, best_ms(native) - row["forward"])
        for method in ("swap", "gemm", "im2col", "blas"):
            row[method] = best_ms(lambda: fast_conv.conv2d_weight_grad(x, dy, ws, s, p, d, g, method))
        xn, dyn, wn = x.numpy(), dy.numpy(), w.numpy()
        oh, ow = dyn.shape[2], dyn.shape[3]
        row["blas_data_grad"] = best_ms(lambda: _Host(fast_conv.blas_input_grad(dyn, wn, xs, s, p, d, g)))
        row["blas_forward"] = best_ms(lambda: _Host(fast_conv.blas_conv2d(xn, wn, s, p, d, g, oh, ow)))
        row["auto_choice"] = fast_conv.AUTO_METHOD
        rows.append(row)
    return rows


# -- driver ---------------------------------------------------------------------------------------

def run_worker(python: str, args: list, timeout: float) -> dict:
    cmd = [python, str(HERE), "--worker", json.dumps(args)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{") or line.startswith("[")]
    if proc.returncode != 0 or not lines:
        tail = [line for line in proc.stderr.splitlines() if line.strip() and "cuda" not in line.lower()][-3:]
        return {"error": f"exit {proc.returncode}: {' | '.join(tail)}"}
    return json.loads(lines[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default="resnet18,resnet50")
    parser.add_argument("--sizes", default="224", help="input sizes, comma-separated (default 224)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--configs", default="plain,megzoo,pytorch",
                        help=f"comma-separated from {', '.join(ALL_CONFIGS)}, or all")
    parser.add_argument("--torch-python", default=os.environ.get("TORCH_PYTHON", "/tmp/tvenv/bin/python"))
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per measurement")
    parser.add_argument("--layers", action="store_true", help="per-convolution timings instead")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        spec = json.loads(args.worker)
        kind = spec.pop("kind")
        result = {"megengine": megengine_worker, "torch": torch_worker, "layers": layers_worker}[kind](**spec)
        print(json.dumps(result))
        return 0

    archs = [a for a in args.archs.split(",") if a]
    sizes = [int(s) for s in args.sizes.split(",") if s]
    print(f"{cores()} cores; load average before: {load()}", flush=True)
    results = []
    if args.layers:
        for arch in archs:
            for size in sizes:
                rows = run_worker(sys.executable, {"kind": "layers", "arch": arch, "size": size,
                                                   "batch": args.batch_size}, args.timeout)
                if isinstance(rows, dict):
                    print(f"{arch} {size}px: {rows['error']}")
                    continue
                print(f"\n{arch}, {size} px, batch {args.batch_size}: ms per call (one thread)")
                print("MegEngine: fwd, dgrad, wgrad; megzoo weight gradient: swap, gemm, im2col, blas; "
                      "BLAS data gradient and forward: b-dgrad, b-fwd")
                keys = ("forward", "data_grad", "native_weight_grad", "swap", "gemm", "im2col", "blas",
                        "blas_data_grad", "blas_forward")
                print(f"{'input':>16} {'weight':>14} {'s':>2} {'g':>2} {'n':>2} " + " ".join(
                    f"{h:>7}" for h in ("fwd", "dgrad", "wgrad", "swap", "gemm", "im2col", "blas", "b-dgrad",
                                        "b-fwd")) + "  auto")
                totals = {k: 0.0 for k in keys}
                for r in rows:
                    for k in totals:
                        totals[k] += r[k] * r["count"]
                    print(f"{'x'.join(map(str, r['input'])):>16} {'x'.join(map(str, r['weight'])):>14} "
                          f"{r['stride'][0]:>2} {r['groups']:>2} {r['count']:>2} "
                          + " ".join(f"{r[k]:7.1f}" for k in keys) + f"  {r['auto_choice']}")
                print("total (x count): " + ", ".join(f"{k} {v:.0f}" for k, v in totals.items()))
                results.append({"arch": arch, "size": size, "rows": rows})
    else:
        configs = ALL_CONFIGS if args.configs == "all" else [c for c in args.configs.split(",") if c]
        unknown = set(configs) - set(ALL_CONFIGS)
        if unknown:
            parser.error(f"unknown config(s): {', '.join(sorted(unknown))}")
        print(f"{'model':<10} {'px':>4} {'config':<15} {'img/s':>8} {'s/step':>8} {'peak GB':>7}  {'load after':<16} "
              "device",
              flush=True)
        for arch in archs:
            for size in sizes:
                rows = {}
                for config in configs:
                    spec = {"arch": arch, "size": size, "batch": args.batch_size, "steps": args.steps,
                            "warmup": args.warmup}
                    if config == "pytorch":
                        if not os.path.exists(args.torch_python):
                            r = {"error": f"no {args.torch_python} (see --torch-python)"}
                        else:
                            r = run_worker(args.torch_python, {"kind": "torch", **spec}, args.timeout)
                    else:
                        r = run_worker(sys.executable, {"kind": "megengine", "config": config, **spec}, args.timeout)
                    r.update({"arch": arch, "size": size, "config": config, "load_after": load()})
                    rows[config] = r
                    results.append(r)
                    if "error" in r:
                        print(f"{arch:<10} {size:>4} {config:<15} {'-':>8} {'-':>8} {'-':>7}  {r['load_after']:<16} "
                              f"{r['error']}", flush=True)
                    else:
                        print(f"{arch:<10} {size:>4} {config:<15} {r['images_per_second']:8.2f} "
                              f"{r['seconds_per_step']:8.2f} {r['peak_rss_gb']:7.2f}  {r['load_after']:<16} "
                              f"{r['device']}", flush=True)
                plain, mz, pt = (rows.get(k, {}).get("images_per_second") for k in ("plain", "megzoo", "pytorch"))
                notes = []
                if plain and mz:
                    notes.append(f"megzoo / plain MegEngine = {mz / plain:.1f}x")
                if mz and pt:
                    notes.append(f"PyTorch / megzoo = {pt / mz:.2f}x")
                if notes:
                    print(f"{'':<10} {'':>4} -> " + "; ".join(notes), flush=True)
    print(f"load average after: {load()}")
    if args.json:
        Path(args.json).write_text(json.dumps({"cores": cores(), "batch_size": args.batch_size,
                                               "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
