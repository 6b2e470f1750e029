"""Fast CPU inference: trace a model into a static graph, optimise it, run it with MegEngine Lite.

    compiled = megzoo.compile(model, input_shape=(16, 3, 224, 224))
    logits = compiled(batch)            # numpy (N, 3, H, W) float32 in, numpy logits out

What :func:`compile` does (see ``docs/performance.md``):

1. traces ``model.forward`` in eval mode with ``megengine.jit.trace(symbolic=True,
   capture_as_const=True)``: the weights become constants of one static graph;
2. dumps that graph with MegEngine's inference optimisations: BatchNorm folded into the
   convolution weights, convolution + bias + ReLU fused into one ``ConvBias`` operator,
   constant folding (``optimize_for_inference`` with ``enable_fuse_conv_bias_nonlinearity``);
   On x86 with AVX2 the convolutions are converted to the NCHW88 layout (``layout="auto"``,
   :func:`best_layout`): MegEngine's fast x86 kernels (oneDNN, blocked Winograd) live there, and
   there are few candidates to profile, which keeps the first compile short;
3. loads the ``.mge`` into a MegEngine Lite network with ``threads`` worker threads (default: the
   CPUs this process may use, ``os.sched_getaffinity``), weights pre-processed once for the chosen
   kernels, and the convolution algorithms chosen by profiling (fast-run). The profile results
   are kept in a persistent cache under ``$MEGZOO_HOME/algo_cache/`` so only the first compile of
   a shape on a machine pays for them.

The batch size is dynamic: the graph is batch-agnostic, so one network serves every N (a new N
re-plans memory and, the first time on a machine, profiles). A new spatial size or channel count
compiles another graph; the last ``max_shapes`` are kept.

The compiled model is a snapshot: later changes to the module's weights are not seen (compile
again). Use eager ``model(x)`` for training, gradients, hooks and debugging.
"""
import contextlib
import json
import os
import platform
import re
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["compile", "CompiledModel", "load", "export", "check_parity", "ParityError", "ExportReport",
           "default_threads", "algo_cache_dir", "dump_graph", "best_layout"]

PathLike = Union[str, "os.PathLike[str]"]

#: the input variable name in every graph megzoo dumps
INPUT_NAME = "data"
#: default parity tolerance: max |compiled - eager| / max |eager|
DEFAULT_TOLERANCE = 1e-4

_ALGO_POLICIES = ("profile", "heuristic")
_LAYOUTS = ("nchw", "nchw88", "nchw44")


# ------------------------------------------------------------------------------------------------
# environment helpers
# ------------------------------------------------------------------------------------------------
def default_threads() -> int:
    """CPUs this process may run on (``os.sched_getaffinity``; ``os.cpu_count()`` where that is
    not available), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def megzoo_home() -> Path:
    """``$MEGZOO_HOME``, else ``~/.cache/megzoo``."""
    home = os.environ.get("MEGZOO_HOME", "").strip()
    return Path(home or "~/.cache/megzoo").expanduser().absolute()


def algo_cache_dir() -> Path:
    """Directory of the persistent algorithm-profile caches: ``$MEGZOO_HOME/algo_cache``."""
    return megzoo_home() / "algo_cache"


def _cpu_tag() -> str:
    name = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:  # pragma: no cover
        pass
    name = name or platform.processor() or platform.machine() or "cpu"
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")[:60] or "cpu"


def _megengine_version() -> str:
    """MegEngine's version, without importing it (a Lite-only process need not)."""
    try:
        from importlib.metadata import version

        return version("MegEngine")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        import megengine

        return megengine.__version__


def algo_cache_file(threads: int) -> Path:
    """The cache file for this CPU model, MegEngine version and thread count (profiles measured
    with 1 or 2 threads pick different kernels)."""
    return algo_cache_dir() / f"lite-mge{_megengine_version()}-{_cpu_tag()}-t{int(threads)}.cache"


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:  # pragma: no cover
        pass
    return set()


_PROBE_SRC = r"""
import sys, numpy as np
import megengine
from megenginelite import LiteAlgoSelectStrategy as S, LiteConfig, LiteNetwork, LiteOptions
options = LiteOptions()
options.weight_preprocess = True
net = LiteNetwork(LiteConfig(option=options))
net.threads_number = 2
net.set_network_algo_policy(S.LITE_ALGO_PROFILE | S.LITE_ALGO_OPTIMIZED)
net.load(sys.argv[1])
data = net.get_io_tensor("data")
for n in (1, 3):
    data.set_data_by_copy(np.load(sys.argv[2])[:n].copy())
    net.forward()
    net.wait()
    out = net.get_io_tensor(net.get_output_name(0)).to_numpy()
    np.save(sys.argv[3] + str(n) + ".npy", out)
print("LAYOUT-PROBE-OK")
"""

_best_layout: Optional[str] = None


def best_layout() -> str:
    """The convolution layout ``layout="auto"`` uses here: ``"nchw88"`` on x86 with AVX2 + FMA
    (MegEngine's x86 kernels, oneDNN among them, work on channel blocks of 8: faster, and far
    fewer algorithms to profile) if a one-time probe passes, else ``"nchw"``.

    NCHW88 has been reported to hang or crash in MegEngine Lite on some builds, so the first call on
    a machine runs a small NCHW88 network in a subprocess with a time limit and checks its outputs;
    the verdict is kept in ``$MEGZOO_HOME/algo_cache/layout-probe-*.json``. ``MEGZOO_LAYOUT=nchw``
    (or ``nchw88``) overrides."""
    global _best_layout
    forced = os.environ.get("MEGZOO_LAYOUT", "").strip().lower()
    if forced:
        if forced not in _LAYOUTS:
            raise ValueError(f"MEGZOO_LAYOUT must be one of {_LAYOUTS}, got {forced!r}")
        return forced
    if _best_layout is None:
        flags = _cpu_flags()
        if platform.machine().lower() in ("x86_64", "amd64") and {"avx2", "fma"} <= flags:
            _best_layout = "nchw88" if _layout_probe("nchw88") else "nchw"
        else:
            _best_layout = "nchw"
    return _best_layout


def _layout_probe(layout: str, timeout: float = 120.0) -> bool:
    import subprocess
    import sys

    record = algo_cache_dir() / f"layout-probe-mge{_megengine_version()}-{_cpu_tag()}.json"
    try:
        verdicts = json.loads(record.read_text())
    except (OSError, ValueError):
        verdicts = {}
    if layout in verdicts:
        return bool(verdicts[layout]["ok"])
    import megengine.functional as F
    import megengine.module as M

    class _Probe(M.Module):  # stem, a residual 3x3 pair, a 1x1 expansion, head: the ResNet patterns
        def __init__(self):
            super().__init__()
            self.stem = M.ConvBnRelu2d(3, 16, 7, stride=2, padding=3)
            self.a = M.ConvBnRelu2d(16, 16, 3, padding=1)
            self.b = M.ConvBn2d(16, 16, 3, padding=1)
            self.c = M.ConvBnRelu2d(16, 32, 1, stride=2)
            self.fc = M.Linear(32, 10)

        def forward(self, x):
            x = self.stem(x)
            x = F.relu(self.b(self.a(x)) + x)
            return self.fc(F.mean(self.c(x), axis=(2, 3)))

    model = _Probe()
    model.eval()
    x = np.random.RandomState(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    ok, reason = False, ""
    with tempfile.TemporaryDirectory(prefix="megzoo-probe-") as tmp:
        path = Path(tmp) / "probe.mge"
        dump_graph(model, (1, 3, 32, 32), path, layout=layout)
        np.save(Path(tmp) / "x.npy", x)
        try:
            proc = subprocess.run([sys.executable, "-c", _PROBE_SRC, str(path), str(Path(tmp) / "x.npy"),
                                   str(Path(tmp) / "out")], capture_output=True, text=True, timeout=timeout)
            if "LAYOUT-PROBE-OK" in proc.stdout:
                ref = _eager(model, x)[0]
                errs = [np.max(np.abs(np.load(Path(tmp) / f"out{n}.npy") - ref[:n])) / np.max(np.abs(ref[:n]))
                        for n in (1, 3)]
                ok = bool(max(errs) < DEFAULT_TOLERANCE)
                reason = f"max relative error {max(errs):.3g}"
            else:
                reason = f"exit status {proc.returncode}: {(proc.stderr.strip().splitlines() or [''])[-1][:200]}"
        except subprocess.TimeoutExpired:
            reason = f"no answer within {timeout:.0f} s (hang)"
    if not ok:
        import warnings

        warnings.warn(f"megzoo: the {layout} layout failed its probe ({reason}); using nchw", RuntimeWarning)
    verdicts[layout] = {"ok": ok, "reason": reason}
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(verdicts, indent=2) + "\n")
    except OSError:
        pass
    return ok


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "numpy") and not isinstance(x, np.ndarray):
        x = x.numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


# ------------------------------------------------------------------------------------------------
# tracing and dumping
# ------------------------------------------------------------------------------------------------
def _output_names(outputs) -> List[str]:
    if isinstance(outputs, (list, tuple)):
        return [f"output{i}" for i in range(len(outputs))]
    return ["output"]


TRACE_DEVICE = "xpux"  #: where graphs are traced (Lite later runs them on the CPU it is given)


@contextlib.contextmanager
def _on_trace_device(model):
    """Trace on :data:`TRACE_DEVICE`: MegEngine's dump creates the graph's input there, and the
    weights, the input and the constants the trace records must share one device (a model built
    on ``cpux`` fails with "different input comp_nodes"; traced on ``cpu0`` the fusion pass fails).
    Weights elsewhere are moved there for the trace and moved back afterwards."""
    import megengine

    from .device import quiet_stderr, using_device

    with quiet_stderr():  # the first use of xpux probes CUDA and prints "failed to load cuda" lines
        megengine.tensor(0.0, device=TRACE_DEVICE).numpy()
    moved = []
    try:
        for tensor in list(model.parameters()) + list(model.buffers()):
            if tensor.device.logical_name.split(":")[0] != TRACE_DEVICE:
                moved.append((tensor, tensor.device.logical_name))
                tensor._reset(tensor.to(TRACE_DEVICE))  # in place, as MegEngine's optimizers update
        with using_device(TRACE_DEVICE):
            yield
    finally:
        for tensor, device in moved:
            tensor._reset(tensor.to(device))


def dump_graph(model, input_shape: Sequence[int], file: PathLike, *, fuse: bool = True,
               layout: str = "nchw") -> List[str]:
    """Trace ``model`` (in eval mode; its train/eval state is restored) on an input of
    ``input_shape`` and write the static inference graph to ``file`` (a ``.mge``). With ``fuse``
    (default) MegEngine's inference optimisations are applied: BatchNorm folded into the
    convolutions, conv + bias + nonlinearity fused, constants folded. ``layout`` is the internal
    layout of the convolutions: ``"nchw"`` (portable), ``"nchw88"`` (x86 AVX2/AVX-512 kernels,
    channels blocked by 8), ``"nchw44"`` (ARM), or ``"auto"`` (:func:`best_layout`); inputs and
    outputs stay NCHW. Returns the output names (``["output"]``, or ``["output0", ...]`` for a
    model returning a list)."""
    import megengine
    from megengine.jit import trace

    if layout not in ("auto",) + _LAYOUTS:
        raise ValueError(f"layout must be one of {('auto',) + _LAYOUTS}, got {layout!r}")
    layout = (best_layout() if fuse else "nchw") if layout == "auto" else layout
    if layout != "nchw" and not fuse:
        raise ValueError(f"layout {layout!r} needs the graph optimisations (fuse=True)")
    input_shape = tuple(int(s) for s in input_shape)
    was_training = model.training
    model.eval()
    try:
        with _on_trace_device(model):
            names: List[str] = []

            @trace(symbolic=True, capture_as_const=True)
            def forward(data):
                out = model(data)
                names[:] = _output_names(out)
                return out

            forward(megengine.tensor(np.zeros(input_shape, dtype=np.float32)))
            options = {"enable_fuse_conv_bias_nonlinearity": True} if fuse else {}
            if layout != "nchw":
                options[f"enable_{layout}"] = True
            forward.dump(os.fspath(file), arg_names=[INPUT_NAME], output_names=names,
                         optimize_for_inference=fuse, **options)
        return names
    finally:
        model.train(was_training)


# ------------------------------------------------------------------------------------------------
# MegEngine Lite runtime
# ------------------------------------------------------------------------------------------------
_lite_lock = threading.RLock()  # the profile cache is process-wide state
_lite_cache_file: Optional[str] = None


def _lite():
    import megenginelite  # shipped inside the megengine wheel; loads its shared library only

    return megenginelite


def _use_cache_file(path: Path) -> None:
    """Point the process-wide MegEngine persistent cache at ``path`` (loaded if it exists)."""
    global _lite_cache_file
    lite = _lite()
    if _lite_cache_file == str(path):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lite.LiteGlobal.set_persistent_cache(str(path), False)
    _lite_cache_file = str(path)


def _save_cache_file(path: Path) -> None:
    """Write the in-memory profile cache to ``path`` atomically (a concurrent reader never sees a
    half-written file)."""
    lite = _lite()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    lite.LiteGlobal.dump_persistent_cache(str(tmp))
    if tmp.exists():
        os.replace(tmp, path)


class _LiteNet:
    """One MegEngine Lite network loaded from a ``.mge`` file, on its own CPU comp node."""

    def __init__(self, path: PathLike, threads: int, algo: str, profile_batch: Optional[int],
                 device_id: int = 0, share_weights_with: Optional["_LiteNet"] = None, weight_preprocess: bool = True,
                 operator_profile: Optional[PathLike] = None):
        """``operator_profile``: write MegEngine's per-operator timings of the last run to this
        JSON file when the network is freed (``benchmarks/profile_ops.py``)."""
        lite = _lite()
        options = lite.LiteOptions()
        # transform the filters once for the chosen kernels: faster, but a copy of the weights
        options.weight_preprocess = weight_preprocess
        options.var_sanity_check_first_run = False
        net = lite.LiteNetwork(lite.LiteConfig(option=options))
        if threads > 1:
            net.threads_number = threads
        if device_id:  # networks on the same comp node share its one worker queue: give each its own
            net.device_id = device_id
        if algo == "profile":
            strategy = lite.LiteAlgoSelectStrategy
            net.set_network_algo_policy(strategy.LITE_ALGO_PROFILE | strategy.LITE_ALGO_OPTIMIZED,
                                        shared_batch_size=int(profile_batch or 0))
        if share_weights_with is not None:
            net.share_weights_with(share_weights_with.net)
        if operator_profile is not None:
            net.enable_profile_performance(os.fspath(operator_profile))
        # load straight from the file: LiteNetwork.load keeps several Python copies of the bytes
        net._api.LITE_load_model_from_path(net._network, os.fspath(path).encode())
        self.net = net
        self.input = net.get_io_tensor(net.get_input_name(0))
        self.output_names = list(net.get_all_output_name())
        self.outputs = [net.get_io_tensor(n) for n in self.output_names]

    def forward(self, x: np.ndarray) -> List[np.ndarray]:
        self.input.set_data_by_share(np.ascontiguousarray(x))
        self.net.forward()
        self.net.wait()
        return [t.to_numpy() for t in self.outputs]


class _LiteRunner:
    """A compiled graph ready to run. A batch of one runs on one Lite network using all
    ``threads``; with ``split_batch``, a batch of N >= 2 runs as ``min(threads, N)`` contiguous
    shares on single-thread networks at the same time, each on its own comp node, the weights
    loaded once and shared. MegEngine's multi-thread kernels scale poorly on small per-layer work
    (ResNet-50 at batch 16 on 2 cores: 1.2x one thread), independent networks almost linearly
    (1.6x; :mod:`benchmarks/bench_inference`). Each kind of network is loaded from ``path``
    the first time it is needed, so a process running one kind pays for one."""

    def __init__(self, path: PathLike, threads: int, algo: str, cache_file: Optional[Path],
                 profile_batch: Optional[int], split_batch: bool = True):
        self.path = path
        self.threads = threads
        self.algo = algo
        self.profile_batch = profile_batch
        self.cache_file = cache_file
        self.split_batch = split_batch and threads > 1
        self._main: Optional[_LiteNet] = None
        self._workers: List[_LiteNet] = []
        self._pool = None
        self.batches_seen = set()  # batch sizes already planned and profiled

    @property
    def output_names(self) -> List[str]:
        net = self._main or (self._workers[0] if self._workers else self._main_net())
        return net.output_names

    def _main_net(self) -> _LiteNet:
        if self._main is None:
            self._main = _LiteNet(self.path, self.threads, self.algo, self.profile_batch)
        return self._main

    def _worker_nets(self) -> List[_LiteNet]:
        if not self._workers:
            from concurrent.futures import ThreadPoolExecutor

            # no weight pre-processing: it would give each network its own transformed copy
            # (ResNet-50: +130 MiB per network for 2% speed)
            first = _LiteNet(self.path, 1, self.algo, self.profile_batch, device_id=1, weight_preprocess=False)
            self._workers = [first] + [_LiteNet(self.path, 1, self.algo, self.profile_batch, device_id=i + 1,
                                                share_weights_with=first, weight_preprocess=False)
                                       for i in range(1, self.threads)]
            self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="megzoo-lite")
        return self._workers

    def networks_for(self, batch: int) -> List[_LiteNet]:
        """The networks a batch of ``batch`` images runs on (loaded now if needed): the
        all-threads network, or ``min(threads, batch)`` of the single-thread ones."""
        if not self.split_batch or batch < 2:
            return [self._main_net()]
        return self._worker_nets()[:min(self.threads, batch)]

    def run(self, x: np.ndarray) -> List[np.ndarray]:
        batch = x.shape[0]
        if batch in self.batches_seen or self.algo != "profile" or self.cache_file is None:
            return self._run(x, concurrent=True)
        with _lite_lock:  # a new batch size: profile (or read the cache) alone, then save the cache
            _use_cache_file(self.cache_file)
            outputs = self._run(x, concurrent=False)
            _save_cache_file(self.cache_file)
        self.batches_seen.add(batch)
        return outputs

    def _run(self, x: np.ndarray, concurrent: bool) -> List[np.ndarray]:
        nets = self.networks_for(x.shape[0])
        if len(nets) == 1:
            return nets[0].forward(x)
        chunks = np.array_split(x, len(nets))
        if concurrent:
            futures = [self._pool.submit(net.forward, chunk) for net, chunk in zip(nets[1:], chunks[1:])]
            results = [nets[0].forward(chunks[0])] + [f.result() for f in futures]
        else:  # profiling measures kernels: one network at a time
            results = [net.forward(chunk) for net, chunk in zip(nets, chunks)]
        return [np.concatenate([r[i] for r in results]) for i in range(len(results[0]))]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._main, self._workers = None, []


# ------------------------------------------------------------------------------------------------
# the compiled model
# ------------------------------------------------------------------------------------------------
@dataclass
class CompileInfo:
    """How one input shape was compiled."""

    input_shape: Tuple[int, ...]
    trace_dump_s: float  #: tracing + graph optimisation + writing the .mge
    load_s: float  #: Lite network load
    first_run_s: float  #: first forward: memory planning, algorithm profiling/cache lookup, weight pre-processing
    algo_cache_existed: bool  #: the persistent cache file was there before this compile
    algo_cache_hit: bool = False  #: every kernel choice came from the cache file (nothing was profiled)

    @property
    def total_s(self) -> float:
        return self.trace_dump_s + self.load_s + self.first_run_s


class CompiledModel:
    """A model compiled for fast inference; call it with a numpy (N, C, H, W) float32 batch (or a
    megengine Tensor) to get numpy outputs. Build it with :func:`compile` or :func:`load`."""

    def __init__(self, model=None, *, input_shape: Optional[Sequence[int]] = None, threads: Optional[int] = None,
                 fuse: bool = True, layout: str = "auto", algo: str = "profile", dynamic_batch: bool = True,
                 max_shapes: int = 4, profile_batch: Optional[int] = None, cache_dir: Optional[PathLike] = None,
                 split_batch: bool = True, _mge_path: Optional[PathLike] = None):
        if algo not in _ALGO_POLICIES:
            raise ValueError(f"algo must be one of {_ALGO_POLICIES}, got {algo!r}")
        if threads is None:
            threads = default_threads()
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ValueError(f"threads must be an int >= 1, got {threads!r}")
        if not isinstance(max_shapes, int) or max_shapes < 1:
            raise ValueError(f"max_shapes must be an int >= 1, got {max_shapes!r}")
        self.model = model
        self.threads = threads
        if layout not in ("auto",) + _LAYOUTS:
            raise ValueError(f"layout must be one of {('auto',) + _LAYOUTS}, got {layout!r}")
        self.fuse = fuse
        #: convolution layout asked for; ``"auto"`` is resolved at the first compile (:func:`best_layout`)
        self.layout = layout if fuse or layout != "auto" else "nchw"
        self.algo = algo
        self.dynamic_batch = dynamic_batch
        self.max_shapes = max_shapes
        self.profile_batch = profile_batch
        self.split_batch = split_batch
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._mge_path = Path(_mge_path) if _mge_path is not None else None
        self._runners: "OrderedDict[tuple, _LiteRunner]" = OrderedDict()
        self._graph_dir: Optional[tempfile.TemporaryDirectory] = None  # compiled graphs (removed with the object)
        self._lock = threading.RLock()
        #: how each shape was compiled, in order
        self.compile_log: List[CompileInfo] = []
        self.output_names: List[str] = []
        self.input_shape = tuple(int(s) for s in input_shape) if input_shape is not None else None
        if self.input_shape is not None:
            self._runner_for(self.input_shape)

    # --- public -----------------------------------------------------------------------------
    @property
    def algo_cache_file(self) -> Optional[Path]:
        """The persistent profile cache this model reads and writes (None with ``algo="heuristic"``)."""
        if self.algo != "profile":
            return None
        if self._cache_dir is not None:
            return self._cache_dir / algo_cache_file(self.threads).name
        return algo_cache_file(self.threads)

    @property
    def cached_shapes(self) -> List[tuple]:
        """Keys of the compiled graphs kept, least recently used first: ``(C, H, W)`` with a
        dynamic batch, else the full input shape."""
        return list(self._runners)

    def __call__(self, x):
        """Run the compiled graph on ``x`` (N, C, H, W); returns a numpy array (a list of them for
        a model with several outputs)."""
        x = _as_numpy(x)
        if x.ndim < 1 or x.shape[0] < 1:
            raise ValueError(f"input must have a non-empty batch axis, got shape {x.shape}")
        with self._lock:
            runner = self._runner_for(x.shape)
            outputs = runner.run(x)
        return outputs[0] if len(outputs) == 1 and self.output_names != ["output0"] else outputs

    def export(self, path: PathLike, input_shape: Optional[Sequence[int]] = None) -> Path:
        """Write the optimised graph for ``input_shape`` (default: the compile shape) to ``path``."""
        shape = tuple(input_shape or self.input_shape or ())
        if not shape:
            raise ValueError("export needs an input_shape (none was given to compile)")
        if self.model is None:
            raise ValueError("this CompiledModel was loaded from a .mge file; copy that file instead")
        dump_graph(self.model, shape, path, fuse=self.fuse, layout=self._resolved_layout())
        return Path(path)

    def _resolved_layout(self) -> str:
        if self.layout == "auto":
            self.layout = best_layout()
        return self.layout

    def __repr__(self) -> str:
        return (f"CompiledModel(threads={self.threads}, algo={self.algo!r}, fuse={self.fuse}, layout={self.layout!r}, "
                f"shapes={self.cached_shapes})")

    # --- internals ----------------------------------------------------------------------------
    def _key(self, shape: tuple) -> tuple:
        return tuple(shape[1:]) if self.dynamic_batch else tuple(shape)

    def _runner_for(self, shape: tuple) -> _LiteRunner:
        key = self._key(shape)
        runner = self._runners.get(key)
        if runner is not None:
            self._runners.move_to_end(key)
            return runner
        if self._mge_path is not None and self._runners and not self.dynamic_batch:
            raise ValueError(f"this graph was compiled for {next(iter(self._runners))}; got input shape {shape}")
        runner = self._build(tuple(int(s) for s in shape))
        self._runners[key] = runner
        while len(self._runners) > self.max_shapes:
            dropped = self._runners.popitem(last=False)[1]
            dropped.close()
            if self._mge_path is None:
                Path(dropped.path).unlink(missing_ok=True)
        return runner

    def _build(self, shape: tuple) -> _LiteRunner:
        cache_file = self.algo_cache_file
        existed = bool(cache_file and cache_file.exists())
        before = cache_file.stat().st_size if existed else None
        with _lite_lock:
            if cache_file is not None:
                _use_cache_file(cache_file)
            t0 = time.perf_counter()
            if self._mge_path is not None:
                if self._runners:  # a .mge has one graph; a new spatial size cannot be re-traced
                    raise ValueError(f"this .mge was compiled for inputs {next(iter(self._runners))} "
                                     f"(C, H, W); got input shape {shape}")
                dumped = time.perf_counter()
                runner = _LiteRunner(self._mge_path, self.threads, self.algo, cache_file, self.profile_batch,
                                     self.split_batch)
                runner.networks_for(shape[0])
                t1 = time.perf_counter()
            else:
                # the graph file stays while its runner is kept: networks are loaded when first needed
                if self._graph_dir is None:
                    self._graph_dir = tempfile.TemporaryDirectory(prefix="megzoo-compile-")
                path = Path(self._graph_dir.name) / ("graph-" + "x".join(map(str, self._key(shape))) + ".mge")
                # tracing runs the model eagerly once: with a dynamic batch, one image is enough
                trace_shape = (1,) + shape[1:] if self.dynamic_batch else shape
                self.output_names = dump_graph(self.model, trace_shape, path, fuse=self.fuse,
                                               layout=self._resolved_layout())
                dumped = time.perf_counter()
                runner = _LiteRunner(path, self.threads, self.algo, cache_file, self.profile_batch, self.split_batch)
                runner.networks_for(shape[0])
                t1 = time.perf_counter()
            runner.run(np.zeros(shape, dtype=np.float32))  # plan memory, choose algorithms
            t2 = time.perf_counter()
            if not self.output_names:
                self.output_names = ["output"] if len(runner.output_names) == 1 else runner.output_names
        # the cache is rewritten after each compile (entries in any order): same size = nothing added
        hit = bool(existed and cache_file.exists() and cache_file.stat().st_size == before)
        self.compile_log.append(CompileInfo(shape, dumped - t0, t1 - dumped, t2 - t1, existed, hit))
        if self.input_shape is None:
            self.input_shape = shape
        return runner


def compile(model, input_shape: Optional[Sequence[int]] = None, threads: Optional[int] = None, *,
            fuse: bool = True, layout: str = "auto", algo: str = "profile", dynamic_batch: bool = True,
            max_shapes: int = 4, profile_batch: Optional[int] = None, cache_dir: Optional[PathLike] = None,
            split_batch: bool = True) -> CompiledModel:
    """Compile ``model`` (a ``megengine.module.Module`` taking one (N, C, H, W) tensor) for fast
    CPU inference; returns a :class:`CompiledModel` to call with numpy batches.

    Args:
        input_shape: (N, C, H, W) to compile for now; None compiles on the first call. Other batch
            sizes work on the same graph; another (C, H, W) compiles a new graph.
        threads: worker threads; default the CPUs this process may use (``os.sched_getaffinity``).
        fuse: apply MegEngine's inference graph optimisations (BN folding, conv+bias+ReLU fusion).
        layout: internal convolution layout, ``"auto"`` (NCHW88 on x86 with AVX2, see
            :func:`best_layout`), ``"nchw88"``, ``"nchw44"`` or ``"nchw"``; inputs/outputs stay NCHW.
        algo: ``"profile"`` (measure the convolution algorithms and keep the fastest, cached in
            ``$MEGZOO_HOME/algo_cache/``) or ``"heuristic"`` (no measuring: fast to compile, slower to run).
        dynamic_batch: reuse one graph for every batch size (the graph must not bake the batch
            size in, as megzoo models do not); False compiles each full shape separately.
        max_shapes: how many compiled graphs to keep (least recently used dropped first).
        profile_batch: profile the kernels at this batch size and use the choice for every batch
            (one profile serves all batch sizes); None profiles each batch size at its own size.
        cache_dir: directory for the profile cache instead of ``$MEGZOO_HOME/algo_cache``.
        split_batch: with several threads, run a batch of N >= 2 as ``min(threads, N)`` contiguous
            shares on single-thread networks at once (weights shared) instead of one network
            using every thread: 1.5-1.8x the throughput of ResNet-50 at batch 16 on 2 cores.
            Outputs are the same up to float rounding (kernels may differ per batch size).
    """
    return CompiledModel(model, input_shape=input_shape, threads=threads, fuse=fuse, layout=layout, algo=algo,
                         dynamic_batch=dynamic_batch, max_shapes=max_shapes, profile_batch=profile_batch,
                         cache_dir=cache_dir, split_batch=split_batch)


def load(path: PathLike, threads: Optional[int] = None, *, algo: str = "profile",
         profile_batch: Optional[int] = None, cache_dir: Optional[PathLike] = None,
         split_batch: bool = True) -> CompiledModel:
    """Load an exported ``.mge`` (see :func:`export`) into a :class:`CompiledModel` run by
    MegEngine Lite; megzoo's model code is not needed. The batch size may change; the spatial
    size is the exported one. ``model.metadata`` holds the ``.mge.json`` metadata when present."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such model file: {path}")
    meta = read_metadata(path)
    compiled = CompiledModel(None, threads=threads, algo=algo, profile_batch=profile_batch,
                             cache_dir=cache_dir, split_batch=split_batch, max_shapes=1, _mge_path=path)
    compiled.metadata = meta
    shape = (meta or {}).get("input_shape")
    if shape:
        compiled._runner_for(tuple(shape))
    return compiled


# ------------------------------------------------------------------------------------------------
# parity check and export
# ------------------------------------------------------------------------------------------------
class ParityError(AssertionError):
    """The compiled/exported model's outputs differ from eager ones by more than the tolerance."""


def _eager(model, x: np.ndarray) -> List[np.ndarray]:
    import megengine

    was_training = model.training
    model.eval()
    try:
        out = model(megengine.tensor(x))
    finally:
        model.train(was_training)
    outs = out if isinstance(out, (list, tuple)) else [out]
    return [o.numpy() for o in outs]


def check_parity(model, compiled, inputs: Dict[str, np.ndarray], tolerance: float = DEFAULT_TOLERANCE) -> Dict[str, Any]:
    """Compare ``compiled(x)`` with eager ``model(x)`` for each named input. The error of one
    input is ``max |compiled - eager| / max |eager|`` (relative to the logit scale). Returns
    ``{"tolerance", "inputs": {name: {"max_abs", "scale", "rel"}}, "max_rel"}``; raises
    :class:`ParityError` listing every input when one is above ``tolerance``."""
    results = {}
    for name, x in inputs.items():
        x = _as_numpy(x)
        ref = _eager(model, x)
        got = compiled(x)
        got = got if isinstance(got, list) else [got]
        if len(got) != len(ref) or any(g.shape != r.shape for g, r in zip(got, ref)):
            raise ParityError(f"parity check failed on {name}: output shapes {[g.shape for g in got]} "
                              f"!= eager {[r.shape for r in ref]}")
        max_abs = max(float(np.max(np.abs(g - r))) if r.size else 0.0 for g, r in zip(got, ref))
        scale = max(float(np.max(np.abs(r))) if r.size else 0.0 for r in ref)
        rel = max_abs / scale if scale > 0 else max_abs
        if not np.isfinite(rel):
            rel = float("inf")
        results[name] = {"max_abs": max_abs, "scale": scale, "rel": rel}
    max_rel = max((r["rel"] for r in results.values()), default=0.0)
    report = {"tolerance": tolerance, "inputs": results, "max_rel": max_rel}
    if max_rel > tolerance:
        lines = [f"  {n}: max |exported - eager| = {r['max_abs']:.3g}, logit scale {r['scale']:.3g}, "
                 f"relative {r['rel']:.3g}" for n, r in results.items()]
        raise ParityError(f"parity check failed: exported model differs from eager by {max_rel:.3g} relative "
                          f"to the logit scale, above the tolerance {tolerance:g}\n" + "\n".join(lines))
    return report


def make_test_image(height: int, width: int) -> np.ndarray:
    """A deterministic natural-looking BGR uint8 test image (smooth gradients, a disc and
    stripes), generated so no image file is needed."""
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

        img = cv2.imread(os.fspath(image), cv2.IMREAD_COLOR)
        if img is None:
            raise FileNotFoundError(f"cannot read image {image}")
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
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
    path: Path
    metadata_path: Path
    metadata: Dict[str, Any]
    parity: Optional[Dict[str, Any]] = None
    seconds: Dict[str, float] = field(default_factory=dict)


def metadata_path(path: PathLike) -> Path:
    """The metadata file next to an exported model: ``model.mge`` -> ``model.mge.json``."""
    return Path(os.fspath(path) + ".json")


def read_metadata(path: PathLike) -> Optional[Dict[str, Any]]:
    meta = metadata_path(path)
    if not meta.is_file():
        return None
    return json.loads(meta.read_text(encoding="utf-8"))


def export(model, path: PathLike, input_shape: Sequence[int] = (1, 3, 224, 224), *, fuse: bool = True,
           layout: str = "auto", metadata: Optional[Dict[str, Any]] = None, check: bool = True, tolerance: float = DEFAULT_TOLERANCE,
           image: Optional[PathLike] = None, threads: Optional[int] = None, algo: str = "heuristic",
           seed: int = 0) -> ExportReport:
    """Write ``model`` as a MegEngine Lite ``.mge`` at ``path`` plus ``path + ".json"`` metadata
    (input name and shape, preprocessing, class names, versions, parity results).

    With ``check`` (default) the written file is loaded with MegEngine Lite and its outputs are
    compared with eager ``model(x)`` on a random batch and a real image (``image``, else a
    generated one) preprocessed as the metadata says; above ``tolerance`` (max abs difference
    over the logit scale) :class:`ParityError` is raised and the files are removed."""
    path = Path(path)
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 4:
        raise ValueError(f"input_shape must be (N, C, H, W), got {input_shape!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    meta: Dict[str, Any] = {
        "format": "megzoo-mge/1",
        "model": getattr(model, "model_name", type(model).__name__),
        "input_name": INPUT_NAME,
        "input_shape": list(shape),
        "input_layout": "NCHW",
        "dynamic_batch": True,
        "dtype": "float32",
        "color_order": "BGR",
        "pixel_range": [0, 255],
        "mean": [103.530, 116.280, 123.675],
        "std": [57.375, 57.120, 58.395],
        "class_names": None,
        "fused": bool(fuse),
        "megengine_version": _megengine_version(),
    }
    from . import __version__

    meta["megzoo_version"] = __version__
    meta.update(metadata or {})
    seconds = {}
    t0 = time.perf_counter()
    if layout == "auto":
        layout = best_layout() if fuse else "nchw"
    meta["layout"] = layout
    meta["output_names"] = dump_graph(model, shape, path, fuse=fuse, layout=layout)
    seconds["dump"] = time.perf_counter() - t0
    report = ExportReport(path, metadata_path(path), meta, None, seconds)
    try:
        if check:
            t0 = time.perf_counter()
            rng = np.random.RandomState(seed)
            real, label = _real_input(shape, image, meta["mean"], meta["std"], meta["color_order"])
            inputs = {"random normal batch": rng.standard_normal(shape).astype(np.float32), label: real}
            compiled = CompiledModel(None, threads=threads, algo=algo, max_shapes=1, _mge_path=path)
            compiled.output_names = meta["output_names"]
            report.parity = check_parity(model, compiled, inputs, tolerance)
            seconds["parity"] = time.perf_counter() - t0
            meta["parity"] = {"tolerance": tolerance, "max_rel": report.parity["max_rel"],
                              "inputs": report.parity["inputs"]}
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    report.metadata_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return report
