"""Which runtime runs a compiled model: ONNX Runtime or MegEngine Lite, and ``backend="auto"``.

:func:`compile` and :func:`load` are the front doors (``megzoo.compile``,
``megzoo.inference.load``); they hand the work to :class:`~megzoo.inference.CompiledModel`
(MegEngine Lite, :mod:`~megzoo.inference.compiled`) or
:class:`~megzoo.inference.ort_compiled.OrtCompiledModel` (ONNX Runtime).

``backend="auto"`` (:func:`best_backend`) is decided once per machine by a short measurement
(:func:`measure_backends`: a ResNet-18 with random weights on a (2, 3, 96, 96) batch, each
runtime timed for about a second in a fresh subprocess, so neither a crash of a MegEngine kernel
nor MegEngine's poller thread can touch the caller; Lite with its heuristic kernel choice, as
profiling alone would take 15-30 s, for about 10% more speed at this size), kept in a record beside the layout probe's
(:func:`backend_record_path`; one another user could have written is refused, never read:
:mod:`~megzoo.inference.cache_files`). ``$MEGZOO_BACKEND`` (``lite`` or ``onnxruntime``) overrides it. A
call that sets one of the Lite-only options (``layout``, ``algo``, ``profile_batch``,
``cache_dir``, ``split_batch``, ``micro_batch``), or runs with ``$MEGZOO_LAYOUT`` set, means Lite.
An int8 model (:func:`megzoo.quantize`) runs on ONNX Runtime under ``auto`` without measuring:
MegEngine 1.13's x86 int8 kernels were 3-7x slower in every measurement (docs/quantization.md).
"""
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

from ..host import atomic_write_text, machine_record, machine_tag
from .cache_files import read_json, record_lock
from .compiled import CompiledModel, is_int8, read_metadata
from .layouts import megengine_version, probe_record_path
from .model_files import model_file_kind
from .graph_onnx import DEFAULT_OPSET, UnsupportedOperatorError
from .ort import onnxruntime_version
from .ort_compiled import OrtCompiledModel
from .threads import require_megengine_thread

__all__ = ["BACKENDS", "compile", "load", "best_backend", "resolve_backend", "backend_record_path", "measure_backends",
           "BackendUnavailableError"]

PathLike = Union[str, "os.PathLike[str]"]

BACKENDS = ("auto", "onnxruntime", "lite")
#: the Lite-only options of :func:`compile` and their defaults
LITE_OPTIONS = {"layout": "auto", "algo": "profile", "profile_batch": None, "cache_dir": None, "split_batch": True,
                "micro_batch": "auto"}
#: seconds the measurement subprocess may take (Lite profiles its kernels first)
MEASURE_TIMEOUT_S = 120.0
MEASURE_SHAPE = (2, 3, 96, 96)


class BackendUnavailableError(RuntimeError):
    """The backend asked for cannot run here (ONNX Runtime not installed)."""


def backend_record_path() -> Path:
    """The record of this machine's ``auto`` choice, beside the layout probe's:
    ``backend-choice-mge<version>-ort<version>-<machine tag>.json``."""
    return probe_record_path().parent / (f"backend-choice-mge{megengine_version()}-ort{onnxruntime_version()}-"
                                         f"{machine_tag()}.json")


def _require_onnxruntime(asked_by: str = "backend='onnxruntime'") -> None:
    if onnxruntime_version() is None:
        raise BackendUnavailableError(f"{asked_by} needs ONNX Runtime, which is not installed: "
                                      "pip install 'onnxruntime>=1.20' (a default dependency of megzoo), "
                                      "or use the lite backend")


#: the subprocess of one runtime: prints ``{"backend", "images_per_s"}`` or ``{"backend", "error"}``
MEASURE_SRC = r"""
import json, sys
from megzoo.inference.backends import _time_backend
backend = sys.argv[1]
try:
    print(json.dumps({"backend": backend, "images_per_s": _time_backend(backend)}), flush=True)
except Exception as exc:
    print(json.dumps({"backend": backend, "error": f"{type(exc).__name__}: {exc}"[:300]}), flush=True)
"""


def _time_backend(backend: str, budget_s: float = 1.0) -> float:
    """Images/s of ``backend`` on :data:`MEASURE_SHAPE` with a random-weight ResNet-18 (median run)."""
    import tempfile

    import numpy as np

    from ..models import resnet18

    model = resnet18()
    model.eval()
    x = np.random.RandomState(0).standard_normal(MEASURE_SHAPE).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="megzoo-backend-") as tmp:
        # Lite with its heuristic kernel choice: profiling would take 15-30 s here, for ~10% more speed
        options = {"cache_dir": tmp, "algo": "heuristic"} if backend == "lite" else {}
        compiled = compile(model, MEASURE_SHAPE, backend=backend, **options)
        for _ in range(2):
            compiled(x)
        times, start = [], time.perf_counter()
        while len(times) < 5 or time.perf_counter() - start < budget_s:
            t0 = time.perf_counter()
            compiled(x)
            times.append(time.perf_counter() - t0)
    return MEASURE_SHAPE[0] / sorted(times)[len(times) // 2]


def _measure_one(backend: str, timeout: float) -> Dict[str, Any]:
    """``{"images_per_s": ...}`` or ``{"error": ...}`` of ``backend``, timed in a fresh subprocess."""
    try:
        proc = subprocess.run([sys.executable, "-c", MEASURE_SRC, backend], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"error": f"no answer within {timeout:g} s"}
    for line in proc.stdout.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict) and item.get("backend") == backend:
            if "images_per_s" in item:
                return {"images_per_s": round(float(item["images_per_s"]), 2)}
            return {"error": str(item.get("error", "failed"))}
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
    return {"error": f"exit status {proc.returncode}: {tail}"}


def measure_backends(timeout: float = MEASURE_TIMEOUT_S) -> Dict[str, Any]:
    """Time each runtime now, each in its own subprocess (so a crashing MegEngine kernel costs
    only its own figure; no record is read or written): ``{"backend": the faster of those
    measured (onnxruntime if none was), "images_per_s": {name: figure}, "errors": {name: reason},
    "seconds"}``."""
    names = (["onnxruntime"] if onnxruntime_version() is not None else []) + ["lite"]
    t0 = time.perf_counter()
    figures, errors = {}, {}
    for name in names:
        result = _measure_one(name, timeout)
        if "images_per_s" in result:
            figures[name] = result["images_per_s"]
        else:
            errors[name] = result["error"]
    choice = max(figures, key=figures.get) if figures else names[0]
    return {"backend": choice, "images_per_s": figures, "errors": errors,
            "seconds": round(time.perf_counter() - t0, 2), "workload": f"resnet18 random weights, {list(MEASURE_SHAPE)}"}


_chosen: Dict[str, str] = {}  # record path -> the choice (once per process)


def _read_choice(record: Path) -> Optional[Dict[str, Any]]:
    """The record's contents when it holds a choice, else None (missing, unreadable, or not one)."""
    data = read_json(record)
    return data if isinstance(data, dict) and data.get("backend") in ("lite", "onnxruntime") else None


def best_backend() -> str:
    """What ``backend="auto"`` means here: ``$MEGZOO_BACKEND`` if set; else the faster runtime
    by this machine's record (:func:`backend_record_path`), measured the first time
    (:func:`measure_backends`) and then recorded; ``"lite"`` without ONNX Runtime."""
    forced = os.environ.get("MEGZOO_BACKEND", "").strip().lower()
    if forced and forced != "auto":
        if forced not in BACKENDS:
            raise ValueError(f"MEGZOO_BACKEND must be one of {BACKENDS}, got {forced!r}")
        return forced
    if onnxruntime_version() is None:
        return "lite"
    record = backend_record_path()
    key = str(record)
    if key in _chosen:
        return _chosen[key]
    data = _read_choice(record)
    if data is None:
        with record_lock(record):  # one measurement per machine, even from parallel processes
            data = _read_choice(record)  # another process may have measured meanwhile
            if data is None:
                data = measure_backends()
                data["machine"] = machine_record()
                data["megengine"], data["onnxruntime"] = megengine_version(), onnxruntime_version()
                if data["errors"]:  # not kept: a busy or broken moment must not decide for good
                    warnings.warn(f"megzoo: measuring the backends failed ({data['errors']}); using "
                                  f"{data['backend']} in this process, measuring again in the next", RuntimeWarning)
                else:
                    try:
                        atomic_write_text(record, json.dumps(data, indent=2) + "\n")
                    except OSError as exc:
                        warnings.warn(f"megzoo: could not record the backend choice in {record}: {exc}",
                                      RuntimeWarning)
    _chosen[key] = data["backend"]
    return _chosen[key]


def _lite_options_given(lite_options: Optional[Dict[str, Any]]) -> list:
    """The names of the Lite-only options set to something other than their defaults."""
    return sorted(k for k, v in (lite_options or {}).items() if v != LITE_OPTIONS[k])


def resolve_backend(backend: str, lite_options: Optional[Dict[str, Any]] = None, what: str = "backend='lite'") -> str:
    """``"lite"`` or ``"onnxruntime"`` for a request (``lite_options``: the Lite-only options
    given; any that differs from its default means Lite under ``"auto"``). ``what``: how the
    refusal of Lite options under onnxruntime says to ask for Lite."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    given = _lite_options_given(lite_options)
    forced_layout = os.environ.get("MEGZOO_LAYOUT", "").strip().lower()
    if backend == "auto" and lite_options is not None and forced_layout not in ("", "auto"):
        given.append("MEGZOO_LAYOUT")  # a layout asked for by the environment is a Lite request too
    forced = os.environ.get("MEGZOO_BACKEND", "").strip().lower()
    if backend == "auto":
        backend = "lite" if given else best_backend()
        asked_by = "MEGZOO_BACKEND=onnxruntime" if forced == "onnxruntime" else "backend='onnxruntime'"
    else:
        asked_by = f"backend={backend!r}"
    if backend == "onnxruntime":
        if given:
            raise ValueError(f"{', '.join(given)} apply to the lite backend only; {what} "
                             "(or leave them out for onnxruntime)")
        _require_onnxruntime(asked_by)
    return backend


def compile(model, input_shape: Optional[Sequence[int]] = None, threads: Optional[int] = None, *,
            backend: str = "auto", fuse: bool = True, dynamic_batch: bool = True, max_shapes: int = 4,
            opset: int = DEFAULT_OPSET, layout: str = "auto", algo: str = "profile",
            profile_batch: Optional[int] = None, cache_dir: Optional[PathLike] = None, split_batch: bool = True,
            micro_batch: Union[str, int, None] = "auto"):
    """Compile ``model`` (a ``megengine.module.Module`` taking one (N, C, H, W) tensor) for fast
    CPU inference; returns a callable taking numpy batches and returning numpy outputs.

    Args:
        input_shape: (N, C, H, W) to compile for now; None compiles on the first call. Other batch
            sizes work on the same graph; another (C, H, W) compiles a new graph.
        threads: worker threads; default the CPUs this process may use (``os.sched_getaffinity``).
        backend: ``"onnxruntime"`` (the model exported to ONNX in memory, run by ONNX Runtime:
            :class:`~megzoo.inference.ort_compiled.OrtCompiledModel`), ``"lite"`` (traced and run
            by MegEngine Lite: :class:`~megzoo.inference.CompiledModel`) or ``"auto"`` (the faster
            one on this machine, :func:`best_backend`; Lite when a Lite-only option is given, or when
            the ONNX converter (:mod:`~megzoo.inference.graph_onnx`) refuses the traced graph at
            ``input_shape``, since Lite runs any MegEngine graph; ONNX Runtime when an ``opset`` is
            given).
        fuse: fold BatchNorm into the convolutions (and, for Lite, fuse conv + bias + ReLU).
        dynamic_batch: one graph for every batch size; False compiles each full shape separately.
        max_shapes: how many compiled graphs to keep (least recently used dropped first).
        opset: the ONNX opset (onnxruntime backend).
        layout, algo, profile_batch, cache_dir, split_batch, micro_batch: Lite only, see
            :class:`~megzoo.inference.CompiledModel` and docs/performance.md.

    Threads: compile in the main thread (MegEngine runs nowhere else; elsewhere this raises
    :class:`~megzoo.inference.threads.MegEngineThreadError` before any work); the compiled
    model may then be called from any thread, any batch size included. A new (C, H, W) is traced
    by both backends, so its first call must come from the main thread.
    """
    require_megengine_thread("megzoo.compile")
    lite = {"layout": layout, "algo": algo, "profile_batch": profile_batch, "cache_dir": cache_dir,
            "split_batch": split_batch, "micro_batch": micro_batch}
    if backend == "auto" and opset != DEFAULT_OPSET and not _lite_options_given(lite):
        backend = "onnxruntime"  # an opset asked for is an ONNX request
    if backend == "auto" and is_int8(model) and not _lite_options_given(lite) and not os.environ.get(
            "MEGZOO_BACKEND", "").strip() and onnxruntime_version() is not None:
        backend = "onnxruntime"  # int8: ONNX Runtime's kernels, measured several times faster than Lite's
    resolved = resolve_backend(backend, lite, what="pass backend='lite'")
    if resolved == "lite" and opset != DEFAULT_OPSET:
        raise ValueError("opset applies to the onnxruntime backend only")
    if resolved == "onnxruntime":
        try:
            return OrtCompiledModel(model, input_shape=input_shape, threads=threads, fuse=fuse,
                                    dynamic_batch=dynamic_batch, max_shapes=max_shapes, opset=opset)
        except UnsupportedOperatorError:
            if backend != "auto":
                raise
            # a graph the converter refuses: Lite runs any MegEngine graph
    return CompiledModel(model, input_shape=input_shape, threads=threads, fuse=fuse, dynamic_batch=dynamic_batch,
                         max_shapes=max_shapes, **lite)


def load(path: PathLike, threads: Optional[int] = None, *, algo: str = "profile",
         profile_batch: Optional[int] = None, cache_dir: Optional[PathLike] = None,
         split_batch: bool = True, micro_batch: Union[str, int, None] = "auto"):
    """Load an exported model (see :func:`megzoo.inference.export`) to run without megzoo's model
    code: an ONNX model with ONNX Runtime, a ``.mge`` with MegEngine Lite, told apart by their
    first bytes (any other file, e.g. a pickled checkpoint, is refused with ``ValueError`` naming
    what it is, before a runtime sees it). The batch size may
    change where the file allows it; the spatial size is the exported one. ``model.metadata``
    holds the metadata JSON beside the file when present. For a ``.mge``, a file whose layout
    failed its probe here is refused (:class:`~megzoo.inference.LayoutUnavailableError`); the
    other arguments are Lite's, as for :func:`compile`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such model file: {path}")
    kind = model_file_kind(path)  # ValueError for anything else
    meta = read_metadata(path)
    if kind == "onnx":
        given = {"algo": algo, "profile_batch": profile_batch, "cache_dir": cache_dir, "split_batch": split_batch,
                 "micro_batch": micro_batch}
        resolve_backend("onnxruntime", given, what="they are for .mge files")
        compiled = OrtCompiledModel(onnx_file=path, threads=threads, max_shapes=1,
                                    split_batch=bool((meta or {}).get("int8")))
        compiled.int8 = bool((meta or {}).get("int8"))
    else:
        compiled = CompiledModel(mge_file=path, threads=threads, algo=algo, profile_batch=profile_batch,
                                 cache_dir=cache_dir, split_batch=split_batch, max_shapes=1, micro_batch=micro_batch)
    compiled.metadata = meta
    compiled.output_names = list((meta or {}).get("output_names") or [])
    shape = (meta or {}).get("input_shape")
    if shape:
        compiled._runner_for(tuple(shape))
    return compiled
