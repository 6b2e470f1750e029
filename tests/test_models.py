"""Architecture facts of all 17 models and checkpoint compatibility, plus the behaviour every
megzoo classifier shares (argument and input checks).

Each model is built once (module-scoped fixture, so pytest groups the tests by model). The models in
KEEP come from the session cache, normally initialised; the others only serve structure checks
(parameter counts, state-dict layout, loading), so they are built without drawing their random
initial values: drawing them costs ~6 s of CPU per VGG, and the initialisation itself is tested in
test_init.py and on the models built normally.
"""
import re

import megengine as mge
import megengine.functional as F
import megengine.module.init as mge_init
import numpy as np
import pytest

import megzoo
from megzoo.models.vgg import convert_basecls_state_dict
from megzoo.registry import UnknownModelError, get_model_entry
from megzoo.summary import count_macs, count_params

#: parameter counts with the 1000-class head (the issue's table; torchvision's published figures)
PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnext50_32x4d": 25_028_904,
    "resnext101_32x8d": 88_791_336,
    "wide_resnet50_2": 68_883_240,
    "wide_resnet101_2": 126_886_696,
    "vgg11": 132_863_336,
    "vgg11_bn": 132_868_840,
    "vgg13": 133_047_848,
    "vgg13_bn": 133_053_736,
    "vgg16": 138_357_544,
    "vgg16_bn": 138_365_992,
    "vgg19": 143_667_240,
    "vgg19_bn": 143_678_248,
}
ALL_MODELS = sorted(PARAMS)
#: models whose MegEngine/Models checkpoint layout is in the reference material
ANCHORED_RESNETS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d"]
VGGS = [n for n in ALL_MODELS if n.startswith("vgg")]
#: GMACs checked by running count_macs at 224x224 (a forward pass each; the rest would cost ~1.5 min):
#: both block types, a grouped convolution and the VGG head (vgg*_bn only adds uncounted BatchNorm)
GMACS_CHECKED = ["resnet18", "resnet50", "resnext50_32x4d", "vgg11"]
#: models run forward here or in other modules: normally initialised, from the session cache
KEEP = {"resnet18", "vgg11", *GMACS_CHECKED}
VGG_WIDTHS = (64, 128, 256, 512, 512)
VGG_DEPTHS = {"vgg11": (1, 1, 2, 2, 2), "vgg13": (2, 2, 2, 2, 2), "vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}


def _skip_draw(*args, **kwargs) -> None:
    pass


def build_without_random_init(name: str):
    """``megzoo.get_model(name)`` with MegEngine's random fills as no-ops (parameters stay 0)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mge_init, "normal_", _skip_draw)
        patch.setattr(mge_init, "uniform_", _skip_draw)
        return megzoo.get_model(name)


def model_for(name: str, zoo_model):
    return zoo_model(name) if name in KEEP else build_without_random_init(name)


@pytest.fixture(scope="module", params=ALL_MODELS)
def built(request, zoo_model):
    return request.param, model_for(request.param, zoo_model)


def re_escape(value) -> str:
    return re.escape(repr(tuple(value)))


def layout_of(model) -> dict:
    """{key: (shape, dtype)} of ``model.state_dict()`` (its tensors: no copy to numpy)."""
    return {key: (tuple(value.shape), str(value.dtype)) for key, value in model.state_dict(keep_var=True).items()}


def random_state_dict(layout: dict, seed: int) -> dict:
    """Random float32 values for ``{key: (shape, dtype)}``, scaled like a trained network so a
    forward pass stays finite: weights U(+-sqrt(6/fan_in)), biases and BN means within +-0.1, BN
    weights in [0.9, 1.1), running variances in [0.5, 1.5). (Integer draws: several times faster
    than ``rng.random`` for the 100M-value VGG heads.)"""
    rng = np.random.default_rng(seed)
    out = {}
    for key, (shape, dtype) in sorted(layout.items()):
        u = rng.integers(-2 ** 23, 2 ** 23, int(np.prod(shape)), dtype=np.int32).astype(np.float32)
        u *= np.float32(2.0 ** -23)  # U[-1, 1)
        if key.endswith("running_var"):
            u = u * np.float32(0.5) + np.float32(1.0)
        elif key.endswith("bias") or key.endswith("running_mean"):
            u *= np.float32(0.1)
        elif len(shape) >= 2:  # conv (..., I/G, kh, kw) or linear (O, I) weight
            fan_in = int(np.prod(shape[-3:])) if len(shape) >= 4 else shape[-1]
            u *= np.float32(np.sqrt(6.0 / fan_in))
        else:  # norm weight
            u = u * np.float32(0.1) + np.float32(1.0)
        out[key] = u.reshape(shape).astype(dtype, copy=False)
    return out


def wide_layout(resnet_layout: dict) -> dict:
    """Wide-ResNet-X-2 layout derived from ResNet-X's: same keys, bottleneck inner width doubled."""
    out = {}
    for key, (shape, dtype) in resnet_layout.items():
        parts = key.split(".")
        if key.startswith("layer") and parts[2] in ("conv1", "bn1", "conv2", "bn2"):
            shape = (2 * shape[0], *shape[1:])
            if parts[2] == "conv2":
                shape = (shape[0], 2 * shape[1], *shape[2:])
        elif key.startswith("layer") and parts[2] == "conv3":
            shape = (shape[0], 2 * shape[1], *shape[2:])
        out[key] = (shape, dtype)
    return out


def conv_bias_keys(basecls_layout: dict) -> dict:
    """{bias key: shape} of the conv biases megzoo's VGG adds to a BaseCls layout."""
    return {
        key[: -len("weight")] + "bias": (1, shape[0], 1, 1)
        for key, (shape, _) in basecls_layout.items()
        if key.startswith("s") and len(shape) == 4
    }


def expected_layout(name: str, anchor_layout) -> dict:
    if name.startswith("wide_"):
        return wide_layout(anchor_layout(name.replace("wide_", "").replace("_2", ""))["state_dict"])
    layout = dict(anchor_layout(name)["state_dict"])
    if name.startswith("vgg"):
        layout.update({key: (shape, "float32") for key, shape in conv_bias_keys(layout).items()})
    return layout


# --- architecture facts ----------------------------------------------------------------------------
def test_registry_holds_the_17_models():
    assert megzoo.list_models() == ALL_MODELS
    assert len(ALL_MODELS) == 17


def test_param_count(built):
    name, model = built
    assert count_params(model) == PARAMS[name]
    assert get_model_entry(name).params == PARAMS[name]


def test_reference_param_count(built, anchor_layout):
    """The count follows from the expected layout; the reference files' own counts agree (BaseCls's
    VGG lacks exactly the conv biases: one per output channel of each conv)."""
    name, model = built
    layout = expected_layout(name, anchor_layout)
    assert sum(int(np.prod(s)) for k, (s, _) in layout.items() if "running_" not in k) == count_params(model)
    if name.startswith("wide_"):
        return  # no reference file
    reference = anchor_layout(name)["num_params"]
    if name.startswith("vgg"):
        depths = VGG_DEPTHS[name.replace("_bn", "")]
        assert count_params(model) - reference == sum(d * w for d, w in zip(depths, VGG_WIDTHS))
    else:
        assert count_params(model) == reference


@pytest.mark.parametrize("name", GMACS_CHECKED)
def test_registry_gmacs_equal_counted_macs(name, zoo_model):
    model = zoo_model(name)
    assert round(count_macs(model, (224, 224)) / 1e9, 3) == get_model_entry(name).gmacs


def test_vgg_gmacs_do_not_count_batchnorm():
    for depth in (11, 13, 16, 19):
        assert get_model_entry(f"vgg{depth}").gmacs == get_model_entry(f"vgg{depth}_bn").gmacs


def test_registry_entries_are_consistent():
    for name in ALL_MODELS:
        entry = get_model_entry(name)
        assert entry.name == name
        assert entry.family == ("vgg" if name.startswith("vgg") else "resnet")
        assert entry.builder is getattr(megzoo, name)
        assert entry.summary  # first docstring line, shown by the CLI


# --- checkpoint compatibility -----------------------------------------------------------------------
def test_checkpoint_compatibility(built, anchor_layout):
    """The state-dict layout (keys, shapes, dtypes) and loading:

    * ResNet/ResNeXt: exactly MegEngine/Models' layout; a random checkpoint in that layout loads
      with strict=True and ``state_dict()`` returns it bit-equal.
    * VGG: BaseCls's layout plus a (1, O, 1, 1) bias per conv, which is what
      ``convert_basecls_state_dict`` maps a BaseCls layout to (checked on shapes: read-only
      zero-size views, no 130M-value arrays; loading and outputs: vgg11/vgg11_bn below).
    * Wide-ResNet (no reference file): ResNet-50/101's keys with doubled bottleneck width.
    """
    name, model = built
    expected = expected_layout(name, anchor_layout)
    actual = layout_of(model)
    assert sorted(actual) == sorted(expected)
    assert {k: (actual[k], expected[k]) for k in expected if actual[k] != expected[k]} == {}

    if name.startswith("vgg"):
        layout = anchor_layout(name)["state_dict"]
        basecls = {k: np.broadcast_to(np.float32(0), shape) for k, (shape, _) in layout.items()}
        converted = convert_basecls_state_dict(basecls)
        assert sorted(basecls) == sorted(layout)  # input not modified
        assert {k: (tuple(v.shape), str(v.dtype)) for k, v in converted.items()} == actual
        assert set(converted) - set(layout) == set(conv_bias_keys(layout))
    elif name in ANCHORED_RESNETS:
        checkpoint = random_state_dict(anchor_layout(name)["state_dict"], seed=len(name))
        model.load_state_dict(checkpoint, strict=True)  # shared models keep these weights: see conftest
        returned = model.state_dict()
        assert sorted(returned) == sorted(checkpoint)
        for key, value in checkpoint.items():
            assert returned[key].dtype == np.float32, key
            assert np.array_equal(returned[key], value), key


def test_resnext_grouped_weights_use_megengine_shape(zoo_model):
    """(G, O/G, I/G, kh, kw) as MegEngine's Conv2d with groups stores it."""
    model = zoo_model("resnext50_32x4d")
    assert model.layer1[0].conv2.weight.shape == (32, 4, 4, 3, 3)
    assert model.layer4[0].conv2.weight.shape == (32, 32, 32, 3, 3)


def test_strict_load_rejects_another_layout(anchor_layout):
    """The round trip above can fail: checkpoints of another architecture are refused."""
    resnet18 = build_without_random_init("resnet18")
    with pytest.raises(KeyError, match=r"Unused params violate `strict=True`, unused=\{.*'layer1\.2\.conv1\.weight'"):
        resnet18.load_state_dict(random_state_dict(anchor_layout("resnet34")["state_dict"], 0), strict=True)
    resnet50 = build_without_random_init("resnet50")
    with pytest.raises(ValueError, match=r"^param `layer1\.0\.bn1\.bias` size mismatch, should be 64, get 128$"):
        resnet50.load_state_dict(random_state_dict(anchor_layout("resnext50_32x4d")["state_dict"], 0), strict=True)


def test_convert_basecls_keeps_existing_bias():
    weight = np.ones((8, 3, 3, 3), np.float32)
    bias = np.full((1, 8, 1, 1), 0.5, np.float32)
    converted = convert_basecls_state_dict({"s1.b1.0.weight": weight, "s1.b1.0.bias": bias})
    assert converted["s1.b1.0.bias"] is bias
    converted = convert_basecls_state_dict({"s1.b1.0.weight": weight,
                                            "head.classifier.0.weight": np.ones((4, 2), np.float32)})
    assert sorted(converted) == ["head.classifier.0.weight", "s1.b1.0.bias", "s1.b1.0.weight"]
    assert converted["s1.b1.0.bias"].shape == (1, 8, 1, 1) and not converted["s1.b1.0.bias"].any()


def basecls_vgg_forward(state_dict: dict, x: np.ndarray) -> np.ndarray:
    """What BaseCls's VGG computes in eval mode, from its checkpoint alone (convolutions without
    bias), for a 32x32 input: the 1x1 s5 map pools to 7x7 by replication under any binning."""
    out = mge.tensor(x)
    for stage in range(1, 6):
        block = 1
        while f"s{stage}.b{block}.0.weight" in state_dict:
            prefix = f"s{stage}.b{block}"
            out = F.conv2d(out, mge.tensor(state_dict[f"{prefix}.0.weight"]), padding=1)
            if f"{prefix}.1.weight" in state_dict:
                p = {n: mge.tensor(state_dict[f"{prefix}.1.{n}"].reshape(1, -1, 1, 1))
                     for n in ("weight", "bias", "running_mean", "running_var")}
                out = (out - p["running_mean"]) / F.sqrt(p["running_var"] + 1e-5) * p["weight"] + p["bias"]
            out = F.relu(out)
            block += 1
        out = F.max_pool2d(out, 2, 2)
    feats = out.numpy()
    assert feats.shape[2:] == (1, 1)
    h = np.repeat(feats.reshape(len(x), -1, 1), 49, axis=2).reshape(len(x), -1)
    for i in (0, 3, 6):
        h = h @ state_dict[f"head.classifier.{i}.weight"].T + state_dict[f"head.classifier.{i}.bias"]
        if i < 6:
            h = np.maximum(h, 0)
    return h


@pytest.mark.parametrize("name", ["vgg11", "vgg11_bn"])
def test_basecls_checkpoint_loads_and_computes_the_same(name, zoo_model, anchor_layout):
    """BaseCls weights through the conversion: strict load; eval outputs bit-equal to loading the
    same weights natively with explicit zero conv biases, and equal to BaseCls's bias-free
    computation."""
    model = model_for(name, zoo_model)  # all its weights are loaded below
    model.eval()
    layout = anchor_layout(name)["state_dict"]
    basecls = random_state_dict(layout, seed=11)
    biases = conv_bias_keys(layout)
    x = mge.tensor(np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32))

    native = dict(basecls)
    native.update({k: np.zeros(s, np.float32) for k, s in biases.items()})
    model.load_state_dict(native, strict=True)
    native_out = model(x).numpy()
    assert np.isfinite(native_out).all() and native_out.std() > 1e-3

    # the conv biases matter: non-zero ones change the output ...
    model.load_state_dict({k: np.full(s, 0.05, np.float32) for k, s in biases.items()}, strict=False)
    assert not np.allclose(model(x).numpy(), native_out, rtol=1e-3, atol=1e-3)
    # ... and the converted checkpoint sets every one of them back to zero
    model.load_state_dict(convert_basecls_state_dict(basecls), strict=True)
    converted_out = model(x).numpy()
    assert sorted(basecls) == sorted(layout)
    assert np.array_equal(converted_out, native_out)

    reference = basecls_vgg_forward(basecls, x.numpy())
    np.testing.assert_allclose(converted_out, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


# --- arguments and inputs every model checks --------------------------------------------------------
def test_unknown_model_lists_close_names():
    with pytest.raises(UnknownModelError, match=r"^unknown model 'resnet5'; did you mean resnet50, wide_resnet50_2, "):
        megzoo.get_model("resnet5")
    with pytest.raises(UnknownModelError, match=r"did you mean vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16\? "
                                                r"\(megzoo.list_models\(\) lists all\)$"):
        megzoo.get_model("vgg")
    with pytest.raises(UnknownModelError, match=r"^unknown model 'xyz'; known models: resnet101, resnet152, resnet18, "
                                                r".*, wide_resnet50_2 \(megzoo.list_models\(\) lists all\)$"):
        megzoo.get_model("xyz")
    assert issubclass(UnknownModelError, ValueError)


@pytest.mark.parametrize("builder", [megzoo.resnet18, megzoo.vgg11])  # raised before any layer is built
@pytest.mark.parametrize("value", [-1, 1.5, True, "10"])
def test_bad_num_classes(builder, value):
    with pytest.raises(ValueError, match=rf"^num_classes must be an int >= 0, got {re.escape(repr(value))}$"):
        builder(num_classes=value)


@pytest.mark.parametrize("builder", [megzoo.resnet18, megzoo.vgg11])
@pytest.mark.parametrize("value", [0, -3, 3.0, None])
def test_bad_in_channels(builder, value):
    with pytest.raises(ValueError, match=rf"^in_channels must be an int >= 1, got {re.escape(repr(value))}$"):
        builder(in_channels=value)


@pytest.mark.parametrize("builder", [megzoo.resnet18, megzoo.vgg11])
def test_out_indices_need_features_only(builder):
    with pytest.raises(ValueError, match=r"^out_indices only applies with features_only=True$"):
        builder(out_indices=(1, 2))


@pytest.mark.parametrize("out_indices", [(5,), (0, -6), (1.0,), (True,)])
def test_out_indices_out_of_range(out_indices):
    message = (rf"^out_indices {re_escape(out_indices)} invalid for resnet18: each must be an int in \[-5, 4\] "
               r"indexing \['stem', 'res2', 'res3', 'res4', 'res5'\]$")
    with pytest.raises(ValueError, match=message):
        megzoo.resnet18(features_only=True, out_indices=out_indices)


@pytest.mark.parametrize("out_indices", [(1, 1), (4, -1), ()])
def test_out_indices_repeated_or_empty(out_indices):
    with pytest.raises(ValueError,
                       match=rf"^out_indices must be non-empty and without repeats, got {re_escape(out_indices)}$"):
        megzoo.resnet18(features_only=True, out_indices=out_indices)


@pytest.mark.parametrize("name", ["resnet18", "vgg11"])
def test_input_must_be_4d(name, zoo_model):
    x = mge.tensor(np.zeros((3, 64, 64), np.float32))
    with pytest.raises(ValueError, match=rf"^{name} expects a 4-D input \(N, C, H, W\) with C=3, got shape "
                                         r"\(3, 64, 64\); add a batch axis with x\[None\] for one image$"):
        zoo_model(name)(x)


@pytest.mark.parametrize("name", ["resnet18", "vgg11"])
def test_input_channel_count(name, zoo_model):
    model = zoo_model(name)
    with pytest.raises(ValueError, match=rf"^{name} expects 3 input channels \(N, 3, H, W\), got shape "
                                         r"\(2, 1, 64, 64\); build the model with in_channels=1 to accept it$"):
        model(mge.tensor(np.zeros((2, 1, 64, 64), np.float32)))
    with pytest.raises(ValueError, match=rf"^{name} expects 3 input channels \(N, 3, H, W\), got shape "
                                         r"\(2, 64, 64, 3\) \(channels-last\? transpose to N, C, H, W\)$"):
        model(mge.tensor(np.zeros((2, 64, 64, 3), np.float32)))
    for method in (model.extract_features, model.forward_features):
        with pytest.raises(ValueError, match=r"expects 3 input channels"):
            method(mge.tensor(np.zeros((2, 4, 64, 64), np.float32)))
