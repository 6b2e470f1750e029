"""Which backend runs a compiled model, and what ``backend="auto"`` means here: the front doors.

:func:`compile` and :func:`load` (``megzoo.compile``, ``megzoo.inference.load``) hand the work to a
registered backend (:mod:`~megzoo.inference.backends.registry`; the protocol and the compiled
model they share: :mod:`~megzoo.inference.backends.base`). Three are built in, one module each:
:mod:`~megzoo.inference.backends.onnxruntime`, :mod:`~megzoo.inference.backends.lite` and
:mod:`~megzoo.inference.backends.openvino` (optional, never chosen by ``auto``); adding one is a
module and a line below (docs/backends.md). Nothing here names a runtime.

Choosing under ``backend="auto"``, first rule that applies:

1. options only one backend takes, set to other than their defaults (e.g. ``layout=`` for Lite,
   ``opset=`` for ONNX Runtime), mean that backend; options of two backends are refused;
2. a backend that :meth:`~megzoo.inference.backends.base.Backend.prefers` the model takes it
   (ONNX Runtime an int8 model), unless ``$MEGZOO_BACKEND`` is set;
3. an environment variable asking for a backend (Lite: ``$MEGZOO_LAYOUT``) means it;
4. :func:`best_backend`: ``$MEGZOO_BACKEND`` if set, else the faster by this machine's record,
   measured once (:func:`measure_backends`: a ResNet-18 with random weights on a (2, 3, 96, 96)
   batch, each available backend timed for about a second in a fresh subprocess, so a crashing
   kernel or MegEngine's poller thread cannot touch the caller), kept beside the layout probe's
   record (:func:`backend_record_path`; one another user could have written is refused, never
   read: :mod:`~megzoo.inference.cache_files`). A graph the chosen backend declines (ONNX
   Runtime: an operator its converter refuses) then goes to the next available backend.
"""
import json
import os
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
from ..model_files import model_file_kind, or_list
from ..threads import require_megengine_thread
from .base import (COMMON_OPTIONS, Backend, BackendUnavailableError, BenchMode, CompiledModelBase, CompileInfo,
                   read_metadata)
from .lite import LITE_OPTIONS, LiteBackend
from .onnxruntime import OnnxRuntimeBackend
from .openvino import OpenVinoBackend
from .registry import (NameView, backend_for_file_kind, backend_names, backends_loading, bench_modes, get_backend,
                       option_owners, register_backend, registered_backends, registered_file_kinds,
                       unregister_backend)

__all__ = ["BACKENDS", "compile", "load", "best_backend", "resolve_backend", "backend_record_path", "measure_backends",
           "BackendUnavailableError", "Backend", "BenchMode", "CompiledModelBase", "CompileInfo", "register_backend",
           "unregister_backend", "get_backend", "backend_names", "bench_modes", "LITE_OPTIONS"]

register_backend(OnnxRuntimeBackend())
register_backend(LiteBackend())
register_backend(OpenVinoBackend())

PathLike = Union[str, "os.PathLike[str]"]

#: the values ``backend=`` takes: ``"auto"`` and the registered names (follows registrations)
BACKENDS = NameView(lambda: ("auto",) + backend_names())
#: seconds the measurement subprocess may take (Lite profiles its kernels first)
MEASURE_TIMEOUT_S = 120.0
MEASURE_SHAPE = (2, 3, 96, 96)


def _auto_candidates() -> List[str]:
    """The backends ``backend="auto"`` chooses from: measured ones that can run here, in order."""
    return [b.name for b in registered_backends() if b.auto_candidate and b.available() is None]


def backend_record_path() -> Path:
    """The record of this machine's ``auto`` choice, beside the layout probe's, named by the
    measured backends' versions: ``backend-choice-mge<version>-ort<version>-<machine tag>.json``."""
    tags = sorted(f"{b.record_tag or b.name}{b.version()}" for b in registered_backends() if b.auto_candidate)
    return probe_record_path().parent / f"backend-choice-{'-'.join(tags)}-{machine_tag()}.json"


#: the subprocess of one backend: prints ``{"backend", "images_per_s"}`` or ``{"backend", "error"}``
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
    """Images/s of ``backend`` on :data:`MEASURE_SHAPE` with a random-weight ResNet-18 (median run),
    compiled with the backend's :meth:`~megzoo.inference.backends.base.Backend.measure_options`."""
    import tempfile

    import numpy as np

    from ...models import resnet18

    model = resnet18()
    model.eval()
    x = np.random.RandomState(0).standard_normal(MEASURE_SHAPE).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="megzoo-backend-") as tmp:
        compiled = compile(model, MEASURE_SHAPE, backend=backend, **get_backend(backend).measure_options(tmp))
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
    """Time each available backend now, each in its own subprocess (so a crashing kernel costs
    only its own figure; no record is read or written): ``{"backend": the fastest of those
    measured (the first available if none was), "images_per_s": {name: figure}, "errors": {name:
    reason}, "seconds", "workload"}``."""
    names = _auto_candidates()
    t0 = time.perf_counter()
    figures, errors = {}, {}
    for name in names:
        result = _measure_one(name, timeout)
        if "images_per_s" in result:
            figures[name] = result["images_per_s"]
        else:
            errors[name] = result["error"]
    choice = max(figures, key=figures.get) if figures else (names[0] if names else None)
    return {"backend": choice, "images_per_s": figures, "errors": errors,
            "seconds": round(time.perf_counter() - t0, 2),
            "workload": f"resnet18 random weights, {list(MEASURE_SHAPE)}"}


_chosen: Dict[str, str] = {}  # record path -> the choice (once per process)


def _read_choice(record: Path, candidates: Sequence[str]) -> Optional[Dict[str, Any]]:
    """The record's contents when it holds a choice among ``candidates``, else None (missing,
    unreadable, or not one)."""
    data = read_json(record)
    return data if isinstance(data, dict) and data.get("backend") in candidates else None


def _measure_and_record(record: Path) -> Dict[str, Any]:
    """:func:`measure_backends`, written to ``record`` unless a measurement failed (then warned)."""
    data = measure_backends()
    data["machine"] = machine_record()
    data["versions"] = {b.name: b.version() for b in registered_backends() if b.auto_candidate}
    if data["errors"]:  # not kept: a busy or broken moment must not decide for good
        warnings.warn(f"megzoo: measuring the backends failed ({data['errors']}); using "
                      f"{data['backend']} in this process, measuring again in the next", RuntimeWarning)
        return data
    try:
        atomic_write_text(record, json.dumps(data, indent=2) + "\n")
    except OSError as exc:
        warnings.warn(f"megzoo: could not record the backend choice in {record}: {exc}", RuntimeWarning)
    return data


def best_backend() -> str:
    """What ``backend="auto"`` means here: ``$MEGZOO_BACKEND`` if set; else the only available
    backend, or the fastest by this machine's record (:func:`backend_record_path`), measured the
    first time (:func:`measure_backends`) and then recorded."""
    forced = os.environ.get("MEGZOO_BACKEND", "").strip().lower()
    if forced and forced != "auto":
        if forced not in BACKENDS:
            raise ValueError(f"MEGZOO_BACKEND must be one of {BACKENDS}, got {forced!r}")
        return forced
    candidates = _auto_candidates()
    if len(candidates) <= 1:
        if not candidates:
            raise BackendUnavailableError("no backend can run here: " + "; ".join(
                f"{b.name} {b.available()}" for b in registered_backends() if b.auto_candidate))
        return candidates[0]
    record = backend_record_path()
    key = str(record)
    if key in _chosen:
        return _chosen[key]
    data = _read_choice(record, candidates)
    if data is None:
        with record_lock(record):  # one measurement per machine, even from parallel processes
            data = _read_choice(record, candidates)  # another process may have measured meanwhile
            if data is None:
                data = _measure_and_record(record)
    _chosen[key] = data["backend"]
    return _chosen[key]


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


def _resolve(backend: str, options: Optional[Dict[str, Any]], what: str) -> Tuple[str, bool]:
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
            backend, measured = best_backend(), True
            forced = os.environ.get("MEGZOO_BACKEND", "").strip().lower()
            asked_by = f"MEGZOO_BACKEND={forced}" if forced == backend else f"backend={backend!r}"
    else:
        asked_by = f"backend={backend!r}"
    for owner, names in given.items():
        if owner != backend:
            other = get_backend(owner)
            raise ValueError(other.refuse_options(names, what.format(backend=owner, files=_files(other)), backend))
    reason = get_backend(backend).available()
    if reason:
        raise BackendUnavailableError(f"{asked_by} {reason}")
    return backend, measured


def resolve_backend(backend: str, options: Optional[Dict[str, Any]] = None,
                    what: str = "backend='{backend}'", *, lite_options: Optional[Dict[str, Any]] = None) -> str:
    """The registered backend that runs a request for ``backend`` (a name or ``"auto"``, module
    docstring) with the backend-specific ``options`` given (any set to other than its default
    means its backend under ``"auto"``, and is refused for another). ``what``: how the refusal
    says to ask for the options' backend (``{backend}``: its name, ``{files}``: its file kinds).
    BackendUnavailableError when the backend cannot run here. ``lite_options``: the old name of
    ``options``."""
    return _resolve(backend, options if lite_options is None else lite_options, what)[0]


def _check_known(options: Dict[str, Any], function: str) -> None:
    owners = option_owners()
    for option in options:
        if option not in owners:
            raise TypeError(f"{function}() got an unexpected keyword argument {option!r}")


def _preferred(model) -> Optional[str]:
    """The first available backend that :meth:`~Backend.prefers` ``model``, else None."""
    return next((b.name for b in registered_backends() if b.available() is None and b.prefers(model)), None)


def _compile_with(backend: Backend, model, input_shape, threads, common: Dict[str, Any], given: Dict[str, Any]):
    own = {option: given.get(option, default) for option, default in backend.options.items()}
    return backend.compile(model, input_shape, threads, {**common, **own})


def compile(model, input_shape: Optional[Sequence[int]] = None, threads: Optional[int] = None, *,
            backend: str = "auto", fuse: bool = True, dynamic_batch: bool = True, max_shapes: int = 4,
            opset: int = DEFAULT_OPSET, layout: str = "auto", algo: str = "profile",
            profile_batch: Optional[int] = None, cache_dir: Optional[PathLike] = None, split_batch: bool = True,
            micro_batch: Union[str, int, None] = "auto", **options):
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
            ``"openvino"`` (the ONNX graph run by OpenVINO, optional: ``precision="fp32"`` or
            ``"bf16"``), or ``"auto"``: the faster of the first two here, with the rules of the
            module docstring.
        fuse: fold BatchNorm into the convolutions (and, for Lite, fuse conv + bias + ReLU).
        dynamic_batch: one graph for every batch size; False compiles each full shape separately.
        max_shapes: how many compiled graphs to keep (least recently used dropped first).
        opset: the ONNX opset (onnxruntime backend).
        layout, algo, profile_batch, cache_dir, split_batch, micro_batch: Lite only, see
            :class:`~megzoo.inference.CompiledModel` and docs/performance.md.
        options: the options of other registered backends.

    Threads: compile in the main thread (MegEngine runs nowhere else; elsewhere this raises
    :class:`~megzoo.inference.threads.MegEngineThreadError` before any work); the compiled
    model may then be called from any thread, any batch size included. A new (C, H, W) is traced
    by every backend, so its first call must come from the main thread.
    """
    require_megengine_thread("megzoo.compile")
    _check_known(options, "compile")
    given = dict(opset=opset, layout=layout, algo=algo, profile_batch=profile_batch, cache_dir=cache_dir,
                 split_batch=split_batch, micro_batch=micro_batch, **options)
    if backend == "auto" and not _requests(given) and not os.environ.get("MEGZOO_BACKEND", "").strip():
        backend = _preferred(model) or backend
    name, measured = _resolve(backend, given, what="pass backend='{backend}'")
    common = dict(zip(COMMON_OPTIONS, (fuse, dynamic_batch, max_shapes)))
    chosen = get_backend(name)
    try:
        return _compile_with(chosen, model, input_shape, threads, common, given)
    except chosen.declines():
        others = [n for n in _auto_candidates() if n != name]
        if not measured or not others:
            raise
    return _compile_with(get_backend(others[0]), model, input_shape, threads, common, given)


def load(path: PathLike, threads: Optional[int] = None, *, backend: str = "auto", algo: str = "profile",
         profile_batch: Optional[int] = None, cache_dir: Optional[PathLike] = None,
         split_batch: bool = True, micro_batch: Union[str, int, None] = "auto", **options):
    """Load an exported model (see :func:`megzoo.inference.export`) to run without megzoo's model
    code, by the backend whose file kind it is: an ONNX model with ONNX Runtime, a ``.mge`` with
    MegEngine Lite, told apart by their first bytes (any other file, e.g. a pickled checkpoint, is
    refused with ``ValueError`` naming what it is, before a runtime sees it). The batch size may
    change where the file allows it; the spatial size is the exported one. ``model.metadata``
    holds the metadata JSON beside the file when present. For a ``.mge``, a file whose layout
    failed its probe here is refused (:class:`~megzoo.inference.LayoutUnavailableError`); the
    other arguments are Lite's, as for :func:`compile` (``options``: other backends').

    ``backend``: ``"auto"`` (default) is the file kind's own backend, or another backend that
    loads the kind when one of its options is given (``precision="bf16"``: OpenVINO); a name
    (``"openvino"`` for an ``.onnx``) chooses among the backends that load the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such model file: {path}")
    _check_known(options, "load")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    kind = model_file_kind(path, registered_file_kinds())  # ValueError for other files
    loaders = backends_loading(kind)
    given = dict(algo=algo, profile_batch=profile_batch, cache_dir=cache_dir, split_batch=split_batch,
                 micro_batch=micro_batch, **options)
    if backend == "auto":
        asked = [b for b in loaders if b.name in _requests(given)]
        chosen = asked[0] if len(asked) == 1 else backend_for_file_kind(kind)
    else:
        chosen = get_backend(backend)
        if chosen not in loaders:
            names = or_list([repr(b.name) for b in loaders] + [repr("auto")])
            raise ValueError(f"{path} is a .{kind} file, which backend={backend!r} does not load; backend={names} "
                             "loads it")
    backend = chosen
    meta = read_metadata(path)
    other_loader = any(name != backend.name and get_backend(name) in loaders for name in _requests(given))
    _resolve(backend.name, given, what="pass backend='{backend}'" if other_loader else "they are for {files} files")
    compiled = backend.load(path, threads, {k: v for k, v in given.items() if k in backend.options}, meta)
    compiled.metadata = meta
    compiled.output_names = list((meta or {}).get("output_names") or [])
    shape = (meta or {}).get("input_shape")
    if shape:
        compiled.runner_for(tuple(shape))
    return compiled

