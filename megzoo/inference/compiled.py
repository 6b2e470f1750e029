"""The MegEngine Lite backend's compiled model: a module traced, optimised and run by Lite.

A :class:`LiteCompiledModel` (``megzoo.CompiledModel``) either traces its module
(``megzoo.compile(..., backend="lite")``) or runs a ``.mge`` file (:func:`megzoo.inference.load`);
both keep a small LRU of :class:`~megzoo.inference.lite.LiteRunner` by input shape (the shared
base, :class:`~megzoo.inference.backends.base.CompiledModelBase`). Convolution layouts go through
:mod:`megzoo.inference.layouts`' guard before any kernel runs, and kernel choices are cached per
machine in :func:`algo_cache_dir`. The backend itself: :mod:`megzoo.inference.backends.lite`.
"""
import os
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np

from ..host import machine_tag, megzoo_home
from .backends.base import (NEW_SIZE_HINT, CompiledModelBase, CompileInfo, ShapeCachedModel, as_float32_batch,
                            check_threads, default_threads, is_int8, metadata_path, read_metadata)
from .cache_files import check_files
from .graph import LAYOUTS, read_layout, trace_and_dump
from .layouts import fit_layout, megengine_version, require_layout, resolve_layout
from .lite import ALGO_POLICIES, LiteRunner, lite_lock
from .threads import megengine_thread_errors, require_megengine_thread

# the shared base and helpers live with the backend interface; kept importable from here
__all__ = ["LiteCompiledModel", "CompiledModel", "CompileInfo", "dump_graph", "default_threads", "algo_cache_dir",
           "algo_cache_file", "metadata_path", "read_metadata", "CompiledModelBase", "ShapeCachedModel",
           "NEW_SIZE_HINT", "as_float32_batch", "check_threads", "is_int8"]

PathLike = Union[str, "os.PathLike[str]"]


def algo_cache_dir() -> Path:
    """Directory of the persistent algorithm-profile caches: ``$MEGZOO_HOME/algo_cache``."""
    return megzoo_home() / "algo_cache"


def algo_cache_file(threads: int, cache_dir: Optional[PathLike] = None, split: bool = False) -> Path:
    """The cache file for this machine (:func:`megzoo.host.machine_tag`), MegEngine version and
    kind of network, in ``cache_dir`` (default :func:`algo_cache_dir`): ``-t<threads>`` for a
    network using ``threads`` threads with pre-processed weights, ``-t1-split`` for the
    single-thread split networks (shared, unprocessed weights). Each kind picks other kernels,
    and MegEngine's cache keys do not tell them apart."""
    folder = Path(cache_dir) if cache_dir is not None else algo_cache_dir()
    kind = "t1-split" if split else f"t{int(threads)}"
    return folder / f"lite-mge{megengine_version()}-{machine_tag()}-{kind}.cache"


def file_layout(path: PathLike) -> str:
    """The convolution layout of an exported ``.mge``: its metadata's ``layout``, else the one
    its graph's convolutions use (:func:`megzoo.inference.graph.read_layout`)."""
    layout = (read_metadata(path) or {}).get("layout")
    return layout if layout in LAYOUTS else read_layout(path)


def dump_graph(model, input_shape: Sequence[int], file: PathLike, *, fuse: bool = True,
               layout: str = "nchw") -> List[str]:
    """Trace ``model`` on ``input_shape`` (N, C, H, W) and write its inference graph to ``file``
    (a ``.mge``); returns the output names. ``layout``: ``"nchw"`` (portable), ``"nchw88"`` (x86),
    ``"nchw44"`` (ARM), or ``"auto"`` (:func:`megzoo.inference.best_layout`). Dumping runs no
    Lite kernel, so an explicit layout is written even where it failed its probe (for another
    machine); running such a file here is refused (:func:`load`)."""
    layout = fit_layout(model, resolve_layout(layout, fuse) if layout == "auto" else layout, layout)
    return trace_and_dump(model, input_shape, file, fuse=fuse, layout=layout)


class LiteCompiledModel(CompiledModelBase):
    """A model compiled for MegEngine Lite; call it with a numpy (N, C, H, W) float32 batch (or a
    megengine Tensor) to get numpy outputs. Build it with :func:`megzoo.compile` (from a module,
    ``backend="lite"``) or :func:`megzoo.inference.load` (from a ``.mge`` file).

    Args (``model`` or ``mge_file``, one of them):
        input_shape: (N, C, H, W) to compile for now; None compiles on the first call. Other batch
            sizes work on the same graph; another (C, H, W) compiles a new graph.
        threads: worker threads; default the CPUs this process may use (``os.sched_getaffinity``).
        fuse: apply MegEngine's inference graph optimisations (BN folding, conv+bias+ReLU fusion).
        layout: internal convolution layout, ``"auto"`` (:func:`megzoo.inference.best_layout`:
            NCHW88 on x86 with AVX2 where it passes its probe, else NCHW), ``"nchw88"``,
            ``"nchw44"`` or ``"nchw"``; inputs/outputs stay NCHW. A layout that failed its probe
            on this machine raises :class:`~megzoo.inference.LayoutUnavailableError` here.
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
            using every thread (faster at batch 16 and up: docs/performance.md).
            Outputs are the same up to float rounding (kernels may differ per batch size).
        micro_batch: each Lite network runs its share of a batch this many images at a time, so
            one kernel profile (per thread count) serves every batch size. ``"auto"``: 1 with the
            NCHW layout and profiling, where profiling whole shares takes minutes (the trade-off in
            speed per model: docs/performance.md), else whole shares (None).
    """

    backend = "lite"
    file_kind = "mge"

    def __init__(self, model=None, *, mge_file: Optional[PathLike] = None, input_shape: Optional[Sequence[int]] = None,
                 threads: Optional[int] = None, fuse: bool = True, layout: str = "auto", algo: str = "profile",
                 dynamic_batch: bool = True, max_shapes: int = 4, profile_batch: Optional[int] = None,
                 cache_dir: Optional[PathLike] = None, split_batch: bool = True,
                 micro_batch: Union[str, int, None] = "auto"):
        if (model is None) == (mge_file is None):
            raise ValueError("give a model to trace or an mge_file to run, not both or neither")
        if algo not in ALGO_POLICIES:
            raise ValueError(f"algo must be one of {ALGO_POLICIES}, got {algo!r}")
        if layout not in ("auto",) + LAYOUTS:
            raise ValueError(f"layout must be one of {('auto',) + LAYOUTS}, got {layout!r}")
        if model is not None and is_int8(model):
            if layout not in ("auto", "nchw"):
                raise ValueError(f"layout {layout!r} has no int8 kernels in MegEngine 1.13 (its x86 int8 convolutions "
                                 "are NCHW only): use layout='nchw' (or 'auto') for an int8 model")
            layout = "nchw"
        if mge_file is not None:
            # a file: the layout it was dumped with (metadata, else the graph itself) must have passed here
            name = Path(mge_file).name
            with megengine_thread_errors(f"loading {name} (its layout is read and checked with MegEngine)",
                                         f"load it in the main thread, then call it from any thread (with "
                                         f"{name}.json beside it, naming a layout probed here, it loads in any "
                                         "thread)"):
                layout = require_layout(file_layout(mge_file) if layout == "auto" else layout)
        elif layout not in ("auto", "nchw"):
            layout = resolve_layout(layout, fuse)  # refused here, before anything runs, if it failed its probe
        if micro_batch != "auto" and micro_batch is not None and (
                not isinstance(micro_batch, int) or isinstance(micro_batch, bool) or micro_batch < 1):
            raise ValueError(f"micro_batch must be 'auto', None or an int >= 1, got {micro_batch!r}")
        self._init_cache(threads, max_shapes, dynamic_batch, mge_file, input_shape)
        self.model = model
        self.mge_file = self._source_file
        self.fuse = fuse
        #: convolution layout; ``"auto"`` is resolved at the first compile (:func:`best_layout`)
        self.layout = layout if fuse or layout != "auto" else "nchw"
        self.algo = algo
        self.profile_batch = profile_batch
        #: batches are cut over single-thread networks only when the graph takes any batch size
        self.split_batch = split_batch and dynamic_batch
        #: images each Lite network runs at a time (:func:`compile`); ``"auto"`` until the layout is known
        self.micro_batch = micro_batch
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._graph_dir: Optional[tempfile.TemporaryDirectory] = None  # traced graphs (removed with the object)
        if self.input_shape is not None:
            self.runner_for(self.input_shape)

    # --- public -----------------------------------------------------------------------------
    @property
    def algo_cache_file(self) -> Optional[Path]:
        """The persistent profile cache of the all-threads network (batches of 1, or every batch
        without ``split_batch``); None with ``algo="heuristic"``."""
        if self.algo != "profile":
            return None
        return algo_cache_file(self.threads, self._cache_dir)

    @property
    def split_algo_cache_file(self) -> Optional[Path]:
        """The persistent profile cache of the single-thread split networks (batches of 2 or more
        with several threads); None with ``algo="heuristic"``."""
        if self.algo != "profile":
            return None
        return algo_cache_file(1, self._cache_dir, split=True)

    def export(self, path: PathLike, input_shape: Optional[Sequence[int]] = None) -> Path:
        """Write the optimised graph for ``input_shape`` (default: the compile shape) to ``path``."""
        shape = tuple(input_shape or self.input_shape or ())
        if not shape:
            raise ValueError("export needs an input_shape (none was given to compile)")
        if self.model is None:
            raise ValueError("this CompiledModel was loaded from a .mge file; copy that file instead")
        trace_and_dump(self.model, shape, path, fuse=self.fuse, layout=self._resolved_layout())
        return Path(path)

    def __repr__(self) -> str:
        return (f"CompiledModel(threads={self.threads}, algo={self.algo!r}, fuse={self.fuse}, layout={self.layout!r}, "
                f"shapes={self.cached_shapes})")

    # --- internals ----------------------------------------------------------------------------
    def _resolved_layout(self) -> str:
        if self.layout == "auto":  # the machine's best layout, where the model's convolutions suit it
            self.layout = resolve_layout("auto", self.fuse)
            if self.model is not None:
                self.layout = fit_layout(self.model, self.layout)
        return self.layout

    def _resolved_micro_batch(self) -> Optional[int]:
        if self.micro_batch == "auto":
            # NCHW has ~20-40 candidate kernels per convolution: profiled at whole shares a first
            # compile takes minutes, at one image well under a minute (docs/performance.md)
            # (a graph with its batch size baked in, dynamic_batch=False, runs whole batches)
            self.micro_batch = (1 if self.algo == "profile" and self.layout == "nchw" and self.dynamic_batch
                                else None)
        return self.micro_batch

    def _dropped(self, runner: LiteRunner) -> None:
        runner.close()
        if self.mge_file is None:  # a traced graph of ours, never the user's file
            Path(runner.path).unlink(missing_ok=True)

    def _build(self, shape: tuple) -> LiteRunner:
        with lite_lock:
            t0 = time.perf_counter()
            if self.mge_file is not None:
                path = self.mge_file
            else:
                require_megengine_thread(
                    f"compiling input size {shape[1:]} for the lite backend (tracing the model)",
                    NEW_SIZE_HINT)
                # the graph file stays while its runner is kept: networks are loaded when first needed
                if self._graph_dir is None:
                    self._graph_dir = tempfile.TemporaryDirectory(prefix="megzoo-compile-")
                path = Path(self._graph_dir.name) / ("graph-" + "x".join(map(str, self._key(shape))) + ".mge")
                # tracing runs the model eagerly once: with a dynamic batch, one image is enough
                trace_shape = (1,) + shape[1:] if self.dynamic_batch else shape
                self.output_names = trace_and_dump(self.model, trace_shape, path, fuse=self.fuse,
                                                   layout=self._resolved_layout())
            dumped = time.perf_counter()
            check_files(self.algo_cache_file, self.split_algo_cache_file)  # no other user's kernel choices
            runner = LiteRunner(path, self.threads, self.algo, self.algo_cache_file, self.profile_batch,
                                self.split_batch, self._resolved_micro_batch(), self.split_algo_cache_file)
            runner.networks_for(shape[0])
            loaded = time.perf_counter()
            cache_file = runner.cache_file_for(shape[0])  # the cache of the networks this shape runs on
            existed = bool(cache_file and cache_file.exists())
            before = cache_file.stat().st_size if existed else None
            runner.run(np.zeros(shape, dtype=np.float32))  # plan memory, choose algorithms
            ran = time.perf_counter()
            if not self.output_names:
                self.output_names = list(runner.output_names)  # the graph's own names, as ONNX Runtime reads them
        # the cache is rewritten after each compile (entries in any order): same size = nothing added
        hit = bool(existed and cache_file.exists() and cache_file.stat().st_size == before)
        self.compile_log.append(CompileInfo(shape, dumped - t0, loaded - dumped, ran - loaded, existed, hit))
        if self.input_shape is None:
            self.input_shape = shape
        return runner


#: the name megzoo has always exported (``megzoo.CompiledModel``): the Lite backend's class
CompiledModel = LiteCompiledModel
