"""The OpenVINO backend (issue 33): megzoo's ONNX (fp32, and QDQ int8 from ``megzoo.quantize``) read from
memory by OpenVINO and compiled for the CPU, against eager MegEngine and the ONNX Runtime backend; its
thread count read back from OpenVINO; precision fp32 unless bf16 is asked for, and bf16 refused on a
CPU without BF16; ``load(..., backend="openvino")``, the Classifier, ``evaluate`` and ``megzoo predict
--backend openvino``; the benchmark modes; and its place among ``auto``'s candidates per precision."""
import json
import subprocess
import sys
import threading

import megengine
import megengine.module as M
import numpy as np
import pytest
from test_inference_faults import _in_thread, _new_size_refused_in_a_thread
from test_predict_eval import RED, SMALL, WNIDS, _folder, colour_state_dict
from test_quantization import _rng_batch, _run, _trained_bn

import megzoo
from megzoo import bench_worker, benchmark
from megzoo.cli import main
from megzoo.host import cpu_flags, cpu_info
from megzoo.inference import BACKENDS, BackendUnavailableError, CompiledModelBase, export, load
from megzoo.inference.backends import _auto_candidates, backend_record_path, best_backend
from megzoo.inference.backends import openvino as ov_backend
from megzoo.quantization import quantize

SIZE = 32
#: the int8 parity unit of tests/test_graph_onnx_int8.py: output quantization steps
STEPS = 2.0


class SmallNet(M.Module):
    """A user's module, not a zoo model: conv, BN, ReLU, pooling, a residual add, a linear head."""

    def __init__(self):
        super().__init__()
        self.conv = M.Conv2d(3, 8, 3, padding=1)
        self.bn = M.BatchNorm2d(8)
        self.conv2 = M.Conv2d(8, 8, 3, padding=1)
        self.pool = M.AdaptiveAvgPool2d(1)
        self.fc = M.Linear(8, 5)

    def forward(self, x):
        y = M.ReLU()(self.bn(self.conv(x)))
        y = y + self.conv2(y)
        return self.fc(self.pool(y).reshape(y.shape[0], -1))


@pytest.fixture(scope="module")
def r18():
    np.random.seed(0)
    megengine.random.seed(0)
    return _trained_bn(megzoo.resnet18())


@pytest.fixture(scope="module")
def r18_ov(r18):
    return megzoo.compile(r18, (1, 3, SIZE, SIZE), backend="openvino", threads=2)


def _eager(model, x):
    return model(megengine.tensor(x)).numpy()


def _rel(got, ref) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def _runtime_precisions(compiled, shape, layer="Convolution"):
    """The precisions OpenVINO runs the ``layer`` nodes of ``compiled``'s graph for ``shape`` in."""
    runtime = compiled.runner_for(shape).compiled_model.get_runtime_model()
    infos = [op.get_rt_info() for op in runtime.get_ordered_ops()]
    return {i["runtimePrecision"].astype(str) for i in infos if i["layerType"].astype(str) == layer}


def _cpu_has_bf16() -> bool:
    """BF16 arithmetic by the CPU's own flags (the test's view, independent of OpenVINO's)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def test_fp32_parity_with_eager_at_batch_1_and_3_and_the_threads_and_precision_reach_openvino(r18, r18_ov):
    assert isinstance(r18_ov, CompiledModelBase) and r18_ov.backend == "openvino"
    for n in (1, 3):
        x = _rng_batch(n, seed=n)
        got = r18_ov(x)
        assert got.shape == (n, 1000) and _rel(got, _eager(r18, x)) < 1e-4
    assert r18_ov.cached_shapes == [(3, SIZE, SIZE)] and len(r18_ov.compile_log) == 1  # one graph, any batch
    ov_model = r18_ov.runner_for((1, 3, SIZE, SIZE)).compiled_model
    assert ov_model.get_property("INFERENCE_NUM_THREADS") == 2
    assert str(ov_model.get_property("PERFORMANCE_HINT")) == "LATENCY"
    assert ov_model.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"  # set, not OpenVINO's choice
    assert _runtime_precisions(r18_ov, (1, 3, SIZE, SIZE)) == {"f32"}

    net = SmallNet()
    net.eval()
    compiled = megzoo.compile(net, backend="openvino", threads=1)  # compiled at the first call
    for n in (1, 3):
        x = _rng_batch(n, seed=10 + n, size=12)
        assert _rel(compiled(x), _eager(net, x)) < 1e-4
    assert compiled.runner_for((1, 3, 12, 12)).compiled_model.get_property("INFERENCE_NUM_THREADS") == 1


def test_calls_from_four_threads_and_a_new_size_in_a_worker_thread_is_refused(r18, r18_ov):
    inputs = {i: _rng_batch(i + 1, seed=30 + i) for i in range(4)}
    barrier, results = threading.Barrier(4), {}

    def work(i):
        barrier.wait(60)
        results[i] = r18_ov(inputs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i, x in inputs.items():
        assert _rel(results[i], _eager(r18, x)) < 1e-4
    assert _rel(_in_thread(lambda: r18_ov(inputs[0])), _eager(r18, inputs[0])) < 1e-4
    _new_size_refused_in_a_thread(r18_ov, "openvino")


def test_int8_qdq_graph_runs_in_int8_and_agrees_with_onnxruntime():
    np.random.seed(0)
    megengine.random.seed(0)
    qmodel = quantize(_trained_bn(megzoo.resnet18(num_classes=10)), [_rng_batch(8, seed=s) for s in (10, 11, 12)],
                      progress=False)
    ov = megzoo.compile(qmodel, (1, 3, SIZE, SIZE), backend="openvino", threads=2)
    ort = megzoo.compile(qmodel, (1, 3, SIZE, SIZE), backend="onnxruntime", threads=2)
    assert ov.int8 and _runtime_precisions(ov, (1, 3, SIZE, SIZE)) == {"u8"}  # every convolution in int8
    for n in (1, 3):
        x = _rng_batch(n, seed=20 + n)
        step = qmodel.output_step(x)
        got = ov(x)
        assert got.shape == (n, 10)
        # measured here: 0.06 and 0.09 steps from ONNX Runtime, 0.10 and 0.17 from eager int8 MegEngine
        assert np.abs(got - ort(x)).max() <= STEPS * step
        assert np.abs(got - _run(qmodel, x)).max() <= STEPS * step


def test_bf16_runs_where_the_cpu_has_bf16_and_is_refused_clearly_where_it_has_not(r18):
    assert ov_backend.bf16_supported() == _cpu_has_bf16()  # OpenVINO and the CPU flags agree
    x = _rng_batch(3, seed=5)
    if _cpu_has_bf16():
        compiled = megzoo.compile(r18, (1, 3, SIZE, SIZE), backend="openvino", precision="bf16", threads=2)
        ov_model = compiled.runner_for(x.shape).compiled_model
        assert ov_model.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "bf16"
        error = _rel(compiled(x), _eager(r18, x))
        assert error < 5e-2 and compiled.precision == "bf16"
    else:
        with pytest.raises(ValueError) as info:
            megzoo.compile(r18, backend="openvino", precision="bf16")
        assert str(info.value) == (
            "precision='bf16' needs a CPU with BF16 arithmetic (avx512_bf16 or amx_bf16); this CPU "
            f"({cpu_info()['model_name']}) has none: use precision='fp32' (the default)")
        with pytest.raises(ValueError) as again:  # under auto: no backend runs bf16 here, and this is why
            megzoo.compile(r18, precision="bf16")
        assert str(again.value) == str(info.value)


def test_unknown_precision_and_precision_for_another_backend_are_refused(r18):
    with pytest.raises(ValueError) as info:
        megzoo.compile(r18, backend="openvino", precision="fp16")
    assert str(info.value) == "precision must be 'fp32' or 'bf16', got 'fp16'"
    with pytest.raises(ValueError) as info:
        megzoo.compile(r18, backend="onnxruntime", precision="bf16")
    assert str(info.value) == ("precision='bf16' is not run by the onnxruntime backend; backend='openvino' runs it "
                               "(or leave precision out for fp32)")
    with pytest.raises(ValueError) as info:
        megzoo.compile(r18, backend="lite", precision="bf16")
    assert str(info.value) == ("precision='bf16' is not run by the lite backend; backend='openvino' runs it "
                               "(or leave precision out for fp32)")


def test_load_an_exported_onnx_with_openvino(r18, tmp_path):
    path = tmp_path / "r18.onnx"
    export(r18, path, (1, 3, SIZE, SIZE))
    loaded = load(path, backend="openvino", threads=2)
    assert type(loaded).__name__ == "OpenVinoCompiledModel" and loaded.metadata["input_shape"] == [1, 3, SIZE, SIZE]
    x = _rng_batch(3, seed=7)
    assert _rel(loaded(x), _eager(r18, x)) < 1e-4  # the file's batch axis is dynamic
    path.with_name("r18.onnx.json").unlink()  # a file that travelled without its JSON: names from the graph
    alone = load(path, backend="openvino", threads=2)
    assert alone(x).shape == (3, 1000) and alone.output_names == ["output"]
    # auto: the faster of the two that load .onnx files, by this machine's fp32 record
    assert load(path).backend == best_backend("fp32", among=("onnxruntime", "openvino"))
    with pytest.raises(ValueError) as info:
        load(path, backend="lite")
    assert str(info.value) == (f"{path} is a .onnx file, which backend='lite' does not load; backend='onnxruntime', "
                               "'openvino' or 'auto' loads it")
    with pytest.raises(ValueError) as info:
        load(path, backend="onnxruntime", precision="bf16")
    assert str(info.value) == ("precision='bf16' is not run by the onnxruntime backend; backend='openvino' runs it "
                               "(or leave precision out for fp32)")


def test_classifier_evaluate_and_cli_predict_on_openvino(tmp_path, capsys):
    state = colour_state_dict()
    model = megzoo.resnet18()
    model.load_state_dict(state)
    model.eval()
    clf = megzoo.Classifier(model, preprocess=SMALL, backend="openvino", threads=2)
    assert clf.backend_for(1) == "openvino" and clf.runner_for(1).compiled.backend == "openvino"
    images = [np.random.RandomState(i).randint(0, 255, (70, 90, 3)).astype("uint8") for i in range(3)]
    eager = megzoo.Classifier(model, preprocess=SMALL, backend="eager").logits(images)
    assert _rel(clf.logits(images), eager) < 1e-4
    data = _folder(tmp_path / "val", list(WNIDS.values()), per_class=1)
    result = megzoo.evaluate(data, model=model, batch_size=3, workers=1, preprocess=SMALL, backend="openvino",
                             threads=2)
    assert (result.images, result.top1_correct, result.top5_correct, result.backend) == (4, 3, 4, "openvino")
    weights = tmp_path / "colour.pkl"
    megengine.save(state, str(weights))
    image = tmp_path / "red.png"
    import cv2

    assert cv2.imwrite(str(image), np.full((300, 400, 3), RED, np.uint8))
    assert main(["predict", str(image), "--model", "resnet18", "--weights", str(weights), "--backend", "openvino",
                 "--threads", "2", "--topk", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in out["results"][0]["topk"]] == ["great_white_shark", "tench"]


def test_benchmark_modes_and_auto_candidacy_per_precision(monkeypatch):
    assert "openvino" in BACKENDS and "openvino" in _auto_candidates("fp32") and "openvino" in _auto_candidates("int8")
    assert _auto_candidates("bf16") == (["openvino"] if _cpu_has_bf16() else [])
    assert backend_record_path("int8").name.startswith("backend-choice-int8-mge1.13.0-ort")
    assert "-ov2026." in backend_record_path("fp32").name and "-ov2026." in backend_record_path("bf16").name
    assert {"openvino", "openvino_bf16", "openvino_int8"} <= set(benchmark.MODES)
    assert not {"openvino", "openvino_bf16", "openvino_int8"} & set(benchmark.DEFAULT_MODES)
    assert bench_worker._worker_for({"mode": "openvino_int8"}) is ov_backend._int8_worker
    assert bench_worker._worker_for({"mode": "openvino_bf16"}) is ov_backend._bf16_worker
    assert bench_worker._worker_for({"mode": "openvino"}).keywords == {"backend": "openvino"}
    monkeypatch.setattr(ov_backend, "openvino_version", lambda: None)
    with pytest.raises(BackendUnavailableError) as info:
        megzoo.compile(SmallNet(), backend="openvino")
    assert str(info.value) == ("backend='openvino' needs OpenVINO, which is not installed: "
                               "pip install 'megzoo[openvino]'")
    probe = "import sys, megzoo, megzoo.inference; print('openvino' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.split() == ["False"]  # imported only when used
