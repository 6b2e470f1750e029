"""DataLoader worker processes and MegEngine's plasma store, started and ended by the run.

With ``workers > 0`` every iteration of a MegEngine ``DataLoader`` forks the worker processes and
starts a ``plasma-store-server`` (pyarrow's shared-memory store; its socket is
``/tmp/mge_plasma_<hex>``). Left as MegEngine leaves them:

* a Ctrl-C in the terminal reaches every process of the group: the workers die of their own
  ``KeyboardInterrupt`` and the main process reports ``DataLoader worker ... exited
  unexpectedly`` instead of stopping;
* the store is killed when the iteration ends, but its socket stays in ``/tmp``;
* a SIGKILL of the main process leaves the store running (reparented to PID 1, holding its
  shared-memory segment).

:class:`WorkerDataLoader` is MegEngine's DataLoader with SIGINT blocked while the workers and the
store start (they inherit the blocked signal: only the main process sees Ctrl-C), the owner's PID,
start time and PID namespace in the store's environment (``MEGZOO_PLASMA_OWNER``), and, when the
iteration ends however it ends (exhausted, left early, an exception such as ``KeyboardInterrupt``),
the workers shut down, the store killed and its socket removed. :func:`reap_leaked_stores` (at the
start of a training run) stops the stores whose owning megzoo process is gone, and removes their
sockets: this user's processes, started by megzoo in this PID namespace, only (root on a host sees
the stores of its containers, whose owners' PIDs mean nothing here).
"""
import atexit
import contextlib
import os
import re
import signal
import stat
import subprocess
import time
from typing import Iterator, List, Optional, Tuple

from megengine.data import DataLoader

from ..host import pid_alive, process_start_time

__all__ = ["WorkerDataLoader", "reap_leaked_stores", "OWNER_VARIABLE"]

#: the environment variable naming a store's owner, ``PID:START:NAMESPACE`` (START: /proc/PID/stat's
#: start time; NAMESPACE: /proc/self/ns/pid's link, ``pid:[4026531836]``, in which PID is the owner's)
OWNER_VARIABLE = "MEGZOO_PLASMA_OWNER"
_OWNER = re.compile(r"(?P<pid>[0-9]+):(?P<start>[0-9]*):(?P<namespace>pid:\[[0-9]+\])")
_SERVER = "plasma-store-server"
_SOCKET = re.compile(r"mge_plasma_[0-9a-f]+")

Store = Tuple[subprocess.Popen, str]  # the store process, its socket
_live_stores: List[Store] = []  # stores of this process not yet released (for the exit hook)


class WorkerDataLoader(DataLoader):
    """MegEngine's ``DataLoader`` whose worker processes and plasma store are the run's own:
    see the module docstring. Without workers it is MegEngine's loader unchanged."""

    def __iter__(self):
        if not self.num_workers:
            return super().__iter__()
        return self._iterate()

    def _iterate(self) -> Iterator:
        iterator = store = None
        try:
            with _sigint_blocked(), _owner_marked():
                try:
                    iterator = DataLoader.__iter__(self)
                finally:
                    store = _current_store()  # (recorded for the exit hook even when the start failed)
            yield from iterator
        finally:
            if iterator is not None:
                iterator._shutdown_workers()  # idempotent: also done when MegEngine's iterator ends
                del iterator
            _release(store)


@contextlib.contextmanager
def _sigint_blocked():
    """Block SIGINT in this thread meanwhile: processes started now inherit the mask (a fork, and
    an exec too), so they never see Ctrl-C; one that arrives meanwhile is delivered after."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def _owner_marked():
    """``MEGZOO_PLASMA_OWNER=PID:START:NAMESPACE`` in the environment meanwhile (the store inherits it)."""
    old = os.environ.get(OWNER_VARIABLE)
    os.environ[OWNER_VARIABLE] = f"{os.getpid()}:{process_start_time(os.getpid())}:{_pid_namespace()}"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(OWNER_VARIABLE, None)
        else:
            os.environ[OWNER_VARIABLE] = old


def _current_store() -> Optional[Store]:
    """This process's running store (MegEngine keeps one at a time), or None."""
    from megengine.data.tools import _queue

    manager = getattr(_queue, "MGE_PLASMA_STORE_MANAGER", None)
    popen, socket = getattr(manager, "plasma_store", None), getattr(manager, "socket_name", None)
    if popen is None or socket is None:
        return None
    if not any(s[0] is popen for s in _live_stores):
        _live_stores.append((popen, socket))
    return popen, socket


def _release(store: Optional[Store]) -> None:
    """Once no loader of this process uses ``store`` any more: end it (MegEngine kills it, but
    never waits for it) and remove its socket."""
    if store is None or _current_store() == store:
        return  # none, or another iteration of this process still uses it
    popen, socket = store
    if popen.poll() is None:
        popen.kill()
    try:
        popen.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - a kill is not refused
        pass
    _remove_socket(socket)
    _live_stores[:] = [s for s in _live_stores if s[0] is not popen]


@atexit.register
def _release_all() -> None:
    """At exit, the stores of iterations never ended (a loader iterated by hand and dropped)."""
    for popen, socket in list(_live_stores):
        if popen.poll() is None:
            popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=5)
        _remove_socket(socket)
    _live_stores.clear()


def _remove_socket(path: str) -> bool:
    """Remove ``path`` if it is a plasma socket (``mge_plasma_<hex>``) of this user."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    if not (_SOCKET.fullmatch(os.path.basename(path)) and stat.S_ISSOCK(info.st_mode) and info.st_uid == os.getuid()):
        return False
    with contextlib.suppress(OSError):
        os.unlink(path)
        return True
    return False


def _pid_namespace() -> str:
    """This process's PID namespace, ``pid:[4026531836]`` ('' where there is no /proc)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _leaked_stores() -> Iterator[Tuple[int, str, int]]:
    """(store PID, socket, owner PID) of this user's stores whose megzoo owner, of this PID
    namespace, has ended. A store without the owner variable (another program's), with an owner
    of another PID namespace (a container's, seen from its host), or without the namespace (an
    older megzoo's: whose it is cannot be told) is left alone."""
    namespace = _pid_namespace()
    if not namespace:  # no /proc: nothing to find
        return
    try:
        entries = [e for e in os.scandir("/proc") if e.name.isdigit()]
    except OSError:  # no /proc: nothing to find
        return
    for entry in entries:
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            argv = _read(f"/proc/{entry.name}/cmdline").split(b"\0")
            if os.path.basename(argv[0]).decode(errors="replace") != _SERVER or b"-s" not in argv[:-1]:
                continue
            environ = _read(f"/proc/{entry.name}/environ").split(b"\0")
        except OSError:
            continue
        owner = [v.split(b"=", 1)[1].decode(errors="replace") for v in environ
                 if v.startswith(OWNER_VARIABLE.encode() + b"=")]
        match = _OWNER.fullmatch(owner[0]) if owner else None
        if match is None or match["namespace"] != namespace or pid_alive(int(match["pid"]), match["start"]):
            continue  # not megzoo's (or not known to be), of another PID namespace, or its owner still runs
        socket = os.fsdecode(argv[argv.index(b"-s") + 1])
        yield int(entry.name), socket, int(match["pid"])


def reap_leaked_stores(wait: float = 2.0) -> List[str]:
    """Stop every ``plasma-store-server`` of this user that a megzoo process started and left
    running when it was killed (its owner, named in the store's environment, has ended), and
    remove its socket; waits up to ``wait`` seconds for each to end. Returns one line per store."""
    notes = []
    for pid, socket, owner in _leaked_stores():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + wait
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        removed = _remove_socket(socket)
        notes.append(f"stopped a DataLoader plasma-store-server (PID {pid}) that megzoo process {owner} left "
                     f"running when it was killed{f'; removed its socket {socket}' if removed else ''}")
    return notes
