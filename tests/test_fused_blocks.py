"""megzoo.train.cpu_engine.blocks / kernels: whole residual blocks in NumPy equal MegEngine's own
training step (outputs, every gradient, running statistics) to float32 rounding, and fall back
to MegEngine's path wherever they would compute something else."""
import os

import numpy as np
import pytest

import megengine
import megengine.functional as F
import megengine.module as M
from megengine.autodiff import GradManager

import megzoo
from megzoo.layers import ConvNorm, ResidualPlan
from megzoo.train.cpu_engine import blocks as fused_blocks
from megzoo.train.cpu_engine import conv as fast_conv
from megzoo.train.cpu_engine import kernels as hk


def _close(a, b, what, rtol=3e-6, atol=0.0):
    """max |a - b| <= rtol * max |a| + atol (float32 rounding of sums of many terms)."""
    scale = float(np.abs(a).max())
    err = float(np.abs(a - b).max())
    assert err <= rtol * scale + atol + 1e-7, f"{what}: max error {err:.3g} (scale {scale:.3g})"


# --------------------------------------------------------------------------- kernels

GEOMETRIES = {
    "3x3": ((3, 3), (1, 1), (1, 1), (1, 1), 8),
    "3x3-stride2": ((3, 3), (2, 2), (1, 1), (1, 1), 8),
    "1x1": ((1, 1), (1, 1), (0, 0), (1, 1), 8),
    "1x1-stride2": ((1, 1), (2, 2), (0, 0), (1, 1), 8),
    "7x7-stem-rgb": ((7, 7), (2, 2), (3, 3), (1, 1), 3),  # few channels: channels-first patches
    "3x3-dilated2": ((3, 3), (1, 1), (2, 2), (2, 2), 8),
    "rect-dilated-w": ((3, 1), (2, 1), (1, 0), (1, 2), 8),  # dilation along W: the per-tap im2col
    "3x3-nopad": ((3, 3), (1, 1), (0, 0), (1, 1), 8),
    "3x3-weight-heavy": ((3, 3), (1, 1), (1, 1), (1, 1), 64),  # data grad by col2im, not as a convolution
}


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_channels_last_convolution_equals_megengines(name):
    kernel, stride, padding, dilation, cin = GEOMETRIES[name]
    rng = np.random.RandomState(0)
    conv = M.Conv2d(cin, 6, kernel, stride, padding, dilation, bias=False)
    conv.weight[...] = rng.standard_normal(conv.weight.shape).astype("float32")
    x = megengine.Tensor(rng.standard_normal((3, cin, 11, 10)).astype("float32"))
    gm = GradManager().attach([conv.weight, x])
    with gm:
        y = conv(x)
        dy = rng.standard_normal(y.shape).astype("float32")
        gm.backward(y, megengine.Tensor(dy))
    g = hk.ConvGeometry(kernel, stride, padding, dilation)
    xs = hk.to_nhwc(x.numpy())
    out, cols = hk.conv_forward(xs, conv.weight.numpy(), g)
    n, o, oh, ow = y.shape
    assert g.out_size(11, 10) == (oh, ow)
    _close(y.numpy(), hk.to_nchw(out.reshape(n, oh, ow, o)), "forward")
    dy_rows = hk.to_nhwc(dy).reshape(-1, o)
    _close(x.grad.numpy(), hk.to_nchw(hk.conv_input_grad(dy_rows, conv.weight.numpy(), xs.shape, g)), "data grad")
    _close(conv.weight.grad.numpy(), hk.conv_weight_grad(cols, dy_rows, conv.weight.shape), "weight grad")


@pytest.mark.parametrize("name", ["3x3", "3x3-stride2", "3x3-nopad"])
@pytest.mark.parametrize("band", ["two-rows", "two-images"])
def test_convolution_by_blocks_of_patches_equals_megengines(name, band, monkeypatch):
    """Patch matrices above the size limit are formed and multiplied block by block (output rows
    of one image, or whole images, per block), in the forward pass, the data gradient (at stride 1 a
    convolution too) and the weight gradient; the results are MegEngine's."""
    kernel, stride, padding, dilation, _ = GEOMETRIES[name]
    cin, k = 16, 9 * 16
    g = hk.ConvGeometry(kernel, stride, padding, dilation)
    oh, ow = g.out_size(11, 10)
    rows = 2 * ow if band == "two-rows" else 2 * oh * ow  # GEMM rows per block
    monkeypatch.setattr(hk, "_BLOCKED_ABOVE", 0)
    monkeypatch.setattr(hk, "_BLOCK_BYTES", rows * 4 * k)
    bands = hk._bands(3, oh, ow, k)
    assert bands[:2] == ([(0, 1, 0, 2), (0, 1, 2, 4)] if band == "two-rows" else [(0, 2, 0, oh), (2, 3, 0, oh)])
    rng = np.random.RandomState(5)
    conv = M.Conv2d(cin, 20, kernel, stride, padding, dilation, bias=False)
    conv.weight[...] = rng.standard_normal(conv.weight.shape).astype("float32")
    x = megengine.Tensor(rng.standard_normal((3, cin, 11, 10)).astype("float32"))
    gm = GradManager().attach([conv.weight, x])
    with gm:
        y = conv(x)
        dy = rng.standard_normal(y.shape).astype("float32")
        gm.backward(y, megengine.Tensor(dy))
    xs = hk.to_nhwc(x.numpy())
    out, patches = hk.conv_forward(xs, conv.weight.numpy(), g)
    assert isinstance(patches, hk.BlockedPatches) and patches.x is xs and hk.lent_patches(patches, g) is None
    _close(y.numpy(), hk.to_nchw(out.reshape(3, oh, ow, 20)), "forward")
    dy_rows = hk.to_nhwc(dy).reshape(-1, 20)
    _close(x.grad.numpy(), hk.to_nchw(hk.conv_input_grad(dy_rows, conv.weight.numpy(), xs.shape, g)), "data grad")
    _close(conv.weight.grad.numpy(), hk.conv_weight_grad(patches, dy_rows, conv.weight.shape), "weight grad")


@pytest.mark.parametrize("name", ["3x3-stride2", "3x3-weight-heavy"])
@pytest.mark.parametrize("min_rows", [1, 13])
def test_data_gradient_by_groups_of_images_equals_megengines(name, min_rows, monkeypatch):
    """Strided and weight-heavy data gradients multiply ``dy @ F`` for a few images at a time (at
    least ``_MIN_GEMM_ROWS`` rows) and add each image's patch gradients into it: one image per
    product, or three (7 images over two cores: groups of 3, and 3 + 1), give MegEngine's gradient."""
    kernel, stride, padding, dilation, cin = GEOMETRIES[name]
    monkeypatch.setattr(hk, "_MIN_GEMM_ROWS", min_rows)
    monkeypatch.setattr(fast_conv, "usable_cpus", lambda: 2)  # the split between cores, on any machine
    products = []
    real_matmul = np.matmul
    monkeypatch.setattr(hk.np, "matmul",
                        lambda a, b, out=None: products.append(a.shape[0]) or real_matmul(a, b, out=out))
    rng = np.random.RandomState(7)
    conv = M.Conv2d(cin, 6, kernel, stride, padding, dilation, bias=False)
    conv.weight[...] = rng.standard_normal(conv.weight.shape).astype("float32")
    h, w = (5, 4) if name == "3x3-stride2" else (2, 3)  # 3x2 or 2x3 output: 6 rows an image
    x = megengine.Tensor(rng.standard_normal((7, cin, h, w)).astype("float32"))
    gm = GradManager().attach([x])
    with gm:
        y = conv(x)
        dy = rng.standard_normal(y.shape).astype("float32")
        gm.backward(y, megengine.Tensor(dy))
    g = hk.ConvGeometry(kernel, stride, padding, dilation)
    dy_rows = hk.to_nhwc(dy).reshape(-1, 6)
    dx = hk.conv_input_grad(dy_rows, conv.weight.numpy(), (7, h, w, cin), g)
    _close(x.grad.numpy(), hk.to_nchw(dx), "data grad")
    assert sorted(products) == ([6] * 7 if min_rows == 1 else [6, 18, 18])


def test_batchnorm_statistics_survive_a_large_offset():
    """The variance is the mean of squared *centred* values (accumulated in float64): a channel at
    1000 +- 0.01 keeps its variance, where E[y^2] - E[y]^2 in float32 would give noise."""
    rng = np.random.RandomState(3)
    y = (1000 + 0.01 * rng.standard_normal((20000, 3))).astype(np.float32)
    exact = y.astype(np.float64)
    out, mean, var, inv = hk.bn_forward(y.copy(), np.ones(3, np.float32), np.zeros(3, np.float32), 0.0, False)
    np.testing.assert_allclose(mean, exact.mean(axis=0), rtol=1e-7)
    np.testing.assert_allclose(var, exact.var(axis=0), rtol=1e-4)
    np.testing.assert_allclose(out.std(axis=0, dtype=np.float64), 1.0, rtol=1e-4)


def test_residual_relu_kernels():
    rng = np.random.RandomState(4)
    a, b, d = (rng.standard_normal((2, 5, 7, 3)).astype(np.float32) for _ in range(3))
    out = hk.add_relu(a, b)
    np.testing.assert_array_equal(out, np.maximum(a + b, 0))
    np.testing.assert_array_equal(hk.relu_mask(d, out), np.where(out > 0, d, 0))


def test_residual_relu_kernels_refuse_arrays_of_two_shapes():
    # the compiled loops do not check bounds: without the check add_relu read past b's end
    a, b = np.ones((2, 3), np.float32), np.ones((2, 2), np.float32)
    with pytest.raises(ValueError, match=r"the residual add on the host needs two arrays of one shape, "
                                         r"got \(2, 3\) and \(2, 2\)"):
        hk.add_relu(a, b)
    with pytest.raises(ValueError, match=r"the ReLU's gradient on the host needs two arrays of one shape"):
        hk.relu_mask(a, b)


def _blas_threads():
    """Thread counts of the BLAS libraries single_blas_thread controls: those loaded when it was
    first used, NumPy's among them (Numba's import may load SciPy's later)."""
    from threadpoolctl import threadpool_info

    if hk._BLAS is None:
        with hk.single_blas_thread():
            pass
    paths = {lib.filepath for lib in hk._BLAS.lib_controllers if lib.user_api == "blas"}
    return [pool["num_threads"] for pool in threadpool_info() if pool["filepath"] in paths]


def test_single_blas_thread_is_switched_and_restored_by_its_owner_only():
    # the switch is made and undone from one thread (here the main one): NumPy's OpenBLAS
    # ignores some changes made from other threads
    import threading

    before = _blas_threads()
    single = [1] * len(before)
    seen = {}

    def visitor(entered, leave, key):
        with hk.single_blas_thread():
            entered.set()
            leave.wait(10)
            seen[key] = _blas_threads()
        seen[key + " after"] = _blas_threads()

    # another thread enters and leaves while the main thread holds: the switch stands
    entered, leave = threading.Event(), threading.Event()
    with hk.single_blas_thread():
        with hk.single_blas_thread():  # re-entrant
            pass
        seen["owner nested"] = _blas_threads()
        t = threading.Thread(target=visitor, args=(entered, leave, "visitor"))
        t.start()
        entered.wait(10)
        leave.set()
        t.join(10)
        seen["owner after visitor"] = _blas_threads()
    assert seen == {"owner nested": single, "visitor": single, "visitor after": single,
                    "owner after visitor": single}
    assert _blas_threads() == before

    # the owner leaves first: it restores; the visitor leaves later and changes nothing
    seen.clear()
    entered, leave = threading.Event(), threading.Event()
    with hk.single_blas_thread():
        t = threading.Thread(target=visitor, args=(entered, leave, "visitor"))
        t.start()
        entered.wait(10)
    leave.set()
    t.join(10)
    assert seen == {"visitor": before, "visitor after": before}
    assert _blas_threads() == before
    with hk.single_blas_thread():  # nothing left held: the next holder switches again
        assert _blas_threads() == single
    assert _blas_threads() == before


def test_host_loops_compile_without_a_writable_cache(tmp_path):
    # a read-only install and a HOME that cannot hold a cache: Numba finds no cache locator
    import subprocess
    import sys
    from pathlib import Path

    import megzoo.train.cpu_engine.loops as host_loops

    copy = tmp_path / "host_loops_copy.py"
    copy.write_text(Path(host_loops.__file__).read_text())
    (tmp_path / "__pycache__").write_text("a file where the cache directory would go")
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    code = ("import importlib.util, sys, warnings\n"
            "spec = importlib.util.spec_from_file_location('host_loops_copy', sys.argv[1])\n"
            "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
            "import numpy as np\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    loops = mod.compiled()\n"
            "print(loops.column_sums(np.arange(6, dtype=np.float32).reshape(3, 2)).tolist())\n"
            "print([str(w.message) for w in caught])\n")
    env = dict(os.environ, HOME=str(blocked / "home"), XDG_CACHE_HOME=str(blocked / "xdg"),
               NUMBA_CACHE_DIR=str(blocked / "numba"))
    done = subprocess.run([sys.executable, "-c", code, str(copy)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    sums, warned = done.stdout.strip().splitlines()[-2:]
    assert sums == "[6.0, 9.0]"
    assert "compiled without a cache (cannot cache function 'column_sums'" in warned
    assert "Set NUMBA_CACHE_DIR to a writable directory" in warned


def test_host_loops_compile_once_when_several_threads_ask_first(monkeypatch):
    import threading
    import time

    import megzoo.train.cpu_engine.loops as host_loops

    calls = []
    real = host_loops._compile

    def slow_compile():
        calls.append(threading.get_ident())
        time.sleep(0.2)  # both threads ask while the first compiles
        return real()

    monkeypatch.setattr(host_loops, "_COMPILED", None)
    monkeypatch.setattr(host_loops, "_compile", slow_compile)
    got = []
    threads = [threading.Thread(target=lambda: got.append(host_loops.compiled())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(calls) == 1 and len(got) == 2 and got[0] is got[1]


def test_maxpool_lets_a_nan_win_and_refuses_too_many_taps():
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    x[0, 1, 0, 0] = np.nan
    out, argmax = hk.maxpool_forward(x, hk.PoolGeometry((2, 2), (2, 2), (0, 0)))
    assert np.isnan(out[0, 0, 0, 0]) and argmax[0, 0, 0, 0] == 2  # a NaN shows (MegEngine 1.13 drops it: 5)
    assert out[0, :, :, 0].ravel()[1:].tolist() == [7.0, 13.0, 15.0]
    with pytest.raises(ValueError, match="a 17x17 window has more taps than uint8 indices name"):
        hk.maxpool_forward(x, hk.PoolGeometry((17, 17), (1, 1), (8, 8)))


@pytest.mark.parametrize("relu", [False, True])
def test_batchnorm_kernels_equal_megengines_training_mode(relu):
    rng = np.random.RandomState(1)
    bn = M.BatchNorm2d(5)
    bn.weight[...] = rng.uniform(0.5, 1.5, bn.weight.shape).astype("float32")
    bn.bias[...] = rng.standard_normal(bn.bias.shape).astype("float32")
    x = megengine.Tensor((rng.standard_normal((4, 5, 6, 7)) * 3 + 2).astype("float32"))
    d = rng.standard_normal((4, 5, 6, 7)).astype("float32")
    gm = GradManager().attach([bn.weight, bn.bias, x])
    with gm:
        y = bn(x)
        if relu:
            y = F.relu(y)
        gm.backward(y, megengine.Tensor(d))
    rows = hk.to_nhwc(x.numpy()).reshape(-1, 5)
    gamma, beta = bn.weight.numpy().ravel(), bn.bias.numpy().ravel()
    out, mean, var, inv = hk.bn_forward(rows.copy(), gamma, beta, 1e-5, relu)
    xhat = (rows - mean) * inv
    _close(y.numpy(), hk.to_nchw(out.reshape(4, 6, 7, 5)), "output")
    _close(mean, x.numpy().mean(axis=(0, 2, 3)), "mean")
    _close(var, x.numpy().var(axis=(0, 2, 3)), "variance")
    dy, dgamma, dbeta = hk.bn_backward(hk.to_nhwc(d).reshape(-1, 5), xhat, inv, gamma, out if relu else None)
    _close(x.grad.numpy(), hk.to_nchw(dy.reshape(4, 6, 7, 5)), "input grad")
    _close(bn.weight.grad.numpy().ravel(), dgamma, "gamma grad")
    _close(bn.bias.grad.numpy().ravel(), dbeta, "beta grad")


def test_maxpool_kernels_equal_megengines():
    rng = np.random.RandomState(2)
    x = megengine.Tensor(rng.standard_normal((2, 3, 9, 8)).astype("float32"))  # no ties
    gm = GradManager().attach([x])
    with gm:
        y = F.max_pool2d(x, 3, 2, 1)
        d = rng.standard_normal(y.shape).astype("float32")
        gm.backward(y, megengine.Tensor(d))
    g = hk.PoolGeometry((3, 3), (2, 2), (1, 1))
    xs = hk.to_nhwc(x.numpy())
    out, argmax = hk.maxpool_forward(xs, g)
    np.testing.assert_array_equal(hk.to_nchw(out), y.numpy())  # a maximum is exact
    # overlapping windows: an input's gradients summed in another order
    _close(x.grad.numpy(), hk.to_nchw(hk.maxpool_backward(hk.to_nhwc(d), argmax, xs.shape, g)), "input grad",
           rtol=1e-7)


def test_maxpool_gives_a_tied_maximum_to_one_input_only():
    x = np.zeros((1, 4, 4, 1), np.float32)  # every window ties
    g = hk.PoolGeometry((2, 2), (2, 2), (0, 0))
    out, argmax = hk.maxpool_forward(x, g)
    assert argmax.dtype == np.uint8 and argmax.ravel().tolist() == [0, 0, 0, 0]
    dx = hk.maxpool_backward(np.ones_like(out), argmax, x.shape, g)
    assert dx.sum() == 4.0 and dx[0, ::2, ::2, 0].tolist() == [[1.0, 1.0], [1.0, 1.0]]


# --------------------------------------------------------------------------- whole models

def _recorded(monkeypatch, name: str) -> list:
    """The plans ``fused_blocks.<name>`` is called with, in order (it still runs them)."""
    calls = []
    run = getattr(fused_blocks, name)
    monkeypatch.setattr(fused_blocks, name, lambda plan, x: calls.append(plan) or run(plan, x))
    return calls


@pytest.fixture
def plan_calls(monkeypatch):
    """The plans that ran on the host in training mode."""
    return _recorded(monkeypatch, "run_plan")


def _model(arch, **kwargs):
    np.random.seed(0)
    megengine.random.seed(0)
    model = getattr(megzoo, arch)(num_classes=10, **kwargs)
    rng = np.random.RandomState(1)
    for module in model.modules():  # BN weights away from 1 and biases away from 0
        if isinstance(module, M.BatchNorm2d) and module.affine:
            module.weight[...] = rng.uniform(0.5, 1.5, module.weight.shape).astype("float32")
            module.bias[...] = rng.uniform(-0.2, 0.2, module.bias.shape).astype("float32")
    model.train()
    return model


def _step(model, size, batch=4, seed=3):
    """(logits, input grad, {param: grad}, {buffer: value}) of one training step, as numpy."""
    rng = np.random.RandomState(seed)
    x = megengine.Tensor(rng.standard_normal((batch, 3, size, size)).astype("float32"))
    params = list(model.trainable_parameters())
    gm = GradManager().attach(params + [x])
    with gm:
        y = model(x)
        gm.backward(F.loss.cross_entropy(y, megengine.Tensor(np.arange(batch) % 10)))
    grads = {k: p.grad.numpy() for k, p in model.named_parameters() if p.grad is not None}
    return y.numpy(), x.grad.numpy(), grads, {k: v.numpy() for k, v in model.named_buffers()}


def _host(model):
    fast_conv.enable(model, forward="blas")
    return fused_blocks.enable(model)


def _compare(native, host):
    scale = max(float(np.abs(g).max()) for g in native[2].values())
    _close(native[0], host[0], "logits", rtol=2e-5)
    _close(native[1], host[1], "input grad", rtol=2e-5)
    assert sorted(native[2]) == sorted(host[2])
    for name in native[2]:  # absolute floor: near-zero gradients (a BN bias before another BN) are noise
        _close(native[2][name], host[2][name], name, rtol=5e-5, atol=1e-5 * scale)
    for name in native[3]:
        _close(native[3][name], host[3][name], name, rtol=1e-5)


@pytest.mark.parametrize("arch,size", [("resnet18", 64), ("resnet18", 37)])
def test_a_resnet_training_step_equals_megengines(arch, size, plan_calls):
    calls = plan_calls
    native = _step(_model(arch), size)
    model = _model(arch)
    blocks = 8 if arch == "resnet18" else 16
    assert _host(model) == blocks + 2  # every block, the stem, the whole body
    _compare(native, _step(model, size))
    assert len(calls) == 1 and len(calls[0]) == blocks + 2  # the body as one plan: stem, max-pool, blocks


@pytest.fixture
def inference_calls(monkeypatch):
    """The plans that ran on the host in eval mode."""
    return _recorded(monkeypatch, "run_plan_inference")


def test_eval_mode_runs_the_host_plans_only_inside_host_evaluation(inference_calls, plan_calls):
    model = _model("resnet18")
    rng = np.random.RandomState(2)
    for module in model.modules():  # running statistics away from 0 and 1
        if isinstance(module, M.BatchNorm2d):
            module.running_mean[...] = rng.standard_normal(module.running_mean.shape).astype("float32") * 0.3
            module.running_var[...] = rng.uniform(0.5, 2.0, module.running_var.shape).astype("float32")
    model.eval()
    x = megengine.Tensor(rng.standard_normal((3, 3, 37, 37)).astype("float32"))
    native = model(x).numpy()
    _host(model)
    np.testing.assert_array_equal(model(x).numpy(), native)  # outside: MegEngine's operators, bit for bit
    assert inference_calls == []
    with fused_blocks.host_evaluation():
        host = model(x).numpy()
        assert len(inference_calls) == 1 and len(inference_calls[0]) == 10  # the body: stem, max-pool, 8 blocks
        gm = GradManager().attach([x])  # a gradient wanted (saliency, say): MegEngine's path
        with gm:
            y = model(x)
            gm.backward(y.sum())
        assert len(inference_calls) == 1
    _close(native, host, "logits", rtol=2e-5)
    _close(native, y.numpy(), "logits with a gradient", rtol=2e-5)  # fast_conv's recorded path: BLAS
    assert plan_calls == []  # no training plan ran, and the running statistics did not move
    body = model.host_plans()["forward_levels"]
    assert fused_blocks.plan_supported(body, training=False) and not fused_blocks.plan_supported(body)
    model.train()
    assert fused_blocks.plan_supported(body) and not fused_blocks.plan_supported(body, training=False)


def test_eval_on_the_host_gives_back_every_buffer_and_keeps_the_statistics(monkeypatch, inference_calls):
    """With every array pooled (no size floor), evaluation on the host leaves nothing lent and the
    running statistics as they were; frozen BatchNorm (the same in eval) runs on the host too;
    where a plan's norms are in both modes, that plan runs MegEngine's path."""
    from megzoo.train.cpu_engine import workspace

    monkeypatch.setattr(workspace, "_SMALL", 0)
    ws = workspace.WORKSPACE
    ws.clear()
    try:
        for arch in ("resnet18", "resnet50"):
            model = _model(arch)
            model.eval()
            x = megengine.Tensor(np.random.RandomState(3).standard_normal((2, 3, 33, 33)).astype("float32"))
            native = model(x).numpy()
            _host(model)
            model.layer2[0].bn1.freeze = True
            buffers = {k: v.numpy().copy() for k, v in model.named_buffers()}
            with fused_blocks.host_evaluation():
                for _ in range(2):
                    _close(native, model(x).numpy(), f"{arch} logits", rtol=2e-5)
                    assert ws.lent_bytes == 0
                assert len(inference_calls) == 2  # the whole body, twice
                model.layer3[0].bn2.train()  # one norm in training mode: neither the body's plan nor that
                mixed = model(x).numpy()     # block's applies; the stem's and the other blocks' do
            blocks = 8 if arch == "resnet18" else 16
            assert len(inference_calls) == 2 + 1 + (blocks - 1)
            _close(model(x).numpy(), mixed, f"{arch} logits, mixed modes", rtol=2e-5)  # MegEngine's path
            for name, value in model.named_buffers():
                if "layer3.0.bn2" not in name:
                    np.testing.assert_array_equal(value.numpy(), buffers[name], err_msg=name)
            inference_calls.clear()
    finally:
        ws.clear()


def test_the_trainers_validation_runs_the_host_plans(shapes, tmp_path, inference_calls):  # noqa: F811
    from megzoo.train import Trainer

    def validation(**options):
        trainer = Trainer(_config(shapes, tmp_path / str(len(options)), model="resnet18", input_size=32,
                                  resize_size=32, **options))
        return trainer.evaluate(), trainer

    native, _ = validation(fused_blocks=False)
    assert inference_calls == []
    host, trainer = validation()
    assert len(inference_calls) == len(trainer.val_loader) and trainer.model.training
    assert native["val_images"] == host["val_images"] > 0
    assert native["val_top1"] == host["val_top1"] and native["val_top5"] == host["val_top5"]
    assert abs(native["val_loss"] - host["val_loss"]) <= 1e-5 * abs(native["val_loss"])


def test_steps_reusing_every_workspace_buffer_equal_megengines(monkeypatch):
    """With every array pooled (no size floor), a second and third step run in the buffers the first
    gave back (no new ones, nothing left lent) and still equal MegEngine's steps on new inputs
    (gradients accumulate over the steps in both)."""
    from megzoo.train.cpu_engine import workspace

    monkeypatch.setattr(workspace, "_SMALL", 0)
    ws = workspace.WORKSPACE
    ws.clear()
    native, model = _model("resnet18"), _model("resnet18")
    _host(model)
    try:
        _compare(_step(native, 40, seed=3), _step(model, 40, seed=3))
        assert ws.lent_bytes == 0
        allocated = ws.allocations
        for seed in (4, 5):
            _compare(_step(native, 40, seed=seed), _step(model, 40, seed=seed))
            assert ws.lent_bytes == 0 and ws.allocations == allocated
    finally:
        ws.clear()


@pytest.mark.parametrize("stride,in_channels", [(2, 16), (1, 32), (1, 16)])
def test_a_bottleneck_block_equals_megengines(stride, in_channels):
    """ResNet-50's block, with a projection shortcut (strided or not) and with the identity."""
    from megzoo.models.resnet import Bottleneck

    def run(host):
        np.random.seed(0)
        megengine.random.seed(0)
        block = Bottleneck(in_channels, 8, stride)
        rng = np.random.RandomState(1)
        for module in block.modules():
            if isinstance(module, M.BatchNorm2d):
                module.weight[...] = rng.uniform(0.5, 1.5, module.weight.shape).astype("float32")
                module.bias[...] = rng.uniform(-0.2, 0.2, module.bias.shape).astype("float32")
        block.train()
        if host:
            assert _host(block) == 1
        x = megengine.Tensor(np.random.RandomState(2).standard_normal((4, in_channels, 9, 10)).astype("float32"))
        params = list(block.parameters())
        gm = GradManager().attach(params + [x])
        with gm:
            y = block(x)
            gm.backward(y, megengine.Tensor(np.random.RandomState(3).standard_normal(y.shape).astype("float32")))
        return (y.numpy(), x.grad.numpy(), {k: p.grad.numpy() for k, p in block.named_parameters()},
                {k: v.numpy() for k, v in block.named_buffers()})

    assert (Bottleneck(in_channels, 8, stride).downsample is None) == (stride == 1 and in_channels == 32)
    _compare(run(False), run(True))


def test_frozen_stages_fall_back_per_block_and_get_no_gradient(plan_calls):
    calls = plan_calls
    native = _step(_model("resnet18").freeze(2), 40)
    model = _model("resnet18").freeze(2)
    _host(model)
    host = _step(model, 40)
    _compare(native, host)
    assert not any(name.startswith(("conv1", "bn1", "layer1", "layer2")) for name in host[2])
    assert len(calls) == 4  # the blocks of layer3 and layer4, one by one (frozen BN is not training BN)


@pytest.mark.parametrize("kwargs", [dict(drop_path_rate=0.1), dict(norm_layer="gn")])
def test_what_the_host_path_does_not_compute_runs_megengines_path(kwargs, plan_calls):
    calls = plan_calls
    model = _model("resnet18", **kwargs)
    _host(model)
    _step(model, 32)
    if "drop_path_rate" in kwargs:  # the first block never drops: it alone runs on the host
        assert len(calls) == 2 and isinstance(calls[0], ResidualPlan) and isinstance(calls[1], ResidualPlan)
    else:
        assert calls == []


def test_grouped_convolutions_and_evaluation_run_megengines_path(plan_calls):
    calls = plan_calls
    model = _model("resnext50_32x4d")
    _host(model)
    _step(model, 32)
    assert [len(p.body) for p in calls] == [1]  # the dense stem only
    model.eval()
    calls.clear()
    model(megengine.Tensor(np.zeros((1, 3, 32, 32), np.float32)))
    assert calls == []


def test_switching_keeps_the_state_dict_and_disable_restores_the_methods():
    model = _model("resnet18")
    keys = sorted(model.state_dict())
    assert not fused_blocks.is_enabled(model)
    assert fused_blocks.enable(model) == 10 and fused_blocks.is_enabled(model)
    assert sorted(model.state_dict()) == keys
    assert "forward_levels" in model.__dict__ and "forward" in model.layer1[0].__dict__
    assert fused_blocks.disable(model) == 10 and not fused_blocks.is_enabled(model)
    assert "forward_levels" not in model.__dict__ and "forward" not in model.layer1[0].__dict__


def test_a_plan_step_must_be_a_block_or_a_max_pool():
    conv, bn = M.Conv2d(3, 4, 3, padding=1, bias=False), M.BatchNorm2d(4)
    plan = (ResidualPlan((ConvNorm(conv, bn, True),), None, False), M.AvgPool2d(2))
    with pytest.raises(TypeError, match="a host plan step is a ResidualPlan or a MaxPool2d, got AvgPool2d"):
        fused_blocks.run_plan(plan, megengine.Tensor(np.zeros((1, 3, 8, 8), np.float32)))


# --------------------------------------------------------------------------- in the trainer

from test_train import _config  # noqa: E402  (the shapes fixture is in conftest)


@pytest.mark.parametrize("options,expected", [
    ({}, "auto, BLAS forward, fused blocks"),
    (dict(fused_blocks=False), "auto, BLAS forward"),
    (dict(fast_conv_forward="native"), "auto"),  # bit-identical forward asked: no host blocks
])
def test_the_trainer_uses_fused_blocks_on_a_cpu_by_default(shapes, tmp_path, options, expected):  # noqa: F811
    from megzoo.train import Trainer

    trainer = Trainer(_config(shapes, tmp_path, model="resnet18", **options))
    assert trainer.fast_conv == expected
    assert fused_blocks.is_enabled(trainer.model) == expected.endswith("fused blocks")


def test_megzoo_train_switches_fused_blocks_off():
    from megzoo.cli import build_parser
    from megzoo.cli.train import config_from_args

    parser = build_parser()
    assert config_from_args(parser.parse_args(["train", "--data", "d"])).fused_blocks is True
    assert config_from_args(parser.parse_args(["train", "--data", "d", "--no-fused-blocks"])).fused_blocks is False


def test_a_trainer_step_with_fused_blocks_updates_the_weights_as_megengines_path(shapes, tmp_path):  # noqa: F811
    from megzoo.train import Trainer

    def one_step(**options):
        trainer = Trainer(_config(shapes, tmp_path / str(len(options)), model="resnet18", input_size=32,
                                  resize_size=32, warmup_epochs=0, schedule="step", **options))
        batch = np.stack([trainer.train_transform.apply(trainer.data.train[i])[0] for i in range(6)])
        labels = np.array([int(trainer.data.train[i][1]) for i in range(6)], np.int32)
        before = np.array(trainer.model.conv1.weight.numpy())
        trainer.set_lr(0)  # the learning rate of step 0: config.lr
        trainer.train_step(batch, labels)
        assert np.abs(trainer.model.conv1.weight.numpy() - before).max() > 1e-4  # the step moved the weights
        return {k: np.array(v) for k, v in trainer.model.state_dict().items()}

    native, host = one_step(fast_conv="off"), one_step()
    assert sorted(native) == sorted(host)
    # weights after one SGD step, running statistics after one update. The stem's weight is the
    # farthest (1.7e-5 of its scale): its gradient, from both paths, is ~1.5e-5 (relative) from one
    # accumulated in float64 on the host, MegEngine's a little farther than the host's
    for name in native:
        _close(native[name], host[name], name, rtol=2e-5, atol=1e-6)


def test_fit_and_disable_give_the_workspace_buffers_back(shapes, tmp_path):  # noqa: F811
    from megzoo.train import Trainer
    from megzoo.train.cpu_engine.workspace import WORKSPACE

    def leave_a_free_buffer():
        WORKSPACE.clear()  # whatever earlier tests left
        WORKSPACE.give(WORKSPACE.take((1 << 20,)))  # 4 MB
        assert WORKSPACE.free_bytes == 4 << 20

    trainer = Trainer(_config(shapes, tmp_path, model="resnet18", input_size=32, resize_size=32, epochs=1))
    leave_a_free_buffer()
    trainer.fit()
    assert WORKSPACE.free_bytes == 0
    leave_a_free_buffer()
    fused_blocks.disable(trainer.model)
    assert WORKSPACE.free_bytes == 0
