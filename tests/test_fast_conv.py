"""megzoo.train.cpu_engine.conv: same forward, gradients equal to MegEngine's own within float error."""
import numpy as np
import pytest

import megengine
import megengine.functional as F
import megengine.module as M
from megengine.autodiff import GradManager

from megzoo.train.cpu_engine import conv as fast_conv

CASES = {
    "3x3": dict(cin=8, cout=6, k=3, stride=1, padding=1, dilation=1, groups=1, bias=False),
    "3x3-stride2-bias": dict(cin=8, cout=6, k=3, stride=2, padding=1, dilation=1, groups=1, bias=True),
    "3x3-dilated": dict(cin=6, cout=8, k=3, stride=1, padding=2, dilation=2, groups=1, bias=True),
    "grouped-stride2": dict(cin=8, cout=12, k=3, stride=2, padding=1, dilation=1, groups=4, bias=False),
    "grouped-dilated-bias": dict(cin=8, cout=8, k=3, stride=1, padding=2, dilation=2, groups=2, bias=True),
    "depthwise": dict(cin=6, cout=6, k=3, stride=1, padding=1, dilation=1, groups=6, bias=False),
    "1x1-stride2-bias": dict(cin=6, cout=10, k=1, stride=2, padding=0, dilation=1, groups=1, bias=True),
    "7x7-stem": dict(cin=3, cout=4, k=7, stride=2, padding=3, dilation=1, groups=1, bias=False),
    "rect-anisotropic": dict(cin=4, cout=6, k=(3, 1), stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2,
                             bias=True),
    "stride3-dilation2-nopad": dict(cin=4, cout=4, k=3, stride=3, padding=0, dilation=2, groups=1, bias=False),
}
METHODS = ["blas", "swap", "gemm", "im2col", "auto"]


def _conv(case, seed=0):
    rng = np.random.RandomState(seed)
    conv = M.Conv2d(case["cin"], case["cout"], case["k"], case["stride"], case["padding"], case["dilation"],
                    case["groups"], bias=case["bias"])
    conv.weight[...] = rng.standard_normal(conv.weight.shape).astype("float32")
    if case["bias"]:
        conv.bias[...] = rng.standard_normal(conv.bias.shape).astype("float32")
    x = megengine.Tensor(rng.standard_normal((3, case["cin"], 11, 10)).astype("float32"))
    dy = megengine.Tensor(rng.standard_normal(conv(x).shape).astype("float32"))
    return conv, x, dy


def _run(conv, x, dy):
    """(output, dx, dw[, db]) as numpy."""
    params = [conv.weight] + ([conv.bias] if conv.bias is not None else [])
    for p in params:
        p.grad = None
    gm = GradManager().attach(params + [x])
    with gm:
        y = conv(x)
        gm.backward(y, dy)
    out = [y.numpy(), x.grad.numpy()] + [p.grad.numpy() for p in params]
    x.grad = None
    return out


def _close(a, b, what, rtol=2e-6):
    """Equal to float32 rounding: max |a - b| <= rtol * max |a| (+ 1e-6)."""
    scale = float(np.abs(a).max()) + 1e-6
    err = float(np.abs(a - b).max())
    assert err <= rtol * scale + 1e-6, f"{what}: max error {err:.3g} (scale {scale:.3g})"


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradients_match_megengine(name):
    conv, x, dy = _conv(CASES[name])
    reference = _run(conv, x, dy)
    for method in METHODS:
        assert fast_conv.enable(conv, method=method) == 1
        got = _run(conv, x, dy)
        fast_conv.disable(conv)
        np.testing.assert_array_equal(got[0], reference[0], err_msg=f"{name}/{method}: forward changed")
        if method in ("blas", "auto"):  # data gradient by BLAS too
            _close(reference[1], got[1], f"{name}/{method}: data gradient")
        else:  # MegEngine's own data-gradient operator
            np.testing.assert_array_equal(got[1], reference[1], err_msg=f"{name}/{method}: data gradient")
        _close(reference[2], got[2], f"{name}/{method}: weight gradient")
        if CASES[name]["bias"]:
            _close(reference[3], got[3], f"{name}/{method}: bias gradient")


@pytest.mark.parametrize("name", sorted(CASES))
def test_blas_forward_and_data_gradient(name):
    """The opt-in BLAS forward: outputs equal to float rounding, every gradient too."""
    conv, x, dy = _conv(CASES[name], seed=4)
    reference = _run(conv, x, dy)
    fast_conv.enable(conv, method="blas", forward="blas")
    got = _run(conv, x, dy)
    fast_conv.disable(conv)
    for what, a, b in zip(("output", "data gradient", "weight gradient", "bias gradient"), reference, got):
        _close(a, b, f"{name}: {what}")
    fast_conv.enable(conv, forward="blas")
    conv.eval()
    np.testing.assert_array_equal(conv(x).numpy(), reference[0])  # without gradients: MegEngine's forward
    fast_conv.disable(conv)


@pytest.mark.parametrize("method", ["blas", "swap", "gemm", "im2col"])
def test_functional_weight_grad(method):
    rng = np.random.RandomState(1)
    x = megengine.Tensor(rng.standard_normal((2, 8, 9, 9)).astype("float32"))
    w = megengine.Parameter(rng.standard_normal((2, 3, 4, 3, 3)).astype("float32"))  # grouped (G, O/G, C/G, kh, kw)
    y = F.conv2d(x, w, None, 2, 1, 1, 2)
    dy = megengine.Tensor(rng.standard_normal(y.shape).astype("float32"))
    gm = GradManager().attach([w])
    with gm:
        gm.backward(F.conv2d(x, w, None, 2, 1, 1, 2), dy)
    got = fast_conv.conv2d_weight_grad(x, dy, w.shape, 2, 1, 1, 2, method=method)
    assert tuple(got.shape) == tuple(w.shape)
    _close(w.grad.numpy(), got.numpy(), method)


def test_model_drop_in_and_switches(monkeypatch):
    import megzoo

    model = megzoo.resnet18(num_classes=5)
    model.train()
    x = megengine.Tensor(np.random.RandomState(2).standard_normal((2, 3, 32, 32)).astype("float32"))
    label = megengine.Tensor(np.array([1, 3], dtype="int32"))

    def grads():
        params = list(model.parameters())
        for p in params:
            p.grad = None
        gm = GradManager().attach(params)
        with gm:
            logits = model(x)
            gm.backward(F.nn.cross_entropy(logits, label))
        return logits.numpy(), {n: p.grad.numpy() for n, p in model.named_parameters()}

    state = {k: v.copy() for k, v in model.state_dict().items()}
    ref_logits, ref = grads()
    n_conv = sum(isinstance(m, M.Conv2d) for m in model.modules())
    assert fast_conv.enable(model) == n_conv and fast_conv.is_enabled(model)
    logits, got = grads()
    np.testing.assert_array_equal(logits, ref_logits)
    for name in ref:  # through 20 layers, rounding differences add up a little more
        _close(ref[name], got[name], name, rtol=1e-5)
    assert set(model.state_dict()) == set(state)

    monkeypatch.setenv("MEGZOO_FAST_CONV", "0")  # the switch: MegEngine's own path, same results
    logits, got = grads()
    np.testing.assert_array_equal(logits, ref_logits)
    monkeypatch.delenv("MEGZOO_FAST_CONV")

    fast_conv.disable(model)
    assert not fast_conv.is_enabled(model)
    with fast_conv.fast_conv(model, method="gemm"):
        assert fast_conv.is_enabled(model)
    assert not fast_conv.is_enabled(model)
    with pytest.raises(ValueError, match="method"):
        fast_conv.enable(model, method="fft")
    with pytest.raises(ValueError, match="forward"):
        fast_conv.enable(model, forward="fft")


def test_frozen_weights_get_no_gradient():
    conv, x, dy = _conv(CASES["3x3-stride2-bias"])
    fast_conv.enable(conv)
    gm = GradManager().attach([x])  # the weights are not attached: frozen
    with gm:
        gm.backward(conv(x), dy)
    assert conv.weight.grad is None and x.grad is not None
    x.grad = None


def test_cpu_device_names():
    assert fast_conv.is_cpu_device("cpu0") and fast_conv.is_cpu_device("multithread2:0")
    assert not fast_conv.is_cpu_device("gpu0") and not fast_conv.is_cpu_device("gpux")
    device = megengine.Tensor([1.0]).device
    assert fast_conv.is_cpu_device(device) == ("cpu" in device.physical_name or "multithread" in device.physical_name)
