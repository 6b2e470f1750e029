"""bf16's accuracy cost, measured by emulation (this CPU has no BF16, so OpenVINO's bf16 refuses to run here).

The emulation (:func:`megzoo.quantization.bf16.emulate_bf16`) folds the BatchNorms into the convolutions
and rounds every convolution's and Linear's weights and input to bf16, summing in float32: what a bf16
runtime computes, but for the kernels' summation order. Both models run eagerly in MegEngine on the same
batches. Per model: top-1 of each (the digits only: they have labels), the fraction of images whose top-1
class is unchanged, and the largest logit difference over the logit scale (the largest |fp32 logit| of the
set); beside it the same difference for the folded float32 model alone (the floor: float32 reordering).

* digits: the demo's ResNet-18 (``bash scripts/demo.sh RUN``: ``RUN/best.pkl``, 32 px) on its 360 held-out
  images;
* ImageNet-shaped: ``resnet18`` and ``resnet50`` with megzoo's default initialisation
  (``megengine.random.seed(0)``, 1000 classes) at 224 px, on ``--images`` synthetic images: smooth random
  fields (Gaussian noise grids of 4 to 64 px, bicubic-upscaled to 256 px and summed with weight 4 / grid
  side, one field per channel, stretched to 0-255), read with the models' ImageNet preprocessing (resize
  256, crop 224, ImageNet mean and std). No ImageNet images are available offline. The median top-1
  margin (top-1 minus top-2 logit, over the scale) says how close the classes are: a random model's are
  close, so there a flip costs far less error than on a trained model; the margins of the images whose
  top-1 changed are listed too.

Usage::

    .venv/bin/python benchmarks/bench_bf16_accuracy.py [--run runs/digits] [--images 64] [--json [PATH]]
"""
import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_int8_accuracy import held_out  # noqa: E402  (the digits' held-out batches and labels)

RESULT = ROOT / "benchmarks" / "results" / "bench_bf16_accuracy.json"
#: side lengths (px) of the noise octaves of a synthetic image, each weighted by 4 / side (coarse ones dominate,
#: roughly the 1/f spectrum of photographs)
OCTAVES = (4, 8, 16, 32, 64)


def synthetic_images(count: int, size: int = 256, seed: int = 0) -> list:
    """``count`` smooth random fields as (size, size, 3) BGR uint8 images, the same for a seed."""
    import cv2

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        field = sum(cv2.resize(rng.standard_normal((side, side, 3)).astype(np.float32), (size, size),
                               interpolation=cv2.INTER_CUBIC) * (OCTAVES[0] / side) for side in OCTAVES)
        low, high = field.min(), field.max()
        images.append(np.rint((field - low) * (255.0 / (high - low))).astype(np.uint8))
    return images


def run_eager(model):
    """``model`` as a callable: (N, C, H, W) float32 numpy -> (N, classes) numpy logits, eager MegEngine."""
    import megengine

    device = next(iter(model.parameters())).device
    return lambda x: model(megengine.tensor(x, device=device)).numpy()


def compare(model, batches, labels=None) -> dict:
    """fp32 ``model`` against its bf16 emulation (and its folded float32 form) on ``batches``."""
    from megzoo.quantization import top1_agreement
    from megzoo.quantization.bf16 import emulate_bf16, fold_batch_norms

    model.eval()
    logits = {"fp32": [], "bf16": [], "folded": []}

    def recorded(name, fn):
        def call(x):
            out = fn(x)
            logits[name].append(out)
            return out
        return call

    fp32 = recorded("fp32", run_eager(model))
    agreement, images = top1_agreement(fp32, recorded("bf16", run_eager(emulate_bf16(model))), batches)
    folded = recorded("folded", run_eager(fold_batch_norms(model)))
    for batch in batches:
        folded(batch)
    ref, bf16, folded = (np.concatenate(logits[k]) for k in ("fp32", "bf16", "folded"))
    scale = float(np.abs(ref).max())
    ordered = np.sort(ref, axis=1)
    margins = (ordered[:, -1] - ordered[:, -2]) / scale
    flipped = ref.argmax(axis=1) != bf16.argmax(axis=1)
    row = {"images": images, "top1_agreement": agreement, "logit_scale": scale,
           "max_rel_logit_error": float(np.abs(bf16 - ref).max()) / scale,
           "max_rel_logit_error_fold_only": float(np.abs(folded - ref).max()) / scale,
           "median_rel_top1_margin": float(np.median(margins)),
           "rel_top1_margins_of_flipped": sorted(float(m) for m in margins[flipped])}
    if labels is not None:
        row["top1_fp32"] = float((ref.argmax(axis=1) == labels).mean())
        row["top1_bf16"] = float((bf16.argmax(axis=1) == labels).mean())
    return row


def digits_row(run: Path) -> dict:
    import megzoo

    clf = megzoo.Classifier("resnet18", str(run / "best.pkl"), backend="eager", progress=False)
    batches, labels = held_out(run, clf.preprocess)
    row = compare(clf.model, batches, labels)
    return {"model": "resnet18", "weights": "the digits demo's best.pkl", "input_size": batches[0].shape[-1],
            "data": "held-out digits", **row}


def random_imagenet_row(name: str, images: list, batch_size: int) -> dict:
    import megengine

    import megzoo
    from megzoo.transforms import EvalPreprocessor

    megengine.random.seed(0)
    model = megzoo.get_model(name, pretrained=False)
    with EvalPreprocessor(name) as pre:
        batches = list(pre.batches(images, batch_size))
    row = compare(model, batches)
    return {"model": name, "weights": "random (megzoo's default init, seed 0)", "input_size": batches[0].shape[-1],
            "data": "synthetic smooth random fields", **row}


def machine() -> str:
    from megzoo.host import cpu_flags, machine_record, usable_cpus

    info = machine_record()
    flags = cpu_flags()
    isa = ", ".join(f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if f in flags)
    return (f"{usable_cpus()}-vCPU {info['model_name']} (cpu family {info['family']}, model {info['model']}); "
            f"{isa}")


def print_rows(rows) -> None:
    print(f"{'model':<10} {'data':<32} {'images':>6} {'top-1 fp32':>10} {'top-1 bf16':>10} {'same top-1':>10} "
          f"{'max |dlogit|/scale':>18} {'fold only':>9} {'median margin':>13} margins of flips")
    for r in rows:
        top1 = [f"{100 * r[k]:.2f}%" if k in r else "-" for k in ("top1_fp32", "top1_bf16")]
        print(f"{r['model']:<10} {r['data']:<32} {r['images']:>6} {top1[0]:>10} {top1[1]:>10} "
              f"{100 * r['top1_agreement']:>9.1f}% {r['max_rel_logit_error']:>18.2e} "
              f"{r['max_rel_logit_error_fold_only']:>9.1e} {r['median_rel_top1_margin']:>13.2e} "
              f"{' '.join(f'{m:.1e}' for m in r['rel_top1_margins_of_flipped']) or '-'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=str(ROOT / "runs" / "digits"), help="the demo's run folder")
    parser.add_argument("--models", default="resnet18,resnet50", help="random-weight ImageNet models")
    parser.add_argument("--images", type=int, default=64, help="synthetic images per ImageNet model")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", nargs="?", const=str(RESULT), metavar="PATH",
                        help=f"write the rows as JSON (default path {RESULT.relative_to(ROOT)})")
    args = parser.parse_args()

    run = Path(args.run)
    if not (run / "best.pkl").is_file():
        print(f"no {run / 'best.pkl'}: run `bash scripts/demo.sh {run}` first", file=sys.stderr)
        return 2
    load_start = os.getloadavg()
    rows = [digits_row(run)]
    images = synthetic_images(args.images)
    rows += [random_imagenet_row(name, images, args.batch_size) for name in args.models.split(",") if name]
    print_rows(rows)
    if args.json:
        import megengine

        from megzoo.host import atomic_write_text

        report = {"what": "bf16 inference emulated in float32 (megzoo.quantization.bf16) against fp32, eager MegEngine",
                  "command": "benchmarks/bench_bf16_accuracy.py " + " ".join(sys.argv[1:]),
                  "date": datetime.date.today().isoformat(), "machine": machine(),
                  "megengine": megengine.__version__, "python": platform.python_version(),
                  "load_average": {"start": load_start, "end": os.getloadavg()}, "rows": rows}
        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
