"""Pick MegEngine's device without its CUDA probing noise.

On a machine without a usable CUDA driver, MegEngine's first use of its default device (``xpux``)
prints a block of ``info: ... Failed to load CUDA driver library ...`` and ``debug: failed to load
cuda func`` lines on stderr (from C++, so Python cannot silence them). :func:`select_device`
avoids them: it probes CUDA once with file descriptor 2 pointed at ``/dev/null`` and then sets
the default device to ``cpux`` when there is no GPU, so MegEngine never probes again (the
``megzoo`` commands do this). Library calls use :func:`quiet_device` and :func:`using_device`
instead: they build their model on the quiet choice without changing the program's default.

Device names: ``cpu`` (= ``cpux``), ``gpu``/``cuda`` (= ``gpux``), or any MegEngine name
(``cpu0``, ``gpu1``, ``xpux``, ``multithread2:0``, ...; :data:`DEVICE_NAMES`), any case.
``MEGZOO_DEVICE`` gives one when the caller does not. Other names are refused with a
ValueError listing these (MegEngine itself only asserts).

:func:`poller_yields` keeps MegEngine's ``CompNodeSync`` thread from taxing a compiled run or a
CPU training run (see its docstring).
"""
import contextlib
import functools
import os
import re
import sys
import threading
from typing import Dict, Iterator, List, Optional, Tuple

__all__ = ["DEVICE_NAMES", "select_device", "quiet_device", "using_device", "cuda_available", "quiet_stderr",
           "is_cpu_device", "move_tensors", "poller_yields", "poller_threads", "poller_policy", "can_undo_idle_policy",
           "POLLER_THREAD_NAME"]

_ALIASES = {"cpu": "cpux", "gpu": "gpux", "cuda": "gpux"}
#: the names MegEngine 1.13's ``set_default_device`` takes (its ``_valid_device`` pattern)
_MEGENGINE_NAME = re.compile(r"([cxg]pu|rocm|multithread)(x|\d+)(:\d+)?")
#: what an invalid device name's error lists
DEVICE_NAMES = ("cpu", "gpu", "cuda", "cpux", "cpuN", "gpux", "gpuN", "xpux", "multithreadT:N")
_cuda: Optional[bool] = None


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Send everything written to file descriptor 2 (C and Python alike) to /dev/null meanwhile."""
    try:
        sys.stderr.flush()
    except (AttributeError, ValueError):
        pass
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 at all
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def cuda_available() -> bool:
    """Whether MegEngine can use a CUDA GPU, probed once and silently."""
    global _cuda
    if _cuda is None:
        import megengine

        with quiet_stderr():
            _cuda = bool(megengine.is_cuda_available())
    return _cuda


def select_device(device: Optional[str] = None) -> str:
    """Set MegEngine's default device and return its name.

    ``device`` (or else ``$MEGZOO_DEVICE``) is used as given (after the aliases above); with
    neither, ``xpux`` (MegEngine's choice, the GPU) when CUDA is usable, else ``cpux``.
    """
    import megengine

    name = _checked(device) if device else _checked(os.environ.get("MEGZOO_DEVICE", ""), "$MEGZOO_DEVICE")
    name = name or ("xpux" if cuda_available() else "cpux")
    megengine.set_default_device(name)
    return name


def _checked(name: str, where: str = "device") -> str:
    """``name`` stripped, lower-cased, its alias resolved and checked ("" for an empty one)."""
    name = name.strip().lower()
    if not name:
        return ""
    name = _ALIASES.get(name, name)
    if not _MEGENGINE_NAME.fullmatch(name):
        raise ValueError(f"unknown {where} {name!r}: valid devices are {', '.join(DEVICE_NAMES)} "
                         "(N: a device number, T: threads; e.g. cpu, gpu1, multithread2:0)")
    if name.startswith("gpu") and not cuda_available():
        raise ValueError(f"device {name!r} asked for, but MegEngine finds no usable CUDA GPU here "
                         "(use cpu, or check the NVIDIA driver)")
    return name


def quiet_device(device: Optional[str] = None) -> str:
    """The device library calls (``megzoo.Classifier``) build their model on, without changing
    MegEngine's default: ``device`` or ``$MEGZOO_DEVICE`` (aliases as above); else a default
    device the program has set; else, while the default is still MegEngine's own ``xpux``, the
    same choice made quietly (``xpux`` with a usable GPU, ``cpux`` without)."""
    import megengine

    name = _checked(device) if device else _checked(os.environ.get("MEGZOO_DEVICE", ""), "$MEGZOO_DEVICE")
    if name:
        return name
    current = megengine.get_default_device()
    if current != "xpux":
        return current
    return "xpux" if cuda_available() else "cpux"


@contextlib.contextmanager
def using_device(name: str) -> Iterator[str]:
    """Make ``name`` MegEngine's default device meanwhile (modules built inside put their
    parameters there), then restore the previous default."""
    import megengine

    previous = megengine.get_default_device()
    megengine.set_default_device(name)
    try:
        yield name
    finally:
        megengine.set_default_device(previous)


def is_cpu_device(device) -> bool:
    """True for MegEngine CPU devices (``cpu0``, ``multithread2:0``, ``xpux`` on a machine
    without GPU ...); ``device`` is a name or a ``CompNode`` (``tensor.device``)."""
    name = str(getattr(device, "physical_name", device)).lower()
    return name.startswith("cpu") or name.startswith("multithread")


def move_tensors(tensors, device: Optional[str] = None) -> list:
    """Put each MegEngine tensor of ``tensors`` on ``device`` (default: MegEngine's current default
    device) in place (the same objects, as MegEngine's optimizers update them); returns
    ``[(tensor, previous logical device name)]`` for those that moved, so a caller can move them
    back. MegEngine refuses to mix tensors of different devices, even ``xpux`` and ``cpu0`` on the
    same CPU."""
    import megengine

    target = megengine.Tensor(0.0, device=device).device
    moved = []
    for tensor in tensors:
        if tensor.device.logical_name != target.logical_name:
            moved.append((tensor, tensor.device.logical_name))
            tensor._reset(tensor.to(target))
    return moved


#: the thread MegEngine's imperative runtime starts at its first eager operation (and keeps until
#: the process ends): ``CompNodeSyncManager::monitor_events`` polls its events, waits 10 us, loops
POLLER_THREAD_NAME = "CompNodeSync"
_poller_lock = threading.Lock()
_poller_users = 0
_poller_saved: Dict[int, Tuple[int, int]] = {}  # thread id -> (policy, priority) before poller_yields
_poller_seen: Tuple[frozenset, List[int]] = (frozenset(), [])  # (thread ids when last looked, poller ids)


def poller_threads() -> List[int]:
    """Linux thread ids of MegEngine's :data:`POLLER_THREAD_NAME` threads in this process (none
    before MegEngine's first eager operation, and off Linux). Re-read only when the number of
    threads in the process changed."""
    global _poller_seen
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return []
    current = frozenset(tasks)
    if current == _poller_seen[0]:
        return list(_poller_seen[1])
    found = []
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().strip() == POLLER_THREAD_NAME:
                    found.append(int(tid))
        except OSError:  # the thread ended meanwhile
            continue
    _poller_seen = (current, found)
    return list(found)


@functools.lru_cache(maxsize=None)
def can_undo_idle_policy() -> bool:
    """Whether this process may move a thread from ``SCHED_IDLE`` back to ``SCHED_OTHER`` at nice
    0: as root, with ``CAP_SYS_NICE``, or with ``RLIMIT_NICE`` at 20 or more (Linux's rule).
    Read once per process (it is asked at every compiled call)."""
    try:
        if os.geteuid() == 0:
            return True
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:") and int(line.split()[1], 16) & (1 << 23):  # CAP_SYS_NICE
                    return True
        import resource

        return resource.getrlimit(resource.RLIMIT_NICE)[0] >= 20
    except (OSError, ValueError, AttributeError, ImportError):
        return False


def poller_policy() -> int:
    """The policy :func:`poller_yields` gives the poller: ``SCHED_IDLE`` where it can be undone
    (:func:`can_undo_idle_policy`), else ``SCHED_BATCH``."""
    return os.SCHED_IDLE if can_undo_idle_policy() else os.SCHED_BATCH


@contextlib.contextmanager
def poller_yields() -> Iterator[List[int]]:
    """Meanwhile, MegEngine's poller thread runs at the lowest priority the process can undo:
    ``SCHED_IDLE`` (it gets a core only when nothing else wants it) where this process may switch
    it back (root, ``CAP_SYS_NICE``), else ``SCHED_BATCH`` (it no longer preempts a running thread
    when its 10-microsecond timer fires, but still takes its fair share of a core when runnable).
    Once MegEngine has run one eager operation that thread wakes ~100,000 times a second for the
    rest of the process; on 2 cores it cost ONNX Runtime a third of its speed (ResNet-50 batch 16,
    by the issue: 39 instead of 56 images/s) and a ResNet-18 CPU training step 12% (6.8 instead of
    6.0 s at batch 16; the trainer runs under this). Under ``SCHED_IDLE`` it took no measurable CPU
    during a compiled run here; under ``SCHED_BATCH`` 0.13-0.28 CPU-seconds of 2 seconds. The
    previous policy is restored when the last user leaves. Yields the thread ids changed; a no-op
    without such threads or where the scheduler cannot be set."""
    global _poller_users
    with _poller_lock:
        _poller_users += 1
        found = poller_threads() if _poller_users == 1 else []
        policy = poller_policy() if found else None
        for tid in found:
            try:
                before = (os.sched_getscheduler(tid), os.sched_getparam(tid).sched_priority)
                os.sched_setscheduler(tid, policy, os.sched_param(0))
                _poller_saved[tid] = before
            except (OSError, AttributeError):  # gone, not permitted, or not Linux
                continue
        tids = list(_poller_saved)
    try:
        yield tids
    finally:
        with _poller_lock:
            _poller_users -= 1
            if _poller_users == 0:
                for tid, (policy, priority) in _poller_saved.items():
                    try:
                        os.sched_setscheduler(tid, policy, os.sched_param(priority))
                    except OSError:
                        pass
                _poller_saved.clear()
