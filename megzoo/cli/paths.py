"""The output paths of the commands: checked before the work starts, named when a write fails.

:func:`check_output` refuses an output the command could not write (a folder where a file goes, a
file where a folder goes, a read-only or forbidden folder) before a model is built or trained, as
the ``OSError`` a write would raise; ``megzoo.cli.main`` prints any ``OSError`` as one line
``megzoo COMMAND: error: <reason>: <path> (<fix>)`` with exit status 2. :func:`naming_output`
gives a write error raised without a file name (``No space left on device`` from ``write()``)
the output's path.
"""
import contextlib
import errno
import os
from pathlib import Path
from typing import Iterator, Union

__all__ = ["check_output", "naming_output"]

PathLike = Union[str, os.PathLike]


def _error(code: int, path: Path) -> OSError:
    return OSError(code, os.strerror(code), str(path))


def check_output(path: PathLike, *, folder: bool = False) -> Path:
    """``path`` (expanded) when the command can write it: a file (``folder=False``; written
    beside itself and renamed into place, so its folder must be writable) or a folder
    (``folder=True``; created if missing). Missing parent folders must be creatable: the nearest
    existing one must be a folder this process may write. Raises ``IsADirectoryError`` (a file
    output that is a folder), ``NotADirectoryError`` (a folder output, or a folder on the way,
    that is a file), ``OSError(EROFS)`` (read-only file system) or ``PermissionError``."""
    path = Path(path).expanduser()
    if path.is_dir() and not folder:
        raise _error(errno.EISDIR, path)
    existing = path if folder else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise _error(errno.ENOTDIR, existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        try:
            read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
        except OSError:
            read_only = False
        raise _error(errno.EROFS if read_only else errno.EACCES, existing)
    return path


@contextlib.contextmanager
def naming_output(path: PathLike) -> Iterator[None]:
    """Meanwhile, a write error without a file name (``ENOSPC``, ``EDQUOT``, ``EFBIG``, ``EROFS``
    from ``write()`` or ``fsync()``) gets ``path``; one naming a temporary file (``.NAME.<id>.tmp``,
    as megzoo writes beside a file before renaming it into place) names the file it stood for
    (``NAME``) instead; any other error is left as it is."""
    try:
        yield
    except OSError as exc:
        if exc.errno is None:  # one of megzoo's own messages (FileNotFoundError("weight file ..."))
            raise
        if exc.filename is not None:
            exc.filename = _target_of(exc.filename)
        elif exc.errno in _WRITE_ERRORS:  # only a failed write is the output's (not a data read, not /dev/shm)
            exc.filename = str(Path(path).expanduser())
        raise


#: errors of a ``write()``/``fsync()`` that come without a file name
_WRITE_ERRORS = frozenset((errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS))


def _target_of(filename) -> str:
    """The file a temporary ``DIR/.NAME.<id>.tmp`` stands for (``DIR/NAME``); else ``filename``."""
    from ..host import temporary_target  # .NAME.PID.RANDOM.tmp (atomic_write), .NAME.PID.tmp

    text = os.fsdecode(filename)
    target = temporary_target(os.path.basename(text))
    return os.path.join(os.path.dirname(text), target) if target else text
