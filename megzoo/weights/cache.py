"""The local weight cache: where files live, their recorded sha256, and re-checking them.

The cache root is ``$MEGZOO_HOME`` (default ``~/.cache/megzoo``); weight files live in
``<root>/weights/``. Next to a cached file ``F`` there may be:

* ``F.sha256``: its sha256 in ``sha256sum`` format (``<64 hex>  F``), written on download so
  later uses (and ``megzoo verify``) can check the file when no hash was published;
* ``F.lock``: the lock file that serialises downloads of ``F`` across processes (removed when
  released);
* ``F.part``: a download in progress (or interrupted, resumed by the next attempt).

Who may write the cache is checked first (:mod:`.cache_safety`): a folder or file another user
could have written is refused, never read. A file is then checked against the publisher's hash
when the catalogue knows one, else against its sidecar. A file that fails its check is removed
together with its sidecar, and the error or warning says which file it was and why; one that
cannot be removed (a read-only cache of another user's, e.g. root's) is kept and the error says
so and why. A file whose sidecar is unreadable is kept (the error says how to repair it).
"""
import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional, Tuple, Union

from ..host import atomic_write_text, megzoo_home
from .cache_safety import cache_lock, check_trusted, open_trusted, prepare_folders
from .catalog import WEIGHTS
from .errors import ChecksumError, UnsafeCacheError

__all__ = ["cache_root", "weights_dir", "cache_folders", "sidecar_path", "cache_lock", "file_sha256", "read_sidecar",
           "write_sidecar", "verify_file", "evict", "verify_cache", "VerifyResult", "normalize_sha256",
           "published_hash"]

logger = logging.getLogger("megzoo.weights")

PathLike = Union[str, os.PathLike]

#: suffixes of the bookkeeping files kept next to cached files (never weights themselves)
AUX_SUFFIXES = (".sha256", ".lock", ".part", ".tmp")

_HEX = re.compile(r"[0-9a-f]+")
_SIDECAR_MAX = 4096  # bytes read from a sidecar


def cache_root() -> Path:
    """The megzoo cache directory: ``$MEGZOO_HOME``, else ``~/.cache/megzoo`` (absolute, may not exist)."""
    return megzoo_home()


def weights_dir() -> Path:
    """Where weight files are cached: ``cache_root() / "weights"``."""
    return cache_root() / "weights"


def cache_folders(directory: Optional[PathLike] = None, sub: str = "", create: bool = True) -> bool:
    """Create (if ``create``) and check the cache's folders down to ``directory / sub``; False when
    that folder does not exist (and could not be created).

    ``directory`` (default :func:`weights_dir`) and the folders of ``sub`` (a relative path) must
    belong to the user or root and be writable by nobody else; so must the cache root above the
    default one, except that a world-writable root with the sticky bit passes. Raises
    UnsafeCacheError otherwise.
    """
    if directory is None:
        directory = weights_dir()
        chain = [(cache_root(), True), (directory, False)]
    else:
        chain = [(Path(directory), False)]
    parts = PurePosixPath(sub).parts if sub not in ("", ".") else ()
    chain += [(Path(directory, *parts[:i + 1]), False) for i in range(len(parts))]
    return prepare_folders(chain, create=create)


def sidecar_path(path: PathLike) -> Path:
    """``<path>.sha256``, the file recording the sha256 of ``path``."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def normalize_sha256(sha256: Optional[str]) -> Optional[str]:
    """Lower-case hex digest, or None. A prefix of at least 8 hex digits is accepted (as in
    torchvision file names); a file matches when its full sha256 starts with it."""
    if sha256 is None:
        return None
    digest = str(sha256).strip().lower()
    if not 8 <= len(digest) <= 64 or not _HEX.fullmatch(digest):
        raise ValueError(f"sha256 must be 8 to 64 hex digits, got {sha256!r}")
    return digest


def published_hash(name: str) -> Tuple[Optional[str], Optional[int]]:
    """``(sha256 or its prefix, size in bytes)`` the catalogue publishes for the cache file ``name``
    (a name relative to the weights folder); ``(None, None)`` when it knows none."""
    return _published().get(name.replace(os.sep, "/"), (None, None))


def _published() -> Dict[str, Tuple[Optional[str], Optional[int]]]:
    return {w.filename: (normalize_sha256(w.sha256 or w.sha256_prefix), w.size)
            for w in WEIGHTS.values() if w.sha256 or w.sha256_prefix or w.size}


def file_sha256(path: PathLike) -> str:
    """Hex sha256 of the file at ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_sidecar(path: PathLike) -> Optional[str]:
    """The sha256 recorded for ``path``; None when there is no sidecar.

    Raises ValueError when the sidecar exists but holds no 64-digit hex digest, and
    UnsafeCacheError when another user could have written it.
    """
    sidecar = sidecar_path(path)
    try:
        with open_trusted(sidecar) as f:
            text = f.read(_SIDECAR_MAX).decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None
    digest = text.split()[0].lower() if text.split() else ""
    if len(digest) != 64 or not _HEX.fullmatch(digest):
        raise ValueError(f"{sidecar} holds no sha256 (expected 64 hex digits, found {text[:80]!r})")
    return digest


def write_sidecar(path: PathLike, sha256: str) -> Path:
    """Record ``sha256`` for ``path`` in ``<path>.sha256`` (atomically, writable by the user only);
    returns the sidecar path."""
    path = Path(path)
    sidecar = atomic_write_text(sidecar_path(path), f"{sha256}  {path.name}\n")
    mode = sidecar.stat().st_mode & 0o7777
    if mode & 0o022:
        os.chmod(sidecar, mode & ~0o022)
    return sidecar


def _unlink(path: Path) -> Optional[str]:
    """Remove ``path`` (gone already is fine); None, or why it cannot be removed (e.g. "Permission denied")."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def evict(path: PathLike, reason: str) -> Optional[str]:
    """Remove the cached file ``path`` and its sidecar, logging a warning that says which file and why.

    Returns None when removed; when the file cannot be removed (a read-only cache of another
    user's) it is kept, the warning says so, and the return value says why (e.g. "Permission denied").
    """
    path = Path(path)
    kept = _unlink(path)
    if kept is not None:
        logger.warning("kept %s in the cache, as it cannot be removed here (%s): %s", path, kept, reason)
        return kept
    _unlink(sidecar_path(path))
    logger.warning("removed %s from the cache: %s", path, reason)
    return None


def verify_file(path: PathLike, sha256: Optional[str] = None, *, size: Optional[int] = None,
                record: bool = True) -> str:
    """Check ``path`` against ``sha256`` (full hex or prefix: the publisher's), else against its
    sidecar; returns its sha256.

    With neither a hash nor a sidecar the file cannot be checked: its sha256 is recorded in the
    sidecar (when ``record``) so that later uses are checked against it. ``size`` (bytes), when
    given, is checked too. A file that fails is removed with its sidecar and ChecksumError says
    so (or that it was kept, and why, when it cannot be removed: ``ChecksumError.kept``). An
    unreadable sidecar (without ``sha256``) raises ChecksumError too but removes nothing. A file
    or sidecar another user could have written raises UnsafeCacheError.
    """
    path = Path(path)
    expected = normalize_sha256(sha256)
    check_trusted(path)
    recorded_in = None
    if expected is None:
        try:
            expected = read_sidecar(path)
        except ValueError as exc:
            why = f"its sha256 sidecar is unreadable ({exc})"
            raise ChecksumError(f"{path} could not be checked: {why}. The file was kept: delete "
                                f"{sidecar_path(path)} to record the file's sha256 anew, or delete both to "
                                "download it again", path, None, None, reason=why) from None
        recorded_in = sidecar_path(path).name
    if size is not None:
        actual_size = path.stat().st_size
        if actual_size != size:
            _fail(path, f"it has {actual_size} bytes, expected {size}", str(size), str(actual_size))
    actual = file_sha256(path)
    if expected is not None and not actual.startswith(expected):
        wanted = f"but {recorded_in} recorded {expected} on download" if recorded_in else f"expected {expected}"
        _fail(path, f"its sha256 is {actual}, {wanted}", expected, actual)
    if record:
        _record(path, actual, announce=expected is None)
    return actual


def _record(path: Path, sha256: str, announce: bool) -> None:
    try:
        current = read_sidecar(path)
    except ValueError:
        current = None
    if current == sha256:
        return
    try:
        write_sidecar(path, sha256)
    except OSError as exc:  # a read-only cache still serves its files
        logger.debug("could not record the sha256 of %s: %s", path, exc)
        return
    if announce:
        logger.info("no sha256 known for %s: recorded %s in %s", path, sha256, sidecar_path(path).name)


def _fail(path: Path, why: str, expected: Optional[str], actual: Optional[str]):
    kept = evict(path, f"failed its check: {why}")
    if kept is not None:
        raise ChecksumError(f"{path} failed its check ({why}); the file was kept, as it cannot be removed here "
                            f"({kept}): remove it with the rights of the cache's owner, or set MEGZOO_HOME to a "
                            "cache of your own", path, expected, actual, reason=why, kept=kept)
    raise ChecksumError(f"{path} failed its check ({why}); the file was removed, fetch it again "
                        "(megzoo downloads it anew on next use)", path, expected, actual, reason=why)


#: VerifyResult.status values
OK, UNCHECKED, BAD, PROBLEM = "ok", "unchecked", "bad", "problem"


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of re-checking one cached file."""

    path: Path
    status: str  #: "ok", "unchecked" (nothing to check it against), "bad" (failed: removed), "problem" (kept:
    #: an unreadable record, a file another user could have written, or a bad file that cannot be removed here)
    reason: str  #: what it matched, why it failed, why it could not be checked, or the problem and its fix

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def checked(self) -> bool:
        """True when the file was compared with a hash (it is then ``ok`` or ``bad``)."""
        return self.status in (OK, BAD)


def _cached_files(directory: Path) -> List[Path]:
    """Cached files under ``directory`` (folder links are not followed)."""
    found = []
    for folder, dirs, files in os.walk(directory):
        dirs.sort()
        found += [Path(folder, name) for name in files if not name.endswith(AUX_SUFFIXES)]
    return sorted(found)


def _verify_one(path: Path, directory: Path, name: str) -> VerifyResult:
    try:
        for folder in reversed(path.relative_to(directory).parents[:-1]):
            check_trusted(directory / folder)
        if not check_trusted(path):
            return VerifyResult(path, PROBLEM, f"a link to nothing ({os.readlink(path)}); remove it")
        sha256, size = published_hash(name)
        if sha256 is None and not os.path.lexists(sidecar_path(path)):
            return VerifyResult(path, UNCHECKED, "no published or recorded sha256 to check it against")
        actual = verify_file(path, sha256, size=size, record=False)
    except UnsafeCacheError as exc:
        return VerifyResult(path, PROBLEM, f"{exc}; kept")
    except ChecksumError as exc:
        if path.exists():
            return VerifyResult(path, PROBLEM, f"{exc}")
        return VerifyResult(path, BAD, exc.reason or str(exc))
    if sha256 is not None:
        return VerifyResult(path, OK, f"sha256 {actual[:16]}... matches the published {sha256[:16]}")
    return VerifyResult(path, OK, f"sha256 {actual[:16]}... matches {sidecar_path(path).name}")


def verify_cache(cache_dir: Optional[PathLike] = None) -> List[VerifyResult]:
    """Re-check every file under ``cache_dir`` (default :func:`weights_dir`).

    Each file is checked against the hash the catalogue publishes for its name, else against its
    sidecar. Files that fail are removed (with their sidecar) and reported ``bad``; files with
    neither hash are ``unchecked``; files with an unreadable sidecar, that another user could
    have written, or that fail but cannot be removed here are kept and reported ``problem``. Raises
    UnsafeCacheError when ``cache_dir`` itself (or the cache root above the default one) could have
    been written by another user.
    """
    directory = Path(cache_dir) if cache_dir is not None else weights_dir()
    if not cache_folders(cache_dir, create=False) or not directory.is_dir():
        return []
    results = []
    for path in _cached_files(directory):
        with cache_lock(path):
            if not os.path.lexists(path):  # removed while we waited
                continue
            results.append(_verify_one(path, directory, path.relative_to(directory).as_posix()))
    return results
