"""VGG: PyTorch-exact adaptive pooling, any input size >= 32 px, options, backbone use, errors.

Logic tests use tiny VGGs (widths 8-16); their cost is the fixed 4096-wide head (~3 s each to
initialise), so each is built once per module and tests that change one put it back.
"""
import megengine as mge
import megengine.module as M
import numpy as np
import pytest

import megzoo
from megzoo.layers import AdaptiveAvgPool2d
from megzoo.models import VGG
from megzoo.summary import count_params

TINY = dict(depths=(1, 1, 1, 1, 1), widths=(8, 8, 16, 16, 16))


def images(n, size, channels=3, seed=0):
    h, w = (size, size) if isinstance(size, int) else size
    return mge.tensor(np.random.default_rng(seed).standard_normal((n, channels, h, w)).astype(np.float32))


def torch_adaptive_avg_pool(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """PyTorch's rule, bin by bin: output i averages input rows floor(i*H/oh) .. ceil((i+1)*H/oh)-1."""
    n, c, h, w = x.shape
    out = np.empty((n, c, out_h, out_w), np.float64)
    for i in range(out_h):
        r0, r1 = int(np.floor(i * h / out_h)), int(np.ceil((i + 1) * h / out_h))
        for j in range(out_w):
            c0, c1 = int(np.floor(j * w / out_w)), int(np.ceil((j + 1) * w / out_w))
            out[:, :, i, j] = x[:, :, r0:r1, c0:c1].astype(np.float64).mean(axis=(2, 3))
    return out


def vgg_head_np(model, feats: np.ndarray) -> np.ndarray:
    """Eval-mode VGG head in numpy: PyTorch-binned 7x7 pooling, flatten, Linear-ReLU x2, Linear."""
    h = torch_adaptive_avg_pool(feats, 7, 7).reshape(len(feats), -1).astype(np.float32)
    for i in (0, 3, 6):
        layer = model.head.classifier[i]
        h = h @ layer.weight.numpy().T + layer.bias.numpy()
        if i < 6:
            h = np.maximum(h, 0)
    return h


@pytest.fixture
def vgg11(zoo_model):
    return zoo_model("vgg11")


@pytest.fixture(scope="module")
def tiny_bn():
    """BN, 4 input channels, 10 classes, dropout 0.5."""
    model = VGG(**TINY, in_channels=4, norm_layer="bn", num_classes=10, drop_rate=0.5)
    model.eval()
    return model


@pytest.fixture(scope="module")
def tiny_plain():
    """No norm, 1 input channel, no classifier, no dropout."""
    model = VGG(**TINY, in_channels=1, num_classes=0, drop_rate=0.0)
    model.eval()
    return model


# --- adaptive pooling ------------------------------------------------------------------------------
@pytest.mark.parametrize("in_size, out_size", [
    ((9, 9), (7, 7)), ((10, 13), (7, 7)), ((5, 5), (7, 7)), ((1, 1), (7, 7)), ((8, 8), (7, 7)),
    ((14, 14), (7, 7)), ((7, 7), (7, 7)), ((3, 20), (2, 5)), ((31, 224), (7, 7)),
])
def test_adaptive_avg_pool_uses_pytorch_bins(in_size, out_size):
    x = np.random.default_rng(0).standard_normal((2, 3, *in_size)).astype(np.float32)
    out = AdaptiveAvgPool2d(out_size)(mge.tensor(x)).numpy()
    assert out.shape == (2, 3, *out_size)
    np.testing.assert_allclose(out, torch_adaptive_avg_pool(x, *out_size), rtol=1e-5, atol=1e-6)


def test_adaptive_avg_pool_exact_values():
    # 3 -> 2: bins {0, 1} and {1, 2} overlap
    x = mge.tensor(np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3))
    np.testing.assert_array_equal(AdaptiveAvgPool2d(2)(x).numpy(), [[[[2.0, 3.0], [5.0, 6.0]]]])
    # 2 -> 3 (upsampling): bins {0}, {0, 1}, {1}
    x = mge.tensor(np.array([[[[1.0, 4.0]]]], np.float32))
    np.testing.assert_array_equal(AdaptiveAvgPool2d((1, 3))(x).numpy(), [[[[1.0, 2.5, 4.0]]]])
    assert AdaptiveAvgPool2d(7).output_size == (7, 7)


# --- any input size -------------------------------------------------------------------------------
@pytest.mark.parametrize("size, final", [(224, 7), (100, 3), (257, 8), ((64, 130), (2, 4))])
def test_logits_at_any_input_size(vgg11, size, final):
    """The head pools the s5 map to 7x7 with PyTorch's bins (3x3 and 8x8 are not multiples of 7)."""
    x = images(1, size)
    feats = vgg11.forward_features(x).numpy()
    assert feats.shape == (1, 512, *((final, final) if isinstance(final, int) else final))
    logits = vgg11(x).numpy()
    assert logits.shape == (1, 1000)
    expected = vgg_head_np(vgg11, feats)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_input_smaller_than_32_px_is_refused(vgg11):
    for shape in ((1, 3, 31, 64), (1, 3, 64, 16)):
        with pytest.raises(ValueError,
                           match=rf"^vgg11 needs inputs of at least 32x32 pixels, got {shape[2]}x{shape[3]}$"):
            vgg11(mge.tensor(np.zeros(shape, np.float32)))
    assert vgg11(images(1, 32)).shape == (1, 1000)


# --- options ------------------------------------------------------------------------------------------
def test_norm_layer_and_structure(vgg11, tiny_bn):
    assert not [m for m in vgg11.modules() if isinstance(m, (M.BatchNorm2d, M.GroupNorm))]
    assert [type(m) for m in vgg11.s3.b2] == [M.Conv2d, M.ReLU]
    assert [(type(m), m.num_features) for m in tiny_bn.modules() if isinstance(m, M.BatchNorm2d)] == [
        (M.BatchNorm2d, c) for c in (8, 8, 16, 16, 16)]
    assert [type(m) for m in tiny_bn.s3.b1] == [M.Conv2d, M.BatchNorm2d, M.ReLU]
    # (vgg*_bn's BatchNorm layers: their state-dict layout is checked against BaseCls's in test_models)
    assert vgg11.s1.b1[0].bias.shape == (1, 64, 1, 1)  # conv bias, unlike BaseCls
    assert [m.drop_prob for m in vgg11.head.classifier if isinstance(m, M.Dropout)] == [0.5, 0.5]
    assert vgg11.num_features == 512 and vgg11.get_classifier() is vgg11.head.classifier[6]


def test_norm_layer_variants():
    model = VGG(**TINY, norm_layer="gn:4", num_classes=3)
    assert [(type(m), m.num_groups) for m in model.modules() if isinstance(m, M.GroupNorm)] == [(M.GroupNorm, 4)] * 5
    assert [type(m) for m in model.s2.b1] == [M.Conv2d, M.GroupNorm, M.ReLU]
    model.eval()
    assert model(images(1, 32)).shape == (1, 3)


def test_in_channels_and_num_classes(tiny_bn, tiny_plain):
    assert tiny_bn.s1.b1[0].weight.shape == (8, 4, 3, 3)
    assert tiny_bn(images(2, 32, channels=4)).shape == (2, 10)
    assert tiny_plain.s1.b1[0].weight.shape == (8, 1, 3, 3)
    assert tiny_plain.get_classifier() is None and len(tiny_plain.head.classifier) == 6
    x = images(2, 40, channels=1)
    out = tiny_plain(x).numpy()  # num_classes=0: the 4096-d pre-logits
    assert out.shape == (2, 4096)
    np.testing.assert_array_equal(out, tiny_plain.forward_head(tiny_plain.forward_features(x), pre_logits=True).numpy())
    hidden = np.maximum(0, torch_adaptive_avg_pool(tiny_plain.forward_features(x).numpy(), 7, 7).reshape(2, -1)
                        @ tiny_plain.head.classifier[0].weight.numpy().T + tiny_plain.head.classifier[0].bias.numpy())
    second = tiny_plain.head.classifier[3]
    hidden = np.maximum(0, hidden @ second.weight.numpy().T + second.bias.numpy())
    np.testing.assert_allclose(out, hidden, rtol=1e-4, atol=1e-4 * np.abs(hidden).max())


def running_stats(model) -> dict:
    return {k: v.numpy() for k, v in model.state_dict(keep_var=True).items() if "running_" in k}


def test_head_dropout(tiny_bn, tiny_plain):
    x = images(2, 32, channels=4)
    stats = running_stats(tiny_bn)
    try:
        tiny_bn.train()  # BN uses batch statistics: the same for both calls, only dropout differs
        first, second = tiny_bn(x).numpy(), tiny_bn(x).numpy()
        assert not np.allclose(first, second)
    finally:
        tiny_bn.eval()
        tiny_bn.load_state_dict(stats, strict=False)
    assert np.array_equal(tiny_bn(x).numpy(), tiny_bn(x).numpy())
    x = images(2, 32, channels=1)
    try:
        tiny_plain.train()  # drop_rate=0: train mode is deterministic
        assert np.array_equal(tiny_plain(x).numpy(), tiny_plain(x).numpy())
    finally:
        tiny_plain.eval()


def test_reset_classifier(tiny_plain):
    try:
        tiny_plain.reset_classifier(7)
        assert tiny_plain.num_classes == 7 and tiny_plain.get_classifier() is tiny_plain.head.classifier[6]
        assert tiny_plain.head.classifier[6].weight.shape == (7, 4096)
        assert tiny_plain(images(1, 32, channels=1)).shape == (1, 7)
    finally:
        tiny_plain.reset_classifier(0)
    assert tiny_plain.get_classifier() is None and tiny_plain(images(1, 32, channels=1)).shape == (1, 4096)


# --- backbone use ------------------------------------------------------------------------------------
def test_extract_features(vgg11):
    feats = vgg11.extract_features(images(1, 224))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "s1": (1, 64, 112, 112), "s2": (1, 128, 56, 56), "s3": (1, 256, 28, 28),
        "s4": (1, 512, 14, 14), "s5": (1, 512, 7, 7),
    }
    assert list(feats) == vgg11.feature_info.names()
    assert vgg11.feature_info.channels() == [64, 128, 256, 512, 512]
    assert vgg11.feature_info.strides() == [2, 4, 8, 16, 32]


def test_forward_features_and_head_compose_to_forward(vgg11):
    x = images(1, 64)
    np.testing.assert_array_equal(vgg11(x).numpy(), vgg11.forward_head(vgg11.forward_features(x)).numpy())


@pytest.fixture(scope="module")
def tiny_backbone():
    return VGG(**TINY, norm_layer="bn").as_features(out_indices=(0, 2, -2))


def test_features_only(tiny_backbone):
    model = tiny_backbone
    assert model.features_only and model.out_indices == (0, 2, 3)
    assert [level.as_dict() for level in model.feature_info] == [
        {"name": "s1", "channels": 8, "stride": 2}, {"name": "s3", "channels": 16, "stride": 8},
        {"name": "s4", "channels": 16, "stride": 16}]
    assert model.head is None and model.s5 is None and model.get_classifier() is None
    assert not any(k.startswith(("head.", "s5.")) for k in model.state_dict())
    # conv 3x3 with bias + BN (2 per channel): 8 <- 3, 8 <- 8, 16 <- 8, 16 <- 16
    assert count_params(model) == sum(9 * i * o + 3 * o for i, o in ((3, 8), (8, 8), (8, 16), (16, 16)))
    model.eval()
    maps = model(images(2, 64))
    assert [tuple(m.shape) for m in maps] == [(2, 8, 32, 32), (2, 16, 8, 8), (2, 16, 4, 4)]
    assert [(c, 64 // s) for c, s in zip(model.feature_info.channels(), model.feature_info.strides())] == [
        (m.shape[1], m.shape[2]) for m in maps]
    assert list(model.extract_features(images(1, 64))) == ["s1", "s2", "s3", "s4"]


def test_freeze_stages(tiny_backbone):
    model = tiny_backbone
    stats = running_stats(model)
    try:
        model.freeze(2)  # VGG has no stem: s1, s2
        frozen = {id(p) for p in model.frozen_parameters()}
        assert frozen == {id(p) for stage in (model.s1, model.s2) for p in stage.parameters()}
        assert len(model.trainable_parameters()) == 8  # s3, s4: conv weight, bias, BN weight, bias
        before = {n: model.state_dict()[f"{n}.b1.1.running_mean"].copy() for n in ("s1", "s2", "s3")}
        model.train()
        model(images(2, 32))
        after = model.state_dict()
        assert np.array_equal(after["s1.b1.1.running_mean"], before["s1"])
        assert np.array_equal(after["s2.b1.1.running_mean"], before["s2"])
        assert not np.array_equal(after["s3.b1.1.running_mean"], before["s3"])
        with pytest.raises(ValueError, match=r"^num_stages must be an int in \[0, 5\] for VGG, got 6$"):
            model.freeze(6)
    finally:
        model.unfreeze()
        model.eval()
        model.load_state_dict(stats, strict=False)
    assert len(model.trainable_parameters()) == 16


# --- errors ---------------------------------------------------------------------------------------
def test_vgg_argument_errors():
    with pytest.raises(ValueError, match=r"^depths and widths must have 5 entries \(one per stage\), got \(1, 1\), "):
        VGG(depths=(1, 1))
    with pytest.raises(ValueError, match=r"^drop_rate must be in \[0, 1\), got -0\.1$"):
        megzoo.vgg11(drop_rate=-0.1)
    with pytest.raises(ValueError, match=r"^unknown norm_layer 'batchnorm2d': use one of "):
        megzoo.vgg11_bn(norm_layer="batchnorm2d")
