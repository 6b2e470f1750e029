"""int8 quantization: the quantizable form, calibration, the QDQ ONNX graph, Lite int8, export, QAT, CLI.

Small models and 32-px inputs: the point here is logic; speed and the digits accuracy are in
benchmarks/ (bench_inference.py --int8, bench_int8_accuracy.py) and docs/quantization.md.
"""
import json
import os

import cv2
import megengine
import megengine.module as M
import numpy as np
import pytest

import megzoo
from megzoo.models import ResNet
from megzoo.quantization import (QuantizationError, calibration_batches, convert_qat, is_qat_checkpoint,
                                 load_qat_checkpoint, prepare_qat, quantize, top1_agreement)

SIZE = 32


def _rng_batch(n, seed=0, size=SIZE):
    return np.random.RandomState(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def _run(model, x) -> np.ndarray:
    """``model(x)`` as numpy, the input on the model's device (a trainer changes the default one)."""
    return model(megengine.tensor(x, device=next(iter(model.parameters())).device)).numpy()


def _bottleneck_net(num_classes=5):
    """A small ResNeXt-style model: Bottleneck blocks, groups, projections and dilation."""
    return ResNet("bottleneck", (1, 2, 1, 1), num_classes=num_classes, groups=2, width_per_group=8,
                  replace_stride_with_dilation=(False, False, True))


def _trained_bn(model, seed=0):
    """Give every BatchNorm non-trivial running statistics and affine terms (a random model's
    are 0/1: folding them would test nothing)."""
    rng = np.random.RandomState(seed)
    for m in model.modules():
        if isinstance(m, M.BatchNorm2d):
            c = m.num_features
            for name, low, high in (("running_mean", -0.2, 0.2), ("running_var", 0.5, 2.0), ("weight", 0.5, 1.5),
                                    ("bias", -0.1, 0.1)):
                tensor = getattr(m, name)
                tensor._reset(megengine.tensor(rng.uniform(low, high, (1, c, 1, 1)).astype(np.float32),
                                               device=tensor.device))
    model.eval()
    return model


@pytest.fixture(scope="module")
def r18():
    np.random.seed(0)  # the same initial weights whatever ran before in this process
    megengine.random.seed(0)
    return _trained_bn(megzoo.resnet18(num_classes=6))


@pytest.fixture(scope="module")
def r18_int8(r18):
    return quantize(r18, _rng_batch(32), progress=False)


# --- the quantizable form ---------------------------------------------------------------------------
@pytest.mark.parametrize("build", [lambda: megzoo.resnet18(num_classes=6), _bottleneck_net,
                                   lambda: megzoo.vgg11_bn(num_classes=4), lambda: megzoo.vgg11(num_classes=4)],
                         ids=["resnet18", "bottleneck-groups-dilated", "vgg11_bn", "vgg11"])
def test_quantizable_form_computes_the_float_model(build):
    model = _trained_bn(build())
    x = _rng_batch(2)
    qmodel = model.to_quantizable()
    assert qmodel.precision == "float32"
    np.testing.assert_allclose(_run(qmodel, x), _run(model, x),
                               rtol=1e-4, atol=1e-4)
    # every BatchNorm sits inside a fused conv module (as its .bn), none on its own
    loose = [name for name, m in qmodel.named_modules() if isinstance(m, M.BatchNorm2d)
             and not name.endswith(".bn")]
    assert loose == []


def test_quantizable_form_leaves_the_float_model_alone(r18):
    before = {k: np.array(v) for k, v in r18.state_dict().items()}
    quantize(r18, _rng_batch(8), progress=False)
    after = r18.state_dict()
    assert all(np.array_equal(before[k], np.array(after[k])) for k in before)
    assert not any("Quant" in type(m).__name__ or "Conv" in type(m).__name__ and "Bn" in type(m).__name__
                   for m in r18.modules())


def test_group_norm_is_refused_with_the_reason():
    model = megzoo.resnet18(num_classes=3, norm_layer="gn")
    with pytest.raises(QuantizationError, match=r"conv1 cannot be quantized: GroupNorm normalises each image.*"
                                                 r"norm_layer='bn'"):
        model.to_quantizable()


def test_backbone_and_foreign_modules_are_refused():
    with pytest.raises(QuantizationError, match="features_only backbone"):
        megzoo.resnet18(features_only=True).to_quantizable()
    with pytest.raises(QuantizationError, match="not a megzoo model"):
        quantize(M.Sequential(M.Conv2d(3, 4, 3)), _rng_batch(2), progress=False)


# --- post-training quantization ---------------------------------------------------------------------
def test_quantize_records_what_it_did(r18_int8):
    assert r18_int8.precision == "int8"
    q = r18_int8.quantization
    assert (q["method"], q["observer"], q["calibration"]) == (
        "ptq", "minmax", {"source": "array", "images": 32, "batches": 1})


def test_int8_logits_stay_close_to_float(r18, r18_int8):
    x = _rng_batch(16, seed=1)
    ref = _run(r18, x)
    got = _run(r18_int8, x)
    assert np.abs(got - ref).max() < 0.2 * np.abs(ref).max()  # a random model: logits close together
    same, n = top1_agreement(lambda b: _run(r18, b), lambda b: _run(r18_int8, b), [x])
    assert n == 16 and same >= 0.75


@pytest.mark.parametrize("observer", ["histogram", "ema"])
def test_other_observers_calibrate(r18, observer):
    q = quantize(r18, _rng_batch(8), observer=observer, batch_size=4, progress=False)
    assert q.quantization["observer"] == observer and q.quantization["calibration"]["batches"] == 2
    x = _rng_batch(4, seed=2)
    ref = _run(r18, x)
    assert np.abs(_run(q, x) - ref).max() < 0.2 * np.abs(ref).max()


def test_calibration_inputs_are_checked(r18, tmp_path):
    with pytest.raises(ValueError, match="observer must be one of minmax, histogram, ema"):
        quantize(r18, _rng_batch(2), observer="percentile", progress=False)
    with pytest.raises(ValueError, match=r"preprocessed \(N, C, H, W\) float32 arrays, got shape \(3, 32, 32\)"):
        quantize(r18, [np.zeros((3, SIZE, SIZE), np.float32)], progress=False)
    with pytest.raises(FileNotFoundError, match="calibration folder .*missing does not exist"):
        quantize(r18, str(tmp_path / "missing"), progress=False)
    with pytest.raises(ValueError, match="no image files under"):
        quantize(r18, str(tmp_path), progress=False)


def test_a_folder_is_read_with_the_preprocessing_and_capped(tmp_path):
    for cls in ("a", "b"):
        os.makedirs(tmp_path / cls)
        for i in range(5):
            cv2.imwrite(str(tmp_path / cls / f"{i}.png"), np.full((40, 48, 3), 20 * i, np.uint8))
    batches = list(calibration_batches(str(tmp_path), {"input_size": SIZE, "resize_size": SIZE}, batch_size=4,
                                       max_images=6))
    assert [b.shape for b in batches] == [(4, 3, SIZE, SIZE), (2, 3, SIZE, SIZE)]
    # spread over the sorted files: both class folders contribute
    assert batches[0][0].mean() != batches[1][-1].mean()


# --- the int8 QDQ ONNX graph on ONNX Runtime, and Lite ------------------------------------------------
def _optimized_ops(proto, tmp_path):
    import collections

    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)


def test_qdq_graph_becomes_int8_kernels_in_onnx_runtime(r18_int8, tmp_path):
    from megzoo.inference.ort_compiled import onnx_model

    ops = _optimized_ops(onnx_model(r18_int8, (1, 3, SIZE, SIZE)), tmp_path)
    assert ops["QLinearConv"] == 20  # every convolution of ResNet-18 (16 in blocks + stem + 3 projections)
    assert ops["QLinearAdd"] == 8  # the residual adds, their ReLU folded into the quantization
    assert ops["Conv"] == 0 and ops.get("FusedConv", 0) == 0 and ops["Relu"] == 0


def test_onnx_runtime_int8_matches_eager_int8_within_two_output_steps(r18_int8):
    x = _rng_batch(6, seed=0)[:6]  # calibration images, as the export check uses
    compiled = megzoo.compile(r18_int8, backend="onnxruntime")
    got, ref = compiled(x), _run(r18_int8, x)
    step = r18_int8.output_step(x)
    assert 0 < step and np.abs(got - ref).max() <= 2 * step


def test_last_step_is_the_scale_of_the_tensor_the_head_reads(r18_int8):
    from megengine.core.tensor import dtype as qdtype

    last_block = r18_int8.levels[-1][-1]  # the residual add runs after the block body's last conv
    add_step = qdtype.get_scale(last_block.add_relu.output_dtype)
    body_step = qdtype.get_scale(last_block.body[-1].output_dtype)
    assert r18_int8.last_step() == pytest.approx(add_step, rel=1e-6)
    assert abs(add_step - body_step) > 1e-3 * add_step  # the two differ: the wrong one would be caught
    x = _rng_batch(2, seed=3)
    assert r18_int8.last_step(x) == pytest.approx(add_step, rel=1e-6)
    with pytest.raises(QuantizationError, match="in float32 form: it has no int8 steps yet"):
        megzoo.resnet18(num_classes=6).to_quantizable().output_step(x)


def test_static_batch_int8_onnx_loads_and_checks_on_its_batch(r18_int8, tmp_path):
    from megzoo.inference import export, load

    path = tmp_path / "r18_static.onnx"
    report = export(r18_int8, path, (2, 3, SIZE, SIZE), dynamic_batch=False, parity_inputs={"calib": _rng_batch(8)})
    assert report.metadata["dynamic_batch"] is False and report.parity["max_rel"] <= 2.0
    loaded = load(path, threads=2, backend="onnxruntime")  # its batch splitting is ONNX Runtime's
    assert loaded.int8 and not loaded.runner_for((2, 3, SIZE, SIZE)).split_batch  # one batch size: nothing to split
    x = _rng_batch(2, seed=6)
    assert np.abs(loaded(x) - _run(r18_int8, x)).max() <= 2 * r18_int8.output_step(x)
    with pytest.raises(ValueError, match=r"a static-batch export: export again without --static-batch"):
        loaded(_rng_batch(3))


def test_explicit_tolerance_is_kept_for_int8(r18_int8, tmp_path):
    from megzoo.inference import export

    report = export(r18_int8, tmp_path / "a.onnx", (1, 3, SIZE, SIZE), tolerance=5.0,
                    parity_inputs={"calib": _rng_batch(2)})
    assert report.parity["tolerance"] == 5.0
    float_report = export(megzoo.resnet18(num_classes=2), tmp_path / "f.onnx", (1, 3, SIZE, SIZE))
    assert float_report.parity["tolerance"] == 1e-4


def test_frozen_batch_norm_stays_frozen_under_qat():
    model = megzoo.resnet18(num_classes=3, norm_layer="frozen_bn")
    qat = prepare_qat(model)
    trainable = {id(p) for p in qat.trainable_parameters()}
    frozen = [p for m in qat.modules() if type(m).__name__ == "FrozenBatchNorm2d" for p in m.parameters()]
    assert frozen and not any(id(p) in trainable for p in frozen)
    n_conv = sum(int(np.prod(p.shape)) for p in qat.parameters() if id(p) in trainable)
    assert n_conv == sum(int(np.prod(p.shape)) for p in qat.parameters()) - sum(int(np.prod(p.shape)) for p in frozen)


def test_max_images_must_be_positive(r18):
    with pytest.raises(ValueError, match=r"max_images must be a positive int \(or None for all\), got 0"):
        quantize(r18, _rng_batch(2), max_images=0, progress=False)


def test_auto_compiles_int8_on_the_measured_int8_choice_and_lite_is_exact(r18_int8, monkeypatch):
    from megzoo.inference import CompiledModel, OrtCompiledModel, best_backend

    monkeypatch.delenv("MEGZOO_BACKEND", raising=False)
    auto = megzoo.compile(r18_int8)
    assert auto.backend == best_backend("int8")  # int8 is measured, not assumed (issue 33)
    x = _rng_batch(3, seed=4)
    assert np.abs(auto(x) - _run(r18_int8, x)).max() <= 2 * r18_int8.output_step(x)
    ort = megzoo.compile(r18_int8, backend="onnxruntime")
    assert isinstance(ort, OrtCompiledModel) and ort.int8 and ort.split_batch
    lite = megzoo.compile(r18_int8, backend="lite", algo="heuristic")
    assert isinstance(lite, CompiledModel)
    x = _rng_batch(3, seed=4)
    np.testing.assert_allclose(lite(x), _run(r18_int8, x), atol=1e-5)
    assert lite.layout == "nchw"
    with pytest.raises(ValueError, match="layout 'nchw88' has no int8 kernels in MegEngine 1.13"):
        megzoo.compile(r18_int8, backend="lite", layout="nchw88")


@pytest.mark.parametrize("norm", ["bn", None])
def test_vgg_int8_on_both_runtimes(norm):
    from megzoo.models import VGG

    model = _trained_bn(VGG((1, 1, 2, 2, 2), widths=(8, 16, 16, 32, 32), num_classes=4, norm_layer=norm))
    q = quantize(model, _rng_batch(8), progress=False)
    kinds = {type(m).__name__ for m in q.modules()}
    assert ("ConvBnRelu2d" if norm else "ConvRelu2d") in kinds
    x = _rng_batch(2, seed=9)
    ref = _run(q, x)
    assert np.abs(megzoo.compile(q, backend="onnxruntime")(x) - ref).max() <= 2 * q.output_step(x)
    np.testing.assert_allclose(megzoo.compile(q, backend="lite", algo="heuristic")(x), ref, atol=1e-5)


def test_split_batch_gives_the_unsplit_outputs(r18_int8):
    from megzoo.inference.ort import OrtRunner
    from megzoo.inference.ort_compiled import onnx_model

    source = onnx_model(r18_int8, (1, 3, SIZE, SIZE)).SerializeToString()
    split, whole = OrtRunner(source, 2, split_batch=True), OrtRunner(source, 2)
    x = _rng_batch(5, seed=5)
    assert split.split_batch and not whole.split_batch
    np.testing.assert_allclose(split.run(x)[0], whole.run(x)[0], atol=1e-5)
    split.close()


def test_float_form_is_not_exported_as_int8(r18):
    from megzoo.inference.ort_compiled import onnx_model

    with pytest.raises(QuantizationError, match="in float32 form: export the float model, or quantize it first"):
        onnx_model(r18.to_quantizable(), (1, 3, SIZE, SIZE))


# --- export ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", ["onnx", "mge"])
def test_export_int8_writes_metadata_and_checks_in_steps(r18_int8, tmp_path, suffix):
    from megzoo.inference import export, load

    path = tmp_path / f"r18_int8.{suffix}"
    report = export(r18_int8, path, (1, 3, SIZE, SIZE), parity_inputs={"calibration": _rng_batch(4)})
    meta = json.loads((tmp_path / f"r18_int8.{suffix}.json").read_text())
    assert meta["int8"] is True and meta["quantization"]["observer"] == "minmax"
    assert meta["parity"]["tolerance"] == 2.0 and report.parity["unit"] == "int8 output steps"
    assert set(report.parity["inputs"]) >= {"calibration"}
    assert all(r["rel"] <= 2.0 and r["step"] > 0 for r in report.parity["inputs"].values())
    if suffix == "mge":
        assert meta["layout"] == "nchw"
    loaded = load(path)
    x = _rng_batch(4)  # calibration images
    assert np.abs(loaded(x) - _run(r18_int8, x)).max() <= 2 * r18_int8.output_step(x)
    if suffix == "onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        assert props["int8"] == "true" and json.loads(props["quantization"])["method"] == "ptq"
        on_ort = load(path, backend="onnxruntime")  # whichever auto measured fastest above; ONNX Runtime splits
        assert loaded.int8 and on_ort.int8 and on_ort.split_batch


def test_export_int8_parity_failure_writes_nothing(r18_int8, tmp_path):
    from megzoo.inference import ParityError, export

    with pytest.raises(ParityError, match="int8 output steps, above the tolerance 1e-09"):
        export(r18_int8, tmp_path / "x.onnx", (1, 3, SIZE, SIZE), tolerance=1e-9,
               parity_inputs={"calibration": _rng_batch(4)})
    assert not list(tmp_path.iterdir())


# --- quantization-aware training ----------------------------------------------------------------------
def _shapes(root, n=6):
    rng = np.random.RandomState(0)
    for split in ("train", "val"):
        for k, cls in enumerate(("dark", "mid", "light")):
            os.makedirs(root / split / cls)
            for i in range(n):
                img = np.clip(rng.normal(60 + 70 * k, 20, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
                cv2.imwrite(str(root / split / cls / f"{i}.png"), img)
    return root


def test_qat_checkpoint_reloads_as_the_int8_model(tmp_path, capsys):
    from megzoo.train import TrainConfig
    from megzoo.train.trainer import Trainer

    data = _shapes(tmp_path / "data")
    config = TrainConfig(model="resnet18", data=str(data), output=str(tmp_path / "run"), qat=True, input_size=SIZE,
                         resize_size=SIZE, epochs=1, batch_size=6, lr=0.001, warmup_epochs=0, workers=0,
                         progress=False, plot=False, device="cpu", cpu_threads=1)
    trainer = Trainer(config)
    assert trainer.model.precision == "qat" and trainer.fast_conv is None
    trainer.fit()
    best = tmp_path / "run" / "best.pkl"
    meta = json.loads((tmp_path / "run" / "best.json").read_text())
    assert meta["qat"] is True and meta["quantization"] == {"method": "qat", "observer": "ema"}
    assert is_qat_checkpoint(best) and not is_qat_checkpoint(tmp_path / "nothing.pkl")
    reloaded = load_qat_checkpoint(best)
    converted = convert_qat(trainer.model)
    x = _rng_batch(3, seed=7)
    np.testing.assert_allclose(_run(reloaded, x), _run(converted, x),
                               atol=1e-5)
    assert reloaded.precision == "int8" and reloaded.num_classes == 3

    # loaded as float weights: the error says how to load it
    from megzoo.weights.convert import ArchitectureMismatchError

    with pytest.raises(ArchitectureMismatchError, match=r"quantization-aware .* checkpoint, which loads as the int8 "
                                                        r"model: add --int8"):
        megzoo.resnet18(pretrained=str(best), num_classes=3)
    # resuming the QAT run as a float one is refused before anything is loaded
    from dataclasses import replace

    with pytest.raises(ValueError, match=r"last.pkl is a quantization-aware \(qat\) run, and this one is not qat; "
                                         r"use another output folder \(--output\) or start afresh"):
        Trainer(replace(config, qat=False, epochs=2))

    # export of the QAT checkpoint at a static batch: calibration images check it, no recalibration
    from megzoo.cli import main

    out = tmp_path / "qat_static.onnx"
    code = main(["export", str(best), "--int8", "--calibration", str(data / "train"), "--static-batch",
                 "--input-shape", f"2,3,{SIZE},{SIZE}", "-o", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "calibrated on" not in printed.err  # a QAT checkpoint is already int8
    assert "top-1 agreement with an fp32 model not measured: a QAT checkpoint has no fp32 form" in printed.out
    meta = json.loads((tmp_path / "qat_static.onnx.json").read_text())
    assert meta["dynamic_batch"] is False and "calibration images" in meta["parity"]["inputs"]
    assert meta["class_names"] == ["dark", "light", "mid"] and meta["quantization"]["method"] == "qat"

    # a QAT checkpoint with a non-finite weight is refused by name, as float weights are
    from megzoo.weights import WeightsError

    state = megengine.load(str(best))
    state["head.fc.weight"] = np.full(state["head.fc.weight"].shape, np.nan, np.float32)
    megengine.save(state, str(best))
    with pytest.raises(WeightsError,
                       match=rf"^weights from {best}: tensor 'head.fc.weight' has 1536 non-finite values "):
        load_qat_checkpoint(best)


def test_prepare_qat_is_a_fake_quantized_copy(r18):
    qat = prepare_qat(r18)
    assert qat.precision == "qat" and qat.training
    qat.eval()
    x = _rng_batch(2, seed=8)
    ref = _run(r18, x)
    assert np.abs(_run(qat, x) - ref).max() > 0  # rounded to int8 steps
    with pytest.raises(QuantizationError, match="is not a QAT checkpoint"):
        load_qat_checkpoint(os.path.join(os.path.dirname(__file__), "missing.pkl"))


# --- command line ---------------------------------------------------------------------------------
def test_cli_export_int8_prints_parity_in_steps_and_agreement(tmp_path, capsys):
    from megzoo.cli import main

    data = _shapes(tmp_path / "data", n=4)
    out = tmp_path / "r18_int8.onnx"
    code = main(["export", "resnet18", "--num-classes", "3", "--int8", "--calibration", str(data / "train"),
                 "--input-shape", f"1,3,{SIZE},{SIZE}", "-o", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "parity vs the eager int8 model (tolerance 2 output steps; one step = the most" in printed.out
    assert "top-1 agreement of r18_int8.onnx with the fp32 model:" in printed.out
    assert "of 12 calibration images" in printed.out
    assert "calibrated on 12 images of" in printed.err
    meta = json.loads((tmp_path / "r18_int8.onnx.json").read_text())
    assert meta["quantization"]["calibration"]["images"] == 12


def test_cli_int8_needs_calibration_or_a_qat_checkpoint(tmp_path, capsys):
    from megzoo.cli import main

    assert main(["export", "resnet18", "--int8", "-o", str(tmp_path / "x.onnx")]) != 0
    assert "--int8 needs --calibration DIR" in capsys.readouterr().err
    assert main(["export", "resnet18", "--calibration", str(tmp_path), "-o", str(tmp_path / "x.onnx")]) != 0
    assert "--calibration is for --int8 exports" in capsys.readouterr().err
    with pytest.raises(ValueError, match="int8 needs calibration images"):
        megzoo.Classifier("resnet18", False, int8=True)


def test_int8_export_takes_explicit_arguments_and_refuses_a_float_model_without_images(tmp_path):
    """The library side of ``megzoo export --int8`` (megzoo.quantization.export_int8): no argparse in sight."""
    from megzoo.quantization import Int8Export, MissingCalibrationError

    with pytest.raises(MissingCalibrationError, match=r"^an int8 export of a float model needs calibration images "
                                                      r"\(calibration=DIR, e.g. the training folder\), or a "
                                                      r"quantization-aware \(QAT\) checkpoint$"):
        Int8Export((1, 3, SIZE, SIZE), checkpoint="resnet18")
    assert issubclass(MissingCalibrationError, ValueError)  # the CLI's error path, as before
    int8 = Int8Export([2, 3, SIZE, SIZE], calibration=str(tmp_path), static_batch=True)
    assert (int8.input_shape, int8.observer, int8.max_images, int8.qat_checkpoint) == ((2, 3, SIZE, SIZE), "minmax",
                                                                                      512, False)
    # a fake-quantized model has no fp32 form to agree with: nothing is compiled or read
    assert int8.agreement(prepare_qat(_bottleneck_net()), tmp_path / "missing.onnx") is None


def test_cli_eval_int8_runs_the_quantized_model(tmp_path, capsys):
    from megzoo.cli import main
    from megzoo.inference import best_backend

    data = _shapes(tmp_path / "data", n=4)
    weights = tmp_path / "r18_3.pkl"
    megengine.save({k: np.array(v) for k, v in megzoo.resnet18(num_classes=3).state_dict().items()}, str(weights))
    code = main(["eval", "--model", "resnet18", "--weights", str(weights), "--num-classes", "3",
                 "--data", str(data / "val"), "--int8", "--calibration", str(data / "train"), "--no-progress",
                 "--json"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    result = json.loads(printed.out)
    assert result["images"] == 12 and result["backend"] == "compiled"
    assert result["runtime"] == best_backend("int8") and result["precision"] == "int8"
