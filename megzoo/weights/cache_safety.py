"""Who may write the weight cache: ownership and mode checks, link-safe temporary files, locks.

The rule (as ssh applies to ``~/.ssh``): a cache folder or a file read from it must belong to
the current user or to root and must not be writable by its group or by others, because whoever
can write there decides what megzoo loads. So must every folder above a cache folder (as
OpenSSH's ``safe_path`` checks them), since whoever can write one can rename the cache away and
put another in its place. Two allowances keep common set-ups working:

* the folders above a cache folder, the cache root (``$MEGZOO_HOME``) among them, and the folder a
  :func:`download_file` target is in may be writable by everybody when their sticky bit is set
  (like ``/tmp``): others may then add names beside ours but cannot rename or replace ours;
* group write is tolerated when the group is the user's own private group (named like the
  user, no other members), as Debian's OpenSSH does, so a umask of 002 is no problem.

A symbolic link in the cache is followed only when the link belongs to the user (or root) and
what it points to passes the same rule. Temporary paths (``F.part``, ``F.lock``) are never
followed: they are opened with ``O_NOFOLLOW`` and created with ``O_EXCL`` (``F.part``) or
mode 0o600 (``F.lock``); one that exists must be a regular file of the effective user's.

Anything else raises :class:`UnsafeCacheError` with one line: which path, why (owner uid or
mode) and how to fix it. The line starts ``unsafe weight cache:``; the functions' ``what``
names another cache (``"algorithm cache"``: :mod:`megzoo.inference.cache_files`).
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
LOCK_MODE = 0o600  #: mode of a lock file: nobody else may open it (and hold the lock)
WEIGHTS = "weight cache"  #: the default ``what`` of the messages
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


def _refuse(path: PathLike, why: str, fix: str, what: str = WEIGHTS) -> UnsafeCacheError:
    return UnsafeCacheError(f"unsafe {what}: {path} {why}, so another user could change what megzoo "
                            f"loads; {fix}", path)


def check_trusted(path: PathLike, *, shared: bool = False, what: str = WEIGHTS) -> bool:
    """Check ``path`` (a cache folder or file) against the module's rule; raise UnsafeCacheError if it fails.

    ``shared``: a world-writable folder with the sticky bit passes. Returns False when ``path``
    does not exist (or is a link, of the user's, to nothing), True when it exists and passes.
    ``what``: the cache the message names.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        if st.st_uid not in (os.geteuid(), 0):
            raise _refuse(path, f"is a symbolic link owned by {_who(st.st_uid)}", f"remove it, {_PRIVATE_FIX}", what)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return False
        target = os.path.realpath(path)
        problem = _problem(st, shared)
        if problem:
            raise _refuse(path, f"links to {target}, which {problem[0]}", problem[1], what)
        return True
    problem = _problem(st, shared)
    if problem:
        raise _refuse(path, *problem, what)
    return True


def _made(folder: Path) -> bool:
    """``folder`` there (made with mode :data:`FOLDER_MODE` when missing; the caller checks it
    next); False when it could not be made."""
    if os.path.lexists(folder):
        return True
    try:
        os.mkdir(folder, FOLDER_MODE)
    except FileExistsError:
        pass  # made by someone else meanwhile
    except OSError as exc:
        logger.debug("cannot create %s (%s)", folder, exc)
        return False
    return True


def _above(folder: Path, create: bool, what: str) -> bool:
    """Check the folders above ``folder`` top-down as :func:`check_trusted` (``shared``), creating
    the missing ones (mode :data:`FOLDER_MODE`) when ``create``; then, when a link was among them,
    the folders of the path it resolves to. False when one is missing (or could not be made)."""
    for parent in reversed(folder.parents):
        if create and not _made(parent):
            return False
        if not check_trusted(parent, shared=True, what=what):
            return False
    real = Path(os.path.realpath(folder.parent))
    if real != folder.parent:
        for parent in (*reversed(real.parents), real):
            check_trusted(parent, shared=True, what=what)
    return True


def prepare_folders(chain: Sequence[Tuple[PathLike, bool]], create: bool = True, what: str = WEIGHTS) -> bool:
    """Create (mode 0o755) and check the folders ``chain`` lists top-down as ``(folder, shared)``.

    The folders above the first one are created as needed and checked too, each as ``shared``
    (a world-writable one must have the sticky bit). Returns True when the last folder exists;
    False when a folder is missing and could not be created (a read-only cache: what is there
    can still be read; ``create=False`` only checks).
    """
    for i, (folder, shared) in enumerate(chain):
        folder = Path(os.path.abspath(folder))
        if i == 0 and not _above(folder, create, what):
            return False
        if create and not _made(folder):
            return False
        if not check_trusted(folder, shared=shared, what=what):
            return False
        if not folder.is_dir():
            raise UnsafeCacheError(f"{folder} is not a folder; remove it, {_PRIVATE_FIX}", folder)
    return True


def open_trusted(path: PathLike, what: str = WEIGHTS):
    """``path`` opened for reading (binary) after :func:`check_trusted`; what was opened is checked too."""
    check_trusted(path, what=what)
    f = open(path, "rb")
    try:
        st = os.fstat(f.fileno())
        problem = None if stat.S_ISREG(st.st_mode) else ("is not a regular file", "remove it")
        problem = problem or _problem(st, shared=False)
        if problem:
            raise _refuse(path, *problem, what)
    except BaseException:
        f.close()
        raise
    return f


def _not_ours(st: os.stat_result, links: bool = True) -> Optional[str]:
    """Why a temporary file (``F.part``, ``F.lock``) with status ``st`` is not one megzoo made, or
    None: it must be a regular file of the effective user's, writable by nobody else, and (with
    ``links``) have one link (a lock file may just have been removed by its holder)."""
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_uid != os.geteuid():
        return f"is owned by {_who(st.st_uid)}, not by you (uid {os.geteuid()})"
    if (links and st.st_nlink != 1) or st.st_mode & 0o022:
        return f"has {st.st_nlink} links and mode {stat.S_IMODE(st.st_mode):o}"
    return None


def _temporary_problem(path: Path) -> Optional[str]:
    """Why the existing temporary ``path`` is not one megzoo made, or None."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return f"is a symbolic link (to {os.readlink(path)})"
    return _not_ours(st)


def _refuse_temporary(path: PathLike, why: str, what: str = WEIGHTS) -> UnsafeCacheError:
    return UnsafeCacheError(f"unsafe {what}: {path} {why}; megzoo writes a temporary file only into a new "
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
            if _not_ours(os.fstat(fd)) is None:
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


def _foreign_lock(lock_path: str, what: str) -> None:
    """Raise UnsafeCacheError when ``lock_path`` is there but belongs to another user than root
    (planted: a read-only cache of root's is used without a lock instead)."""
    try:
        st = os.lstat(lock_path)
    except OSError:
        return
    if st.st_uid not in (os.geteuid(), 0):
        raise _refuse_temporary(lock_path, _not_ours(st, links=False) or "is not yours", what)


@contextmanager
def cache_lock(path: PathLike, what: str = WEIGHTS) -> Iterator[bool]:
    """Hold the inter-process lock of ``path`` (lock file ``<path>.lock``, mode 0o600); yields True when held.

    Yields False (no lock) when the lock file cannot be created: a read-only cache nobody writes
    to. An existing lock file must be a regular file of the effective user's (not a link: it is
    opened with ``O_NOFOLLOW``), else UnsafeCacheError. The lock file is removed on release, while
    still held; a waiter that then finds its lock file gone starts over on the new one, so two
    processes never both hold it.
    """
    lock_path = f"{os.fspath(path)}.lock"
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, LOCK_MODE)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _refuse_temporary(lock_path, f"is a symbolic link (to {os.readlink(lock_path)})", what) from None
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT):
                _foreign_lock(lock_path, what)
                logger.debug("no lock for %s (%s); going on without it", path, exc)
                yield False
                return
            raise
        problem = _not_ours(os.fstat(fd), links=False)
        if problem:
            os.close(fd)
            raise _refuse_temporary(lock_path, problem, what)
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
