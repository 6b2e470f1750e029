"""The weight catalogue, resolving ``pretrained=``, layout conversion and fine-tuning adaptation."""
import json
from pathlib import Path

import megengine
import numpy as np
import pytest

import megzoo
from megzoo.weights import WeightsError, catalog, resolve_weights
from megzoo.weights.convert import ArchitectureMismatchError, load_into, to_megzoo_layout

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "reference"


def _random_state_dict(model, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(0, 0.1, v.shape).astype(v.dtype) if v.dtype.kind == "f" else v
            for k, v in model.state_dict().items()}


# --- catalogue --------------------------------------------------------------------------------
def test_catalogue_defaults_are_the_official_megengine_and_basecls_files():
    expected = {
        "resnet18": "resnet18_naiveaug_70312_78a63ca6.pkl", "resnet34": "resnet34_naiveaug_73960_fd9d869d.pkl",
        "resnet50": "resnet50_fbaug_76254_4e14b7d1.pkl", "resnet101": "resnet101_fbaug_77944_b7932921.pkl",
        "resnet152": "resnet152_fbaug_78582_7551aff3.pkl",
        "resnext50_32x4d": "resnext50_32x4d_fbaug_77592_c4b04e5e.pkl",
        "resnext101_32x8d": "resnext101_32x8d_fbaug_79520_80efb344.pkl",
    }
    for arch, file in expected.items():
        w = catalog.default_weights(arch)
        assert (w.tag, w.checkpoint_layout, w.layout, w.urls) == (
            "megengine", "megengine", "megengine", ("https://data.megengine.org.cn/models/weights/" + file,))
        assert w.as_dict()["checkpoint_layout"] == w.as_dict()["layout"] == "megengine"
    for arch in ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"):
        w = catalog.default_weights(arch)
        assert w.urls == (f"https://data.megengine.org.cn/research/basecls/models/vgg/{arch}/{arch}.pkl",)
        assert (w.tag, w.checkpoint_layout, w.top1, w.top5) == ("basecls", "basecls", None, None)
    # torchvision only for Wide-ResNet
    assert catalog.default_weights("wide_resnet50_2").name == "wide_resnet50_2.tv_in1k"


def test_catalogue_matches_the_publishers_table():
    """Every torchvision file/accuracy in shared/reference/weights.md is registered, with its hash prefix."""
    text = (SHARED / "weights.md").read_text()
    rows = [line for line in text.splitlines() if ".pth" in line and line.startswith("|")]
    assert len(rows) == 13
    registered = {w.filename: w for w in catalog.WEIGHTS.values()}
    count = 0
    for row in rows:
        for file in [c.strip() for cell in row.split("|") for c in cell.split(" / ") if c.strip().endswith(".pth")]:
            w = registered[file]
            assert w.sha256_prefix == file.rsplit("-", 1)[1][:-4]
            assert w.urls == ("https://download.pytorch.org/models/" + file,)
            count += 1
    assert count == 24  # 17 V1 + 7 V2
    assert len(catalog.WEIGHTS) == 7 + 8 + 24
    v2 = catalog.WEIGHTS["resnet50.tv2_in1k"]
    assert (v2.top1, v2.top5, v2.preprocess.resize_size, v2.preprocess.input_size) == (80.858, 95.434, 232, 224)
    assert catalog.WEIGHTS["resnet50.tv_in1k"].preprocess.resize_size == 256
    assert catalog.WEIGHTS["resnet50.megengine"].top1 == 76.254


def test_every_weight_takes_bgr_with_the_megengine_mean_and_std():
    for w in catalog.WEIGHTS.values():
        assert w.preprocess.color_order == "BGR"
        assert w.preprocess.mean == (103.530, 116.280, 123.675)
        assert w.preprocess.std == (57.375, 57.120, 58.395)
    # torchvision's RGB 0-1 statistics are the same numbers x255 in the other order
    np.testing.assert_allclose(np.array([0.485, 0.456, 0.406])[::-1] * 255, catalog.MEAN_BGR, rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.array([0.229, 0.224, 0.225])[::-1] * 255, catalog.STD_BGR, rtol=0, atol=1e-9)


def test_list_models_pretrained_and_model_info():
    assert megzoo.list_models(pretrained=True) == megzoo.list_models()  # every arch has weights
    info = megzoo.model_info("resnet50")
    assert info["default_weights"] == "resnet50.megengine"
    assert [w["tag"] for w in info["weights"]] == ["megengine", "tv_in1k", "tv2_in1k"]
    assert (info["params"], info["gmacs"], info["family"]) == (25_557_032, 4.089, "resnet")
    assert megzoo.list_weights("resnet50.*") == ["resnet50.megengine", "resnet50.tv2_in1k", "resnet50.tv_in1k"]
    assert megzoo.get_weights("resnet50").name == "resnet50.megengine"
    with pytest.raises(WeightsError, match=r"no weights 'resnet50.nope'; resnet50 has: megengine, tv_in1k, tv2_in1k"):
        megzoo.get_weights("resnet50.nope")


def test_imagenet_categories_shipped_with_the_package():
    from megzoo.data import imagenet1k_categories, imagenet1k_wnids

    reference = json.loads((SHARED / "imagenet_class_info.json").read_text())
    assert imagenet1k_wnids() == [reference[str(i)][0] for i in range(1000)]
    assert imagenet1k_categories() == [reference[str(i)][1] for i in range(1000)]
    assert imagenet1k_categories()[281] == "tabby"


# --- resolving pretrained= --------------------------------------------------------------------
def test_resolve_pretrained_values(tmp_path):
    assert resolve_weights("resnet50", True).name == "resnet50.megengine"
    assert resolve_weights("resnet50", "tv2_in1k").name == "resnet50.tv2_in1k"
    assert resolve_weights("resnet50", "resnet50.tv_in1k").name == "resnet50.tv_in1k"
    assert resolve_weights("resnet50", "IMAGENET1K_V2").name == "resnet50.tv2_in1k"
    assert resolve_weights("resnet50", "https://example.org/x.pkl") == "https://example.org/x.pkl"
    f = tmp_path / "mine.pkl"
    f.write_bytes(b"x")
    assert resolve_weights("resnet50", str(f)) == f
    assert resolve_weights("resnet50", f) == f
    with pytest.raises(WeightsError,
                       match=r"unknown weight tag 'v3' for resnet50; available tags: megengine, tv_in1k, tv2_in1k"):
        resolve_weights("resnet50", "v3")
    with pytest.raises(FileNotFoundError, match=r"weight file not found: .*missing\.pkl"):
        resolve_weights("resnet50", str(tmp_path / "missing.pkl"))
    with pytest.raises(WeightsError, match="pretrained must be True, a weight tag, a URL or a path, got 3"):
        resolve_weights("resnet50", 3)


# --- loading and adaptation --------------------------------------------------------------------
def test_local_megengine_pickle_loads_bit_equal_and_reports(tmp_path):
    source = megzoo.resnet18()
    state = _random_state_dict(source)
    path = tmp_path / "r18.pkl"
    megengine.save(state, str(path))
    model = megzoo.resnet18(pretrained=str(path))
    loaded = model.state_dict()
    assert all(np.array_equal(loaded[k], state[k]) for k in state)
    report = model.load_report
    assert (len(report.loaded), report.adapted, report.reinitialized, report.unused) == (len(state), {}, [], [])
    assert report.file == str(path)


def test_new_num_classes_loads_everything_but_the_classifier(tmp_path, caplog):
    state = _random_state_dict(megzoo.resnet18())
    path = tmp_path / "r18.pkl"
    megengine.save(state, str(path))
    model = megzoo.resnet18(pretrained=str(path), num_classes=10)
    report = model.load_report
    assert sorted(report.reinitialized) == ["fc.bias", "fc.weight"]
    assert sorted(report.unused) == ["fc.bias", "fc.weight"]
    assert model.fc.weight.shape == (10, 512)
    loaded = model.state_dict()
    assert all(np.array_equal(loaded[k], v) for k, v in state.items() if not k.startswith("fc."))
    assert "loaded everything but the classifier (fc.bias, fc.weight re-initialised for num_classes=10)" in caplog.text
    assert "re-initialised: fc.bias, fc.weight" in str(report)


@pytest.mark.parametrize("in_channels", [1, 4, 2])
def test_in_channels_adapts_the_first_conv(tmp_path, in_channels):
    state = _random_state_dict(megzoo.resnet18())
    path = tmp_path / "r18.pkl"
    megengine.save(state, str(path))
    model = megzoo.resnet18(pretrained=str(path), in_channels=in_channels)
    w = state["conv1.weight"]
    got = model.state_dict()["conv1.weight"]
    if in_channels == 1:
        np.testing.assert_allclose(got, w.sum(axis=1, keepdims=True), rtol=1e-6)
    else:
        expected = np.concatenate([w, w], axis=1)[:, :in_channels] * 3 / in_channels
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert model.load_report.adapted == {"conv1.weight": f"input channels 3 -> {in_channels}"}
    # a constant image gives the same stem response as the 3-channel model on its (summed) input
    if in_channels == 1:
        ref = megzoo.resnet18(pretrained=str(path))
        ref.eval(), model.eval()
        x = np.full((1, 1, 32, 32), 0.5, np.float32)
        a = model.extract_features(megengine.tensor(x))["stem"].numpy()
        b = ref.extract_features(megengine.tensor(np.repeat(x, 3, axis=1)))["stem"].numpy()
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_checkpoint_of_another_architecture_is_rejected_with_details(tmp_path):
    path = tmp_path / "r34.pkl"
    megengine.save(_random_state_dict(megzoo.resnet34()), str(path))
    with pytest.raises(ArchitectureMismatchError, match=r"weights from .*r34\.pkl do not fit resnet18: 80 unexpected "
                                                        r"keys \(first: layer1.2.bn1.bias"):
        megzoo.resnet18(pretrained=str(path))


def test_num_classes_zero_keeps_no_classifier(tmp_path):
    state = _random_state_dict(megzoo.resnet18())
    path = tmp_path / "r18.pkl"
    megengine.save(state, str(path))
    model = megzoo.resnet18(pretrained=str(path), num_classes=0)
    assert model.fc is None and sorted(model.load_report.unused) == ["fc.bias", "fc.weight"]


def test_features_only_model_loads_the_backbone(tmp_path):
    state = _random_state_dict(megzoo.resnet18())
    path = tmp_path / "r18.pkl"
    megengine.save(state, str(path))
    model = megzoo.resnet18(pretrained=str(path), features_only=True, out_indices=(1, 2))
    got = model.state_dict()
    assert sorted(got) == sorted(k for k in state if k.startswith(("conv1", "bn1", "layer1", "layer2")))
    assert all(np.array_equal(got[k], state[k]) for k in got)


def test_basecls_layout_is_detected_and_gets_zero_biases(tmp_path):
    layout = json.loads((SHARED / "anchor_state_dicts" / "vgg11_bn.json").read_text())["state_dict"]
    rng = np.random.default_rng(0)
    state = {k: rng.normal(0, 0.05, shape).astype(np.float32) for k, (shape, _) in layout.items()}
    for k in state:
        if k.endswith("running_var"):
            state[k] = np.abs(state[k]) + 0.5
    path = tmp_path / "vgg11_bn.pkl"
    megengine.save(state, str(path))
    model = megzoo.vgg11_bn(pretrained=str(path))
    got = model.state_dict()
    assert all(np.array_equal(got[k], v.reshape(got[k].shape)) for k, v in state.items())
    biases = [k for k in got if k not in state]
    assert len(biases) == 8 and all(k.endswith(".0.bias") and not got[k].any() for k in biases)


# --- torchvision conversion against real torchvision outputs -----------------------------------
def _torchvision_reference():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torchvision_reference

    meta = json.loads((FIXTURES / "torchvision_reference.json").read_text())
    logits = np.load(FIXTURES / "torchvision_reference.npz")
    return torchvision_reference, meta, logits


@pytest.mark.parametrize("arch", ["resnet18", "resnext50_32x4d", "vgg11", "vgg11_bn"])
def test_torchvision_state_dict_converted_gives_torchvision_logits_on_bgr_input(arch):
    """Weights laid out as torchvision's, converted by megzoo, fed megzoo's BGR/MegEngine-mean input,
    give the logits torchvision itself computed (fixture made by scripts/make_torchvision_reference.py)."""
    ref, meta, logits = _torchvision_reference()
    state = ref.make_state_dict(meta["layouts"][arch])
    model = megzoo.get_model(arch)
    report = load_into(model, to_megzoo_layout(state, model, "torchvision"), "torchvision-layout")
    assert report.adapted == {} and report.reinitialized == [] and report.unused == []
    model.eval()
    image = ref.make_image().astype(np.float32)  # BGR 0-255
    x = (image - np.array(catalog.MEAN_BGR, np.float32)) / np.array(catalog.STD_BGR, np.float32)
    out = model(megengine.tensor(x.transpose(2, 0, 1)[None].copy())).numpy()
    expected = logits[arch]
    scale = np.abs(expected).max()
    assert np.abs(out - expected).max() / scale < 1e-4


def test_each_family_declares_the_checkpoint_layouts_it_converts():
    """The generic loader asks the model: ResNets read megengine and torchvision checkpoints,
    VGGs BaseCls ones too; asking a ResNet for BaseCls names the layouts it does read."""
    from megzoo.weights.convert import detect_layout

    resnet, vgg = megzoo.resnet18(), megzoo.vgg11()
    assert resnet.checkpoint_layouts == ("megengine", "torchvision")
    assert vgg.checkpoint_layouts == ("megengine", "basecls", "torchvision")
    weight = np.ones((64, 3, 3, 3), np.float32)
    assert detect_layout({"s1.b1.0.weight": weight}, vgg, is_torch_file=False) == "basecls"
    assert detect_layout({"s1.b1.0.weight": weight}, vgg, is_torch_file=True) == "torchvision"
    assert detect_layout({"conv1.weight": weight}, resnet, is_torch_file=False) == "megengine"
    converted = to_megzoo_layout({"s1.b1.0.weight": weight}, vgg, "basecls")
    assert converted["s1.b1.0.bias"].shape == (1, 64, 1, 1) and not converted["s1.b1.0.bias"].any()
    assert to_megzoo_layout({"features.0.weight": weight}, vgg, "torchvision").keys() == {"s1.b1.0.weight"}
    with pytest.raises(WeightsError, match="resnet18 has no converter for 'basecls' checkpoints; it reads: "
                                           "megengine, torchvision"):
        to_megzoo_layout({}, resnet, "basecls")
