"""``megzoo info``, ``megzoo download``, ``megzoo convert`` and ``megzoo verify``."""
import json
import os
import sys
from pathlib import Path

from ..host import atomic_write
from . import options
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

    p = subparsers.add_parser(
        "convert", help="a MegEngine .mge graph to ONNX (checked against Lite), or a torchvision .pth / BaseCls .pkl "
                        "to a megzoo checkpoint",
        description="megzoo convert model.mge -o model.onnx: the graph MegEngine dumped (with or without "
                    "optimize_for_inference) converted to ONNX operator by operator, what mgeconvert's "
                    "`convert mge_to_onnx -i m.mge -o m.onnx` does. The ONNX file is run by ONNX Runtime and the "
                    ".mge by MegEngine Lite on a random batch at the dumped batch size and at a second one (dynamic "
                    "batch); above --tolerance the figures are printed, nothing is written and the command exits 1. "
                    "An operator without an ONNX mapping, a .mge dumped for the NCHW88/NCHW44 layouts and a graph "
                    "whose input is not one float32 NCHW batch are refused. "
                    "megzoo convert CHECKPOINT --arch NAME -o OUT.pkl: a torchvision .pth (or BaseCls .pkl) into a "
                    "megzoo checkpoint.")
    p.add_argument("file", metavar="MODEL.mge|CHECKPOINT",
                   help="a MegEngine .mge graph (converted to ONNX), or a checkpoint (.pth zip file, or .pkl) "
                        "with --arch")
    p.add_argument("-o", "--output", required=True, metavar="FILE.onnx|FILE.pkl",
                   help="the ONNX model for a .mge; the megzoo checkpoint (.pkl) for a checkpoint")
    p.add_argument("--arch", help="checkpoint: the megzoo model name it is for")
    p.add_argument("--opset", type=int, default=None, metavar="N", help=".mge: ONNX opset (default 17; 13 to 21)")
    p.add_argument("--static-batch", action="store_true",
                   help=".mge: fix the batch axis to the dumped batch size (default: a symbolic batch axis 'N')")
    p.add_argument("--tolerance", type=options.tolerance, default=None,
                   help=".mge: parity tolerance, max |ONNX - Lite| / max |Lite| (default 1e-4)")
    p.add_argument("--no-check", dest="check", action="store_false", help=".mge: skip the parity check")
    p.set_defaults(handler=cmd_convert)

    p = subparsers.add_parser(
        "verify", help="re-check every cached weight file against its published sha256, else its recorded one",
        description="Re-check the cache: a file is compared with the sha256 (or prefix) its publisher gives, else "
                    "with the sha256 recorded on download. ok: it matches; BAD: it does not and was removed; "
                    "unchecked: there is nothing to compare it with; PROBLEM: an unreadable record, a file another "
                    "user could have written, or a BAD file that cannot be removed here (kept). Exit status 1 when a "
                    "file is BAD or has a PROBLEM.")
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


def _is_graph(args) -> bool:
    """``megzoo convert`` of a .mge graph to ONNX (by the input's name or first bytes, or an
    ``-o FILE.onnx``), not of a checkpoint; the options of the other mode refused."""
    from ..inference.model_files import model_file_kind

    graph = Path(args.file).suffix.lower() == ".mge" or Path(args.output).suffix.lower() == ".onnx"
    if not graph and Path(args.file).is_file():
        try:
            graph = model_file_kind(args.file) == "mge"
        except (ValueError, OSError):  # not a graph: a checkpoint (read and checked as one)
            graph = False
    if graph:
        if args.arch is not None:
            raise ValueError("--arch is for checkpoints; a .mge graph is converted as it is")
        if Path(args.output).suffix.lower() != ".onnx":
            raise ValueError(f"a .mge graph converts to ONNX: name the output FILE.onnx, not {args.output}")
        return True
    given = [flag for flag, value in (("--opset", args.opset is not None), ("--static-batch", args.static_batch),
                                      ("--tolerance", args.tolerance is not None), ("--no-check", not args.check))
             if value]
    if given:
        raise ValueError(f"{', '.join(given)}: for a .mge graph converted to ONNX, not for a checkpoint")
    if args.arch is None:
        raise ValueError("--arch NAME is needed to convert a checkpoint (the megzoo model it is for)")
    return False


def cmd_convert(args) -> int:
    if _is_graph(args):
        return _convert_graph(args)
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


def _convert_graph(args) -> int:
    """``megzoo convert MODEL.mge -o MODEL.onnx``: 0 written, 1 the parity check failed (nothing written)."""
    import time

    from ..inference import DEFAULT_TOLERANCE, ParityError
    from ..inference.graph_onnx import UnsupportedOperatorError
    from ..inference.mge_convert import convert_mge
    from . import CLIError

    output = check_output(args.output)  # before the graph is read (docs/cli.md#output-paths)
    tolerance = DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance
    t0 = time.perf_counter()
    try:
        with naming_output(output):
            report = convert_mge(args.file, output, opset=args.opset, dynamic_batch=not args.static_batch,
                                 check=args.check, tolerance=tolerance)
    except UnsupportedOperatorError as exc:  # an operator, a layout or an input ONNX cannot take
        raise CLIError(str(exc)) from None
    except ParityError as exc:
        print(f"megzoo convert: error: {exc}", file=sys.stderr)
        print(f"megzoo convert: {output} not written", file=sys.stderr)
        return 1
    batch = "dynamic" if report.dynamic_batch else f"static {report.input_shape[0]}"
    print(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MiB, ONNX opset {report.opset}, batch {batch}, "
          f"input data {'x'.join(str(v) for v in report.input_shape)}, outputs {', '.join(report.output_names)}) "
          f"from {args.file} in {time.perf_counter() - t0:.1f} s")
    if report.parity is None:
        print("parity check skipped (--no-check)")
        return 0
    print(f"parity vs MegEngine Lite running {Path(args.file).name} (tolerance {tolerance:g}, "
          "max |diff| / max |Lite output|):")
    for name, r in report.parity["inputs"].items():
        print(f"  {name:<34} max abs diff {r['max_abs']:.3g}  output scale {r['scale']:.3g}  "
              f"relative {r['rel']:.3g}  ok")
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
