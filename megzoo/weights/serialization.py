"""Safe deserialisation of checkpoints: no torch import, no plain pickle.

Two formats, each read by an allow-list unpickler that refuses every other global *before* it is
called (:class:`UnsafeCheckpointError`, naming the global and the file):

* MegEngine ``.pkl`` (``megengine.save``): a pickle of dicts (often ``collections.OrderedDict``,
  sometimes nested) of numpy arrays, with plain metadata. Admitted: numpy array, dtype and scalar
  reconstruction (``numpy.core`` and numpy 2's ``numpy._core`` spellings, protocols 0-5),
  ``collections.OrderedDict``, the builtins pickle uses for set/frozenset/complex/bytearray,
  ``_codecs.encode`` (latin-1 only: bytes in protocol <= 2) and ``megengine.tensor.Tensor`` /
  ``Parameter`` (kept as their numpy value). Object arrays are refused.
* PyTorch ``.pth`` zip archives (``torch.save``, torch >= 1.6): ``<prefix>/data.pkl`` names each
  storage by the persistent id ``('storage', type, key, location, numel)``, whose bytes are the
  entry ``<prefix>/data/<key>``. torch 2.13 still writes the typed names (``torch.FloatStorage``,
  ``torch.HalfStorage``, ...) with ``torch._utils._rebuild_tensor_v2`` for ordinary dtypes, and
  ``torch.storage.UntypedStorage`` with ``_rebuild_tensor_v3(..., dtype)`` for uint16/32/64; both
  are read, and ``_rebuild_parameter`` (a pickled ``nn.Parameter``). Each tensor is the strided
  view of its storage copied to a C-contiguous array; bfloat16 becomes float32 (exactly).
  Sizes are bounded before anything is read (zip bombs, many views of one storage): see
  :mod:`megzoo.weights.archive`.

Truncated or garbled files raise :class:`CorruptCheckpointError`; readable files in a form not
read here (legacy non-zip torch files, big-endian storages, float8, TorchScript, no state dict)
raise its subclass :class:`UnsupportedCheckpointError`. Every message names the file.
"""
import collections
import functools
import io
import os
import pickle
import re
import types
import zipfile
from typing import Any, BinaryIO, Dict, NamedTuple, Optional, Tuple, Union

import numpy as np

from .archive import MAX_BROADCAST_BYTES, MAX_PICKLE_BYTES, CopyBudget, MemberReader
from .errors import CorruptCheckpointError, UnsafeCheckpointError, UnsupportedCheckpointError, WeightsError

__all__ = ["load_checkpoint", "load_megengine_pickle", "load_torch_zip", "extract_state_dict",
           "STATE_DICT_KEYS", "ZIP_MAGIC", "is_torch_zip"]

PathLike = Union[str, "os.PathLike[str]"]

#: first bytes of a zip archive (a torch >= 1.6 ``.pth``)
ZIP_MAGIC = b"PK\x03\x04"

#: first object of a legacy (pre-1.6 or ``_use_new_zipfile_serialization=False``) torch file
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

#: keys under which checkpoints keep their state dict, in order of preference
STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "model_state", "net", "network", "module",
                   "weights", "params", "ema", "model_ema", "state_dict_ema", "ema_state_dict")


def is_torch_zip(path: PathLike) -> bool:
    """Whether the file at ``path`` is a zip archive (a torch >= 1.6 ``.pth``), by its first bytes."""
    with open(path, "rb") as f:
        return f.read(len(ZIP_MAGIC)) == ZIP_MAGIC


_HINT = ("a checkpoint may only hold arrays, dicts/lists and plain values (save model.state_dict(), "
         "not the model or other objects); nothing in the file was run")


def _name_of(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return str(getattr(source, "name", None) or f"<{type(source).__name__}>")


# --------------------------------------------------------------------------- pickle-safe constructors
# Only these run while unpickling. Each checks its arguments, so that nothing but plain arrays,
# dtypes and scalars (never of object dtype) can be made with them.

class _Marker(NamedTuple):
    """An allowed global that is not called by itself (immutable, so BUILD cannot alter it)."""

    name: str


_NDARRAY_TYPE = _Marker("numpy.ndarray")


def _plain_dtype(dtype, what: str) -> np.dtype:
    if not isinstance(dtype, np.dtype):
        raise CorruptCheckpointError(f"{what}: expected a numpy dtype, got {type(dtype).__name__}")
    if dtype.hasobject:
        raise UnsafeCheckpointError(f"object arrays (dtype {dtype}) are refused: their items would need "
                                    "arbitrary unpickling")
    return dtype


def _make_dtype(spec, align=False, copy=False) -> np.dtype:
    """``numpy.dtype(spec, align, copy)`` as numpy pickles it; object dtypes are refused."""
    if not isinstance(spec, str):
        raise CorruptCheckpointError(f"numpy.dtype: expected a type string, got {type(spec).__name__}")
    return _plain_dtype(np.dtype(spec, align=bool(align), copy=bool(copy)), "numpy.dtype")


def _reconstruct_array(subtype, shape, typecode) -> np.ndarray:
    """``numpy.core.multiarray._reconstruct``: an empty array that BUILD then fills."""
    if subtype is not _NDARRAY_TYPE or tuple(shape) != (0,):
        raise CorruptCheckpointError(f"numpy _reconstruct: unexpected arguments ({subtype!r}, {shape!r})")
    return np.empty((0,), np.uint8)


def _array_from_buffer(buffer, dtype, shape, order) -> np.ndarray:
    """``numpy.core.numeric._frombuffer``, what numpy writes for arrays in pickle protocol 5."""
    if not isinstance(buffer, (bytes, bytearray)) or order not in ("C", "F"):
        raise CorruptCheckpointError("numpy _frombuffer: unexpected arguments")
    return np.frombuffer(buffer, dtype=_plain_dtype(dtype, "numpy _frombuffer")).reshape(shape, order=order)


def _array_scalar(dtype, data=None):
    """``numpy.core.multiarray.scalar``: a numpy scalar from its raw bytes."""
    dtype = _plain_dtype(dtype, "numpy scalar")
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise CorruptCheckpointError(f"numpy scalar: expected {dtype.itemsize} bytes")
    return np.frombuffer(data, dtype=dtype)[0]


def _latin1_encode(text, encoding="utf-8"):
    """``_codecs.encode(text, "latin1")``: how protocols 0-2 write ``bytes``."""
    if not isinstance(text, str) or str(encoding).lower().replace("-", "").replace("_", "") != "latin1":
        raise CorruptCheckpointError("_codecs.encode is admitted only for latin-1 text (pickled bytes)")
    return text.encode("latin-1")


def _bytearray(source=b"", encoding=None):
    """``bytearray(bytes)`` or ``bytearray(text, "latin-1")`` (never ``bytearray(size)``)."""
    if isinstance(source, str) and encoding is not None:
        return bytearray(_latin1_encode(source, encoding))
    if isinstance(source, bytes) and encoding is None:
        return bytearray(source)
    raise CorruptCheckpointError("bytearray is admitted only from pickled bytes")


def _empty_bytes(*args):
    """``bytes()``: how protocols 0-2 write ``b""`` (``bytes(size)`` is refused)."""
    if args:
        raise CorruptCheckpointError("bytes() is admitted only without arguments (pickled b'')")
    return b""


class _Frozen(type):
    """Metaclass of the stand-in classes: a pickle's BUILD cannot set attributes on them."""

    def __setattr__(cls, name, value):
        raise UnsafeCheckpointError(f"attempt to set attribute {name!r} of {cls.__name__}")

    def __delattr__(cls, name):
        raise UnsafeCheckpointError(f"attempt to delete attribute {name!r} of {cls.__name__}")


class _MegEngineTensor(metaclass=_Frozen):
    """Stand-in for a pickled ``megengine.Tensor``/``Parameter``; replaced by its numpy value.

    MegEngine 1.13 pickles a tensor as ``Tensor.__new__(Tensor, ndarray, dtype, device)`` followed
    by ``__setstate__({})`` (or ``{"qparams": ...}`` for a quantised tensor, refused here).
    """

    __slots__ = ("value",)

    def __new__(cls, value=None, dtype=None, device=None):
        if not isinstance(value, np.ndarray):
            raise CorruptCheckpointError(f"megengine Tensor: expected a numpy array, got {type(value).__name__}")
        self = object.__new__(cls)
        self.value = value
        return self

    def __setstate__(self, state):
        if state is None or isinstance(state, dict) and all(v is None for v in state.values()):
            return
        raise UnsupportedCheckpointError(f"megengine Tensor with state {str(state)[:80]} (quantised tensors "
                                         "are not read)")


def _replace_tensor_stubs(obj, seen: set):
    """``obj`` with every :class:`_MegEngineTensor` replaced by its array (dicts/lists in place)."""
    if isinstance(obj, _MegEngineTensor):
        return obj.value
    if isinstance(obj, (dict, list)):
        if id(obj) not in seen:
            seen.add(id(obj))
            for k, v in (obj.items() if isinstance(obj, dict) else enumerate(obj)):
                obj[k] = _replace_tensor_stubs(v, seen)
        return obj
    if type(obj) is tuple:
        return tuple(_replace_tensor_stubs(v, seen) for v in obj)
    return obj


#: globals any checkpoint may use: (module, name) -> what the unpickler gets instead
_COMMON_GLOBALS: Dict[Tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "bytearray"): _bytearray,
    ("builtins", "bytes"): _empty_bytes,
    ("_codecs", "encode"): _latin1_encode,
    ("numpy", "ndarray"): _NDARRAY_TYPE,
    ("numpy", "dtype"): _make_dtype,
}
for _core in ("numpy.core", "numpy._core"):
    _COMMON_GLOBALS.update({
        (f"{_core}.multiarray", "_reconstruct"): _reconstruct_array,
        (f"{_core}.multiarray", "scalar"): _array_scalar,
        (f"{_core}.numeric", "_frombuffer"): _array_from_buffer,
    })
del _core

#: Python 2 module names that protocol <= 2 pickles written by Python 3 still use
_PY2_MODULES = {"__builtin__": "builtins"}


class _AllowListUnpickler(pickle.Unpickler):
    """Unpickler resolving only the globals of ``allowed``; anything else is refused unresolved."""

    allowed: Dict[Tuple[str, str], Any] = _COMMON_GLOBALS

    def find_class(self, module: str, name: str):
        module = _PY2_MODULES.get(module, module)
        try:
            found = self.allowed[(module, name)]
        except (KeyError, TypeError):
            raise self.refuse(module, name) from None
        # a fresh wrapper per reference: a BUILD on it cannot change the shared function
        return functools.partial(found) if isinstance(found, types.FunctionType) else found

    def refuse(self, module: str, name: str) -> WeightsError:
        return UnsafeCheckpointError(f"refused global {module}.{name}: {_HINT}")

    def persistent_load(self, pid):
        raise CorruptCheckpointError(f"unexpected persistent id {pid!r} (not a MegEngine pickle)")


def _unpickle(unpickler: pickle.Unpickler, source: str):
    """``unpickler.load()`` with every failure turned into a megzoo error naming ``source``."""
    try:
        return unpickler.load()
    except WeightsError as exc:
        raise type(exc)(f"{source}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any other failure means the bytes are not a valid checkpoint
        raise CorruptCheckpointError(f"{source}: truncated or garbled checkpoint, cannot unpickle it "
                                     f"({type(exc).__name__}: {exc})") from exc


# --------------------------------------------------------------------------- MegEngine pickles

class _MegEngineUnpickler(_AllowListUnpickler):
    allowed = {**_COMMON_GLOBALS,
               ("megengine.tensor", "Tensor"): _MegEngineTensor,
               ("megengine.tensor", "Parameter"): _MegEngineTensor}

    def __init__(self, file: BinaryIO):
        super().__init__(file)
        self.has_tensors = False  #: whether stand-ins must be replaced after loading

    def find_class(self, module: str, name: str):
        found = super().find_class(module, name)
        if found is _MegEngineTensor:
            self.has_tensors = True
        return found


def load_megengine_pickle(path_or_fileobj: Union[PathLike, BinaryIO]) -> object:
    """The object in a MegEngine ``.pkl`` (what ``megengine.save`` wrote), unpickled with an allow-list.

    ``megengine.Tensor`` values come back as numpy arrays. Raises :class:`UnsafeCheckpointError`
    for any other global (before it runs) or an object array, :class:`CorruptCheckpointError` for
    a truncated or garbled file, :class:`UnsupportedCheckpointError` for a torch file.
    """
    source = _name_of(path_or_fileobj)
    if isinstance(path_or_fileobj, (str, os.PathLike)):
        with open(path_or_fileobj, "rb") as f:
            return _load_megengine(f, source)
    f = path_or_fileobj
    if not (hasattr(f, "seekable") and f.seekable()):
        f = io.BytesIO(f.read())
    return _load_megengine(f, source)


def _load_megengine(f: BinaryIO, source: str) -> object:
    start = f.tell()
    head = f.read(len(ZIP_MAGIC))
    f.seek(start)
    if head == ZIP_MAGIC:
        raise UnsupportedCheckpointError(f"{source}: a zip archive (a PyTorch .pth?), not a MegEngine pickle; "
                                         "read it with load_torch_zip or load_checkpoint")
    if not head:
        raise CorruptCheckpointError(f"{source}: empty file")
    unpickler = _MegEngineUnpickler(f)
    obj = _unpickle(unpickler, source)
    if type(obj) is int and obj == _TORCH_LEGACY_MAGIC:
        raise UnsupportedCheckpointError(
            f"{source}: a legacy (non-zip) torch.save file, not read here; re-save it with torch >= 1.6: "
            "torch.save(torch.load(path, weights_only=True), new_path)")
    if unpickler.has_tensors:
        try:
            obj = _replace_tensor_stubs(obj, set())
        except RecursionError:
            raise CorruptCheckpointError(f"{source}: containers nested too deeply") from None
    return obj


# --------------------------------------------------------------------------- PyTorch zip archives

class _TorchType(NamedTuple):
    """A torch storage type or dtype named by the pickle, as the numpy type of its elements."""

    name: str  #: e.g. "torch.FloatStorage", "torch.uint16"
    dtype: np.dtype  #: little-endian element type in the file ("<u2" for bfloat16)
    is_storage: bool
    bfloat16: bool = False


class _TorchStorage(NamedTuple):
    """One storage entry ``<prefix>/data/<key>`` as a flat read-only array of its elements."""

    key: str
    type: _TorchType
    data: np.ndarray


_TORCH_NUMPY = {  # torch dtype name -> (numpy type, legacy typed storage name)
    "float64": ("<f8", "DoubleStorage"), "float32": ("<f4", "FloatStorage"), "float16": ("<f2", "HalfStorage"),
    "bfloat16": ("<u2", "BFloat16Storage"), "int64": ("<i8", "LongStorage"), "int32": ("<i4", "IntStorage"),
    "int16": ("<i2", "ShortStorage"), "int8": ("i1", "CharStorage"), "uint8": ("u1", "ByteStorage"),
    "bool": ("?", "BoolStorage"), "complex64": ("<c8", "ComplexFloatStorage"),
    "complex128": ("<c16", "ComplexDoubleStorage"), "uint16": ("<u2", None), "uint32": ("<u4", None),
    "uint64": ("<u8", None),
}

#: torch dtypes without a numpy equivalent
_TORCH_EXOTIC_DTYPE = re.compile(r"(float8_\w+|float4_\w+|complex32|q(u?int\d+(x\d+)?)|bits\w+|u?int[1-7])")


def _torch_globals() -> Dict[Tuple[str, str], Any]:
    found = dict(_COMMON_GLOBALS)
    for name, (np_type, storage) in _TORCH_NUMPY.items():
        bf16 = name == "bfloat16"
        found[("torch", name)] = _TorchType(f"torch.{name}", np.dtype(np_type), False, bf16)
        if storage:
            found[("torch", storage)] = _TorchType(f"torch.{storage}", np.dtype(np_type), True, bf16)
    untyped = _TorchType("torch.UntypedStorage", np.dtype("u1"), True)
    found[("torch", "UntypedStorage")] = found[("torch.storage", "UntypedStorage")] = untyped
    found[("torch._utils", "_rebuild_tensor_v2")] = _rebuild_tensor_v2
    found[("torch._utils", "_rebuild_tensor_v3")] = _rebuild_tensor_v3
    found[("torch._utils", "_rebuild_parameter")] = _rebuild_parameter
    return found


def _is_index(value) -> bool:
    return type(value) is int and value >= 0


def _strided_copy(flat: np.ndarray, offset, size, stride, budget: Optional[CopyBudget] = None) -> np.ndarray:
    """The tensor of ``size`` and ``stride`` (in elements) at element ``offset`` of the 1-D
    ``flat``, copied to a C-contiguous array; every element read is checked to be inside ``flat``,
    and the copy's bytes are taken from ``budget``."""
    if not (_is_index(offset) and isinstance(size, tuple) and isinstance(stride, tuple)
            and len(size) == len(stride) and all(_is_index(v) for v in size + stride)):
        raise CorruptCheckpointError(f"malformed tensor record: offset {offset!r}, size {size!r}, stride {stride!r}")
    if 0 in size:
        return np.empty(size, flat.dtype)
    stride = tuple(st if n > 1 else 0 for n, st in zip(size, stride))  # a length-1 dimension never steps
    last = offset + sum((n - 1) * st for n, st in zip(size, stride))
    if last >= flat.size:
        raise CorruptCheckpointError(f"tensor of size {size}, stride {stride} at offset {offset} reads element "
                                     f"{last} of a storage of {flat.size}")
    numel = int(np.prod(size, dtype=object))
    if numel > flat.size and numel * flat.itemsize > MAX_BROADCAST_BYTES:
        raise UnsupportedCheckpointError(f"tensor of size {size} expands a storage of {flat.size} elements "
                                         f"to {numel * flat.itemsize} bytes")
    if budget is not None:
        budget.take(numel * flat.itemsize, size)
    view = np.lib.stride_tricks.as_strided(flat[offset:], shape=size, strides=[st * flat.itemsize for st in stride],
                                           writeable=False)
    return view.copy(order="C")


def _bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> the same values as float32 (exact: bf16 is fp32's top half)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _check_storage(storage) -> _TorchStorage:
    if not isinstance(storage, _TorchStorage):
        raise CorruptCheckpointError(f"tensor record without a storage (got {type(storage).__name__})")
    return storage


def _check_metadata(metadata) -> None:
    if metadata:
        raise UnsupportedCheckpointError(f"tensor metadata {metadata!r} (conjugate/negative views) is not read")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None, *, budget: Optional[CopyBudget] = None) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v2``: a tensor of a typed storage, as numpy."""
    storage = _check_storage(storage)
    _check_metadata(metadata)
    array = _strided_copy(storage.data, storage_offset, size, stride, budget)
    return _bfloat16_to_float32(array) if storage.type.bfloat16 else array


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype,
                       metadata=None, *, budget: Optional[CopyBudget] = None) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v3``: a tensor of an untyped (byte) storage and a dtype."""
    storage = _check_storage(storage)
    _check_metadata(metadata)
    if not isinstance(dtype, _TorchType) or dtype.is_storage:
        raise CorruptCheckpointError(f"_rebuild_tensor_v3: expected a torch dtype, got {dtype!r}")
    if storage.data.dtype != np.uint8 or storage.data.size % dtype.dtype.itemsize:
        raise CorruptCheckpointError(f"storage {storage.key} ({storage.type.name}, {storage.data.nbytes} bytes) "
                                     f"cannot hold {dtype.name} elements")
    array = _strided_copy(storage.data.view(dtype.dtype), storage_offset, size, stride, budget)
    return _bfloat16_to_float32(array) if dtype.bfloat16 else array


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None) -> np.ndarray:
    """``torch._utils._rebuild_parameter``: an ``nn.Parameter`` is its tensor."""
    if not isinstance(data, np.ndarray):
        raise CorruptCheckpointError(f"parameter without a tensor (got {type(data).__name__})")
    return data


class _TorchUnpickler(_AllowListUnpickler):
    """Reads ``<prefix>/data.pkl``; storages come from ``<prefix>/data/<key>`` of the archive."""

    allowed = _torch_globals()

    def __init__(self, file: BinaryIO, reader: MemberReader, prefix: str):
        super().__init__(file)
        self.reader = reader
        self.archive = reader.archive
        self.prefix = prefix
        self.storages: Dict[str, _TorchStorage] = {}
        self.budget = CopyBudget.for_storages(self.archive, f"{prefix}/data/")

    def find_class(self, module: str, name: str):
        if (module, name) not in self.allowed and module == "torch":
            if name.endswith("Storage"):
                raise UnsupportedCheckpointError(f"storage type torch.{name} is not read")
            if _TORCH_EXOTIC_DTYPE.fullmatch(name):
                raise UnsupportedCheckpointError(f"dtype torch.{name} has no numpy equivalent")
        found = super().find_class(module, name)
        if (module, name) in (("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor_v3")):
            return functools.partial(found, budget=self.budget)  # keyword-only: a pickle cannot set it
        return found

    def persistent_load(self, pid) -> _TorchStorage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CorruptCheckpointError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, location, numel = pid
        if not (isinstance(storage_type, _TorchType) and storage_type.is_storage and isinstance(key, str)
                and isinstance(location, str) and _is_index(numel)):
            raise CorruptCheckpointError(f"malformed storage record {pid!r}")
        cached = self.storages.get(key)
        if cached is not None:
            if cached.type != storage_type or cached.data.size != numel:
                raise CorruptCheckpointError(f"storage {key} is named as both {cached.type.name} x {cached.data.size} "
                                             f"and {storage_type.name} x {numel}")
            return cached
        entry = f"{self.prefix}/data/{key}"
        try:
            info = self.archive.getinfo(entry)
        except KeyError:
            raise CorruptCheckpointError(f"missing storage entry {entry}") from None
        expected = numel * storage_type.dtype.itemsize
        if info.file_size != expected:
            raise CorruptCheckpointError(f"storage entry {entry} has {info.file_size} bytes, expected {expected} "
                                         f"({numel} x {storage_type.name})")
        data = np.frombuffer(self.reader.read(info), dtype=storage_type.dtype)
        data.flags.writeable = False
        storage = self.storages[key] = _TorchStorage(key, storage_type, data)
        return storage


def _torch_prefix(archive: zipfile.ZipFile, source: str) -> str:
    """The archive's top folder (``archive`` for torch >= 1.x defaults, else the saved file's stem)."""
    names = archive.namelist()
    prefixes = sorted({n[:-len("/data.pkl")] for n in names if n.endswith("/data.pkl") and n.count("/") == 1})
    if len(prefixes) != 1:
        what = "no <prefix>/data.pkl" if not prefixes else f"several data.pkl ({', '.join(prefixes)})"
        raise CorruptCheckpointError(f"{source}: zip archive with {what}: not a torch.save checkpoint")
    prefix = prefixes[0]
    if f"{prefix}/constants.pkl" in names or any(n.startswith(f"{prefix}/code/") for n in names):
        raise UnsupportedCheckpointError(f"{source}: a TorchScript archive (torch.jit.save), not read here; "
                                         "save model.state_dict() with torch.save instead")
    return prefix


def _read_torch_zip(path: PathLike) -> object:
    """The object ``torch.save`` wrote to ``path``, tensors as numpy arrays."""
    source = _name_of(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as exc:
        raise CorruptCheckpointError(f"{source}: truncated or garbled zip archive ({exc})") from exc
    with archive:
        prefix = _torch_prefix(archive, source)
        reader = MemberReader(archive, os.fstat(archive.fp.fileno()).st_size)
        try:
            names = archive.namelist()
            byteorder = bytes(reader.read(archive.getinfo(f"{prefix}/byteorder"), 64)) \
                if f"{prefix}/byteorder" in names else b"little"
            data_pkl = reader.read(archive.getinfo(f"{prefix}/data.pkl"), MAX_PICKLE_BYTES)
        except WeightsError as exc:
            raise type(exc)(f"{source}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - bad CRC, truncated entry, bad compression
            raise CorruptCheckpointError(f"{source}: truncated or garbled zip archive ({exc})") from exc
        if byteorder == b"big":
            raise UnsupportedCheckpointError(f"{source}: big-endian storages (saved on a big-endian machine) "
                                             "are not read")
        if byteorder != b"little":
            raise CorruptCheckpointError(f"{source}: unknown byteorder record {byteorder[:20]!r}")
        return _unpickle(_TorchUnpickler(io.BytesIO(data_pkl), reader, prefix), source)


def load_torch_zip(path: PathLike) -> Dict[str, np.ndarray]:
    """The state dict in a PyTorch ``.pth`` zip archive (torch >= 1.6 ``torch.save``), as
    ``{name: C-contiguous numpy array}`` in file order, nothing dropped (``num_batches_tracked``
    included); read with ``zipfile`` and an allow-list unpickler, never importing torch.

    The state dict is found inside common wrappers as by :func:`extract_state_dict`.
    """
    return _extract(_read_torch_zip(path), _name_of(path))


# --------------------------------------------------------------------------- public entry points

def load_checkpoint(path: PathLike) -> Dict[str, np.ndarray]:
    """The state dict of a checkpoint file, ``{name: numpy array}``, whatever wrote it: a zip
    archive (``PK\\x03\\x04``) is read as a PyTorch ``.pth``, anything else as a MegEngine pickle."""
    with open(path, "rb") as f:
        head = f.read(len(ZIP_MAGIC))
    if head == ZIP_MAGIC:
        return load_torch_zip(path)
    return _extract(load_megengine_pickle(path), _name_of(path))


def _as_state_dict(obj) -> Optional[Dict[str, np.ndarray]]:
    """``obj`` as a plain dict if it is a non-empty ``{str: array}``, else None."""
    if not isinstance(obj, dict) or not obj:
        return None
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, (np.ndarray, np.generic)) or value.dtype.hasobject:
            return None
    return {key: value if isinstance(value, np.ndarray) else np.asarray(value) for key, value in obj.items()}


def _find_state_dict(obj, keys, depth: int) -> Optional[Dict[str, np.ndarray]]:
    found = _as_state_dict(obj)
    if found is not None or not isinstance(obj, dict) or depth > 3:
        return found
    for key in keys:
        if key in obj:
            found = _find_state_dict(obj[key], STATE_DICT_KEYS, depth + 1)
            if found is not None:
                return found
    return None


def _describe(obj) -> str:
    if isinstance(obj, dict):
        items = [f"{k!r}: {type(v).__name__}" for k, v in list(obj.items())[:8]]
        more = f", ... ({len(obj)} keys)" if len(obj) > 8 else ""
        return "{" + ", ".join(items) + more + "}"
    return type(obj).__name__


def extract_state_dict(obj, key: Optional[str] = None) -> Dict[str, np.ndarray]:
    """The ``{name: array}`` state dict in a loaded checkpoint ``obj``.

    A flat dict of arrays is returned as is (as a plain dict, order kept; numpy scalars become 0-d
    arrays). Otherwise the state dict is looked for under ``key`` if given, else under the first of
    :data:`STATE_DICT_KEYS` (``state_dict``, ``model``, ..., ``ema``) that holds one, through up to
    three levels of wrappers. Raises :class:`UnsupportedCheckpointError` describing ``obj`` if
    there is none.
    """
    found = _find_state_dict(obj, STATE_DICT_KEYS if key is None else (key,), 0)
    if found is not None:
        return found
    if key is not None and not (isinstance(obj, dict) and key in obj):
        raise UnsupportedCheckpointError(f"no key {key!r} in the checkpoint: {_describe(obj)}")
    where = f"under {key!r}" if key is not None else f"(looked under {', '.join(STATE_DICT_KEYS)})"
    raise UnsupportedCheckpointError(f"no state dict ({{name: array}}) found {where}; the checkpoint is "
                                     f"{_describe(obj)}")


def _extract(obj, source: str) -> Dict[str, np.ndarray]:
    try:
        return extract_state_dict(obj)
    except WeightsError as exc:
        raise type(exc)(f"{source}: {exc}") from None
