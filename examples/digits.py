"""Train a ResNet-18 on scikit-learn's handwritten digits, offline, on a CPU, in a few minutes.

scikit-learn ships the UCI "optical recognition of handwritten digits" set: 1,797 grey 8x8
images of the digits 0-9 (values 0-16). This example

1. ``export``: writes them as an ImageFolder, ``DIR/train/<digit>/*.png`` and ``DIR/val/<digit>/*.png``
   (a stratified 80/20 split with a fixed seed: 1,437 training and 360 held-out images),
   upscaled to ``--size`` px (bicubic) and stored with 3 equal channels;
2. ``train``: runs ``megzoo train`` on it (ResNet-18 from scratch at 32 px, no flips, mild
   random-resized crops, cosine schedule) and reports the held-out accuracy;
3. ``predict``: classifies a few held-out digits with the saved model through megzoo's predict
   API, with the model's own preprocessing and class names from ``best.json``.

``all`` does the three in a row. Usage (needs ``pip install scikit-learn matplotlib``, i.e.
``megzoo[train]``)::

    python examples/digits.py all --out runs/digits            # everything, as below
    python examples/digits.py export runs/digits/data --size 32
    megzoo train --data runs/digits/data --output runs/digits --model resnet18 --input-size 32 ...  (TRAIN_ARGS)
    python examples/digits.py evaluate runs/digits/best.pkl runs/digits/data/val
    python examples/digits.py predict runs/digits/best.pkl runs/digits/data/val/3/*.png

``scripts/demo.sh`` runs these steps, and ``megzoo predict --weights runs/digits/best.pkl`` (which reads
``best.json`` beside it for the classes and the 32-px preprocessing).

No pretrained ImageNet weights are reachable offline, so the network starts from MSRA
initialisation; re-running the same command resumes from (or, once finished, reuses) the run's
own ``last.pkl``.
"""
import argparse
import json
import os
import sys
from typing import List

#: the ``megzoo train`` options of the demo (besides --data and --output)
TRAIN_ARGS = ["--model", "resnet18", "--input-size", "32", "--resize-size", "32", "--crop-scale", "0.7", "1",
              "--hflip", "0", "--epochs", "8", "--batch-size", "32", "--lr", "0.05", "--schedule", "cosine",
              "--warmup-epochs", "1", "--weight-decay", "5e-4", "--no-bn-decay", "--label-smoothing", "0.1",
              "--workers", "0"]


def export(out: str, size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> dict:
    """Write the digits as ``out/train/<digit>/NNNN.png`` and ``out/val/<digit>/NNNN.png``
    (NNNN: the index in ``sklearn.datasets.load_digits``); returns the counts. Existing files
    are rewritten (the export is deterministic)."""
    import cv2
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images, labels = digits.images, digits.target  # (1797, 8, 8) float in [0, 16], ints 0-9
    indices = np.arange(len(labels))
    train_idx, val_idx = train_test_split(indices, test_size=val_fraction, stratify=labels, random_state=seed)
    counts = {}
    for split, chosen in (("train", train_idx), ("val", val_idx)):
        for i in sorted(chosen):
            folder = os.path.join(out, split, str(int(labels[i])))
            os.makedirs(folder, exist_ok=True)
            gray = np.clip(np.rint(images[i] * (255.0 / 16.0)), 0, 255).astype(np.uint8)
            big = cv2.resize(gray, (size, size), interpolation=cv2.INTER_CUBIC)
            bgr = cv2.cvtColor(big, cv2.COLOR_GRAY2BGR)
            if not cv2.imwrite(os.path.join(folder, f"{i:04d}.png"), bgr):
                raise OSError(f"cannot write {folder}/{i:04d}.png")
        counts[split] = len(chosen)
    print(f"digits: {counts['train']} training and {counts['val']} held-out images of {size}x{size} px in {out}")
    return counts


def sample_images(data: str, per_class: int = 1, classes=range(10)) -> List[str]:
    """The first ``per_class`` held-out images of each class (sorted names)."""
    chosen = []
    for c in classes:
        folder = os.path.join(data, "val", str(c))
        chosen += [os.path.join(folder, n) for n in sorted(os.listdir(folder))[:per_class]]
    return chosen


def train(data: str, out: str, extra: List[str] = ()) -> dict:
    """``megzoo train --data DATA --output OUT`` with :data:`TRAIN_ARGS`; returns the result."""
    from megzoo.cli.train import config_from_args
    from megzoo.cli import build_parser
    from megzoo.train import train as run

    args = build_parser().parse_args(["train", "--data", data, "--output", out, *TRAIN_ARGS, *extra])
    result = run(config_from_args(args))
    return result.as_dict()


def classifier(weights: str):
    """A :class:`megzoo.Classifier` for a trained ``best.pkl``, set up from its ``best.json``
    (model, number of classes, class names, the 32-px preprocessing)."""
    import megzoo

    with open(os.path.splitext(weights)[0] + ".json", encoding="utf-8") as f:
        meta = json.load(f)
    return megzoo.Classifier(meta["model"], weights, num_classes=meta["num_classes"], preprocess=meta["preprocess"],
                             categories=meta["classes"], progress=False)


def evaluate(weights: str, folder: str):
    """Top-1 accuracy of the saved model on ``folder`` (class folders named 0-9), through
    :func:`megzoo.evaluate` (the saved file, read back: independent of the trainer's figure)."""
    import megzoo

    with classifier(weights) as clf:
        return megzoo.evaluate(folder, classifier=clf, labels="index")


def predict(weights: str, images: List[str], topk: int = 1) -> list:
    """Classify ``images`` with ``weights`` (a best.pkl and its best.json)."""
    with classifier(weights) as clf:
        return clf.predict(images, topk=topk)


def _print_predictions(results) -> int:
    wrong = 0
    for p in results:
        truth = os.path.basename(os.path.dirname(p.image))
        wrong += p.top.name != truth
        mark = "" if p.top.name == truth else "  <- wrong"
        print(f"  {p.image}: {p.top.name} ({p.top.probability:.3f}), true {truth}{mark}")
    return wrong


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("export", help="write the digits as an ImageFolder")
    p.add_argument("out", help="folder to create (train/ and val/ inside)")
    p.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    p = sub.add_parser("evaluate", help="accuracy of a saved model on a folder")
    p.add_argument("weights", help="best.pkl (with best.json next to it)")
    p.add_argument("folder", help="e.g. runs/digits/data/val")
    p = sub.add_parser("predict", help="classify images with a saved model")
    p.add_argument("weights", help="best.pkl (with best.json next to it)")
    p.add_argument("images", nargs="+")
    p = sub.add_parser("samples", help="print the paths of the first held-out image of each digit")
    p.add_argument("data", help="the exported folder (with val/)")
    p = sub.add_parser("all", help="export, train, evaluate and classify a few held-out digits")
    p.add_argument("--out", default="runs/digits", help="run folder (data in OUT/data; default runs/digits)")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("extra", nargs=argparse.REMAINDER, help="more `megzoo train` options after --")
    args = parser.parse_args(argv)
    if args.command == "export":
        export(args.out, args.size)
        return 0
    if args.command == "samples":
        print("\n".join(sample_images(args.data)))
        return 0
    if args.command == "evaluate":
        result = evaluate(args.weights, args.folder)
        print(f"{args.weights} on {args.folder}: {result}")
        return 0
    if args.command == "predict":
        _print_predictions(predict(args.weights, args.images))
        return 0
    data = os.path.join(args.out, "data")
    export(data, args.size)
    extra = [a for a in args.extra if a != "--"]
    result = train(data, args.out, extra)
    print(f"held-out accuracy (trainer): {100 * result['best_top1']:.2f}% (epoch {result['best_epoch']}), "
          f"model {result['best_path']}, curves {result['plot_path']}")
    check = evaluate(result["best_path"], os.path.join(data, "val"))
    print(f"held-out accuracy of the saved model, read back: {check}")
    _print_predictions(predict(result["best_path"], sample_images(data)))
    return 0 if check.top1 >= 0.97 else 1


if __name__ == "__main__":
    sys.exit(main())
