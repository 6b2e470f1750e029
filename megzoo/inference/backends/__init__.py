"""Which backend runs a compiled model, and what ``backend="auto"`` means here: the front doors.

:func:`compile` and :func:`load` (``megzoo.compile``, ``megzoo.inference.load``) hand the work to a
registered backend (:mod:`~megzoo.inference.backends.registry`; the protocol and the compiled
model they share: :mod:`~megzoo.inference.backends.base`). Three are built in, one module each:
:mod:`~megzoo.inference.backends.onnxruntime`, :mod:`~megzoo.inference.backends.lite` and
:mod:`~megzoo.inference.backends.openvino` (optional); adding one is a module and a line below
(docs/backends.md). Nothing here names a runtime.

A model runs in one precision: ``"int8"`` for a model made by ``megzoo.quantize``, else the
``precision=`` asked for, ``"fp32"`` (default) or ``"bf16"`` (opt-in). Each backend says which it
runs (``Backend.precisions``) and whether this CPU can (``Backend.precision_unavailable``: bf16
needs BF16 arithmetic); any other request is refused with the reason, never run in another.

Choosing under ``backend="auto"``, first rule that applies:

1. options only one backend takes, set to other than their defaults (e.g. ``layout=`` for Lite,
   ``opset=`` for ONNX Runtime), mean that backend; options of two backends are refused;
2. an environment variable asking for a backend (Lite: ``$MEGZOO_LAYOUT``) means it;
3. :func:`best_backend`: ``$MEGZOO_BACKEND`` if set, else the fastest for the model's precision
   by this machine's record for that precision, measured once (:func:`measure_backends`: a
   ResNet-18 with random weights on a (2, 3, 96, 96) batch, quantized for int8, each backend
   that runs the precision here timed for about a second in a fresh subprocess, so a crashing
   runtime or MegEngine's poller thread cannot touch the caller; a backend that crashes or raises
   is recorded as disqualified with its reason; figures within :data:`LEVEL_MARGIN` of the best
   count as level and the first registered of them is kept; a measurement that started on a busy
   machine is used but not recorded), kept beside the layout probe's record
   (:func:`backend_record_path`; one another user could have written is refused, never read:
   :mod:`~megzoo.inference.cache_files`). A graph the chosen backend declines (ONNX Runtime: an
   operator its converter refuses) then goes to the next candidate.
"""
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ...host import atomic_write_text, machine_record, machine_tag
from ..cache_files import read_json, record_lock
from ..graph_onnx import DEFAULT_OPSET
from ..layouts import probe_record_path
from ..model_files import ONNX_FILE, model_file_kind, onnx_header, or_list
from ..threads import require_megengine_thread
from .base import (COMMON_OPTIONS, FLOAT_PRECISIONS, PRECISIONS, Backend, BackendUnavailableError, BenchMode,
                   CompiledModelBase, CompileInfo, check_precision_name, is_int8, read_metadata,
                   run_precision)
from .lite import LITE_OPTIONS, LiteBackend
from .onnxruntime import OnnxRuntimeBackend
from .openvino import OpenVinoBackend
from .registry import (NameView, backend_for_file_kind, backend_names, backends_loading, bench_modes, get_backend,
                       option_owners, register_backend, registered_backends, registered_file_kinds,
                       unregister_backend)

__all__ = ["BACKENDS", "compile", "load", "best_backend", "resolve_backend", "backend_record_path", "measure_backends",
           "BackendUnavailableError", "Backend", "BenchMode", "CompiledModelBase", "CompileInfo", "register_backend",
           "unregister_backend", "get_backend", "backend_names", "bench_modes", "LITE_OPTIONS", "PRECISIONS",
           "FLOAT_PRECISIONS", "check_precision_name", "run_precision"]

register_backend(OnnxRuntimeBackend())
register_backend(LiteBackend())
register_backend(OpenVinoBackend())

PathLike = Union[str, "os.PathLike[str]"]

#: the values ``backend=`` takes: ``"auto"`` and the registered names (follows registrations)
BACKENDS = NameView(lambda: ("auto",) + backend_names())
#: seconds the measurement subprocess may take (Lite profiles its kernels first)
MEASURE_TIMEOUT_S = 120.0
MEASURE_SHAPE = (2, 3, 96, 96)
#: a backend measured within this fraction of the fastest counts as level with it: ``auto`` then
#: keeps the first in registration order (ONNX Runtime, Lite, OpenVINO), so a one-second figure's
#: noise does not flip the choice (ONNX Runtime and OpenVINO measured 176-195 images/s each, in
#: either order, on one quiet Zen 3)
LEVEL_MARGIN = 0.10
#: errors of a measurement that say nothing about the backend (memory or disk ran short), so are not recorded
PASSING_ERRORS = ("MemoryError", "OSError")
#: a measurement started at a 1-minute load average above this many per usable CPU is not kept
#: (megzoo's own 2-thread runs leave about 1 per CPU; beside other jobs this machine saw 2.5-4, and
#: a figure 3x off)
BUSY_LOAD_PER_CPU = 1.5


def _auto_candidates(precision: str = "fp32", among: Optional[Sequence[str]] = None) -> List[str]:
    """The backends ``backend="auto"`` chooses from for ``precision`` (of :data:`PRECISIONS`): the
    measured ones that run it on this machine, in registration order (``among``: only these names)."""
    return [b.name for b in registered_backends()
            if b.auto_candidate and precision in b.precisions and (among is None or b.name in among)
            and b.available() is None and b.precision_unavailable(precision) is None]


def backend_record_path(precision: str = "fp32") -> Path:
    """The record of this machine's ``auto`` choice for ``precision``, beside the layout probe's,
    named by the precision and the versions of the backends measured for it:
    ``backend-choice-<precision>-mge<version>-ort<version>-ov<version>-<machine tag>.json``."""
    tags = sorted(f"{b.record_tag or b.name}{b.version()}" for b in registered_backends()
                  if b.auto_candidate and precision in b.precisions)
    return probe_record_path().parent / f"backend-choice-{precision}-{'-'.join(tags)}-{machine_tag()}.json"


#: the subprocess of one backend: prints ``{"backend", "images_per_s"}`` or ``{"backend", "error"}``
MEASURE_SRC = r"""
import json, sys
from megzoo.inference.backends import _time_backend
backend, precision = sys.argv[1], sys.argv[2]
try:
    print(json.dumps({"backend": backend, "images_per_s": _time_backend(backend, precision)}), flush=True)
except Exception as exc:
    print(json.dumps({"backend": backend, "error": f"{type(exc).__name__}: {exc}"[:300]}), flush=True)
"""


def _measured_model(precision: str, x):
    """The measurement's model: a random-weight ResNet-18, quantized on ``x`` for ``"int8"``."""
    from ...models import resnet18

    model = resnet18()
    model.eval()
    if precision == "int8":
        from ...quantization import quantize

        model = quantize(model, x, progress=False)
    return model


def _time_backend(backend: str, precision: str = "fp32", budget_s: float = 1.0) -> float:
    """Images/s of ``backend`` running ``precision`` on :data:`MEASURE_SHAPE` with a random-weight
    ResNet-18 (median run), compiled with the backend's
    :meth:`~megzoo.inference.backends.base.Backend.measure_options`."""
    import tempfile

    import numpy as np

    x = np.random.RandomState(0).standard_normal(MEASURE_SHAPE).astype(np.float32)
    model = _measured_model(precision, x)
    float_precision = "fp32" if precision == "int8" else precision
    with tempfile.TemporaryDirectory(prefix="megzoo-backend-") as tmp:
        compiled = compile(model, MEASURE_SHAPE, backend=backend, precision=float_precision,
                           **get_backend(backend).measure_options(tmp))
        for _ in range(2):
            compiled(x)
        times, start = [], time.perf_counter()
        while len(times) < 5 or time.perf_counter() - start < budget_s:
            t0 = time.perf_counter()
            compiled(x)
            times.append(time.perf_counter() - t0)
    return MEASURE_SHAPE[0] / sorted(times)[len(times) // 2]


def _measure_one(backend: str, timeout: float, precision: str = "fp32") -> Dict[str, Any]:
    """``{"images_per_s": ...}`` or ``{"error": ..., "transient": bool}`` of ``backend`` running
    ``precision``, timed in a fresh subprocess. A crash or an exception is the backend's own
    (it disqualifies it); no answer in ``timeout``, a SIGKILL (the kernel's out-of-memory killer)
    or :data:`PASSING_ERRORS` may pass (``transient``)."""
    try:
        proc = subprocess.run([sys.executable, "-c", MEASURE_SRC, backend, precision], capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"error": f"no answer within {timeout:g} s", "transient": True}
    for line in proc.stdout.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict) and item.get("backend") == backend:
            if "images_per_s" in item:
                return {"images_per_s": round(float(item["images_per_s"]), 2)}
            error = str(item.get("error", "failed"))
            return {"error": error, "transient": error.startswith(PASSING_ERRORS)}
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
    return {"error": f"exit status {proc.returncode}: {tail}", "transient": proc.returncode == -signal.SIGKILL}


def measure_backends(timeout: float = MEASURE_TIMEOUT_S, precision: str = "fp32") -> Dict[str, Any]:
    """Time each backend that runs ``precision`` here now, each in its own subprocess (so a
    crashing runtime costs only its own figure; no record is read or written): ``{"backend": the
    fastest of those measured (the first candidate if none was), "precision", "images_per_s":
    {name: figure}, "errors": {name: reason}, "transient": names whose error may pass (timeouts),
    "seconds", "workload"}``."""
    names = _auto_candidates(precision)
    t0 = time.perf_counter()
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    figures, errors, transient = {}, {}, []
    for name in names:
        result = _measure_one(name, timeout, precision)
        if "images_per_s" in result:
            figures[name] = result["images_per_s"]
        else:
            errors[name] = result["error"]
            if result.get("transient"):
                transient.append(name)
    workload = f"resnet18 random weights{', quantized' if precision == 'int8' else ''}, {list(MEASURE_SHAPE)}"
    return {"backend": _fastest(names, figures), "precision": precision, "images_per_s": figures, "errors": errors,
            "transient": transient, "seconds": round(time.perf_counter() - t0, 2), "workload": workload,
            "load_average": load}


def _fastest(names: Sequence[str], figures: Dict[str, float]) -> Optional[str]:
    """The first of ``names`` (registration order) whose figure is level with the best
    (:data:`LEVEL_MARGIN`); the first name when none was measured."""
    if not figures:
        return names[0] if names else None
    best = max(figures.values())
    return next(n for n in names if n in figures and figures[n] * (1 + LEVEL_MARGIN) >= best)


_chosen: Dict[str, Dict[str, Any]] = {}  # record path -> the measurement it holds (once per process)


def _read_choice(record: Path, candidates: Sequence[str]) -> Optional[Dict[str, Any]]:
    """The record's contents when it holds a choice among ``candidates``, else None (missing,
    unreadable, or not one)."""
    data = read_json(record)
    return data if isinstance(data, dict) and data.get("backend") in candidates else None


def _measure_and_record(record: Path, precision: str) -> Dict[str, Any]:
    """:func:`measure_backends` for ``precision``, written to ``record``: a backend that crashed or
    raised is kept as disqualified (with its reason, warned once); a timeout, or a 1-minute load
    average above the CPUs when it started, is not kept (a busy moment must not decide for good:
    the next process measures again)."""
    data = measure_backends(precision=precision)
    data["machine"] = machine_record()
    data["versions"] = {b.name: b.version() for b in registered_backends()
                        if b.auto_candidate and precision in b.precisions}
    if data["errors"]:
        warnings.warn(f"megzoo: measuring the backends for {precision} failed for some ({data['errors']}); "
                      f"using {data['backend']}", RuntimeWarning)
    busy = _busy(data.get("load_average"))
    if busy:
        warnings.warn(f"megzoo: {busy} while the backends were measured for {precision}; using {data['backend']} "
                      "in this process, measuring again in the next (MEGZOO_BACKEND=NAME chooses for good)",
                      RuntimeWarning)
    if data.get("transient") or busy or not (data["images_per_s"] or data["errors"]):
        return data
    try:
        atomic_write_text(record, json.dumps(data, indent=2) + "\n")
    except OSError as exc:
        warnings.warn(f"megzoo: could not record the backend choice in {record}: {exc}", RuntimeWarning)
    return data


def _busy(load_average: Optional[Sequence[float]]) -> Optional[str]:
    """Why a measurement is not to be kept: other work had the CPUs (a 1-minute load average above
    :data:`BUSY_LOAD_PER_CPU` times the host's CPUs, when it started), else None."""
    cpus = os.cpu_count() or 1  # the load average counts the whole host's CPUs
    if load_average and load_average[0] > BUSY_LOAD_PER_CPU * cpus:
        return f"the machine was busy (load average {load_average[0]:.1f} on {cpus} CPUs)"
    return None


def _no_candidate(precision: str, among: Optional[Sequence[str]] = None) -> Exception:
    """Why no backend (of ``among``) can run ``precision`` here: the reasons of those that would."""
    reasons = [b.available() or b.precision_unavailable(precision) for b in registered_backends()
               if b.auto_candidate and precision in b.precisions and (among is None or b.name in among)]
    if precision == "fp32":
        return BackendUnavailableError("no backend can run here: " + "; ".join(
            f"{b.name} {b.available()}" for b in registered_backends() if b.auto_candidate))
    return ValueError(next((r for r in reasons if r), f"no registered backend runs {precision}"))


def _measurement(precision: str, candidates: Sequence[str]) -> Dict[str, Any]:
    """This machine's measurement for ``precision``: this process's, else the record's, else made
    now (once per machine, even from parallel processes) and recorded."""
    record = backend_record_path(precision)
    key = str(record)
    if key not in _chosen:
        data = _read_choice(record, candidates)
        if data is None:
            with record_lock(record):
                data = _read_choice(record, candidates)  # another process may have measured meanwhile
                if data is None:
                    data = _measure_and_record(record, precision)
        _chosen[key] = data
    return _chosen[key]


def best_backend(precision: str = "fp32", among: Optional[Sequence[str]] = None) -> str:
    """What ``backend="auto"`` means here for a model of ``precision`` (``"fp32"``, ``"bf16"`` or
    ``"int8"``): ``$MEGZOO_BACKEND`` if set; else the fastest by this machine's record for it
    (:func:`backend_record_path`), measured the first time (:func:`measure_backends`, each
    candidate in a subprocess, a lone one too) and then recorded. A candidate that crashed or
    raised there is never chosen (BackendUnavailableError when none is left). ``among``: choose
    only among these names (the backends that load a file kind)."""
    forced = _forced_backend()
    if forced:
        if forced not in BACKENDS:
            raise ValueError(f"MEGZOO_BACKEND must be one of {BACKENDS}, got {forced!r}")
        if among is None or forced in among:
            return forced
    candidates = _auto_candidates(precision)
    chosen = [c for c in candidates if among is None or c in among]
    if not chosen:
        raise _no_candidate(precision)
    data = _measurement(precision, candidates)  # a lone candidate too: its first run is in a subprocess
    figures = data.get("images_per_s") or {}
    measured = {c: figures[c] for c in chosen if c in figures}
    if measured:
        return _fastest(chosen, measured)
    failed = {c: data["errors"][c] for c in chosen
              if c in (data.get("errors") or {}) and c not in (data.get("transient") or [])}
    if len(failed) == len(chosen):  # each one crashed or raised when measured: none is run in this process
        raise BackendUnavailableError(
            f"no backend could run {precision} on this machine when measured: "
            + "; ".join(f"{name}: {why}" for name, why in failed.items())
            + f" (delete {backend_record_path(precision)} to measure again)")
    return chosen[0]


def _precision_refusal(backend: Backend, precision: str) -> Optional[str]:
    """Why ``backend`` cannot run a model of ``precision`` here, or None."""
    if precision not in backend.precisions:
        names = [repr(b.name) for b in registered_backends() if precision in b.precisions]
        runs = f"backend={or_list(names)}" if names else "no registered backend"
        if precision == "int8":
            return f"the {backend.name} backend does not run int8 models; {runs} does"
        return (f"precision={precision!r} is not run by the {backend.name} backend; {runs} runs it "
                "(or leave precision out for fp32)")
    return backend.precision_unavailable(precision)


def _requests(options: Optional[Dict[str, Any]]) -> Dict[str, List[str]]:
    """Backend name -> the names of its own options in ``options`` set to other than their defaults."""
    owners = option_owners()
    asked: Dict[str, List[str]] = {}
    for option, value in sorted((options or {}).items()):
        owner = owners.get(option)
        if owner is not None and value != owner.options[option]:
            asked.setdefault(owner.name, []).append(option)
    return asked


def _environment_requests() -> Dict[str, List[str]]:
    """Backend name -> the environment variables set now that ask for it."""
    return {b.name: names for b in registered_backends() if (names := b.requested_by_environment())}


def _files(backend: Backend) -> str:
    return " or ".join(f".{kind.name}" for kind in backend.file_kinds + backend.also_loads) or "its"


def _resolve(backend: str, options: Optional[Dict[str, Any]], what: str, precision: str = "fp32") -> Tuple[str, bool]:
    """(the backend that runs, whether :func:`best_backend` chose it): see :func:`resolve_backend`."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    given = _requests(options)
    measured = False
    if backend == "auto":
        asked = given or ({} if options is None else _environment_requests())
        if len(asked) > 1:
            named = "; ".join(f"{', '.join(names)} ({name})" for name, names in asked.items())
            raise ValueError(f"options of several backends were given: {named}; pass backend= one of them")
        if asked:
            backend, asked_by = next(iter(asked)), f"backend={next(iter(asked))!r}"
        else:
            backend, measured = best_backend(precision), True
            asked_by = f"MEGZOO_BACKEND={backend}" if _forced_backend() == backend else f"backend={backend!r}"
    else:
        asked_by = f"backend={backend!r}"
    for owner, names in given.items():
        if owner != backend:
            other = get_backend(owner)
            raise ValueError(other.refuse_options(names, what.format(backend=owner, files=_files(other)), backend))
    reason = get_backend(backend).available()
    if reason:
        raise BackendUnavailableError(f"{asked_by} {reason}")
    refusal = _precision_refusal(get_backend(backend), precision)
    if refusal:
        raise ValueError(f"{asked_by}: {refusal}" if asked_by.startswith("MEGZOO_BACKEND") else refusal)
    return backend, measured


def resolve_backend(backend: str, options: Optional[Dict[str, Any]] = None,
                    what: str = "backend='{backend}'", *, lite_options: Optional[Dict[str, Any]] = None,
                    precision: str = "fp32") -> str:
    """The registered backend that runs a request for ``backend`` (a name or ``"auto"``, module
    docstring) with the backend-specific ``options`` given (any set to other than its default
    means its backend under ``"auto"``, and is refused for another). ``what``: how the refusal
    says to ask for the options' backend (``{backend}``: its name, ``{files}``: its file kinds).
    BackendUnavailableError when the backend cannot run here, ValueError when it cannot run a
    model of ``precision`` (``"fp32"``, ``"bf16"`` or ``"int8"``; ``auto`` chooses per precision).
    ``lite_options``: the old name of ``options``."""
    return _resolve(backend, options if lite_options is None else lite_options, what, precision)[0]


def _check_known(options: Dict[str, Any], function: str) -> None:
    owners = option_owners()
    for option in options:
        if option not in owners:
            raise TypeError(f"{function}() got an unexpected keyword argument {option!r}")


def _compile_with(backend: Backend, model, input_shape, threads, common: Dict[str, Any], given: Dict[str, Any]):
    own = {option: given.get(option, default) for option, default in backend.options.items()}
    return backend.compile(model, input_shape, threads, {**common, **own})


def compile(model, input_shape: Optional[Sequence[int]] = None, threads: Optional[int] = None, *,
            backend: str = "auto", fuse: bool = True, dynamic_batch: bool = True, max_shapes: int = 4,
            opset: int = DEFAULT_OPSET, layout: str = "auto", algo: str = "profile",
            profile_batch: Optional[int] = None, cache_dir: Optional[PathLike] = None, split_batch: bool = True,
            micro_batch: Union[str, int, None] = "auto", precision: str = "fp32", **options):
    """Compile ``model`` (a ``megengine.module.Module`` taking one (N, C, H, W) tensor) for fast
    CPU inference; returns a callable taking numpy batches and returning numpy outputs (a
    :class:`~megzoo.inference.CompiledModelBase`).

    Args:
        input_shape: (N, C, H, W) to compile for now; None compiles on the first call. Other batch
            sizes work on the same graph; another (C, H, W) compiles a new graph.
        threads: worker threads; default the CPUs this process may use (``os.sched_getaffinity``).
        backend: a registered backend (:data:`BACKENDS`): ``"onnxruntime"`` (the model exported to
            ONNX in memory, run by ONNX Runtime: :class:`~megzoo.inference.OrtCompiledModel`),
            ``"lite"`` (traced and run by MegEngine Lite: :class:`~megzoo.inference.CompiledModel`),
            ``"openvino"`` (the ONNX graph run by OpenVINO, optional), or ``"auto"``: the fastest
            here for the model's precision, with the rules of the module docstring.
        fuse: fold BatchNorm into the convolutions (and, for Lite, fuse conv + bias + ReLU).
        dynamic_batch: one graph for every batch size; False compiles each full shape separately.
        max_shapes: how many compiled graphs to keep (least recently used dropped first).
        opset: the ONNX opset (onnxruntime backend).
        layout, algo, profile_batch, cache_dir, split_batch, micro_batch: Lite only, see
            :class:`~megzoo.inference.CompiledModel` and docs/performance.md.
        precision: ``"fp32"`` (default) or ``"bf16"`` (opt-in: the convolutions and matrix products
            in bfloat16, on CPUs with BF16 arithmetic and a backend that runs it, OpenVINO; refused
            elsewhere with the reason). An int8 model (``megzoo.quantize``) runs in int8 whatever
            it says; give it no other precision.
        options: the options of other registered backends.

    Threads: compile in the main thread (MegEngine runs nowhere else; elsewhere this raises
    :class:`~megzoo.inference.threads.MegEngineThreadError` before any work); the compiled
    model may then be called from any thread, any batch size included. A new (C, H, W) is traced
    by every backend, so its first call must come from the main thread.
    """
    require_megengine_thread("megzoo.compile")
    _check_known(options, "compile")
    runs_in = run_precision(is_int8(model), precision)
    given = dict(opset=opset, layout=layout, algo=algo, profile_batch=profile_batch, cache_dir=cache_dir,
                 split_batch=split_batch, micro_batch=micro_batch, **options)
    name, measured = _resolve(backend, given, "pass backend='{backend}'", runs_in)
    common = dict(zip(COMMON_OPTIONS, (fuse, dynamic_batch, max_shapes, precision)))
    tried = [name]
    while True:
        chosen = get_backend(tried[-1])
        try:
            return _compile_with(chosen, model, input_shape, threads, common, given)
        except chosen.declines():  # under a measured auto: the next candidate, if any, takes the graph
            others = [n for n in _auto_candidates(runs_in) if n not in tried]
            if not measured or not others:
                raise
            tried.append(others[0])


def _fastest_loader(kind: str, loaders: Sequence[Backend], precision: str) -> Backend:
    """Of the backends that load ``kind`` files, the one ``auto`` takes for ``precision``: the
    fastest measured here (:func:`best_backend`), else the kind's own (whose refusal then says why)."""
    names = [b.name for b in loaders]
    forced = _forced_backend()
    if not _auto_candidates(precision, among=names):
        if any(precision in b.precisions and b.available() is None and b.precision_unavailable(precision)
               for b in loaders):
            raise _no_candidate(precision, among=names)  # e.g. bf16 on a CPU without BF16: that reason
        return backend_for_file_kind(kind)
    if forced and forced not in names:  # $MEGZOO_BACKEND names another kind's backend
        return backend_for_file_kind(kind)
    return get_backend(best_backend(precision, among=names))


def _metadata_in_file(path: Path, kind: str) -> Dict[str, Any]:
    """What a model file that travelled without its metadata JSON says of itself: an ONNX model its
    output names and, in its ``metadata_props``, whether it is int8 (``int8 = "true"``, written by
    :func:`megzoo.inference.export`); other kinds nothing."""
    if kind != ONNX_FILE.name:
        return {}
    header = onnx_header(path)
    int8 = any(p.key == "int8" and p.value == "true" for p in header.metadata_props)
    return {"int8": int8, "output_names": [o.name for o in header.graph.output]}


def _forced_backend() -> Optional[str]:
    """The backend ``$MEGZOO_BACKEND`` names (lower case), None when unset or ``auto``."""
    forced = os.environ.get("MEGZOO_BACKEND", "").strip().lower()
    return forced if forced and forced != "auto" else None


def load(path: PathLike, threads: Optional[int] = None, *, backend: str = "auto", algo: str = "profile",
         profile_batch: Optional[int] = None, cache_dir: Optional[PathLike] = None,
         split_batch: bool = True, micro_batch: Union[str, int, None] = "auto", precision: str = "fp32",
         **options):
    """Load an exported model (see :func:`megzoo.inference.export`) to run without megzoo's model
    code, by the backend whose file kind it is: an ONNX model with ONNX Runtime, a ``.mge`` with
    MegEngine Lite, told apart by their first bytes (any other file, e.g. a pickled checkpoint, is
    refused with ``ValueError`` naming what it is, before a runtime sees it). The batch size may
    change where the file allows it; the spatial size is the exported one. ``model.metadata``
    holds the metadata JSON beside the file when present. For a ``.mge``, a file whose layout
    failed its probe here is refused (:class:`~megzoo.inference.LayoutUnavailableError`); the
    other arguments are Lite's, as for :func:`compile` (``options``: other backends').

    ``backend``: ``"auto"`` (default) is the backend that loads the file kind and runs its
    precision fastest here (an int8 file, by its metadata, is int8; else ``precision``, ``"fp32"``
    or ``"bf16"``), measured as for :func:`compile` (:func:`best_backend`), or the one whose own
    option is given; a name (``"openvino"`` for an ``.onnx``) chooses among the backends that load
    the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such model file: {path}")
    _check_known(options, "load")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    kind = model_file_kind(path, registered_file_kinds())  # ValueError for other files
    loaders = backends_loading(kind)
    meta = read_metadata(path)
    facts = meta if meta is not None else _metadata_in_file(path, kind)  # one read of the file, not one per fact
    runs_in = run_precision(bool(facts.get("int8")), precision)
    given = dict(algo=algo, profile_batch=profile_batch, cache_dir=cache_dir, split_batch=split_batch,
                 micro_batch=micro_batch, **options)
    if not any(runs_in in b.precisions for b in loaders):
        raise ValueError(f"precision={runs_in!r} is not run by any backend that loads .{kind} files "
                         f"({or_list([b.name for b in loaders])}); leave precision out for fp32")
    if backend == "auto":
        asked = [b for b in loaders if b.name in _requests(given)]
        chosen = asked[0] if len(asked) == 1 else _fastest_loader(kind, loaders, runs_in)
    else:
        chosen = get_backend(backend)
        if chosen not in loaders:
            names = or_list([repr(b.name) for b in loaders] + [repr("auto")])
            raise ValueError(f"{path} is a .{kind} file, which backend={backend!r} does not load; backend={names} "
                             "loads it")
    backend = chosen
    other_loader = any(name != backend.name and get_backend(name) in loaders for name in _requests(given))
    _resolve(backend.name, given, "pass backend='{backend}'" if other_loader else "they are for {files} files", runs_in)
    own = {k: v for k, v in given.items() if k in backend.options}
    compiled = backend.load(path, threads, {**own, "precision": precision}, facts or None)
    compiled.metadata = meta
    compiled.output_names = list(facts.get("output_names") or [])
    shape = (meta or {}).get("input_shape")
    if shape:
        compiled.runner_for(tuple(shape))
    return compiled

