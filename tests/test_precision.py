"""``precision`` across the front doors (issue 33): fp32 by default everywhere, bf16 only when asked for and
only where the CPU and a backend run it (refused before any work elsewhere, with the reason), never on the
eager path; the parity report's top-1 agreement; export's bf16 check; ``megzoo predict/eval/export/benchmark
--precision``. On a CPU with BF16 the same tests run bf16 for real."""
import json

import megengine
import numpy as np
import pytest
from test_predict_eval import SMALL

import megzoo
from megzoo.cli import main
from megzoo.host import cpu_flags, cpu_info
from megzoo.inference import export
from megzoo.inference.export import BF16_TOLERANCE, check_parity
from megzoo.metrics import same_top1

HAS_BF16 = bool({"avx512_bf16", "amx_bf16"} & set(cpu_flags()))
REFUSAL = (f"precision='bf16' needs a CPU with BF16 arithmetic (avx512_bf16 or amx_bf16); this CPU "
           f"({cpu_info()['model_name']}) has none: use precision='fp32' (the default)")


@pytest.fixture(scope="module")
def small():
    model = megzoo.resnet18(num_classes=10)
    model.eval()
    return model


def test_same_top1_counts_rows_with_the_same_class():
    ref = np.array([[0.0, 1.0, 0.5], [2.0, 1.0, 0.0], [0.0, 0.0, 3.0]], np.float32)
    got = np.array([[0.0, 0.9, 0.95], [2.0, 1.0, 0.0], [0.1, 0.0, 3.0]], np.float32)  # row 0 changes class
    assert same_top1(got, ref) == (2, 3)
    assert same_top1(got[:, :1], ref[:, :1]) is None  # one class: nothing to agree on
    assert same_top1(got.reshape(-1), ref.reshape(-1)) is None  # not (N, classes) logits


def test_parity_report_carries_top1_per_input_and_overall(small):
    x = np.random.RandomState(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    eager = small(megzoo_tensor(x)).numpy()
    flipped = eager.copy()
    first = int(eager[0].argmax())
    flipped[0, (first + 1) % 10] = eager[0, first] + 1.0  # one image changes class

    report = check_parity(small, lambda batch: flipped[:batch.shape[0]], {"a": x, "b": x[:2]}, tolerance=10.0)
    assert report["inputs"]["a"]["top1"] == [3, 4] and report["inputs"]["b"]["top1"] == [1, 2]
    assert report["top1_agreement"] == 4 / 6


def megzoo_tensor(x):
    import megengine

    return megengine.tensor(x)


def test_bf16_export_check_runs_in_bf16_or_is_refused_before_writing(small, tmp_path):
    path = tmp_path / "m.onnx"
    if HAS_BF16:
        report = export(small, path, (1, 3, 32, 32), precision="bf16")
        parity = json.loads((tmp_path / "m.onnx.json").read_text())["parity"]
        assert parity["precision"] == "bf16" and parity["backend"] == "openvino"
        assert parity["tolerance"] == BF16_TOLERANCE and report.parity["max_rel"] <= BF16_TOLERANCE
        assert 0.0 <= parity["top1_agreement"] <= 1.0
    else:
        with pytest.raises(ValueError) as info:
            export(small, path, (1, 3, 32, 32), precision="bf16")
        assert str(info.value) == REFUSAL
        assert list(tmp_path.iterdir()) == []  # refused before anything was written
    report = export(small, tmp_path / "f.onnx", (1, 3, 32, 32))  # the default: fp32, ONNX Runtime, all agree
    parity = report.metadata["parity"]
    assert (parity["precision"], parity["backend"], parity["top1_agreement"]) == ("fp32", "onnxruntime", 1.0)
    if not HAS_BF16:  # loaded in bf16: the reason bf16 cannot run here, not a backend the user never named
        with pytest.raises(ValueError) as info:
            megzoo.inference.load(tmp_path / "f.onnx", precision="bf16")
        assert str(info.value) == REFUSAL
    else:
        assert megzoo.inference.load(tmp_path / "f.onnx", precision="bf16").precision == "bf16"
    export(small, tmp_path / "f.mge", (1, 3, 32, 32), check=False)
    with pytest.raises(ValueError) as info:
        megzoo.inference.load(tmp_path / "f.mge", precision="bf16")
    assert str(info.value) == ("precision='bf16' is not run by any backend that loads .mge files (lite); leave "
                               "precision out for fp32")


@pytest.mark.parametrize("args, why", [
    (["-o", "m.mge"], "a .mge runs in fp32 or int8 (MegEngine Lite has no bf16)"),
    (["-o", "m.onnx", "--no-check"], "--no-check runs nothing"),
    (["-o", "m.onnx", "--int8", "--calibration", "nowhere"], "--int8 writes an int8 model"),
])
def test_bf16_export_check_needs_a_checked_float_onnx(tmp_path, capsys, monkeypatch, args, why):
    monkeypatch.chdir(tmp_path)
    import megzoo.cli.deploy as deploy

    def never(*a, **k):
        raise AssertionError("the model was built before the refusal")

    monkeypatch.setattr(deploy, "_export_model", never)
    assert main(["export", "resnet18", "--input-shape", "1,3,32,32", "--precision", "bf16", *args]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"megzoo export: error: --precision bf16 checks a float .onnx file in bf16; {why}: leave --precision out")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError) as info:  # the library says it in its own words
        export(megzoo.resnet18(num_classes=4), tmp_path / "m.mge", (1, 3, 32, 32), precision="bf16")
    assert str(info.value) == ("precision='bf16' checks a float .onnx file in bf16; a .mge runs in fp32 or int8 "
                               "(MegEngine Lite has no bf16): leave precision out")


def test_classifier_runs_bf16_compiled_or_refuses_and_never_eager(small):
    with pytest.raises(ValueError) as info:
        megzoo.Classifier(small, preprocess=SMALL, backend="eager", precision="bf16")
    assert str(info.value) == ("precision='bf16' is run by a compiled backend; backend='eager' and runner= run the "
                               "model as it is: use backend='auto' or a compiled backend")
    with pytest.raises(ValueError) as info:
        megzoo.Classifier(small, preprocess=SMALL, precision="half")
    assert str(info.value) == "precision must be 'fp32' or 'bf16', got 'half'"
    if HAS_BF16:
        clf = megzoo.Classifier(small, preprocess=SMALL, precision="bf16", threads=2)
        assert clf.backend_for(1) == "compiled" and clf.runner_for(1).compiled.precision == "bf16"
    else:
        with pytest.raises(ValueError) as info:
            megzoo.Classifier(small, preprocess=SMALL, precision="bf16")
        assert str(info.value) == REFUSAL


def test_cli_predict_eval_and_benchmark_run_bf16_or_say_why_not(tmp_path, capsys):
    image = tmp_path / "x.png"
    import cv2

    assert cv2.imwrite(str(image), np.zeros((40, 40, 3), np.uint8))
    weights = tmp_path / "r18.pkl"
    megengine.save(megzoo.resnet18().state_dict(), str(weights))
    predict = ["predict", str(image), "--model", "resnet18", "--weights", str(weights), "--precision", "bf16"]
    if HAS_BF16:
        assert main(predict + ["--json", "--threads", "2"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert (out["backend"], out["precision"]) == ("compiled", "bf16")
        return
    for argv in (predict,
                 ["eval", "--data", str(tmp_path), "--model", "resnet18", "--weights", str(weights),
                  "--precision", "bf16"],
                 ["benchmark", "--models", "resnet18", "--batch", "1", "--precision", "bf16"]):
        assert main(argv) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == f"megzoo {argv[0]}: error: {REFUSAL}"
