"""Facts about this machine and process, and the file helpers every cache shares (stdlib only).

* :func:`megzoo_home`: the cache root, ``$MEGZOO_HOME`` or ``~/.cache/megzoo``;
* :func:`usable_cpus`: CPUs this process may run on;
* :func:`cpu_info` / :func:`machine_tag`: the CPU model, family/model/stepping and ISA flags,
  and a file-name-safe tag of them that tells two machines apart when their model names agree
  (a Zen 4 and a Zen 5 "AMD EPYC" both say just that);
* :func:`atomic_write` (and its ``_bytes`` / ``_text`` forms): write a file so that a reader sees
  the old content or the new, never a part (temporary file in the same folder, fsync, rename);
  the temporary file, ``.NAME.PID.RANDOM.tmp``, is locked (``fcntl.flock``) while it is written, as
  is a :func:`staging_file` for a writer that needs a file name, so that
  :func:`remove_stale_temporaries` can tell one whose writer is gone (killed) from one being written;
* :func:`lock_folder`: hold a folder for this process (``fcntl.flock`` on ``FOLDER/.megzoo.lock``),
  :class:`FolderInUseError` naming the process that holds it;
* :func:`pid_alive` / :func:`process_start_time`: whether a process runs (the one started then).

Nothing here imports another megzoo module or MegEngine, so every layer may use it.
"""
import contextlib
import errno
import fcntl
import functools
import hashlib
import os
import platform
import re
import stat
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import BinaryIO, Callable, Dict, FrozenSet, Iterable, Iterator, List, Optional, Tuple, Union

__all__ = ["megzoo_home", "usable_cpus", "cpu_info", "cpu_flags", "machine_tag", "machine_record", "atomic_write",
           "atomic_write_bytes", "atomic_write_text", "fsync_path", "staging_file", "temporary_target",
           "remove_stale_temporaries", "pid_alive", "process_start_time", "lock_folder", "FolderLock",
           "FolderInUseError", "LOCK_FILE"]

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


def fsync_path(path: PathLike) -> None:
    """Flush a file's or a folder's content (a rename in it) to the disk; silently nothing where
    it cannot be opened or synced."""
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY | os.O_CLOEXEC)
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


def _final_mode(path: Path) -> int:
    """The permissions a file written over ``path`` gets: those of the file it replaces, or the
    ones a plain ``open`` would give a new file (not a temporary file's 0o600)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return _new_file_mode()


def atomic_write(path: PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Create or replace ``path`` atomically and durably: ``write(f)`` fills a temporary file
    (opened ``"wb"``) beside it, which is fsynced and renamed over ``path`` (``os.replace``), and
    the folder is fsynced. The folder is created if needed. On any error the temporary file is
    removed and ``path`` keeps its old content: a reader never sees a part. A new file gets the
    permissions a plain ``open`` would give it (not the temporary file's 0o600); a replaced one
    keeps its own. The temporary file is locked until renamed (see :func:`remove_stale_temporaries`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _locked_temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:  # closed (unlocked) only once renamed or removed
            try:
                write(f)
                f.flush()
                os.fsync(f.fileno())
                os.chmod(tmp, _final_mode(path))
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
    except OSError as exc:
        if exc.errno is not None and exc.filename is None:
            exc.filename = str(path)  # a failed write() or fsync() names no file: name the one written
        raise
    fsync_path(path.parent)
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """:func:`atomic_write` of ``text`` encoded with ``encoding``."""
    return atomic_write_bytes(path, text.encode(encoding))


# -- temporary files --------------------------------------------------------------------------------
#: the middle of a temporary name ``.NAME.MIDDLE.tmp``: the writer's PID and 8 random characters
#: (atomic_write, staging_file); the PID alone (megzoo 2baa4b2's export), or the random part alone
#: (2baa4b2's atomic_write)
_TEMPORARY_MIDDLE = r"(?:[0-9]+(?:\.[a-z0-9_]{8})?|[a-z0-9_]{8})"
_TEMPORARY = re.compile(rf"\.(?P<name>.+?)\.{_TEMPORARY_MIDDLE}\.tmp")


def _locked_temporary(path: Path) -> Tuple[int, str]:
    """A new file ``.NAME.PID.RANDOM.tmp`` beside ``path`` (mode 0o600), open for writing and
    locked (``fcntl.flock``) as long as the returned descriptor is open: the mark of a file being
    written (:func:`remove_stale_temporaries` keeps it). Where the file system has no flock, unlocked."""
    while True:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=str(path.parent))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # waits only while a remover that found it unlocked removes it
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                os.close(fd)
                os.unlink(tmp)
                raise
            return fd, tmp  # no flock here: the remover cannot lock it either, so it keeps it
        if os.fstat(fd).st_nlink:
            return fd, tmp
        os.close(fd)  # removed in the instant before it was locked: take another name


@contextlib.contextmanager
def staging_file(path: PathLike) -> Iterator[Path]:
    """A new empty file ``.NAME.PID.RANDOM.tmp`` beside ``path``, locked while the block runs, for
    a writer that cannot use :func:`atomic_write` (a library writing to a file name, which must
    write into it, not replace it); the block renames it over ``path`` when complete. It is
    removed at the end if still there; :func:`remove_stale_temporaries` removes it if this process
    is killed first. It has the permissions :func:`atomic_write` would give ``path``."""
    path = Path(path)
    fd, tmp = _locked_temporary(path)
    try:
        os.fchmod(fd, _final_mode(path))  # as atomic_write gives the file it renames into place
        yield Path(tmp)
    finally:
        try:
            Path(tmp).unlink(missing_ok=True)
        finally:
            os.close(fd)  # the lock ends once the name is gone


def temporary_target(file_name: str) -> Optional[str]:
    """The NAME a temporary file name ``.NAME.PID.RANDOM.tmp`` (or 2baa4b2's ``.NAME.PID.tmp``,
    ``.NAME.RANDOM.tmp``) stands for (None for another name)."""
    match = _TEMPORARY.fullmatch(file_name)
    return match["name"] if match else None


def _is_temporary_of(file_name: str, names: Iterable[str]) -> bool:
    """Whether ``file_name`` is ``.NAME.MIDDLE.tmp`` (:data:`_TEMPORARY_MIDDLE`) for one of ``names``."""
    return any(re.fullmatch(rf"\.{re.escape(name)}\.{_TEMPORARY_MIDDLE}\.tmp", file_name) for name in names)


def _proc_stat(pid: int) -> Optional[List[str]]:
    """``/proc/PID/stat`` from field 3 (state) on; None for no such process (or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()


def process_start_time(pid: int) -> str:
    """Process ``pid``'s start time (clock ticks after boot; tells a reused PID apart), or ''."""
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else ""


def pid_alive(pid: int, start: Optional[str] = None) -> bool:
    """Whether process ``pid`` (any user's, in this PID namespace) runs: a zombie has ended; with
    ``start`` (:func:`process_start_time` when it was recorded), only the process started then."""
    if pid <= 0:
        return False
    if not os.path.isdir("/proc/self"):  # pragma: no cover - no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's process
            pass
        return True
    fields = _proc_stat(pid)
    return bool(fields) and fields[0] != "Z" and (not start or (len(fields) > 19 and fields[19] == start))


def remove_stale_temporaries(folder: PathLike, names: Iterable[str], *, folder_held: bool = False) -> List[Path]:
    """Remove the temporary files of ``names`` in ``folder`` that a killed writer left behind:
    ``.NAME.PID.RANDOM.tmp`` (:func:`atomic_write`, :func:`staging_file`; and 2baa4b2's
    ``.NAME.PID.tmp`` and ``.NAME.RANDOM.tmp``) that no one has locked (a writer holds its file's
    flock until it is renamed into place; the PID in the name is for people, not for this test:
    it cannot tell a reused PID, or another PID namespace's or host's writer) or, with
    ``folder_held`` (the caller holds :func:`lock_folder`, so no other run writes these names
    there), all of them. Only regular files of this user, never links; a file of any other name
    is kept. Returns the removed paths."""
    removed: List[Path] = []
    names = list(names)
    try:
        entries = list(os.scandir(folder))
    except OSError:  # no folder (yet), or not readable: nothing of ours there
        return removed
    uid = os.getuid()
    for entry in entries:
        if not _is_temporary_of(entry.name, names):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(info.st_mode) or info.st_uid != uid:
            continue
        if folder_held:
            gone = _unlink(entry.path)
        else:
            gone = _unlink_if_unlocked(entry.path, info)
        if gone:
            removed.append(Path(entry.path))
    return removed


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
    except OSError:
        return False
    return True


def _unlink_if_unlocked(path: str, info: os.stat_result) -> bool:
    """Remove ``path`` (the file ``info`` describes) if no one holds its flock: taken here while
    it is removed, so a writer that opened it in the meantime sees it gone (:func:`_locked_temporary`)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (info.st_dev, info.st_ino):
            return False  # replaced since it was listed
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # locked: being written (or no flock here: keep it)
            return False
        return _unlink(path)
    finally:
        os.close(fd)


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
    ends, however it ends; the lock file stays (empty of meaning without the lock).

    The lock file is never followed: a symbolic or hard link, or anything but a regular file, at
    its name is refused (``PermissionError`` naming it) before anything is written. Another
    user's lock file (a shared, group-writable folder) is locked as it is, its PID not written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = os.path.join(os.path.realpath(folder), LOCK_FILE)  # the folder resolved, never the file
    with _held_guard:
        if key in _held:
            _held[key][1] += 1
            return FolderLock(key)
        fd, ours = _open_lock_file(key)
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
        if ours:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _held[key] = [fd, 1]
    return FolderLock(key)


def _open_lock_file(key: str) -> Tuple[int, bool]:
    """The lock file ``key`` opened without following a link, and whether this process may write
    its PID there (opened for writing, and its own). ``PermissionError`` for anything but a
    regular file with one link: a planted link must not make the PID overwrite another file."""
    flags = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
    writable = True
    try:
        try:
            fd = os.open(key, os.O_RDWR | os.O_CREAT | flags, 0o644)
        except PermissionError:  # another user's lock file in a shared folder: flock works read-only
            fd, writable = os.open(key, os.O_RDONLY | flags), False
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise
        raise _not_a_lock_file(key, "a symbolic link" if exc.errno == errno.ELOOP else "not a regular file") from None
    info = os.fstat(fd)
    problem = ("not a regular file" if not stat.S_ISREG(info.st_mode)
               else f"a hard link (one of {info.st_nlink} names of one file)" if info.st_nlink != 1 else None)
    if problem:
        os.close(fd)
        raise _not_a_lock_file(key, problem)
    return fd, writable and info.st_uid == os.getuid()


def _not_a_lock_file(key: str, what: str) -> PermissionError:
    return PermissionError(f"refusing to use the lock file {key}: it is {what}, not the file megzoo makes "
                           f"(something else may be put there to be overwritten); remove it (rm {key}) and run again")


def _lock_holder(fd: int) -> str:
    """``PID n`` of the process holding the lock file ``fd`` (it writes its PID just after taking
    the lock: a moment's wait covers that); ``PID unknown`` when the PID there runs no process (a
    holder that could not write the file, another user's, leaves the PID of an earlier one)."""
    for _ in range(20):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return f"PID {int(text)}" if pid_alive(int(text)) else "PID unknown"
        time.sleep(0.01)
    return "PID unknown"
