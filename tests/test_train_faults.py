"""`megzoo train` under faults: Ctrl-C with DataLoader workers, a SIGKILL (the plasma store it
leaves is stopped at the next start, and only such stores), the stores and sockets of a normal run,
temporaries of a killed writer, a second run on one output folder, a diverging run, a too-small
input for VGG."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from megzoo.cli import main
from megzoo.host import pid_alive

TRAIN = ["train", "--model", "resnet18", "--input-size", "16", "--resize-size", "16", "--batch-size", "4",
         "--hflip", "0", "--no-progress", "--no-plot", "--device", "cpu", "--cpu-threads", "1", "--fast-conv", "off",
         "--no-fused-blocks"]


def _default_sigint() -> None:
    """In the child: Ctrl-C's default action, as in a terminal. A test run started in the background
    (.ci/run's ``setsid ... &``) inherits SIGINT ignored, and a Python started so never installs its
    KeyboardInterrupt handler: the run would ignore the test's Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(shapes, out, *extra, stderr=subprocess.PIPE):
    """A long `megzoo train` (50 epochs of 15 steps) in its own session, as from a terminal;
    returns once it has logged step 1 (its DataLoader workers and plasma store are running).
    ``stderr``: where its standard error goes (a file lets a test read it once the process has
    ended, while a worker still ending may hold a pipe open)."""
    cmd = [sys.executable, "-m", "megzoo", *TRAIN, "--train-dir", f"{shapes}/train", "--output", str(out),
           "--epochs", "50", "--batch-size", "2", "--log-every", "1", "--workers", "2", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True,
                            preexec_fn=_default_sigint)
    for line in proc.stdout:
        if "step 1:" in line:
            return proc
    proc.wait()
    raise AssertionError(f"the run ended before step 1: {proc.stderr.read()[-3000:]}")


def _store_of(pid, wait=10.0):
    """(PID, socket) of the plasma-store-server that process ``pid`` runs (waiting up to ``wait``
    seconds for one: between two passes over the data there is none)."""
    deadline = time.monotonic() + wait
    while True:
        for name in os.listdir("/proc"):
            try:
                with open(f"/proc/{name}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
                if parent != pid:
                    continue
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except (OSError, ValueError, IndexError):  # not a process, or one that just ended
                continue
            if argv[0].endswith(b"plasma-store-server") and pid_alive(int(name)):
                return int(name), os.fsdecode(argv[argv.index(b"-s") + 1])
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} runs no plasma-store-server")
        time.sleep(0.02)


def test_ctrl_c_with_workers_is_a_clean_interrupt(shapes, tmp_path):
    """Ctrl-C reaches the whole process group: only the main process stops (rc 130, one line),
    and the workers' plasma store ends with it, socket removed."""
    with open(tmp_path / "stderr.txt", "w") as log:
        proc = _start(shapes, tmp_path / "run", stderr=log)
    store, socket = _store_of(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=120)  # the main process; its pipe may outlive it in a worker that is still ending
    proc.stdout.close()
    err = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode == 130, err[-3000:]
    assert err.splitlines()[-1] == "interrupted"
    assert "Traceback" not in err and "exited unexpectedly" not in err, err[-3000:]
    assert not pid_alive(store) and not os.path.exists(socket)


def test_the_store_a_killed_run_leaves_is_stopped_at_the_next_start(shapes, tmp_path, capsys):
    proc = _start(shapes, tmp_path / "killed")
    store, socket = _store_of(proc.pid)
    try:
        proc.kill()  # SIGKILL of the main process only, as the OOM killer does
        proc.wait(timeout=60)  # (its orphaned workers, which end by themselves, keep the pipes open)
        proc.stdout.close(), proc.stderr.close()
        time.sleep(0.2)
        assert pid_alive(store), "MegEngine's store outlives its owner"
        assert main([*TRAIN, "--train-dir", f"{shapes}/train", "--output", str(tmp_path / "next"), "--epochs", "1",
                     "--steps-per-epoch", "1", "--workers", "0"]) == 0
        assert not pid_alive(store) and not os.path.exists(socket)
        assert (f"stopped a DataLoader plasma-store-server (PID {store}) that megzoo process {proc.pid} left running "
                f"when it was killed; removed its socket {socket}") in capsys.readouterr().out
    finally:
        if pid_alive(store):
            os.kill(store, signal.SIGKILL)


def test_a_run_with_workers_ends_its_stores_and_removes_their_sockets(shapes, tmp_path, monkeypatch):
    """Two stores (training, validation), each ended and its socket removed."""
    started = []

    class Recording(subprocess.Popen):
        def __init__(self, args, *rest, **kwargs):
            super().__init__(args, *rest, **kwargs)
            if str(args[0]).endswith("plasma-store-server"):
                started.append((self, args[args.index("-s") + 1]))

    monkeypatch.setattr(subprocess, "Popen", Recording)
    assert main([*TRAIN, "--data", shapes, "--output", str(tmp_path / "run"), "--epochs", "1", "--steps-per-epoch",
                 "1", "--workers", "2"]) == 0
    assert len(started) == 2
    for popen, socket in started:
        assert popen.poll() is not None and not os.path.exists(socket), socket


def _fake_store(owner):
    """A plasma-store-server started as MegEngine starts one, ``MEGZOO_PLASMA_OWNER=owner`` in its
    environment (None: not set, another program's store); (process, socket) once it listens."""
    import pyarrow

    from megzoo.train.workers import OWNER_VARIABLE

    socket = f"/tmp/mge_plasma_{os.urandom(8).hex()}"
    env = {k: v for k, v in os.environ.items() if k != OWNER_VARIABLE}
    if owner is not None:
        env[OWNER_VARIABLE] = owner
    proc = subprocess.Popen([os.path.join(pyarrow.__path__[0], "plasma-store-server"), "-s", socket, "-m", "1000000"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not os.path.exists(socket) and time.monotonic() < deadline:
        time.sleep(0.01)
    return proc, socket


def test_only_stores_a_gone_megzoo_process_of_this_pid_namespace_left_are_stopped(dead_pid):
    """A store is stopped when its owner named in its environment (PID, start time, PID
    namespace) has ended here; not when the owner runs, is of another PID namespace (root on a
    host sees its containers' stores: their PIDs mean nothing here), is not named with its
    namespace (who it is cannot be told), or not named at all (another program's store)."""
    from megzoo.host import process_start_time
    from megzoo.train.workers import reap_leaked_stores

    here = os.readlink("/proc/self/ns/pid")
    owners = {"gone": f"{dead_pid}::{here}", "reused": f"{os.getpid()}:1:{here}",  # stopped
              "running": f"{os.getpid()}:{process_start_time(os.getpid())}:{here}",
              "another namespace": f"{dead_pid}:123:pid:[4026530000]", "no namespace": f"{dead_pid}:123",
              "another program": None}
    stores = {}
    try:
        for key, owner in owners.items():
            stores[key] = _fake_store(owner)
        notes = [n for n in reap_leaked_stores() if any(f"(PID {p.pid})" in n for p, _ in stores.values())]
        expected = {key: (f"stopped a DataLoader plasma-store-server (PID {stores[key][0].pid}) that megzoo process "
                          f"{pid} left running when it was killed; removed its socket {stores[key][1]}")
                    for key, pid in (("gone", dead_pid), ("reused", os.getpid()))}
        assert sorted(notes) == sorted(expected.values())
        for key, (proc, socket) in stores.items():
            stopped = key in expected
            assert (proc.poll() is not None, os.path.exists(socket)) == (stopped, not stopped), key
    finally:
        for proc, socket in stores.values():
            proc.kill()
            proc.wait()
            if os.path.exists(socket):
                os.unlink(socket)


def test_a_killed_writers_temporaries_are_removed_at_the_next_run(shapes, tmp_path, capsys, dead_pid):
    """The run holds its folder, so every temporary of a file the run writes, owned by this user,
    is a killed writer's, whatever PID it names (a running one: reused, or PID 1 of every
    container) or none (2baa4b2's); another user's, or one of another name, is kept."""
    out = tmp_path / "run"
    out.mkdir()
    sleeper = subprocess.Popen(["sleep", "60"])
    names = {"stale": f".last.pkl.{dead_pid}.k2j4x9q1.tmp", "live_pid": f".last.pkl.{sleeper.pid}.k2j4x9q1.tmp",
             "no_pid": ".history.json.k2j4x9q1.tmp", "others": f".best.pkl.{dead_pid}.abcdefgh.tmp",
             "user": f".notes.txt.{dead_pid}.abcdefgh.tmp"}
    try:
        for name in names.values():
            (out / name).write_bytes(b"x" * 1000)
        os.chown(out / names["others"], 65534, 65534)
        assert main([*TRAIN, "--train-dir", f"{shapes}/train", "--output", str(out), "--epochs", "1",
                     "--steps-per-epoch", "1", "--workers", "0"]) == 0
    finally:
        sleeper.kill()
        sleeper.wait()
    removed = ("stale", "live_pid", "no_pid")
    assert not any((out / names[k]).exists() for k in removed)
    assert all((out / names[k]).exists() for k in ("others", "user"))
    log = capsys.readouterr().out
    listed = re.search(r"removed 3 temporary file\(s\) that a killed run left: (.*)\n", log)
    assert listed and sorted(listed[1].split(", ")) == sorted(names[k] for k in removed), log


def test_a_killed_exports_staged_file_is_removed_by_the_next_export(tmp_path, dead_pid):
    """An export removes the staged files no export is writing (not locked), whatever PID their
    name holds, and keeps one being written (locked) whatever its PID."""
    from megzoo.inference import export
    from test_train import _tiny

    target = tmp_path / "target.mge"
    stale = [tmp_path / f".target.mge.{os.getpid()}.tmp", tmp_path / f".target.mge.{dead_pid}.a1b2c3d4.tmp",
             tmp_path / f".target.mge.json.{dead_pid}.a1b2c3d4.tmp"]  # 2baa4b2's name, and this one's, a metadata's
    writing = tmp_path / f".target.mge.{dead_pid}.tmp"  # an export in another PID namespace, or on another host
    for path in [*stale, writing]:
        path.write_bytes(b"x" * 1000)
    writer = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time\n"
                               "f = open(sys.argv[1], 'rb'); fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True)\n"
                               "time.sleep(60)", str(writing)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "held\n"
        export(_tiny(), target, (1, 3, 16, 16), layout="nchw", check=False)
    finally:
        writer.kill()
        writer.wait()
    assert target.is_file() and not any(p.exists() for p in stale) and writing.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, "target.mge.json", writing.name])


def test_a_second_run_on_one_output_is_refused_naming_the_first(shapes, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(  # a run holding the folder, as `megzoo train` does
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         "fd = os.open(os.path.join(sys.argv[1], '.megzoo.lock'), os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'%d\\n' % os.getpid()); print('held', flush=True)\n"
         "time.sleep(60)", str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        code = main([*TRAIN, "--data", shapes, "--output", str(out), "--epochs", "1", "--steps-per-epoch", "1",
                     "--workers", "0"])
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"megzoo train: error: {out} is in use by another megzoo process, PID {holder.pid} "), err
    assert len(err.splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == [".megzoo.lock"]  # nothing written


def _break(monkeypatch, what):
    """From now on, every training loss is NaN (``"loss"``), or the last step of every epoch
    leaves a NaN in the classifier's bias with a finite loss (``"weights"``)."""
    import megengine
    import megengine.functional as F
    import numpy as np

    from megzoo.train import Trainer

    if what == "loss":
        real = F.nn.cross_entropy
        monkeypatch.setattr(F.nn, "cross_entropy", lambda *a, **k: real(*a, **k) * float("nan"))
        return
    real_step = Trainer.train_step

    def step(self, image, label):
        result = real_step(self, image, label)
        if (self.step + 1) % self.steps_per_epoch == 0:
            bias = self.model.fc.bias
            bias._reset(megengine.tensor(np.full(bias.shape, np.nan, np.float32), device=bias.device))
        return result

    monkeypatch.setattr(Trainer, "train_step", step)


@pytest.fixture(scope="module")
def one_epoch(shapes, tmp_path_factory):
    """``megzoo train`` arguments (2 epochs of 2 steps), and a run folder after their first epoch
    (a run stopped there, as an interrupted run: resumed with the same arguments)."""
    import megengine

    from megzoo.cli import build_parser
    from megzoo.cli.train import config_from_args
    from megzoo.train import Trainer

    out = tmp_path_factory.mktemp("one_epoch") / "run"
    args = [*TRAIN, "--data", shapes, "--steps-per-epoch", "2", "--workers", "0", "--epochs", "2"]
    device = megengine.get_default_device()  # the trainer sets it for good; later modules' models live on this one
    try:
        trainer = Trainer(config_from_args(build_parser().parse_args([*args, "--output", str(out)])))
        trainer.fit(until_epoch=1)
        trainer.close()
    finally:
        megengine.set_default_device(device)
    return args, out


@pytest.mark.parametrize("what, message", [("loss", r"the loss became nan at step 3 \(epoch 2\)"),
                                           ("weights", r"the weights became non-finite \(fc.bias\) by step 4 "
                                                       r"\(epoch 2\)")])
def test_a_diverging_run_stops_at_the_first_non_finite_step_keeping_the_last_checkpoint(one_epoch, tmp_path, capsys,
                                                                                       monkeypatch, what, message):
    args, first = one_epoch
    out = shutil.copytree(first, tmp_path / "run")
    saved = {name: (out / name).read_bytes() for name in ("last.pkl", "best.pkl", "history.json")}
    capsys.readouterr()
    _break(monkeypatch, what)
    assert main([*args, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(rf"megzoo train: error: training stopped: {message}; lower --lr \(now 0.025\) and resume; "
                        r"nothing of this epoch was saved, last.pkl keeps epoch 1\n", err), err
    assert {name: (out / name).read_bytes() for name in saved} == saved


def test_a_too_small_input_for_vgg_is_refused_before_anything_is_written(shapes, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "vgg11", "--data", shapes, "--input-size", "16", "--epochs", "1",
                 "--batch-size", "4", "--steps-per-epoch", "1", "--workers", "0", "--no-progress", "--no-plot",
                 "--output", str(out)]) == 2
    assert not out.exists()  # no config.json, log.txt or folder
    assert capsys.readouterr().err == ("megzoo train: error: vgg11 needs inputs of at least 32x32 pixels, got "
                                       "input_size=16: give --input-size 32 or more\n")
