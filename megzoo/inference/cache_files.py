"""The per-machine files of the inference runtimes, kept outside the weight cache: MegEngine's
kernel choices (``lite-*.cache``), the layout probe's verdicts and the ``auto`` backend's choice
(``*.json``), by default in ``$MEGZOO_HOME/algo_cache``.

Whoever can write them decides which kernels and layouts megzoo runs (a planted verdict runs
kernels that crash this machine), so they are held to the weight cache's rule
(:mod:`megzoo.weights.cache_safety`): their folder, every folder above it and every file read
must be the user's or root's and writable by nobody else (a folder above may be world-writable
with the sticky bit, like ``/tmp``). Anything else raises
:class:`~megzoo.weights.errors.UnsafeCacheError`, one line ``unsafe algorithm cache: PATH ...``
saying why and how to fix it. Locks are :func:`~megzoo.weights.cache_safety.cache_lock`'s.
"""
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from ..weights.cache_safety import cache_lock, check_trusted, open_trusted, prepare_folders

__all__ = ["WHAT", "prepare_folder", "check_files", "read_json", "record_lock"]

PathLike = Union[str, "os.PathLike[str]"]

WHAT = "algorithm cache"  #: how a refusal names these files
_JSON_MAX = 1 << 20  # bytes read from a record


def prepare_folder(folder: PathLike, create: bool = True) -> bool:
    """Create (if ``create``, mode 0o755) and check ``folder`` and the folders above it; False
    when it does not exist (or could not be made: a read-only cache). UnsafeCacheError when
    another user could write one of them."""
    return prepare_folders([(folder, False)], create=create, what=WHAT)


def check_files(*paths: Optional[PathLike]) -> None:
    """Before MegEngine reads or writes the kernel caches ``paths`` (None ones are skipped): their
    folders made and checked, and each existing file checked."""
    for path in paths:
        if path is not None and prepare_folder(Path(path).parent):
            check_trusted(path, what=WHAT)


def read_json(path: PathLike) -> Any:
    """The JSON in the record ``path``; None when it (or its folder) is missing or is not JSON.
    UnsafeCacheError when another user could have written it or a folder on its way."""
    path = Path(path)
    if not prepare_folder(path.parent, create=False):
        return None
    try:
        with open_trusted(path, what=WHAT) as f:
            return json.loads(f.read(_JSON_MAX).decode("utf-8"))
    except (OSError, ValueError):
        return None


@contextmanager
def record_lock(path: PathLike) -> Iterator[bool]:
    """Hold the inter-process lock of the record ``path`` (its folder made and checked first);
    yields False when no lock can be taken (a read-only cache)."""
    prepare_folder(Path(path).parent)
    with cache_lock(path, what=WHAT) as held:
        yield held
