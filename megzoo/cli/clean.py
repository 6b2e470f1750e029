"""``megzoo clean``: find mislabelled, broken and duplicated images in an image folder (docs/cleaning.md)."""
import json
import sys

from . import options


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "clean", help="find mislabelled, broken and duplicated images in an image folder",
        description="Examine DATA (DATA/CLASS/IMAGE, or DATA/train/... and DATA/val/...): likely label errors "
                    "(confident learning with cleanlab on out-of-sample probabilities), unreadable, grayscale, "
                    "odd-sized, near-constant and duplicated images, near-duplicates and outliers. Writes to --out: "
                    "issues.csv, summary.json, contact_sheet.png, exclude.txt (for megzoo train --exclude). "
                    "Never moves or deletes an image. Needs pip install 'megzoo[clean]'.")
    p.add_argument("data", metavar="DATA", help="the image folder")
    p.add_argument("--method", choices=("kfold", "probe", "given"), default="kfold",
                   help="kfold (default): train --folds fresh models, each predicting the fold it did not see (works "
                        "offline, on any data); probe: features of pretrained --model/--weights and a cross-validated "
                        "logistic regression (needs weights); given: your own --pred-probs")
    p.add_argument("--folds", type=int, default=5, metavar="K", help="cross-validation folds (default 5)")
    p.add_argument("--model", default="resnet18", help="architecture (default resnet18)")
    p.add_argument("--weights", default=None, metavar="TAG|FILE",
                   help="kfold: weights to start each fold from (default: from scratch); probe: the backbone's "
                        "weights (default: the model's default pretrained ones)")
    p.add_argument("--input-size", type=options.input_size, default=None, metavar="PX",
                   help="px the images are seen at, 1 to 1024 (default: kfold their median short side, 32 to 224; "
                        "probe the backbone weights' own)")
    p.add_argument("--epochs", type=int, default=10, metavar="N", help="kfold: training epochs per fold (default 10)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="kfold: batch size (default 32)")
    p.add_argument("--lr", type=float, default=0.05, help="kfold: learning rate (cosine schedule; default 0.05)")
    p.add_argument("--hflip", type=float, default=0.5, metavar="P",
                   help="kfold: horizontal flip probability (default 0.5; 0 for digits, text ...)")
    p.add_argument("--pred-probs", default=None, metavar="FILE.npy",
                   help="given: out-of-sample probabilities (N images x K classes; rows in the order issues are "
                        "listed, columns in class-folder order)")
    p.add_argument("--seed", type=int, default=0, help="seed of the folds and of training (default 0)")
    p.add_argument("--out", default="clean", metavar="DIR", help="report folder (default ./clean)")
    p.add_argument("--top", type=int, default=32, metavar="N", help="label issues on the contact sheet (default 32)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print summary.json's content instead of the text report")
    p.set_defaults(handler=cmd_clean)


def cmd_clean(args) -> int:
    from ..cleaning import find_label_issues
    from ..cleaning.label_issues import require_cleanlab
    from . import CLIError
    from .paths import check_output, naming_output
    from .text import printable

    try:
        require_cleanlab()
    except ImportError as exc:
        raise CLIError(str(exc)) from None
    for name in ("folds", "epochs", "batch_size", "top"):
        if getattr(args, name) < (2 if name == "folds" else 1):
            raise ValueError(f"--{name.replace('_', '-')} must be at least {2 if name == 'folds' else 1}")
    check_output(args.out, folder=True)  # before any fold is trained
    log = None if args.json else (lambda message: print(printable(message), file=sys.stderr, flush=True))
    with naming_output(args.out):
        result = find_label_issues(args.data, method=args.method, folds=args.folds, model=args.model,
                                   weights=args.weights, input_size=args.input_size, epochs=args.epochs,
                                   pred_probs=args.pred_probs, out=args.out, top=args.top, seed=args.seed,
                                   progress=args.progress, log=log,
                                   train_settings={"batch_size": args.batch_size, "lr": args.lr, "hflip": args.hflip})
    s = result.summary
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    counts = ", ".join(f"{k} {v}" for k, v in s["counts"].items() if v)
    print(f"{s['images']} images, {len(s['classes'])} classes: {s['flagged_images']} flagged ({counts or 'nothing'})")
    print(f"label issues: {s['label_issues']} (confident learning; the argmax baseline would flag "
          f"{s['argmax_baseline_flags']}); label health {s['health']['overall_label_health_score']:.3f}")
    for pair in s["health"]["confused_pairs"][:3]:  # folder and file names are shown escaped (docs/cli.md)
        print(printable(f"  most confused: {pair['classes'][0]} <-> {pair['classes'][1]} ({pair['images']} images)"))
    for row in [r for r in result.rows if r["is_label_issue"]][:5]:
        print(printable(f"  {row['path']}: given {row['given']}, suggested {row['suggested']} "
                        f"(p {row['p_suggested']})"))
    for name, path in result.files.items():
        print(printable(f"wrote {path}"))
    exclude = result.files.get("exclude.txt", "exclude.txt")
    print(printable(f"next: megzoo train --data {args.data} --exclude {exclude} ..."))
    return 0
