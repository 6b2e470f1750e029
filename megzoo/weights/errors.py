"""Exceptions of ``megzoo.weights``. Every message names the file or URL concerned and the fix.

``WeightsError`` is the base class: catch it to handle any weight problem in one place.
"""
from pathlib import Path
from typing import Optional, Sequence, Union

__all__ = ["WeightsError", "DownloadError", "ChecksumError", "OfflineError", "CorruptCheckpointError",
           "UnsafeCheckpointError"]


class WeightsError(Exception):
    """Base class of every pretrained-weight error."""


class DownloadError(WeightsError):
    """A weight file could not be fetched (network failure, HTTP error, missing source file)."""

    def __init__(self, message: str, url: Optional[str] = None, dest: Union[None, str, Path] = None):
        super().__init__(message)
        self.url = url  #: the URL (or local source) that failed, when there is one
        self.dest = Path(dest) if dest is not None else None  #: where the file was to be written


class ChecksumError(WeightsError):
    """A file's sha256 or length differs from the expected one; the file has been removed (unless ``kept``)."""

    def __init__(self, message: str, path: Union[None, str, Path] = None, expected: Optional[str] = None,
                 actual: Optional[str] = None, reason: Optional[str] = None, kept: Optional[str] = None):
        super().__init__(message)
        self.path = Path(path) if path is not None else None  #: the file that failed
        self.expected = expected  #: expected sha256 (hex) or size, as text
        self.actual = actual  #: what the file had
        self.reason = reason  #: the failure alone, without the file name or the fix
        self.kept = kept  #: why the failed file is still there (it cannot be removed here), or None


class OfflineError(WeightsError):
    """``MEGZOO_OFFLINE`` is set and the file is not in the cache."""

    def __init__(self, message: str, path: Union[None, str, Path] = None, urls: Sequence[str] = ()):
        super().__init__(message)
        self.path = Path(path) if path is not None else None  #: where the file must be placed
        self.urls = tuple(urls)  #: where to fetch it from on a machine with network


class CorruptCheckpointError(WeightsError):
    """A weight file cannot be deserialised (truncated, wrong format)."""


class UnsafeCheckpointError(WeightsError):
    """A weight file contains code or objects a checkpoint must not have."""


class UnsupportedCheckpointError(CorruptCheckpointError):
    """A well-formed weight file in a form megzoo does not read (legacy torch format, big-endian
    storages, dtypes numpy lacks, TorchScript archives, no state dict inside)."""


__all__.append("UnsupportedCheckpointError")


class UnsafeCacheError(WeightsError):
    """A cache folder or file another user could have written (owner, mode, a link): refused."""

    def __init__(self, message: str, path: Union[None, str, Path] = None):
        super().__init__(message)
        self.path = Path(path) if path is not None else None  #: the folder or file refused


__all__.append("UnsafeCacheError")
