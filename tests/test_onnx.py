"""ONNX export and the ONNX Runtime backend: one test per layer kind against eager MegEngine,
every family (narrow or small inputs), the export's parity check and files, ``megzoo.compile``'s
backends and their ``auto`` choice, MegEngine's poller thread, the CLI and the benchmark rows."""
import json
import os
import subprocess
import sys
from pathlib import Path

import megengine
import megengine.functional as F
import megengine.module as M
import numpy as np
import onnx
import pytest

import megzoo
from megzoo import device
from megzoo.device import POLLER_THREAD_NAME, poller_threads, poller_yields
from megzoo.inference import (OrtCompiledModel, ParityError, UnsupportedModuleError, backends, compile, export, load)
from megzoo.inference.graph_onnx import ops as graph_ops
from megzoo.inference.ort_compiled import onnx_model as build_onnx
from megzoo.inference.ort import OrtRunner
from megzoo.layers import AdaptiveAvgPool2d
from megzoo.models.resnet import ResNet
from megzoo.models.vgg import VGG

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _megzoo_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MEGZOO_HOME", str(tmp_path / "home"))


def _randomise(model, seed=0):
    """Non-trivial BatchNorm statistics and affine parameters, so folding is really tested."""
    rng = np.random.RandomState(seed)
    for m in model.modules():
        if isinstance(m, M.BatchNorm2d):
            shape = m.running_mean.shape
            m.running_mean[...] = megengine.tensor(rng.uniform(-0.2, 0.2, shape).astype("float32"))
            m.running_var[...] = megengine.tensor(rng.uniform(0.5, 2.0, shape).astype("float32"))
            m.weight[...] = megengine.tensor(rng.uniform(0.5, 1.5, shape).astype("float32"))
            m.bias[...] = megengine.tensor(rng.uniform(-0.2, 0.2, shape).astype("float32"))
        if isinstance(m, M.GroupNorm):
            m.weight[...] = megengine.tensor(rng.uniform(0.5, 1.5, m.weight.shape).astype("float32"))
            m.bias[...] = megengine.tensor(rng.uniform(-0.2, 0.2, m.bias.shape).astype("float32"))
    model.eval()
    return model


def _rel(got, ref):
    return float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))


def _eager(model, x):
    out = model(megengine.tensor(x))
    return [o.numpy() for o in out] if isinstance(out, (list, tuple)) else [out.numpy()]


def _ops(proto):
    return [n.op_type for n in proto.graph.node]


class Wrap(M.Module):
    """One layer (or a Sequential) as a model, its output (optionally) pooled first."""

    def __init__(self, *layers, flatten_first=False):
        super().__init__()
        self.body = M.Sequential(*layers)
        self.flatten_first = flatten_first

    def forward(self, x):
        if self.flatten_first:
            x = F.mean(x, axis=(2, 3))
        return self.body(x)


# --- one mapping per layer kind, against eager MegEngine --------------------------------------
LAYERS = {
    "conv with bias": (lambda: Wrap(M.Conv2d(4, 6, 3, padding=1, bias=True)), ["Conv"]),
    "grouped dilated strided conv": (lambda: Wrap(M.Conv2d(4, 8, 3, stride=2, padding=2, dilation=2, groups=2,
                                                           bias=False)), ["Conv"]),
    "conv + BN folded": (lambda: Wrap(M.Conv2d(4, 6, 3, padding=1, bias=False), M.BatchNorm2d(6)), ["Conv"]),
    "standalone BN": (lambda: Wrap(M.BatchNorm2d(4)), ["Mul", "Add"]),
    "GroupNorm": (lambda: Wrap(M.Conv2d(4, 8, 1), M.GroupNorm(2, 8)),  # traced in primitive form
                  ["Conv", "Shape", "Reshape", "Gather", "Concat", "Reshape", "ReduceMean", "Sub", "Mul", "ReduceMean",
                   "Add", "Pow", "Div", "Reshape", "Mul", "Add"]),
    "ReLU": (lambda: Wrap(M.Conv2d(4, 4, 1), M.ReLU()), ["Conv", "Relu"]),
    "max pool 3/2 pad 1": (lambda: Wrap(M.MaxPool2d(3, 2, 1)), ["MaxPool"]),
    "average pool 2/2": (lambda: Wrap(M.AvgPool2d(2, 2)), ["AveragePool"]),
    "average pool padded, excluding padding": (lambda: Wrap(M.AvgPool2d(3, 2, 1)), ["AveragePool"]),
    "average pool padded, counting padding": (lambda: Wrap(M.AvgPool2d(3, 2, 1, mode="average")), ["AveragePool"]),
    "adaptive pool, size that divides": (lambda: Wrap(AdaptiveAvgPool2d(5)), ["AveragePool"]),
    "adaptive pool, PyTorch bins": (lambda: Wrap(AdaptiveAvgPool2d(3)), None),  # megzoo's products, as traced
    "global pool + Linear + Dropout": (lambda: Wrap(M.Linear(4, 3), M.Dropout(0.5), flatten_first=True),
                                       ["GlobalAveragePool", "Flatten", "Gemm"]),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_each_layer_mapping_matches_eager(name):
    make, ops = LAYERS[name]
    model = _randomise(make())
    proto = build_onnx(model, (1, 4, 10, 10))
    if ops is not None:
        assert _ops(proto) == ops + ["Identity"]  # the last node names the output
    x = np.random.RandomState(1).standard_normal((3, 4, 10, 10)).astype("float32")
    got = OrtRunner(proto.SerializeToString()).run(x)[0]
    ref = _eager(model, x)[0]
    assert got.shape == ref.shape
    assert _rel(got, ref) < 1e-5


def test_bn_kept_as_batch_normalization_without_folding():
    model = _randomise(Wrap(M.Conv2d(4, 6, 3, padding=1, bias=False), M.BatchNorm2d(6)))
    proto = build_onnx(model, (1, 4, 8, 8), fuse=False)
    assert _ops(proto) == ["Conv", "BatchNormalization", "Identity"]
    x = np.random.RandomState(2).standard_normal((2, 4, 8, 8)).astype("float32")
    assert _rel(OrtRunner(proto.SerializeToString()).run(x)[0], _eager(model, x)[0]) < 1e-5


# --- every family -------------------------------------------------------------------------------
FAMILIES = {
    "resnet18": (lambda: megzoo.resnet18(num_classes=10), 64),
    "resnet18 GroupNorm": (lambda: megzoo.resnet18(num_classes=10, norm_layer="gn"), 64),
    "resnet18 frozen BN": (lambda: megzoo.resnet18(num_classes=10, norm_layer="frozen_bn"), 64),
    "resnet50-like bottleneck, dilated": (lambda: ResNet("bottleneck", (1, 1, 1, 1), num_classes=10,
                                                         replace_stride_with_dilation=(False, True, True)), 64),
    "resnext 32x4d": (lambda: ResNet("bottleneck", (1, 1, 1, 1), num_classes=10, groups=32, width_per_group=4), 64),
    "wide resnet (width 128)": (lambda: ResNet("bottleneck", (1, 1, 1, 1), num_classes=10, width_per_group=128), 64),
    "resnet18 pooled features (num_classes=0)": (lambda: megzoo.resnet18(num_classes=0), 64),
    "resnet18 backbone": (lambda: megzoo.resnet18(features_only=True, out_indices=(1, 2, 4)), 64),
    "vgg narrow with BN": (lambda: VGG((1, 1, 2, 2, 2), widths=(8, 16, 16, 32, 32), num_classes=10, norm_layer="bn"),
                           64),
    "vgg narrow without BN, 50 px (adaptive bins)": (lambda: VGG((1, 1, 1, 1, 1), widths=(8, 8, 16, 16, 16),
                                                                 num_classes=10), 50),
    "vgg narrow pre-logits (num_classes=0)": (lambda: VGG((1, 1, 1, 1, 1), widths=(8, 8, 16, 16, 16),
                                                          num_classes=0), 32),
    "vgg backbone": (lambda: VGG((1, 1, 1, 1, 1), widths=(8, 8, 16, 16, 16)).as_features((0, 4)), 32),
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_exports_and_matches_eager(name):
    make, size = FAMILIES[name]
    model = _randomise(make(), seed=3)
    proto = build_onnx(model, (1, 3, size, size))
    runner = OrtRunner(proto.SerializeToString(), threads=2)
    assert runner.input_name == "data" and runner.input_shape == ["N", 3, size, size]
    for batch in (1, 4):
        x = np.random.RandomState(batch).standard_normal((batch, 3, size, size)).astype("float32")
        got, ref = runner.run(x), _eager(model, x)
        assert [g.shape for g in got] == [r.shape for r in ref]
        assert max(_rel(g, r) for g, r in zip(got, ref)) < 1e-4
    expected = ["output"] if len(ref) == 1 else [f"output{i}" for i in range(len(ref))]
    assert runner.output_names == expected


class Cumulative(M.Module):
    def forward(self, x):
        return F.cumsum(x, axis=1)


def _smallest_of_each_kind():
    """The smallest registered model of each kind (its name without digits: ``resnet``,
    ``resnext_xd``, ``wide_resnet_``, ``vgg``, ``vgg_bn``): deeper members repeat the same blocks,
    and converting VGG-19 costs as much as the whole of this module."""
    import re

    from megzoo.registry import get_model_entry

    kinds = {}
    for name in megzoo.list_models():
        kind = re.sub(r"[0-9]+", "", name)
        if kind not in kinds or get_model_entry(name).params < get_model_entry(kinds[kind]).params:
            kinds[kind] = name
    return sorted(kinds.values())


@pytest.mark.parametrize("name", _smallest_of_each_kind())
def test_every_kind_of_registered_model_converts_at_batch_1_and_3(name):
    """The conformance check a new family gets by registering: its traced graph converts, and the
    ONNX file computes what eager MegEngine computes at two batch sizes (32 px: the mapping is the
    point, not the size). A model of its own: tracing moves the weights between devices, and the
    session's shared models must stay as other modules' tests expect them."""
    model = megzoo.get_model(name)
    model.eval()
    runner = OrtRunner(build_onnx(model, (1, 3, 32, 32)).SerializeToString(), threads=2)
    for batch in (1, 3):
        x = np.random.RandomState(batch).standard_normal((batch, 3, 32, 32)).astype("float32")
        (got,), (ref,) = runner.run(x), _eager(model, x)
        assert got.shape == ref.shape == (batch, 1000) and _rel(got, ref) < 1e-4
    runner.close()


def test_an_unmapped_operator_is_refused_naming_it_and_its_module():
    with pytest.raises(UnsupportedModuleError) as info:
        build_onnx(Wrap(M.Conv2d(3, 3, 1), Cumulative()), (1, 3, 8, 8))
    assert str(info.value) == ("cannot convert MegEngine operator Cumsum (making body.1.Cumsum) to ONNX: no mapping "
                               "for this operator; megzoo.compile(..., backend='lite') and the .mge export run any "
                               "MegEngine graph")


def test_auto_falls_back_to_lite_only_when_the_converter_refuses():
    model = Wrap(M.Conv2d(4, 4, 3, padding=1), Cumulative())
    assert compile(model, input_shape=(1, 4, 8, 8)).backend == "lite"  # auto: Lite runs any graph
    with pytest.raises(UnsupportedModuleError,
                       match=r"cannot convert MegEngine operator Cumsum \(making body.1.Cumsum\)"):
        compile(model, input_shape=(1, 4, 8, 8), backend="onnxruntime")
    # a conv subclass that also applies ReLU converts: the graph, not the module kind, is read
    fused = Wrap(M.ConvRelu2d(4, 4, 3, padding=1), M.BatchNorm2d(4))
    assert compile(fused, input_shape=(1, 4, 8, 8), backend="onnxruntime").backend == "onnxruntime"


def test_shape_problems_are_named_as_such():
    with pytest.raises(ValueError,
                       match=r"resnet18 expects 3 input channels \(N, 3, H, W\), got shape \(1, 1, 32, 32\)"):
        build_onnx(megzoo.resnet18(), (1, 1, 32, 32))
    with pytest.raises(ValueError, match="vgg11 needs inputs of at least 32x32 pixels, got 16x16"):
        build_onnx(megzoo.vgg11(num_classes=10), (1, 3, 16, 16))
    unnormed = Wrap(M.BatchNorm2d(4, track_running_stats=False))
    why = (r"^cannot trace body.0 \(BatchNorm2d\) for inference: it has no running statistics "
           r"\(track_running_stats=False\) to normalise with")
    with pytest.raises(ValueError, match=why):
        build_onnx(unnormed, (1, 4, 8, 8))
    with pytest.raises(ValueError, match=why):  # no backend traces it: auto says so instead of a C++ assertion
        compile(unnormed, input_shape=(1, 4, 8, 8))


def test_measurement_survives_a_crashing_backend(monkeypatch):
    def fake(backend, timeout, precision):
        if backend == "lite":
            return {"error": "exit status -11: bad err=45 in Xbyak::Error", "transient": False}
        return {"images_per_s": {"onnxruntime": 50.0, "openvino": 40.0}[backend]}

    monkeypatch.setattr(backends, "_measure_one", fake)
    result = backends.measure_backends()
    assert result["backend"] == "onnxruntime" and result["images_per_s"] == {"onnxruntime": 50.0, "openvino": 40.0}
    assert result["errors"] == {"lite": "exit status -11: bad err=45 in Xbyak::Error"} and result["transient"] == []


def test_a_failed_measurement_is_not_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("MEGZOO_PROBE_DIR", str(tmp_path / "probe"))
    monkeypatch.delenv("MEGZOO_BACKEND", raising=False)
    monkeypatch.setattr(backends, "_chosen", {})
    monkeypatch.setattr(backends, "measure_backends", lambda precision: {
        "backend": "onnxruntime", "images_per_s": {"onnxruntime": 50.0}, "errors": {"lite": "no answer within 120 s"},
        "transient": ["lite"]})
    why = r"measuring the backends for fp32 failed for some \(.*\); using onnxruntime"
    with pytest.warns(RuntimeWarning, match=why):
        assert backends.best_backend() == "onnxruntime"
    assert not backends.backend_record_path().exists()  # a timeout may be a busy moment: measured again next time


def test_an_opset_means_onnx_and_lite_refuses_it():
    model = megzoo.resnet18(num_classes=10)
    assert compile(model, opset=13).backend == "onnxruntime"
    with pytest.raises(ValueError, match="opset applies to the onnxruntime backend only"):
        compile(model, backend="lite", opset=13)


@pytest.mark.parametrize("opset", [13, 17, 21])
def test_opsets_in_range_load_and_others_are_refused(opset):
    model = _randomise(megzoo.resnet18(num_classes=10))
    proto = build_onnx(model, (1, 3, 32, 32), opset=opset)
    assert proto.opset_import[0].version == opset
    x = np.random.RandomState(0).standard_normal((2, 3, 32, 32)).astype("float32")
    assert _rel(OrtRunner(proto.SerializeToString()).run(x)[0], _eager(model, x)[0]) < 1e-4
    for bad in (12, 22, "17"):
        with pytest.raises(ValueError, match=r"opset must be an int in \[13, 21\]"):
            build_onnx(model, (1, 3, 32, 32), opset=bad)


# --- export: files, metadata, parity -----------------------------------------------------------------
def test_export_onnx_writes_checked_file_metadata_and_props(tmp_path):
    model = _randomise(megzoo.resnet18(num_classes=10))
    path = tmp_path / "r18.onnx"
    report = export(model, path, (2, 3, 64, 64), metadata={"class_names": [f"c{i}" for i in range(10)]})
    assert report.path == path and path.is_file() and sorted(p.name for p in tmp_path.iterdir()) == [
        "r18.onnx", "r18.onnx.json"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # a normal file, not mkstemp's 0600
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    meta = json.loads((tmp_path / "r18.onnx.json").read_text())
    assert meta["format"] == "megzoo-onnx/1" and meta["opset"] == 17 and meta["dynamic_batch"] is True
    assert meta["batch_axis"] == "N" and meta["input_shape"] == [2, 3, 64, 64] and meta["output_names"] == ["output"]

    def dims(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    assert [(v.name, dims(v)) for v in proto.graph.input] == [("data", ["N", 3, 64, 64])]
    assert [(v.name, dims(v)) for v in proto.graph.output] == [("output", ["N", 10])]
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["mean"]) == meta["mean"] and json.loads(props["class_names"])[3] == "c3"
    assert [json.loads(props[k]) for k in ("input_name", "batch_axis", "color_order", "format")] == [
        "data", "N", "BGR", "megzoo-onnx/1"]  # every value JSON-encoded
    assert float(props["parity_max_rel"]) == pytest.approx(meta["parity"]["max_rel"], rel=1e-2)
    # the parity check ran a random batch and a real image at two batch sizes, under 1e-4
    assert list(meta["parity"]["inputs"]) == ["random normal batch (N=2)", "generated test image (N=2)",
                                              "random normal batch (N=3)", "generated test image (N=3)"]
    assert meta["parity"]["max_rel"] < 1e-4


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_export_static_batch_and_load_refuses_another_batch(tmp_path):
    model = _randomise(megzoo.resnet18(num_classes=10))
    path = tmp_path / "static.onnx"
    report = export(model, path, (2, 3, 32, 32), dynamic_batch=False, opset=13)
    assert list(report.parity["inputs"]) == ["random normal batch", "generated test image"]
    loaded = load(path)
    assert isinstance(loaded, OrtCompiledModel) and loaded.metadata["dynamic_batch"] is False
    x = np.random.RandomState(0).standard_normal((2, 3, 32, 32)).astype("float32")
    assert _rel(loaded(x), _eager(model, x)[0]) < 1e-4
    with pytest.raises(ValueError, match=r"takes inputs of shape \[2, 3, 32, 32\] \(a static-batch export"):
        loaded(x[:1])


def test_failed_parity_removes_the_file_and_keeps_an_old_one(tmp_path, monkeypatch):
    model = _randomise(megzoo.resnet18(num_classes=10))
    path = tmp_path / "r18.onnx"
    path.write_bytes(b"old file")
    real = graph_ops._bn_affine

    def wrong(conv, bn):  # a folding bug: every scale 1% off
        scale, shift = real(conv, bn)
        return scale * 1.01, shift

    monkeypatch.setattr(graph_ops, "_bn_affine", wrong)
    with pytest.raises(ParityError, match=r"parity check failed: exported model differs from eager by .* above the "
                                          r"tolerance 0.0001"):
        export(model, path, (1, 3, 32, 32))
    assert path.read_bytes() == b"old file" and sorted(p.name for p in tmp_path.iterdir()) == ["r18.onnx"]


def test_export_options_of_the_other_format_are_refused(tmp_path):
    model = megzoo.resnet18(num_classes=10)
    with pytest.raises(ValueError, match="layout applies to .mge files only"):
        export(model, tmp_path / "a.onnx", (1, 3, 32, 32), layout="nchw")
    with pytest.raises(ValueError, match="opset applies to .onnx files only"):
        export(model, tmp_path / "a.mge", (1, 3, 32, 32), opset=13)
    with pytest.raises(ValueError, match="format must be one of"):
        export(model, tmp_path / "a.bin", (1, 3, 32, 32), format="tflite")
    with pytest.raises(ValueError, match="a.mge names a mge file but the format asked for is onnx: name the output "
                                         "FILE.onnx, or leave the format out"):
        export(model, tmp_path / "a.mge", (1, 3, 32, 32), format="onnx")
    assert list(tmp_path.iterdir()) == []


def test_load_opens_onnx_by_content_and_runs_any_batch(tmp_path):
    model = _randomise(megzoo.resnet18(num_classes=10))
    export(model, tmp_path / "model.onnx", (1, 3, 32, 32))
    os.replace(tmp_path / "model.onnx", tmp_path / "model.bin")  # no suffix to go by
    loaded = load(tmp_path / "model.bin")
    assert isinstance(loaded, OrtCompiledModel) and loaded.metadata is None
    for batch in (1, 16):
        x = np.random.RandomState(batch).standard_normal((batch, 3, 32, 32)).astype("float32")
        assert _rel(loaded(x), _eager(model, x)[0]) < 1e-4
    with pytest.raises(ValueError, match="algo apply to the lite backend only; they are for .mge files"):
        load(tmp_path / "model.bin", algo="heuristic")


# --- megzoo.compile backends ---------------------------------------------------------------------------
def test_onnxruntime_backend_matches_eager_at_batch_1_and_16():
    model = _randomise(megzoo.resnet18(num_classes=10))
    compiled = compile(model, backend="onnxruntime", threads=2)
    assert isinstance(compiled, OrtCompiledModel) and compiled.backend == "onnxruntime"
    for batch in (1, 16):
        x = np.random.RandomState(batch).standard_normal((batch, 3, 64, 64)).astype("float32")
        out = compiled(x)
        assert out.shape == (batch, 10) and out.dtype == np.float32
        assert _rel(out, _eager(model, x)[0]) < 1e-4
    assert compiled.cached_shapes == [(3, 64, 64)] and len(compiled.compile_log) == 1
    assert compiled(megengine.tensor(x)).shape == (16, 10)  # a megengine Tensor works too
    backbone = compile(_randomise(megzoo.resnet18(features_only=True)), backend="onnxruntime")
    maps = backbone(x[:2])
    assert [m.shape for m in maps] == [(2, 64, 16, 16), (2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4),
                                       (2, 512, 2, 2)]


def test_backend_choice_rules(monkeypatch):
    model = megzoo.resnet18(num_classes=10)
    with pytest.raises(ValueError, match="layout, micro_batch apply to the lite backend only; pass backend='lite'"):
        compile(model, backend="onnxruntime", layout="nchw", micro_batch=2)
    assert compile(model, algo="heuristic").backend == "lite"  # a Lite-only option means Lite under auto
    monkeypatch.setenv("MEGZOO_BACKEND", "lite")
    assert compile(model).backend == "lite"
    monkeypatch.setenv("MEGZOO_BACKEND", "onnxruntime")
    assert compile(model).backend == "onnxruntime"
    monkeypatch.setenv("MEGZOO_BACKEND", "tensorrt")
    with pytest.raises(ValueError, match="MEGZOO_BACKEND must be one of"):
        compile(model)
    with pytest.raises(ValueError, match="backend must be one of"):
        compile(model, backend="tvm")
    monkeypatch.setattr(backends.onnxruntime, "onnxruntime_version", lambda: None)
    monkeypatch.delenv("MEGZOO_BACKEND")
    with pytest.raises(backends.BackendUnavailableError, match="pip install 'onnxruntime>=1.20'"):
        compile(model, backend="onnxruntime")
    assert "onnxruntime" not in backends._auto_candidates()  # without ONNX Runtime, auto is one of the others
    assert backends.best_backend() in backends._auto_candidates()


def test_auto_backend_is_measured_once_and_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("MEGZOO_PROBE_DIR", str(tmp_path / "probe"))
    monkeypatch.delenv("MEGZOO_BACKEND", raising=False)
    calls = []

    def fake_measure(precision):
        calls.append(precision)
        return {"backend": "lite", "images_per_s": {"lite": 9.0, "onnxruntime": 5.0, "openvino": 7.0}, "errors": {}}

    monkeypatch.setattr(backends, "measure_backends", fake_measure)
    monkeypatch.setattr(backends, "_chosen", {})
    assert backends.best_backend() == "lite" and backends.best_backend() == "lite"
    record = json.loads(backends.backend_record_path().read_text())
    assert record["images_per_s"] == {"lite": 9.0, "onnxruntime": 5.0, "openvino": 7.0} and record["backend"] == "lite"
    assert backends.backend_record_path().name.startswith("backend-choice-fp32-mge1.13.0-ort")
    monkeypatch.setattr(backends, "_chosen", {})  # a new process reads the record, measures nothing
    assert backends.best_backend() == "lite" and calls == ["fp32"]
    assert backends.best_backend(among=("onnxruntime", "openvino")) == "openvino"  # load: among a file's loaders


def test_measure_backends_times_both_and_picks_the_faster():
    result = backends.measure_backends()
    assert set(result["images_per_s"]) == {"lite", "onnxruntime", "openvino"} and result["errors"] == {}
    assert result["backend"] == backends._fastest(backends._auto_candidates(), result["images_per_s"])
    assert all(v > 0 for v in result["images_per_s"].values())


# --- MegEngine's poller thread ----------------------------------------------------------------------
def test_poller_yields_while_compiled_models_run(monkeypatch):
    (megengine.tensor(np.ones(4, "float32")) * 2).numpy()  # an eager operation starts the poller
    tids = poller_threads()
    assert len(tids) == 1
    with open(f"/proc/self/task/{tids[0]}/comm") as f:
        assert f.read().strip() == POLLER_THREAD_NAME

    def policy():
        return os.sched_getscheduler(tids[0])

    assert policy() == os.SCHED_OTHER
    lowest = os.SCHED_IDLE if os.geteuid() == 0 else os.SCHED_BATCH  # root may undo SCHED_IDLE (CI runs as root)
    with poller_yields() as changed:
        assert changed == tids and policy() == lowest
        with poller_yields():  # nested users: the first one to come sets it, the last one to leave restores
            pass
        assert policy() == lowest
    assert policy() == os.SCHED_OTHER
    monkeypatch.setattr(device, "can_undo_idle_policy", lambda: False)  # an unprivileged process
    with poller_yields():
        assert policy() == os.SCHED_BATCH
    assert policy() == os.SCHED_OTHER

    monkeypatch.undo()
    compiled = compile(megzoo.resnet18(num_classes=10), (1, 3, 32, 32), backend="onnxruntime")
    seen = []
    runner = compiled.runner_for((1, 3, 32, 32))
    real_run = runner.run
    runner.run = lambda x: (seen.append(policy()), real_run(x))[1]
    compiled(np.zeros((1, 3, 32, 32), "float32"))
    assert seen == [lowest] and policy() == os.SCHED_OTHER


# --- library and command line -----------------------------------------------------------------------
def test_classifier_and_evaluate_follow_the_runtime(tmp_path):
    import cv2

    model = _randomise(megzoo.resnet18(num_classes=2))
    small = {"input_size": 32, "resize_size": 32}
    images = [np.random.RandomState(i).randint(0, 255, (40, 40, 3)).astype("uint8") for i in range(4)]
    clf = megzoo.Classifier(model, preprocess=small, backend="onnxruntime", categories=["a", "b"])
    logits = clf.logits(images)
    assert clf.backend_for(1) == "onnxruntime" and isinstance(clf.runner_for(1).compiled, OrtCompiledModel)
    eager = megzoo.Classifier(model, preprocess=small, backend="eager", categories=["a", "b"]).logits(images)
    assert logits.shape == (4, 2) and _rel(logits, eager) < 1e-4
    assert megzoo.Classifier(model, preprocess=small, backend="lite").backend_for(1) == "lite"
    for i, image in enumerate(images):
        folder = tmp_path / "data" / ("a" if i < 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i}.png"), image)
    result = megzoo.evaluate(tmp_path / "data", model=model, preprocess=small, backend="onnxruntime", batch_size=2,
                             workers=0, num_classes=2)
    assert result.backend == "onnxruntime" and result.runtime == "onnxruntime" and result.images == 4
    assert result.compile_seconds > 0


def test_cli_export_onnx_and_its_refusals(tmp_path):
    out = tmp_path / "r18.onnx"
    proc = subprocess.run([sys.executable, "-m", "megzoo.cli", "export", "resnet18", "-o", str(out),
                           "--input-shape", "1,3,32,32", "--opset", "13"],
                          capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ONNX opset 13, batch dynamic" in proc.stdout and "outputs output)" in proc.stdout
    assert "random normal batch (N=3)" in proc.stdout and "image sample.jpg (N=1)" in proc.stdout  # docs/sample.jpg
    assert json.loads((tmp_path / "r18.onnx.json").read_text())["model"] == "resnet18"

    bad = tmp_path / "bad.onnx"
    proc = subprocess.run([sys.executable, "-m", "megzoo.cli", "export", "resnet18", "-o", str(bad),
                           "--input-shape", "1,3,32,32", "--tolerance", "0"],
                          capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 1
    assert "parity check failed" in proc.stderr and f"{bad} not written" in proc.stderr
    assert not bad.exists() and not (tmp_path / "bad.onnx.json").exists()

    from megzoo.cli import main

    assert main(["export", "resnet18", "-o", str(tmp_path / "x.onnx"), "--layout", "nchw"]) == 2
    assert main(["export", "resnet18", "-o", str(tmp_path / "x.mge"), "--static-batch"]) == 2
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "x.mge").exists()


def test_fma_limit_without_a_compiler():
    from megzoo.benchmark import measure_fma_peak

    result = measure_fma_peak(1, repeats=1, compiler="/nonexistent/cc")
    assert result["gflops"] is None and result["error"].startswith("cannot run /nonexistent/cc: ")
    import shutil

    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(shutil, "which", lambda name: None)
    try:
        assert measure_fma_peak(1, repeats=1) == {"gflops": None, "error": "no C compiler (cc or gcc) on PATH"}
    finally:
        monkeypatch.undo()


def test_peak_estimate_counts_full_width_avx512_except_on_zen4(monkeypatch):
    from megzoo import benchmark

    def cpu(family):
        return lambda: {"model_name": "AMD EPYC", "vendor": "AuthenticAMD", "family": family, "model": "1",
                        "stepping": "1", "mhz": "3000", "flags": frozenset({"avx2", "fma", "avx512f"})}

    monkeypatch.setattr(benchmark, "cpu_info", cpu("26"))
    monkeypatch.setattr(benchmark.Path, "read_text", lambda self: (_ for _ in ()).throw(OSError()))
    assert (benchmark.cpu_peak_gflops(2)["flop_per_cycle"], benchmark.cpu_peak_gflops(2)["peak_gflops"]) == (64, 384.0)
    monkeypatch.setattr(benchmark, "cpu_info", cpu("25"))
    assert (benchmark.cpu_peak_gflops(2)["flop_per_cycle"], benchmark.cpu_peak_gflops(2)["peak_gflops"]) == (32, 192.0)


def test_both_formats_of_a_one_map_backbone_return_a_list_without_their_metadata(tmp_path):
    model = _randomise(megzoo.resnet18(features_only=True, out_indices=(4,)))
    x = np.random.RandomState(0).standard_normal((2, 3, 32, 32)).astype("float32")
    for name in ("one.mge", "one.onnx"):
        export(model, tmp_path / name, (1, 3, 32, 32))
        (tmp_path / (name + ".json")).unlink()  # a file that travelled without its JSON
        out = load(tmp_path / name)(x)
        assert isinstance(out, list) and [o.shape for o in out] == [(2, 512, 1, 1)], name
        assert _rel(out[0], _eager(model, x)[0]) < 1e-4


def test_a_trained_checkpoint_exports_with_its_own_model_classes_and_preprocessing(tmp_path, capsys):
    """``megzoo export best.pkl``: the sidecar (``best.json``) names the model, its classes, its
    width options and the preprocessing it was trained with; the metadata carries them."""
    from megzoo.cli import main

    model = megzoo.resnet18(num_classes=3, drop_rate=0.2)
    megengine.save({k: np.array(v) for k, v in model.state_dict().items()}, str(tmp_path / "best.pkl"))
    pre = {"input_size": 32, "resize_size": 36, "interpolation": "linear", "color_order": "BGR",
           "mean": [1.0, 2.0, 3.0], "std": [4.0, 5.0, 6.0]}
    (tmp_path / "best.json").write_text(json.dumps({
        "model": "resnet18", "num_classes": 3, "classes": ["cat", "dog", "eel"], "preprocess": pre,
        "model_kwargs": {"drop_rate": 0.2}, "weights_file": "best.pkl"}))
    out = tmp_path / "best.onnx"
    assert main(["export", str(tmp_path / "best.pkl"), "--input-shape", "1,3,32,32", "-o", str(out)]) == 0, \
        capsys.readouterr().err
    meta = json.loads((tmp_path / "best.onnx.json").read_text())
    assert meta["model"] == "resnet18" and meta["class_names"] == ["cat", "dog", "eel"]
    assert (meta["mean"], meta["std"], meta["resize_size"], meta["input_size"]) == ([1.0, 2.0, 3.0], [4.0, 5.0, 6.0],
                                                                                    36, 32)
