"""Hostile and faulty uses of the inference API (issue 30, items 15-17): threads, too-small
inputs, files that are not models. Each case gets one clear error, before any work."""
import re
import shutil
import struct
import threading
import zipfile

import megengine
import numpy as np
import pytest

import megzoo
from megzoo.inference import export, load
from megzoo.models.vgg import VGG

THREAD_RULE = ("must run in the main thread (the one that imported MegEngine): MegEngine 1.13 cannot run eager "
               "operations in other threads; ")


@pytest.fixture(scope="module")
def model():
    net = megzoo.resnet18(num_classes=10)
    net.eval()
    return net


def _in_thread(fn):
    """``fn()`` run in a new threading.Thread; its result, or its exception raised here."""
    result = {}

    def work():
        try:
            result["value"] = fn()
        except BaseException as exc:  # handed to the test thread
            result["error"] = exc

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(300)
    assert not thread.is_alive()
    if "error" in result:
        raise result["error"]
    return result["value"]


def _batch(shape, seed=0):
    return np.random.RandomState(seed).standard_normal(shape).astype(np.float32)


def _eager(model, x):
    return model(megengine.tensor(x)).numpy()


def _rel(got, ref):
    return float(np.abs(got - ref).max() / np.abs(ref).max())


# --- item 15: threads ---------------------------------------------------------------------------
def test_compile_and_export_in_a_worker_thread_are_refused_clearly_before_any_work(model, tmp_path):
    for backend in ("onnxruntime", "lite"):
        with pytest.raises(RuntimeError) as info:
            _in_thread(lambda: megzoo.compile(model, (1, 3, 32, 32), backend=backend))
        assert type(info.value).__name__ == "MegEngineThreadError"
        assert str(info.value) == ("megzoo.compile " + THREAD_RULE +
                                   "compile in the main thread, then call the compiled model from any thread")
    with pytest.raises(RuntimeError) as info:
        _in_thread(lambda: export(model, tmp_path / "out" / "m.onnx", (1, 3, 32, 32)))
    assert str(info.value) == "megzoo.inference.export " + THREAD_RULE + "export in the main thread"
    assert list(tmp_path.iterdir()) == []
    assert int((megengine.tensor(1) + 1).numpy()) == 2  # the main thread's MegEngine is untouched


def _new_size_refused_in_a_thread(compiled, backend: str) -> None:
    """A model compiled for 32x32 meets 40x40 in a worker thread: one clear error, nothing compiled."""
    with pytest.raises(RuntimeError) as info:
        _in_thread(lambda: compiled(_batch((1, 3, 40, 40))))
    assert str(info.value) == (
        f"compiling input size (3, 40, 40) for the {backend} backend (tracing the model) " + THREAD_RULE +
        "call the compiled model once with this input size in the main thread (or compile with input_shape=...), "
        "then from any thread")
    assert compiled.cached_shapes == [(3, 32, 32)]


def test_onnxruntime_model_compiled_in_the_main_thread_runs_any_batch_from_four_threads(model):
    compiled = megzoo.compile(model, (1, 3, 32, 32), backend="onnxruntime", threads=1)
    inputs = {i: _batch((i + 1, 3, 32, 32), i) for i in range(4)}  # the batch axis is dynamic
    reference = {i: _eager(model, x) for i, x in inputs.items()}
    barrier = threading.Barrier(4)
    results, errors = {}, []

    def work(i):
        try:
            barrier.wait(60)
            results[i] = compiled(inputs[i])
        except BaseException as exc:
            errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert errors == []
    for i in range(4):
        assert results[i].shape == reference[i].shape and _rel(results[i], reference[i]) < 1e-4
    _new_size_refused_in_a_thread(compiled, "onnxruntime")  # a new spatial size is traced: the main thread's job


def test_lite_model_runs_its_sizes_in_a_thread_and_refuses_a_new_size_there_clearly(model, tmp_path):
    compiled = megzoo.compile(model, (1, 3, 32, 32), backend="lite", algo="heuristic", layout="nchw",
                              cache_dir=tmp_path, threads=1)
    x = _batch((2, 3, 32, 32), 3)
    assert _rel(_in_thread(lambda: compiled(x)), _eager(model, x)) < 1e-4
    _new_size_refused_in_a_thread(compiled, "lite")


def test_classifier_predicts_from_a_thread_on_onnxruntime_and_refuses_eager_work_clearly(model):
    small = {"input_size": 32, "resize_size": 32}
    images = [np.random.RandomState(i).randint(0, 255, (40, 40, 3)).astype("uint8") for i in range(3)]
    expected = megzoo.Classifier(model, preprocess=small, backend="eager").probabilities(images)
    clf = megzoo.Classifier(model, preprocess=small, backend="onnxruntime")
    got = _in_thread(lambda: clf.probabilities(images))
    assert got.shape == (3, 10) and np.abs(got - expected).max() < 1e-5
    assert _in_thread(lambda: clf.predict(images[0], topk=1))[0].top.index == int(expected[0].argmax())
    auto = megzoo.Classifier(model, preprocess=small)  # auto runs 3 images eagerly
    with pytest.raises(RuntimeError) as info:
        _in_thread(lambda: auto.predict(images))
    from megzoo.inference import backend_names

    *first, last = [repr(n) for n in backend_names()]  # every registered runtime: 'onnxruntime', 'lite', ...
    assert first[:2] == ["'onnxruntime'", "'lite'"]
    assert str(info.value) == (
        "Classifier.predict running the model eagerly " + THREAD_RULE + "make the Classifier in the main thread "
        f"with backend={', '.join(first)} or {last} (compiled there for its input size), then predict from any "
        "thread")


# --- item 16: one minimum-size check for .mge and .onnx ---------------------------------------------
def test_export_and_lite_compile_refuse_an_input_below_the_minimum_for_both_formats_before_any_work(tmp_path):
    model = VGG((1, 1, 1, 1, 1), widths=(8, 8, 16, 16, 16), num_classes=10)
    for name in ("v.mge", "v.onnx"):
        with pytest.raises(ValueError, match=r"^VGG needs inputs of at least 32x32 pixels, got 8x8$"):
            export(model, tmp_path / "out" / name, (1, 3, 8, 8))
        assert list(tmp_path.iterdir()) == []  # not even the output folder
    with pytest.raises(ValueError, match=r"^VGG needs inputs of at least 32x32 pixels, got 16x8$"):
        megzoo.compile(model, (1, 3, 16, 8), backend="lite", algo="heuristic", layout="nchw", cache_dir=tmp_path)


# --- item 17: load() of a file that is not a model ---------------------------------------------------
ACCEPTED = "load takes an ONNX model or a MegEngine Lite .mge graph (`megzoo export -o FILE.onnx|FILE.mge` writes both)"
PICKLE = "a Python pickle (a state dict or checkpoint? those are weights: --weights FILE, pretrained=FILE)"


def test_load_says_what_a_file_that_is_not_a_model_is_before_a_runtime_sees_it(tmp_path):
    megengine.save({"fc.weight": np.zeros((2, 2), np.float32)}, str(tmp_path / "state.pkl"))
    shutil.copy(tmp_path / "state.pkl", tmp_path / "state.onnx")
    shutil.copy(tmp_path / "state.pkl", tmp_path / "state.mge")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with zipfile.ZipFile(tmp_path / "resnet.pth", "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    # a FlatBuffers v2 .mge header declaring 10000 bytes, cut after 100
    (tmp_path / "cut.mge").write_bytes(struct.pack("<II", 10000 - 4, 0x1C) + b"mgv2" + bytes(88))
    (tmp_path / "model.onnx.json").write_text('{"input_shape": [1, 3, 32, 32]}')
    cases = {
        "state.pkl": PICKLE, "state.onnx": PICKLE, "state.mge": PICKLE,
        "empty.onnx": "empty (0 bytes)",
        "resnet.pth": "a zip archive (a PyTorch .pth checkpoint? those are weights: --weights FILE, pretrained=FILE)",
        "cut.mge": "a truncated MegEngine .mge graph (100 of its 10000 bytes)",
        "model.onnx.json": "JSON text (the metadata beside an export is FILE.json: give the model file itself)",
    }
    for name, what in cases.items():
        path = tmp_path / name
        with pytest.raises(ValueError) as info:
            load(path)
        assert str(info.value) == f"{path} is not a model file load can run: it is {what}. {ACCEPTED}", name
    assert re.search(r"it is not an ONNX model or a MegEngine \.mge graph \(it starts with bytes 00 01 02",
                     _refusal(tmp_path / "noise.bin", bytes(range(64))))


def _refusal(path, content: bytes) -> str:
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        load(path)
    return str(info.value)
