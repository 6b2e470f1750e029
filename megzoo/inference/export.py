"""Export a model as a ``.mge`` for MegEngine Lite or an ``.onnx``, with metadata beside it and a parity check.

:func:`export` writes ``model.mge`` (or ``model.onnx``) and ``model.mge.json`` (input name and
shape, preprocessing, class names, layout or opset, versions, parity figures), after running the
written file (with Lite, or with ONNX Runtime) and comparing it with eager MegEngine
(:func:`check_parity`) on a random batch and a real image. The file is staged beside the target
and renamed into place only once it passed: nothing half-written or failed is left behind.
"""
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .._version import __version__
from ..host import atomic_write_text, fsync_path, remove_stale_temporaries, staging_file
from ..metrics import same_top1
from ..weights.catalog import MEAN_BGR, STD_BGR
from .compiled import CompiledModel, as_float32_batch, metadata_path
from .graph import DEFAULT_TOLERANCE, INPUT_NAME, check_input_shape, flatten_outputs, trace_and_dump
from .int8_steps import is_int8_model, output_step
from .layouts import fit_layout, megengine_version, resolve_layout
from .ort_compiled import OrtCompiledModel
from .threads import require_megengine_thread

__all__ = ["export", "export_format", "FORMATS", "check_parity", "ParityError", "ExportReport", "make_test_image",
           "DEFAULT_TOLERANCE", "INT8_TOLERANCE_STEPS", "BF16_TOLERANCE"]

#: the int8 parity tolerance: max |exported - eager| in output steps (what one quantization step
#: of the last int8 tensor is worth in the logits, :func:`megzoo.inference.int8_steps.output_step`)
INT8_TOLERANCE_STEPS = 2.0
#: the default tolerance of a bf16 check (``precision="bf16"``): max |bf16 - eager fp32| / max
#: |eager|; bf16 keeps 8 significant bits (relative rounding 2**-9 per value), and ResNet-18/50's
#: logits moved by 0.5-0.7% of their scale under emulated bf16 rounding (docs/quantization.md,
#: "bf16: what it costs in accuracy"): 0.05 leaves room for kernels that round more often
BF16_TOLERANCE = 5e-2

PathLike = Union[str, "os.PathLike[str]"]


class ParityError(AssertionError):
    """The compiled/exported model's outputs differ from eager ones by more than the tolerance."""


def eager_outputs(model, x: np.ndarray) -> List[np.ndarray]:
    """``model(x)`` in eval mode (its mode restored) as a list of numpy arrays (a nested or dict
    output flattened as the exported file's outputs are: :func:`~megzoo.inference.graph.flatten_outputs`)."""
    import megengine

    was_training = model.training
    model.eval()
    try:
        out = model(megengine.tensor(x))
    finally:
        model.train(was_training)
    return [o.numpy() for o in flatten_outputs(out)[0]]


def check_parity(model, compiled, inputs: Dict[str, np.ndarray], tolerance: float = DEFAULT_TOLERANCE, *,
                 reference=None, against: str = "eager") -> Dict[str, Any]:
    """Compare ``compiled(x)`` with eager ``model(x)`` for each named input (or with
    ``reference(x)``, a list of arrays, when given: ``model`` is then None and ``against`` names
    the reference in the messages, e.g. ``"Lite"``). The error of one
    input is ``max |compiled - eager| / max |eager|`` (relative to the logit scale); for an int8
    model it is ``max |compiled - eager|`` in output steps (:func:`~megzoo.inference.int8_steps.output_step`:
    one quantization step of the last int8 tensor, as the logits see it) and ``tolerance`` counts
    steps. ``top1``: [same, rows] of the first output's arg-max classes per input
    (:func:`megzoo.metrics.same_top1`; None when the output is not (N, classes) logits), and
    ``top1_agreement`` the fraction over all inputs. Returns ``{"tolerance", "unit", "inputs":
    {name: {"max_abs", "scale", "rel", "top1"[, "step"]}}, "max_rel", "top1_agreement"}``; raises
    :class:`ParityError` listing every input when one is above ``tolerance``."""
    int8 = is_int8_model(model)
    results = {}
    for name, x in inputs.items():
        x = as_float32_batch(x)
        ref = eager_outputs(model, x) if reference is None else [np.asarray(r) for r in reference(x)]
        got = compiled(x)
        got = got if isinstance(got, list) else [got]
        if len(got) != len(ref) or any(g.shape != r.shape for g, r in zip(got, ref)):
            raise ParityError(f"parity check failed on {name}: output shapes {[g.shape for g in got]} "
                              f"!= {against} {[r.shape for r in ref]}")
        max_abs = max(float(np.max(np.abs(g - r))) if r.size else 0.0 for g, r in zip(got, ref))
        scale = max(float(np.max(np.abs(r))) if r.size else 0.0 for r in ref)
        if int8:
            step = output_step(model, x)
            rel = max_abs / step if step > 0 else max_abs
        else:
            rel = max_abs / scale if scale > 0 else max_abs
        if not np.isfinite(rel):
            rel = float("inf")
        top1 = same_top1(got[0], ref[0])
        results[name] = {"max_abs": max_abs, "scale": scale, "rel": rel, "top1": list(top1) if top1 else None,
                         **({"step": step} if int8 else {})}
    max_rel = max((r["rel"] for r in results.values()), default=0.0)
    unit = "int8 output steps" if int8 else "relative to the logit scale"
    counted = [r["top1"] for r in results.values() if r["top1"]]
    agreement = sum(c[0] for c in counted) / sum(c[1] for c in counted) if counted else None
    report = {"tolerance": tolerance, "unit": unit, "inputs": results, "max_rel": max_rel, "top1_agreement": agreement}
    if max_rel > tolerance:
        lines = [f"  {n}: max |exported - {against}| = {r['max_abs']:.3g}, logit scale {r['scale']:.3g}, "
                 + (f"{r['rel']:.3g} steps of {r['step']:.3g}" if int8 else f"relative {r['rel']:.3g}")
                 for n, r in results.items()]
        raise ParityError(f"parity check failed: exported model differs from {against} by {max_rel:.3g} {unit}, "
                          f"above the tolerance {tolerance:g}\n" + "\n".join(lines))
    return report


def make_test_image(height: int, width: int) -> np.ndarray:
    """A deterministic natural-looking BGR uint8 (height, width, 3) test image (smooth gradients,
    a disc and stripes), generated so no image file is needed."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy /= max(height - 1, 1)
    xx /= max(width - 1, 1)
    disc = ((xx - 0.6) ** 2 + (yy - 0.4) ** 2 < 0.06).astype(np.float32)
    stripes = 0.5 + 0.5 * np.sin(40 * xx + 10 * yy)
    b = 200 * (1 - yy) * (1 - disc) + 40 * disc
    g = 120 * xx + 80 * stripes * (yy > 0.7) + 30 * disc
    r = 90 + 100 * yy + 150 * disc
    return np.clip(np.stack([b, g, r], axis=-1), 0, 255).astype(np.uint8)


def _real_input(shape: Sequence[int], image: Optional[PathLike], mean, std, color_order: str) -> Tuple[np.ndarray, str]:
    """One normalised (N, C, H, W) batch from an image file (or a generated image) using the
    model's preprocessing (megzoo convention: BGR 0-255 minus mean, over std)."""
    n, c, h, w = shape
    label = "generated test image"
    img = None
    if image is not None:
        import cv2

        from ..images import read_image  # the readers' checks: complete, bounded pixels, named errors

        img = cv2.resize(read_image(image), (w, h), interpolation=cv2.INTER_LINEAR)
        label = f"image {Path(image).name}"
    if img is None:
        img = make_test_image(h, w)
    if color_order.upper() == "RGB":
        img = img[..., ::-1]
    x = (img.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    x = np.ascontiguousarray(x.transpose(2, 0, 1))
    if c != 3:
        x = np.resize(x, (c, h, w))
    return np.ascontiguousarray(np.broadcast_to(x, (n, c, h, w))), label


@dataclass
class ExportReport:
    """What :func:`export` wrote: the files, their metadata, the parity figures, seconds per step."""

    path: Path
    metadata_path: Path
    metadata: Dict[str, Any]
    parity: Optional[Dict[str, Any]] = None
    seconds: Dict[str, float] = field(default_factory=dict)


FORMATS = ("mge", "onnx")
#: the ``metadata_props`` an exported ``.onnx`` carries, each JSON-encoded (the JSON beside it has everything)
ONNX_PROPS = ("format", "model", "input_name", "input_shape", "batch_axis", "color_order", "pixel_range", "mean", "std",
              "class_names", "output_names", "megzoo_version")


def export_format(path: PathLike, format: Optional[str] = None) -> str:
    """``format`` checked, or the one ``path``'s suffix names (``.onnx`` -> ``onnx``, else
    ``mge``). A ``.mge``/``.onnx`` name with the other format is refused."""
    suffix = Path(path).suffix.lower()
    if format is None:
        return "onnx" if suffix == ".onnx" else "mge"
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if suffix in (".mge", ".onnx") and suffix[1:] != format:
        raise ValueError(f"{Path(path).name} names a {suffix[1:]} file but the format asked for is {format}: "
                         f"name the output FILE.{format}, or leave the format out")
    return format


@dataclass
class _Plan:
    """One export's checked settings: ``fmt`` (``"mge"``/``"onnx"``), ``shape`` (N, C, H, W), whether
    the model is ``int8``, the format's own: ``layout`` (.mge) or ``opset`` (.onnx), and the
    ``precision`` the check runs the file in."""

    fmt: str
    shape: Tuple[int, ...]
    int8: bool
    fuse: bool
    dynamic_batch: bool
    layout: Optional[str] = None
    opset: Optional[int] = None
    precision: str = "fp32"  #: the check's: the file run in bf16 (``"bf16"``) against eager fp32

    @property
    def check_batches(self) -> List[int]:
        """The batch sizes the parity check runs: two for a dynamic-batch ONNX file."""
        n = self.shape[0]
        return [n] + ([_second_batch(n)] if self.fmt == "onnx" and self.dynamic_batch else [])


def _onnx_opset(opset: Optional[int], layout: str, check: bool) -> int:
    """The checked opset of an ``.onnx`` export; refuses a layout, and a check ONNX Runtime cannot run."""
    from .graph_onnx import DEFAULT_OPSET, check_opset
    from .ort import onnxruntime_version

    opset = check_opset(DEFAULT_OPSET if opset is None else opset)
    if layout != "auto":
        raise ValueError("layout applies to .mge files only (ONNX Runtime chooses its own kernels)")
    if check and onnxruntime_version() is None:
        raise RuntimeError("the parity check of an .onnx export runs the file with ONNX Runtime, which is not "
                           "installed: pip install 'onnxruntime>=1.20', or export without the check "
                           "(check=False, --no-check), or export a .mge")
    return opset


def _mge_layout(model, layout: str, fuse: bool, opset: Optional[int], dynamic_batch: bool, int8: bool) -> str:
    """The layout of a ``.mge`` export (NCHW for int8, else the probed fit of ``layout``); refuses
    the ONNX-only arguments."""
    if opset is not None:
        raise ValueError("opset applies to .onnx files only")
    if not dynamic_batch:
        raise ValueError("a .mge always takes any batch size; dynamic_batch=False applies to .onnx files")
    if int8 and layout not in ("auto", "nchw"):
        raise ValueError(f"layout {layout!r} has no int8 kernels in MegEngine 1.13: an int8 .mge is NCHW")
    return "nchw" if int8 else fit_layout(model, resolve_layout(layout, fuse), layout)


def _check_precision(precision: str, fmt: str, int8: bool, check: bool) -> str:
    """The precision the check runs the file in: fp32, or bf16 for a float ``.onnx`` on a CPU and
    backend that run it (refused otherwise, before any work)."""
    from .backends import check_precision_name, resolve_backend

    check_precision_name(precision)
    if precision == "fp32":
        return precision
    if fmt != "onnx" or int8 or not check:
        why = ("a .mge runs in fp32 or int8 (MegEngine Lite has no bf16)" if fmt != "onnx" else
               "this model is int8" if int8 else "check=False runs nothing")
        raise ValueError(f"precision='bf16' checks a float .onnx file in bf16; {why}: leave precision out")
    resolve_backend("auto", precision="bf16")  # ValueError with the reason when nothing runs bf16 here
    return precision


def _plan(model, path: Path, input_shape: Sequence[int], format: Optional[str], fuse: bool, layout: str,
          check: bool, opset: Optional[int], dynamic_batch: bool, precision: str = "fp32") -> _Plan:
    """Resolve the format and the input shape and check the format's arguments, before any work."""
    int8 = is_int8_model(model)
    fmt = export_format(path, format)
    shape = check_input_shape(model, input_shape)  # one check for .mge and .onnx, before any work
    plan = _Plan(fmt, shape, int8, fuse, dynamic_batch, precision=_check_precision(precision, fmt, int8, check))
    if fmt == "onnx":
        plan.opset = _onnx_opset(opset, layout, check)
    else:
        plan.layout = _mge_layout(model, layout, fuse, opset, dynamic_batch, int8)
    return plan


def _metadata(model, plan: _Plan, extra: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The metadata written beside the file (``extra`` last, so it overrides)."""
    meta: Dict[str, Any] = {
        "format": "megzoo-onnx/1" if plan.fmt == "onnx" else "megzoo-mge/1",
        "model": getattr(model, "model_name", type(model).__name__),
        "input_name": INPUT_NAME,
        "input_shape": list(plan.shape),
        "input_layout": "NCHW",
        "dynamic_batch": bool(plan.dynamic_batch),
        "dtype": "float32",
        "color_order": "BGR",
        "pixel_range": [0, 255],
        "mean": list(MEAN_BGR),
        "std": list(STD_BGR),
        "class_names": None,
        "fused": bool(plan.fuse),
        "megengine_version": megengine_version(),
        "megzoo_version": __version__,
    }
    if plan.fmt == "onnx":
        from .ort import onnxruntime_version

        meta.update(opset=plan.opset, batch_axis="N" if plan.dynamic_batch else None,
                    onnxruntime_version=onnxruntime_version())
    else:
        meta["layout"] = plan.layout
    if plan.int8:
        meta["int8"] = True
        meta["quantization"] = dict(getattr(model, "quantization", {}) or {})
    meta.update(extra or {})
    return meta


def _write_mge(model, plan: _Plan, staged: Path, meta: Dict[str, Any]):
    """Trace the model and dump it for Lite to ``staged``; the output names go into ``meta``."""
    meta["output_names"] = trace_and_dump(model, plan.shape, staged, fuse=plan.fuse, layout=plan.layout)


def _check_inputs(plan: _Plan, image: Optional[PathLike], meta: Dict[str, Any], seed: int,
                  parity_inputs: Optional[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    """The parity check's named batches: random and real (:func:`_parity_inputs`), the random ones
    replaced by ``parity_inputs`` when given (cut to the batch size of a static-batch ONNX file)."""
    inputs = _parity_inputs(plan.shape, plan.check_batches, image, meta, seed)
    if parity_inputs:
        static = plan.fmt == "onnx" and not plan.dynamic_batch
        given = {k: _fit_batch(v, plan.shape[0]) if static else v for k, v in parity_inputs.items()}
        inputs = {**{k: v for k, v in inputs.items() if not k.startswith("random")}, **given}
    return inputs


def _run_onnx(plan: _Plan, staged: Path, threads: Optional[int]):
    """The staged ``.onnx`` loaded in ONNX Runtime (an int8 file runs image by image), or for a
    bf16 check by the backend that runs bf16 here (:func:`megzoo.inference.load`)."""
    if plan.precision != "fp32":
        from .backends import load

        return load(staged, threads, precision=plan.precision)
    return OrtCompiledModel(onnx_file=staged, threads=threads, max_shapes=len(plan.check_batches) + 4,
                            split_batch=plan.int8)


def _run_mge(plan: _Plan, staged: Path, threads: Optional[int], algo: str):
    """The staged ``.mge`` loaded in Lite, in the layout it was written for."""
    return CompiledModel(mge_file=staged, threads=threads, algo=algo, max_shapes=1, layout=plan.layout)


def _record_parity(report: ExportReport, tolerance: float, staged: Path, proto):
    """Put the parity figures into the metadata and, for ONNX, into the staged file's own props."""
    meta = report.metadata
    meta["parity"] = {"tolerance": tolerance, "max_rel": report.parity["max_rel"], "inputs": report.parity["inputs"],
                      "top1_agreement": report.parity["top1_agreement"], "precision": report.parity["precision"],
                      "backend": report.parity["backend"]}
    if proto is not None:  # the checked figure goes into the file's own metadata too
        _set_props(proto, meta, parity=report.parity["max_rel"])
        staged.write_bytes(proto.SerializeToString())


def _publish(staged: Path, report: ExportReport):
    """Rename the checked file into place and write its metadata (the old metadata removed first:
    a graph at the path never sits beside another graph's metadata)."""
    report.metadata_path.unlink(missing_ok=True)
    fsync_path(staged)  # durable before it takes the name
    os.replace(staged, report.path)
    atomic_write_text(report.metadata_path, json.dumps(report.metadata, indent=2) + "\n")


def export(model, path: PathLike, input_shape: Sequence[int] = (1, 3, 224, 224), *, format: Optional[str] = None,
           fuse: bool = True, layout: str = "auto", metadata: Optional[Dict[str, Any]] = None, check: bool = True,
           tolerance: Optional[float] = None, image: Optional[PathLike] = None, threads: Optional[int] = None,
           algo: str = "heuristic", seed: int = 0, opset: Optional[int] = None, dynamic_batch: bool = True,
           parity_inputs: Optional[Dict[str, np.ndarray]] = None, precision: str = "fp32") -> ExportReport:
    """Write ``model`` at ``path`` as a MegEngine Lite ``.mge`` (``format="mge"``) or an ONNX
    model (``format="onnx"``; default: by the suffix of ``path``), plus ``path + ".json"``
    metadata (input name and shape, preprocessing, class names, versions, parity results).

    ``model``: any ``megengine.module.Module`` taking one (N, C, H, W) float32 tensor and returning
    a tensor, or lists, tuples and dicts of them (outputs ``output``; ``output0``, ``output1``, ...;
    a dict's keys). Its metadata: ``model`` is a megzoo model's name, else the class name; the
    preprocessing is megzoo's (BGR 0-255, MegEngine mean/std) and ``class_names`` None unless
    ``metadata`` says otherwise (``megzoo.model_source.model_from_source`` fills them in).

    ``.mge``: ``layout`` as for :func:`megzoo.compile` (a layout that failed its probe here is
    refused before anything is written; ``"auto"`` is NCHW for a model with a dilated
    convolution, which the blocked layouts cannot hold); ``algo`` chooses Lite's kernels for the check.
    ``.onnx``: ``opset`` (default :data:`~megzoo.inference.graph_onnx.DEFAULT_OPSET`), BatchNorm
    folded with ``fuse``, the batch axis symbolic (``"N"``) unless ``dynamic_batch=False``; the
    essentials of the metadata are also in the model's ``metadata_props``.

    With ``check`` (default) the written file is run (by Lite, or by ONNX Runtime) and its outputs
    are compared with eager ``model(x)`` on a random batch and a real image (``image``, else a
    generated one) preprocessed as the metadata says; for a dynamic-batch ONNX file at two batch
    sizes. Above ``tolerance`` (max abs difference over the logit scale) :class:`ParityError` is
    raised and nothing is written (an existing file at ``path`` is left as it was).

    An int8 model (:func:`megzoo.quantize`, or a module quantized with ``megengine.quantization``)
    is written as a QDQ ``.onnx`` or an int8 ``.mge`` (NCHW: MegEngine's x86 int8 kernels have no
    other layout); its metadata says ``"int8": true``
    with how it was quantized, and ``tolerance`` counts int8 output steps (default
    :data:`INT8_TOLERANCE_STEPS`; see :func:`check_parity`). ``parity_inputs`` (name ->
    preprocessed batch, e.g. calibration images) replace the generated check inputs; the real
    image is still added.

    ``precision="bf16"`` checks a float ``.onnx`` as it will run in bf16 (by the backend that runs
    bf16 here, OpenVINO; refused before any work on a CPU without BF16, for a ``.mge`` and for an
    int8 model): the error against eager fp32 (default tolerance :data:`BF16_TOLERANCE`) and the
    top-1 agreement on the check images go into the report and the metadata. The file itself is
    the same fp32 graph; bf16 is how it is run."""
    require_megengine_thread("megzoo.inference.export", "export in the main thread")
    path = Path(path)
    plan = _plan(model, path, input_shape, format, fuse, layout, check, opset, dynamic_batch, precision)
    if tolerance is None:
        tolerance = (INT8_TOLERANCE_STEPS if plan.int8 else BF16_TOLERANCE if plan.precision == "bf16"
                     else DEFAULT_TOLERANCE)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = _metadata(model, plan, metadata)
    # written beside the target and renamed into place once checked: never a half-written or
    # unchecked file at ``path``; a killed export's staged files (not locked any more) are removed
    remove_stale_temporaries(path.parent, (path.name, metadata_path(path).name))
    report = ExportReport(path, metadata_path(path), meta, None, {})
    with staging_file(path) as staged:  # .NAME.PID.RANDOM.tmp, locked while the export runs
        t0 = time.perf_counter()
        proto = None
        if plan.fmt == "onnx":
            proto = _write_onnx(model, plan.shape, staged, meta, plan.opset, plan.dynamic_batch, plan.fuse)
        else:
            _write_mge(model, plan, staged, meta)
        report.seconds["dump"] = time.perf_counter() - t0
        if check:
            t0 = time.perf_counter()
            inputs = _check_inputs(plan, image, meta, seed, parity_inputs)
            compiled = _run_onnx(plan, staged, threads) if plan.fmt == "onnx" else _run_mge(plan, staged, threads, algo)
            compiled.output_names = meta["output_names"]
            report.parity = check_parity(model, compiled, inputs, tolerance)
            from .backends.base import run_precision

            report.parity.update(precision=run_precision(plan.int8, plan.precision), backend=compiled.backend)
            report.seconds["parity"] = time.perf_counter() - t0
            _record_parity(report, tolerance, staged, proto)
        _publish(staged, report)
    return report


def _fit_batch(x: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` images of the batch ``x`` (repeated when it has fewer): a static-batch
    file takes exactly ``n``."""
    x = np.asarray(x)
    return x[np.arange(n) % len(x)]


def _second_batch(n: int) -> int:
    """Another batch size for the parity check of a dynamic-batch file."""
    return 3 if n != 3 else 2


def _parity_inputs(shape, batches, image, meta, seed) -> Dict[str, np.ndarray]:
    """A random normal batch and a real image (:func:`_real_input`) at each batch size."""
    rng = np.random.RandomState(seed)
    inputs = {}
    for n in batches:
        batch_shape = (n,) + tuple(shape[1:])
        real, label = _real_input(batch_shape, image, meta["mean"], meta["std"], meta["color_order"])
        suffix = f" (N={n})" if len(batches) > 1 else ""
        inputs["random normal batch" + suffix] = rng.standard_normal(batch_shape).astype(np.float32)
        inputs[label + suffix] = real
    return inputs


def _set_props(proto, meta: Dict[str, Any], parity: Optional[float] = None) -> None:
    from onnx import helper

    props = {key: json.dumps(meta.get(key)) for key in ONNX_PROPS}  # every value JSON, strings too
    if meta.get("int8"):  # an int8 file says so, and how it was quantized
        props["int8"] = "true"
        props["quantization"] = json.dumps(meta.get("quantization"))
    if parity is not None:
        props["parity_max_rel"] = f"{parity:.3g}"
    del proto.metadata_props[:]
    helper.set_model_props(proto, props)


def _write_onnx(model, shape, staged: Path, meta: Dict[str, Any], opset: int, dynamic_batch: bool, fuse: bool):
    """Build the ONNX model (checked by ``onnx.checker``) and write it to ``staged``."""
    from .ort_compiled import onnx_model

    proto = onnx_model(model, shape, opset=opset, dynamic_batch=dynamic_batch, fuse=fuse)
    meta["output_names"] = [o.name for o in proto.graph.output]
    _set_props(proto, meta)
    staged.write_bytes(proto.SerializeToString())
    return proto
