"""The layout probe, its per-machine verdicts and the guard that keeps failed layouts from running.

The probe's failures are simulated: its subprocess source is swapped for one that segfaults the
way MegEngine 1.13's NCHW88 kernels do on AMD Zen 5 (after ``bad err=45 in Xbyak::Error``), or one
that never answers; verdicts are injected into the record file. So the fallback and the errors
are checked on every machine, whether NCHW88 works on it or not."""
import json
import os
import pickle
import subprocess
import sys
import time
import warnings
from pathlib import Path

import megengine
import numpy as np
import pytest

import megzoo
from megzoo import host
from megzoo.inference import (CompiledModel, LayoutUnavailableError, best_layout, compile, dump_graph, export,
                              layout_verdict, load, probe_record_path)
from megzoo.inference.graph import read_layout
from megzoo.inference import layouts

REPO = Path(__file__).resolve().parents[1]
XBYAK_REASON = "exit status -11: bad err=45 in Xbyak::Error"
CRASH_SRC = ("import os, signal, sys\nsys.stderr.write('bad err=45 in Xbyak::Error\\n')\nsys.stderr.flush()\n"
             "os.kill(os.getpid(), signal.SIGSEGV)\n")
HANG_SRC = "import sys, time\nsys.stderr.write('loading\\n')\nsys.stderr.flush()\ntime.sleep(600)\n"


@pytest.fixture
def probe_dir(tmp_path, monkeypatch):
    """A private, empty verdict folder and cache root; "auto" forgets what it chose."""
    monkeypatch.setenv("MEGZOO_PROBE_DIR", str(tmp_path / "probe"))
    monkeypatch.setenv("MEGZOO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MEGZOO_LAYOUT", raising=False)
    monkeypatch.setattr(layouts, "_auto", {})
    return tmp_path / "probe"


def _inject(verdicts: dict) -> Path:
    record = probe_record_path()
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"verdicts": verdicts}))
    return record


def _failed_nchw88() -> Path:
    return _inject({"nchw88": {"ok": False, "reason": XBYAK_REASON, "seconds": 0.8}})


def _tiny():
    model = megzoo.resnet18(num_classes=4)
    model.eval()
    return model


# --- the probe itself ------------------------------------------------------------------------------
def test_probe_passes_a_healthy_layout_in_seconds(probe_dir):
    verdict = layouts.run_probe("nchw")
    assert verdict["ok"] is True, verdict
    assert verdict["reason"].startswith("max relative error ")
    assert float(verdict["reason"].split()[-1]) < 1e-4
    assert 0 < verdict["seconds"] < layouts.PROBE_TIMEOUT_S


def test_probe_records_a_crash_once_per_machine(probe_dir, monkeypatch):
    monkeypatch.setattr(layouts, "PROBE_SRC", CRASH_SRC)
    verdict = layout_verdict("nchw88")
    assert verdict["ok"] is False and verdict["reason"] == XBYAK_REASON
    record = probe_record_path()
    assert record.parent == probe_dir and record.is_file()
    data = json.loads(record.read_text())
    assert data["verdicts"]["nchw88"]["reason"] == XBYAK_REASON
    assert data["machine"]["family"] == host.cpu_info()["family"] and data["megengine"] == megengine.__version__
    assert host.machine_tag() in record.name and f"mge{megengine.__version__}" in record.name

    def no_second_probe(*args, **kwargs):
        raise AssertionError("probed again although a verdict is recorded")

    monkeypatch.setattr(layouts, "run_probe", no_second_probe)
    assert layout_verdict("nchw88")["reason"] == XBYAK_REASON
    assert layout_verdict("nchw")["ok"] is True  # the baseline is never probed


def test_probe_time_limit_ends_a_hang(probe_dir, monkeypatch):
    monkeypatch.setattr(layouts, "PROBE_SRC", HANG_SRC)
    monkeypatch.setenv("MEGZOO_PROBE_TIMEOUT", "2")
    start = time.perf_counter()
    verdict = layout_verdict("nchw88")
    assert time.perf_counter() - start < 30  # the hung child was killed at its limit (+ dumping the graph)
    assert verdict == {"ok": False, "reason": "no answer within 2 s (hang); last output: loading",
                       "seconds": verdict["seconds"]}
    assert 2 <= verdict["seconds"] < 30
    monkeypatch.setenv("MEGZOO_PROBE_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="MEGZOO_PROBE_TIMEOUT must be a positive number of seconds, got 'soon'"):
        layouts.probe_timeout()


def test_wrong_outputs_fail_the_probe(probe_dir, monkeypatch):
    """A layout that runs but computes something else is failed too."""
    src = layouts.PROBE_SRC.replace("to_numpy())", "to_numpy() * 1.01)")
    assert src != layouts.PROBE_SRC
    monkeypatch.setattr(layouts, "PROBE_SRC", src)
    verdict = layouts.run_probe("nchw")
    assert verdict["ok"] is False and verdict["reason"].endswith("(outputs wrong; tolerance 1e-4)")


def test_machine_tag_tells_zen4_from_zen5(monkeypatch):
    fields = {"model name": "AMD EPYC", "cpu family": "25", "model": "17", "stepping": "1",
              "flags": "fpu avx2 fma avx512f"}
    monkeypatch.setattr(host, "_read_cpuinfo", lambda path="/proc/cpuinfo": dict(fields))
    zen4 = host.machine_tag()
    fields.update({"cpu family": "26", "model": "2", "stepping": "0"})
    zen5 = host.machine_tag()
    assert zen4.startswith("AMD-EPYC-f25m17s1-") and zen5.startswith("AMD-EPYC-f26m2s0-") and zen4 != zen5
    fields["flags"] += " avx512_vnni"
    assert host.machine_tag() != zen5  # same model, other ISA flags: another record


# --- auto falls back, explicit requests are refused ------------------------------------------------
def test_auto_falls_back_to_nchw_with_the_reason(probe_dir, monkeypatch):
    monkeypatch.setattr(layouts, "cpu_info", _with_avx2)
    monkeypatch.setattr(layouts.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(layouts, "PROBE_SRC", CRASH_SRC)
    with pytest.warns(RuntimeWarning, match=f"nchw88 layout failed its probe on this machine \\({XBYAK_REASON}\\); "
                                            f"using nchw \\(record: {probe_record_path()}\\)"):
        assert best_layout() == "nchw"
    monkeypatch.setattr(layouts, "_auto", {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a process that finds the verdict recorded says nothing
        monkeypatch.setattr(layouts, "_probed_here", set())
        assert best_layout() == "nchw"
    model = _tiny()
    x = np.random.RandomState(0).standard_normal((2, 3, 32, 32)).astype("float32")
    compiled = compile(model, x.shape, algo="heuristic")
    assert compiled.layout == "nchw"
    ref = model(megengine.tensor(x)).numpy()
    assert np.max(np.abs(compiled(x) - ref)) / np.max(np.abs(ref)) < 1e-4


def _with_avx2():
    info = dict(host.cpu_info())
    info["flags"] = frozenset(info["flags"]) | {"avx2", "fma"}
    return info


def _no_lite(monkeypatch):
    """Make any Lite network creation fail loudly: the guard must refuse before one is made."""
    from megzoo.inference import lite

    def refuse(*args, **kwargs):
        raise AssertionError("a Lite network was created for a refused layout")

    monkeypatch.setattr(lite.LiteNet, "__init__", refuse)


def _assert_names_everything(message: str, record: Path) -> None:
    assert "the nchw88 convolution layout" in message and "failed its probe on this machine" in message
    assert XBYAK_REASON in message
    assert "Use layout='auto' or 'nchw'" in message and "--layout auto|nchw" in message
    assert f"delete {record}" in message


def test_compile_refuses_a_failed_layout(probe_dir, monkeypatch):
    record = _failed_nchw88()
    _no_lite(monkeypatch)
    with pytest.raises(LayoutUnavailableError) as info:
        compile(_tiny(), (1, 3, 32, 32), layout="nchw88")
    _assert_names_everything(str(info.value), record)
    with pytest.raises(LayoutUnavailableError):
        compile(_tiny(), layout="nchw88")  # refused at once, not at the first call


def test_megzoo_layout_follows_the_same_rule(probe_dir, monkeypatch):
    record = _failed_nchw88()
    _no_lite(monkeypatch)
    monkeypatch.setenv("MEGZOO_LAYOUT", "nchw88")
    with pytest.raises(LayoutUnavailableError) as info:
        compile(_tiny(), (1, 3, 32, 32))
    message = str(info.value)
    _assert_names_everything(message, record)
    assert "(MEGZOO_LAYOUT=nchw88)" in message and "or unset MEGZOO_LAYOUT" in message
    monkeypatch.setenv("MEGZOO_LAYOUT", "nhwc")
    with pytest.raises(ValueError, match="MEGZOO_LAYOUT must be one of"):
        best_layout()


def test_a_passed_verdict_is_honoured_without_running_anything(probe_dir, monkeypatch):
    _inject({"nchw88": {"ok": True, "reason": "max relative error 3e-07", "seconds": 1.2}})
    monkeypatch.setattr(layouts, "run_probe", lambda *a, **k: pytest.fail("probed although recorded"))
    monkeypatch.setenv("MEGZOO_LAYOUT", "nchw88")
    assert best_layout() == "nchw88"


def test_export_and_load_refuse_a_failed_layout(probe_dir, monkeypatch, tmp_path):
    model = _tiny()
    good = tmp_path / "good.mge"
    export(model, good, (1, 3, 32, 32), layout="nchw")  # before the verdict: a healthy NCHW file
    meta = json.loads((tmp_path / "good.mge.json").read_text())
    record = _failed_nchw88()
    _no_lite(monkeypatch)
    target = tmp_path / "out" / "m.mge"
    with pytest.raises(LayoutUnavailableError):
        export(model, target, (1, 3, 32, 32), layout="nchw88")
    assert not target.exists() and not (tmp_path / "out" / "m.mge.json").exists()
    # a file made for NCHW88 elsewhere (its metadata says so) is not run here
    (tmp_path / "good.mge.json").write_text(json.dumps({**meta, "layout": "nchw88"}))
    with pytest.raises(LayoutUnavailableError) as info:
        load(good)
    _assert_names_everything(str(info.value), record)
    # nor one without its metadata: the layout is read from the graph's convolutions
    bare = tmp_path / "bare88.mge"
    dump_graph(model, (1, 3, 32, 32), bare, layout="nchw88")  # writing runs no kernel: allowed
    assert read_layout(bare) == "nchw88" and read_layout(good) == "nchw"
    with pytest.raises(LayoutUnavailableError):
        load(bare)
    with pytest.raises(LayoutUnavailableError):
        CompiledModel(mge_file=bare)  # the class itself, not only load()


def _cli(args, env_extra=None, cwd=None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "megzoo.cli", *args], capture_output=True, text=True, timeout=300,
                          env=env, cwd=str(cwd or REPO), stdin=subprocess.DEVNULL)


def test_cli_export_and_benchmark_refuse_a_failed_layout(probe_dir, tmp_path):
    record = _failed_nchw88()
    out = tmp_path / "r18.mge"
    proc = _cli(["export", "resnet18", "-o", str(out), "--input-shape", "1,3,32,32", "--layout", "nchw88"])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("megzoo export: error: the nchw88 convolution layout")
    _assert_names_everything(proc.stderr, record)
    assert not out.exists()
    proc = _cli(["benchmark", "--models", "resnet18", "--batch", "1", "--layout", "nchw88", "--input-size", "32"])
    assert proc.returncode == 2 and proc.stderr.startswith("megzoo benchmark: error: the nchw88 convolution layout")
    assert "eager ..." not in proc.stderr  # refused before any configuration ran
    proc = _cli(["export", "resnet18", "-o", str(out), "--input-shape", "1,3,32,32"], {"MEGZOO_LAYOUT": "nchw88"})
    assert proc.returncode == 2 and "(MEGZOO_LAYOUT=nchw88)" in proc.stderr and not out.exists()


# --- no plain unpickling of user files -------------------------------------------------------------
class _CreatesFile:
    """Unpickling this runs ``open(path, "w")``: the file appearing proves code from the pickle ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_export_refuses_a_pickle_that_would_run_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "resnet18_evil.pkl"
    evil.write_bytes(pickle.dumps({"state_dict": _CreatesFile(marker)}))
    out = tmp_path / "evil.mge"
    proc = _cli(["export", str(evil), "-o", str(out), "--input-shape", "1,3,32,32"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "is not a plain state dict: it holds pickled objects" in proc.stderr
    assert "refused global io.open" in proc.stderr  # the global the allow-list refused, named
    assert "pass --trust-pickle" in proc.stderr and "--arch NAME" in proc.stderr
    assert not marker.exists() and not out.exists()
    help_text = _cli(["export", "--help"]).stdout
    assert "--trust-pickle" in help_text and "runs any code the file carries" in " ".join(help_text.split())


def test_a_crashing_child_that_printed_its_mark_still_fails(probe_dir, monkeypatch):
    monkeypatch.setattr(layouts, "PROBE_SRC", "print('LAYOUT-PROBE-OK', flush=True)\nimport os, signal\n"
                                              "os.kill(os.getpid(), signal.SIGSEGV)\n")
    assert layouts.run_probe("nchw") == {"ok": False, "reason": "exit status -11: no output",
                                         "seconds": pytest.approx(0, abs=30)}


def test_trust_pickle_loads_a_pickled_module(tmp_path):
    model = megzoo.resnet18(num_classes=3)
    model.eval()
    path = tmp_path / "resnet18_whole.pkl"
    megengine.save(model, str(path))
    out = tmp_path / "whole.mge"
    unnamed = tmp_path / "whole.pkl"
    unnamed.write_bytes(path.read_bytes())
    proc = _cli(["export", str(unnamed), "-o", str(out), "--input-shape", "1,3,32,32"], cwd=tmp_path)
    assert proc.returncode == 2 and "pass --trust-pickle" in proc.stderr  # not "pass --arch" alone
    proc = _cli(["export", str(path), "-o", str(out), "--input-shape", "1,3,32,32", "--layout", "nchw"], cwd=tmp_path)
    assert proc.returncode == 2 and "pass --trust-pickle" in proc.stderr and not out.exists()
    proc = _cli(["export", str(path), "-o", str(out), "--input-shape", "1,3,32,32", "--layout", "nchw",
                 "--trust-pickle"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads((tmp_path / "whole.mge.json").read_text())
    assert meta["model"] == "resnet18" and meta["parity"]["max_rel"] < 1e-4
    proc = _cli(["export", str(path), "-o", str(tmp_path / "w2.mge"), "--input-shape", "1,3,32,32", "--layout", "nchw",
                 "--trust-pickle", "--arch", "resnet18"], cwd=tmp_path)  # the flag holds with --arch too
    assert proc.returncode == 0, proc.stderr[-2000:]
    x = np.random.RandomState(1).standard_normal((2, 3, 32, 32)).astype("float32")
    ref = model(megengine.tensor(x)).numpy()
    got = load(out, algo="heuristic")(x)
    assert got.shape == (2, 3) and np.max(np.abs(got - ref)) / np.max(np.abs(ref)) < 1e-4
