"""``pretrained=`` end to end: real HTTP server on 127.0.0.1, megzoo's cache, safe loading, recovery."""
import io
import os
import pickle
import zipfile

import megengine
import numpy as np
import pytest

import megzoo
from megzoo.weights import WeightsError
from megzoo.weights.errors import ChecksumError, OfflineError, UnsafeCheckpointError
from http_server import FileServer, Mode

MGE_FILE = "resnet18_naiveaug_70312_78a63ca6.pkl"
MGE_PATH = "/mge/" + MGE_FILE


def _state(model, seed):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(0, 0.1, v.shape).astype(np.float32) for k, v in model.state_dict().items()}


def _pickled(obj) -> bytes:
    buffer = io.BytesIO()
    megengine.save(obj, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def resnet18_state():
    return _state(megzoo.resnet18(), seed=1)


@pytest.fixture
def served(resnet18_state, tmp_path, monkeypatch):
    """A server holding the official resnet18 file name; megzoo's MegEngine host mirrored to it."""
    with FileServer({MGE_PATH: _pickled(resnet18_state)}) as server:
        monkeypatch.setenv("MEGZOO_HOME", str(tmp_path / "home"))
        monkeypatch.setenv("MEGZOO_MIRRORS", f"https://data.megengine.org.cn/models/weights/={server.url('/mge/')}")
        monkeypatch.delenv("MEGZOO_OFFLINE", raising=False)
        yield server


def _cached(tmp_path):
    return tmp_path / "home" / "weights" / MGE_FILE


def _assert_loaded(model, state):
    got = model.state_dict()
    assert all(np.array_equal(got[k], v) for k, v in state.items())


def test_pretrained_true_downloads_verifies_caches_and_records_the_hash(served, resnet18_state, tmp_path):
    model = megzoo.resnet18(pretrained=True, progress=False)
    _assert_loaded(model, resnet18_state)
    cached = _cached(tmp_path)
    assert cached.read_bytes() == served.files[MGE_PATH]
    import hashlib

    recorded = (cached.parent / (MGE_FILE + ".sha256")).read_text().split()[0]
    assert recorded == hashlib.sha256(cached.read_bytes()).hexdigest()
    assert model.load_report.source == "resnet18.megengine" and model.load_report.file == str(cached)
    # second build: from the cache, no new request
    megzoo.resnet18(pretrained=True, progress=False)
    assert len(served.requests_for(MGE_PATH)) == 1
    assert not [p for p in cached.parent.iterdir() if p.name.endswith(".part")]


def test_truncated_download_is_resumed_and_never_left_in_the_cache(served, resnet18_state, tmp_path):
    served.set_mode(MGE_PATH, Mode.truncate(100_000), times=1)
    model = megzoo.resnet18(pretrained=True, progress=False)
    _assert_loaded(model, resnet18_state)
    assert served.ranges(MGE_PATH) == [None, "bytes=100000-"]
    names = {p.name for p in _cached(tmp_path).parent.iterdir()}
    assert names - {MGE_FILE + ".lock"} == {MGE_FILE, MGE_FILE + ".sha256"}  # no .part left behind


def test_fine_tuning_download_new_head(served, resnet18_state):
    model = megzoo.resnet18(pretrained=True, num_classes=10, progress=False)
    assert sorted(model.load_report.reinitialized) == ["fc.bias", "fc.weight"]
    got = model.state_dict()
    assert all(np.array_equal(got[k], v) for k, v in resnet18_state.items() if not k.startswith("fc."))


def test_tampered_cache_file_is_detected_removed_and_fetched_again(served, resnet18_state, tmp_path, caplog):
    megzoo.resnet18(pretrained=True, progress=False)
    cached = _cached(tmp_path)
    data = bytearray(cached.read_bytes())
    data[-200] ^= 0xFF
    cached.write_bytes(bytes(data))
    model = megzoo.resnet18(pretrained=True, progress=False)  # detected, reported, removed, fetched anew
    assert f"removed {cached} from the cache: failed its check: its sha256 is" in caplog.text
    _assert_loaded(model, resnet18_state)
    assert len(served.requests_for(MGE_PATH)) == 2
    assert cached.read_bytes() == served.files[MGE_PATH]


def test_undeserialisable_download_is_removed_and_fetched_once_more(served, resnet18_state, tmp_path, caplog):
    served.set_mode(MGE_PATH, Mode.wrong_bytes(), times=1)  # unknown hash: the bad bytes are accepted...
    model = megzoo.resnet18(pretrained=True, progress=False)  # ...fail to deserialise, are removed, refetched
    _assert_loaded(model, resnet18_state)
    assert len(served.requests_for(MGE_PATH)) == 2
    assert f"removed {_cached(tmp_path)} from the cache" in caplog.text


def test_file_of_another_architecture_is_removed_and_reported(served, tmp_path):
    served.files[MGE_PATH] = _pickled(_state(megzoo.resnet34(), seed=2))
    with pytest.raises(WeightsError, match=r"resnet18.megengine: the downloaded file is still unusable after a fresh "
                                           r"download .*do not fit resnet18.*it was removed from the cache"):
        megzoo.resnet18(pretrained=True, progress=False)
    assert not _cached(tmp_path).exists()
    assert len(served.requests_for(MGE_PATH)) == 2


def test_download_that_would_run_a_command_is_refused_and_removed(served, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    served.files[MGE_PATH] = pickle.dumps({"conv1.weight": Exploit()})
    with pytest.raises(UnsafeCheckpointError, match=r"system"):
        megzoo.resnet18(pretrained=True, progress=False)
    assert not marker.exists()
    assert not _cached(tmp_path).exists()


def test_offline_mode_names_the_file_and_where_to_put_it(served, tmp_path, monkeypatch):
    monkeypatch.setenv("MEGZOO_OFFLINE", "1")
    with pytest.raises(OfflineError) as info:
        megzoo.resnet18(pretrained=True, progress=False)
    message = str(info.value)
    assert str(_cached(tmp_path)) in message
    assert "https://data.megengine.org.cn/models/weights/" + MGE_FILE in message
    assert "megzoo download resnet18.megengine --to" in message
    assert served.requests == []


def test_url_and_torchvision_hash_prefix(served, tmp_path):
    """A torchvision file is checked against the 8-hex sha256 prefix in its name."""
    import hashlib

    from megzoo.weights import catalog

    w = catalog.WEIGHTS["resnet18.tv_in1k"]
    body = _torch_zip_state_dict_bytes()
    served.add("/tv/" + w.filename, body)
    os.environ["MEGZOO_MIRRORS"] += f";https://download.pytorch.org/models/={served.url('/tv/')}"
    assert not hashlib.sha256(body).hexdigest().startswith(w.sha256_prefix)
    actual = hashlib.sha256(body).hexdigest()
    with pytest.raises(ChecksumError, match=rf"sha256 is {actual}, expected {w.sha256_prefix}"):
        megzoo.resnet18(pretrained="tv_in1k", progress=False)
    assert not (tmp_path / "home" / "weights" / w.filename).exists()


def _torch_zip_state_dict_bytes() -> bytes:
    """A small valid-looking zip (content irrelevant: the hash check comes first)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("archive/data.pkl", b"not used")
    return buffer.getvalue()


def test_pretrained_url_is_cached_under_a_collision_free_name(served, resnet18_state, tmp_path):
    url = served.url(MGE_PATH)
    model = megzoo.resnet18(pretrained=url, progress=False)
    _assert_loaded(model, resnet18_state)
    files = [p.name for p in (tmp_path / "home" / "weights").iterdir() if p.name.endswith(".pkl")]
    assert len(files) == 1 and files[0].startswith("url-") and files[0].endswith("-" + MGE_FILE)


def test_cli_download_to_dir_then_offline_use(served, resnet18_state, tmp_path, monkeypatch, capsys):
    from megzoo.cli import main

    target = tmp_path / "carry"
    assert main(["download", "resnet18", "--to", str(target), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"resnet18.megengine: {target / 'weights' / MGE_FILE}" in out
    assert "set MEGZOO_HOME to it there" in out
    monkeypatch.setenv("MEGZOO_HOME", str(target))
    monkeypatch.setenv("MEGZOO_OFFLINE", "1")
    model = megzoo.resnet18(pretrained=True, progress=False)
    _assert_loaded(model, resnet18_state)
    assert main(["verify"]) == 0
    assert "1 files checked, 0 bad" in capsys.readouterr().out
    (target / "weights" / MGE_FILE).write_bytes(b"garbage")
    assert main(["verify"]) == 1
    assert "BAD" in capsys.readouterr().out and not (target / "weights" / MGE_FILE).exists()
