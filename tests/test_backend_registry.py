"""The backend registry: a backend registered from outside megzoo (a pure-NumPy runtime running a
1x1 convolution and a global average, with its own ``.npz`` file kind and option) is seen by
``megzoo.compile``, ``megzoo.inference.load``, the Classifier, the CLI's ``--backend`` choices and the
benchmark's modes, with no other module edited; unknown and unavailable backends are refused by name."""
import functools

import megengine
import megengine.module as M
import numpy as np
import pytest

import megzoo
from megzoo import bench_worker, benchmark
from megzoo.cli import build_parser
from megzoo.inference import (BACKENDS, Backend, BackendUnavailableError, CompiledModelBase, backend_names, compile,
                              get_backend, load, register_backend, unregister_backend)
from megzoo.inference.backends import CompileInfo
from megzoo.inference.backends.lite import LiteBackend
from megzoo.inference.model_files import FileKind

NPZ = FileKind("npz", "a NumPy .npz 1x1 convolution", suffixes=(".npz",))
SMALL = {"input_size": 16, "resize_size": 16}


class Tiny(M.Module):
    """A 1x1 convolution, then the mean over H and W: (N, 3, H, W) -> (N, 4) logits."""

    num_classes = 4

    def __init__(self):
        super().__init__()
        self.conv = M.Conv2d(3, 4, 1)
        rng = np.random.RandomState(0)
        self.conv.weight[...] = rng.standard_normal((4, 3, 1, 1)).astype("float32")
        self.conv.bias[...] = rng.standard_normal((1, 4, 1, 1)).astype("float32")

    def forward(self, x):
        return self.conv(x).mean(axis=3).mean(axis=2)


class NumpyRunner:
    def __init__(self, weight: np.ndarray, bias: np.ndarray, scale: float):
        self.weight, self.bias, self.scale = weight, bias, scale

    def run(self, x: np.ndarray) -> list:
        y = np.einsum("oc,nchw->nohw", self.weight, x) + self.bias[None, :, None, None]
        return [self.scale * y.mean(axis=(2, 3))]


class NumpyCompiled(CompiledModelBase):
    backend = "numpy"
    file_kind = "npz"

    def __init__(self, weight, bias, scale=1.0, threads=None, source_file=None, input_shape=None):
        self._init_cache(threads, 4, True, source_file, input_shape)
        self.weight, self.bias, self.scale = weight, bias, scale

    def _build(self, shape):
        self.compile_log.append(CompileInfo(shape, 0.0, 0.0, 0.0, False))
        return NumpyRunner(self.weight, self.bias, self.scale)


class NumpyBackend(Backend):
    name = "numpy"
    file_kinds = (NPZ,)
    options = {"scale": 1.0}
    auto_candidate = False

    def compile(self, model, input_shape, threads, options):
        weight = model.conv.weight.numpy()[:, :, 0, 0]
        return NumpyCompiled(weight, model.conv.bias.numpy().reshape(-1), options["scale"], threads,
                             input_shape=input_shape)

    def load(self, path, threads, options, metadata):
        data = np.load(path)
        return NumpyCompiled(data["weight"], data["bias"], options.get("scale", 1.0), threads, source_file=path)


class MoonBackend(NumpyBackend):
    name = "moon"
    file_kinds = ()
    options = {}

    def available(self):
        return "needs the moon runtime, which is not installed: pip install moon"


@pytest.fixture
def numpy_backend():
    backend = register_backend(NumpyBackend())
    try:
        yield backend
    finally:
        unregister_backend("numpy")


def _eager(model, x: np.ndarray) -> np.ndarray:
    return model(megengine.tensor(x)).numpy()


def _batch(n: int = 2) -> np.ndarray:
    return np.random.RandomState(n).standard_normal((n, 3, 8, 8)).astype("float32")


def test_compile_dispatches_to_the_registered_backend_and_its_options_choose_it(numpy_backend):
    model, x = Tiny(), _batch()
    compiled = compile(model, backend="numpy")
    assert isinstance(compiled, NumpyCompiled) and isinstance(compiled, CompiledModelBase)
    np.testing.assert_allclose(compiled(x), _eager(model, x), rtol=1e-5, atol=1e-5)
    assert compiled.cached_shapes == [(3, 8, 8)]
    doubled = compile(model, scale=2.0)  # an option only numpy takes means numpy under auto
    assert isinstance(doubled, NumpyCompiled)
    np.testing.assert_allclose(doubled(x), 2 * _eager(model, x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError) as info:
        compile(model, backend="lite", scale=2.0)
    assert str(info.value) == ("scale apply to the numpy backend only; pass backend='numpy' (or leave them out "
                               "for lite)")
    with pytest.raises(ValueError) as info:
        compile(model, scale=2.0, algo="heuristic")
    assert str(info.value) == ("options of several backends were given: algo (lite); scale (numpy); "
                               "pass backend= one of them")
    with pytest.raises(TypeError) as info:
        compile(model, backend="numpy", sclae=2.0)
    assert str(info.value) == "compile() got an unexpected keyword argument 'sclae'"


def test_load_dispatches_on_the_registered_file_kind(numpy_backend, tmp_path):
    model, x = Tiny(), _batch(3)
    path = tmp_path / "tiny.npz"
    np.savez(path, weight=model.conv.weight.numpy()[:, :, 0, 0], bias=model.conv.bias.numpy().reshape(-1))
    loaded = load(path)
    assert isinstance(loaded, NumpyCompiled) and loaded.metadata is None
    np.testing.assert_allclose(loaded(x), _eager(model, x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError) as info:
        loaded(np.zeros((1, 3, 4, 4), "float32"))  # a file has one graph
    assert str(info.value) == "this .npz was made for inputs (3, 8, 8); got input shape (1, 3, 4, 4)"
    text = tmp_path / "notes.bin"
    text.write_text("hello")
    with pytest.raises(ValueError) as info:
        load(text)
    assert str(info.value) == (
        f"{text} is not a model file load can run: it is a text file. load takes an ONNX model, a MegEngine Lite "
        ".mge graph or a NumPy .npz 1x1 convolution (`megzoo export -o FILE.onnx|FILE.mge` writes .onnx files and "
        ".mge files)")


def test_the_classifier_and_the_cli_offer_the_registered_backend(numpy_backend):
    model = Tiny()
    clf = megzoo.Classifier(model, preprocess=SMALL, backend="numpy", categories=list("abcd"))
    images = [np.random.RandomState(i).randint(0, 255, (20, 20, 3)).astype("uint8") for i in range(2)]
    eager = megzoo.Classifier(model, preprocess=SMALL, backend="eager", categories=list("abcd")).logits(images)
    assert clf.backend_for(1) == "numpy" and isinstance(clf.runner_for(1).compiled, NumpyCompiled)
    np.testing.assert_allclose(clf.logits(images), eager, rtol=1e-4, atol=1e-4)
    args = build_parser().parse_args(["predict", "cat.jpg", "--backend", "numpy"])
    assert args.backend == "numpy"
    assert BACKENDS == ("auto", "onnxruntime", "lite", "openvino", "numpy")


def test_the_benchmark_offers_the_registered_backends_mode(numpy_backend):
    assert "numpy" in benchmark.MODES and "numpy" not in benchmark.DEFAULT_MODES
    assert benchmark.modes_help().splitlines()[-1] == "numpy: megzoo.compile(backend='numpy') in a megzoo process"
    worker = bench_worker._worker_for({"mode": "numpy"})  # the worker process finds it in the registry
    assert isinstance(worker, functools.partial) and worker.func is bench_worker.run_compiled
    assert worker.keywords == {"backend": "numpy"}


def test_unregistering_takes_the_backend_out_everywhere(capsys):
    register_backend(NumpyBackend())
    unregister_backend("numpy")
    assert "numpy" not in BACKENDS and "numpy" not in benchmark.MODES
    assert backend_names() == ("onnxruntime", "lite", "openvino")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "cat.jpg", "--backend", "numpy"])
    assert "invalid choice: 'numpy' (choose from 'auto', 'compiled', 'onnxruntime', 'lite', 'openvino', 'eager')" in \
        capsys.readouterr().err


def test_an_unknown_backend_is_refused_by_name():
    model = Tiny()
    message = "backend must be one of ('auto', 'onnxruntime', 'lite', 'openvino'), got 'tvm'"
    for call in (lambda: compile(model, backend="tvm"), lambda: get_backend("tvm")):
        with pytest.raises(ValueError) as info:
            call()
        assert str(info.value) == message
    with pytest.raises(ValueError) as info:
        megzoo.Classifier(model, backend="tvm")
    assert str(info.value) == "backend must be one of auto, compiled, onnxruntime, lite, openvino, eager, got 'tvm'"


def test_an_unavailable_backend_says_why(monkeypatch):
    register_backend(MoonBackend())
    try:
        with pytest.raises(BackendUnavailableError) as info:
            compile(Tiny(), backend="moon")
        assert str(info.value) == "backend='moon' needs the moon runtime, which is not installed: pip install moon"
        monkeypatch.setenv("MEGZOO_BACKEND", "moon")
        with pytest.raises(BackendUnavailableError) as info:
            compile(Tiny())
        assert str(info.value) == ("MEGZOO_BACKEND=moon needs the moon runtime, which is not installed: "
                                   "pip install moon")
    finally:
        unregister_backend("moon")


def test_registration_refuses_a_taken_name_option_or_mode():
    with pytest.raises(ValueError) as info:
        register_backend(LiteBackend())
    assert str(info.value) == "a backend named 'lite' is registered already (<LiteBackend 'lite'>)"
    with pytest.raises(ValueError) as info:
        register_backend(type("Auto", (NumpyBackend,), {"name": "auto"})())
    assert str(info.value) == ("a backend needs a name of letters, digits and _ other than auto, compiled, eager, "
                               "custom; got 'auto'")
    with pytest.raises(ValueError) as info:
        register_backend(type("Layout", (NumpyBackend,), {"name": "layouts", "options": {"layout": "x"}})())
    assert str(info.value) == "backend 'layouts': options layout belong to another backend"
    assert backend_names() == ("onnxruntime", "lite", "openvino")


def test_every_backends_compiled_model_is_a_compiled_model_base(tmp_path):
    model, x = Tiny(), _batch(1)
    lite = compile(model, (1, 3, 8, 8), backend="lite", algo="heuristic", cache_dir=tmp_path)
    ort = compile(model, (1, 3, 8, 8), backend="onnxruntime")
    assert isinstance(lite, megzoo.CompiledModel) and isinstance(lite, megzoo.CompiledModelBase)
    assert isinstance(ort, megzoo.CompiledModelBase) and not isinstance(ort, megzoo.CompiledModel)
    assert (lite.backend, ort.backend) == ("lite", "onnxruntime")
    for compiled in (lite, ort):
        np.testing.assert_allclose(compiled(x), _eager(model, x), rtol=1e-4, atol=1e-4)
