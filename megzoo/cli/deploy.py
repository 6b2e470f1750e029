"""``megzoo export`` (a ``.mge`` for MegEngine Lite or an ``.onnx``, with metadata and a parity check)
and ``megzoo benchmark`` (eager vs the compiled backends: images/s, latency, peak memory, % of peak).

Argument parsing and printing only: models come from :mod:`megzoo.model_source`, the export
from :mod:`megzoo.inference.export` (with ``--int8``, the int8 model from
:mod:`megzoo.quantization.export_int8`), the benchmark from :mod:`megzoo.benchmark`."""
import json
import sys
import time
from pathlib import Path
from typing import List, Optional

from . import options


def register(subparsers) -> None:
    """Add ``megzoo export`` and ``megzoo benchmark`` to ``subparsers``."""
    p = subparsers.add_parser(
        "export", help="write a .mge for MegEngine Lite or an .onnx (+ OUTPUT.json metadata), checked against eager",
        description="Write a model (registered, a checkpoint, or any MegEngine module a function of your own returns) "
                    "as a .mge for MegEngine Lite (traced; BN folded, conv+bias+ReLU fused) or as "
                    "an ONNX model (--format onnx, or an -o name ending in .onnx; BN folded, dynamic batch), with "
                    "its metadata in OUTPUT.json. The written file is run (by Lite, or by ONNX Runtime at two batch "
                    "sizes) and compared with eager MegEngine on a random batch and a real image; above --tolerance "
                    "the figures are printed, nothing is written and the command exits 1.")
    _export_file_arguments(p)
    _export_weights_arguments(p)
    _export_graph_arguments(p)
    _export_int8_arguments(p)
    _export_check_arguments(p)
    p.set_defaults(handler=cmd_export)

    p = subparsers.add_parser(
        "benchmark", help="images/s, latency, peak memory: eager vs the compiled backends",
        description="Measure eager MegEngine and megzoo's compiled backends side by side: by default lite (the "
                    "traced, fused graph run by MegEngine Lite with profiled kernels) and onnxruntime (the model "
                    "exported to ONNX, run by ONNX Runtime inside a megzoo process); --modes adds the others "
                    "(openvino, int8 and bf16 modes). Each configuration runs in a fresh process; the machine's "
                    "fp32 and int8 limits are measured first with compiled FMA and int8 dot-product loops. "
                    "Figures are unreliable while other work loads the machine (check `uptime`).")
    _benchmark_what_arguments(p)
    _benchmark_run_arguments(p)
    _benchmark_report_arguments(p)
    p.set_defaults(handler=cmd_benchmark)


def _export_file_arguments(p) -> None:
    """``megzoo export``: the model exported and the file written (its format)."""
    p.add_argument("model", metavar="NAME|CHECKPOINT|FILE.py:FUNCTION",
                   help="registered model name (e.g. resnet50), a state-dict checkpoint (.pkl/.pth; the "
                        "architecture from --arch or the file name), or any MegEngine module: FILE.py:FUNCTION, "
                        "a function in your own Python file returning the module, which takes one (N, C, H, W) "
                        "float tensor. The file is imported and so RUNS, as megengine.hub runs a hubconf.py: name "
                        "only code you trust. --weights FILE then loads a state dict into the module (strictly)")
    p.add_argument("-o", "--output", required=True, metavar="FILE.mge|FILE.onnx", help="output file")
    p.add_argument("--format", choices=("mge", "onnx"), default=None,
                   help="file format (default: onnx for an -o name ending in .onnx, else mge)")
    p.add_argument("--opset", type=int, default=None, metavar="N",
                   help="ONNX opset (default 17; 13 to 21)")
    p.add_argument("--static-batch", action="store_true",
                   help="ONNX: fix the batch axis to N of --input-shape (default: a symbolic batch axis 'N')")


def _export_weights_arguments(p) -> None:
    """``megzoo export``: the model's weights and classes."""
    p.add_argument("--weights", metavar="TAG|FILE", default=None,
                   help="weights for NAME: a tag (megzoo info NAME lists them), 'default', or a checkpoint path "
                        "(default: none, random initialisation); for FILE.py:FUNCTION a state-dict file "
                        "(megengine.save(model.state_dict())) with exactly the module's keys and shapes (default: "
                        "the module as FUNCTION returns it)")
    p.add_argument("--arch", metavar="NAME",
                   help="architecture of a state-dict CHECKPOINT (default: from its file name)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="CHECKPOINT (or the --weights FILE of FILE.py:FUNCTION) is a pickled whole module "
                        "(megengine.save(model)) you trust: unpickle it with megengine.load, which runs any code the "
                        "file carries. Without it only state dicts are read, by an allow-list reader that runs nothing")
    p.add_argument("--num-classes", type=options.num_classes, default=None,
                   help="classifier outputs (default: the model's)")


def _export_graph_arguments(p) -> None:
    """``megzoo export``: the input shape and the graph's optimisations and layout."""
    p.add_argument("--input-shape", default="1,3,224,224", metavar="N,C,H,W",
                   help="input shape the graph is made for (default 1,3,224,224); the batch stays dynamic "
                        "unless --static-batch")
    p.add_argument("--fuse", dest="fuse", action="store_true", default=True,
                   help="apply inference graph optimisations: BN folding, conv+bias+ReLU fusion (default)")
    p.add_argument("--no-fuse", dest="fuse", action="store_false", help="dump the graph as traced")
    p.add_argument("--layout", choices=("auto", "nchw", "nchw88", "nchw44"), default="auto",
                   help="internal convolution layout: auto (nchw88 on x86 with AVX2 where it passes its probe on "
                        "this machine, else nchw), nchw (portable), nchw88 (x86), nchw44 (ARM); input and output stay "
                        "NCHW. A layout that failed its probe here is refused (.mge only)")


def _export_int8_arguments(p) -> None:
    """``megzoo export``: ``--int8`` and its calibration."""
    from ..quantization.ptq import OBSERVERS

    p.add_argument("--int8", action="store_true",
                   help="write the model quantized to int8 (an int8 QDQ .onnx, or an int8 NCHW .mge), calibrated on "
                        "--calibration DIR, or a `megzoo train --qat` checkpoint as it is; checked against the eager "
                        "int8 model, with its top-1 agreement with the fp32 model printed (docs/quantization.md)")
    p.add_argument("--calibration", metavar="DIR", default=None,
                   help="--int8: calibration images (e.g. the training folder), read with the model's preprocessing")
    p.add_argument("--calibration-images", type=options.positive, default=512, metavar="N",
                   help="--int8: calibration images used at most, spread over the folder (default 512)")
    p.add_argument("--observer", choices=tuple(OBSERVERS), default=None,
                   help="--int8: how activation ranges are set (default minmax, measured: docs/quantization.md)")


def _export_check_arguments(p) -> None:
    """``megzoo export``: the parity check."""
    p.add_argument("--tolerance", type=options.tolerance, default=None,
                   help="parity tolerance: max |exported - eager| / max |eager| (default 1e-4); with --int8, max "
                        "|exported - eager int8| in int8 output steps (default 2)")
    p.add_argument("--image", metavar="FILE", default=None,
                   help="real image for the parity check (default: docs/sample.jpg if present, else a generated one)")
    p.add_argument("--no-check", dest="check", action="store_false", help="skip the parity check")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="run the check in bf16 (an .onnx as OpenVINO runs it with precision bf16, on CPUs with BF16; "
                        "default tolerance 0.05) and report its error and top-1 agreement against eager fp32; "
                        "the file is the same either way (default fp32)")
    p.add_argument("--threads", type=int, default=None, help="threads for the parity run (default: all usable CPUs)")


def _benchmark_what_arguments(p) -> None:
    """``megzoo benchmark``: the models, batch sizes, threads, input size and paths measured."""
    p.add_argument("--models", default="resnet18,resnet50,vgg16", help="comma-separated model names")
    p.add_argument("--batch", default="1,16", help="comma-separated batch sizes (default 1,16)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads of the compiled backends (default: all usable CPUs)")
    p.add_argument("--input-size", type=options.input_size, default=224, metavar="PX",
                   help="input side in pixels (default 224; at most 1024)")
    p.add_argument("--modes", default="eager,lite,onnxruntime",
                   help="which paths to run, of eager, lite (MegEngine Lite; 'optimised', its old name, works too), "
                        "onnxruntime, ort_alone (the exported .onnx "
                        "in a process without megzoo), onnxruntime_untamed (without keeping MegEngine's poller "
                        "thread back), onnxruntime_int8 and lite_int8 (the model quantized to int8 on random "
                        "calibration batches, then run by ONNX Runtime / MegEngine Lite); "
                        "and the modes of any backend registered in megzoo.inference.backends; "
                        "default eager,lite,onnxruntime")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: also the modes that run the float model in bf16 (openvino_bf16; CPUs with BF16 only, "
                        "refused elsewhere); default fp32")


def _benchmark_run_arguments(p) -> None:
    """``megzoo benchmark``: how each configuration runs (repeats, time budget, Lite's kernels and layout)."""
    p.add_argument("--repeats", type=int, default=20, help="timed runs at most (median reported; default 20)")
    p.add_argument("--min-repeats", type=int, default=3, help="timed runs at least (default 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    p.add_argument("--time-budget", type=float, default=20.0, metavar="S",
                   help="stop adding timed runs past this many seconds per configuration (default 20)")
    p.add_argument("--algo", choices=("profile", "heuristic"), default="profile",
                   help="kernel choice of the lite mode (default profile, cached in $MEGZOO_HOME/algo_cache)")
    p.add_argument("--layout", choices=("auto", "nchw", "nchw88"), default="auto",
                   help="internal convolution layout of the lite mode (default auto: nchw88 on x86 with AVX2 "
                        "where it passes its probe here, else nchw); a layout that failed its probe is refused")
    p.add_argument("--micro-batch", type=_micro_batch, default="auto", metavar="auto|none|N",
                   help="images each Lite network of the lite mode runs at a time (default auto: 1 with the "
                        "NCHW layout, so one kernel profile serves every batch size; else whole shares)")
    p.add_argument("--cold", action="store_true",
                   help="also measure the first compile with an empty algorithm cache (slow)")


def _benchmark_report_arguments(p) -> None:
    """``megzoo benchmark``: the machine's peak, the time allowed and the output."""
    p.add_argument("--peak-gflops", type=float, default=None,
                   help="fp32 peak of the machine in GFLOP/s (default: measured with a compiled FMA loop, else "
                        "cores x FLOP/cycle x clock)")
    p.add_argument("--no-measure-peak", dest="measure_peak", action="store_false",
                   help="skip the FMA-loop measurement (the %% column then uses the estimate)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds allowed per configuration (default 1800)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")


# ------------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------------
def _parse_shape(text: str) -> tuple:
    from ..weights.limits import MAX_INPUT_SIZE

    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"--input-shape must be N,C,H,W positive ints, got {text!r}")
    if max(shape[2:]) > MAX_INPUT_SIZE:
        raise ValueError(f"--input-shape {text}: H and W must be at most {MAX_INPUT_SIZE} px "
                         "(docs/cli.md#size-limits)")
    return shape


def _int_list(text: str, what: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ValueError(f"{what} must be comma-separated positive ints, got {text!r}")
    return values


def _micro_batch(text: str):
    import argparse

    from ..benchmark import parse_micro_batch

    try:
        return parse_micro_batch(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _default_image() -> Optional[Path]:
    for candidate in (Path.cwd() / "docs" / "sample.jpg", Path(__file__).resolve().parents[2] / "docs" / "sample.jpg"):
        if candidate.is_file():
            return candidate
    return None


def cmd_export(args) -> int:
    """``megzoo export``: check the arguments, build (and with --int8 quantize) the model, export, print."""
    from ..inference.export import INT8_TOLERANCE_STEPS

    shape = _parse_shape(args.input_shape)
    fmt = _check_export_arguments(args)
    int8 = _int8_export(args, shape) if args.int8 else None
    model, meta = _export_model(args, shape, int8)
    image = Path(args.image) if args.image else _default_image()
    t0 = time.perf_counter()
    float_model, parity_inputs = model, None
    if int8 is not None:
        model, parity_inputs = int8.quantized(model)
    # unset: export's default for the model (output steps for any int8 one, a FILE.py:FUNCTION's too)
    tolerance = args.tolerance if args.tolerance is not None else (INT8_TOLERANCE_STEPS if int8 is not None else None)
    report = _write_export(args, model, meta, fmt, shape, image, tolerance, parity_inputs)
    if report is None:
        return 1
    _print_written(report, fmt, args.fuse, time.perf_counter() - t0)
    _print_parity(report, report.parity["tolerance"] if report.parity else tolerance)
    if int8 is not None:
        _print_agreement(int8, float_model, report.path, args.threads)
    return 0


def _check_export_arguments(args) -> str:
    """Refuse what cannot be exported before the model is built; the format (``"mge"``/``"onnx"``)."""
    from ..inference import metadata_path, resolve_layout
    from ..inference.export import export_format
    from ..model_source import is_function_source
    from .paths import check_output

    fmt = export_format(args.output, args.format)
    check_output(args.output)  # before the model is built, exported and checked
    check_output(metadata_path(args.output))
    if fmt == "mge":
        if args.opset is not None or args.static_batch:
            raise ValueError("--opset and --static-batch apply to --format onnx only")
        resolve_layout(args.layout, args.fuse)  # a layout refused here is refused before the model is built
    elif args.layout != "auto":
        raise ValueError("--layout applies to .mge files only (ONNX Runtime chooses its own kernels)")
    function_source = is_function_source(args.model)
    if function_source and args.int8:
        raise ValueError("--int8 quantizes megzoo's registered families only: quantize your module with "
                         "megengine.quantization in FUNCTION and export what it returns (without --int8)")
    if args.weights is None and not function_source and not Path(args.model).expanduser().exists():
        print(f"note: exporting {args.model} with random weights (pass --weights TAG|FILE for trained ones)",
              file=sys.stderr)
    if args.calibration is not None and not args.int8:
        raise ValueError("--calibration is for --int8 exports")
    _check_bf16_check(args, fmt)
    return fmt


def _check_bf16_check(args, fmt: str) -> None:
    """``--precision bf16``: a checked float .onnx on a CPU and backend that run bf16, refused
    before the model is built (and before an --int8 calibration)."""
    if args.precision != "bf16":
        return
    from ..inference.backends import resolve_backend

    why = ("a .mge runs in fp32 or int8 (MegEngine Lite has no bf16)" if fmt != "onnx" else
           "--int8 writes an int8 model" if args.int8 else "--no-check runs nothing" if not args.check else None)
    if why:
        raise ValueError(f"--precision bf16 checks a float .onnx file in bf16; {why}: leave --precision out")
    resolve_backend("auto", precision="bf16")  # the reason, where nothing runs bf16 here


def _int8_export(args, shape):
    """The arguments of ``--int8`` mapped to :class:`~megzoo.quantization.Int8Export`."""
    from ..quantization import Int8Export, MissingCalibrationError

    try:
        return Int8Export(shape, checkpoint=args.weights or args.model, calibration=args.calibration,
                          observer=args.observer, max_images=args.calibration_images, static_batch=args.static_batch,
                          log=_say)
    except MissingCalibrationError:
        raise ValueError("--int8 needs --calibration DIR (calibration images, e.g. the training folder), "
                         "or a `megzoo train --qat` checkpoint (its best.pkl) as the weights") from None


def _say(message: str) -> None:
    """A progress line on stderr."""
    print(message, file=sys.stderr)


def _export_model(args, shape, int8):
    """(the model to export, its metadata): a QAT checkpoint's int8 model, else the model source's;
    its channels and minimum size checked against ``shape`` (N, C, H, W) before any calibration."""
    from ..inference import check_input_shape
    from ..model_source import model_from_source

    if int8 is not None and int8.qat_checkpoint:
        model, meta = int8.qat_model(None if args.model == int8.checkpoint else args.model, args.num_classes)
    else:
        model, meta = model_from_source(args.model, weights=args.weights, arch=args.arch,
                                        num_classes=args.num_classes, trust_pickle=args.trust_pickle)
    if isinstance(getattr(model, "in_channels", None), int) and shape[1] != model.in_channels:
        raise ValueError(f"--input-shape has {shape[1]} channels but the model takes {model.in_channels}")
    check_input_shape(model, shape)  # the model's minimum size, before calibrating (export checks it too)
    return model, meta


def _write_export(args, model, meta, fmt, shape, image, tolerance, parity_inputs):
    """:func:`megzoo.inference.export` with the arguments; None (and the figures printed) when the
    parity check failed and nothing was written."""
    from ..inference import ParityError, export
    from ..inference.graph_onnx import UnsupportedOperatorError
    from . import CLIError
    from .paths import naming_output

    if fmt == "onnx":
        format_options = dict(opset=args.opset, dynamic_batch=not args.static_batch)
    else:
        format_options = dict(layout=args.layout)
    try:
        with naming_output(args.output):
            return export(model, args.output, shape, format=fmt, fuse=args.fuse, metadata=meta, check=args.check,
                          tolerance=tolerance, image=image, threads=args.threads, parity_inputs=parity_inputs,
                          precision=args.precision, **format_options)
    except UnsupportedOperatorError as exc:  # an operator ONNX has no mapping for: nothing was written
        raise CLIError(str(exc)) from None
    except ParityError as exc:
        print(f"megzoo export: error: {exc}", file=sys.stderr)
        print(f"megzoo export: {args.output} not written", file=sys.stderr)
        return None


def _print_written(report, fmt: str, fuse: bool, seconds: float) -> None:
    """One line: the file written, its size, graph, input and outputs, and the time taken."""
    size = report.path.stat().st_size
    meta = report.metadata
    if fmt == "onnx":
        kind = f"ONNX opset {meta['opset']}, batch {'dynamic' if meta['dynamic_batch'] else 'static'}"
    else:
        kind = f"layout {meta['layout']}"
    print(f"wrote {report.path} ({size / 2**20:.1f} MiB, {'fused' if fuse else 'not fused'}, {kind}, "
          f"input {meta['input_name']} {'x'.join(str(v) for v in meta['input_shape'])} {meta['color_order']}, "
          f"outputs {', '.join(meta['output_names'])}) and {report.metadata_path.name} in {seconds:.1f} s")


def _print_parity(report, tolerance) -> None:
    """The parity figures of each input (in int8 output steps for an int8 model), or that it was skipped."""
    if report.parity and "step" in next(iter(report.parity["inputs"].values()), {}):
        print(f"parity vs the eager int8 model (tolerance {tolerance:g} output step{'' if tolerance == 1 else 's'}; "
              "one step = the most one quantization step of the last int8 tensor moves the top logit):")
        for name, r in report.parity["inputs"].items():
            print(f"  {name:<34} max abs diff {r['max_abs']:.3g}  = {r['rel']:.2f} steps of {r['step']:.3g}  "
                  f"(logit scale {r['scale']:.3g})  ok")
    elif report.parity:
        bf16 = report.parity["precision"] == "bf16"
        run_in = f" of the file run in bf16 by {report.parity['backend']}" if bf16 else ""
        print(f"parity{run_in} vs eager fp32 (tolerance {tolerance:g}, max |diff| / max |logit|; top-1: images "
              "whose class is the same):")
        for name, r in report.parity["inputs"].items():
            top1 = f"  top-1 {r['top1'][0]}/{r['top1'][1]}" if r.get("top1") else ""
            print(f"  {name:<34} max abs diff {r['max_abs']:.3g}  logit scale {r['scale']:.3g}  "
                  f"relative {r['rel']:.3g}{top1}  ok")
        if report.parity.get("top1_agreement") is not None:
            print(f"top-1 agreement with eager fp32 on the check images: {100 * report.parity['top1_agreement']:.1f}%")
    else:
        print("parity check skipped (--no-check)")


def _print_agreement(int8, float_model, path: Path, threads) -> None:
    """The top-1 agreement of the written int8 file with the fp32 model, on calibration images."""
    if int8.calibration is None:
        return
    found = int8.agreement(float_model, path, threads)
    if found is None:
        print("top-1 agreement with an fp32 model not measured: a QAT checkpoint has no fp32 form here "
              "(megzoo eval --weights best.pkl --int8 measures its accuracy)")
        return
    same, n = found
    print(f"top-1 agreement of {path.name} with the fp32 model: {100 * same:.1f}% of {n} calibration images")


# ------------------------------------------------------------------------------------------------
# benchmark
# ------------------------------------------------------------------------------------------------
def cmd_benchmark(args) -> int:
    from ..benchmark import format_table, run_benchmark
    from ..host import usable_cpus
    from ..registry import get_model_entry

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for name in models:
        get_model_entry(name)
    batches = _int_list(args.batch, "--batch")
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    if args.precision == "bf16":
        from ..inference.backends import bench_modes, resolve_backend

        resolve_backend("auto", precision="bf16")  # the reason, before anything runs, where nothing runs bf16
        modes += tuple(m.name for m in bench_modes() if m.precision == "bf16" and m.name not in modes)
    log = None if args.json else (lambda msg: print(msg, file=sys.stderr, flush=True))
    report = run_benchmark(models, batches, threads=args.threads or usable_cpus(), input_size=args.input_size,
                           modes=modes, repeats=args.repeats, min_repeats=args.min_repeats, warmup=args.warmup,
                           time_budget=args.time_budget, algo=args.algo, layout=args.layout, cold=args.cold,
                           peak_gflops=args.peak_gflops, timeout=args.timeout, micro_batch=args.micro_batch,
                           measure_peak=args.measure_peak, log=log)
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 1 if any(r.get("error") for r in report["results"]) else 0
