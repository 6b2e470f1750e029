"""Transform presets, the fast batch path (exactly equal to the MegEngine preset) and the image input rules."""
import os
from pathlib import Path

import cv2
import megengine.data as data
from megengine.data.dataset import ArrayDataset
import megengine.data.transform as T
import numpy as np
import pytest

import megzoo
from megzoo.images import ImageError, read_image
from megzoo.registry import UnknownModelError
from megzoo.transforms import (EvalPreprocessor, SwapRB, center_crop_offsets, eval_transform, interpolation_flag,
                               resized_shape, train_transform)
from megzoo.weights.catalog import MEAN_BGR, STD_BGR

SIZES = [(375, 500), (500, 375), (256, 256), (256, 400), (300, 256), (200, 150), (481, 640), (333, 777),
         (1000, 257), (224, 224)]


def _natural(rng, height, width):
    """A smooth, shaped, noisy BGR image (compresses like a photo)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([128 + 60 * np.sin(a * x / 30 + b * y / 45 + p)
                      for a, b, p in rng.uniform(-1, 1, (3, 3)) * [1, 1, 6]], axis=-1).astype(np.uint8)
    for _ in range(6):
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.circle(image, center, int(rng.integers(5, 60)), tuple(int(v) for v in rng.integers(0, 256, 3)), -1,
                   cv2.LINE_AA)
    return np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    """Real JPEG files (quality 90) of the sizes above."""
    directory = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate(SIZES):
        path = directory / f"{i:02d}_{w}x{h}.jpg"
        assert cv2.imwrite(str(path), _natural(rng, h, w), [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(str(path))
    return paths


def _reference(compose, paths):
    """What ImageFolder + the MegEngine Compose give, stacked."""
    return np.stack([compose.apply(cv2.imread(p, cv2.IMREAD_COLOR)) for p in paths])


# -- presets ----------------------------------------------------------------------------------------

def test_train_preset_is_megengine_transforms_with_the_issue_defaults():
    t = train_transform()
    assert isinstance(t, T.Compose)
    crop, flip, norm, mode = t.transforms
    assert isinstance(crop, T.RandomResizedCrop) and crop.output_size == (224, 224)
    assert crop.scale_range == (0.08, 1.0) and crop.ratio_range == (3 / 4, 4 / 3)
    assert crop.interpolation == cv2.INTER_LINEAR
    assert isinstance(flip, T.RandomHorizontalFlip) and flip.prob == 0.5
    assert isinstance(norm, T.Normalize)
    assert norm.mean.tolist() == np.float32([103.530, 116.280, 123.675]).tolist()
    assert norm.std.tolist() == np.float32([57.375, 57.120, 58.395]).tolist()
    assert isinstance(mode, T.ToMode) and mode.mode == "CHW"


def test_train_preset_extras_are_opt_in():
    t = train_transform(160, color_jitter=0.4, lighting=0.1, hflip=0)
    kinds = [type(s) for s in t.transforms]
    assert kinds == [T.RandomResizedCrop, T.ColorJitter, T.Lighting, T.Normalize, T.ToMode]
    jitter = t.transforms[1].transforms.transforms
    assert [(type(j).__name__, j.value) for j in jitter] == [
        ("BrightnessTransform", 0.4), ("ContrastTransform", 0.4), ("SaturationTransform", 0.4)]
    assert t.transforms[2].scale == 0.1
    assert [type(s) for s in train_transform(color_jitter=(0, 0, 0.2, 0.1)).transforms[2].transforms.transforms] == [
        T.SaturationTransform, T.HueTransform]
    with pytest.raises(ValueError, match=r"^color_jitter is a number or \(brightness, contrast, saturation"):
        train_transform(color_jitter=(1, 2))


def test_train_preset_feeds_a_megengine_dataloader():
    rng = np.random.default_rng(3)
    images = np.stack([_natural(rng, 120, 160) for _ in range(5)])
    dataset = ArrayDataset(images, np.arange(5, dtype=np.int32))
    loader = data.DataLoader(dataset, sampler=data.SequentialSampler(dataset, batch_size=2),
                             transform=train_transform(96, color_jitter=0.4, lighting=0.1))
    batches = list(loader)
    assert [b[0].shape for b in batches] == [(2, 3, 96, 96), (2, 3, 96, 96), (1, 3, 96, 96)]
    assert all(b[0].dtype == np.float32 for b in batches)
    assert [b[1].tolist() for b in batches] == [[0, 1], [2, 3], [4]]


def test_eval_preset_steps_and_defaults():
    t = eval_transform()
    resize, crop, norm, mode = t.transforms
    assert isinstance(resize, T.Resize) and resize.output_size == 256 and resize.interpolation == cv2.INTER_LINEAR
    assert isinstance(crop, T.CenterCrop) and crop.output_size == (224, 224)
    assert norm.mean.tolist() == np.float32(MEAN_BGR).tolist() and norm.std.tolist() == np.float32(STD_BGR).tolist()
    assert isinstance(mode, T.ToMode)
    out = t.apply(np.zeros((375, 500, 3), np.uint8))
    assert out.shape == (3, 224, 224) and out.dtype == np.float32


@pytest.mark.parametrize("spec, resize", [
    ("resnet50", 256), ("resnet50.megengine", 256), ("resnet50.tv2_in1k", 232), ("resnet50.IMAGENET1K_V2", 232),
    ("wide_resnet50_2", 256), ("vgg16", 256),
])
def test_eval_preset_comes_from_the_weights_metadata(spec, resize):
    assert eval_transform(spec).transforms[0].output_size == resize
    assert megzoo.eval_transform(spec).transforms[0].output_size == resize


def test_eval_preset_from_weights_objects_models_and_overrides():
    weights = megzoo.get_weights("resnet101.tv2_in1k")
    assert eval_transform(weights).transforms[0].output_size == 232
    assert eval_transform(weights.preprocess).transforms[0].output_size == 232
    t = eval_transform("resnet50.tv2_in1k", input_size=192, resize_size=220, interpolation="bicubic")
    assert (t.transforms[0].output_size, t.transforms[0].interpolation, t.transforms[1].output_size) == (
        220, cv2.INTER_CUBIC, (192, 192))
    assert eval_transform(interpolation=cv2.INTER_AREA).transforms[0].interpolation == cv2.INTER_AREA
    model = megzoo.resnet18()
    assert eval_transform(model).transforms[0].output_size == 256  # no weights loaded: the defaults


def test_eval_preset_errors():
    with pytest.raises(UnknownModelError, match="unknown model 'resnet5'"):
        eval_transform("resnet5")
    with pytest.raises(megzoo.weights.WeightsError, match=r"^no weights 'resnet18.tv2_in1k'; resnet18 has: "
                                                          r"megengine, tv_in1k$"):
        eval_transform("resnet18.tv2_in1k")
    with pytest.raises(ValueError, match=r"^unknown interpolation 'bilinearr'; use one of nearest, bilinear, linear, "
                                         r"bicubic, cubic, area, lanczos, lanczos4$"):
        eval_transform(interpolation="bilinearr")
    with pytest.raises(ValueError, match=r"^resize_size \(200\) must be at least input_size \(224\): the centre "
                                         r"crop is taken from the resized image$"):
        eval_transform(resize_size=200)
    assert interpolation_flag("Bicubic") == cv2.INTER_CUBIC and interpolation_flag(cv2.INTER_NEAREST) == 0


# -- geometry, bit for bit as MegEngine ------------------------------------------------------------

def test_resized_shape_and_crop_offsets_match_megengine():
    assert resized_shape(375, 500, 256) == (256, 341)  # int(341.33...)
    assert resized_shape(500, 375, 232) == (309, 232)
    assert resized_shape(256, 999, 256) == (256, 999)  # already the right shorter side: unchanged
    assert center_crop_offsets(256, 341, 224) == (16, 58)  # (341 - 224) / 2 = 58.5 -> 58 (ties to even)
    assert center_crop_offsets(256, 343, 224) == (16, 60)  # 59.5 -> 60
    rng = np.random.default_rng(5)
    for h, w in [*SIZES, *rng.integers(1, 3000, (300, 2)).tolist()]:
        for size in (224, 232, 256, 288):
            resize = T.Resize(size)
            expected = resize._get_shape(np.empty((h, w, 1)))[2:]
            assert resized_shape(h, w, size) == expected, (h, w, size)
            th, tw = expected
            if min(th, tw) >= 224:
                y, x = center_crop_offsets(th, tw, 224)
                assert T.CenterCrop(224)._get_coord(np.empty((th, tw, 1))) == (x, y)


# -- the fast path ---------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [None, "resnet50.tv2_in1k", {"interpolation": "bicubic"},
                                  {"interpolation": "area", "input_size": 192, "resize_size": 200},
                                  {"interpolation": "nearest"}, {"interpolation": "lanczos"}])
def test_fast_path_equals_the_megengine_preset_on_real_jpegs(jpegs, spec):
    kwargs = spec if isinstance(spec, dict) else {}
    name = None if isinstance(spec, dict) else spec
    expected = _reference(eval_transform(name, **kwargs), jpegs)
    with EvalPreprocessor(name, workers=2, **kwargs) as pre:
        fast = pre(jpegs)
    assert fast.shape == expected.shape and fast.dtype == np.float32
    assert np.abs(fast - expected).max() < 1e-4
    assert np.array_equal(fast, expected)  # in fact bit for bit


def test_fast_path_on_random_arrays_of_odd_sizes():
    rng = np.random.default_rng(11)
    pre, compose = EvalPreprocessor(), eval_transform()
    for h, w in rng.integers(224, 900, (25, 2)).tolist():
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        assert np.array_equal(pre(image)[0], compose.apply(image)), (h, w)


def test_fast_path_rgb_weights_swap_channels(jpegs):
    rgb = dict(color_order="RGB", mean=(1.0, 2.0, 3.0), std=(4.0, 5.0, 6.0))
    pre = EvalPreprocessor(rgb)
    compose = eval_transform(rgb)
    assert isinstance(compose.transforms[2], SwapRB)
    assert np.array_equal(pre(jpegs[:3]), _reference(compose, jpegs[:3]))


def test_batches_keep_order_sizes_and_equal_the_one_shot_call(jpegs):
    expected = EvalPreprocessor()(jpegs)
    for workers in (0, 1, 2):
        with EvalPreprocessor(workers=workers) as pre:
            batches = list(pre.batches(jpegs, 4))
        assert [b.shape[0] for b in batches] == [4, 4, 2]
        assert np.array_equal(np.concatenate(batches), expected)
    assert list(EvalPreprocessor().batches([], 4)) == []


def test_inputs_may_be_paths_bytes_arrays_or_a_batch(jpegs):
    pre = EvalPreprocessor()
    by_path = pre(jpegs[:2])
    assert np.array_equal(pre([Path(jpegs[0]), Path(jpegs[1]).read_bytes()]), by_path)
    arrays = [cv2.imread(p) for p in jpegs[:2]]
    assert np.array_equal(pre(arrays), by_path)
    assert pre(jpegs[0]).shape == (1, 3, 224, 224)
    same_size = np.stack([arrays[0], arrays[0]])
    assert np.array_equal(pre(same_size), np.stack([by_path[0], by_path[0]]))
    out = np.zeros((2, 3, 224, 224), np.float32)
    assert pre(jpegs[:2], out=out) is out and np.array_equal(out, by_path)


def test_a_bad_image_in_a_batch_names_the_file(jpegs, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a picture")
    for workers in (0, 2):
        with EvalPreprocessor(workers=workers) as pre:
            with pytest.raises(ImageError, match=rf"^{bad} is not an image OpenCV can decode \(unknown format "
                                                 r"or damaged file\)$"):
                list(pre.batches([*jpegs[:5], str(bad), *jpegs[5:]], 3))
    with pytest.raises(ImageError, match=r"^<bytes #1> is not an image OpenCV can decode"):
        EvalPreprocessor()([Path(jpegs[0]).read_bytes(), b"garbage"])


# -- image input rules -----------------------------------------------------------------------------

def _png(tmp_path, name, array):
    path = tmp_path / name
    assert cv2.imwrite(str(path), array)
    return path


def test_sources_give_the_same_bgr_uint8_array(jpegs):
    expected = cv2.imread(jpegs[0], cv2.IMREAD_COLOR)
    data = Path(jpegs[0]).read_bytes()
    for source in (jpegs[0], Path(jpegs[0]), data, bytearray(data), memoryview(data), expected):
        image = read_image(source)
        assert image.dtype == np.uint8 and image.flags.c_contiguous and np.array_equal(image, expected)
    assert read_image(expected) is expected  # a conforming array is used as it is


def test_grayscale_becomes_three_channels(tmp_path):
    gray = np.arange(60, dtype=np.uint8).reshape(6, 10)
    expected = np.repeat(gray[:, :, None], 3, axis=2)
    for source in (gray, gray[:, :, None], _png(tmp_path, "g.png", gray), (np.dstack([gray, gray * 0 + 7]))):
        assert np.array_equal(read_image(source), expected)


def test_alpha_is_dropped(tmp_path):
    rng = np.random.default_rng(2)
    bgra = rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    bgra[0, 0, 3] = 0  # a transparent pixel keeps its stored colour
    assert np.array_equal(read_image(bgra), bgra[:, :, :3])
    assert np.array_equal(read_image(_png(tmp_path, "a.png", bgra)), bgra[:, :, :3])


def test_16_bit_is_scaled_by_1_over_257_rounded(tmp_path):
    values = np.array([[0, 128, 129, 385, 386, 32896, 65406, 65407, 65535]], dtype=np.uint16)
    expected = np.array([[0, 0, 1, 1, 2, 128, 254, 255, 255]], dtype=np.uint8)
    assert np.array_equal(np.round(values / 257), expected)
    assert np.array_equal(read_image(values), np.repeat(expected[:, :, None], 3, axis=2))
    rng = np.random.default_rng(4)
    bgr16 = rng.integers(0, 65536, (4, 6, 3), dtype=np.uint16)
    scaled = np.round(bgr16 / 257).astype(np.uint8)
    assert np.array_equal(read_image(bgr16), scaled)
    assert np.array_equal(read_image(_png(tmp_path, "c16.png", bgr16)), scaled)  # not OpenCV's >> 8
    bgra16 = np.dstack([bgr16, np.full((4, 6), 1000, np.uint16)])
    assert np.array_equal(read_image(_png(tmp_path, "a16.png", bgra16)), scaled)


def test_unreadable_inputs_raise_errors_naming_the_file(tmp_path):
    missing = tmp_path / "missing.jpg"
    with pytest.raises(ImageError, match=rf"^cannot read image {missing}: No such file or directory$") as info:
        read_image(missing)
    assert info.value.source == str(missing) and isinstance(info.value, ValueError)
    with pytest.raises(ImageError, match=rf"^cannot read image {tmp_path}: it is a directory$"):
        read_image(tmp_path)
    text = tmp_path / "readme.png"
    text.write_text("hello")
    with pytest.raises(ImageError, match=rf"^{text} is not an image OpenCV can decode \(unknown format or "
                                         r"damaged file\)$"):
        read_image(str(text))
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match=rf"^{empty} is not an image: it is empty$"):
        read_image(empty)
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(cv2.imencode(".png", np.zeros((50, 50, 3), np.uint8))[1].tobytes()[:40])
    with pytest.raises(ImageError, match=rf"^{truncated} is not an image OpenCV can decode"):
        read_image(truncated)
    with pytest.raises(ImageError, match=r"^<5 bytes> is not an image OpenCV can decode"):
        read_image(b"hello")


def test_unsupported_arrays_are_refused():
    with pytest.raises(ImageError, match=r"^<array>: pixels must be uint8 \(or uint16, scaled by 1/257\), got "
                                         r"float32; convert float images with"):
        read_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ImageError, match=r"^<array>: an image array must be \(H, W\), \(H, W, 1\), \(H, W, 3\) BGR "
                                         r"or \(H, W, 4\) BGRA, got shape \(4, 4, 5\)$"):
        read_image(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(ImageError, match=r"^<array>: the image is empty \(shape \(0, 4, 3\)\)$"):
        read_image(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(ImageError, match=r"^unsupported image input of type int: give a path"):
        read_image(3)


def test_non_ascii_paths(tmp_path):
    image = np.full((8, 8, 3), 77, np.uint8)
    path = _png(tmp_path, "x.png", image)
    renamed = path.with_name("图像 ü.png")
    os.rename(path, renamed)
    assert np.array_equal(read_image(renamed), image)


def test_exif_orientation_is_applied():
    import struct

    image = np.zeros((20, 40, 3), np.uint8)
    image[:, :20] = (255, 0, 0)  # left half blue
    data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    tiff = b"MM" + struct.pack(">HIH", 42, 8, 1) + struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0) + b"\0\0\0\0"
    exif = b"Exif\0\0" + tiff  # Orientation 6: rotate 90 degrees clockwise to view
    rotated = read_image(data[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + data[2:])
    assert rotated.shape == (40, 20, 3)
    assert rotated[:18, :, 0].min() > 240 and rotated[22:, :, 0].max() < 15  # the blue half is now on top
