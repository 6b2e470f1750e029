"""The MegEngine Lite runtime: run a dumped ``.mge`` graph on the CPU.

Contract (tested): this module imports only the standard library, numpy and ``megenginelite``
(shipped inside the megengine wheel; it loads Lite's shared library, not MegEngine's Python
runtime), never another megzoo module. A deployment process, or a benchmark subprocess, may
load this one file by path (``importlib.util.spec_from_file_location``) and run an exported
model with it. Everything machine-specific it needs (thread count, profile-cache file) is passed
in by the caller.

* :class:`LiteNet`: one Lite network loaded from a ``.mge``, on its own CPU comp node;
* :class:`LiteRunner`: a graph ready to run, which splits a batch over single-thread networks
  when there are several threads (``split_batch``);
* :func:`use_cache_file` / :func:`save_cache_file`: the process-wide persistent cache of
  profiled kernel choices (MegEngine "fast-run"); :data:`lite_lock` guards it.
"""
import os
import threading
from pathlib import Path
from typing import List, Optional, Union

import numpy as np

__all__ = ["ALGO_POLICIES", "LiteNet", "LiteRunner", "lite_lock", "use_cache_file", "save_cache_file"]

PathLike = Union[str, "os.PathLike[str]"]

#: ``"profile"``: measure the candidate kernels of each operator and keep the fastest (cached);
#: ``"heuristic"``: take MegEngine's first choice without measuring
ALGO_POLICIES = ("profile", "heuristic")

lite_lock = threading.RLock()  #: guards the process-wide profile cache
_cache_file_in_use: Optional[str] = None


def _lite():
    import megenginelite

    return megenginelite


def use_cache_file(path: PathLike) -> None:
    """Point the process-wide MegEngine persistent cache at ``path`` (read if it exists)."""
    global _cache_file_in_use
    if _cache_file_in_use == os.fspath(path):
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    _lite().LiteGlobal.set_persistent_cache(os.fspath(path), False)
    _cache_file_in_use = os.fspath(path)


def save_cache_file(path: PathLike) -> None:
    """Write the in-memory profile cache to ``path`` atomically (Lite writes a temporary file
    beside it, then it is renamed: a concurrent reader never sees a part)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    _lite().LiteGlobal.dump_persistent_cache(str(tmp))
    if tmp.exists():
        os.replace(tmp, path)


class LiteNet:
    """One MegEngine Lite network loaded from a ``.mge`` file, on its own CPU comp node.

    ``threads``: worker threads of this network; ``algo``: one of :data:`ALGO_POLICIES`;
    ``profile_batch``: profile kernels at this batch size for every batch (None: at each size);
    ``device_id``: the CPU comp node (networks sharing one also share its worker queue);
    ``share_weights_with``: another network of the same file whose weights this one uses;
    ``weight_preprocess``: transform the filters once for the chosen kernels (faster, a copy of
    the weights); ``operator_profile``: write MegEngine's per-operator timings of the last run to
    this JSON file when the network is freed."""

    def __init__(self, path: PathLike, threads: int, algo: str = "profile", profile_batch: Optional[int] = None,
                 device_id: int = 0, share_weights_with: Optional["LiteNet"] = None, weight_preprocess: bool = True,
                 operator_profile: Optional[PathLike] = None):
        if algo not in ALGO_POLICIES:
            raise ValueError(f"algo must be one of {ALGO_POLICIES}, got {algo!r}")
        lite = _lite()
        options = lite.LiteOptions()
        options.weight_preprocess = weight_preprocess
        options.var_sanity_check_first_run = False
        net = lite.LiteNetwork(lite.LiteConfig(option=options))
        if threads > 1:
            net.threads_number = threads
        if device_id:
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
        """Outputs for the float32 (N, C, H, W) batch ``x``, as numpy arrays."""
        self.input.set_data_by_share(np.ascontiguousarray(x))
        self.net.forward()
        self.net.wait()
        return [t.to_numpy() for t in self.outputs]


class LiteRunner:
    """A dumped graph ready to run. A batch of one runs on one Lite network using all
    ``threads``; with ``split_batch``, a batch of N >= 2 runs as ``min(threads, N)`` contiguous
    shares on single-thread networks at the same time, each on its own comp node, the weights
    loaded once and shared. MegEngine's multi-thread kernels scale poorly on small per-layer work
    (ResNet-50 at batch 16 on 2 cores: 1.2x one thread), independent networks almost linearly
    (1.6x; ``benchmarks/bench_inference.py``). Each kind of network is loaded from ``path``
    the first time it is needed, so a process running one kind pays for one.

    ``cache_file``: the persistent profile cache of the all-threads network (None: profile results
    stay in memory); ``split_cache_file``: the one of the single-thread split networks (default
    ``cache_file``). They must differ when both kinds run the same input shape (with
    ``micro_batch``): MegEngine's cache keys do not tell a 2-thread network with pre-processed
    weights from a 1-thread one without, and the first's choices made the second 5x slower.
    ``micro_batch``: each network runs its share ``micro_batch`` images at a time (None: the whole
    share at once). MegEngine profiles kernels per input shape, so a fixed micro-batch means one
    profile serves every batch size: with NCHW's ~20-40 candidate kernels per convolution, each
    timed about a dozen times, profiling a ResNet at a share of 8 images takes minutes, at 1 image
    seconds (docs/performance.md)."""

    def __init__(self, path: PathLike, threads: int, algo: str = "profile", cache_file: Optional[PathLike] = None,
                 profile_batch: Optional[int] = None, split_batch: bool = True, micro_batch: Optional[int] = None,
                 split_cache_file: Optional[PathLike] = None):
        if algo not in ALGO_POLICIES:
            raise ValueError(f"algo must be one of {ALGO_POLICIES}, got {algo!r}")
        self.path = path
        self.threads = threads
        self.algo = algo
        self.profile_batch = profile_batch
        self.cache_file = Path(cache_file) if cache_file is not None else None
        self.split_cache_file = Path(split_cache_file) if split_cache_file is not None else self.cache_file
        self.split_batch = split_batch and threads > 1
        if micro_batch is not None and (not isinstance(micro_batch, int) or micro_batch < 1):
            raise ValueError(f"micro_batch must be None or an int >= 1, got {micro_batch!r}")
        self.micro_batch = micro_batch
        self._main: Optional[LiteNet] = None
        self._workers: List[LiteNet] = []
        self._pool = None
        self.batches_seen = set()  #: batch sizes already planned and profiled

    @property
    def output_names(self) -> List[str]:
        net = self._main or (self._workers[0] if self._workers else self._main_net())
        return net.output_names

    def _main_net(self) -> LiteNet:
        if self._main is None:
            self._main = LiteNet(self.path, self.threads, self.algo, self.profile_batch)
        return self._main

    def _worker_nets(self) -> List[LiteNet]:
        if not self._workers:
            from concurrent.futures import ThreadPoolExecutor

            # no weight pre-processing: it would give each network its own transformed copy
            # (ResNet-50: +130 MiB per network for 2% speed)
            first = LiteNet(self.path, 1, self.algo, self.profile_batch, device_id=1, weight_preprocess=False)
            self._workers = [first] + [LiteNet(self.path, 1, self.algo, self.profile_batch, device_id=i + 1,
                                               share_weights_with=first, weight_preprocess=False)
                                       for i in range(1, self.threads)]
            self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="megzoo-lite")
        return self._workers

    def splits(self, batch: int) -> bool:
        """Whether a batch of ``batch`` images runs on the single-thread split networks."""
        return self.split_batch and batch >= 2

    def cache_file_for(self, batch: int) -> Optional[Path]:
        """The profile cache of the networks a batch of ``batch`` images runs on."""
        return self.split_cache_file if self.splits(batch) else self.cache_file

    def networks_for(self, batch: int) -> List[LiteNet]:
        """The networks a batch of ``batch`` images runs on (loaded now if needed): the
        all-threads network, or ``min(threads, batch)`` of the single-thread ones."""
        if not self.splits(batch):
            return [self._main_net()]
        return self._worker_nets()[:min(self.threads, batch)]

    def run(self, x: np.ndarray) -> List[np.ndarray]:
        """Outputs for the float32 (N, C, H, W) batch ``x``. A batch size seen for the first time
        is profiled (or read from the cache) with one network at a time, then the cache saved."""
        batch = x.shape[0]
        cache_file = self.cache_file_for(batch)
        if batch in self.batches_seen or self.algo != "profile" or cache_file is None:
            return self._run(x, concurrent=True)
        with lite_lock:
            use_cache_file(cache_file)
            outputs = self._run(x, concurrent=False)
            save_cache_file(cache_file)
        self.batches_seen.add(batch)
        return outputs

    def _share(self, net: LiteNet, x: np.ndarray) -> List[np.ndarray]:
        """``net``'s outputs for its share ``x``, :attr:`micro_batch` images at a time."""
        k = self.micro_batch
        if not k or x.shape[0] <= k:
            return net.forward(x)
        return _concat([net.forward(x[i:i + k]) for i in range(0, x.shape[0], k)])

    def _run(self, x: np.ndarray, concurrent: bool) -> List[np.ndarray]:
        nets = self.networks_for(x.shape[0])
        if len(nets) == 1:
            return self._share(nets[0], x)
        chunks = np.array_split(x, len(nets))
        if concurrent:
            futures = [self._pool.submit(self._share, net, chunk) for net, chunk in zip(nets[1:], chunks[1:])]
            results = [self._share(nets[0], chunks[0])] + [f.result() for f in futures]
        else:  # profiling measures kernels: one network at a time
            results = [self._share(net, chunk) for net, chunk in zip(nets, chunks)]
        return _concat(results)

    def close(self) -> None:
        """Stop the worker pool and drop the networks."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._main, self._workers = None, []


def _concat(results: List[List[np.ndarray]]) -> List[np.ndarray]:
    """Per-output concatenation along the batch axis of several runs' output lists."""
    return [np.concatenate([r[i] for r in results]) for i in range(len(results[0]))]
