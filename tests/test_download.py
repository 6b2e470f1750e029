"""The download and cache layer (megzoo.weights.download / .cache) against a real local HTTP server."""
import hashlib
import io
import logging
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from http_server import FileServer, Mode, self_signed_cert, server_context
from megzoo.weights import download as download_module
from megzoo.weights.cache import (cache_root, evict, read_sidecar, sidecar_path, verify_cache, verify_file,
                                  weights_dir)
from megzoo.weights.download import apply_mirrors, download_file, fetch, mirror_rules
from megzoo.weights.errors import ChecksumError, DownloadError, OfflineError, WeightsError

DATA = random.Random(0).randbytes(200_000)
SHA = hashlib.sha256(DATA).hexdigest()
PATH = "/w/a.bin"
FAST = dict(progress=False, timeout=(2, 0.5), retries=3, backoff=0.01)  # seconds


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("MEGZOO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MEGZOO_OFFLINE", raising=False)
    monkeypatch.delenv("MEGZOO_MIRRORS", raising=False)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


@pytest.fixture
def sleeps(monkeypatch):
    """Backoff delays asked for, in seconds (nothing actually sleeps)."""
    delays = []
    monkeypatch.setattr(download_module, "_sleep", delays.append)
    return delays


@pytest.fixture
def server():
    with FileServer({PATH: DATA}) as srv:
        yield srv


def leftovers(directory: Path):
    """Temporary files (.part, .tmp) anywhere under ``directory``."""
    return sorted(p.name for p in Path(directory).rglob("*") if p.name.endswith((".part", ".tmp")))


def files_in(directory: Path):
    """Names of the files under ``directory`` except lock files."""
    return sorted(p.name for p in Path(directory).rglob("*") if p.is_file() and not p.name.endswith(".lock"))


# -- plain downloads ----------------------------------------------------------------------------------

def test_download_writes_file_and_records_sha256(server, tmp_path, sleeps):
    dest = tmp_path / "out" / "a.bin"
    assert download_file(server.url(PATH), dest, **FAST) == dest
    assert dest.read_bytes() == DATA
    assert sidecar_path(dest).read_text() == f"{SHA}  a.bin\n"
    assert files_in(tmp_path / "out") == ["a.bin", "a.bin.sha256"]
    assert server.ranges(PATH) == [None]
    assert server.requests[0].headers["Accept-Encoding"] == "identity"
    # a second call finds the verified file and does not download again
    download_file(server.url(PATH), dest, **FAST)
    assert len(server.requests) == 1
    assert sleeps == []


def test_known_sha256_prefix_and_size_are_accepted(server, tmp_path):
    dest = tmp_path / "a.bin"
    download_file(server.url(PATH), dest, sha256=SHA[:8].upper(), size=len(DATA), **FAST)
    assert dest.read_bytes() == DATA
    assert read_sidecar(dest) == SHA


def test_truncated_body_is_resumed_with_range(server, tmp_path, sleeps):
    server.set_mode(PATH, Mode.truncate(70_000), times=1)
    dest = tmp_path / "a.bin"
    download_file(server.url(PATH), dest, sha256=SHA, **FAST)
    assert dest.read_bytes() == DATA
    assert server.ranges(PATH) == [None, "bytes=70000-"]
    server.wait_idle()
    assert [r.bytes_sent for r in server.requests] == [70_000, 130_000]
    assert sleeps == [0.01]
    assert leftovers(tmp_path) == []


def test_body_shorter_than_announced_is_never_accepted(server, tmp_path, sleeps):
    server.set_mode(PATH, Mode.truncate(70_000))
    dest = tmp_path / "a.bin"
    with pytest.raises(DownloadError) as info:
        download_file(server.url(PATH), dest, **dict(FAST, retries=0))
    assert server.url(PATH) in str(info.value)
    assert "after 70000 of 200000 bytes" in str(info.value)
    assert files_in(tmp_path) == []
    assert len(server.requests) == 1


def test_each_retry_that_gets_further_restores_the_retry_budget(server, tmp_path, sleeps):
    server.set_mode(PATH, Mode.truncate(50_000))  # every response stops after 50 kB
    dest = tmp_path / "a.bin"
    download_file(server.url(PATH), dest, **dict(FAST, retries=1))
    assert dest.read_bytes() == DATA
    assert server.ranges(PATH) == [None, "bytes=50000-", "bytes=100000-", "bytes=150000-"]
    assert sleeps == [0.01, 0.01, 0.01]


def test_existing_part_file_is_resumed(server, tmp_path):
    dest = tmp_path / "a.bin"
    (tmp_path / "a.bin.part").write_bytes(DATA[:12_345])
    download_file(server.url(PATH), dest, sha256=SHA, **FAST)
    assert dest.read_bytes() == DATA
    assert server.ranges(PATH) == ["bytes=12345-"]
    server.wait_idle()
    assert server.requests[0].status == 206
    assert server.requests[0].bytes_sent == len(DATA) - 12_345
    assert leftovers(tmp_path) == []


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.set_mode(PATH, Mode.ignore_range())
    dest = tmp_path / "a.bin"
    (tmp_path / "a.bin.part").write_bytes(b"x" * 5_000)  # not even the right bytes
    download_file(server.url(PATH), dest, **FAST)
    assert dest.read_bytes() == DATA
    assert server.ranges(PATH) == ["bytes=5000-"]
    server.wait_idle()
    assert server.full_transfers(PATH) == 1


def test_unsatisfiable_range_416_restarts_from_zero(server, tmp_path, sleeps):
    dest = tmp_path / "a.bin"
    (tmp_path / "a.bin.part").write_bytes(DATA + b"0123456789")
    download_file(server.url(PATH), dest, **FAST)
    assert dest.read_bytes() == DATA
    assert server.ranges(PATH) == ["bytes=200010-", None]
    assert sleeps == []


def test_complete_part_file_is_finished_by_416(server, tmp_path):
    dest = tmp_path / "a.bin"
    (tmp_path / "a.bin.part").write_bytes(DATA)
    download_file(server.url(PATH), dest, sha256=SHA, **FAST)
    assert dest.read_bytes() == DATA
    assert server.ranges(PATH) == ["bytes=200000-"]
    assert server.full_transfers(PATH) == 0


def test_resumed_file_failing_its_hash_is_downloaded_again_whole(server, tmp_path):
    dest = tmp_path / "a.bin"
    (tmp_path / "a.bin.part").write_bytes(b"!" + DATA[1:100_000])  # first byte damaged
    download_file(server.url(PATH), dest, sha256=SHA, **FAST)
    assert dest.read_bytes() == DATA
    assert server.ranges(PATH) == ["bytes=100000-", None]


def test_interrupted_download_keeps_part_file_for_the_next_run(server, tmp_path, monkeypatch):
    server.set_mode(PATH, Mode.truncate(70_000), times=1)

    def interrupt(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(download_module, "_sleep", interrupt)
    dest = tmp_path / "a.bin"
    with pytest.raises(KeyboardInterrupt):
        download_file(server.url(PATH), dest, **FAST)
    assert (tmp_path / "a.bin.part").stat().st_size == 70_000
    assert not dest.exists()
    download_file(server.url(PATH), dest, **FAST)
    assert dest.read_bytes() == DATA
    assert server.ranges(PATH) == [None, "bytes=70000-"]


# -- HTTP errors, stalls --------------------------------------------------------------------------------

def test_server_errors_are_retried_with_exponential_backoff(server, tmp_path, sleeps):
    server.set_mode(PATH, Mode.error(500), times=2)
    server.set_mode(PATH, Mode.error(503), times=1)
    dest = tmp_path / "a.bin"
    download_file(server.url(PATH), dest, **FAST)
    assert dest.read_bytes() == DATA
    assert [r.status for r in server.requests] == [500, 500, 503, 200]
    assert sleeps == [0.01, 0.02, 0.04]


def test_server_errors_give_up_after_the_retries(server, tmp_path, sleeps):
    server.set_mode(PATH, Mode.error(500))
    dest = tmp_path / "a.bin"
    with pytest.raises(DownloadError) as info:
        download_file(server.url(PATH), dest, **dict(FAST, retries=2))
    message = str(info.value)
    assert server.url(PATH) in message and "HTTP 500" in message and "3 attempt" in message
    assert "MEGZOO_MIRRORS" in message
    assert info.value.url == server.url(PATH)
    assert len(server.requests) == 3
    assert files_in(tmp_path) == []


def test_refused_connections_are_retried_then_reported(tmp_path, sleeps):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/a.bin"
    with pytest.raises(DownloadError) as info:
        download_file(url, tmp_path / "a.bin", **dict(FAST, retries=2))
    assert url in str(info.value) and "3 attempt" in str(info.value)
    assert sleeps == [0.01, 0.02]
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("code", [404, 403])
def test_client_errors_fail_at_once(server, tmp_path, sleeps, code):
    server.set_mode(PATH, Mode.error(code))
    dest = tmp_path / "a.bin"
    with pytest.raises(DownloadError) as info:
        download_file(server.url(PATH), dest, **FAST)
    assert f"{server.url(PATH)} answered HTTP {code}" in str(info.value)
    assert "not retried" in str(info.value)
    assert len(server.requests) == 1 and sleeps == []
    assert files_in(tmp_path) == []


def test_stall_before_the_response_times_out(server, tmp_path, sleeps):
    server.set_mode(PATH, Mode.stalled(10))
    dest = tmp_path / "a.bin"
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        download_file(server.url(PATH), dest, **dict(FAST, retries=1))
    assert time.monotonic() - start < 3  # two 0.5 s read timeouts, not the 10 s stall
    assert "timed out" in str(info.value) and server.url(PATH) in str(info.value)
    assert len(server.requests) == 2
    assert files_in(tmp_path) == []


def test_stall_mid_body_times_out_and_resumes(server, tmp_path, sleeps):
    server.set_mode(PATH, Mode.stalled(10, after=50_000))
    dest = tmp_path / "a.bin"
    download_file(server.url(PATH), dest, sha256=SHA, **dict(FAST, retries=1))
    assert dest.read_bytes() == DATA
    assert server.ranges(PATH) == [None, "bytes=50000-", "bytes=100000-", "bytes=150000-"]


# -- length and hash checks ------------------------------------------------------------------------------

def test_missing_content_length_is_accepted_and_its_sha256_recorded(server, tmp_path, caplog):
    server.set_mode(PATH, Mode.no_length())
    dest = tmp_path / "a.bin"
    with caplog.at_level(logging.INFO, logger="megzoo.weights"):
        download_file(server.url(PATH), dest, **FAST)
    assert dest.read_bytes() == DATA
    assert read_sidecar(dest) == SHA
    assert "could not be checked" in caplog.text
    server.wait_idle()
    assert "Content-Length" not in server.requests[0].response_headers
    assert server.requests[0].response_headers["Connection"] == "close"


def test_missing_content_length_with_known_size_detects_a_short_body(server, tmp_path, sleeps):
    server.set_mode(PATH, Mode(send_length=False, truncate_after=60_000), times=1)
    dest = tmp_path / "a.bin"
    download_file(server.url(PATH), dest, size=len(DATA), **FAST)
    assert dest.read_bytes() == DATA
    assert server.ranges(PATH) == [None, "bytes=60000-"]


def test_wrong_bytes_with_known_sha256_fail_and_leave_nothing(server, tmp_path, sleeps):
    server.set_mode(PATH, Mode.wrong_bytes())
    with pytest.raises(ChecksumError) as info:
        fetch([server.url(PATH)], "a.bin", sha256=SHA, **FAST)
    message = str(info.value)
    assert server.url(PATH) in message and "a.bin" in message and "discarded" in message
    assert info.value.expected == SHA
    assert len(server.requests) == 1  # wrong bytes are not retried
    assert files_in(weights_dir()) == []


def test_announced_length_differing_from_known_size_fails_at_once(server, tmp_path):
    dest = tmp_path / "a.bin"
    with pytest.raises(ChecksumError) as info:
        download_file(server.url(PATH), dest, size=len(DATA) + 1, **FAST)
    assert f"announces {len(DATA)} bytes" in str(info.value)
    assert len(server.requests) == 1
    assert files_in(tmp_path) == []


# -- fetch and the cache ------------------------------------------------------------------------------

def test_fetch_caches_and_detects_a_tampered_file(server, tmp_path, caplog):
    path = fetch([server.url(PATH)], "a.bin", **FAST)
    assert path == tmp_path / "home" / "weights" / "a.bin" == weights_dir() / "a.bin"
    assert path.read_bytes() == DATA and read_sidecar(path) == SHA
    assert fetch([server.url(PATH)], "a.bin", **FAST) == path
    assert len(server.requests) == 1  # served from the cache
    path.write_bytes(DATA[:-1] + b"?")
    with caplog.at_level(logging.WARNING, logger="megzoo.weights"):
        assert fetch([server.url(PATH)], "a.bin", **FAST) == path
    assert f"removed {path}" in caplog.text and "sha256" in caplog.text
    assert path.read_bytes() == DATA
    assert server.ranges(PATH) == [None, None]


def test_fetch_replaces_a_cached_file_failing_the_known_sha256(server):
    path = weights_dir() / "a.bin"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not the weights")
    assert fetch([server.url(PATH)], "a.bin", sha256=SHA, **FAST) == path
    assert path.read_bytes() == DATA
    assert len(server.requests) == 1


def test_fetch_accepts_a_placed_file_and_records_its_sha256(server):
    path = weights_dir() / "sub" / "a.bin"
    path.parent.mkdir(parents=True)
    path.write_bytes(DATA)
    assert fetch([server.url(PATH)], "sub/a.bin", **FAST) == path
    assert read_sidecar(path) == SHA
    assert server.requests == []


def test_fetch_rejects_file_names_escaping_the_cache(server):
    for bad in ("../a.bin", "/etc/a.bin", ""):
        with pytest.raises(ValueError):
            fetch([server.url(PATH)], bad, **FAST)


def test_fetch_tries_the_next_url(server, tmp_path, caplog):
    server.add("/b.bin", DATA)
    server.set_mode(PATH, Mode.error(404))
    path = fetch([server.url(PATH), server.url("/b.bin")], "a.bin", sha256=SHA, **FAST)
    assert path.read_bytes() == DATA
    assert [r.path for r in server.requests] == [PATH, "/b.bin"]


def test_fetch_failing_everywhere_lists_every_source(server, tmp_path):
    server.set_mode(PATH, Mode.error(404))
    missing = tmp_path / "nowhere.bin"
    with pytest.raises(DownloadError) as info:
        fetch([server.url(PATH), str(missing)], "a.bin", **FAST)
    message = str(info.value)
    assert server.url(PATH) in message and str(missing) in message
    assert str(weights_dir() / "a.bin") in message
    assert files_in(weights_dir()) == []


def test_verify_file_removes_a_tampered_file_and_says_so(server, tmp_path):
    dest = download_file(server.url(PATH), tmp_path / "a.bin", **FAST)
    assert verify_file(dest) == SHA
    dest.write_bytes(b"tampered")
    with pytest.raises(ChecksumError) as info:
        verify_file(dest)
    assert str(dest) in str(info.value) and "removed" in str(info.value)
    assert "a.bin.sha256 recorded" in str(info.value)
    assert not dest.exists() and not sidecar_path(dest).exists()


def test_verify_file_with_explicit_hash_and_size(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(DATA)
    assert verify_file(path, SHA, size=len(DATA)) == SHA
    assert read_sidecar(path) == SHA
    with pytest.raises(ChecksumError, match="bytes, expected"):
        verify_file(path, SHA, size=1)
    assert not path.exists()
    path.write_bytes(DATA)
    with pytest.raises(ChecksumError, match="expected 00000000"):
        verify_file(path, "00000000")
    assert not path.exists() and not sidecar_path(path).exists()
    with pytest.raises(ValueError):
        verify_file(path, "not-hex")


def test_evict_removes_file_and_sidecar_and_warns(tmp_path, caplog):
    path = tmp_path / "a.bin"
    path.write_bytes(DATA)
    verify_file(path)  # records the sidecar
    with caplog.at_level(logging.WARNING, logger="megzoo.weights"):
        evict(path, "it does not deserialise")
    assert not path.exists() and not sidecar_path(path).exists()
    assert str(path) in caplog.text and "it does not deserialise" in caplog.text


def test_verify_cache_reports_and_removes_bad_files(server):
    good = fetch([server.url(PATH)], "good.bin", **FAST)
    bad = fetch([server.url(PATH)], "bad.bin", **FAST)
    bad.write_bytes(b"bit rot")
    unchecked = weights_dir() / "placed.bin"
    unchecked.write_bytes(b"no sidecar")
    (weights_dir() / "stray.bin.part").write_bytes(b"in progress")
    results = {r.path.name: r for r in verify_cache()}
    assert sorted(results) == ["bad.bin", "good.bin", "placed.bin"]
    assert results["good.bin"].status == "ok" and results["good.bin"].checked
    assert results["bad.bin"].status == "bad" and "sha256" in results["bad.bin"].reason
    assert results["placed.bin"].status == "unchecked" and not results["placed.bin"].checked
    assert not results["placed.bin"].ok
    assert good.exists() and unchecked.exists()
    assert not bad.exists() and not sidecar_path(bad).exists()
    assert verify_cache(weights_dir() / "missing") == []


def test_cache_root_follows_megzoo_home(monkeypatch, tmp_path):
    assert cache_root() == tmp_path / "home"
    assert weights_dir() == tmp_path / "home" / "weights"
    monkeypatch.delenv("MEGZOO_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert cache_root() == tmp_path / "user" / ".cache" / "megzoo"


# -- offline mode, mirrors, local sources -------------------------------------------------------------

def test_offline_mode_never_connects_and_says_where_to_put_the_file(server, monkeypatch):
    monkeypatch.setenv("MEGZOO_OFFLINE", "1")
    with pytest.raises(OfflineError) as info:
        fetch([server.url(PATH)], "a.bin", name="resnet50.tv_in1k", **FAST)
    message = str(info.value)
    target = weights_dir() / "a.bin"
    assert f"Place the file at {target}" in message
    assert server.url(PATH) in message
    assert "megzoo download resnet50.tv_in1k --to DIR" in message
    assert info.value.path == target
    with pytest.raises(OfflineError):
        download_file(server.url(PATH), target, **FAST)
    assert server.requests == []
    # once placed there, the file is used
    target.write_bytes(DATA)
    assert fetch([server.url(PATH)], "a.bin", sha256=SHA, **FAST) == target
    assert server.requests == []


def test_offline_mode_reports_a_cached_file_failing_its_check(server, monkeypatch):
    path = fetch([server.url(PATH)], "a.bin", **FAST)
    path.write_bytes(b"damaged")
    monkeypatch.setenv("MEGZOO_OFFLINE", "yes")
    with pytest.raises(OfflineError, match="failed its check and was removed"):
        fetch([server.url(PATH)], "a.bin", **FAST)
    assert not path.exists()
    assert len(server.requests) == 1


def test_offline_mode_off_values(monkeypatch):
    for value, offline in (("", False), ("0", False), ("false", False), ("off", False), ("1", True), ("on", True)):
        monkeypatch.setenv("MEGZOO_OFFLINE", value)
        assert download_module.is_offline() is offline


def test_mirrors_rewrite_urls_to_the_test_server(server, monkeypatch):
    server.add("/mge/models/weights/a.pkl", DATA)
    monkeypatch.setenv("MEGZOO_MIRRORS", f"https://download.pytorch.org/models/=/nowhere/\n"
                                         f"https://data.megengine.org.cn/={server.url('/mge/')}")
    path = fetch(["https://data.megengine.org.cn/models/weights/a.pkl"], "a.pkl", sha256=SHA, **FAST)
    assert path.read_bytes() == DATA
    assert [r.path for r in server.requests] == ["/mge/models/weights/a.pkl"]


def test_mirror_rules_format():
    rules = mirror_rules(" https://a.org/=https://m.org/a/ ; https://a.org/deep/=file:///srv/deep/\n\n"
                         "https://b.org/=https://m.org/b?token=x=y/;")
    assert rules[0] == ("https://a.org/deep/", "file:///srv/deep/")  # longest prefix first
    assert apply_mirrors("https://a.org/deep/w.pkl", rules) == "file:///srv/deep/w.pkl"
    assert apply_mirrors("https://a.org/w.pkl", rules) == "https://m.org/a/w.pkl"
    assert apply_mirrors("https://b.org/w.pkl", rules) == "https://m.org/b?token=x=y/w.pkl"
    assert apply_mirrors("https://c.org/w.pkl", rules) == "https://c.org/w.pkl"
    assert mirror_rules("") == []
    with pytest.raises(WeightsError, match="PREFIX=REPLACEMENT"):
        mirror_rules("https://a.org/")


def test_file_url_and_plain_path_sources(tmp_path, monkeypatch):
    source = tmp_path / "src" / "w.bin"
    source.parent.mkdir()
    source.write_bytes(DATA)
    path = fetch([source.as_uri()], "one.bin", sha256=SHA, **FAST)
    assert path.read_bytes() == DATA and read_sidecar(path) == SHA
    assert fetch([str(source)], "two.bin", **FAST).read_bytes() == DATA
    with pytest.raises(ChecksumError):
        fetch([str(source)], "three.bin", sha256="0" * 64, **FAST)
    assert source.read_bytes() == DATA  # the source is never touched
    with pytest.raises(DownloadError, match="no such file"):
        fetch([(tmp_path / "missing.bin").as_uri()], "four.bin", **FAST)
    assert files_in(weights_dir()) == ["one.bin", "one.bin.sha256", "two.bin", "two.bin.sha256"]


def test_file_mirror_works_offline(tmp_path, monkeypatch):
    mirror = tmp_path / "torch"
    mirror.mkdir()
    (mirror / "resnet50-0676ba61.pth").write_bytes(DATA)
    monkeypatch.setenv("MEGZOO_MIRRORS", f"https://download.pytorch.org/models/={mirror.as_uri()}/")
    monkeypatch.setenv("MEGZOO_OFFLINE", "1")
    path = fetch(["https://download.pytorch.org/models/resnet50-0676ba61.pth"], "resnet50-0676ba61.pth", **FAST)
    assert path.read_bytes() == DATA


# -- progress, HTTPS, concurrency ---------------------------------------------------------------------------

def test_progress_bar_only_on_a_terminal(server, tmp_path, monkeypatch, capfd):
    download_file(server.url(PATH), tmp_path / "a.bin", **dict(FAST, progress=True))
    assert capfd.readouterr().err == ""  # stderr is not a terminal here

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    download_file(server.url(PATH), tmp_path / "b.bin", **dict(FAST, progress=True))
    assert "b.bin" in terminal.getvalue()
    download_file(server.url(PATH), tmp_path / "c.bin", **FAST)  # progress=False
    assert "c.bin" not in terminal.getvalue()


def test_https_with_a_trusted_self_signed_certificate(tmp_path, monkeypatch, sleeps):
    try:
        cert, key = self_signed_cert(tmp_path)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot make a certificate: {exc}")
    with FileServer({PATH: DATA}, ssl_context=server_context(cert, key)) as server:
        assert server.url(PATH).startswith("https://127.0.0.1:")
        with pytest.raises(DownloadError, match="not trusted"):
            download_file(server.url(PATH), tmp_path / "a.bin", **FAST)
        assert server.requests == [] and sleeps == []
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
        server.set_mode(PATH, Mode.truncate(70_000), times=1)
        download_file(server.url(PATH), tmp_path / "a.bin", sha256=SHA, **FAST)
        assert (tmp_path / "a.bin").read_bytes() == DATA
        assert server.ranges(PATH) == [None, "bytes=70000-"]


# A child process fetching one file. It imports megzoo.weights.download without running the
# package __init__ files (they load MegEngine, seconds per process), which the download layer does not need.
CHILD = r"""
import logging, sys, time, types
from pathlib import Path
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
for package in ("megzoo", "megzoo.weights"):
    sys.modules[package] = types.ModuleType(package)
    sys.modules[package].__path__ = [package.replace(".", "/")]
from megzoo.weights.download import fetch
ready, go, url = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
ready.touch()
deadline = time.monotonic() + 60
while not go.exists():
    if time.monotonic() > deadline:
        sys.exit("no go signal")
    time.sleep(0.005)
print(fetch([url], "shared.bin", progress=False))
"""


def test_two_processes_download_the_file_once(server, tmp_path):
    # the first transfer stops halfway until the other process is seen waiting for the lock
    server.set_mode(PATH, Mode.stalled(30, after=100_000))
    go = tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(2)]
    root = Path(__file__).resolve().parents[1]
    children = [subprocess.Popen([sys.executable, "-c", CHILD, str(r), str(go), server.url(PATH)], cwd=root,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in ready]
    errors = [[] for _ in children]
    readers = [threading.Thread(target=lambda c=c, lines=lines: lines.extend(c.stderr), daemon=True)
               for c, lines in zip(children, errors)]
    for reader in readers:
        reader.start()

    def wait_until(condition, what):
        deadline = time.monotonic() + 60
        while not condition():
            assert time.monotonic() < deadline, f"{what}: {errors}"
            assert all(c.poll() is None for c in children), f"a child ended early: {errors}"
            time.sleep(0.01)

    try:
        wait_until(lambda: all(r.exists() for r in ready), "children did not start")
        go.touch()  # both fetch at once
        wait_until(lambda: any("waiting for another process" in line for lines in errors for line in lines),
                   "no child waited for the lock")
        assert server.wait_stalled(timeout=30)
        server.release_stalls()
        for child in children:
            child.wait(timeout=60)
        outputs = [c.stdout.read() for c in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    for reader in readers:
        reader.join(timeout=5)
    assert [c.returncode for c in children] == [0, 0], errors
    path = weights_dir() / "shared.bin"
    assert [out.strip() for out in outputs] == [str(path)] * 2
    assert path.read_bytes() == DATA and read_sidecar(path) == SHA
    server.wait_idle()
    assert len(server.requests) == 1 and server.full_transfers(PATH) == 1
    assert sum(any("waiting for another process" in line for line in lines) for lines in errors) == 1
    assert leftovers(weights_dir()) == []
    assert sorted(p.name for p in weights_dir().iterdir()) == ["shared.bin", "shared.bin.sha256"]  # no lock left


def test_no_lock_file_is_left_for_any_url_tried(server, tmp_path):
    server.add("/b.bin", DATA)
    server.set_mode(PATH, Mode.error(404))
    fetch([server.url(PATH), server.url("/b.bin")], "a.bin", **FAST)
    with pytest.raises(DownloadError):
        fetch([server.url(PATH)], "c.bin", **FAST)
    download_file(server.url("/b.bin"), tmp_path / "out" / "d.bin", **FAST)
    assert [(r.path.name, r.ok) for r in verify_cache()] == [("a.bin", True)]
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.bin", "a.bin.sha256", "d.bin",
                                                                          "d.bin.sha256"]


# A child whose files may not grow past 100 kB (RLIMIT_FSIZE): a write error in the middle of a download.
CHILD_FULL = r"""
import resource, signal, sys, types
for package in ("megzoo", "megzoo.weights"):
    sys.modules[package] = types.ModuleType(package)
    sys.modules[package].__path__ = [package.replace(".", "/")]
from megzoo.weights.download import fetch
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
try:
    fetch([sys.argv[1]], "a.bin", progress=False, retries=0)
except OSError as exc:
    print(f"{type(exc).__name__}: {exc}")
"""


def test_a_write_error_names_the_file_and_leaves_nothing(server):
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", CHILD_FULL, server.url(PATH)], cwd=root, capture_output=True,
                          text=True, timeout=60)
    part = weights_dir() / "a.bin.part"
    assert done.stdout == f"OSError: [Errno 27] File too large: '{part}'\n", done.stderr
    assert list(weights_dir().iterdir()) == []


# -- the test server itself ---------------------------------------------------------------------------------

def test_file_server_ranges_and_head(server):
    import requests

    def get(rng):
        return requests.get(server.url(PATH), headers={"Range": rng} if rng else {}, timeout=5)

    assert get("bytes=10-19").content == DATA[10:20]
    response = get("bytes=-100")
    assert response.status_code == 206 and response.content == DATA[-100:]
    assert response.headers["Content-Range"] == f"bytes {len(DATA) - 100}-{len(DATA) - 1}/{len(DATA)}"
    response = get(f"bytes={len(DATA)}-")
    assert response.status_code == 416 and response.headers["Content-Range"] == f"bytes */{len(DATA)}"
    head = requests.head(server.url(PATH), timeout=5)
    assert head.status_code == 200 and head.headers["Content-Length"] == str(len(DATA))
    assert requests.get(server.url("/missing"), timeout=5).status_code == 404
    server.set_mode(PATH, Mode.wrong_bytes(), times=1)
    assert requests.get(server.url(PATH), timeout=5).content != DATA
    assert requests.get(server.url(PATH), timeout=5).content == DATA
