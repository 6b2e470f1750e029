"""Who may write the weight cache: ownership and mode checks, link-safe temporary files, locks.

The rule (as ssh applies to ``~/.ssh``): a cache folder or a file read from it must belong to
the current user or to root and must not be writable by its group or by others, because whoever
can write there decides what megzoo loads. Two allowances keep common set-ups working:

* the cache root (``$MEGZOO_HOME``) or the folder a :func:`download_file` target is in may be
  writable by everybody when its sticky bit is set (like ``/tmp``): others may then add names
  beside ours but cannot rename or replace ours;
* group write is tolerated when the group is the user's own private group (named like the
  user, no other members), as Debian's OpenSSH does, so a umask of 002 is no problem.

A symbolic link in the cache is followed only when the link belongs to the user (or root) and
what it points to passes the same rule. Temporary paths (``F.part``, ``F.lock``) are never
followed: they are opened with ``O_NOFOLLOW`` and created with ``O_EXCL``.

Anything else raises :class:`UnsafeCacheError` with one line: which path, why (owner uid or
mode) and how to fix it.
"""
import errno
import fcntl
import grp
import logging
import os
import pwd
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence, Tuple, Union

from .errors import UnsafeCacheError

__all__ = ["check_trusted", "prepare_folders", "open_trusted", "check_temporary", "open_temporary", "discard_temporary",
           "cache_lock", "FOLDER_MODE", "FILE_MODE"]

logger = logging.getLogger("megzoo.weights")

PathLike = Union[str, os.PathLike]

FOLDER_MODE = 0o755  #: mode of the folders megzoo creates (less the umask)
FILE_MODE = 0o644  #: mode of the files megzoo creates (less the umask)
_PRIVATE_FIX = "or set MEGZOO_HOME to a folder of your own (e.g. ~/.cache/megzoo)"


def _who(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _own_group(gid: int) -> bool:
    """True for the user's private group: named like the user, with no other members."""
    try:
        user, group = pwd.getpwuid(os.geteuid()).pw_name, grp.getgrgid(gid)
    except KeyError:
        return False
    return group.gr_name == user and all(member == user for member in group.gr_mem)


def _problem(st: os.stat_result, shared: bool) -> Optional[Tuple[str, str]]:
    """``(why, fix)`` when ``st`` describes something another user could change, else None."""
    me = os.geteuid()
    if st.st_uid not in (me, 0):
        return (f"is owned by {_who(st.st_uid)}, not by you (uid {me}) or root",
                f"remove it if you may, {_PRIVATE_FIX}")
    writable = st.st_mode & 0o022
    if writable & 0o020 and _own_group(st.st_gid):
        writable &= ~0o020
    if writable and not (shared and stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX):
        who = "others" if writable & 0o002 else f"group {st.st_gid}"
        return (f"is writable by {who} (mode {stat.S_IMODE(st.st_mode):o})", "run `chmod go-w` on it, " + _PRIVATE_FIX)
    return None


def _refuse(path: PathLike, why: str, fix: str) -> UnsafeCacheError:
    return UnsafeCacheError(f"unsafe weight cache: {path} {why}, so another user could change what megzoo "
                            f"loads; {fix}", path)


def check_trusted(path: PathLike, *, shared: bool = False) -> bool:
    """Check ``path`` (a cache folder or file) against the module's rule; raise UnsafeCacheError if it fails.

    ``shared``: a world-writable folder with the sticky bit passes. Returns False when ``path``
    does not exist (or is a link, of the user's, to nothing), True when it exists and passes.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        if st.st_uid not in (os.geteuid(), 0):
            raise _refuse(path, f"is a symbolic link owned by {_who(st.st_uid)}", f"remove it, {_PRIVATE_FIX}")
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return False
        target = os.path.realpath(path)
        problem = _problem(st, shared)
        if problem:
            raise _refuse(path, f"links to {target}, which {problem[0]}", problem[1])
        return True
    problem = _problem(st, shared)
    if problem:
        raise _refuse(path, *problem)
    return True


def prepare_folders(chain: Sequence[Tuple[PathLike, bool]], create: bool = True) -> bool:
    """Create (mode 0o755) and check the folders ``chain`` lists top-down as ``(folder, shared)``.

    The folders above the first one are created if need be but not checked. Returns True when
    the last folder exists; False when a folder could not be created (a read-only cache: what is
    there can still be read; ``create=False`` only checks).
    """
    for i, (folder, shared) in enumerate(chain):
        folder = Path(folder)
        if create and not os.path.lexists(folder):
            try:
                if i == 0:
                    folder.parent.mkdir(parents=True, exist_ok=True)
                os.mkdir(folder, FOLDER_MODE)
            except FileExistsError:
                pass  # made by someone else meanwhile: checked below
            except OSError as exc:
                logger.debug("cannot create %s (%s)", folder, exc)
                return False
        if not check_trusted(folder, shared=shared):
            return False
        if not folder.is_dir():
            raise UnsafeCacheError(f"{folder} is not a folder; remove it, {_PRIVATE_FIX}", folder)
    return True


def open_trusted(path: PathLike):
    """``path`` opened for reading (binary) after :func:`check_trusted`; what was opened is checked too."""
    check_trusted(path)
    f = open(path, "rb")
    try:
        st = os.fstat(f.fileno())
        problem = None if stat.S_ISREG(st.st_mode) else ("is not a regular file", "remove it")
        problem = problem or _problem(st, shared=False)
        if problem:
            raise _refuse(path, *problem)
    except BaseException:
        f.close()
        raise
    return f


def _temporary_problem(path: Path) -> Optional[str]:
    """Why the existing temporary ``path`` is not one megzoo made, or None."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return f"is a symbolic link (to {os.readlink(path)})"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_uid != os.geteuid():
        return f"is owned by {_who(st.st_uid)}, not by you (uid {os.geteuid()})"
    if st.st_nlink != 1 or st.st_mode & 0o022:
        return f"has {st.st_nlink} links and mode {stat.S_IMODE(st.st_mode):o}"
    return None


def _refuse_temporary(path: PathLike, why: str) -> UnsafeCacheError:
    return UnsafeCacheError(f"unsafe weight cache: {path} {why}; megzoo writes a temporary file only into a new "
                            f"file of its own, never through a link or into another user's file: remove it, "
                            f"{_PRIVATE_FIX}", path)


def check_temporary(path: PathLike) -> None:
    """Raise UnsafeCacheError unless the temporary ``path`` is a regular file of the user's that
    megzoo made (one link, writable by the user only)."""
    why = _temporary_problem(Path(path))
    if why:
        raise _refuse_temporary(path, why)


def open_temporary(path: PathLike, append: bool) -> int:
    """A write-only descriptor of the temporary file ``path`` (``F.part``), never through a link.

    ``append``: continue an existing file of the user's (created afresh when there is none);
    otherwise any earlier one of the user's is removed and the file is created with ``O_EXCL``.
    Anything else at ``path`` (a link, another user's file) raises UnsafeCacheError.
    """
    path = Path(path)
    flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    if append:
        try:
            fd = os.open(path, flags | os.O_APPEND)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
        else:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_nlink == 1 and not st.st_mode & 0o022:
                return fd
            os.close(fd)
    if os.path.lexists(path):
        check_temporary(path)
        path.unlink()
    try:
        return os.open(path, flags | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        raise _refuse_temporary(path, "appeared while megzoo was creating it") from None


def discard_temporary(path: PathLike) -> None:
    """Remove the temporary ``path`` if it is the user's own regular file (a planted link is left alone)."""
    try:
        if _temporary_problem(Path(path)) is None:
            os.unlink(path)
    except FileNotFoundError:
        pass


@contextmanager
def cache_lock(path: PathLike) -> Iterator[bool]:
    """Hold the inter-process lock of ``path`` (lock file ``<path>.lock``); yields True when held.

    Yields False (no lock) when the lock file cannot be created: a read-only cache nobody writes
    to. The lock file is removed on release, while still held; a waiter that then finds its lock
    file gone starts over on the new one, so two processes never both hold it.
    """
    lock_path = f"{os.fspath(path)}.lock"
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _refuse_temporary(lock_path, f"is a symbolic link (to {os.readlink(lock_path)})") from None
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT):
                logger.debug("no lock for %s (%s); going on without it", path, exc)
                yield False
                return
            raise
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.info("waiting for another process using %s (lock %s)", path, lock_path)
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(lock_path, follow_symlinks=False)
            except FileNotFoundError:
                current = None
        except BaseException:
            os.close(fd)
            raise
        if current is not None and os.path.samestat(os.fstat(fd), current):
            break
        os.close(fd)  # the holder removed the file we waited on: take the new one
    try:
        yield True
    finally:
        try:
            os.unlink(lock_path)
        except OSError:
            pass
        os.close(fd)
