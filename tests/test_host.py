"""megzoo.host: the cache root, usable CPUs, the CPU's identity, atomic writes, temporaries and
folder locks."""
import fcntl
import os
import re
import subprocess
import sys
from pathlib import Path

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


def _locked_elsewhere(path):
    """A process holding ``path``'s flock (a writer in another PID namespace, or on another host
    of a shared disk, whose PID means nothing here); kill it to let go."""
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time\n"
                               "f = open(sys.argv[1], 'rb'); fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True)\n"
                               "time.sleep(60)", str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    return holder


def test_temporary_files_are_named_for_their_target_and_locked_while_written(tmp_path):
    seen = []

    def write(f):
        seen.extend(p.name for p in tmp_path.iterdir())
        with open(tmp_path / seen[0], "rb") as other:  # the writer's lock: another descriptor cannot take it
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert host.remove_stale_temporaries(tmp_path, ["f.json"]) == []  # being written: kept
        f.write(b"{}")

    host.atomic_write(tmp_path / "f.json", write)
    assert len(seen) == 1 and re.fullmatch(rf"\.f\.json\.{os.getpid()}\.[a-z0-9_]{{8}}\.tmp", seen[0]), seen
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"] and (tmp_path / "f.json").read_bytes() == b"{}"
    with host.staging_file(tmp_path / "m.onnx") as staged:
        assert re.fullmatch(rf"\.m\.onnx\.{os.getpid()}\.[a-z0-9_]{{8}}\.tmp", staged.name) and staged.is_file()
        staged.write_bytes(b"graph")  # a library writing to the name writes into the locked file
        assert host.remove_stale_temporaries(tmp_path, ["m.onnx"]) == [] and staged.read_bytes() == b"graph"
    assert not staged.exists()
    assert host.temporary_target(seen[0]) == "f.json" and host.temporary_target(staged.name) == "m.onnx"
    assert host.temporary_target(".m.onnx.77.tmp") == "m.onnx" and host.temporary_target(".m.onnx.tmp") is None
    assert host.temporary_target(".last.pkl.k2j4x9q1.tmp") == "last.pkl"  # 2baa4b2's atomic_write: no PID


def test_remove_stale_temporaries_removes_unlocked_ones_whatever_their_pid(tmp_path, dead_pid):
    """A temporary no one has locked is a killed writer's, even when its PID runs now (reused, or
    PID 1 in every container) or it has no PID (2baa4b2); one locked by a live writer is kept
    even when its PID runs no process here (another PID namespace, another host)."""
    live = os.getpid()
    names = {
        "stale": f".f.json.{dead_pid}.ab_3xyz9.tmp", "stale_staged": f".f.json.{dead_pid}.tmp",  # removed
        "stale_pid_reused": f".f.json.{live}.ab_3xyz9.tmp", "stale_no_pid": ".f.json.k2j4x9q1.tmp",  # removed
        "locked": f".f.json.{dead_pid}.cdefghij.tmp", "other_user": f".f.json.{dead_pid}.abcdefgh.tmp",
        "other_name": f".g.json.{dead_pid}.abcdefgh.tmp", "not_ours": f".f.json.{dead_pid}.ABCDEFGH.tmp",
        "not_ours_too": ".f.json.notes.tmp", "link": f".f.json.{dead_pid}.zzzzzzzz.tmp",
    }
    for key, name in names.items():
        if key == "link":
            (tmp_path / name).symlink_to(tmp_path / "target")
        else:
            (tmp_path / name).write_text(key)
    (tmp_path / "target").write_text("a user's file")
    os.chown(tmp_path / names["other_user"], 65534, 65534)
    holder = _locked_elsewhere(tmp_path / names["locked"])
    try:
        removed = host.remove_stale_temporaries(tmp_path, ["f.json"])
        assert sorted(p.name for p in removed) == sorted(n for k, n in names.items() if k.startswith("stale"))
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [n for k, n in names.items() if not k.startswith("stale")] + ["target"])
        # the caller holds the folder (a training run): every temporary of its names goes, locked or not
        removed = host.remove_stale_temporaries(tmp_path, ["f.json"], folder_held=True)
        assert [p.name for p in removed] == [names["locked"]]
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / "target").read_text() == "a user's file"
    assert host.remove_stale_temporaries(tmp_path / "missing", ["f.json"]) == []


def test_lock_folder_is_per_process_and_names_the_holder(tmp_path):
    import multiprocessing

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


@pytest.mark.parametrize("link", ["symbolic link", "dangling symbolic link", "hard link"])
def test_lock_folder_never_writes_through_a_planted_link(tmp_path, link):
    """Another user plants ``out/.megzoo.lock`` as a link to a file of the one who runs megzoo:
    the lock refuses it, naming it and the fix, and the file is untouched (not created)."""
    from megzoo.cli import describe_os_error

    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    out.mkdir()
    lock = out / host.LOCK_FILE
    if link != "dangling symbolic link":
        victim.write_text("precious\n")
    if link == "hard link":
        os.link(victim, lock)
    else:
        lock.symlink_to("../victim.txt")
    what = "a hard link (one of 2 names of one file)" if link == "hard link" else "a symbolic link"
    with pytest.raises(PermissionError) as refused:
        host.lock_folder(out)
    key = os.path.join(os.path.realpath(out), host.LOCK_FILE)
    assert describe_os_error(refused.value) == (
        f"refusing to use the lock file {key}: it is {what}, not the file megzoo makes (something else may be put "
        f"there to be overwritten); remove it (rm {key}) and run again")
    if link == "dangling symbolic link":
        assert not victim.exists()
    else:
        assert victim.read_text() == "precious\n"
    lock.unlink()  # the fix the message gives
    with host.lock_folder(out):
        assert lock.read_text() == f"{os.getpid()}\n"


def _as_nobody(folder):
    """A forked process of user nobody holding ``folder`` (:func:`host.lock_folder`): (pid, the
    line it wrote: 'held' or its error); it lets go and ends when the returned pipe is closed."""
    reply_r, reply_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.close(reply_r), os.close(go_w)
            os.setgid(65534)
            os.setuid(65534)
            try:
                held = host.lock_folder(folder)  # noqa: F841 (held while referenced)
                os.write(reply_w, b"held\n")
            except BaseException as exc:
                os.write(reply_w, f"{type(exc).__name__}: {exc}\n".encode())
            os.read(go_r, 1)
        finally:
            os._exit(code)
    os.close(reply_w), os.close(go_r)
    with os.fdopen(reply_r) as reply:
        return pid, reply.readline(), go_w


@pytest.fixture
def public_tmp():
    """A temporary folder other users can reach (pytest's are private to their user)."""
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix="megzoo-test-")
    os.chmod(path, 0o755)
    yield Path(path)
    shutil.rmtree(path)


def test_lock_folder_in_a_shared_folder_locks_another_users_lock_file(public_tmp, dead_pid):
    """A group-writable folder whose .megzoo.lock (0o644) another user's run made: a run of this
    user can still hold it (read-only, its PID unwritten), and a third is refused, 'PID unknown'."""
    folder = public_tmp / "shared"
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)
    lock = folder / host.LOCK_FILE
    host.lock_folder(folder).release()  # the first user's run, ended
    lock.write_text(f"{dead_pid}\n")  # as a run that ended leaves it
    assert lock.stat().st_mode & 0o777 == 0o644 and lock.stat().st_uid == 0
    written = lock.read_text()
    pid, said, go = _as_nobody(folder)
    try:
        assert said == "held\n"
        with pytest.raises(host.FolderInUseError, match=r"in use by another megzoo process, PID unknown "):
            host.lock_folder(folder)
    finally:
        os.close(go)
        os.waitpid(pid, 0)
    assert lock.read_text() == written  # not the other user's to write
    with host.lock_folder(folder):
        assert lock.read_text() == f"{os.getpid()}\n"
