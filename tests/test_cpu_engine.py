"""megzoo.train.cpu_engine.CpuEngine: the one object the trainer talks to (built from the config,
installed on a model or declined with the reason, validation on the host, buffers released)."""
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

import megengine
import megengine.module as M

import megzoo
from megzoo.train import TrainConfig
from megzoo.train.cpu_engine import FORWARDS, METHODS, CpuEngine, CpuEngineOptions, blocks, conv
from megzoo.train.cpu_engine.workspace import WORKSPACE

QAT_REASON = "QAT trains with MegEngine's own operators"


def _engine(**options) -> CpuEngine:
    return CpuEngine.from_config(replace(TrainConfig(data="d"), **options))


def _resnet18():
    np.random.seed(0)
    megengine.random.seed(0)
    return megzoo.resnet18(num_classes=10)


def test_the_options_come_from_the_config():
    engine = _engine(fast_conv="gemm", fast_conv_forward="native", fused_blocks=False, qat=True)
    assert engine.options == CpuEngineOptions(conv_backward="gemm", conv_forward="native", fused_blocks=False)
    assert engine.qat is True
    assert CpuEngine.from_config(TrainConfig(data="d")).options == CpuEngineOptions("auto", "blas", True)


def test_the_choices_are_public_and_match_the_configs():
    from megzoo.train import recipe

    assert METHODS == ("auto", "blas", "swap", "gemm", "im2col", "native")
    assert FORWARDS == ("native", "blas")
    # the recipe checks the same choices without importing the engine (the trainer runs without it)
    assert recipe.FAST_CONV_METHODS == METHODS + ("off",) and recipe.FAST_CONV_FORWARDS == FORWARDS


@pytest.mark.parametrize("field,value,message", [
    ("fast_conv", "fft", "fast_conv must be one of auto, blas, swap, gemm, im2col, native, off, got 'fft'"),
    ("fast_conv_forward", "fft", "fast_conv_forward must be one of native, blas, got 'fft'"),
])
def test_unknown_choices_are_refused_with_the_configs_message(field, value, message):
    config = SimpleNamespace(fast_conv="auto", fast_conv_forward="blas", fused_blocks=True, qat=False)
    setattr(config, field, value)
    with pytest.raises(ValueError) as raised:
        CpuEngine.from_config(config)
    assert str(raised.value) == message


@pytest.mark.parametrize("options,expected", [
    ({}, "auto, BLAS forward, fused blocks"),
    (dict(fast_conv="blas"), "blas, BLAS forward, fused blocks"),
    (dict(fused_blocks=False), "auto, BLAS forward"),
    (dict(fast_conv_forward="native"), "auto"),  # bit-identical forward asked: no host blocks
])
def test_prepare_runs_on_a_cpu_resnet18_and_describes_what_runs(options, expected):
    model, engine = _resnet18(), _engine(**options)
    assert engine.prepare(model, "cpu0") is None
    assert engine.description == expected
    assert conv.is_enabled(model)
    assert blocks.is_enabled(model) == expected.endswith("fused blocks")


@pytest.mark.parametrize("options,device,reason,description", [
    (dict(fast_conv="off"), "cpu0", "off", "off"),
    ({}, "gpu0", "not a CPU device: gpu0", "off (not a CPU device: gpu0)"),
    (dict(qat=True), "cpu0", QAT_REASON, f"off ({QAT_REASON})"),
    (dict(fast_conv="off", qat=True), "gpu1", "off", "off"),  # the trainer's order: off, device, QAT
    (dict(qat=True), "gpu1", "not a CPU device: gpu1", "off (not a CPU device: gpu1)"),
])
def test_prepare_declines_with_the_reason_and_leaves_the_model_alone(options, device, reason, description):
    model, engine = _resnet18(), _engine(**options)
    assert engine.prepare(model, device) == reason
    assert engine.description == description
    assert not conv.is_enabled(model) and not blocks.is_enabled(model)


def test_prepare_declines_a_model_without_convolutions():
    engine = _engine()
    assert engine.prepare(M.Sequential(M.Linear(4, 3), M.ReLU()), "cpu0") == "the model has no convolutions it can run"
    assert engine.description == "off (the model has no convolutions it can run)"


def test_an_engine_not_yet_prepared_says_so():
    assert _engine().description == "off (not prepared)"


def test_evaluation_runs_the_host_plans_in_eval_mode(monkeypatch):
    calls = []
    run = blocks.run_plan_inference
    monkeypatch.setattr(blocks, "run_plan_inference", lambda plan, x: calls.append(plan) or run(plan, x))
    model, engine = _resnet18(), _engine()
    assert engine.prepare(model, "cpu0") is None
    model.eval()
    x = megengine.Tensor(np.random.RandomState(2).standard_normal((2, 3, 37, 37)).astype("float32"))
    native = model(x).numpy()
    assert calls == []  # outside the context: MegEngine's operators
    with engine.evaluation():
        host = model(x).numpy()
    assert len(calls) == 1 and len(calls[0]) == 10  # the body as one plan: stem, max-pool, 8 blocks
    np.testing.assert_allclose(host, native, rtol=0, atol=2e-5 * float(np.abs(native).max()))
    model(x)
    assert len(calls) == 1  # only inside


def test_release_empties_the_workspace_and_can_be_called_again():
    WORKSPACE.clear()  # whatever earlier tests left
    WORKSPACE.give(WORKSPACE.take((1 << 20,)))  # 4 MB
    assert WORKSPACE.free_bytes == 4 << 20
    engine = _engine()
    engine.release()
    assert WORKSPACE.free_bytes == 0
    engine.release()
    assert WORKSPACE.free_bytes == 0


def test_the_old_module_names_and_paths_of_megzoo_train_load_the_engines_modules():
    import megzoo.train

    assert megzoo.train.fast_conv is conv and megzoo.train.fused_blocks is blocks
    import megzoo.train.fast_conv as old_conv
    import megzoo.train.workspace as old_workspace
    from megzoo.train.fused_blocks import enable

    assert old_conv is conv and enable is blocks.enable and old_workspace.WORKSPACE is WORKSPACE
    with pytest.raises(AttributeError, match="has no attribute 'host_kernels'"):
        megzoo.train.host_kernels  # noqa: B018


def test_megzoo_train_imports_without_the_engine():
    import subprocess
    import sys

    code = ("import sys\n"
            "sys.modules['megzoo.train.cpu_engine'] = None  # the package removed or unimportable\n"
            "import megzoo.train\n"
            "try:\n"
            "    megzoo.train.fast_conv\n"
            "except ImportError as e:\n"
            "    print('ImportError', e.name)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "ImportError megzoo.train.cpu_engine.conv"
