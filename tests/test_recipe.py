"""The pieces of the modern recipe: mixup/cutmix targets match the mixed pixels and sum to 1,
the soft-target loss equals MegEngine's cross-entropy, the weights' average equals its closed
form, stochastic depth drops whole samples at the stated rates, and the named recipes resolve
to torchvision's and MegEngine's values (an explicit value winning)."""
import numpy as np
import pytest

import megengine
import megengine.functional as F
import megengine.module as M

import megzoo
from megzoo.layers import DropPath
from megzoo.train import TrainConfig
from megzoo.train.ema import WeightEma, torchvision_decay
from megzoo.train.mixing import BatchMixer, soft_cross_entropy, soft_targets
from megzoo.train.recipe import RECIPES, recipe_summary


def _batch(n=6, k=4):
    """Images where image i is the constant i (so every pixel says where it came from)."""
    images = np.stack([np.full((3, 10, 12), float(i), np.float32) for i in range(n)])
    return images, np.arange(n) % k


def test_mixup_targets_are_the_mixed_proportions():
    images, labels = _batch()
    mixer = BatchMixer(4, mixup_alpha=0.4)
    np.random.seed(0)
    mixed, targets = mixer(images, labels)
    lam = mixer.last["lam"]
    assert mixer.last["method"] == "mixup" and 0 < lam < 1
    rolled = np.roll(np.arange(6), 1)
    np.testing.assert_allclose(mixed, lam * images + (1 - lam) * images[rolled], rtol=1e-6)
    expected = lam * np.eye(4)[labels] + (1 - lam) * np.eye(4)[labels[rolled]]
    np.testing.assert_allclose(targets, expected, rtol=1e-6)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)


def test_cutmix_targets_match_the_pasted_area():
    images, labels = _batch()
    mixer = BatchMixer(4, cutmix_alpha=1.0, smoothing=0.1)
    rolled = np.roll(np.arange(6), 1)
    np.random.seed(1)
    for _ in range(20):
        mixed, targets = mixer(images, labels)
        pasted = (mixed[0, 0] == images[rolled[0], 0, 0, 0]).mean()  # image 0's pixels from image 5
        lam = mixer.last["lam"]
        assert mixer.last["method"] == "cutmix" and lam == pytest.approx(1 - pasted)
        smooth = (1 - 0.1) * (lam * np.eye(4)[labels] + (1 - lam) * np.eye(4)[labels[rolled]]) + 0.1 / 4
        np.testing.assert_allclose(targets, smooth, rtol=1e-5)
        np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)
    # both on: one of the two per batch, about half each
    both = BatchMixer(4, mixup_alpha=0.2, cutmix_alpha=1.0)
    methods = []
    for _ in range(200):
        both(images, labels)
        methods.append(both.last["method"])
    assert methods.count("mixup") == pytest.approx(100, abs=25)
    off = BatchMixer(4)
    same, hard = off(images, labels)
    assert same is images and not off.enabled and np.array_equal(hard, np.eye(4, dtype=np.float32)[labels])
    with pytest.raises(ValueError, match="alphas must be >= 0"):
        BatchMixer(4, mixup_alpha=-1)


def test_soft_cross_entropy_equals_megengines_with_smoothing():
    rng = np.random.RandomState(0)
    logits = megengine.Tensor(rng.normal(size=(8, 5)).astype(np.float32))
    labels = rng.randint(0, 5, 8)
    for eps in (0.0, 0.1):
        ours = soft_cross_entropy(logits, megengine.Tensor(soft_targets(labels, 5, eps)))
        theirs = F.nn.cross_entropy(logits, megengine.Tensor(labels, dtype="int32"), label_smooth=eps)
        assert float(ours.item()) == pytest.approx(float(theirs.item()), rel=1e-6)


class _Toy(M.Module):
    def __init__(self):
        super().__init__()
        self.fc = M.Linear(3, 2)
        self.bn = M.BatchNorm1d(2)

    def forward(self, x):
        return self.bn(self.fc(x))


def _set(model, value):
    model.load_state_dict({k: np.full(np.asarray(v).shape, value, np.asarray(v).dtype)
                           for k, v in model.state_dict().items()
                           if np.issubdtype(np.asarray(v).dtype, np.floating)}, strict=False)


def test_weight_average_equals_its_closed_form():
    model = _Toy()
    _set(model, 1.0)
    decay = 0.75
    ema = WeightEma(model, decay)
    values = [2.0, -1.0, 4.0, 0.5]
    for v in values:
        _set(model, v)
        ema.update(model)
    closed = decay ** len(values) * 1.0 + sum((1 - decay) * decay ** (len(values) - 1 - t) * v
                                              for t, v in enumerate(values))
    assert set(ema.average) >= {"fc.weight", "fc.bias", "bn.weight", "bn.running_mean", "bn.running_var"}
    for name, avg in ema.average.items():
        np.testing.assert_allclose(avg, closed, rtol=1e-6, err_msg=name)
    # applied: the model holds the average inside the block, its own weights (the same objects) after
    params = list(model.parameters())
    own = {k: np.array(v) for k, v in model.state_dict().items()}
    with ema.applied(model):
        np.testing.assert_allclose(model.fc.weight.numpy(), closed, rtol=1e-6)
        np.testing.assert_allclose(model.bn.running_var.numpy(), closed, rtol=1e-6)
    assert all(a is b for a, b in zip(params, model.parameters()))
    for k, v in model.state_dict().items():
        assert np.array_equal(np.asarray(v), own[k]), k
    ema.update(model, copy=True)
    assert all(np.array_equal(avg, 0.5 * np.ones_like(avg)) for avg in ema.average.values())
    # the state round-trips and is checked against the model
    other = WeightEma(_Toy(), 0.5)
    other.load_state_dict(ema.state_dict())
    assert other.decay == decay and other.updates == ema.updates == 5
    with pytest.raises(ValueError, match="lacks"):
        other.load_state_dict({"decay": 0.5, "steps": 1, "updates": 0, "average": {}})
    with pytest.raises(ValueError, match=r"ema decay must be in \[0, 1\)"):
        WeightEma(model, 1.0)


def test_torchvision_ema_decay_adjustment():
    # torchvision's V2 recipe: 8 GPUs x 128, an update every 32 steps, 600 epochs
    assert torchvision_decay(0.99998, 8, 128, 32, 600) == pytest.approx(1 - 2e-5 * 8 * 128 * 32 / 600)
    assert torchvision_decay(0.99998, 1, 1024, 64, 1) == 0.0  # alpha (1.31) capped at 1


def test_drop_path_drops_whole_samples_at_the_stated_rates():
    megengine.random.seed(0)
    drop = DropPath(0.5)
    x = megengine.Tensor(np.ones((400, 2, 3, 3), np.float32))
    out = drop(x).numpy()
    per_sample = out.reshape(400, -1)
    assert set(np.unique(per_sample)) <= {0.0, 2.0}  # dropped, or kept and scaled by 1 / (1 - rate)
    assert (per_sample.min(axis=1) == per_sample.max(axis=1)).all()  # the whole sample
    assert (per_sample[:, 0] == 0).mean() == pytest.approx(0.5, abs=0.08)
    drop.eval()
    assert np.array_equal(drop(x).numpy(), x.numpy())
    model = megzoo.resnet18(num_classes=4, drop_path_rate=0.2)
    rates = [b.drop_path.rate if b.drop_path is not None else 0.0
             for i in range(4) for b in getattr(model, f"layer{i + 1}")]
    np.testing.assert_allclose(rates, 0.2 * np.arange(8) / 7)
    assert set(model.state_dict()) == set(megzoo.resnet18(num_classes=4).state_dict())  # no new weights
    with pytest.raises(ValueError, match="drop_path_rate"):
        megzoo.resnet18(drop_path_rate=1.0)


@pytest.mark.parametrize("values, sizes", [
    ({"input_size": 128}, (163, 169)),  # FixRes from 128 px: crop x 224/176, resize x 232/224
    ({"input_size": 127}, (127, 167)),  # below: the crop stays, the resize keeps the ratio 232/176
    ({"input_size": 32}, (32, 42)),
    ({"input_size": 32, "eval_size": 41}, (41, 42)),  # a given test crop resizes as tv2 does
    ({"input_size": 224, "eval_size": 224}, (224, 295)),
    ({"input_size": 32, "resize_size": 36}, (32, 36)),
])
def test_tv2_raises_the_test_resolution_only_where_the_last_stage_is_wide(values, sizes):
    config = TrainConfig(recipe="tv2", **values)
    assert (config.eval_size, config.eval_resize) == sizes


def test_recipes_resolve_to_their_values_and_explicit_values_win():
    default = TrainConfig()
    assert (default.recipe, default.epochs, default.batch_size, default.lr, default.weight_decay) == \
        ("megengine", 90, 64, 0.025, 1e-4)
    assert (default.eval_size, default.eval_resize, default.augment, default.mixup, default.ema_decay) == \
        (224, 256, "none", 0.0, 0.0)
    assert TrainConfig(model="resnet18").color_jitter == 0.0 and default.color_jitter == 0.4
    tv2 = TrainConfig(recipe="tv2")
    assert (tv2.epochs, tv2.batch_size, tv2.lr, tv2.weight_decay, tv2.no_bn_decay, tv2.schedule) == \
        (600, 128, 0.0625, 2e-5, True, "cosine")
    assert (tv2.input_size, tv2.eval_size, tv2.eval_resize) == (176, 224, 232)
    assert (tv2.augment, tv2.random_erasing, tv2.mixup, tv2.cutmix, tv2.label_smoothing) == \
        ("ta_wide", 0.1, 0.2, 1.0, 0.1)
    assert tv2.ema_decay == pytest.approx(1 - 2e-5 * 128 * 32 / 600) and tv2.color_jitter == 0.0
    # explicit values win, and the derived ones follow them
    short = TrainConfig(recipe="tv2", epochs=30, batch_size=32, input_size=32, mixup=0.0, gpus=2)
    assert (short.epochs, short.lr, short.eval_size, short.resize_size, short.mixup) == (30, 0.015625, 32, 42, 0.0)
    assert short.ema_decay == pytest.approx(1 - 2e-5 * 2 * 32 * 32 / 30)
    assert TrainConfig.from_dict(short.as_dict()) == short  # config.json holds the resolved values
    line = recipe_summary(short)
    assert line.startswith("recipe tv2: epochs=30 batch_size=32 lr=0.015625 ") and "augment=ta_wide" in line
    assert set(RECIPES["tv2"]) <= set(RECIPES["megengine"]) | {"color_jitter"}


@pytest.mark.parametrize("values, message", [
    ({"recipe": "timm"}, "recipe must be one of megengine, tv2"),
    ({"augment": "trivial"}, "augment must be one of none, ta_wide, randaugment, autoaugment"),
    ({"randaugment": (2, 31)}, "randaugment must be"),
    ({"random_erasing": 1.5}, "random_erasing is a probability"),
    ({"mixup": -0.1}, "mixup must be >= 0"),
    ({"ema_decay": 1.0}, r"ema_decay must be in \[0, 1\)"),
    ({"ema_steps": 0}, "ema_steps must be an int >= 1"),
    ({"drop_path": 1.0}, r"drop_path must be in \[0, 1\)"),
    ({"clip_grad_norm": 0.0}, "clip_grad_norm must be > 0"),
    ({"eval_size": 0}, "eval_size must be an int >= 1"),
])
def test_bad_recipe_values_are_named(values, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**values)


def test_a_built_config_refuses_another_recipe_as_an_override():
    from megzoo.train import train

    with pytest.raises(ValueError, match="resolved when it is built: pass recipe= to TrainConfig"):
        train(TrainConfig(), recipe="tv2")
