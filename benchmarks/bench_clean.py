"""Does ``megzoo clean --method kfold`` find label errors? scikit-learn's digits with known flips.

The 1,797 digits are written as one image folder (``DIR/<digit>/NNNN.png``, NNNN the index in
``sklearn.datasets.load_digits``), with a seeded fraction of the images written into a wrong
class folder instead (the truth is kept in memory, not in the folder). ``megzoo.find_label_issues``
then runs the k-fold method on it, and this prints, against the truth, precision / recall / F1 of

* confident learning (the flagged ``label`` issues), and
* the argmax baseline ("predicted != given", the same out-of-sample probabilities),

with the run time. Rows: uniform noise (each flipped image to a uniformly chosen other class) for
each ``--seeds``; with ``--class-conditional``, a row with noise drawn from a random noise matrix
(``cleanlab.benchmarking.noise_generation``, trace = K x (1 - noise)).

    .venv/bin/python benchmarks/bench_clean.py --seeds 0,1,2 --class-conditional --json runs/bench_clean.json

Targets (issue 16): recall >= 0.85 at precision >= 0.85 on every seed, F1 above the baseline's.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def export_noisy_digits(out: str, size: int, noise: float, seed: int, class_conditional: bool):
    """Write the digits with noisy labels; returns (true labels, given labels) in index order."""
    import cv2
    from sklearn.datasets import load_digits

    digits = load_digits()
    y = digits.target.astype(np.int64)
    k = 10
    rng = np.random.RandomState(seed)
    if class_conditional:
        from cleanlab.benchmarking.noise_generation import generate_noise_matrix_from_trace, generate_noisy_labels

        py = np.bincount(y, minlength=k) / len(y)
        nm = generate_noise_matrix_from_trace(k, trace=k * (1 - noise), py=py, valid_noise_matrix=True, seed=seed)
        np.random.seed(seed)
        given = generate_noisy_labels(y, nm)
    else:
        given = y.copy()
        flip = rng.choice(len(y), int(round(noise * len(y))), replace=False)
        for i in flip:
            given[i] = rng.choice([c for c in range(k) if c != y[i]])
    for i, (image, label) in enumerate(zip(digits.images, given)):
        folder = os.path.join(out, str(int(label)))
        os.makedirs(folder, exist_ok=True)
        gray = np.clip(np.rint(image * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        big = cv2.cvtColor(cv2.resize(gray, (size, size), interpolation=cv2.INTER_CUBIC), cv2.COLOR_GRAY2BGR)
        cv2.imwrite(os.path.join(folder, f"{i:04d}.png"), big)
    return y, np.asarray(given)


def scores(flagged: np.ndarray, truth: np.ndarray) -> dict:
    tp = int((flagged & truth).sum())
    precision = tp / max(int(flagged.sum()), 1)
    recall = tp / max(int(truth.sum()), 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    return {"flagged": int(flagged.sum()), "precision": round(precision, 4), "recall": round(recall, 4),
            "f1": round(f1, 4)}


def run_one(seed: int, class_conditional: bool, args, work: str) -> dict:
    import megzoo

    folder = os.path.join(work, f"{'cc' if class_conditional else 'uniform'}-{seed}")
    data, out = os.path.join(folder, "data"), os.path.join(folder, "clean")
    y, given = export_noisy_digits(data, args.size, args.noise, seed, class_conditional)
    t0 = time.perf_counter()
    result = megzoo.find_label_issues(data, method="kfold", folds=args.folds, epochs=args.epochs,
                                      input_size=args.size, out=out, seed=seed, progress=False,
                                      train_settings={"hflip": 0.0, "crop_scale": (0.7, 1.0), "lr": args.lr,
                                                      "batch_size": args.batch_size})
    seconds = time.perf_counter() - t0
    # rows of the result -> digit index (the file name)
    index = np.array([int(os.path.splitext(os.path.basename(p))[0]) for p in result.images.paths])
    truth = (given != y)[index]
    flagged = result.flags["label"]
    readable = result.readable
    probs = result.pred_probs[readable]
    baseline = np.zeros(len(index), dtype=bool)
    baseline[readable] = probs.argmax(axis=1) != result.images.labels[readable]
    row = {"noise": "class-conditional" if class_conditional else "uniform", "seed": seed,
           "flipped": int(truth.sum()), "images": len(index), "seconds": round(seconds, 1),
           "confident_learning": scores(flagged, truth), "argmax_baseline": scores(baseline, truth),
           "fold_top1_vs_given": result.summary["settings"].get("fold_top1_vs_given"), "out": out}
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--class-conditional", action="store_true", help="add a class-conditional noise row (seed 0)")
    p.add_argument("--noise", type=float, default=0.10)
    p.add_argument("--size", type=int, default=16, help="image side (px); the digits are 8x8, 16 keeps every pixel")
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--work", default=None, help="folder for the data and reports (default: a temporary one)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    work = args.work or tempfile.mkdtemp(prefix="megzoo-bench-clean-")
    print(f"load average {os.getloadavg()[0]:.2f}; {args.folds} folds x {args.epochs} epochs, "
          f"ResNet-18 at {args.size} px, {args.noise:.0%} noise; work in {work}", flush=True)
    runs = [(int(s), False) for s in args.seeds.split(",") if s.strip()]
    if args.class_conditional:
        runs.append((runs[0][0] if runs else 0, True))
    rows = []
    header = f"{'noise':<18} {'seed':>4} {'flipped':>7} | {'CL flagged':>10} {'prec':>6} {'recall':>6} {'F1':>6} | " \
             f"{'argmax':>6} {'prec':>6} {'recall':>6} {'F1':>6} | {'time':>7}"
    print(header, flush=True)
    for seed, cc in runs:
        r = run_one(seed, cc, args, work)
        rows.append(r)
        a, b = r["confident_learning"], r["argmax_baseline"]
        print(f"{r['noise']:<18} {seed:>4} {r['flipped']:>7} | {a['flagged']:>10} {a['precision']:>6.3f} "
              f"{a['recall']:>6.3f} {a['f1']:>6.3f} | {b['flagged']:>6} {b['precision']:>6.3f} {b['recall']:>6.3f} "
              f"{b['f1']:>6.3f} | {r['seconds']:>6.0f}s", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)
    uniform = [r for r in rows if r["noise"] == "uniform"]
    met = all(r["confident_learning"]["recall"] >= 0.85 and r["confident_learning"]["precision"] >= 0.85 and
              r["confident_learning"]["f1"] > r["argmax_baseline"]["f1"] for r in uniform)
    print(f"targets (recall >= 0.85 at precision >= 0.85, F1 above the baseline, every uniform seed): "
          f"{'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
