"""The local weight cache: where files live, their recorded sha256, and re-checking them.

The cache root is ``$MEGZOO_HOME`` (default ``~/.cache/megzoo``); weight files live in
``<root>/weights/``. Next to a cached file ``F`` there may be:

* ``F.sha256``: its sha256 in ``sha256sum`` format (``<64 hex>  F``), written on download so
  later uses (and ``megzoo verify``) can check the file even when no hash was published;
* ``F.lock``: the lock file that serialises downloads of ``F`` across processes;
* ``F.part``: a download in progress (or interrupted, resumed by the next attempt).

A file that fails its check is removed together with its sidecar, and the error or warning says
which file it was and why.
"""
import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Union

from filelock import FileLock

from ..host import atomic_write_text, megzoo_home
from .errors import ChecksumError

__all__ = ["cache_root", "weights_dir", "sidecar_path", "file_lock", "file_sha256", "read_sidecar",
           "write_sidecar", "verify_file", "evict", "verify_cache", "VerifyResult", "normalize_sha256"]

logger = logging.getLogger("megzoo.weights")

PathLike = Union[str, os.PathLike]

#: suffixes of the bookkeeping files kept next to cached files (never weights themselves)
AUX_SUFFIXES = (".sha256", ".lock", ".part", ".tmp")

_HEX = re.compile(r"[0-9a-f]+")


def cache_root() -> Path:
    """The megzoo cache directory: ``$MEGZOO_HOME``, else ``~/.cache/megzoo`` (absolute, may not exist)."""
    return megzoo_home()


def weights_dir() -> Path:
    """Where weight files are cached: ``cache_root() / "weights"``."""
    return cache_root() / "weights"


def sidecar_path(path: PathLike) -> Path:
    """``<path>.sha256``, the file recording the sha256 of ``path``."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def file_lock(path: PathLike) -> FileLock:
    """The inter-process lock guarding ``path`` (lock file ``<path>.lock``)."""
    return FileLock(str(path) + ".lock")


def normalize_sha256(sha256: Optional[str]) -> Optional[str]:
    """Lower-case hex digest, or None. A prefix of at least 8 hex digits is accepted (as in
    torchvision file names); a file matches when its full sha256 starts with it."""
    if sha256 is None:
        return None
    digest = str(sha256).strip().lower()
    if not 8 <= len(digest) <= 64 or not _HEX.fullmatch(digest):
        raise ValueError(f"sha256 must be 8 to 64 hex digits, got {sha256!r}")
    return digest


def file_sha256(path: PathLike) -> str:
    """Hex sha256 of the file at ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_sidecar(path: PathLike) -> Optional[str]:
    """The sha256 recorded for ``path``; None when there is no sidecar.

    Raises ValueError when the sidecar exists but holds no 64-digit hex digest.
    """
    sidecar = sidecar_path(path)
    try:
        text = sidecar.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    digest = text.split()[0].lower() if text.split() else ""
    if len(digest) != 64 or not _HEX.fullmatch(digest):
        raise ValueError(f"{sidecar} holds no sha256 (expected 64 hex digits, found {text[:80]!r})")
    return digest


def write_sidecar(path: PathLike, sha256: str) -> Path:
    """Record ``sha256`` for ``path`` in ``<path>.sha256`` (atomically); returns the sidecar path."""
    path = Path(path)
    return atomic_write_text(sidecar_path(path), f"{sha256}  {path.name}\n")


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False


def evict(path: PathLike, reason: str) -> None:
    """Remove the cached file ``path`` and its sidecar, logging a warning that says which file and why."""
    path = Path(path)
    _unlink(path)
    _unlink(sidecar_path(path))
    logger.warning("removed %s from the cache: %s", path, reason)


def verify_file(path: PathLike, sha256: Optional[str] = None, *, size: Optional[int] = None,
                record: bool = True) -> str:
    """Check ``path`` against ``sha256`` (full hex or prefix), else against its sidecar; returns its sha256.

    With neither a hash nor a sidecar the file cannot be checked: its sha256 is recorded in the
    sidecar (when ``record``) so that later uses are checked against it. ``size`` (bytes), when
    given, is checked too. A file that fails is removed with its sidecar and ChecksumError says so.
    """
    path = Path(path)
    expected = normalize_sha256(sha256)
    recorded_in = None
    if expected is None:
        try:
            expected = read_sidecar(path)
        except ValueError as exc:
            _fail(path, f"its sha256 sidecar is unreadable ({exc})", None, None)
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
    evict(path, f"failed its check: {why}")
    raise ChecksumError(f"{path} failed its check ({why}); the file was removed, fetch it again "
                        "(megzoo downloads it anew on next use)", path, expected, actual, reason=why)


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of re-checking one cached file."""

    path: Path
    ok: bool  #: False: the file failed and was removed
    reason: str  #: "sha256 matches", why it failed, or why it could not be checked
    checked: bool = True  #: False when there was no recorded sha256 to check against


def _cached_files(directory: Path) -> List[Path]:
    return sorted(p for p in directory.rglob("*")
                  if p.is_file() and not p.name.endswith(AUX_SUFFIXES))


def verify_cache(cache_dir: Optional[PathLike] = None) -> List[VerifyResult]:
    """Re-check every file under ``cache_dir`` (default :func:`weights_dir`) against its sidecar.

    Files that fail are removed (with their sidecar). Files without a sidecar are reported
    ``ok`` with ``checked=False``: there is nothing to check them against.
    """
    directory = Path(cache_dir) if cache_dir is not None else weights_dir()
    if not directory.is_dir():
        return []
    results = []
    for path in _cached_files(directory):
        with file_lock(path):
            if not path.is_file():  # removed while we waited
                continue
            if not sidecar_path(path).is_file():
                results.append(VerifyResult(path, True, "no recorded sha256 to check against", checked=False))
                continue
            try:
                verify_file(path, record=False)
            except ChecksumError as exc:
                results.append(VerifyResult(path, False, exc.reason or str(exc)))
            else:
                results.append(VerifyResult(path, True, "sha256 matches"))
    return results
