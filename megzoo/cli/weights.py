"""``megzoo info``, ``megzoo download``, ``megzoo convert`` and ``megzoo verify``."""
import json
import os
import sys
from pathlib import Path

from ..host import atomic_write
from .paths import check_output, naming_output


def register(subparsers) -> None:
    p = subparsers.add_parser("info", help="architecture facts and its pretrained weights")
    p.add_argument("model", help="model name, e.g. resnet50")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_info)

    p = subparsers.add_parser(
        "download", help="pre-fetch weights into the cache, or into DIR for an offline machine",
        description="Download and verify weights. With --to DIR the files are laid out as a megzoo cache "
                    "(DIR/weights/...): copy DIR to the offline machine and set MEGZOO_HOME=DIR there.")
    p.add_argument("names", nargs="+", metavar="NAME", help="model (its default weights), ARCH.TAG, or 'all'")
    p.add_argument("--to", metavar="DIR", help="cache root to fill instead of $MEGZOO_HOME")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=cmd_download)

    p = subparsers.add_parser("convert", help="convert a torchvision .pth (or BaseCls .pkl) into a megzoo checkpoint")
    p.add_argument("file", help="input checkpoint (.pth zip file, or .pkl)")
    p.add_argument("--arch", required=True, help="megzoo model name the checkpoint is for")
    p.add_argument("-o", "--output", required=True, help="output .pkl (MegEngine pickle of numpy arrays)")
    p.set_defaults(handler=cmd_convert)

    p = subparsers.add_parser(
        "verify", help="re-check every cached weight file against its published sha256, else its recorded one",
        description="Re-check the cache: a file is compared with the sha256 (or prefix) its publisher gives, else "
                    "with the sha256 recorded on download. ok: it matches; BAD: it does not and was removed; "
                    "unchecked: there is nothing to compare it with; PROBLEM: an unreadable record, a file another "
                    "user could have written, or a BAD file that cannot be removed here (kept). Exit status 1 when a file is BAD or has a PROBLEM.")
    p.set_defaults(handler=cmd_verify)


def _fmt(value, spec=".3f", none="n/a"):
    return none if value is None else format(value, spec)


def cmd_info(args) -> int:
    from ..registry import model_info

    info = model_info(args.model)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['name']}  ({info['family']})  {info['summary']}")
    print(f"params {info['params']:,}   GMACs {info['gmacs']:.3f} at 224x224")
    if not info["weights"]:
        print("no registered pretrained weights")
        return 0
    print(f"\n{'weights':<28} {'top-1':>7} {'top-5':>7}  {'resize/crop':<11} source")
    for w in info["weights"]:
        mark = " (default)" if w["name"] == info["default_weights"] else ""
        pre = w["preprocess"]
        print(f"{w['name'] + mark:<28} {_fmt(w['top1']):>7} {_fmt(w['top5']):>7}  "
              f"{pre['resize_size']}/{pre['input_size']:<7} {w['urls'][0]}")
    pre = info["weights"][0]["preprocess"]
    print(f"\ninput: {pre['color_order']} 0-255, mean {list(pre['mean'])}, std {list(pre['std'])}, "
          f"{pre['interpolation']} resize")
    return 0


def _selected(names):
    from ..registry import get_weights, list_models
    from ..weights import weights_for

    if names == ["all"]:
        return [w for arch in list_models(pretrained=True) for w in weights_for(arch)]
    return [get_weights(n) for n in names]


def cmd_download(args) -> int:
    from ..weights import fetch_weights

    if args.to:
        check_output(args.to, folder=True)  # docs/cli.md#output-paths
        os.environ["MEGZOO_HOME"] = str(Path(args.to).expanduser().resolve())
    for weights in _selected(args.names):
        path = fetch_weights(weights, progress=not args.no_progress)
        print(f"{weights.name}: {path}")
    if args.to:
        print(f"\nCopy {os.environ['MEGZOO_HOME']} to the offline machine and set MEGZOO_HOME to it there "
              "(with MEGZOO_OFFLINE=1 to never touch the network).")
    return 0


def cmd_convert(args) -> int:
    import megengine

    from ..registry import get_model
    from ..weights import load_pretrained

    source = Path(args.file)
    output = check_output(args.output)  # before the checkpoint is read (docs/cli.md#output-paths)
    model = get_model(args.arch)
    report = load_pretrained(model, args.arch, source, progress=False)
    with naming_output(output):
        atomic_write(output, lambda f: megengine.save(model.state_dict(), f))
    print(report, file=sys.stderr)
    print(f"wrote {output} ({output.stat().st_size:,} bytes); load it with "
          f"megzoo.{args.arch}(pretrained={str(output)!r})")
    return 0


def cmd_verify(args) -> int:
    from ..weights.cache import verify_cache

    results = verify_cache()
    label = {"ok": "ok", "unchecked": "unchecked", "bad": "BAD", "problem": "PROBLEM"}
    counts = {status: 0 for status in label}
    for result in results:
        counts[result.status] += 1
        suffix = "; removed" if result.status == "bad" else ""
        print(f"{label[result.status]:<9} {result.path}  ({result.reason}{suffix})")
    summary = f"{counts['ok'] + counts['bad']} files checked, {counts['bad']} bad"
    if counts["unchecked"]:
        summary += f"; {counts['unchecked']} unchecked (no published or recorded sha256)"
    if counts["problem"]:
        summary += f"; {counts['problem']} with a problem (kept, see above)"
    print(summary)
    return 1 if counts["bad"] or counts["problem"] else 0
