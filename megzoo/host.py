"""Facts about this machine and process, and the file helpers every cache shares (stdlib only).

* :func:`megzoo_home`: the cache root, ``$MEGZOO_HOME`` or ``~/.cache/megzoo``;
* :func:`usable_cpus`: CPUs this process may run on;
* :func:`cpu_info` / :func:`machine_tag`: the CPU model, family/model/stepping and ISA flags,
  and a file-name-safe tag of them that tells two machines apart when their model names agree
  (a Zen 4 and a Zen 5 "AMD EPYC" both say just that);
* :func:`atomic_write` (and its ``_bytes`` / ``_text`` forms): write a file so that a reader sees
  the old content or the new, never a part (temporary file in the same folder, fsync, rename);
  the temporary file is named ``.NAME.PID.RANDOM.tmp`` (:func:`temporary_path`), so that
  :func:`remove_stale_temporaries` can tell one whose writer is gone (killed) from one being written;
* :func:`lock_folder`: hold a folder for this process (``fcntl.flock`` on ``FOLDER/.megzoo.lock``),
  :class:`FolderInUseError` naming the process that holds it;
* :func:`pid_alive`: whether a process id is running.

Nothing here imports another megzoo module or MegEngine, so every layer may use it.
"""
import fcntl
import functools
import hashlib
import os
import platform
import re
import secrets
import stat
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import BinaryIO, Callable, Dict, FrozenSet, Iterable, List, Optional, Union

__all__ = ["megzoo_home", "usable_cpus", "cpu_info", "cpu_flags", "machine_tag", "machine_record", "atomic_write",
           "atomic_write_bytes", "atomic_write_text", "temporary_path", "temporary_target", "remove_stale_temporaries",
           "pid_alive", "lock_folder", "FolderLock", "FolderInUseError", "LOCK_FILE"]

PathLike = Union[str, "os.PathLike[str]"]


def megzoo_home() -> Path:
    """The megzoo cache root: ``$MEGZOO_HOME``, else ``~/.cache/megzoo`` (absolute; may not exist)."""
    home = os.environ.get("MEGZOO_HOME", "").strip()
    return Path(home or "~/.cache/megzoo").expanduser().absolute()


def usable_cpus() -> int:
    """CPUs this process may run on (``os.sched_getaffinity``; ``os.cpu_count()`` where that is
    not available), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


@functools.lru_cache(maxsize=None)
def _read_cpuinfo(path: str = "/proc/cpuinfo") -> Dict[str, str]:
    """The first processor's ``key: value`` lines of ``/proc/cpuinfo`` ({} where there is none)."""
    fields: Dict[str, str] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    if fields:
                        break  # end of the first processor's block
                    continue
                key, sep, value = line.partition(":")
                if sep:
                    fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_info() -> Dict[str, object]:
    """``{"model_name", "vendor", "family", "model", "stepping", "mhz", "flags"}`` of this CPU
    (strings; ``flags`` a frozenset; empty where unknown)."""
    fields = _read_cpuinfo()
    return {
        "model_name": fields.get("model name") or platform.processor() or platform.machine() or "cpu",
        "vendor": fields.get("vendor_id", ""),
        "family": fields.get("cpu family", ""),
        "model": fields.get("model", ""),
        "stepping": fields.get("stepping", ""),
        "mhz": fields.get("cpu MHz", ""),
        "flags": frozenset(fields.get("flags", "").split()),
    }


def cpu_flags() -> FrozenSet[str]:
    """This CPU's ISA flags as ``/proc/cpuinfo`` lists them (``avx2``, ``avx512f``, ...)."""
    return cpu_info()["flags"]  # type: ignore[return-value]


def machine_record() -> Dict[str, object]:
    """The CPU's identity as the per-machine records (layout probe, backend choice) keep it:
    ``{"model_name", "vendor", "family", "model", "stepping"}``."""
    info = cpu_info()
    return {k: info[k] for k in ("model_name", "vendor", "family", "model", "stepping")}


def machine_tag() -> str:
    """A file-name-safe tag for this kind of CPU: model name, family-model-stepping and a digest
    of the ISA flags, e.g. ``AMD-EPYC-f26m2s0-1a2b3c4d``. Caches whose contents depend on the
    CPU (kernel choices, layout verdicts) are keyed by it."""
    info = cpu_info()
    name = re.sub(r"[^A-Za-z0-9]+", "-", str(info["model_name"])).strip("-")[:48] or "cpu"
    fms = f"f{info['family'] or 'x'}m{info['model'] or 'x'}s{info['stepping'] or 'x'}"
    flags = hashlib.sha1(" ".join(sorted(info["flags"])).encode()).hexdigest()[:8]  # type: ignore[arg-type]
    return f"{name}-{fms}-{flags}"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(str(directory), os.O_RDONLY)
    except OSError:  # pragma: no cover - not possible on some platforms
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _new_file_mode() -> int:
    """The permissions ``open(path, "w")`` would give a new file: 0o666 less the umask (read
    from ``/proc/self/status`` where it can be, so the process-wide umask is not touched)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Create or replace ``path`` atomically and durably: ``write(f)`` fills a temporary file
    (opened ``"wb"``) beside it, which is fsynced and renamed over ``path`` (``os.replace``), and
    the folder is fsynced. The folder is created if needed. On any error the temporary file is
    removed and ``path`` keeps its old content: a reader never sees a part. A new file gets the
    permissions a plain ``open`` would give it (not the temporary file's 0o600); a replaced one
    keeps its own."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        try:
            mode = path.stat().st_mode & 0o7777  # a replaced file keeps its permissions
        except OSError:
            mode = _new_file_mode()
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename is None:
            exc.filename = str(path)  # a failed write() or fsync() names no file: name the one written
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """:func:`atomic_write` of ``text`` encoded with ``encoding``."""
    return atomic_write_bytes(path, text.encode(encoding))


# -- temporary files --------------------------------------------------------------------------------
#: the middle of a temporary name: the writer's PID, then (from atomic_write / temporary_path) 8
#: random characters; ``.NAME.PID.tmp`` without them is how megzoo 2baa4b2's export staged a file
_TEMPORARY_MIDDLE = re.compile(r"(?P<pid>[0-9]+)(?:\.[a-z0-9_]{8})?")


def temporary_path(path: PathLike) -> Path:
    """A new temporary name beside ``path``, ``.NAME.PID.RANDOM.tmp`` (not created), for a writer
    that cannot use :func:`atomic_write` (a library writing to a file name); rename it over
    ``path`` when complete. :func:`remove_stale_temporaries` removes it if this process is killed
    before that."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _temporary_parts(file_name: str, name: str) -> Optional[int]:
    """The writer's PID when ``file_name`` is a temporary of ``name`` (``.NAME.PID[.RANDOM].tmp``)."""
    prefix = f".{name}."
    if not (file_name.startswith(prefix) and file_name.endswith(".tmp")):
        return None
    match = _TEMPORARY_MIDDLE.fullmatch(file_name[len(prefix):-len(".tmp")])
    return int(match["pid"]) if match else None


def temporary_target(file_name: str) -> Optional[str]:
    """The NAME a temporary file name ``.NAME.PID[.RANDOM].tmp`` stands for (None for another name)."""
    match = re.fullmatch(r"\.(.+?)\.([0-9]+)(?:\.[a-z0-9_]{8})?\.tmp", file_name)
    return match.group(1) if match else None


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (any user's; a zombie not yet reaped counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(folder: PathLike, names: Iterable[str]) -> List[Path]:
    """Remove the temporary files of ``names`` in ``folder`` that a killed writer left behind:
    ``.NAME.PID.RANDOM.tmp`` (:func:`atomic_write`, :func:`temporary_path`) or ``.NAME.PID.tmp``
    whose PID is no running process, and only regular files (not links) of this user. A file of a
    live writer, of another user, or of any other name is kept. Returns the removed paths."""
    removed: List[Path] = []
    wanted = set(names)
    try:
        entries = list(os.scandir(folder))
    except OSError:  # no folder (yet), or not readable: nothing of ours there
        return removed
    uid = os.getuid()
    for entry in entries:
        pids = [pid for pid in (_temporary_parts(entry.name, name) for name in wanted) if pid is not None]
        if not pids:
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(info.st_mode) or info.st_uid != uid or pid_alive(pids[0]):
            continue
        try:
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(Path(entry.path))
    return removed


# -- folder locks -------------------------------------------------------------------------------------
LOCK_FILE = ".megzoo.lock"


class FolderInUseError(RuntimeError):
    """Another process holds the folder (:func:`lock_folder`); the message names its PID."""


_held: Dict[str, List[int]] = {}  # lock file -> [fd, holders in this process]
_held_guard = threading.Lock()


def _release(key: str) -> None:
    with _held_guard:
        entry = _held.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del _held[key]
            os.close(entry[0])  # the kernel drops the flock with the last descriptor


def _forget_in_child() -> None:
    """A forked child (a DataLoader worker) closes its copies of the lock descriptors: the lock
    stays the parent's (it lives while any copy is open), and dies with the parent."""
    for fd, _ in list(_held.values()):
        try:
            os.close(fd)
        except OSError:
            pass
    _held.clear()


os.register_at_fork(after_in_child=_forget_in_child)


class FolderLock:
    """A held :func:`lock_folder` lock: released by :meth:`release`, at the end of a ``with``
    block, or when the object is garbage collected (and by the kernel when the process ends)."""

    def __init__(self, path: str):
        self.path = Path(path)  #: the lock file
        self._finalizer = weakref.finalize(self, _release, path)

    def release(self) -> None:
        self._finalizer()

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_folder(folder: PathLike) -> FolderLock:
    """Hold ``folder`` (created if missing) for this process: an exclusive, non-blocking
    ``fcntl.flock`` on ``FOLDER/.megzoo.lock``, which then holds this process's PID. Another
    process holding it: :class:`FolderInUseError` naming that PID. Locking a folder this process
    already holds succeeds (the lock is the process's). The kernel drops the lock when the process
    ends, however it ends; the lock file stays (empty of meaning without the lock)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(folder / LOCK_FILE)
    with _held_guard:
        if key in _held:
            _held[key][1] += 1
            return FolderLock(key)
        fd = os.open(key, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise FolderInUseError(f"{folder} is in use by another megzoo process, {holder} (it holds {key}): "
                                   "wait for it to finish, or use another folder") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _held[key] = [fd, 1]
    return FolderLock(key)


def _lock_holder(fd: int) -> str:
    """``PID n`` of the process holding the lock file ``fd`` (it writes its PID just after taking
    the lock: a moment's wait covers that)."""
    for _ in range(20):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return f"PID {int(text)}"
        time.sleep(0.01)
    return "PID unknown"
