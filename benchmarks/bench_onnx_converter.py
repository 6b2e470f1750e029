"""The ONNX files of two megzoo versions, timed side by side under ONNX Runtime in one run.

    git worktree add /tmp/before 4040b90      # the last commit with the per-block ONNX emitters
    .venv/bin/python benchmarks/bench_onnx_converter.py --old-tree /tmp/before \\
        --models resnet18,resnet50 --batch 1,16 --json benchmarks/results/bench_onnx_converter.json

Each tree writes its ``.onnx`` files in its own process (``megzoo.inference.export(..., check=False)``)
for the same models: weights from ``megengine.random.seed(0)``, int8 models quantized by
``megzoo.quantize`` on the same random batches, so both trees quantize alike. Then one process runs
every file with megzoo's ONNX Runtime settings (``megzoo.inference.ort.OrtRunner``: all graph
optimisations, ``--threads`` threads, the batch split for int8 as ``megzoo.compile`` does) and
times the old and the new file of each configuration in alternating rounds (which goes first
alternates too). It prints images/s
(median and min-max of the rounds) and new/old. The load average is printed first; a run that
starts above 0.5 is marked disturbed.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

WRITER = r"""
import json, sys
import numpy as np
import megengine
import megzoo
from megzoo.inference import export

spec = json.loads(sys.argv[1])
for name in spec["models"]:
    megengine.random.seed(0)
    model = megzoo.get_model(name)
    model.eval()
    shape = (1, 3, spec["size"], spec["size"])
    export(model, f"{spec['out']}/{name}_fp32.onnx", shape, check=False)
    if spec["int8"]:
        rng = np.random.RandomState(0)
        batches = [rng.standard_normal((4,) + shape[1:]).astype(np.float32) for _ in range(2)]
        q = megzoo.quantize(model, batches, progress=False)
        export(q, f"{spec['out']}/{name}_int8.onnx", shape, check=False)
print("written", file=sys.stderr)
"""


def write_files(tree: Path, out: Path, models, size: int, int8: bool) -> None:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    spec = json.dumps({"models": models, "size": size, "int8": int8, "out": str(out)})
    proc = subprocess.run([sys.executable, "-c", WRITER, spec], cwd=str(tree), env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{tree}: writing the files failed:\n{proc.stderr[-3000:]}")


def time_rounds(runners, x, rounds: int, budget: float):
    """{label: [images/s per round]}: the runners in turn, each round ``budget`` seconds apiece,
    the order reversed every other round."""
    rates = {label: [] for label in runners}
    for runner in runners.values():  # warm-up (memory plans)
        runner.run(x)
        runner.run(x)
    labels = list(runners)
    for round_ in range(rounds):
        for label in labels if round_ % 2 == 0 else labels[::-1]:  # neither file always goes first
            runner = runners[label]
            n, start = 0, time.perf_counter()
            while True:
                runner.run(x)
                n += 1
                elapsed = time.perf_counter() - start
                if elapsed >= budget and n >= 2:
                    break
            rates[label].append(n * len(x) / elapsed)
    return rates


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old-tree", required=True, help="a checkout of the commit to compare with")
    p.add_argument("--models", default="resnet18,resnet50")
    p.add_argument("--batch", default="1,16")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=None, help="default: the CPUs this process may use")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per file and round")
    p.add_argument("--no-int8", dest="int8", action="store_false")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)

    sys.path.insert(0, str(REPO))
    import numpy as np

    from megzoo.host import usable_cpus
    from megzoo.inference.ort import OrtRunner

    load = os.getloadavg()
    disturbed = load[0] > 0.5
    print(f"load average at the start: {load}" + ("  DISTURBED (above 0.5)" if disturbed else ""), flush=True)
    threads = args.threads or usable_cpus()
    models = [m for m in args.models.split(",") if m]
    batches = [int(b) for b in args.batch.split(",") if b]
    rows = []
    with tempfile.TemporaryDirectory(prefix="megzoo-bench-onnx-") as tmp:
        old, new = Path(tmp, "old"), Path(tmp, "new")
        old.mkdir()
        new.mkdir()
        write_files(Path(args.old_tree).resolve(), old, models, args.size, args.int8)
        write_files(REPO, new, models, args.size, args.int8)
        for name in models:
            for precision in ("fp32",) + (("int8",) if args.int8 else ()):
                files = {"old": old / f"{name}_{precision}.onnx", "new": new / f"{name}_{precision}.onnx"}
                for batch in batches:
                    runners = {k: OrtRunner(str(f), threads, split_batch=precision == "int8") for k, f in files.items()}
                    shape = (batch, 3, args.size, args.size)
                    x = np.random.RandomState(batch).standard_normal(shape).astype(np.float32)
                    outputs = {k: r.run(x)[0] for k, r in runners.items()}
                    rates = time_rounds(runners, x, args.rounds, args.seconds)
                    row = {"model": name, "precision": precision, "batch": batch, "threads": threads,
                           "old_images_per_s": float(np.median(rates["old"])),
                           "new_images_per_s": float(np.median(rates["new"])),
                           "old_range": [min(rates["old"]), max(rates["old"])],
                           "new_range": [min(rates["new"]), max(rates["new"])],
                           "max_abs_output_difference": float(np.abs(outputs["old"] - outputs["new"]).max()),
                           "file_bytes": {k: f.stat().st_size for k, f in files.items()}}
                    row["new_over_old"] = row["new_images_per_s"] / row["old_images_per_s"]
                    rows.append(row)
                    print(f"{name:9s} {precision} batch {batch:2d}: old {row['old_images_per_s']:7.1f} "
                          f"[{row['old_range'][0]:.1f}-{row['old_range'][1]:.1f}]  new {row['new_images_per_s']:7.1f} "
                          f"[{row['new_range'][0]:.1f}-{row['new_range'][1]:.1f}] images/s  new/old "
                          f"{row['new_over_old']:.3f}", flush=True)
    end_load = os.getloadavg()
    print(f"load average at the end: {end_load}")
    if args.json:
        from megzoo.host import machine_record

        Path(args.json).write_text(json.dumps({"load_start": load, "load_end": end_load, "disturbed": disturbed,
                                               "machine": machine_record(), "old_tree": args.old_tree,
                                               "date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
