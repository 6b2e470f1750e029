"""The trainer's validation forward: MegEngine's eager operators against the host plans, s/batch.

    .venv/bin/python benchmarks/bench_validation.py [--archs resnet18,resnet50] [--sizes 32,224]
        [--batch-size 16] [--repeats 5]

For each model and input size, one process times the same ``eval()``-mode forward pass (random
weights, random running statistics, a random batch, on ``multithread<cores>:0``) two ways,
alternating them ``--repeats`` times after one untimed call each: MegEngine's own operators (what
``model.eval()`` runs anywhere) and the fused plans on host arrays inside
``fused_blocks.host_evaluation()`` (what ``Trainer.evaluate`` runs on a CPU with fused blocks on).
It prints the median and [min-max] of each, their ratio, and the largest difference of the logits
relative to their largest magnitude. The load average is printed before and after: on a shared
machine, figures taken while other processes run are not reliable.
"""
import argparse
import time

import numpy as np

from bench_training import load  # the load average, as every training benchmark prints it


def measure(arch: str, size: int, batch: int, repeats: int) -> dict:
    """Seconds per batch (lists) of both paths and the logits' largest relative difference."""
    import megengine
    import megengine.module as M

    import megzoo
    from megzoo.host import usable_cpus
    from megzoo.train.cpu_engine import blocks as fused_blocks
    from megzoo.train.cpu_engine import conv as fast_conv

    threads = usable_cpus()
    megengine.set_default_device(f"multithread{threads}:0" if threads > 1 else "cpu0")
    rng = np.random.RandomState(0)
    model = megzoo.get_model(arch)
    for module in model.modules():
        if isinstance(module, M.BatchNorm2d):
            module.running_mean[...] = (rng.standard_normal(module.running_mean.shape) * 0.1).astype("float32")
            module.running_var[...] = rng.uniform(0.5, 2.0, module.running_var.shape).astype("float32")
    model.eval()
    x = megengine.Tensor(rng.standard_normal((batch, 3, size, size)).astype("float32"))

    def megengine_path():
        return model(x).numpy()

    def host_path():
        with fused_blocks.host_evaluation():
            return model(x).numpy()

    # as the trainer enables them; outside host_evaluation() an eval()-mode call still runs
    # MegEngine's operators, bit for bit (tests/test_fused_blocks.py)
    fast_conv.enable(model, forward="blas")
    fused_blocks.enable(model)
    reference, host = megengine_path(), host_path()
    times = {"megengine": [], "host": []}
    for _ in range(repeats):
        for name, run in (("megengine", megengine_path), ("host", host_path)):
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    error = float(np.abs(host - reference).max() / np.abs(reference).max())
    return {**times, "error": error, "device": str(x.device)}


def spread(values) -> str:
    return f"{np.median(values):7.3f} [{min(values):.3f}-{max(values):.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="resnet18,resnet50")
    parser.add_argument("--sizes", default="32,224", help="input sizes, comma-separated")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"load average before: {load()}")
    print(f"{'model':<10} {'px':>4} {'MegEngine s/batch':>24} {'host plans s/batch':>24} {'ratio':>6} {'max err':>8}")
    for arch in args.archs.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            r = measure(arch, size, args.batch_size, args.repeats)
            ratio = np.median(r["megengine"]) / np.median(r["host"])
            print(f"{arch:<10} {size:>4} {spread(r['megengine']):>24} {spread(r['host']):>24} {ratio:5.1f}x "
                  f"{r['error']:8.1e}", flush=True)
    print(f"batch {args.batch_size}, {args.repeats} alternating repeats; load average after: {load()}")


if __name__ == "__main__":
    main()
