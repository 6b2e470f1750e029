"""``backend="auto"`` per precision (issue 33): each precision (fp32, bf16, int8) has its own measurement
and record among the backends that run it here; a backend that crashes or raises while measured is
disqualified with its reason and recorded, a timeout is not; an int8 model is never asked for another
precision; ``load`` chooses among the backends that load the file by the same records."""
import json
import os
import signal

import numpy as np
import pytest
from test_quantization import _rng_batch

import megzoo
from megzoo.inference import backends, export, load
from megzoo.quantization import quantize

SIZE = 32
REAL_MEASURE_ONE = backends._measure_one
#: made-up figures per (precision, backend): ONNX Runtime fastest in fp32, OpenVINO in int8
FIGURES = {("fp32", "onnxruntime"): 50.0, ("fp32", "lite"): 30.0, ("fp32", "openvino"): 40.0,
           ("int8", "onnxruntime"): 100.0, ("int8", "lite"): 20.0, ("int8", "openvino"): 150.0}


@pytest.fixture
def fresh_records(tmp_path, monkeypatch):
    """No record, no process cache, no $MEGZOO_BACKEND: auto measures (with :data:`FIGURES`)."""
    monkeypatch.setenv("MEGZOO_PROBE_DIR", str(tmp_path / "probe"))
    monkeypatch.delenv("MEGZOO_BACKEND", raising=False)
    monkeypatch.setattr(backends, "_chosen", {})
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.1, 0.1))  # a quiet machine, whatever runs beside
    calls = []

    def fake(backend, timeout, precision="fp32"):
        calls.append((precision, backend))
        return {"images_per_s": FIGURES[(precision, backend)]}

    monkeypatch.setattr(backends, "_measure_one", fake)
    return calls


@pytest.fixture(scope="module")
def small_float():
    model = megzoo.resnet18(num_classes=10)
    model.eval()
    return model


@pytest.fixture(scope="module")
def small_int8(small_float):
    return quantize(small_float, _rng_batch(4, seed=3), progress=False)


def test_each_precision_has_its_own_measurement_and_record(fresh_records, small_float, small_int8):
    assert megzoo.compile(small_float, (1, 3, SIZE, SIZE)).backend == "onnxruntime"
    assert megzoo.compile(small_int8, (1, 3, SIZE, SIZE)).backend == "openvino"
    assert sorted(fresh_records) == sorted(FIGURES)  # every candidate measured once per precision, no more
    megzoo.compile(small_int8, (1, 3, SIZE, SIZE))
    assert len(fresh_records) == len(FIGURES)
    for precision, best in (("fp32", "onnxruntime"), ("int8", "openvino")):
        record = json.loads(backends.backend_record_path(precision).read_text())
        assert record["backend"] == best and record["precision"] == precision and record["errors"] == {}
        assert record["images_per_s"] == {b: f for (p, b), f in FIGURES.items() if p == precision}
    backends._chosen.clear()  # a new process reads the records and measures nothing
    assert backends.best_backend("int8") == "openvino" and len(fresh_records) == len(FIGURES)


def test_a_crashing_backend_is_disqualified_with_its_reason_and_the_caller_lives(fresh_records, monkeypatch):
    # the measurement's real subprocess, made to die by SIGFPE for openvino (as OpenVINO did on a Zen 4 in
    # openvino#35943) and to raise for lite
    crash = ("import os, signal, sys, json\n"
             "b = sys.argv[1]\n"
             "if b == 'openvino': os.kill(os.getpid(), signal.SIGFPE)\n"
             "if b == 'lite': print(json.dumps({'backend': b, 'error': 'RuntimeError: no kernel'}))\n"
             "else: print(json.dumps({'backend': b, 'images_per_s': 12.5}))\n")
    monkeypatch.setattr(backends, "MEASURE_SRC", crash)
    monkeypatch.setattr(backends, "_measure_one", REAL_MEASURE_ONE)
    with pytest.warns(RuntimeWarning, match="measuring the backends for fp32 failed for some"):
        assert backends.best_backend("fp32") == "onnxruntime"
    record = json.loads(backends.backend_record_path("fp32").read_text())
    assert record["images_per_s"] == {"onnxruntime": 12.5} and record["transient"] == []
    assert record["errors"] == {"lite": "RuntimeError: no kernel",
                                "openvino": f"exit status {-signal.SIGFPE}: no output"}


def test_a_killed_or_short_of_memory_measurement_is_not_held_against_the_backend(monkeypatch):
    oom_killed = "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n"
    monkeypatch.setattr(backends, "MEASURE_SRC", oom_killed)
    assert REAL_MEASURE_ONE("openvino", 60, "fp32") == {"error": f"exit status {-signal.SIGKILL}: no output",
                                                          "transient": True}
    no_memory = ("import json, sys\n"
                 "print(json.dumps({'backend': sys.argv[1], 'error': 'MemoryError: cannot allocate'}))\n")
    monkeypatch.setattr(backends, "MEASURE_SRC", no_memory)
    assert REAL_MEASURE_ONE("lite", 60, "fp32") == {"error": "MemoryError: cannot allocate", "transient": True}


def test_megzoo_backend_of_another_file_kind_neither_measures_nor_misleads(fresh_records, small_float, tmp_path,
                                                                           monkeypatch):
    path = tmp_path / "f.onnx"
    export(small_float, path, (1, 3, SIZE, SIZE))
    monkeypatch.setenv("MEGZOO_BACKEND", "lite")
    assert load(path).backend == "onnxruntime" and fresh_records == []  # Lite loads no .onnx: the kind's own
    with pytest.raises(ValueError) as info:
        megzoo.compile(small_float, (1, 3, SIZE, SIZE), precision="bf16")
    assert str(info.value) == ("MEGZOO_BACKEND=lite: precision='bf16' is not run by the lite backend; "
                               "backend='openvino' runs it (or leave precision out for fp32)")


def test_a_lone_candidate_is_measured_too_and_a_crash_keeps_it_out_for_good(fresh_records, monkeypatch):
    class Solo(backends.Backend):  # the only backend that runs bf16 here (with OpenVINO on a BF16 CPU)
        name = "solo"
        precisions = ("fp32", "bf16")

    calls = []

    def crash(backend, timeout, precision="fp32"):
        calls.append(backend)
        return {"error": "exit status -8: no output", "transient": False}

    backends.register_backend(Solo())
    try:
        monkeypatch.setattr(backends, "_measure_one", crash)
        lone = backends._auto_candidates("bf16")
        assert "solo" in lone
        record = backends.backend_record_path("bf16")
        refusal = ("no backend could run bf16 on this machine when measured: "
                   + "; ".join(f"{name}: exit status -8: no output" for name in lone)
                   + f" (delete {record} to measure again)")
        with pytest.warns(RuntimeWarning, match="failed for some"):
            with pytest.raises(backends.BackendUnavailableError) as info:
                backends.best_backend("bf16")
        assert str(info.value) == refusal and calls == lone  # measured in its subprocess, never in this process
        assert json.loads(record.read_text())["errors"] == {name: "exit status -8: no output" for name in lone}
        backends._chosen.clear()  # the next process reads the record: the same refusal, nothing measured
        with pytest.raises(backends.BackendUnavailableError) as again:
            backends.best_backend("bf16")
        assert str(again.value) == refusal and calls == lone
    finally:
        backends.unregister_backend("solo")


def test_a_timeout_is_not_recorded(fresh_records, monkeypatch):
    def slow_openvino(backend, timeout, precision="fp32"):
        if backend == "openvino":
            return {"error": "no answer within 120 s", "transient": True}
        return {"images_per_s": FIGURES[(precision, backend)]}

    monkeypatch.setattr(backends, "_measure_one", slow_openvino)
    with pytest.warns(RuntimeWarning, match="failed for some"):
        assert backends.best_backend("int8") == "onnxruntime"
    assert not backends.backend_record_path("int8").exists()  # the next process measures again


def test_level_figures_keep_the_first_registered_backend(fresh_records, monkeypatch):
    def figures(openvino):
        return lambda backend, timeout, precision="fp32": {
            "images_per_s": {"onnxruntime": 100.0, "lite": 30.0, "openvino": openvino}[backend]}

    monkeypatch.setattr(backends, "_measure_one", figures(109.0))  # within 10%: level, ONNX Runtime stays
    assert backends.measure_backends()["backend"] == "onnxruntime"
    assert backends.best_backend("fp32") == "onnxruntime"  # what compile and load take
    assert backends.best_backend("fp32", among=("onnxruntime", "openvino")) == "onnxruntime"
    assert backends.best_backend("fp32", among=("lite", "openvino")) == "openvino"
    backends._chosen.clear()
    backends.backend_record_path("fp32").unlink()
    monkeypatch.setattr(backends, "_measure_one", figures(111.0))
    assert backends.measure_backends()["backend"] == "openvino" and backends.best_backend("fp32") == "openvino"


def test_a_measurement_on_a_busy_machine_is_used_but_not_recorded(fresh_records, monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (7.5, 6.0, 4.0))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    why = (r"megzoo: the machine was busy \(load average 7.5 on 2 CPUs\) while the backends were measured for "
           r"fp32; using onnxruntime in this process, measuring again in the next \(MEGZOO_BACKEND=NAME chooses "
           r"for good\)")
    with pytest.warns(RuntimeWarning, match=why):
        assert backends.best_backend("fp32") == "onnxruntime"
    assert not backends.backend_record_path("fp32").exists()


def test_an_int8_model_runs_in_int8_only(small_int8):
    with pytest.raises(ValueError) as info:
        megzoo.compile(small_int8, (1, 3, SIZE, SIZE), backend="openvino", precision="bf16")
    assert str(info.value) == ("precision='bf16' is for float models; this model is int8 (megzoo.quantize): "
                               "leave precision out")
    with pytest.raises(ValueError) as info:
        megzoo.compile(small_int8, (1, 3, SIZE, SIZE), precision="int8")
    assert str(info.value) == "precision must be 'fp32' or 'bf16', got 'int8'"


def test_a_backend_without_int8_is_refused_an_int8_model(small_int8):
    class FloatOnly(backends.Backend):
        name = "floatonly"
        precisions = ("fp32",)

    backends.register_backend(FloatOnly())
    try:
        assert "floatonly" not in backends._auto_candidates("int8")
        with pytest.raises(ValueError) as info:
            megzoo.compile(small_int8, (1, 3, SIZE, SIZE), backend="floatonly")
        assert str(info.value) == ("the floatonly backend does not run int8 models; backend='onnxruntime', "
                                   "'lite' or 'openvino' does")
    finally:
        backends.unregister_backend("floatonly")


def test_a_backend_with_an_unknown_precision_is_not_registered():
    class Half(backends.Backend):
        name = "half"
        precisions = ("fp32", "fp16")

    with pytest.raises(ValueError) as info:
        backends.register_backend(Half())
    assert str(info.value) == ("backend 'half': precisions must include 'fp32' and be some of ('fp32', 'bf16', "
                               "'int8'), got ('fp32', 'fp16')")


def test_load_chooses_among_the_file_kinds_backends_by_the_files_precision(fresh_records, small_float, small_int8,
                                                                           tmp_path):
    fp32_file, int8_file = tmp_path / "f.onnx", tmp_path / "q.onnx"
    export(small_float, fp32_file, (1, 3, SIZE, SIZE))
    export(small_int8, int8_file, (1, 3, SIZE, SIZE))
    assert load(fp32_file).backend == "onnxruntime"  # fastest fp32 of the two that load .onnx
    loaded = load(int8_file)
    assert loaded.backend == "openvino" and loaded.int8  # its metadata says int8: the int8 record decides
    x = _rng_batch(2, seed=9)
    ort = load(int8_file, backend="onnxruntime")
    step = small_int8.output_step(x)
    assert np.abs(loaded(x) - ort(x)).max() <= 2 * step
    with pytest.raises(ValueError) as info:
        load(int8_file, precision="bf16")
    assert str(info.value) == ("precision='bf16' is for float models; this model is int8 (megzoo.quantize): "
                               "leave precision out")
    int8_file.with_name("q.onnx.json").unlink()  # travelled without its JSON: the file's own props say int8
    alone = load(int8_file)
    assert alone.backend == "openvino" and alone.int8 and alone.metadata is None
    with pytest.raises(ValueError, match="this model is int8"):
        load(int8_file, precision="bf16")

