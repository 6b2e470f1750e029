"""ResNet / ResNeXt / Wide-ResNet: input sizes, options, backbone use, fine-tuning helpers, errors."""
import functools
import re

import megengine as mge
import megengine.functional as F
import megengine.module as M
import numpy as np
import pytest
from megengine.autodiff import GradManager

import megzoo
from megzoo.layers import FrozenBatchNorm2d
from megzoo.models import ResNet
from megzoo.summary import count_params

RESNET18_PARAMS = 11_689_512
RESNET50_PARAMS = 25_557_032


def images(n, size, channels=3, seed=0):
    h, w = (size, size) if isinstance(size, int) else size
    return mge.tensor(np.random.default_rng(seed).standard_normal((n, channels, h, w)).astype(np.float32))


def linear_np(fc: M.Linear, x: np.ndarray) -> np.ndarray:
    return x @ fc.weight.numpy().T + fc.bias.numpy()


def norm_modules(model):
    return [m for m in model.modules() if isinstance(m, (M.BatchNorm2d, M.GroupNorm))]


def re_escape(value) -> str:
    return re.escape(repr(value))


def running_stats(module):
    return {name: value.copy() for name, value in module.state_dict().items() if "running_" in name}


@pytest.fixture
def resnet18(zoo_model):
    return zoo_model("resnet18")


# --- any input size ----------------------------------------------------------------------------------
@pytest.mark.parametrize("size, final", [(224, 7), (160, 5), (257, 9), ((100, 300), (4, 10))])
def test_logits_are_fc_of_the_global_mean(resnet18, size, final):
    x = images(1, size)
    feats = resnet18.forward_features(x).numpy()
    assert feats.shape == (1, 512, *((final, final) if isinstance(final, int) else final))
    logits = resnet18(x).numpy()
    assert logits.shape == (1, 1000)
    expected = linear_np(resnet18.fc, feats.mean(axis=(2, 3)))
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_fixed_7x7_pooling_would_be_caught(resnet18):
    """The reference implementation pools with avg_pool2d(x, 7): right at 224 px only. At 256 px the
    8x8 map's global mean differs from the top-left 7x7 window, and the check above sees it."""
    for size, agree in ((224, True), (256, False)):
        feats = resnet18.forward_features(images(1, size))
        old = F.avg_pool2d(feats, 7).numpy()
        assert old.shape == (1, 512, 1, 1)
        old_logits = linear_np(resnet18.fc, old.reshape(1, 512))
        logits = resnet18.forward_head(feats).numpy()
        assert np.allclose(logits, old_logits, rtol=1e-4, atol=1e-4 * np.abs(logits).max()) == agree


def test_tiny_input(resnet18):
    """No minimum size: a 1x1 image still gives 1x1 maps at every level."""
    feats = resnet18.extract_features(images(1, 1))
    assert [tuple(f.shape[2:]) for f in feats.values()] == [(1, 1)] * 5
    assert resnet18(images(1, 1)).shape == (1, 1000)


# --- options ----------------------------------------------------------------------------------------
def test_num_classes():
    model = megzoo.resnet18(num_classes=10)
    model.eval()
    assert model(images(2, 64)).shape == (2, 10)
    assert model.fc.weight.shape == (10, 512)
    assert count_params(model) == RESNET18_PARAMS - 990 * 513


def test_num_classes_zero_gives_pooled_features():
    model = megzoo.resnet18(num_classes=0)
    model.eval()
    assert model.fc is None and model.get_classifier() is None and model.num_features == 512
    x = images(2, 96)
    out = model(x).numpy()
    assert out.shape == (2, 512)
    np.testing.assert_allclose(out, model.forward_features(x).numpy().mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    assert count_params(model) == RESNET18_PARAMS - 513_000


def test_pre_logits(resnet18):
    x = images(2, 64)
    pre = resnet18.forward_head(resnet18.forward_features(x), pre_logits=True).numpy()
    np.testing.assert_allclose(pre, resnet18.forward_features(x).numpy().mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    assert megzoo.resnet50(num_classes=0).num_features == 2048


@pytest.mark.parametrize("channels", [1, 4])
def test_in_channels(channels):
    model = megzoo.resnet18(in_channels=channels)
    model.eval()
    assert model.conv1.weight.shape == (64, channels, 7, 7)
    assert model(images(2, 64, channels)).shape == (2, 1000)
    assert count_params(model) == RESNET18_PARAMS + (channels - 3) * 64 * 49


@pytest.fixture(scope="module")
def zero_init_resnet50():
    model = megzoo.resnet50(zero_init_residual=True)
    model.eval()
    return model


def test_zero_init_residual_zeroes_the_last_norm_of_every_block(zero_init_resnet50):
    model = zero_init_resnet50
    blocks = [b for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for b in layer]
    assert len(blocks) == 16
    for block in blocks:
        assert block.residual_norm is block.bn3
        assert not block.bn3.weight.numpy().any()
        assert (block.bn1.weight.numpy() == 1).all() and (block.bn2.weight.numpy() == 1).all()
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        assert (layer[0].downsample[1].weight.numpy() == 1).all()
    assert (model.bn1.weight.numpy() == 1).all()

    basic = megzoo.resnet18(zero_init_residual=True)
    blocks = [b for layer in (basic.layer1, basic.layer2, basic.layer3, basic.layer4) for b in layer]
    assert len(blocks) == 8 and all(b.residual_norm is b.bn2 and not b.bn2.weight.numpy().any() for b in blocks)
    assert all((b.bn1.weight.numpy() == 1).all() for b in blocks)
    default = megzoo.resnet18()
    assert (default.layer1[0].bn2.weight.numpy() == 1).all()


def test_zero_init_residual_blocks_start_as_identity(zero_init_resnet50, resnet18):
    """With gamma = 0 the residual branch outputs exactly the BN bias (0): block(x) = relu(shortcut(x))."""
    model = zero_init_resnet50
    x = images(2, 8, channels=256)
    np.testing.assert_array_equal(model.layer1[1](x).numpy(), F.relu(x).numpy())
    first = model.layer2[0]  # 256 -> 512 with stride 2: projection shortcut
    np.testing.assert_array_equal(first(x).numpy(), F.relu(first.downsample(x)).numpy())
    x = images(2, 8, channels=64)  # control: a normally initialised block is no identity
    assert not np.allclose(resnet18.layer1[1](x).numpy(), F.relu(x).numpy(), atol=1e-2)


def test_groups_and_width_per_group():
    model = ResNet("bottleneck", (1, 1, 1, 1), num_classes=10, groups=4, width_per_group=16)
    # inner width int(64 * 16 / 64) * 4 = 64, stored as (G, O/G, I/G, kh, kw)
    assert model.layer1[0].conv2.weight.shape == (4, 16, 16, 3, 3)
    assert model.layer4[0].conv2.weight.shape == (4, 128, 128, 3, 3)
    assert model.layer1[0].conv3.weight.shape == (256, 64, 1, 1)
    model.eval()
    assert model(images(1, 64)).shape == (1, 10)
    wide = ResNet("bottleneck", (1, 1, 1, 1), num_classes=0, width_per_group=128)  # wide_resnet*_2's setting
    assert wide.layer1[0].conv2.weight.shape == (128, 128, 3, 3)
    assert wide.layer1[0].conv3.weight.shape == (256, 128, 1, 1)


@pytest.mark.parametrize("dilation, strides, final", [
    ((False, False, True), [4, 4, 8, 16, 16], 14),
    ((False, True, True), [4, 4, 8, 8, 8], 28),
])
def test_replace_stride_with_dilation(dilation, strides, final):
    model = megzoo.resnet50(replace_stride_with_dilation=dilation)
    model.eval()
    assert model.feature_info.strides() == strides
    feats = model.extract_features(images(1, 64))
    assert [64 // f.shape[2] for f in feats.values()] == strides
    assert feats["res5"].shape == (1, 2048, 64 * final // 224, 64 * final // 224)
    assert model(images(1, 64)).shape == (1, 1000)
    assert count_params(model) == RESNET50_PARAMS
    # the first block of a dilated stage keeps the previous dilation, the next ones use the new one
    assert model.layer4[0].conv2.dilation == ((2, 2) if dilation[1] else (1, 1))
    assert model.layer4[1].conv2.dilation == ((4, 4) if dilation[1] else (2, 2))
    assert model.layer4[0].conv2.stride == (1, 1) and model.layer4[0].downsample[0].stride == (1, 1)


@pytest.mark.parametrize("norm, kind, groups", [
    (None, M.BatchNorm2d, None),
    ("bn", M.BatchNorm2d, None),
    ("frozen_bn", FrozenBatchNorm2d, None),
    ("gn", M.GroupNorm, 32),
    ("gn:8", M.GroupNorm, 8),
    (functools.partial(M.GroupNorm, 16), M.GroupNorm, 16),
])
def test_norm_layer(norm, kind, groups):
    model = megzoo.resnet18(norm_layer=norm)
    norms = norm_modules(model)
    assert len(norms) == 20  # stem + 2 per block + 3 projection shortcuts
    assert all(type(m) is kind for m in norms)
    if groups:
        assert all(m.num_groups == groups for m in norms)
    assert count_params(model) == RESNET18_PARAMS  # affine weight + bias per channel either way
    model.eval()
    assert model(images(1, 64)).shape == (1, 1000)


def test_norm_layer_callable_gets_the_channel_count():
    seen = []

    def norm(channels):
        seen.append(channels)
        return M.BatchNorm2d(channels)

    megzoo.resnet18(norm_layer=norm)
    assert sorted(set(seen)) == [64, 128, 256, 512] and len(seen) == 20


def test_frozen_bn_ignores_train_mode():
    model = megzoo.resnet18(norm_layer="frozen_bn", num_classes=10)
    rng = np.random.default_rng(0)
    stats = {}  # non-trivial statistics, so that batch statistics would give other outputs
    for key, value in model.state_dict().items():
        if key.endswith("running_mean"):
            stats[key] = rng.normal(0, 0.1, value.shape).astype(np.float32)
        elif key.endswith("running_var"):
            stats[key] = rng.uniform(0.5, 1.5, value.shape).astype(np.float32)
    model.load_state_dict(stats, strict=False)
    x = images(2, 32)
    model.eval()
    eval_out = model(x).numpy()
    model.train()
    frozen_affine = [model.bn1.weight, model.layer4[1].bn2.weight, model.layer4[1].bn2.bias]
    gm = GradManager().attach(frozen_affine + [model.layer4[1].conv2.weight])
    with gm:
        train_out = model(x)
        gm.backward(train_out.sum())
    np.testing.assert_array_equal(train_out.numpy(), eval_out)
    after = {k: v for k, v in model.state_dict().items() if k in stats}
    assert all(np.array_equal(stats[k], after[k]) for k in stats)
    assert all(p.grad is None for p in frozen_affine)  # the affine parameters are detached
    assert model.layer4[1].conv2.weight.grad is not None

    control = megzoo.resnet18(num_classes=10)
    control.load_state_dict(model.state_dict())
    control.train()
    assert not np.allclose(control(x).numpy(), eval_out, atol=1e-3)


@pytest.mark.parametrize("drop_rate", [0.0, 0.5])
def test_drop_rate(drop_rate):
    model = megzoo.resnet18(num_classes=10, drop_rate=drop_rate)
    x = images(2, 32)
    model.train()  # BN uses batch statistics: the same for both calls, so only dropout can differ
    first, second = model(x).numpy(), model(x).numpy()
    assert np.array_equal(first, second) == (drop_rate == 0.0)
    model.eval()
    assert np.array_equal(model(x).numpy(), model(x).numpy())


# --- backbone use -------------------------------------------------------------------------------------
RESNET18_LEVELS = [("stem", 64, 4), ("res2", 64, 4), ("res3", 128, 8), ("res4", 256, 16), ("res5", 512, 32)]


def test_extract_features(resnet18):
    feats = resnet18.extract_features(images(1, 224))
    assert list(feats) == ["stem", "res2", "res3", "res4", "res5"]
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "stem": (1, 64, 56, 56), "res2": (1, 64, 56, 56), "res3": (1, 128, 28, 28),
        "res4": (1, 256, 14, 14), "res5": (1, 512, 7, 7),
    }
    assert [level.as_dict() for level in resnet18.feature_info] == [
        {"name": n, "channels": c, "stride": s} for n, c, s in RESNET18_LEVELS]


def test_feature_info_of_bottleneck_models():
    info = megzoo.resnext50_32x4d(features_only=True).feature_info
    assert info.names() == ["stem", "res2", "res3", "res4", "res5"]
    assert info.channels() == [64, 256, 512, 1024, 2048]
    assert info.strides() == [4, 4, 8, 16, 32]


def test_forward_features_and_head_compose_to_forward(resnet18):
    x = images(2, 96)
    np.testing.assert_array_equal(resnet18(x).numpy(), resnet18.forward_head(resnet18.forward_features(x)).numpy())
    np.testing.assert_array_equal(resnet18.forward_features(x).numpy(), resnet18.extract_features(x)["res5"].numpy())


def test_features_only(resnet18):
    backbone = megzoo.resnet18(features_only=True, out_indices=(1, 3))
    assert backbone.features_only and backbone.out_indices == (1, 3)
    assert [level.as_dict() for level in backbone.feature_info] == [
        {"name": "res2", "channels": 64, "stride": 4}, {"name": "res4", "channels": 256, "stride": 16}]
    # the head and the unused last stage are gone, parameters included
    assert backbone.fc is None and backbone.layer4 is None and backbone.get_classifier() is None
    assert not any(k.startswith(("fc.", "layer4.")) for k in backbone.state_dict())
    assert count_params(backbone) == 2_782_784

    # with the classifier's weights, the maps are the classifier's feature maps
    backbone.load_state_dict({k: v for k, v in resnet18.state_dict().items()
                              if not k.startswith(("fc.", "layer4."))}, strict=True)
    backbone.eval()
    x = images(2, 96)
    maps = backbone(x)
    assert isinstance(maps, list) and len(maps) == 2
    full = resnet18.extract_features(x)
    for level, fmap in zip(backbone.feature_info, maps):
        assert fmap.shape == (2, level.channels, 96 // level.stride, 96 // level.stride)
        np.testing.assert_array_equal(fmap.numpy(), full[level.name].numpy())
    assert list(backbone.extract_features(x)) == ["stem", "res2", "res3", "res4"]


def test_features_only_defaults_and_negative_indices():
    backbone = megzoo.resnet18(features_only=True)
    backbone.eval()
    assert backbone.out_indices == (0, 1, 2, 3, 4)
    maps = backbone(images(1, 64))
    assert [(level.name, tuple(m.shape)) for level, m in zip(backbone.feature_info, maps)] == [
        ("stem", (1, 64, 16, 16)), ("res2", (1, 64, 16, 16)), ("res3", (1, 128, 8, 8)),
        ("res4", (1, 256, 4, 4)), ("res5", (1, 512, 2, 2))]
    assert count_params(backbone) == RESNET18_PARAMS - 513_000
    last = megzoo.get_model("resnet18", features_only=True, out_indices=[-1, 2])
    assert last.out_indices == (2, 4) and last.feature_info.names() == ["res3", "res5"]


def test_reset_classifier():
    model = megzoo.resnet18()
    model.reset_classifier(10)
    model.eval()
    assert model.num_classes == 10 and model.get_classifier() is model.fc
    assert model.fc.weight.shape == (10, 512)
    bound = 1 / np.sqrt(512)  # freshly initialised like any Linear
    assert np.abs(model.fc.weight.numpy()).max() <= bound and model.fc.weight.numpy().std() > bound / 3
    assert model(images(2, 64)).shape == (2, 10)
    model.reset_classifier(0)
    assert model.num_classes == 0 and model.get_classifier() is None
    assert model(images(2, 64)).shape == (2, 512)
    with pytest.raises(ValueError, match=r"^num_classes must be an int >= 0, got -1$"):
        model.reset_classifier(-1)


# --- fine-tuning helpers ---------------------------------------------------------------------------
def stem_and_first_two_stage_params(model) -> int:
    return sum(count_params(m) for m in (model.conv1, model.bn1, model.layer1, model.layer2))


def test_freeze_excludes_parameters_and_keeps_bn_statistics():
    model = megzoo.resnet18(num_classes=10)
    assert model.freeze(num_stages=2) is model
    trainable = model.trainable_parameters()
    # all 11,181,642 parameters (10 classes) but stem 9,536 + layer1 147,968 + layer2 525,568
    assert sum(int(np.prod(p.shape)) for p in trainable) == 11_181_642 - 683_072
    assert sum(int(np.prod(p.shape)) for p in model.frozen_parameters()) == stem_and_first_two_stage_params(model)
    frozen_ids = {id(p) for p in model.frozen_parameters()}
    assert id(model.conv1.weight) in frozen_ids and id(model.layer2[1].bn2.bias) in frozen_ids
    assert id(model.layer3[0].conv1.weight) not in frozen_ids

    frozen_bns = [model.bn1, model.layer1[0].bn1, model.layer2[1].bn2]
    live_bns = [model.layer3[0].bn1, model.layer4[1].bn2]
    before = {id(bn): running_stats(bn) for bn in frozen_bns + live_bns}
    model.train()
    gm = GradManager().attach(trainable)
    with gm:
        gm.backward(model(images(2, 32)).sum())
    for bn in frozen_bns:
        after = running_stats(bn)
        assert all(np.array_equal(before[id(bn)][k], after[k]) for k in after)
    for bn in live_bns:
        after = running_stats(bn)
        assert not np.array_equal(before[id(bn)]["running_mean"], after["running_mean"])
    assert all(p.grad is None for p in model.frozen_parameters())
    assert all(p.grad is not None for p in trainable)


def test_unfreeze_restores():
    model = megzoo.resnet18(num_classes=10)
    model.freeze(2).freeze(1)  # freezing again keeps the union
    # frozen: stem conv + BN (3 tensors), layer1 (2 x 6), layer2 (2 x 6 + projection 3)
    assert len(list(model.parameters())) == 62 and len(model.trainable_parameters()) == 62 - 30
    model.unfreeze()
    assert len(model.trainable_parameters()) == len(list(model.parameters()))
    assert model.frozen_parameters() == []
    stem_stats = running_stats(model.bn1)
    model.train()
    model(images(4, 64))
    assert not np.array_equal(stem_stats["running_mean"], running_stats(model.bn1)["running_mean"])


def test_unfreeze_keeps_frozen_bn_frozen():
    model = megzoo.resnet18(norm_layer="frozen_bn")
    model.freeze(4).unfreeze()
    assert all(bn.freeze for bn in norm_modules(model))


def test_freeze_options_and_errors():
    model = megzoo.resnet18(num_classes=10)
    model.freeze(0, stem=False)
    assert model.frozen_parameters() == []
    model.freeze(4, stem=False)
    assert id(model.conv1.weight) not in {id(p) for p in model.frozen_parameters()}
    assert {id(p) for p in model.trainable_parameters()} == {
        id(p) for p in (model.conv1.weight, model.bn1.weight, model.bn1.bias, model.fc.weight, model.fc.bias)}
    for bad in (5, -1, 1.0):
        with pytest.raises(ValueError,
                           match=rf"^num_stages must be an int in \[0, 4\] for resnet18, got {re_escape(bad)}$"):
            model.freeze(bad)


# --- errors -------------------------------------------------------------------------------------------
def test_basic_block_rejects_groups_and_width():
    message = (r"^BasicBlock \(resnet18/34\) supports only groups=1 and width_per_group=64, got groups=32, "
               r"width_per_group=4; use a Bottleneck model \(resnet50\+\) for ResNeXt/Wide$")
    with pytest.raises(ValueError, match=message):
        megzoo.resnet18(groups=32, width_per_group=4)
    with pytest.raises(ValueError, match=r"got groups=1, width_per_group=128;"):
        megzoo.resnet34(width_per_group=128)


@pytest.mark.parametrize("value", [(True, True), (False, False, True, True), [True]])
def test_bad_replace_stride_with_dilation(value):
    message = (r"^replace_stride_with_dilation must be None or 3 bools for res3, res4, res5 \(e\.g\. "
               rf"\(False, True, True\) for output stride 8\), got {re_escape(value)}$")
    with pytest.raises(ValueError, match=message):
        megzoo.resnet50(replace_stride_with_dilation=value)


@pytest.mark.parametrize("value", ["batch", "gn:0", "GN:x", ""])
def test_unknown_norm_layer(value):
    message = (rf"^unknown norm_layer {re_escape(value)}: use one of 'bn', 'frozen_bn', 'gn', 'gn:<groups>' "
               r"or a callable taking the number of channels$")
    with pytest.raises(ValueError, match=message):
        megzoo.resnet18(norm_layer=value)


def test_bad_layers_block_and_drop_rate():
    with pytest.raises(ValueError, match=r"^layers must be 4 positive ints \(blocks per stage\), got \(2, 2, 2\)$"):
        ResNet("basic", (2, 2, 2))
    with pytest.raises(ValueError,
                       match=r"^block must be 'basic', 'bottleneck', BasicBlock or Bottleneck, got 'dense'$"):
        ResNet("dense", (2, 2, 2, 2))
    with pytest.raises(ValueError, match=r"^drop_rate must be in \[0, 1\), got 1\.0$"):
        megzoo.resnet18(drop_rate=1.0)
