"""megzoo.host: the cache root, usable CPUs, the CPU's identity and atomic writes."""
import os

import pytest

from megzoo import host


def test_megzoo_home(monkeypatch, tmp_path):
    monkeypatch.setenv("MEGZOO_HOME", str(tmp_path / "h"))
    assert host.megzoo_home() == tmp_path / "h"
    monkeypatch.setenv("MEGZOO_HOME", "  ")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert host.megzoo_home() == tmp_path / ".cache" / "megzoo"


def test_usable_cpus_follows_affinity(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3, 5, 7})
    assert host.usable_cpus() == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set())
    assert host.usable_cpus() == 1


def test_cpuinfo_reads_the_first_processor(tmp_path):
    text = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n"
            "stepping\t: 1\nflags\t\t: fpu avx2 fma\n\nprocessor\t: 1\ncpu family\t: 99\n")
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    fields = host._read_cpuinfo(str(path))
    assert (fields["cpu family"], fields["model"], fields["model name"]) == ("26", "2", "AMD EPYC")
    assert fields["flags"] == "fpu avx2 fma" and "processor" in fields
    assert host._read_cpuinfo(str(tmp_path / "missing")) == {}


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "sub" / "f.json"
    host.atomic_write_text(target, "old\n")
    assert target.read_text() == "old\n"

    def half_then_fail(f):
        f.write(b"new but unfinish")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        host.atomic_write(target, half_then_fail)
    assert target.read_text() == "old\n"  # the old content, whole
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.json"]  # no temporary file left
    host.atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_atomic_write_names_its_temporary_file_with_the_writers_pid(tmp_path):
    import re

    seen = []
    host.atomic_write(tmp_path / "f.json", lambda f: seen.extend(p.name for p in tmp_path.iterdir()))
    assert len(seen) == 1 and re.fullmatch(rf"\.f\.json\.{os.getpid()}\.[a-z0-9_]{{8}}\.tmp", seen[0]), seen
    assert re.fullmatch(rf"\.m\.onnx\.{os.getpid()}\.[0-9a-f]{{8}}\.tmp", host.temporary_path(tmp_path / "m.onnx").name)
    assert host.temporary_target(seen[0]) == "f.json"
    assert host.temporary_target(".m.onnx.77.tmp") == "m.onnx" and host.temporary_target(".m.onnx.tmp") is None


def test_remove_stale_temporaries_only_of_a_writer_that_is_gone(tmp_path):
    dead, live = _dead_pid(), os.getpid()
    names = {
        "stale": f".f.json.{dead}.ab_3xyz9.tmp", "stale_staged": f".f.json.{dead}.tmp",  # removed
        "live": f".f.json.{live}.ab_3xyz9.tmp", "other_user": f".f.json.{dead}.abcdefgh.tmp",
        "other_name": f".g.json.{dead}.abcdefgh.tmp", "not_ours": f".f.json.{dead}.ABCDEFGH.tmp",
        "no_pid": ".f.json.abcdefgh.tmp", "link": f".f.json.{dead}.zzzzzzzz.tmp",
    }
    for key, name in names.items():
        if key == "link":
            (tmp_path / name).symlink_to(tmp_path / "target")
        else:
            (tmp_path / name).write_text(key)
    (tmp_path / "target").write_text("a user's file")
    os.chown(tmp_path / names["other_user"], 65534, 65534)
    removed = host.remove_stale_temporaries(tmp_path, ["f.json"])
    assert sorted(p.name for p in removed) == sorted([names["stale"], names["stale_staged"]])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [n for k, n in names.items() if not k.startswith("stale")] + ["target"])
    assert host.remove_stale_temporaries(tmp_path / "missing", ["f.json"]) == []


def test_lock_folder_is_per_process_and_names_the_holder(tmp_path):
    import multiprocessing
    import subprocess
    import sys

    folder = tmp_path / "out"
    try_lock = [sys.executable, "-c", "import importlib.util, sys\n"  # host.py alone: no MegEngine to import
                "spec = importlib.util.spec_from_file_location('host', sys.argv[2])\n"
                "host = importlib.util.module_from_spec(spec); spec.loader.exec_module(host)\n"
                "host.lock_folder(sys.argv[1]); print('got it')", str(folder), host.__file__]
    first = host.lock_folder(folder)
    second = host.lock_folder(folder)  # this process holds it already
    assert (folder / host.LOCK_FILE).read_text() == f"{os.getpid()}\n"
    refused = subprocess.run(try_lock, capture_output=True, text=True)
    assert refused.returncode == 1
    assert (f"FolderInUseError: {folder} is in use by another megzoo process, PID {os.getpid()} (it holds "
            f"{folder / host.LOCK_FILE}): wait for it to finish, or use another folder") in refused.stderr
    # a forked child (a DataLoader worker) does not keep the lock once this process lets it go
    child = multiprocessing.get_context("fork").Process(target=__import__("time").sleep, args=(60,))
    child.start()
    try:
        first.release()
        assert subprocess.run(try_lock, capture_output=True).returncode == 1  # still held: `second`
        second.release()
        assert subprocess.run(try_lock, capture_output=True, text=True).stdout == "got it\n"
    finally:
        child.kill()
        child.join()
    with host.lock_folder(folder):
        assert subprocess.run(try_lock, capture_output=True).returncode == 1
    assert subprocess.run(try_lock, capture_output=True, text=True).stdout == "got it\n"
