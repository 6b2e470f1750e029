"""What a backend is: the small protocol each runtime implements, and the compiled model they share.

A backend (:class:`Backend`) is one object registered once (:mod:`~megzoo.inference.backends.registry`):
its ``name``, whether it can run here (:meth:`Backend.available`), :meth:`Backend.compile` and
:meth:`Backend.load`, the file kinds it loads (:class:`~megzoo.inference.model_files.FileKind`), the
options only it takes (``options``, with their defaults), its part in ``backend="auto"``
(:meth:`Backend.measure_options`; ``precisions``, what it runs) and its benchmark modes
(:class:`BenchMode`). What it returns subclasses :class:`CompiledModelBase`: the call contract
(numpy (N, C, H, W) float32 in, numpy outputs out) and the LRU of compiled graphs by input shape.
docs/backends.md shows a backend written from scratch.
"""
import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ...device import poller_yields
from ...host import usable_cpus
from ..model_files import FileKind

__all__ = ["Backend", "BenchMode", "BackendUnavailableError", "CompiledModelBase", "ShapeCachedModel", "CompileInfo",
           "default_threads", "check_threads", "as_float32_batch", "is_int8", "metadata_path", "read_metadata",
           "NEW_SIZE_HINT", "COMMON_OPTIONS", "FLOAT_PRECISIONS", "PRECISIONS", "check_precision_name",
           "float32_options", "run_precision"]

PathLike = Union[str, "os.PathLike[str]"]

#: what to do about a new input size met outside the main thread (every backend traces the model)
NEW_SIZE_HINT = ("call the compiled model once with this input size in the main thread (or compile with "
                 "input_shape=...), then from any thread")
#: the options of :func:`megzoo.compile` every backend takes, with their defaults (``precision``:
#: one of :data:`FLOAT_PRECISIONS`, checked against the backend before it is called)
COMMON_OPTIONS = {"fuse": True, "dynamic_batch": True, "max_shapes": 4, "precision": "fp32"}
#: what ``precision=`` takes: the arithmetic of a float model's convolutions and matrix products
FLOAT_PRECISIONS = ("fp32", "bf16")
#: every precision a backend may run: the float ones and ``int8`` (a model made by ``megzoo.quantize``)
PRECISIONS = FLOAT_PRECISIONS + ("int8",)


def check_precision_name(precision) -> str:
    """``precision`` if it is one of :data:`FLOAT_PRECISIONS`, else ValueError."""
    if precision not in FLOAT_PRECISIONS:
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    return precision


def run_precision(int8: bool, precision: str) -> str:
    """The precision a model runs in: ``"int8"`` for an int8 model (``precision`` must then be
    fp32, the default), else ``precision`` (checked)."""
    check_precision_name(precision)
    if int8 and precision != "fp32":
        raise ValueError(f"precision={precision!r} is for float models; this model is int8 (megzoo.quantize): "
                         "leave precision out")
    return "int8" if int8 else precision


def float32_options(options: Dict[str, Any]) -> Dict[str, Any]:
    """``options`` without ``precision``, for a backend that runs float models in fp32 only (the
    front door has refused any other precision before calling it)."""
    return {k: v for k, v in options.items() if k != "precision"}


class BackendUnavailableError(RuntimeError):
    """The backend asked for cannot run here (e.g. its runtime is not installed)."""


def default_threads() -> int:
    """Threads a compiled model uses unless told: the CPUs this process may use."""
    return usable_cpus()


def check_threads(threads: Optional[int]) -> int:
    """``threads`` (default :func:`default_threads`) if it is an int >= 1, else ValueError."""
    if threads is None:
        threads = default_threads()
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    return threads


def as_float32_batch(x) -> np.ndarray:
    """``x`` (a numpy array or a megengine Tensor) as a C-contiguous float32 numpy array."""
    if hasattr(x, "numpy") and not isinstance(x, np.ndarray):
        x = x.numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def is_int8(model) -> bool:
    """True for an int8 model (``megzoo.quantize``'s result: its ``precision`` says so)."""
    return getattr(model, "precision", None) == "int8"


def metadata_path(path: PathLike) -> Path:
    """The metadata file next to an exported model: ``model.mge`` -> ``model.mge.json``."""
    return Path(os.fspath(path) + ".json")


def read_metadata(path: PathLike) -> Optional[Dict[str, Any]]:
    """The metadata JSON beside an exported model, or None when there is none."""
    meta = metadata_path(path)
    if not meta.is_file():
        return None
    return json.loads(meta.read_text(encoding="utf-8"))


@dataclass
class CompileInfo:
    """How one input shape was compiled (seconds)."""

    input_shape: Tuple[int, ...]
    trace_dump_s: float  #: tracing + graph optimisation + writing the graph
    load_s: float  #: loading the graph into the runtime
    first_run_s: float  #: first forward: memory planning, algorithm profiling/cache lookup, weight pre-processing
    algo_cache_existed: bool  #: the persistent cache file was there before this compile
    algo_cache_hit: bool = False  #: every kernel choice came from the cache file (nothing was profiled)

    @property
    def total_s(self) -> float:
        return self.trace_dump_s + self.load_s + self.first_run_s


class CompiledModelBase:
    """What every backend's compiled model shares: a call contract (numpy (N, C, H, W) float32 or
    a megengine Tensor in, numpy outputs out: one array, or a list for several outputs) and an LRU
    of compiled runners by input shape (``(C, H, W)`` with a dynamic batch, else the full shape; a
    model loaded from a file has one). A backend provides ``_build(shape)`` returning a runner
    with ``run(x) -> list of arrays``, and ``_dropped(runner)`` for a runner pushed out of the
    LRU. ``run_under_lock``: the runner is not safe to call from several threads at once."""

    backend = ""  #: the registered name of the backend that made it
    file_kind = ""  #: what a loaded file is called in messages (``"mge"``, ``"onnx"``)
    run_under_lock = True

    def _init_cache(self, threads, max_shapes, dynamic_batch, source_file, input_shape):
        threads = check_threads(threads)
        if not isinstance(max_shapes, int) or isinstance(max_shapes, bool) or max_shapes < 1:
            raise ValueError(f"max_shapes must be an int >= 1, got {max_shapes!r}")
        self.threads = threads
        self.max_shapes = max_shapes
        self.dynamic_batch = dynamic_batch
        self._source_file = Path(source_file) if source_file is not None else None
        self._runners: "OrderedDict[tuple, Any]" = OrderedDict()
        self._lock = threading.RLock()
        #: how each shape was compiled, in order
        self.compile_log: List[CompileInfo] = []
        self.output_names: List[str] = []
        #: the metadata JSON of a loaded file (None for a compiled module)
        self.metadata: Optional[Dict[str, Any]] = None
        self.input_shape = tuple(int(s) for s in input_shape) if input_shape is not None else None

    def _init_onnx_source(self, model, onnx_file, compiling: str, *, input_shape, threads, fuse: bool,
                          dynamic_batch: bool, max_shapes: int) -> None:
        """The set-up of a backend that runs megzoo's ONNX: exactly one of a ``model`` to convert
        (in MegEngine's thread; ``compiling`` names the work for the refusal) and an ``onnx_file``
        to run, the shape cache, ``fuse`` and whether the graph is int8."""
        if (model is None) == (onnx_file is None):
            raise ValueError("give a model to convert or an onnx_file to run, not both or neither")
        if model is not None:
            from ..threads import require_megengine_thread

            require_megengine_thread(compiling)
        self._init_cache(threads, max_shapes, dynamic_batch, onnx_file, input_shape)
        self.model = model
        self.onnx_file = self._source_file
        self.fuse = fuse
        #: an int8 graph (a quantized model, or a file whose metadata says int8)
        self.int8 = is_int8(model) if model is not None else False

    @property
    def cached_shapes(self) -> List[tuple]:
        """Keys of the compiled graphs kept, least recently used first: ``(C, H, W)`` with a
        dynamic batch, else the full input shape."""
        with self._lock:
            return list(self._runners)

    def __call__(self, x):
        """Run the compiled graph on ``x`` (N, C, H, W); returns a numpy array (a list of them for
        a model with several outputs)."""
        x = as_float32_batch(x)
        if x.ndim < 1 or x.shape[0] < 1:
            raise ValueError(f"input must have a non-empty batch axis, got shape {x.shape}")
        with self._lock:
            runner = self.runner_for(x.shape)  # compiling runs MegEngine eagerly: the poller keeps its policy
            if self.run_under_lock:
                with poller_yields():  # MegEngine's poller thread must not take the runtime's cores
                    outputs = runner.run(x)
        if not self.run_under_lock:
            self._check_call(runner, x.shape)
            with poller_yields():
                outputs = runner.run(x)
        return outputs[0] if len(outputs) == 1 and self.output_names != ["output0"] else outputs

    def _check_call(self, runner, shape: tuple) -> None:
        """Refuse ``shape`` for ``runner`` before running it (a backend may override)."""

    def _check_onnx_file_shape(self, runner, shape: tuple) -> None:
        """ValueError when the ``.onnx`` file this model runs (``self.onnx_file``; nothing to check
        for a converted model) cannot take inputs of ``shape``: ``runner.input_shape`` holds the
        file's dimensions, an int where fixed, a str where dynamic."""
        if getattr(self, "onnx_file", None) is None:
            return
        fixed = [d if isinstance(d, int) else None for d in runner.input_shape]
        if len(fixed) != len(shape) or any(f is not None and f != s for f, s in zip(fixed, shape)):
            static = "" if not isinstance(runner.input_shape[0], int) else (
                " (a static-batch export: export again without --static-batch for any batch size)")
            raise ValueError(f"{self.onnx_file} takes inputs of shape {runner.input_shape}{static}; got {shape}")

    def _key(self, shape: tuple) -> tuple:
        return tuple(shape[1:]) if self.dynamic_batch else tuple(shape)

    def runner_for(self, shape: tuple):
        """The runtime's runner for inputs of ``shape`` (N, C, H, W): the cached one (the last
        ``max_shapes`` kept), else built now (:meth:`_build`); a model loaded from a file has only
        the shape it was made for (ValueError for another)."""
        key = self._key(shape)
        runner = self._runners.get(key)
        if runner is not None:
            self._runners.move_to_end(key)
            return runner
        if self._source_file is not None and self._runners:  # a file has one graph: it cannot be re-made
            raise ValueError(f"this .{self.file_kind} was made for inputs {next(iter(self._runners))}; "
                             f"got input shape {shape}")
        runner = self._build(tuple(int(s) for s in shape))
        self._runners[key] = runner
        while len(self._runners) > self.max_shapes:
            self._dropped(self._runners.popitem(last=False)[1])
        return runner

    def _build(self, shape: tuple):
        raise NotImplementedError

    def _dropped(self, runner) -> None:
        """A runner left the LRU."""


#: the old name of :class:`CompiledModelBase`
ShapeCachedModel = CompiledModelBase

#: ``worker(cfg, x, out)`` in a benchmark worker process: sets up, may fill ``out``, returns the call
#: to time (None when ``out`` is complete)
Worker = Callable[[dict, np.ndarray, dict], Optional[Callable[[], object]]]


@dataclass(frozen=True)
class BenchMode:
    """One kind of row of ``megzoo benchmark`` (:mod:`megzoo.benchmark`), contributed by a backend.

    ``worker`` runs in a fresh ``python -m megzoo.bench_worker`` process
    (:func:`megzoo.bench_worker.run_config`); ``plan(cfg, run)`` (optional) runs in the parent and
    makes the row itself, with ``run`` a :class:`megzoo.benchmark.BenchRun` (its ``worker(cfg)``
    runs a configuration, ``standalone`` in a process that loads one runtime file by path);
    without it the row is one worker run. ``needs``: modes that must be in the same run
    (``needs_why`` says why); ``aliases``: old names accepted for this one; ``check(cfg)``: refuses
    a configuration before anything runs; ``int8``: the row quantizes first (its times are reported
    apart); ``default``: in ``megzoo.benchmark.DEFAULT_MODES``; ``precision``: ``"bf16"`` for a mode
    that runs a float model in bf16 (``megzoo benchmark --precision bf16`` picks these)."""

    name: str
    help: str
    worker: Optional[Worker] = None
    plan: Optional[Callable[[dict, Any], dict]] = None
    needs: Tuple[str, ...] = ()
    needs_why: str = ""
    aliases: Tuple[str, ...] = ()
    check: Optional[Callable[[dict], None]] = None
    int8: bool = False
    default: bool = False
    precision: str = "fp32"  #: of the float model the mode runs (``int8`` modes: the quantized model's)


class Backend:
    """A runtime that runs compiled models: subclass it, set the class attributes, implement
    :meth:`compile` and :meth:`load`, and register one instance
    (:func:`~megzoo.inference.backends.register_backend`).

    Class attributes: ``name`` (what ``backend=`` and ``$MEGZOO_BACKEND`` say); ``file_kinds`` (the
    files :func:`megzoo.inference.load` hands to it, told by their first bytes or suffix);
    ``options`` (the keywords of :func:`megzoo.compile` / :func:`~megzoo.inference.load` only it
    takes, with their defaults: another value means this backend); ``auto_candidate`` (measured
    for ``backend="auto"``); ``record_tag`` (its part of the auto record's name, with
    :meth:`version`); ``also_loads`` (file kinds another backend loads by default that this one
    loads too: :func:`~megzoo.inference.load` takes it when given ``backend=`` its name, or under
    ``auto`` when it is measured faster); ``precisions`` (of :data:`PRECISIONS`: what it runs, fp32
    only unless it says more; ``backend="auto"`` measures and chooses per precision)."""

    name: str = ""
    file_kinds: Tuple[FileKind, ...] = ()
    also_loads: Tuple[FileKind, ...] = ()
    options: Mapping[str, Any] = {}
    auto_candidate: bool = True
    record_tag: str = ""
    precisions: Tuple[str, ...] = ("fp32",)

    def available(self) -> Optional[str]:
        """None when this backend can run here, else the reason it cannot (with the fix)."""
        return None

    def version(self) -> Optional[str]:
        """The runtime's version (part of the auto record's name), None when unknown."""
        return None

    def compile(self, model, input_shape: Optional[Sequence[int]], threads: Optional[int],
                options: Dict[str, Any]) -> CompiledModelBase:
        """``model`` compiled for this runtime; ``options``: :data:`COMMON_OPTIONS` and this
        backend's ``options``, every one given (defaults filled in). ``precision`` is one this
        backend runs here (``"fp32"`` for an int8 model, whose precision is its own)."""
        raise NotImplementedError

    def load(self, path: Path, threads: Optional[int], options: Dict[str, Any],
             metadata: Optional[Dict[str, Any]]) -> CompiledModelBase:
        """The model file ``path`` (one of ``file_kinds`` or ``also_loads``) ready to run; ``options``: this
        backend's options that :func:`~megzoo.inference.load` was given and ``precision`` (as for
        :meth:`compile`); ``metadata``: the JSON beside the file, or None."""
        raise NotImplementedError(f"the {self.name} backend loads no files")

    def declines(self) -> Tuple[type, ...]:
        """Errors of :meth:`compile` meaning "not a graph for me": under ``backend="auto"`` the
        next candidate compiles it instead."""
        return ()

    def precision_unavailable(self, precision: str) -> Optional[str]:
        """None when this backend can run ``precision`` (one of its ``precisions``) on this CPU, else
        why not, with the fix (e.g. bf16 on a CPU without BF16 arithmetic)."""
        return None

    def requested_by_environment(self) -> List[str]:
        """Environment variables set now that ask for this backend under ``backend="auto"``."""
        return []

    def measure_options(self, tmp_dir: str) -> Dict[str, Any]:
        """The options of the auto choice's short measurement (``tmp_dir``: a scratch folder)."""
        return {}

    def refuse_options(self, names: Sequence[str], hint: str, running: str) -> str:
        """The message refusing this backend's options ``names`` given to ``running``'s run."""
        return f"{', '.join(names)} apply to the {self.name} backend only; {hint} (or leave them out for {running})"

    def bench_modes(self) -> Tuple[BenchMode, ...]:
        """The rows this backend adds to ``megzoo benchmark``: by default one, named after it,
        timing ``megzoo.compile(model, backend=name)`` in a megzoo process."""
        from functools import partial

        from ...bench_worker import run_compiled

        return (BenchMode(self.name, f"megzoo.compile(backend={self.name!r}) in a megzoo process",
                          worker=partial(run_compiled, backend=self.name)),)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
