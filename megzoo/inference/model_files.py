"""What a file given to :func:`megzoo.inference.load` is, told by its first bytes before a runtime sees it.

MegEngine Lite and ONNX Runtime answer a file that is not theirs with a C++ assertion and
backtrace (``access invalid Maybe value``, ``m_offset + size <= m_size``). :func:`model_file_kind`
says ``"onnx"`` or ``"mge"`` whatever the file is called, and otherwise raises ``ValueError``
naming what the file is (a pickle, a zip archive, empty, an image, text, ...) and what load takes.

* ONNX: a protobuf ``ModelProto`` that starts, as every ONNX writer's does, with its
  ``ir_version`` (field 1, a small varint) followed by another field of the model;
* ``.mge``: MegEngine's graph dump, FlatBuffers v2 (a size prefix, then the identifier ``mgv2``
  at byte 8; a size prefix beyond the file's end means a truncated file), v1 (the magic
  ``MGBS``), or a Lite packed model (``packed_model``).

Each kind is a :class:`FileKind`; the backends say which kinds they load
(:mod:`megzoo.inference.backends`), and :func:`model_file_kind` tries the kinds it is given.
"""
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple, Union

__all__ = ["FileKind", "ONNX_FILE", "MGE_FILE", "model_file_kind", "describe_file", "accepted", "ACCEPTED", "or_list",
           "onnx_header"]

PathLike = Union[str, "os.PathLike[str]"]

#: what load takes, as the refusal says it
ACCEPTED = "load takes an ONNX model or a MegEngine Lite .mge graph (`megzoo export -o FILE.onnx|FILE.mge` writes both)"

_HEAD = 64  #: bytes read to tell the kind
#: the ModelProto fields an ONNX file may have after its ir_version (producer_name .. functions)
_ONNX_FIELDS = {2, 3, 4, 5, 6, 7, 8, 14, 20, 25}


def _is_onnx(head: bytes) -> bool:
    """``ir_version`` (field 1, varint 1-127) first, then the key of another ModelProto field."""
    if len(head) < 2 or head[0] != 0x08 or not 1 <= head[1] < 0x80:
        return False
    if len(head) == 2:
        return True
    key = head[2]
    if key >= 0x80:  # a field number above 15: two-byte key
        if len(head) < 4:
            return False
        key = (key & 0x7F) | (head[3] << 7)
    field, wire = key >> 3, key & 7
    return field in _ONNX_FIELDS and wire == (0 if field == 5 else 2)


def _mge_kind(head: bytes, size: int) -> str:
    """``"mge"``, ``"truncated"`` or ``""`` (not MegEngine's)."""
    if head.startswith(b"packed_model") or head.startswith(b"MGBS"):
        return "mge"
    if len(head) >= 12 and head[8:12] == b"mgv2":
        declared = struct.unpack("<I", head[:4])[0] + 4
        return "mge" if declared <= size else "truncated"
    return ""


def describe_file(head: bytes, size: int) -> str:
    """What a file that is not a model looks like from its first bytes (``head``) and ``size``."""
    if size == 0:
        return "empty (0 bytes)"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "a Python pickle (a state dict or checkpoint? those are weights: --weights FILE, pretrained=FILE)"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "a zip archive (a PyTorch .pth checkpoint? those are weights: --weights FILE, pretrained=FILE)"
    if head.startswith(b"\x1f\x8b"):
        return "a gzip-compressed file (unpack it first)"
    if head.startswith(b"\x89PNG") or head.startswith(b"\xff\xd8\xff") or head.startswith(b"GIF8"):
        return "an image"
    if head.startswith(b"\x93NUMPY"):
        return "a NumPy array (.npy)"
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file"
    text = head.lstrip()
    if text[:1] in (b"{", b"["):
        return "JSON text (the metadata beside an export is FILE.json: give the model file itself)"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "a text file"
    return "not an ONNX model or a MegEngine .mge graph (it starts with bytes " + head[:8].hex(" ") + ")"


def _sniff_onnx(head: bytes, size: int) -> bool:
    return _is_onnx(head)


def _sniff_mge(head: bytes, size: int) -> Union[bool, str]:
    kind = _mge_kind(head, size)
    if kind == "truncated":
        declared = struct.unpack("<I", head[:4])[0] + 4
        return f"a truncated MegEngine .mge graph ({size} of its {declared} bytes)"
    return kind == "mge"


@dataclass(frozen=True)
class FileKind:
    """A kind of model file a backend loads. ``name``: what it is called (``"onnx"``: ``.onnx
    files``); ``description``: how the refusal of other files names it (``"an ONNX model"``);
    ``sniff(head, size)``: from the first :data:`_HEAD` bytes and the size, True for a file of this
    kind, a description for a damaged one (e.g. truncated), else False; without ``sniff``, the
    file's ``suffixes`` (lower case, with the dot) decide."""

    name: str
    description: str
    sniff: Optional[Callable[[bytes, int], Union[bool, str]]] = None
    suffixes: Tuple[str, ...] = ()

    def matches(self, path: Path, head: bytes, size: int) -> Union[bool, str]:
        """True, False, or what is wrong with a damaged file of this kind."""
        if self.sniff is not None:
            return self.sniff(head, size)
        return path.suffix.lower() in self.suffixes


ONNX_FILE = FileKind("onnx", "an ONNX model", _sniff_onnx, (".onnx",))
MGE_FILE = FileKind("mge", "a MegEngine Lite .mge graph", _sniff_mge, (".mge",))
_BUILT_IN = (ONNX_FILE, MGE_FILE)


def onnx_header(path: PathLike):
    """The ``onnx.ModelProto`` of the ONNX model file ``path`` without external weight files: its
    graph's inputs and outputs and its ``metadata_props``, for a file that came without its JSON."""
    import onnx

    return onnx.load(os.fspath(path), load_external_data=False)


def or_list(words: Sequence[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def accepted(kinds: Sequence[FileKind] = _BUILT_IN) -> str:
    """What load takes, as the refusal says it (:data:`ACCEPTED` for the built-in kinds)."""
    names = [k.description for k in kinds]
    listed = or_list(names)
    export = [k.name for k in kinds if k in _BUILT_IN]
    if not export:
        return f"load takes {listed}"
    writes = "both" if len(export) == len(names) == 2 else " and ".join(f".{n} files" for n in export)
    return f"load takes {listed} (`megzoo export -o FILE.onnx|FILE.mge` writes {writes})"


def model_file_kind(path: PathLike, kinds: Optional[Sequence[FileKind]] = None) -> str:
    """The name of the first of ``kinds`` (default ONNX, then ``.mge``) the file at ``path`` is,
    by its first bytes whatever its name (or by its suffix, for a kind without ``sniff``); else
    ``ValueError``: what the file is (:func:`describe_file`) and what load takes."""
    path = Path(path)
    kinds = tuple(kinds) if kinds is not None else _BUILT_IN
    with open(path, "rb") as f:
        head = f.read(_HEAD)
        size = os.fstat(f.fileno()).st_size
    damaged = ""
    for kind in kinds:
        verdict = kind.matches(path, head, size)
        if verdict is True:
            return kind.name
        damaged = damaged or (verdict if isinstance(verdict, str) else "")
    what = damaged or describe_file(head, size)
    raise ValueError(f"{path} is not a model file load can run: it is {what}. {accepted(kinds)}")
