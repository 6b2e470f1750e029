"""``megzoo predict`` and ``megzoo eval``."""
import json
import sys

from . import options

_WEIGHTS_HELP = ("weights: a tag (megengine, tv_in1k, tv2_in1k, ...; `megzoo info MODEL` lists them), "
                 "ARCH.TAG, or a checkpoint path/URL (default: the model's default weights)")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="classify images with a pretrained model (top-k ImageNet classes)",
        description="Print the top-k classes and probabilities of each IMAGE (JPEG, PNG, BMP, WebP, TIFF...).")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    _model_options(p)
    p.add_argument("--topk", type=options.positive, default=5, metavar="K", help="classes per image (default 5)")
    p.add_argument("--batch-size", type=options.positive, default=16, metavar="N",
                   help="images per model call (default 16)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_predict)

    p = subparsers.add_parser(
        "eval", help="top-1/top-5 accuracy on an image folder (ImageNet-val layout)",
        description="Accuracy of a model on DIR/CLASS/IMAGE files. Class folders are ImageNet WordNet ids "
                    "(n01440764 ...), class indices (0 ... 999), or any names taken in sorted order.")
    p.add_argument("--data", required=True, metavar="DIR", help="folder with one sub-folder per class")
    _model_options(p)
    p.add_argument("--batch-size", type=options.positive, default=32, metavar="N",
                   help="images per model call (default 32)")
    p.add_argument("--workers", type=options.non_negative, default=None, metavar="N",
                   help="decode threads (default: one per core, up to 8; 0: decode in the main thread)")
    p.add_argument("--limit", type=options.positive, default=None, metavar="N",
                   help="evaluate N images spread evenly over the folder (default: all)")
    p.add_argument("--labels", choices=("auto", "wnid", "index", "sorted"), default="auto",
                   help="how class folders map to classes (default auto: wnid, else index, else sorted "
                        "when there are as many folders as classes)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_eval)


def _model_options(p) -> None:
    from ..quantization.ptq import OBSERVERS

    p.add_argument("--model", default="resnet50", help="model name (default resnet50; `megzoo list --pretrained`)")
    p.add_argument("--weights", metavar="TAG|FILE", default=None, help=_WEIGHTS_HELP)
    p.add_argument("--num-classes", type=options.num_classes, default=None, metavar="N",
                   help="classes of a checkpoint of your own (default 1000)")
    p.add_argument("--device", default=None,
                   help="cpu, gpu, or a MegEngine device name (default: $MEGZOO_DEVICE, else the GPU if usable, "
                        "else cpu)")
    from ..inference import backend_names
    from ..predict import AUTO_COMPILE_MIN_IMAGES, BACKENDS

    p.add_argument("--backend", choices=tuple(BACKENDS), default="auto",
                   help=f"compiled: the fastest backend on this machine (measured once; several times faster than "
                        f"eager after a compile of a second or a few; docs/backends.md); "
                        f"{' / '.join(backend_names())}: that runtime; eager: the model as it is; auto (default): "
                        f"compiled on the CPU for {AUTO_COMPILE_MIN_IMAGES} images or more")
    p.add_argument("--threads", type=options.positive, default=None, metavar="N",
                   help="threads of the compiled backend (default: the CPUs this process may use)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="arithmetic of the compiled model: fp32 (default) or bf16 (opt-in: CPUs with BF16 and a "
                        "backend that runs it, refused elsewhere; always compiled; docs/backends.md)")
    p.add_argument("--int8", action="store_true",
                   help="run the model quantized to int8: calibrated on --calibration DIR, or as fine-tuned by "
                        "`megzoo train --qat` (its best.pkl as --weights); docs/quantization.md")
    p.add_argument("--calibration", metavar="DIR", default=None,
                   help="calibration images for --int8 (e.g. the training folder), read with the model's preprocessing")
    p.add_argument("--observer", choices=tuple(OBSERVERS), default=None,
                   help="how --int8 calibration sets activation ranges (default minmax, measured)")


def _weights_name(model: str, weights):
    """The registered weight name ``--weights`` designates, or None (a file, URL or unknown)."""
    from ..weights import Weights, resolve_weights

    try:
        source = resolve_weights(model, True if weights is None else weights)
    except Exception:  # reported properly when the model is built
        return None
    return source.name if isinstance(source, Weights) else None


def _classifier(args, **kwargs):
    """Build the Classifier, or print a one-line weights error and the pre-fetch hint (None)."""
    from ..device import select_device
    from ..predict import Classifier
    from ..registry import get_model_entry
    from ..weights.errors import DownloadError, OfflineError, WeightsError
    from .text import printable

    get_model_entry(args.model)  # unknown model: the usual error, before anything else
    select_device(args.device)
    name = _weights_name(args.model, args.weights)
    try:
        return Classifier(args.model, args.weights, num_classes=args.num_classes, backend=args.backend,
                          threads=args.threads, progress=not getattr(args, "no_progress", False), int8=args.int8,
                          calibration=args.calibration, observer=args.observer, precision=args.precision, **kwargs)
    except WeightsError as exc:
        message = " ".join(str(exc).split())
        print(f"megzoo {args.command}: error: {printable(message)}", file=sys.stderr)
        if name and isinstance(exc, (OfflineError, DownloadError)) and "megzoo download" not in message:
            print(f"hint: on a machine with network, run `megzoo download {name} --to DIR`, copy DIR here and "
                  "set MEGZOO_HOME=DIR (and MEGZOO_OFFLINE=1 to never try the network)", file=sys.stderr)
        return None


def cmd_predict(args) -> int:
    from .text import printable

    classifier = _classifier(args, batch_size=args.batch_size, workers=None)
    if classifier is None:
        return 2
    with classifier:
        if args.json:
            results = classifier.predict(args.images, topk=args.topk)
            print(json.dumps({"model": classifier.model_name, "weights": classifier.weights,
                              "backend": classifier.backend_for(len(args.images)),
                              "precision": classifier.precision_run,
                              "results": [r.as_dict() for r in results]}, indent=2))
            return 0
        classifier.runner_for(len(args.images))  # the backend follows the whole job's size, not each chunk's
        for start in range(0, len(args.images), args.batch_size):
            for result in classifier.predict(args.images[start:start + args.batch_size], topk=args.topk):
                print(printable(result.image))  # names from files are shown escaped (docs/cli.md)
                for score in result.topk:
                    print(f"  {score.probability:8.4f}  {printable(score.name)} ({score.index})")
    return 0


def cmd_eval(args) -> int:
    from ..evaluate import evaluate
    from .text import printable

    classifier = _classifier(args, batch_size=args.batch_size, workers=args.workers)
    if classifier is None:
        return 2
    with classifier:
        result = evaluate(args.data, classifier=classifier, limit=args.limit, labels=args.labels,
                          progress=not args.no_progress)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
        return 0
    how = {"wnid": "named by WordNet id", "index": "named by class index", "sorted": "in sorted order"}[result.labels]
    print(printable(f"{result.model} ({result.weights}) on {result.data}: {result.images} images in {result.classes} "
                    f"classes (folders {how})"))
    print(result)
    compiled = f", of which compiling {result.compile_seconds:.1f} s" if result.runtime else ""
    runtime = f" ({result.runtime})" if result.runtime and result.runtime != result.backend else ""
    print(f"{result.images_per_second:.1f} images/s ({result.seconds:.1f} s{compiled}; "
          f"{result.backend}{runtime} backend, {result.precision})")
    return 0
