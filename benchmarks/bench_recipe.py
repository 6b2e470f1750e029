"""What does each piece of the modern recipe give? Digits with a quarter of the training images.

The digits example's folder (``examples/digits.py export``: 1,437 training and 360 held-out
images, 32 px) is cut to a stratified quarter of the training images (every fourth image of each
class, by file name: 361), where augmentation should matter. A ResNet-18 from scratch is trained
on it with ``--recipe megengine`` (MegEngine's reference), ``--recipe tv2`` (torchvision's V2
recipe, shortened to the same epochs), and the megengine recipe plus each tv2 component alone;
every row runs with ``--seeds`` and prints the mean and the spread (min-max) of the held-out
top-1 at the last epoch, of the weights the run ships (the EMA's when the row has one).

Settings every row shares, because the digits need them: 32 px training crop, no flips, random
crops of 35-100% of the image, batch 32, 1 warm-up epoch, ``--epochs`` (the megengine recipe's
steps at 30, 60 and 80 of 90 epochs scaled to them; the megengine rows evaluate on the whole
32-px image, tv2's on the 32-px centre crop of a 42-px resize, its object-size ratio 232/176 at
the training resolution: see megzoo.train.recipe.FIXRES_MIN_INPUT; the last two rows are the two
ways of testing larger objects). For EMA, torchvision's
decay formula assumes ImageNet-sized epochs (on 12 steps per epoch it would never move), so the
rows with EMA average every step with decay ``--ema-decay`` (0.98: a horizon of ~50 steps, 4
epochs).

    .venv/bin/python benchmarks/bench_recipe.py --epochs 20 --seeds 0,1,2 --json benchmarks/results/bench_recipe.json
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "examples"))

#: row name -> (recipe, extra TrainConfig values); "+X": the megengine recipe plus tv2's X
ROWS = {
    "megengine": ("megengine", {}),
    "tv2": ("tv2", {"ema": True}),
    "+ tv2 optimiser (cosine, lr 0.5/1024, wd 2e-5, no BN decay)":
        ("megengine", {"schedule": "cosine", "lr": 0.5 * 32 / 1024, "weight_decay": 2e-5, "no_bn_decay": True}),
    "+ label smoothing 0.1": ("megengine", {"label_smoothing": 0.1}),
    "+ TrivialAugmentWide": ("megengine", {"augment": "ta_wide"}),
    "+ random erasing 0.1": ("megengine", {"random_erasing": 0.1}),
    "+ mixup 0.2": ("megengine", {"mixup": 0.2}),
    "+ cutmix 1.0": ("megengine", {"cutmix": 1.0}),
    "+ EMA": ("megengine", {"ema": True}),
    "+ FixRes at 41 px (crop 41 of a 42 resize)": ("megengine", {"eval_size": 41, "resize_size": 42}),
    "+ test zoom at 32 px (crop 32 of a 42 resize)": ("megengine", {"eval_size": 32, "resize_size": 42}),
}


def quarter(data: str, out: str) -> int:
    """``out/train``: every fourth training image of each class of ``data`` (links); ``out/val``
    links to ``data/val``. Returns the number of training images."""
    n = 0
    for cls in sorted(os.listdir(os.path.join(data, "train"))):
        src = os.path.join(data, "train", cls)
        dst = os.path.join(out, "train", cls)
        os.makedirs(dst, exist_ok=True)
        for name in sorted(os.listdir(src))[::4]:
            os.symlink(os.path.join(src, name), os.path.join(dst, name))
            n += 1
    os.symlink(os.path.join(data, "val"), os.path.join(out, "val"))
    return n


def run(name: str, seed: int, data: str, work: str, args) -> dict:
    from megzoo.train import TrainConfig, train

    recipe, extra = ROWS[name]
    extra = dict(extra)
    ema = extra.pop("ema", False)
    if ema:
        extra.update(ema_decay=args.ema_decay, ema_steps=1)
    output = os.path.join(work, f"row{list(ROWS).index(name)}-seed{seed}")
    config = TrainConfig(recipe=recipe, model="resnet18", data=data, output=output,
                         input_size=32, hflip=0.0, crop_scale=(0.35, 1.0), epochs=args.epochs, batch_size=32,
                         warmup_epochs=1.0, workers=0, eval_every=10 ** 6, progress=False, plot=False, seed=seed,
                         **extra)
    if recipe == "megengine":  # its step schedule shortened with the run: x0.1 at 1/3, 2/3 and 8/9 of it
        config.milestones = tuple(max(1, round(args.epochs * m / 90)) for m in (30, 60, 80))
    if recipe == "megengine" and "eval_size" not in extra:
        config.resize_size = 32  # the images are 32 px: evaluate on the whole image, as the demo does
    start = time.perf_counter()
    result = train(config)
    last = result.last
    top1 = last["ema_val_top1"] if ema else last["val_top1"]
    return {"row": name, "seed": seed, "top1": top1, "model_top1": last["val_top1"],
            "ema_top1": last.get("ema_val_top1"), "seconds": round(time.perf_counter() - start, 1),
            "config": {k: getattr(config, k) for k in ("lr", "schedule", "weight_decay", "label_smoothing", "augment",
                                                         "random_erasing", "mixup", "cutmix", "ema_decay",
                                                         "eval_size", "resize_size")}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--ema-decay", type=float, default=0.98)
    p.add_argument("--rows", default=None, help="comma-separated row numbers (default: all): " +
                   "; ".join(f"{i}={n}" for i, n in enumerate(ROWS)))
    p.add_argument("--work", default=None, help="folder for the data and runs (default: a temporary one, removed)")
    p.add_argument("--json", default=None, help="also write the runs to this JSON file")
    args = p.parse_args(argv)
    import digits

    work = args.work or tempfile.mkdtemp(prefix="megzoo-bench-recipe-")
    full, data = os.path.join(work, "digits"), os.path.join(work, "quarter")
    if not os.path.isdir(data):
        digits.export(full, size=32)
        n = quarter(full, data)
    else:
        n = sum(len(files) for _, _, files in os.walk(os.path.join(data, "train")))
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    names = list(ROWS) if not args.rows else [list(ROWS)[int(i)] for i in args.rows.split(",")]
    print(f"load average {os.getloadavg()[0]:.2f}; ResNet-18 from scratch, {n} training / 360 held-out digits at "
          f"32 px, {args.epochs} epochs, seeds {seeds}; work in {work}", flush=True)
    print(f"{'row':<58} {'top-1 mean':>10} {'min-max':>13} {'per seed':>24} {'s/run':>6}", flush=True)
    runs = []
    for name in names:
        rows = [run(name, seed, data, os.path.join(work, "runs"), args) for seed in seeds]
        runs.extend(rows)
        tops = [100 * r["top1"] for r in rows]
        print(f"{name:<58} {statistics.mean(tops):>9.2f}% {min(tops):>6.2f}-{max(tops):<6.2f} "
              f"{' '.join(f'{t:.2f}' for t in tops):>24} {statistics.mean(r['seconds'] for r in rows):>6.0f}",
              flush=True)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(runs, f, indent=2)
    print(f"load average {os.getloadavg()[0]:.2f}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
