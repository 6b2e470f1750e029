"""Bounded reading of a checkpoint's zip archive: what a small file can make megzoo allocate.

A zip member declares its uncompressed size; deflate can expand 1 KB to 1 MB, so a 3 MB file may
declare 3 GiB (a zip bomb). :class:`MemberReader` refuses a member before reading it when its
declared size is over the member's own limit (:data:`MAX_PICKLE_BYTES` for ``data.pkl``) or over
what is left of the archive's budget (:data:`MAX_RATIO` times the archive's size on disk plus
:data:`ARCHIVE_SLACK`, for all members together), and reads in chunks, never past the declared
size. Only stored and deflated members are read (``torch.save`` stores them uncompressed).

Tensors are copied out of their storages, so many tensor records viewing one big storage could
also multiply memory: :class:`CopyBudget` bounds the bytes copied to :data:`MAX_VIEW_FACTOR` times
the storages' bytes plus :data:`ARCHIVE_SLACK`. Errors name the member, the declared size
and the limit; the caller adds the file.
"""
import zipfile
from typing import Optional

from .errors import CorruptCheckpointError, UnsupportedCheckpointError

__all__ = ["MemberReader", "CopyBudget", "MAX_PICKLE_BYTES", "MAX_BROADCAST_BYTES", "MAX_RATIO", "ARCHIVE_SLACK",
           "MAX_VIEW_FACTOR"]

#: the largest ``data.pkl`` read, in bytes: it holds the checkpoint's structure and its tensor
#: records (about 100 bytes a tensor), never the tensors' data
MAX_PICKLE_BYTES = 64 << 20
#: all members of an archive may declare together at most this many times the archive's size
#: (torch stores members uncompressed: 1x; deflated float weights: about 1.1x) ...
MAX_RATIO = 100
#: ... plus this many bytes
ARCHIVE_SLACK = 16 << 20
#: a tensor may be bigger than its storage (stride 0, from ``expand``) only up to this many bytes
MAX_BROADCAST_BYTES = 1 << 28
#: the tensors of an archive may take at most this many times its storages' bytes (tensors sharing
#: a storage, e.g. tied weights), plus :data:`ARCHIVE_SLACK`
MAX_VIEW_FACTOR = 8
#: uncompressed bytes asked for per read call
_READ_CHUNK = 1 << 20


class MemberReader:
    """Reads the members of one open zip archive within a budget of uncompressed bytes."""

    def __init__(self, archive: zipfile.ZipFile, archive_bytes: int):
        self.archive = archive
        self.archive_bytes = archive_bytes  #: the archive's size on disk
        self.left = ARCHIVE_SLACK + MAX_RATIO * archive_bytes  #: bytes the next members may still declare

    def read(self, info: zipfile.ZipInfo, limit: Optional[int] = None) -> bytearray:
        """The bytes of member ``info``, refused unread when its declared size is over ``limit``
        (bytes) or the archive's remaining budget, or when it is neither stored nor deflated."""
        name, declared = info.filename, info.file_size
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise UnsupportedCheckpointError(f"member {name} is compressed with method {info.compress_type}; only "
                                             "stored or deflated members are read (torch.save stores them)")
        if limit is not None and declared > limit:
            raise CorruptCheckpointError(f"member {name} declares {declared} bytes uncompressed, over the limit of "
                                         f"{limit} bytes for it; not read (a zip bomb?)")
        if declared > self.left:
            raise CorruptCheckpointError(
                f"member {name} declares {declared} bytes uncompressed, over the limit of {self.left} bytes left for "
                f"an archive of {self.archive_bytes} bytes ({MAX_RATIO}x its size + {ARCHIVE_SLACK >> 20} MiB); "
                "not read (a zip bomb?)")
        data = bytearray()
        with self.archive.open(info) as f:
            while len(data) <= declared:  # one byte past the declared size tells a lying header
                chunk = f.read(min(_READ_CHUNK, declared + 1 - len(data)))
                if not chunk:
                    break
                data += chunk
        if len(data) != declared:
            raise CorruptCheckpointError(f"member {name} holds {'more' if len(data) > declared else 'fewer'} than the "
                                         f"{declared} bytes it declares")
        self.left -= declared
        return data


class CopyBudget:
    """The bytes the tensors of one archive may still take once copied out of their storages."""

    def __init__(self, limit: int, how: str):
        self.limit = self.left = limit
        self.how = how  #: how the limit was set, for the error

    @classmethod
    def for_storages(cls, archive: zipfile.ZipFile, prefix: str) -> "CopyBudget":
        """The budget of an archive whose storages are the members under ``prefix``."""
        stored = sum(i.file_size for i in archive.infolist() if i.filename.startswith(prefix))
        return cls(MAX_VIEW_FACTOR * stored + ARCHIVE_SLACK,
                   f"{MAX_VIEW_FACTOR}x the {stored} bytes of its storages + {ARCHIVE_SLACK >> 20} MiB")

    def take(self, nbytes: int, size) -> None:
        """Account for a tensor of ``size`` taking ``nbytes``; refuse it when over the budget."""
        if nbytes > self.left:
            raise UnsupportedCheckpointError(
                f"tensor of size {size} ({nbytes} bytes) takes the tensors read beyond {self.limit} bytes "
                f"({self.how}): many tensors view the same storage; not read")
        self.left -= nbytes
