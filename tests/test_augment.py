"""megzoo.augment: each operation does what its name says on uint8 BGR images, the policies draw
their operations and magnitudes as the papers do (counted over many seeded draws), a fixed seed
gives a fixed image, random erasing erases one rectangle of the stated area and shape, and the
whole training transform runs in DataLoader workers."""
import numpy as np
import pytest

import megzoo.augment as A
from megzoo.transforms import train_transform


def _image(h=24, w=32, seed=0):
    """A textured uint8 BGR image with values 10-245 in every channel."""
    rng = np.random.RandomState(seed)
    return rng.randint(10, 246, size=(h, w, 3)).astype(np.uint8)


def test_every_op_keeps_shape_dtype_and_range():
    image = _image()
    for name in A.OPS:
        for magnitude in (0.0, 0.3, -0.3, 5.0):
            if name == "Posterize":
                magnitude = 4
            if name == "Solarize":
                magnitude = 128
            out = A.apply_op(image, name, magnitude)
            assert out.shape == image.shape and out.dtype == np.uint8, name
    grey = image[:, :, 0]
    assert A.apply_op(grey, "Rotate", 10).shape == grey.shape  # (H, W) images too


def test_ops_do_what_their_names_say():
    image = _image(16, 16)
    assert np.array_equal(A.apply_op(image, "Identity", 9), image)
    assert np.array_equal(A.apply_op(A.apply_op(image, "Invert", 0), "Invert", 0), image)
    assert np.array_equal(A.apply_op(image, "Invert", 0), 255 - image)
    # posterize to 3 bits: only the top 3 bits survive, so at most 8 values per channel
    poster = A.apply_op(image, "Posterize", 3)
    assert np.array_equal(poster, image & 0b11100000) and len(np.unique(poster)) <= 8
    assert np.array_equal(A.apply_op(image, "Posterize", 8), image)
    # solarize at 128: pixels below unchanged, the others inverted
    sol = A.apply_op(image, "Solarize", 128)
    assert np.array_equal(sol[image < 128], image[image < 128])
    assert np.array_equal(sol[image >= 128], 255 - image[image >= 128])
    # colour blends: factor 0 (magnitude -1) gives the degenerate image
    assert not A.apply_op(image, "Brightness", -1.0).any()
    grey = A.apply_op(image, "Color", -1.0)
    assert np.array_equal(grey[:, :, 0], grey[:, :, 1]) and np.array_equal(grey[:, :, 1], grey[:, :, 2])
    flat = A.apply_op(image, "Contrast", -1.0)
    assert len(np.unique(flat)) == 1
    assert np.array_equal(A.apply_op(image, "Sharpness", 0.0), image)  # factor 1
    # autocontrast stretches every channel to 0-255
    stretched = A.apply_op(image, "AutoContrast", 0)
    assert (stretched.min(axis=(0, 1)) == 0).all() and (stretched.max(axis=(0, 1)) == 255).all()
    # geometry: a 90-degree rotation of a square image is np.rot90 (counter-clockwise), a
    # translation shifts with black filling in
    assert np.array_equal(A.apply_op(image, "Rotate", 90.0), np.rot90(image))
    moved = A.apply_op(image, "TranslateX", 3.0)
    assert np.array_equal(moved[:, 3:], image[:, :-3]) and not moved[:, :3].any()
    moved = A.apply_op(image, "TranslateY", -2.0)
    assert np.array_equal(moved[:-2], image[2:]) and not moved[-2:].any()
    sheared = A.apply_op(image, "ShearX", 0.5)
    assert np.array_equal(sheared[0], image[0])  # the top row does not move


def test_magnitude_spaces_span_the_papers_ranges():
    wide = A._space("wide", 31, 224, 224)
    assert wide["ShearX"][0][-1] == pytest.approx(0.99) and wide["TranslateX"][0][-1] == 32.0
    assert wide["Rotate"][0][-1] == 135.0 and wide["Brightness"][0][-1] == pytest.approx(0.99)
    assert list(wide["Posterize"][0][[0, -1]]) == [8, 2] and list(wide["Solarize"][0][[0, -1]]) == [255.0, 0.0]
    std = A._space("standard", 31, 331, 331)
    assert std["ShearX"][0][-1] == pytest.approx(0.3) and std["TranslateX"][0][-1] == pytest.approx(150.0)
    assert std["Rotate"][0][-1] == 30.0 and list(std["Posterize"][0][[0, -1]]) == [8, 4]
    assert all(m[0] == 0 for name, (m, _) in std.items() if name not in ("Posterize", "Solarize"))
    assert set(wide) == set(std) and len(wide) == 14 and "Invert" not in wide


def _record_ops(monkeypatch):
    calls = []

    def fake(image, name, magnitude):
        calls.append((name, magnitude))
        return image

    monkeypatch.setattr(A, "apply_op", fake)
    return calls


def test_trivial_augment_draws_one_op_and_bin_uniformly(monkeypatch):
    calls = _record_ops(monkeypatch)
    policy, image = A.TrivialAugmentWide(), _image(8, 8)
    np.random.seed(0)
    for _ in range(2800):
        policy._augment(image)
    assert len(calls) == 2800  # exactly one op per image
    names = [n for n, _ in calls]
    counts = {n: names.count(n) for n in A._space("wide", 31, 8, 8)}
    assert min(counts.values()) > 140 and max(counts.values()) < 260, counts  # 200 expected each
    rotations = np.array([m for n, m in calls if n == "Rotate"])
    assert (rotations < 0).mean() == pytest.approx(0.5, abs=0.1)  # a random sign
    assert np.abs(rotations).max() <= 135 and len(np.unique(np.abs(rotations))) > 20  # many bins


def test_randaugment_applies_n_ops_at_magnitude_m(monkeypatch):
    calls = _record_ops(monkeypatch)
    np.random.seed(1)
    policy = A.RandAugment(num_ops=3, magnitude=10)
    for _ in range(200):
        policy._augment(_image(331, 331))
    assert len(calls) == 600
    space = A._space("standard", 31, 331, 331)
    for name, magnitude in calls:
        assert abs(magnitude) == pytest.approx(space[name][0][10]), name
    with pytest.raises(ValueError, match="magnitude must be in"):
        A.RandAugment(2, 31)


def test_autoaugment_follows_the_imagenet_policy_probabilities(monkeypatch):
    calls = _record_ops(monkeypatch)
    np.random.seed(2)
    draws = 5000
    for _ in range(draws):
        A.AutoAugment()._augment(_image(8, 8))
    subs = A.AUTO_AUGMENT_POLICIES["imagenet"]
    for name in ("Equalize", "Rotate", "Invert", "Posterize"):
        expected = draws * sum(p for sub in subs for n, p, _ in sub if n == name) / len(subs)
        seen = sum(1 for n, _ in calls if n == name)
        assert seen == pytest.approx(expected, rel=0.1), name


def test_a_fixed_seed_gives_a_fixed_image():
    image = _image(40, 40)
    for policy in (A.TrivialAugmentWide(), A.RandAugment(), A.AutoAugment()):
        outs = []
        for seed in (5, 5, 6, 7, 8):
            np.random.seed(seed)
            outs.append(policy.apply(image))
        assert np.array_equal(outs[0], outs[1]), policy
        assert any(not np.array_equal(outs[0], o) for o in outs[2:]), policy
        assert outs[0].dtype == np.uint8 and outs[0].shape == image.shape
    with pytest.raises(TypeError, match="uint8 images"):
        A.TrivialAugmentWide().apply(image.astype(np.float32))


def test_random_erasing_erases_one_rectangle_of_the_stated_size():
    image = np.ones((3, 40, 50), np.float32)
    erasing = A.RandomErasing(p=1.0)
    np.random.seed(3)
    areas = []
    for _ in range(300):
        out = erasing.apply(image)
        hole = out[0] == 0
        rows, cols = np.where(hole)
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert hole.sum() == h * w and (out[:, hole] == 0).all()  # one filled rectangle, every channel
        assert (out[:, ~hole] == 1).all()
        assert (h - 0.5) / (w + 0.5) <= 3.3 and (h + 0.5) / (w - 0.5) >= 0.3  # the ratio, up to rounding to px
        areas.append(h * w / 2000)
    assert 0.015 <= min(areas) and max(areas) <= 0.35 and np.mean(areas) == pytest.approx(0.175, abs=0.03)
    np.random.seed(4)
    half = A.RandomErasing(p=0.5)
    erased = [not np.array_equal(half.apply(image), image) for _ in range(400)]
    assert np.mean(erased) == pytest.approx(0.5, abs=0.08)
    assert np.array_equal(A.RandomErasing(p=0.0).apply(image), image)
    noisy = A.RandomErasing(p=1.0, value="random").apply(image)
    assert ((noisy != 1) & (noisy != 0)).any()
    with pytest.raises(TypeError, match="after ToMode"):
        erasing.apply(np.ones((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="probability"):
        A.RandomErasing(p=1.5)


def test_policy_names_and_the_training_transform_in_dataloader_workers():
    from megengine.data import DataLoader, RandomSampler
    from megengine.data.dataset import ArrayDataset

    assert A.policy_transform("none") is None
    assert isinstance(A.policy_transform("randaugment", (3, 4)), A.RandAugment)
    assert A.policy_transform("randaugment", (3, 4)).num_ops == 3
    with pytest.raises(ValueError, match="augment must be one of none, ta_wide"):
        A.policy_transform("trivial")
    from megzoo.train.recipe import AUGMENTS

    assert AUGMENTS == A.POLICIES  # the config's choices are the policies
    transform = train_transform(24, augment=A.TrivialAugmentWide(), random_erasing=0.5, hflip=0.5)
    images = np.stack([_image(32, 32, seed=i) for i in range(8)])
    dataset = ArrayDataset(images, np.arange(8, dtype=np.int32))
    loader = DataLoader(dataset, RandomSampler(dataset, batch_size=4, seed=0), transform=transform, num_workers=1)
    batches = [b for b, _ in loader]
    assert [b.shape for b in batches] == [(4, 3, 24, 24)] * 2 and all(b.dtype == np.float32 for b in batches)
    assert all(np.isfinite(b).all() for b in batches)
