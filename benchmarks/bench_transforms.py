"""Evaluation preprocessing throughput: MegEngine's per-sample pipeline vs megzoo's fast batch path.

    .venv/bin/python benchmarks/bench_transforms.py [--images 200] [--size 500x375] [--quality 90]
                                                    [--dir DIR] [--repeat 5] [--batch-size 32] [--threads 2]
                                                    [--model resnet50]

Synthesises ``--images`` natural-looking JPEGs (gradients, shapes, blur and sensor-like noise,
written by ``cv2.imwrite`` at ``--quality``) into a temporary directory (or uses the JPEGs in
``--dir``), checks that the fast path equals ``megzoo.eval_transform()`` on every one of them,
then measures, in fresh processes pinned to their cores (so OpenCV sizes its own thread pool
for them):

* ``decode only``: ``np.fromfile`` + ``cv2.imdecode`` of every file: the floor;
* ``megengine``: what an ``ImageFolder`` + ``DataLoader`` does per sample: ``cv2.imread`` +
  ``eval_transform().apply`` (``megengine.data.transform`` Resize, CenterCrop, Normalize,
  ToMode), then ``np.stack`` into batches of ``--batch-size``;
* ``fast path``: ``megzoo.transforms.EvalPreprocessor.batches`` (same output, one batch array);

on one core, interleaved batch by batch (each pipeline's best of ``--repeat`` times per batch,
summed, so that load from other processes hits all three alike), then decode-only and the fast
path with a thread pool of ``--threads`` workers on ``--threads`` cores (best of ``--repeat``
passes over all images), and the time per image of each fast-path step. It prints images/s, the ratios,
and the load average before and after (other processes on the machine make the figures noisy).
With ``--model NAME`` it also measures that model (random weights, megzoo's compiled backend, on all the
``--threads`` cores) alone on preprocessed batches and through ``megzoo.evaluate`` end to end.
If ``simplejpeg`` is importable, its decoder is measured too and checked against ``cv2.imdecode``.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()


# -- images ---------------------------------------------------------------------------------------

def synthesize(rng, width: int, height: int):
    """A natural-ish BGR uint8 image: smooth colour waves, filled shapes, lines, blur and noise."""
    import cv2
    import numpy as np

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.empty((height, width, 3), np.float32)
    for c in range(3):
        a, b, phase = rng.uniform(-1, 1, 3)
        image[..., c] = 128 + 60 * np.sin(a * x / 40 + b * y / 55 + phase * 6)
    image = image.astype(np.uint8)
    for _ in range(int(rng.integers(8, 20))):
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            cv2.circle(image, center, int(rng.integers(5, 80)), color, -1, cv2.LINE_AA)
        elif kind == 1:
            p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            p2 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            cv2.rectangle(image, p1, p2, color, -1)
        else:
            points = rng.integers(0, [width, height], (5, 2)).astype(np.int32)
            cv2.polylines(image, [points], True, color, int(rng.integers(1, 6)), cv2.LINE_AA)
    image = cv2.GaussianBlur(image, (0, 0), 1.2)
    return np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)


def write_jpegs(directory: Path, count: int, width: int, height: int, quality: int) -> list:
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = directory / f"{i:04d}.jpg"
        cv2.imwrite(str(path), synthesize(rng, width, height), [cv2.IMWRITE_JPEG_QUALITY, quality])
        paths.append(str(path))
    return paths


# -- one measurement, in a child process ------------------------------------------------------------

def runner(mode: str, batch_size: int, threads: int):
    """A function timing one pipeline over a list of paths (output thrown away)."""
    import cv2
    import numpy as np

    from megzoo.images import read_image
    from megzoo.transforms import EvalPreprocessor, eval_transform

    if mode == "decode":
        def run(paths):
            for p in paths:
                read_image(p)
    elif mode == "simplejpeg":
        import simplejpeg

        def run(paths):
            for p in paths:
                with open(p, "rb") as f:
                    simplejpeg.decode_jpeg(f.read(), colorspace="BGR")
    elif mode == "megengine":
        compose = eval_transform()

        def run(paths):
            for i in range(0, len(paths), batch_size):
                np.stack([compose.apply(cv2.imread(p, cv2.IMREAD_COLOR)) for p in paths[i:i + batch_size]])
    elif mode in ("fast", "fast-threads"):
        pre = EvalPreprocessor(workers=0 if mode == "fast" else threads)

        def run(paths):
            for _ in pre.batches(paths, batch_size):
                pass
    elif mode == "decode-threads":
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(threads)

        def run(paths):
            for _ in pool.map(read_image, paths):
                pass
    else:
        raise SystemExit(f"unknown mode {mode}")
    return run


def child(mode: str, directory: str, repeat: int, batch_size: int, threads: int) -> dict:
    import cv2

    paths = sorted(str(p) for p in Path(directory).glob("*.jpg"))
    cores = sorted(os.sched_getaffinity(0))
    if mode == "components":
        return components(paths, repeat)
    if mode.startswith("model:"):
        return model_side(mode.split(":", 1)[1], paths, directory, batch_size, threads)
    if mode.startswith("paired:"):
        # the one-core pipelines interleaved batch by batch, keeping each one's best time per batch:
        # a burst of load from other processes hits them alike and is mostly filtered out
        modes = mode.split(":", 1)[1].split(",")
        runs = {m: runner(m, batch_size, threads) for m in modes}
        chunks = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
        for m in modes:
            runs[m](paths)  # warm-up: page cache, lazy initialisation
        best = {m: [float("inf")] * len(chunks) for m in modes}
        for r in range(repeat):
            for i, chunk in enumerate(chunks):
                for m in modes[r % len(modes):] + modes[:r % len(modes)]:
                    start = time.perf_counter()
                    runs[m](chunk)
                    best[m][i] = min(best[m][i], time.perf_counter() - start)
        return {m: {"mode": m, "images": len(paths), "seconds": sum(best[m]), "images_per_s": len(paths) / sum(best[m]),
                    "cv2_threads": cv2.getNumThreads(), "cores": cores} for m in modes}
    run = runner(mode, batch_size, threads)
    run(paths)  # warm-up
    best_time = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run(paths)
        best_time = min(best_time, time.perf_counter() - start)
    return {"mode": mode, "images": len(paths), "seconds": best_time, "images_per_s": len(paths) / best_time,
            "cv2_threads": cv2.getNumThreads(), "cores": cores}


def components(paths, repeat: int) -> dict:
    """Microseconds per image of each fast-path step, on the cores this process has."""
    import cv2
    import numpy as np

    from megzoo.images import read_image
    from megzoo.transforms import EvalPreprocessor, center_crop_offsets, resized_shape

    pre = EvalPreprocessor(workers=0)
    datas = [np.fromfile(p, np.uint8) for p in paths]
    images = [read_image(p) for p in paths]
    shapes = [resized_shape(*image.shape[:2], pre.resize_size) for image in images]
    resized = [cv2.resize(image, (w, h), interpolation=pre.flag) for image, (h, w) in zip(images, shapes)]
    crops = []
    for image in resized:
        top, left = center_crop_offsets(*image.shape[:2], pre.size)
        crops.append(image[top:top + pre.size, left:left + pre.size])
    out = pre.new_batch(1)[0]

    def normalise(crop):
        planes = cv2.split(crop)
        for c in range(3):
            cv2.LUT(planes[c], pre._luts[c], dst=out[c])

    steps = {
        "read file (np.fromfile)": (lambda p: np.fromfile(p, np.uint8), paths),
        "decode (cv2.imdecode)": (lambda d: cv2.imdecode(d, cv2.IMREAD_COLOR), datas),
        "resize (cv2.resize)": (lambda i: cv2.resize(images[i], shapes[i][::-1], interpolation=pre.flag),
                                range(len(paths))),
        "crop + normalise (split, 3 x LUT)": (normalise, crops),
        "whole fast path per image": (lambda p: pre.transform(p, out), paths),
    }
    try:
        import simplejpeg
    except ImportError:
        pass
    else:
        steps["decode (simplejpeg)"] = (lambda d: simplejpeg.decode_jpeg(d, colorspace="BGR"), datas)
    result = {}
    for name, (fn, items) in steps.items():
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            for item in items:
                fn(item)
            best = min(best, time.perf_counter() - start)
        result[name] = best / len(items) * 1e6
    return {"mode": "components", "us_per_image": result, "cores": sorted(os.sched_getaffinity(0))}


def model_side(name: str, paths, directory: str, batch_size: int, threads: int) -> dict:
    """Images/s of the model on megzoo's compiled backend alone (on preprocessed batches) and of
    megzoo.evaluate end to end (decode threads and model sharing the cores), with randomly
    initialised weights; the compile happens in the warm-up, before the timed parts."""
    import megzoo
    from megzoo.data import imagenet1k_wnids

    with tempfile.TemporaryDirectory(prefix="megzoo-bench-folder-") as folder:
        for i, path in enumerate(paths):  # an ImageNet-val-like folder of links: 10 classes
            cls = Path(folder) / imagenet1k_wnids()[i % 10]
            cls.mkdir(exist_ok=True)
            os.symlink(path, cls / Path(path).name)
        batch_size = min(batch_size, 16)
        classifier = megzoo.Classifier(name, weights=False, batch_size=batch_size, workers=threads, backend="compiled")
        batch = classifier.preprocessor(paths[:batch_size])
        classifier.run(batch)  # warm-up: compiles
        start = time.perf_counter()
        for _ in range(2):
            classifier.run(batch)
        model_rate = 2 * batch_size / (time.perf_counter() - start)
        result = megzoo.evaluate(folder, classifier=classifier, limit=min(len(paths), 6 * batch_size))
        device = str(next(iter(classifier.model.parameters())).device)
        classifier.close()
    return {"mode": f"model:{name}", "model_images_per_s": model_rate, "evaluate_images_per_s":
            result.images_per_second, "evaluated": result.images, "batch_size": batch_size,
            "device": device, "cores": sorted(os.sched_getaffinity(0))}


def measure(mode: str, cores, directory: str, args) -> dict:
    cmd = [sys.executable, str(HERE), "--child", mode, "--dir", directory, "--repeat", str(args.repeat),
           "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    from megzoo.device import quiet_stderr

    with quiet_stderr():  # MegEngine's fork handlers probe CUDA (and say so) in a process that imported it
        result = subprocess.run(cmd, capture_output=True, text=True, check=False,
                                preexec_fn=lambda: os.sched_setaffinity(0, set(cores)))
    if result.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def check_exact(paths) -> float:
    """Max |fast - megengine| over all images (raises if not below 1e-4)."""
    import cv2
    import numpy as np

    from megzoo.transforms import EvalPreprocessor, eval_transform

    compose = eval_transform()
    with EvalPreprocessor(workers=2) as pre:
        fast = pre(paths)
    diff = max(float(np.abs(fast[i] - compose.apply(cv2.imread(p, cv2.IMREAD_COLOR))).max())
               for i, p in enumerate(paths))
    if not diff < 1e-4:
        raise SystemExit(f"fast path differs from the MegEngine preset by {diff}")
    return diff


def check_simplejpeg(paths):
    """None if simplejpeg is missing, else whether it decodes every file exactly as cv2.imdecode."""
    try:
        import simplejpeg
    except ImportError:
        return None
    import cv2
    import numpy as np

    for p in paths:
        data = Path(p).read_bytes()
        if not np.array_equal(simplejpeg.decode_jpeg(data, colorspace="BGR"),
                              cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)):
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", default="500x375", help="WIDTHxHEIGHT of the synthesised JPEGs")
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--dir", help="use the *.jpg files of DIR instead of synthesising")
    parser.add_argument("--repeat", type=int, default=5, help="timed passes; the best counts")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="workers (and cores) of the threaded runs")
    parser.add_argument("--model", help="also measure this model (random weights, compiled) alone and through "
                                        "megzoo.evaluate on the same images, e.g. resnet50")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(child(args.child, args.dir, args.repeat, args.batch_size, args.threads)))
        return

    allowed = sorted(os.sched_getaffinity(0))
    one, many = allowed[:1], allowed[:args.threads]
    with tempfile.TemporaryDirectory(prefix="megzoo-bench-") as tmp:
        if args.dir:
            directory = args.dir
            paths = sorted(str(p) for p in Path(directory).glob("*.jpg"))
            if not paths:
                raise SystemExit(f"no *.jpg files in {directory}")
        else:
            width, height = (int(v) for v in args.size.lower().split("x"))
            directory = tmp
            paths = write_jpegs(Path(tmp), args.images, width, height, args.quality)
        size_kb = sum(os.path.getsize(p) for p in paths) / len(paths) / 1024
        diff = check_exact(paths)
        exact_sj = check_simplejpeg(paths)
        load_before = os.getloadavg()
        paired = ["decode", "megengine", "fast"] + (["simplejpeg"] if exact_sj is not None else [])
        results = measure("paired:" + ",".join(paired), one, directory, args)
        results.update({mode: measure(mode, many, directory, args) for mode in ("decode-threads", "fast-threads")})
        steps = measure("components", one, directory, args)["us_per_image"]
        model = measure(f"model:{args.model}", many, directory, args) if args.model else None
        load_after = os.getloadavg()

    rate = {mode: r["images_per_s"] for mode, r in results.items()}
    labels = {
        "decode": "decode only (np.fromfile + cv2.imdecode), the floor",
        "megengine": "MegEngine per-sample (cv2.imread + Compose + np.stack)",
        "fast": "megzoo fast path (EvalPreprocessor, workers=0)",
        "simplejpeg": "decode only (simplejpeg.decode_jpeg, BGR)",
        "decode-threads": f"decode only, {args.threads} threads",
        "fast-threads": f"megzoo fast path, workers={args.threads}",
    }
    print(f"{len(paths)} JPEGs, {Path(paths[0]).name} ... ({size_kb:.0f} KiB on average); "
          f"fast path vs MegEngine preset: max |diff| = {diff:g}")
    if exact_sj is not None:
        print(f"simplejpeg decode identical to cv2.imdecode on all files: {exact_sj}")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
          f"(1 min; {len(allowed)} cores allowed)\n")
    print(f"{'':56} {'cores':>5} {'images/s':>9}")
    for mode, r in results.items():
        print(f"{labels[mode]:56} {len(r['cores']):>5} {r['images_per_s']:>9.1f}")
    print("\nper image on one core (us): " + ", ".join(f"{k} {v:.0f}" for k, v in steps.items()))
    print()
    print(f"one core: fast / megengine = {rate['fast'] / rate['megengine']:.2f}x (target >= 1.2x); "
          f"fast / decode-only = {rate['fast'] / rate['decode']:.1%} (target >= 85%)")
    print(f"{args.threads} cores: fast = {rate['fast-threads']:.0f} images/s, "
          f"{rate['fast-threads'] / rate['fast']:.2f}x one core, "
          f"{rate['fast-threads'] / rate['decode-threads']:.1%} of threaded decode-only")
    if model:
        print(f"{args.model} (random weights, compiled backend, batch {model['batch_size']}, "
              f"{len(model['cores'])} cores): "
              f"{model['model_images_per_s']:.1f} images/s for the model alone, "
              f"{model['evaluate_images_per_s']:.1f} images/s through megzoo.evaluate "
              f"({model['evaluated']} images, workers={args.threads}); the fast path alone: "
              f"{rate['fast-threads']:.0f} images/s")
    if args.json:
        print(json.dumps({"max_abs_diff": diff, "load_before": load_before, "load_after": load_after,
                          "results": results, "us_per_image": steps, "model": model}, indent=2))


if __name__ == "__main__":
    main()
