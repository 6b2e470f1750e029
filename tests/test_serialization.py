"""Safe checkpoint loading: real MegEngine pickles, real torch.save archives (fixtures written by
scripts/make_torch_fixtures.py with torch 2.13), refusal of code-running and malformed files."""
import collections
import io
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import megengine as mge
import megengine.module as M
import numpy as np
import pytest

from megzoo.weights import serialization as S
from megzoo.weights.errors import CorruptCheckpointError, UnsafeCheckpointError, UnsupportedCheckpointError, \
    WeightsError
from megzoo.weights.serialization import extract_state_dict, load_checkpoint, load_megengine_pickle, load_torch_zip
from torch_pickle import integer, text, tuple_of

TORCH_FIXTURES = Path(__file__).parent / "fixtures" / "torch"
EXPECTED = sorted(p.stem for p in TORCH_FIXTURES.glob("*.npz") if p.with_suffix(".pth").exists())
MARKER = "megzoo_pwned_marker"  # what the payloads would create in the working directory


class SmallNet(M.Module):
    def __init__(self):
        super().__init__()
        self.conv = M.Conv2d(3, 4, 3, padding=1)
        self.bn = M.BatchNorm2d(4)
        self.fc = M.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).mean(axis=(2, 3)))


class RunsCommand:
    """Plain pickle would run ``touch MARKER`` when loading this."""

    def __reduce__(self):
        return os.system, (f"touch {MARKER}",)


def mge_save(obj, path, **kwargs):
    """``megengine.save`` to a path (it takes ``str`` or a file object, not ``Path``)."""
    mge.save(obj, path if hasattr(path, "write") else str(path), **kwargs)


def assert_same_arrays(got: dict, expected: dict):
    assert list(got) == list(expected)
    for key, value in expected.items():
        value = np.asarray(value)
        assert isinstance(got[key], np.ndarray), key
        assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
        assert got[key].tobytes() == value.tobytes(), key  # bit-equal, NaNs and -0.0 included


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty folder, where a payload that ran would leave MARKER."""
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    assert not (tmp_path / MARKER).exists(), "a payload ran"


# --------------------------------------------------------------------------- MegEngine pickles

def test_megengine_state_dict_round_trip(tmp_path):
    net = SmallNet()
    path = tmp_path / "net.pkl"
    mge_save(net.state_dict(), path)
    loaded = load_megengine_pickle(path)
    assert isinstance(loaded, collections.OrderedDict)
    assert_same_arrays(loaded, net.state_dict())
    state = load_checkpoint(path)
    assert type(state) is dict
    assert_same_arrays(state, net.state_dict())
    fresh = SmallNet()
    fresh.load_state_dict(state, strict=True)
    assert_same_arrays(fresh.state_dict(), net.state_dict())


def test_megengine_nested_checkpoint_with_metadata(tmp_path):
    net = SmallNet()
    checkpoint = {"state_dict": net.state_dict(), "epoch": 3, "lr": 0.1, "name": "small", "best": np.float32(0.75),
                  "flags": {"ema", "amp"}, "history": [1.5, None, True], "shape": (3, 224, 224), "raw": b"\x00\x01",
                  "optimizer": {"param_groups": [{"lr": 0.1, "params": [0, 1]}], "state": {0: {"buf": np.ones(3)}}}}
    path = tmp_path / "ckpt.pkl"
    mge_save(checkpoint, path)
    loaded = load_megengine_pickle(path)
    assert {k: loaded[k] for k in ("epoch", "lr", "name", "flags", "history", "shape", "raw")} == \
        {k: checkpoint[k] for k in ("epoch", "lr", "name", "flags", "history", "shape", "raw")}
    assert loaded["best"] == np.float32(0.75) and loaded["best"].dtype == np.float32
    assert_same_arrays(loaded["optimizer"]["state"][0], {"buf": np.ones(3)})
    assert_same_arrays(extract_state_dict(loaded), net.state_dict())
    assert_same_arrays(load_checkpoint(path), net.state_dict())


def test_megengine_tensors_and_parameters_become_arrays(tmp_path):
    net = SmallNet()
    path = tmp_path / "tensors.pkl"
    mge_save({"weight": net.conv.weight, "t": mge.tensor([1.0, 2.0]), "i": mge.tensor([3], dtype="int32")}, path)
    loaded = load_checkpoint(path)
    assert_same_arrays(loaded, {"weight": net.conv.weight.numpy(), "t": np.array([1.0, 2.0], "float32"),
                                "i": np.array([3], "int32")})


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_every_pickle_protocol(tmp_path, protocol):
    state = collections.OrderedDict(
        (f"w.{dtype}", np.arange(6).reshape(2, 3).astype(dtype))
        for dtype in ("float32", "float16", "float64", "int64", "int32", "uint8", "bool"))
    state["fortran"] = np.asfortranarray(np.arange(6.0).reshape(2, 3))
    state["empty"] = np.zeros((0, 4), "float32")
    path = tmp_path / "state.pkl"
    mge_save(state, path, pickle_protocol=protocol)
    assert_same_arrays(load_checkpoint(path), state)


def test_numpy2_global_names(tmp_path):
    """A pickle written under numpy 2 names ``numpy._core.multiarray``."""
    state = {"w": np.arange(4, dtype="float32"), "s": np.int64(7)}
    data = pickle.dumps(state, protocol=2)  # protocol 2 spells globals as text lines
    assert b"cnumpy.core.multiarray\n" in data
    path = tmp_path / "np2.pkl"
    path.write_bytes(data.replace(b"cnumpy.core.multiarray\n", b"cnumpy._core.multiarray\n"))
    assert_same_arrays(load_checkpoint(path), state)


@pytest.mark.parametrize("protocol", [4, 5])
def test_pickle_written_under_numpy2(protocol):
    """Written by scripts/make_torch_fixtures.py with numpy 2 (``numpy._core``, ``_frombuffer``)."""
    path = TORCH_FIXTURES / f"numpy2_protocol{protocol}.pkl"
    assert b"numpy._core" in path.read_bytes()
    with np.load(TORCH_FIXTURES / "numpy2.npz", allow_pickle=False) as expected:
        expected = {k: expected[k] for k in expected.files}
    loaded = load_megengine_pickle(path)
    assert loaded["epoch"] == 3 and loaded["lr"] == 0.1
    assert_same_arrays(load_checkpoint(path), expected)


def test_file_object(tmp_path):
    net = SmallNet()
    buffer = io.BytesIO()
    mge_save(net.state_dict(), buffer)
    buffer.seek(0)
    assert_same_arrays(load_megengine_pickle(buffer), net.state_dict())


@pytest.mark.parametrize("protocol", [0, 2, pickle.DEFAULT_PROTOCOL])
def test_reduce_payload_is_refused_before_it_runs(in_tmp, protocol):
    path = in_tmp / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump(collections.OrderedDict(w=np.ones(2), payload=RunsCommand()), f, protocol=protocol)
    with pytest.raises(UnsafeCheckpointError, match="refused global posix.system") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


PAYLOADS = {  # callable, args: each would do harm if called
    "eval": (eval, (f"__import__('os').system('touch {MARKER}')",)),
    "exec": (exec, (f"import os; os.system('touch {MARKER}')",)),
    "subprocess": (subprocess.call, (["touch", MARKER],)),
    "os.remove": (os.remove, ("important.txt",)),
}


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_dangerous_callables_are_refused(in_tmp, name):
    fn, args = PAYLOADS[name]
    payload = type("Payload", (), {"__reduce__": lambda self: (fn, args)})()
    path = in_tmp / "evil.pkl"
    path.write_bytes(pickle.dumps({"payload": payload}))
    with pytest.raises(UnsafeCheckpointError, match="refused global"):
        load_megengine_pickle(path)


@pytest.mark.parametrize("data, refused", [
    (b"cbuiltins\n__import__\n(Vos\ntR.", "builtins.__import__"),
    (b"cbuiltins\ngetattr\n(cbuiltins\nbytes\nVfromhex\ntR.", "builtins.getattr"),
    (b"c__builtin__\neval\n(V1\ntR.", "builtins.eval"),
    (b"ccopy_reg\n_reconstructor\n(cbuiltins\nobject\ntR.", "copy_reg._reconstructor"),
    (b"cnumpy.core.multiarray\n_reconstruct\n(cbuiltins\nobject\ntR.", "builtins.object"),
    (b"cnumpy\nload\n(Vx.npy\ntR.", "numpy.load"),
    (b"cmegengine\nload\n(Vx.pkl\ntR.", "megengine.load"),
])
def test_raw_pickles_naming_forbidden_globals(in_tmp, data, refused):
    path = in_tmp / "raw.pkl"
    path.write_bytes(data)
    with pytest.raises(UnsafeCheckpointError, match=f"refused global {refused}"):
        load_megengine_pickle(path)


@pytest.mark.parametrize("array", [np.array([1, "a", None], dtype=object),
                                   np.zeros(2, dtype=[("a", "f4"), ("b", "O")])], ids=["object", "structured"])
def test_object_arrays_are_refused(tmp_path, array):
    path = tmp_path / "objects.pkl"
    mge_save({"w": np.ones(2), "objects": array}, path)
    with pytest.raises(UnsafeCheckpointError, match="object arrays"):
        load_megengine_pickle(path)


@pytest.mark.parametrize("data", [
    b"c__builtin__\nbytearray\n(I1000000000000\ntR.",  # bytearray(size)
    b"c__builtin__\nbytes\n(I1000000000000\ntR.",  # bytes(size)
    b"cnumpy\nndarray\n((I1000000000000\ntVf4\ntR.",  # numpy.ndarray(shape, dtype)
    b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(I1000000000000\ntVb\ntR.",  # huge empty array
    b"c_codecs\nencode\n(Vabc\nVrot13\ntR.",  # encoding other than latin-1
    b"cnumpy\ndtype\n(cnumpy\nndarray\nI0\nI1\ntR.",  # dtype from a non-string
])
def test_admitted_globals_only_take_what_pickle_gives_them(tmp_path, data):
    path = tmp_path / "odd.pkl"
    path.write_bytes(data)
    with pytest.raises(CorruptCheckpointError, match=str(path)):
        load_megengine_pickle(path)


def test_build_cannot_modify_admitted_classes(tmp_path):
    path = tmp_path / "tamper.pkl"
    # BUILD (None, {"__new__": 1}) on the Tensor stand-in class: its unbound __setstate__ fails,
    # and were it absent, the class refuses setattr
    path.write_bytes(b"cmegengine.tensor\nTensor\n(N(dV__new__\nI1\nstb.")
    with pytest.raises(CorruptCheckpointError):
        load_megengine_pickle(path)
    with pytest.raises(UnsafeCheckpointError, match="__new__"):
        S._MegEngineTensor.__new__ = object.__new__
    # BUILD on an admitted function acts on a throwaway wrapper, never on the loader's function
    path.write_bytes(b"cnumpy\ndtype\n(N(dV__defaults__\n(I1\ntstb.")
    with pytest.raises(CorruptCheckpointError):
        load_megengine_pickle(path)
    assert S._make_dtype.__defaults__ == (False, False)
    mge_save({"w": mge.tensor(np.ones(2, "float32"))}, path)
    assert_same_arrays(load_checkpoint(path), {"w": np.ones(2, "float32")})


@pytest.mark.parametrize("keep", [0, 1, 2, 40, 0.5, -1])
def test_truncated_file_is_corrupt(tmp_path, keep):
    path = tmp_path / "net.pkl"
    mge_save({"state_dict": SmallNet().state_dict(), "epoch": 3}, path)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(CorruptCheckpointError, match=str(path)):
        load_checkpoint(path)


@pytest.mark.parametrize("data", [np.random.default_rng(0).bytes(2000), b"hello, world\n" * 10, b"\x80\x05garbage"],
                         ids=["random", "text", "bad-opcodes"])
def test_garbled_file_is_corrupt(tmp_path, data):
    path = tmp_path / "garbled.pkl"
    path.write_bytes(data)
    with pytest.raises(CorruptCheckpointError, match=str(path)):
        load_checkpoint(path)


def test_megengine_reader_points_torch_files_elsewhere():
    with pytest.raises(UnsupportedCheckpointError, match="load_torch_zip"):
        load_megengine_pickle(TORCH_FIXTURES / "convnet.pth")


# --------------------------------------------------------------------------- torch zip archives

def test_fixtures_are_present_and_small():
    assert {"dtypes", "strided", "shared", "convnet", "checkpoint", "resnet_tiny", "new_forms"} <= set(EXPECTED)
    assert sum(p.stat().st_size for p in TORCH_FIXTURES.iterdir()) < 300_000


@pytest.mark.parametrize("name", EXPECTED)
def test_torch_fixture_loads_bit_equal(name):
    with np.load(TORCH_FIXTURES / f"{name}.npz", allow_pickle=False) as expected:
        expected = {k: expected[k] for k in expected.files}
    got = load_torch_zip(TORCH_FIXTURES / f"{name}.pth")
    assert_same_arrays(got, expected)
    for value in got.values():
        assert value.flags.c_contiguous and value.flags.writeable
    assert_same_arrays(load_checkpoint(TORCH_FIXTURES / f"{name}.pth"), expected)


def test_torch_details():
    dtypes = load_torch_zip(TORCH_FIXTURES / "dtypes.pth")
    assert {k: v.dtype.name for k, v in dtypes.items()} == {
        "f32": "float32", "f16": "float16", "f64": "float64", "bf16": "float32", "i64": "int64", "i32": "int32",
        "i16": "int16", "i8": "int8", "u8": "uint8", "bool": "bool", "scalar": "float32", "empty": "float32"}
    assert dtypes["scalar"].shape == () and dtypes["scalar"] == 3.5 and dtypes["empty"].shape == (0, 3)
    strided = load_torch_zip(TORCH_FIXTURES / "strided.pth")
    base = np.arange(24, dtype="float32").reshape(4, 6)
    assert_same_arrays({k: strided[k] for k in ("transposed", "slice", "every_other_column")},
                       {"transposed": base.T, "slice": base[1:3, 2:5], "every_other_column": base[:, ::2]})
    shared = load_torch_zip(TORCH_FIXTURES / "shared.pth")
    np.testing.assert_array_equal(shared["matrix"].ravel(), shared["whole"])
    np.testing.assert_array_equal(shared["middle"], shared["whole"][4:8])
    shared["middle"][0] = 1e6  # each tensor owns its copy
    assert shared["whole"][4] != 1e6
    convnet = load_torch_zip(TORCH_FIXTURES / "convnet.pth")
    assert convnet["bn1.num_batches_tracked"].dtype == np.int64 and convnet["bn1.num_batches_tracked"] == 2
    assert convnet["conv1.weight"].shape == (8, 3, 3, 3)
    new_forms = load_torch_zip(TORCH_FIXTURES / "new_forms.pth")
    assert new_forms["u16"].dtype == np.uint16 and new_forms["u16"].tolist() == [0, 1, 65535]


def test_torch_checkpoint_wrapper_keeps_everything():
    state = load_torch_zip(TORCH_FIXTURES / "checkpoint.pth")
    assert_same_arrays(state, load_torch_zip(TORCH_FIXTURES / "convnet.pth"))
    assert "bn2.num_batches_tracked" in state


def test_malicious_pth_is_refused_without_running(in_tmp):
    with pytest.raises(UnsafeCheckpointError, match="refused global posix.system") as info:
        load_checkpoint(TORCH_FIXTURES / "malicious.pth")
    assert "malicious.pth" in str(info.value)
    with pytest.raises(UnsafeCheckpointError):
        load_torch_zip(TORCH_FIXTURES / "malicious.pth")


def test_legacy_torch_format_is_refused(in_tmp):
    with pytest.raises(UnsupportedCheckpointError, match="legacy") as info:
        load_checkpoint(TORCH_FIXTURES / "legacy.pth")
    assert "legacy.pth" in str(info.value)


def _rewrite_zip(source: Path, target: Path, replace: dict):
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            new.writestr(info.filename, replace.get(info.filename.split("/", 1)[1], old.read(info)))


def test_big_endian_archive_is_refused(tmp_path):
    path = tmp_path / "big.pth"
    _rewrite_zip(TORCH_FIXTURES / "dtypes.pth", path, {"byteorder": b"big"})
    with pytest.raises(UnsupportedCheckpointError, match="big-endian"):
        load_checkpoint(path)
    _rewrite_zip(TORCH_FIXTURES / "dtypes.pth", path, {"byteorder": b"middle"})
    with pytest.raises(CorruptCheckpointError, match="byteorder"):
        load_checkpoint(path)


@pytest.mark.parametrize("keep", [10, 0.5, 0.9, -30])
def test_truncated_pth_is_corrupt(tmp_path, keep):
    data = (TORCH_FIXTURES / "convnet.pth").read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[:int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(CorruptCheckpointError, match=str(path)):
        load_checkpoint(path)


def test_damaged_storage_bytes_are_corrupt(tmp_path):
    data = bytearray((TORCH_FIXTURES / "shared.pth").read_bytes())
    with zipfile.ZipFile(TORCH_FIXTURES / "shared.pth") as archive:
        info = archive.getinfo("shared/data/0")  # torch names the top folder after the file it saved to
    name_length, extra_length = struct.unpack_from("<HH", data, info.header_offset + 26)  # local file header
    data[info.header_offset + 30 + name_length + extra_length + 3] ^= 0xFF  # a byte of the first float
    path = tmp_path / "damaged.pth"
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match=str(path)):
        load_checkpoint(path)


# Hand-assembled torch archives (protocol 2 opcodes), for records torch itself never writes.

def _tensor_pickle(storage_type="torch\nFloatStorage", numel=4, offset=0, size=(2, 2), stride=(2, 1), key="0",
                   rebuild="torch._utils\n_rebuild_tensor_v2") -> bytes:
    storage = tuple_of([text("storage"), f"c{storage_type}\n".encode(), text(key), text("cpu"), integer(numel)]) + b"Q"
    args = tuple_of([storage, integer(offset), tuple_of(map(integer, size)), tuple_of(map(integer, stride)), b"\x89",
                   b"ccollections\nOrderedDict\n)R"])
    return b"\x80\x02}(" + text("w") + f"c{rebuild}\n".encode() + args + b"Ru."


def _write_archive(path: Path, data_pkl: bytes, storages=None, extra=None) -> Path:
    storages = {"0": np.arange(4, dtype="<f4").tobytes()} if storages is None else storages
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", b"little")
        for key, raw in storages.items():
            archive.writestr(f"archive/data/{key}", raw)
        for name, raw in (extra or {}).items():
            archive.writestr(f"archive/{name}", raw)
    return path


def test_hand_made_archive_loads(tmp_path):
    path = _write_archive(tmp_path / "ok.pth", _tensor_pickle(offset=1, size=(3,), stride=(1,)))
    assert_same_arrays(load_checkpoint(path), {"w": np.arange(1, 4, dtype="float32")})


@pytest.mark.parametrize("record, error, match", [
    (dict(size=(3, 2)), CorruptCheckpointError, "reads element 5"),
    (dict(offset=3, size=(2,), stride=(1,)), CorruptCheckpointError, "reads element 4"),
    (dict(size=(2, 2), stride=(3, 1)), CorruptCheckpointError, "reads element 4"),
    (dict(size=(2,), stride=(-1,)), CorruptCheckpointError, "malformed tensor record"),
    (dict(numel=5), CorruptCheckpointError, "has 16 bytes, expected 20"),
    (dict(key="7"), CorruptCheckpointError, "missing storage entry archive/data/7"),
    (dict(storage_type="torch\nQInt8Storage"), UnsupportedCheckpointError, "torch.QInt8Storage"),
    (dict(storage_type="torch\nfloat8_e4m3fn"), UnsupportedCheckpointError, "no numpy equivalent"),
    (dict(storage_type="torch.nn.modules.conv\nConv2d"), UnsafeCheckpointError, "refused global torch.nn"),
    (dict(rebuild="torch._utils\n_rebuild_qtensor"), UnsafeCheckpointError, "_rebuild_qtensor"),
    (dict(rebuild="torch\nload"), UnsafeCheckpointError, "refused global torch.load"),
])
def test_bad_tensor_records(tmp_path, record, error, match):
    path = _write_archive(tmp_path / "bad.pth", _tensor_pickle(**record))
    with pytest.raises(error, match=match) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_size_one_dimension_ignores_its_stride(tmp_path):
    path = _write_archive(tmp_path / "ok.pth", _tensor_pickle(size=(1, 4), stride=(2 ** 30, 1)))
    assert_same_arrays(load_checkpoint(path), {"w": np.arange(4, dtype="float32").reshape(1, 4)})


def test_other_zip_archives_are_refused(tmp_path):
    npz = tmp_path / "weights.npz"
    np.savez(npz, w=np.ones(2))
    with pytest.raises(CorruptCheckpointError, match="not a torch.save checkpoint"):
        load_checkpoint(npz)
    script = _write_archive(tmp_path / "script.pt", _tensor_pickle(), extra={"constants.pkl": b"\x80\x02)."})
    with pytest.raises(UnsupportedCheckpointError, match="TorchScript"):
        load_checkpoint(script)


# --------------------------------------------------------------------------- extract_state_dict

def test_extract_state_dict_finds_wrapped_weights():
    state = collections.OrderedDict(b=np.ones(2), a=np.zeros(3))
    ema = {"b": np.full(2, 2.0)}
    assert list(extract_state_dict(state)) == ["b", "a"] and type(extract_state_dict(state)) is dict
    assert extract_state_dict({"state_dict": state, "epoch": 1})["a"] is state["a"]
    assert extract_state_dict({"model": state, "ema": ema})["b"] is state["b"]
    assert extract_state_dict({"model": state, "ema": ema}, key="ema")["b"] is ema["b"]
    assert extract_state_dict({"meta": 1, "model": {"module": state}})["a"] is state["a"]
    assert extract_state_dict({"ema": ema, "optimizer": {"state": {}}})["b"] is ema["b"]
    scalar = extract_state_dict({"n": np.int64(3)})["n"]
    assert isinstance(scalar, np.ndarray) and scalar.shape == () and scalar == 3


@pytest.mark.parametrize("obj, match", [
    ({"epoch": 3, "optimizer": {"lr": 0.1}}, "'epoch': int"),
    ({"w": np.ones(2), "epoch": 3}, "no state dict"),
    ({}, "no state dict"),
    ({"model": {0: np.ones(2)}}, "no state dict"),
    ([np.ones(2)], "is list"),
    (np.ones(2), "is ndarray"),
])
def test_extract_state_dict_explains_failures(obj, match):
    with pytest.raises(UnsupportedCheckpointError, match=match):
        extract_state_dict(obj)


def test_extract_state_dict_unknown_key():
    with pytest.raises(UnsupportedCheckpointError, match="no key 'ema'"):
        extract_state_dict({"model": {"w": np.ones(2)}}, key="ema")
    assert issubclass(UnsupportedCheckpointError, CorruptCheckpointError)
    assert issubclass(UnsafeCheckpointError, WeightsError)


# --------------------------------------------------------------------------- no torch, no plain pickle

def test_plain_pickle_is_never_used(tmp_path, monkeypatch):
    path = tmp_path / "net.pkl"
    mge_save(SmallNet().state_dict(), path)

    def forbidden(*args, **kwargs):
        raise AssertionError("plain pickle.load/loads called")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    load_checkpoint(path)
    load_checkpoint(TORCH_FIXTURES / "resnet_tiny.pth")


def test_torch_is_never_imported():
    code = """
import importlib.abc, sys
from pathlib import Path

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch must not be imported")

sys.meta_path.insert(0, NoTorch())
from megzoo.weights.serialization import load_checkpoint
for path in sorted(Path(sys.argv[1]).glob("*.p[tk][hl]")):
    if path.stem not in ("malicious", "legacy"):
        load_checkpoint(path)
assert "torch" not in sys.modules and not any(m.startswith("torch.") for m in sys.modules)
print("no torch")
"""
    result = subprocess.run([sys.executable, "-c", code, str(TORCH_FIXTURES)], capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "no torch" in result.stdout
