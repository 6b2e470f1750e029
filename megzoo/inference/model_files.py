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
"""
import os
import struct
from pathlib import Path
from typing import Union

__all__ = ["model_file_kind", "describe_file", "ACCEPTED"]

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


def model_file_kind(path: PathLike) -> str:
    """``"onnx"`` or ``"mge"`` by the first bytes of the file at ``path``, whatever its name;
    else ``ValueError``: what the file is (:func:`describe_file`) and what load takes."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(_HEAD)
        size = os.fstat(f.fileno()).st_size
    if _is_onnx(head):
        return "onnx"
    kind = _mge_kind(head, size)
    if kind == "mge":
        return "mge"
    if kind == "truncated":
        declared = struct.unpack("<I", head[:4])[0] + 4
        what = f"a truncated MegEngine .mge graph ({size} of its {declared} bytes)"
    else:
        what = describe_file(head, size)
    raise ValueError(f"{path} is not a model file load can run: it is {what}. {ACCEPTED}")
