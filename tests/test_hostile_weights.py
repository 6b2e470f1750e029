"""Hostile weight files (issue 30, items 6, 8 and 9): zip bombs and other size tricks in a ``.pth``,
NaN/Inf weights, and state dicts of another dtype, through ``pretrained=``, ``megzoo predict
--weights`` and ``megzoo train --pretrained`` (one loader)."""
import struct
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import cv2
import megengine
import numpy as np
import pytest

import megzoo
from megzoo.cli import main
from megzoo.weights.convert import load_into, to_megzoo_layout
from megzoo.weights.errors import CorruptCheckpointError, UnsupportedCheckpointError, WeightsError
from megzoo.weights.serialization import load_checkpoint
from torch_pickle import integer, text, tuple_of

MiB = 1 << 20


# --------------------------------------------------------------------------- hand-made torch archives
# Protocol 2 opcodes: the records torch.save writes, for one storage "0" of float32 elements.

def _records(count: int, numel: int) -> bytes:
    """data.pkl of ``{"t0": ..., "t<count-1>": ...}``, each the whole float32 storage "0" of ``numel``."""
    storage = tuple_of([text("storage"), b"ctorch\nFloatStorage\n", text("0"), text("cpu"), integer(numel)]) + b"Q"
    tensor = (b"ctorch._utils\n_rebuild_tensor_v2\n"
              + tuple_of([storage, integer(0), tuple_of([integer(numel)]), tuple_of([integer(1)]), b"\x89",
                        b"ccollections\nOrderedDict\n)R"]) + b"R")
    return b"\x80\x02}(" + b"".join(text(f"t{i}") + tensor for i in range(count)) + b"u."


def _archive(path: Path, data_pkl: bytes, storage: bytes = b"", zeros: int = 0, method=zipfile.ZIP_STORED) -> Path:
    """A torch-style archive whose members are compressed with ``method``; the storage is
    ``storage`` then ``zeros`` zero bytes, streamed in 1 MiB chunks."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl, compress_type=method)
        archive.writestr("archive/byteorder", b"little")
        info = zipfile.ZipInfo("archive/data/0")
        info.compress_type = method
        with archive.open(info, "w") as f:
            f.write(storage)
            for _ in range(zeros // MiB):
                f.write(bytes(MiB))
    return path


def _peak(call) -> tuple:
    """(what ``call()`` returned or raised, peak bytes allocated in Python/numpy meanwhile)."""
    tracemalloc.start()
    try:
        try:
            result = call()
        except Exception as exc:  # noqa: BLE001 - returned for the test to check
            result = exc
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_zip_bomb_data_pkl_is_refused_before_it_is_inflated(tmp_path):
    """A 100 KB archive whose data.pkl inflates to 80 MiB: refused from the size it declares."""
    path = tmp_path / "bomb.pth"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("archive/data.pkl", "w") as f:
            for _ in range(80):
                f.write(bytes(MiB))
    assert path.stat().st_size < 200_000
    error, peak = _peak(lambda: load_checkpoint(path))
    assert isinstance(error, CorruptCheckpointError)
    assert str(error) == (f"{path}: member archive/data.pkl declares {80 * MiB} bytes uncompressed, over the limit "
                          f"of {64 * MiB} bytes for it; not read (a zip bomb?)")
    assert peak < 4 * MiB


def test_zip_bomb_storage_is_refused_before_it_is_inflated(tmp_path):
    """A storage of 64 MiB of deflated zeros (a 65 KB file): over 100x the archive's size + 16 MiB."""
    data_pkl = _records(1, 16 * MiB)
    path = _archive(tmp_path / "bomb.pth", data_pkl, zeros=64 * MiB, method=zipfile.ZIP_DEFLATED)
    size = path.stat().st_size
    error, peak = _peak(lambda: load_checkpoint(path))
    assert isinstance(error, CorruptCheckpointError)
    left = 16 * MiB + 100 * size - len(b"little") - len(data_pkl)
    assert str(error) == (f"{path}: member archive/data/0 declares {64 * MiB} bytes uncompressed, over the limit of "
                          f"{left} bytes left for an archive of {size} bytes (100x its size + 16 MiB); not read "
                          "(a zip bomb?)")
    assert peak < 4 * MiB


def _set_declared_size(path: Path, member: str, size: int, crc: int) -> None:
    """Rewrite the uncompressed size and CRC ``member`` declares, in its local and central headers."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info, central = archive.getinfo(member), archive.start_dir
    struct.pack_into("<II", data, info.header_offset + 14, crc, info.compress_size)
    struct.pack_into("<I", data, info.header_offset + 22, size)
    while data[central + 46:central + 46 + len(member)] != member.encode():  # the member's central entry
        central = data.index(b"PK\x01\x02", central + 4)
    struct.pack_into("<I", data, central + 16, crc)
    struct.pack_into("<I", data, central + 24, size)
    path.write_bytes(bytes(data))


def test_member_lying_about_its_size_is_read_only_as_far_as_it_declares(tmp_path):
    """The storage declares 16 bytes but its deflate stream holds 64 MiB: 16 bytes are read."""
    path = _archive(tmp_path / "liar.pth", _records(1, 4), zeros=64 * MiB, method=zipfile.ZIP_DEFLATED)
    _set_declared_size(path, "archive/data/0", 16, zlib.crc32(bytes(16)))
    state, peak = _peak(lambda: load_checkpoint(path))
    assert isinstance(state, dict) and state["t0"].tolist() == [0.0] * 4
    assert peak < 4 * MiB


def test_many_views_of_one_storage_are_refused(tmp_path):
    """300 tensors each viewing the whole 64 KiB storage would copy it 300 times: the copies may
    take 8x the storages' bytes + 16 MiB, so the 265th is refused."""
    numel = 16384
    path = _archive(tmp_path / "views.pth", _records(300, numel), storage=np.zeros(numel, "<f4").tobytes())
    error, peak = _peak(lambda: load_checkpoint(path))
    assert isinstance(error, UnsupportedCheckpointError)
    limit = 8 * numel * 4 + 16 * MiB
    assert str(error) == (f"{path}: tensor of size ({numel},) ({numel * 4} bytes) takes the tensors read beyond "
                          f"{limit} bytes (8x the {numel * 4} bytes of its storages + 16 MiB): many tensors view the "
                          "same storage; not read")
    assert peak < limit + 2 * MiB


def test_members_compressed_otherwise_than_deflate_are_refused(tmp_path):
    """bzip2 and lzma inflate a whole member in one call (unbounded); torch.save never writes them."""
    path = _archive(tmp_path / "bz2.pth", _records(1, 4), storage=bytes(16), method=zipfile.ZIP_BZIP2)
    with pytest.raises(UnsupportedCheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (f"{path}: member archive/data.pkl is compressed with method 12; only stored or "
                               "deflated members are read (torch.save stores them)")


# --------------------------------------------------------------------------- values of a state dict

@pytest.fixture(scope="module")
def model():
    """A resnet18 with 10 classes (tests may load finite weights into it)."""
    return megzoo.resnet18(num_classes=10)


@pytest.fixture(scope="module")
def state(model):
    """A finite resnet18 (10 classes) state dict, as numpy float32."""
    return {k: np.array(v) for k, v in model.state_dict().items()}


def _refused(call) -> str:
    """The message of the InvalidWeightsError ``call()`` raises."""
    with pytest.raises(WeightsError) as info:
        call()
    assert type(info.value).__name__ == "InvalidWeightsError"
    return str(info.value)


def _save(path: Path, state: dict) -> str:
    megengine.save(state, str(path))
    return str(path)


def _with_nan(state: dict, key: str, count: int = 3) -> dict:
    bad = {k: v.copy() for k, v in state.items()}
    bad[key].reshape(-1)[:count - 1] = np.nan
    bad[key].reshape(-1)[count - 1] = -np.inf
    return bad


def test_non_finite_weights_are_refused_naming_the_tensor(model, state, tmp_path):
    path = _save(tmp_path / "nan.pkl", _with_nan(_with_nan(state, "fc.weight"), "layer2.0.bn1.running_var", 1))
    assert _refused(lambda: megzoo.resnet18(num_classes=10, pretrained=path)) == (
        f"weights from {path}: tensor 'fc.weight' has 3 non-finite values (NaN/Inf) of 5120; also in 1 other "
        "tensor(s); refusing to load it (a diverged training run? use an earlier checkpoint)")
    # nothing is loaded into a model that gets refused weights
    model.load_state_dict(state)
    _refused(lambda: load_into(model, _with_nan(state, "conv1.weight"), "nan"))
    assert all(np.array_equal(np.array(v), state[k]) for k, v in model.state_dict().items())


def test_float64_beyond_float32_range_is_refused_as_non_finite(state, tmp_path):
    big = {k: v.astype(np.float64) for k, v in state.items()}
    big["layer1.0.conv1.weight"][0, 0, 0, :2] = 1e300
    path = _save(tmp_path / "big.pkl", big)
    assert _refused(lambda: megzoo.resnet18(num_classes=10, pretrained=path)) == (
        f"weights from {path}: tensor 'layer1.0.conv1.weight' has 2 non-finite values (NaN/Inf) of 36864 after "
        "conversion to float32 (values beyond its range); refusing to load it (a diverged training run? use an "
        "earlier checkpoint)")


def _images(root: Path) -> Path:
    image = np.full((16, 16, 3), 120, np.uint8)
    for split in ("train", "val"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            assert cv2.imwrite(str(root / split / name / "0.png"), image)
    return root


def test_cli_predict_and_train_refuse_non_finite_weights_in_one_line(state, tmp_path, capsys):
    path = _save(tmp_path / "nan.pkl", _with_nan(state, "layer1.0.conv1.weight"))
    data = _images(tmp_path / "data")
    expected = (f"weights from {path}: tensor 'layer1.0.conv1.weight' has 3 non-finite values (NaN/Inf) of 36864; "
                "refusing to load it (a diverged training run? use an earlier checkpoint)")
    code = main(["predict", str(data / "val" / "a" / "0.png"), "--model", "resnet18", "--weights", path,
                 "--num-classes", "10", "--device", "cpu"])
    assert (code, capsys.readouterr().err.strip().splitlines()[-1:]) == (2, [f"megzoo predict: error: {expected}"])
    out = tmp_path / "run"
    code = main(["train", "--data", str(data), "--model", "resnet18", "--pretrained", path, "--input-size", "16",
                 "--resize-size", "16", "--epochs", "1", "--batch-size", "2", "--workers", "0", "--no-progress",
                 "--no-plot", "--device", "cpu", "--output", str(out)])
    assert (code, capsys.readouterr().err.strip().splitlines()[-1:]) == (2, [f"megzoo train: error: {expected}"])
    assert not (out / "best.pkl").exists() and not (out / "last.pkl").exists()


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_other_float_precisions_are_converted_and_reported(state, tmp_path, dtype):
    path = _save(tmp_path / f"{dtype}.pkl", {k: v.astype(dtype) for k, v in state.items()})
    model = megzoo.resnet18(num_classes=10, pretrained=path)
    assert {np.dtype(p.dtype) for p in model.parameters()} == {np.dtype("float32")}
    report = model.load_report
    assert str(report).splitlines() == [
        f"weights from {path}: 102 loaded (102 converted to the model's dtype), 0 adapted, 0 re-initialised, 0 unused",
        f"  converted {dtype} -> float32: 102 tensors"]
    assert report.converted["fc.weight"] == f"{dtype} -> float32"
    expected = state["fc.weight"].astype(dtype).astype("float32")
    assert np.array_equal(np.array(model.state_dict()["fc.weight"]), expected)
    model.eval()
    logits = model(megengine.tensor(np.ones((1, 3, 32, 32), np.float32))).numpy()  # float16 failed here
    assert logits.dtype == np.float32 and logits.shape == (1, 10) and np.isfinite(logits).all()


def test_integer_weights_are_refused_naming_the_key(model, state, tmp_path):
    path = _save(tmp_path / "int32.pkl", {k: v.astype("int32") for k, v in state.items()})
    assert _refused(lambda: megzoo.resnet18(num_classes=10, pretrained=path)) == (
        f"weights from {path}: tensor 'bn1.bias' holds int32 values where resnet18 has float32 ones; refusing to "
        "load it (save the model's floating-point state dict)")
    # torchvision's int64 num_batches_tracked buffers are not weights: they still load (dropped)
    torch_style = {**state, "bn1.num_batches_tracked": np.array(7, np.int64),
                   "layer1.0.bn1.num_batches_tracked": np.array(7, np.int64)}
    report = load_into(model, to_megzoo_layout(torch_style, model, "torchvision"), "tv")
    assert (len(report.loaded), getattr(report, "converted", None), report.unused) == (102, {}, [])
