"""``megzoo.predict`` / ``Classifier`` / ``megzoo.evaluate`` and the ``predict`` / ``eval`` commands,
with a ResNet-18 whose weights are built so that its prediction is known: it classifies the
image's colour.

The "colour" ResNet-18: every convolution is zero except ``conv1``, which copies input channel c
(c = B, G, R) to feature c, and the shortcut projections, which pass features 0-2 on; the stem
BatchNorm adds 10 so they stay positive through the ReLUs. The pooled features are then
``f_c = (x_c / s + 10) / s**3`` (x_c: the normalised channel mean, s = sqrt(1 + 1e-5) from the 4
BatchNorms on the path), and the classifier scores tench = f_B, goldfish = f_G,
great_white_shark = f_R, tiger_shark = f_B - 1, every other class -100. So a blue image is a
tench with a tiger shark second, a green one a goldfish, a red one a great white shark; a model
fed RGB instead of BGR, or another normalisation, gets other classes or probabilities.
"""
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import megengine
import numpy as np
import pytest

import megzoo
from megzoo.cli import main
from megzoo.evaluate import find_samples, spread_indices
from megzoo.predict import Classifier, softmax
from megzoo.weights.catalog import MEAN_BGR, STD_BGR
from http_server import FileServer

MGE_FILE = "resnet18_naiveaug_70312_78a63ca6.pkl"  # the name of resnet18's default (MegEngine) weights
BLUE, GREEN, RED = (200, 40, 30), (60, 220, 30), (40, 50, 210)  # BGR
WNIDS = {"tench": "n01440764", "goldfish": "n01443537", "great_white_shark": "n01484850",
         "tiger_shark": "n01491361"}
REPO = Path(__file__).resolve().parents[1]
SMALL = {"input_size": 64, "resize_size": 64}  # the colour model works at any size; keeps the tests fast


def colour_state_dict():
    model = megzoo.resnet18()
    state = {k: np.zeros_like(v) for k, v in model.state_dict().items()}
    for key in state:  # BatchNorms: identity
        if key.endswith("running_var") or (key.endswith(".weight") and state[key].ndim == 1):
            state[key][...] = 1
    for c in range(3):
        state["conv1.weight"][c, c, 3, 3] = 1
        state["bn1.bias"][c] = 10
        for layer in (2, 3, 4):
            state[f"layer{layer}.0.downsample.0.weight"][c, c, 0, 0] = 1
    state["fc.bias"][:] = -100
    for cls, channel, bias in ((0, 0, 0), (1, 1, 0), (2, 2, 0), (3, 0, -1)):
        state["fc.weight"][cls, channel] = 1
        state["fc.bias"][cls] = bias
    return state


def expected_probabilities(bgr):
    """Softmax over (tench, goldfish, great_white_shark, tiger_shark) for a uniform image of colour ``bgr``."""
    s = np.sqrt(1 + 1e-5)
    x = (np.float32(bgr) - np.float32(MEAN_BGR)) / np.float32(STD_BGR)
    f = (x.astype(np.float64) / s + 10) / s ** 3
    return softmax(np.array([f[0], f[1], f[2], f[0] - 1]))


def _uniform(bgr, height=300, width=400):
    image = np.empty((height, width, 3), np.uint8)
    image[:] = bgr
    return image


@pytest.fixture(autouse=True)
def keep_default_device():
    """The commands run in-process set MegEngine's default device: give later tests theirs back."""
    previous = megengine.get_default_device()
    yield
    megengine.set_default_device(previous)


@pytest.fixture(scope="module")
def state():
    return colour_state_dict()


@pytest.fixture(scope="module")
def colour_model(state):
    model = megzoo.resnet18()
    model.load_state_dict(state)
    model.eval()
    return model


@pytest.fixture(scope="module")
def pickled(state):
    buffer = io.BytesIO()
    megengine.save(state, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def weight_file(pickled, tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "colour_resnet18.pkl"
    path.write_bytes(pickled)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """blue.png (lossless), green.jpg, red.bmp."""
    directory = tmp_path_factory.mktemp("images")
    paths = {}
    for name, bgr, ext in (("blue", BLUE, ".png"), ("green", GREEN, ".jpg"), ("red", RED, ".bmp")):
        paths[name] = directory / f"{name}{ext}"
        assert cv2.imwrite(str(paths[name]), _uniform(bgr))
    return paths


@pytest.fixture
def served(pickled, tmp_path, monkeypatch):
    """resnet18's default weights (the colour model) on a local HTTP server; an empty megzoo home."""
    with FileServer({"/models/weights/" + MGE_FILE: pickled}) as server:
        monkeypatch.setenv("MEGZOO_HOME", str(tmp_path / "home"))
        monkeypatch.setenv("MEGZOO_MIRRORS", f"https://data.megengine.org.cn/={server.base_url}/")
        monkeypatch.delenv("MEGZOO_OFFLINE", raising=False)
        monkeypatch.delenv("MEGZOO_DEVICE", raising=False)
        yield server


# -- Python API ------------------------------------------------------------------------------------

def test_classifier_predicts_the_colour_classes(colour_model, images):
    assert Classifier(colour_model).preprocess.resize_size == 256  # no registered weights: the defaults
    clf = Classifier(colour_model, preprocess=SMALL)
    assert clf.weights is None and clf.num_classes == 1000 and clf.preprocess.input_size == 64
    results = clf.predict([images["blue"], str(images["green"]), images["red"].read_bytes(), _uniform(BLUE)], topk=4)
    assert [r.image for r in results] == [str(images["blue"]), str(images["green"]), "<bytes #2>", "<array #3>"]
    assert [[s.name for s in r.topk] for r in results] == [
        ["tench", "tiger_shark", "goldfish", "great_white_shark"],
        ["goldfish", "tench", "great_white_shark", "tiger_shark"],
        ["great_white_shark", "tench", "goldfish", "tiger_shark"],
        ["tench", "tiger_shark", "goldfish", "great_white_shark"],
    ]
    assert [s.index for s in results[0].topk] == [0, 3, 1, 2]
    assert results[0].top.wnid == "n01440764"
    for result, bgr in zip(results, (BLUE, None, RED, BLUE)):
        if bgr is None:  # the JPEG is only nearly uniform
            continue
        expected = expected_probabilities(bgr)
        got = {s.index: s.probability for s in result.topk}
        assert [got[i] for i in range(4)] == pytest.approx(expected, abs=1e-5)
    assert sum(s.probability for s in results[1].topk) == pytest.approx(1.0, abs=1e-9)  # others have e^-110


def test_predict_function_and_single_images(colour_model, images):
    [one] = megzoo.predict(images["red"], model=colour_model, topk=2, preprocess=SMALL)
    assert [(s.name, s.index, s.wnid) for s in one.topk] == [("great_white_shark", 2, "n01484850"),
                                                            ("tench", 0, "n01440764")]
    assert one.as_dict()["topk"][0] == {"index": 2, "name": "great_white_shark",
                                        "probability": one.top.probability, "wnid": "n01484850"}
    clf = Classifier(colour_model, batch_size=2, workers=2, preprocess=SMALL)
    assert clf.logits([_uniform(BLUE)] * 5).shape == (5, 1000)
    assert clf.probabilities(_uniform(GREEN)).shape == (1, 1000)
    with pytest.raises(ValueError, match=r"^topk must be a positive int, got 0$"):
        clf.predict(_uniform(RED), topk=0)
    clf.close()


def test_the_runner_is_the_one_swappable_model_call(colour_model, images):
    seen = []

    def runner(batch):
        seen.append(batch.copy())
        logits = np.zeros((batch.shape[0], 10), np.float32)
        logits[:, 7] = 5
        return logits

    clf = Classifier(colour_model, runner=runner, categories=[f"c{i}" for i in range(10)])
    [result] = clf.predict(images["blue"], topk=3)
    assert [s.name for s in result.topk] == ["c7", "c0", "c1"]  # ties: lower index first
    assert len(seen) == 1 and np.array_equal(seen[0], megzoo.EvalPreprocessor()([images["blue"]]))
    bad = Classifier(colour_model, runner=lambda batch: np.zeros(3))
    with pytest.raises(ValueError, match=r"^the runner returned shape \(3,\) for a batch of 1; it must return "
                                         r"\(N, num_classes\) logits$"):
        bad.predict(images["blue"])


def test_classifier_from_a_served_name_uses_the_weights_preprocessing(served, images):
    clf = Classifier("resnet18", progress=False)
    assert clf.weights == "resnet18.megengine"
    assert clf.predict(images["green"])[0].top.name == "goldfish"
    assert len(served.requests_for("/models/weights/" + MGE_FILE)) == 1


def test_a_checkpoint_with_another_classifier_size_is_refused(weight_file):
    with pytest.raises(megzoo.weights.WeightsError,
                       match=rf"^{weight_file}: the checkpoint's classifier does not fit resnet18 with "
                             r"num_classes=10 \(fc.bias, fc.weight would be random\); give the number of classes "
                             r"it was trained with \(num_classes=N, --num-classes N\)$"):
        Classifier("resnet18", str(weight_file), num_classes=10)


def test_device_choice_is_quiet_and_leaves_the_default_alone(monkeypatch):
    from megzoo.device import cuda_available, quiet_device, select_device, using_device

    monkeypatch.delenv("MEGZOO_DEVICE", raising=False)
    megengine.set_default_device("xpux")
    clf = Classifier("resnet18", weights=False, preprocess=SMALL)
    assert megengine.get_default_device() == "xpux"  # the program's default is untouched
    expected = "xpux" if cuda_available() else "cpux"
    assert quiet_device() == expected and str(next(iter(clf.model.parameters())).device).startswith(expected[:3])
    monkeypatch.setenv("MEGZOO_DEVICE", "cpu")
    assert quiet_device() == "cpux" and quiet_device("cpu0") == "cpu0"
    with using_device("cpu0"):
        assert megengine.get_default_device() == "cpu0"
    assert megengine.get_default_device() == "xpux"
    assert select_device() == "cpux" and megengine.get_default_device() == "cpux"
    if not cuda_available():
        with pytest.raises(ValueError, match=r"^device 'gpux' asked for, but MegEngine finds no usable CUDA GPU here "
                                             r"\(use cpu, or check the NVIDIA driver\)$"):
            select_device("gpu")


# -- megzoo predict --------------------------------------------------------------------------------

def test_cli_predict_text_and_json_from_served_weights(served, images, capsys):
    assert main(["predict", str(images["blue"]), str(images["red"]), "--model", "resnet18", "--topk", "3"]) == 0
    out, err = capsys.readouterr()
    p_blue, p_red = expected_probabilities(BLUE), expected_probabilities(RED)
    lines = out.splitlines()
    assert lines[0] == str(images["blue"]) and lines[4] == str(images["red"])
    assert [line.split(maxsplit=1)[1] for line in lines[1:4]] == ["tench (0)", "tiger_shark (3)", "goldfish (1)"]
    assert [line.split(maxsplit=1)[1] for line in lines[5:8]] == ["great_white_shark (2)", "tench (0)", "goldfish (1)"]
    assert [float(line.split()[0]) for line in lines[1:4]] == pytest.approx([p_blue[0], p_blue[3], p_blue[1]], abs=6e-5)
    assert [float(line.split()[0]) for line in lines[5:8]] == pytest.approx([p_red[2], p_red[0], p_red[1]], abs=6e-5)
    assert lines[1] == f"  {p_blue[0]:8.4f}  tench (0)" and len(lines) == 8
    assert err == ""

    assert main(["predict", str(images["green"]), "--model", "resnet18", "--topk", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "resnet18" and result["weights"] == "resnet18.megengine"
    [entry] = result["results"]
    assert entry["image"] == str(images["green"])
    assert [(s["name"], s["index"], s["wnid"]) for s in entry["topk"]] == [
        ("goldfish", 1, "n01443537"), ("tench", 0, "n01440764")]
    assert len(served.requests_for("/models/weights/" + MGE_FILE)) == 1  # downloaded once, then cached


def test_cli_predict_subprocess_is_quiet_on_stderr(served, images):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "megzoo.cli", "predict", str(images["red"]), "--model",
                             "resnet18", "--topk", "1"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no CUDA probing noise, no progress bar off a terminal
    p_red = expected_probabilities(RED)
    assert result.stdout == f"{images['red']}\n  {p_red[2]:8.4f}  great_white_shark (2)\n"


def test_cli_predict_offline_says_how_to_prefetch(served, images, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MEGZOO_OFFLINE", "1")
    assert main(["predict", str(images["blue"]), "--model", "resnet18"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    dest = tmp_path / "home" / "weights" / MGE_FILE
    assert lines[0].startswith(f"megzoo predict: error: {MGE_FILE}: it is not cached, and MEGZOO_OFFLINE is set, "
                               f"so it is not downloaded. Place the file at {dest} ")
    assert len(lines) <= 2 and "`megzoo download resnet18.megengine --to DIR`" in err  # the hint, once
    assert err.count("megzoo download") == 1
    assert served.requests == []


def test_cli_predict_download_failure_hint(served, images, capsys):
    from http_server import Mode

    served.set_mode("/models/weights/" + MGE_FILE, Mode.error(404))
    assert main(["predict", str(images["blue"]), "--model", "resnet18"]) == 2
    error, hint = capsys.readouterr().err.splitlines()
    assert error.startswith("megzoo predict: error: ") and "404" in error
    assert hint == ("hint: on a machine with network, run `megzoo download resnet18.megengine --to DIR`, copy DIR "
                    "here and set MEGZOO_HOME=DIR (and MEGZOO_OFFLINE=1 to never try the network)")


def test_cli_predict_errors(weight_file, images, capsys, tmp_path):
    missing = tmp_path / "missing.jpg"
    assert main(["predict", str(missing), "--model", "resnet18", "--weights", str(weight_file)]) == 2
    assert capsys.readouterr().err == f"megzoo predict: error: cannot read image {missing}: No such file or directory\n"
    assert main(["predict", str(images["red"]), "--model", "resnet5"]) == 2
    assert capsys.readouterr().err.startswith("megzoo predict: error: unknown model 'resnet5'; did you mean ")
    assert main(["predict", str(images["red"]), "--model", "resnet18", "--weights", "nope"]) == 2
    assert capsys.readouterr().err == ("megzoo predict: error: unknown weight tag 'nope' for resnet18; available tags: "
                                       "megengine, tv_in1k (or pass a path or URL of a checkpoint)\n")


# -- evaluation ------------------------------------------------------------------------------------

def _folder(root: Path, names, per_class=2):
    """Two images (or one) per class folder: blue, green, red, blue again (the 4th class is never first)."""
    for name, bgr in zip(names, (BLUE, GREEN, RED, BLUE)):
        (root / name / "sub").mkdir(parents=True)
        cv2.imwrite(str(root / name / "a.jpg"), _uniform(bgr, 333, 500))
        if per_class == 2:
            cv2.imwrite(str(root / name / "sub" / "b.png"), _uniform(bgr, 400, 256))
    (root / "README.txt").write_text("not a class")
    (root / names[0] / "notes.txt").write_text("not an image")
    return root


@pytest.mark.parametrize("names, labels, mode", [
    ([WNIDS["tench"], WNIDS["goldfish"], WNIDS["great_white_shark"], WNIDS["tiger_shark"]], "auto", "wnid"),
    (["0", "1", "2", "003"], "auto", "index"),
    (["a_blue", "b_green", "c_red", "d_blue"], "sorted", "sorted"),
])
def test_evaluate_counts_exactly(colour_model, tmp_path, names, labels, mode):
    data = _folder(tmp_path / "val", names)
    result = megzoo.evaluate(data, model=colour_model, labels=labels, batch_size=3, workers=2, preprocess=SMALL)
    assert (result.images, result.top1_correct, result.top5_correct) == (8, 6, 8)
    assert (result.top1, result.top5) == (0.75, 1.0)
    assert (result.labels, result.classes, result.model, result.weights) == (mode, 4, "resnet18", None)
    assert result.preprocess["resize_size"] == 64
    assert str(result) == "top-1 75.000% (6/8)   top-5 100.000% (8/8)"


def test_evaluate_limit_spreads_over_the_classes(colour_model, tmp_path):
    data = _folder(tmp_path / "val", list(WNIDS.values()))
    assert spread_indices(8, 4) == [0, 2, 4, 6] and spread_indices(8, 20) == list(range(8))
    result = megzoo.evaluate(data, model=colour_model, limit=4, workers=0, preprocess=SMALL)
    assert (result.images, result.classes, result.top1_correct, result.top1) == (4, 4, 3, 0.75)


def test_find_samples_layout_and_label_errors(tmp_path):
    data = _folder(tmp_path / "val", ["cats", "dogs", "fish", "zebras"])
    with pytest.raises(ValueError, match=rf"^cannot tell which of the model's 1000 classes the 4 class folders of "
                                         rf"{data} are \(e.g. 'cats'\): name them by ImageNet WordNet id \(n01440764, "
                                         r"\.\.\.\) or by class index \(0 \.\.\. 999\), or pass --labels sorted"):
        find_samples(data)
    samples, mode = find_samples(data, num_classes=4)
    assert mode == "sorted"
    assert [(os.path.relpath(p, data), label) for p, label in samples] == [
        ("cats/a.jpg", 0), ("cats/sub/b.png", 0), ("dogs/a.jpg", 1), ("dogs/sub/b.png", 1),
        ("fish/a.jpg", 2), ("fish/sub/b.png", 2), ("zebras/a.jpg", 3), ("zebras/sub/b.png", 3)]
    with pytest.raises(ValueError, match=r"class folders of .* are not class indices 0 \.\.\. 999 \(first: cats, "
                                         r"dogs, fish\)$"):
        find_samples(data, labels="index")
    with pytest.raises(ValueError, match=r"^folders named by WordNet id need a 1000-class ImageNet model; this one "
                                         r"has 10$"):
        find_samples(_folder(tmp_path / "w", [WNIDS["tench"]]), num_classes=10)
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'nowhere'}: not a directory"):
        find_samples(tmp_path / "nowhere")
    (tmp_path / "empty" / "n01440764").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"^no images under "):
        find_samples(tmp_path / "empty")


def test_backend_choice_auto_compiled_eager(colour_model):
    """auto: eager below AUTO_COMPILE_MIN_IMAGES images on the CPU, compiled from there on (and
    for everything once compiled); a runner= replaces both; a bad name is refused."""
    from megzoo.predict import AUTO_COMPILE_MIN_IMAGES

    assert AUTO_COMPILE_MIN_IMAGES == 12
    clf = Classifier(colour_model, preprocess=SMALL)
    assert (clf.backend_for(1), clf.backend_for(11), clf.backend_for(12)) == ("eager", "eager", "compiled")
    logits = clf.logits([_uniform(BLUE), _uniform(RED)] * 6)  # 12 images: compiled
    assert clf.backend_for(1) == "compiled" and clf.runner_for(1).compiled.cached_shapes == [(3, 64, 64)]
    eager = Classifier(colour_model, preprocess=SMALL, backend="eager")
    assert eager.backend_for(1000) == "eager"
    reference = eager.logits([_uniform(BLUE), _uniform(RED)] * 6)
    assert np.abs(logits - reference).max() <= 1e-4 * np.abs(reference).max()
    assert Classifier(colour_model, runner=lambda b: np.zeros((len(b), 4))).backend_for(100) == "custom"
    assert Classifier(colour_model, backend="compiled").backend_for(1) == "compiled"
    # a model built by name sits on "cpux" while MegEngine's default stays "xpux": tracing follows the weights
    built = Classifier("resnet18", weights=False, preprocess=SMALL, backend="compiled", threads=1)
    assert str(next(iter(built.model.parameters())).device).startswith("cpux")
    assert built.logits(_uniform(RED)).shape == (1, 1000)
    tensors = list(built.model.parameters()) + list(built.model.buffers())
    assert {str(t.device) for t in tensors} == {"cpux:0"}  # moved back
    with pytest.raises(ValueError, match=r"^backend must be one of auto, compiled, onnxruntime, lite, openvino, eager, "
                                         r"got 'tensorrt'$"):
        Classifier(colour_model, backend="tensorrt")


def test_evaluate_on_the_compiled_backend_counts_exactly(colour_model, tmp_path):
    data = _folder(tmp_path / "val", list(WNIDS.values()))
    result = megzoo.evaluate(data, model=colour_model, batch_size=3, workers=2, preprocess=SMALL, backend="compiled",
                             threads=2)
    assert (result.images, result.top1_correct, result.top5_correct) == (8, 6, 8)
    assert result.backend == "compiled" and 0 < result.compile_seconds < result.seconds
    clf = Classifier(colour_model, batch_size=3, preprocess=SMALL, backend="compiled", threads=2)
    assert len(clf.runner_for(8).compiled.compile_log) == 1  # a named runtime compiles its input size when made
    first = megzoo.evaluate(data, classifier=clf)
    again = megzoo.evaluate(data, classifier=clf)  # a reused classifier's compile is not these runs'
    assert first.compile_seconds == again.compile_seconds == 0.0 and again.top1_correct == 6
    eager = megzoo.evaluate(data, model=colour_model, batch_size=3, workers=0, preprocess=SMALL)
    assert (eager.backend, eager.compile_seconds, eager.top1_correct) == ("eager", 0.0, 6)


def test_a_trained_checkpoint_brings_its_classes_and_preprocessing(state, images, tmp_path, capsys):
    """best.pkl + best.json as megzoo train writes them: `megzoo predict --weights best.pkl` needs no
    --num-classes, names the run's classes and uses its 64-px preprocessing."""
    small = {k: v for k, v in state.items()}
    small["fc.weight"], small["fc.bias"] = state["fc.weight"][:4], state["fc.bias"][:4]
    run = tmp_path / "run"
    run.mkdir()
    megengine.save(small, str(run / "best.pkl"))
    meta = {"model": "resnet18", "num_classes": 4, "classes": ["blueish", "greenish", "reddish", "blue-1"],
            "preprocess": {"input_size": 64, "resize_size": 64, "interpolation": "bilinear", "color_order": "BGR",
                           "mean": list(MEAN_BGR), "std": list(STD_BGR)}, "weights_file": "best.pkl"}
    (run / "best.json").write_text(json.dumps(meta))
    assert main(["predict", str(images["green"]), str(images["red"]), "--model", "resnet18", "--weights",
                 str(run / "best.pkl"), "--topk", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [[s["name"] for s in r["topk"]] for r in out["results"]] == [["greenish", "blueish"], ["reddish", "blueish"]]
    clf = Classifier("resnet18", str(run / "best.pkl"), progress=False)
    assert (clf.num_classes, clf.preprocess.input_size, clf.preprocess.resize_size) == (4, 64, 64)
    assert Classifier("resnet18", str(run / "best.pkl"), categories=list("abcd")).categories == list("abcd")
    (run / "best.json").write_text(json.dumps(dict(meta, weights_file="other.pkl")))  # not this file's metadata
    with pytest.raises(megzoo.weights.errors.WeightsError, match="give the number of classes it was trained with"):
        Classifier("resnet18", str(run / "best.pkl"))


def test_cli_eval_json_and_text(weight_file, tmp_path, capsys):
    data = _folder(tmp_path / "val", list(WNIDS.values()), per_class=1)
    args = ["eval", "--data", str(data), "--model", "resnet18", "--weights", str(weight_file), "--batch-size", "3",
            "--workers", "2", "--no-progress"]
    assert main(args + ["--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {k: result[k] for k in ("model", "weights", "images", "classes", "labels", "top1_correct",
                                   "top5_correct", "top1", "top5")} == {
        "model": "resnet18", "weights": str(weight_file), "images": 4, "classes": 4, "labels": "wnid",
        "top1_correct": 3, "top5_correct": 4, "top1": 0.75, "top5": 1.0}
    assert result["preprocess"] == {"input_size": 224, "resize_size": 256, "interpolation": "bilinear",
                                    "color_order": "BGR", "mean": list(MEAN_BGR), "std": list(STD_BGR)}
    assert main(args + ["--limit", "2"]) == 0  # images 0 and 2: tench and great white shark
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [f"resnet18 ({weight_file}) on {data}: 2 images in 2 classes (folders named by WordNet id)",
                         "top-1 100.000% (2/2)   top-5 100.000% (2/2)"]
    assert lines[2].endswith(" s; eager backend, fp32)") and " images/s (" in lines[2]  # 2 images: not worth compiling
    assert main(["eval", "--data", str(tmp_path / "nowhere"), "--model", "resnet18", "--weights",
                 str(weight_file)]) == 2
    assert capsys.readouterr().err == (f"megzoo eval: error: {tmp_path / 'nowhere'}: not a directory (give a folder "
                                       "with one sub-folder per class)\n")
