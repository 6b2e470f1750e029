"""int8 accuracy on the digits demo model: fp32 vs post-training quantization (each observer) vs QAT.

Needs the README's main job first (``bash scripts/demo.sh``: the digits as an image folder and
``runs/digits/best.pkl``, a ResNet-18 at 32 px). Then, for the held-out 20% (360 images):

* fp32: the trained model (ONNX Runtime, as megzoo runs it by default);
* PTQ: ``megzoo.quantize`` calibrated on the *training* images with each observer, run as the
  int8 QDQ graph on ONNX Runtime and as the eager MegEngine int8 model;
* QAT: ``megzoo train --qat`` from best.pkl (a few epochs at a low learning rate), reloaded from
  its best.pkl into the int8 model;
* ``ort_static``: ONNX Runtime's own static quantization of the fp32 ONNX (per-channel weights,
  QDQ, the same calibration images), the other route the docs compare.

Each row: top-1, the change against fp32 in points, the fraction of held-out images whose top-1
is unchanged, and seconds. Usage::

    .venv/bin/python benchmarks/bench_int8_accuracy.py [--run runs/digits] [--qat-epochs 2] [--json]
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def held_out(run: Path, preprocess):
    """(batches of preprocessed held-out images, labels) in class-folder order."""
    from megzoo.transforms import EvalPreprocessor

    val = run / "data" / "val"
    classes = sorted(p.name for p in val.iterdir() if p.is_dir())
    files, labels = [], []
    for index, name in enumerate(classes):
        for f in sorted((val / name).iterdir()):
            files.append(str(f))
            labels.append(index)
    with EvalPreprocessor(preprocess) as pre:
        batches = list(pre.batches(files, 64))
    return batches, np.asarray(labels)


def predictions(fn, batches) -> np.ndarray:
    return np.concatenate([np.asarray(fn(b)).argmax(axis=1) for b in batches])


def ort_static(float_model, shape, calibration, preprocess, images: int):
    """ONNX Runtime's quantize_static on the fp32 ONNX: per-channel int8 weights, uint8 activations, QDQ."""
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from megzoo.inference.ort import OrtRunner
    from megzoo.inference.ort_compiled import onnx_model
    from megzoo.quantization import calibration_batches

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"data": b} for b in calibration_batches(calibration, preprocess, batch_size=1,
                                                                          max_images=images)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
        with open(src, "wb") as f:
            f.write(onnx_model(float_model, (1,) + tuple(shape[1:])).SerializeToString())
        quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        runner = OrtRunner(dst, 2)
    return lambda x: runner.run(x)[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=str(ROOT / "runs" / "digits"), help="the demo's run folder")
    parser.add_argument("--observers", default="minmax,histogram,ema")
    parser.add_argument("--calibration-images", type=int, default=512)
    parser.add_argument("--qat-epochs", type=int, default=2)
    parser.add_argument("--qat-lr", type=float, default=0.002)
    parser.add_argument("--no-qat", dest="qat", action="store_false")
    parser.add_argument("--no-ort-static", dest="ort_static", action="store_false")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import megengine

    import megzoo
    from megzoo.train import TrainConfig
    from megzoo.train.trainer import train
    from megzoo.quantization import load_qat_checkpoint

    run = Path(args.run)
    best = run / "best.pkl"
    if not best.is_file():
        print(f"no {best}: run `bash scripts/demo.sh {run}` first", file=sys.stderr)
        return 2
    meta = json.loads((run / "best.json").read_text())
    clf = megzoo.Classifier("resnet18", str(best), backend="onnxruntime")
    model, preprocess = clf.model, clf.preprocess
    model.eval()
    batches, labels = held_out(run, preprocess)
    shape = batches[0].shape
    fp32 = megzoo.compile(model)
    ref = predictions(fp32, batches)
    rows = [{"method": "fp32", "observer": None, "runtime": "onnxruntime", "top1": float((ref == labels).mean()),
             "seconds": 0.0}]
    calibration = str(run / "data" / "train")
    for observer in [o for o in args.observers.split(",") if o]:
        t0 = time.perf_counter()
        q = megzoo.quantize(model, calibration, observer=observer, preprocess=preprocess,
                            max_images=args.calibration_images, progress=False)
        seconds = time.perf_counter() - t0
        compiled = megzoo.compile(q)

        def eager(x, q=q):
            return q(megengine.tensor(x, device=q.quant_device())).numpy()

        for runtime, fn in (("onnxruntime", compiled), ("megengine eager", eager)):
            pred = predictions(fn, batches)
            rows.append({"method": "ptq", "observer": observer, "runtime": runtime,
                         "top1": float((pred == labels).mean()),
                         "agreement": float((pred == ref).mean()), "seconds": round(seconds, 1)})
    if args.ort_static:
        t0 = time.perf_counter()
        fn = ort_static(model, shape, calibration, preprocess, args.calibration_images)
        pred = predictions(fn, batches)
        rows.append({"method": "ort_static (per-channel)", "observer": "minmax", "runtime": "onnxruntime",
                     "top1": float((pred == labels).mean()), "agreement": float((pred == ref).mean()),
                     "seconds": round(time.perf_counter() - t0, 1)})
    if args.qat:
        out = run / "qat"
        t0 = time.perf_counter()
        config = TrainConfig(data=str(run / "data"), output=str(out), model="resnet18", pretrained=str(best), qat=True,
                             epochs=args.qat_epochs, lr=args.qat_lr, schedule="cosine", warmup_epochs=0,
                             input_size=int(meta["preprocess"]["input_size"]),
                             resize_size=int(meta["preprocess"]["resize_size"]), crop_scale=(0.7, 1.0), hflip=0.0,
                             batch_size=32, weight_decay=5e-4, no_bn_decay=True, label_smoothing=0.1, workers=0,
                             resume=False, progress=False, plot=False)
        train(config)
        q = load_qat_checkpoint(out / "best.pkl")
        pred = predictions(megzoo.compile(q), batches)
        rows.append({"method": f"qat ({args.qat_epochs} epochs, lr {args.qat_lr:g})", "observer": "ema",
                     "runtime": "onnxruntime", "top1": float((pred == labels).mean()),
                     "agreement": float((pred == ref).mean()), "seconds": round(time.perf_counter() - t0, 1)})
    base = rows[0]["top1"]
    for row in rows:
        row["delta_points"] = round(100 * (row["top1"] - base), 2)
    if args.json:
        print(json.dumps({"images": int(len(labels)), "load_average": os.getloadavg(), "rows": rows}, indent=2))
        return 0
    print(f"digits ResNet-18 (32 px), {len(labels)} held-out images; calibration: up to {args.calibration_images} "
          f"training images; load average {os.getloadavg()[0]:.2f}")
    print(f"{'method':<28} {'observer':<10} {'runtime':<16} {'top-1':>7} {'vs fp32':>8} {'same top-1':>10} {'s':>6}")
    for r in rows:
        agreement = f"{100 * r['agreement']:.1f}%" if "agreement" in r else "-"
        print(f"{r['method']:<28} {str(r['observer'] or '-'):<10} {r['runtime']:<16} {100 * r['top1']:6.2f}% "
              f"{r['delta_points']:+7.2f} {agreement:>10} {r['seconds']:6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
