"""The optimizer factory: SGD is today's SGD step for step, AdamW is MegEngine's AdamW, layer-wise
decay gives each depth of a ResNet / VGG its learning rate, and the names are checked (config, CLI)."""
import numpy as np
import pytest

import megengine
import megengine.functional as F
import megengine.optimizer as optim
from megengine.autodiff import GradManager

import megzoo
from megzoo.train import TrainConfig, param_groups
from megzoo.train.optim import OPTIMIZERS, build_optimizer, layer_depths

from test_train import _tiny


def _steps(model, optimizer, n=3):
    """``n`` steps of a fixed regression loss; returns the model's state as numpy."""
    gm = GradManager().attach(model.parameters())
    rng = np.random.RandomState(0)
    x = megengine.Tensor(rng.normal(size=(4, 3, 8, 8)).astype(np.float32))
    for _ in range(n):
        with gm:
            gm.backward(F.mean(model(x) ** 2))
        optimizer.step().clear_grad()
    return {k: np.array(v) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("values, reference", [
    (dict(momentum=0.9, nesterov=True, weight_decay=1e-3),
     lambda groups, c: optim.SGD(groups, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    (dict(optimizer="adamw", betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05),
     lambda groups, c: optim.AdamW(groups, lr=0.1, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)),
])
def test_the_factory_gives_megengines_optimizer_step_for_step(values, reference):
    config = TrainConfig(model="tinynet", lr=0.1, no_bn_decay=True, **values)
    ours, theirs = _tiny(), _tiny()
    built = build_optimizer(param_groups(ours, config), config)
    assert type(built) is {"sgd": optim.SGD, "adamw": optim.AdamW}[config.optimizer]
    a = _steps(ours, built)
    b = _steps(theirs, reference(param_groups(theirs, config), config))
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert not np.array_equal(a["fc.weight"], np.array(_tiny().fc.weight))  # it did train


def test_sgd_stays_the_default_with_todays_settings():
    config = TrainConfig()
    assert (config.optimizer, config.momentum, config.nesterov) == ("sgd", 0.9, False)
    assert TrainConfig(recipe="tv2").optimizer == "sgd" and tuple(OPTIMIZERS) == ("sgd", "adamw")
    sgd = build_optimizer(param_groups(_tiny(), config), config, lr=0.2)
    assert sgd.nesterov is False and [(g["lr"], g["momentum"], g["weight_decay"]) for g in sgd.param_groups] == \
        [(0.2, 0.9, 1e-4), (0.2, 0.9, 1e-4)]


def test_layer_decay_gives_each_resnet_stage_its_rate():
    model = megzoo.resnet18(num_classes=3)
    config = TrainConfig(model="resnet18", layer_decay=0.5, backbone_lr_mult=0.5, weight_decay=1e-4)
    groups = param_groups(model, config)
    assert [(g["name"], g["lr_mult"], g["weight_decay"]) for g in groups] == [
        ("backbone/depth0", 0.5 * 0.5 ** 5, 1e-4), ("backbone/depth1", 0.5 * 0.5 ** 4, 1e-4),
        ("backbone/depth2", 0.5 * 0.5 ** 3, 1e-4), ("backbone/depth3", 0.5 * 0.5 ** 2, 1e-4),
        ("backbone/depth4", 0.5 * 0.5, 1e-4), ("head/depth5", 1.0, 1e-4)]
    by_name = {g["name"]: {id(p) for p in g["params"]} for g in groups}
    assert by_name["backbone/depth0"] == {id(p) for m in (model.conv1, model.bn1) for p in m.parameters()}
    assert by_name["backbone/depth3"] == {id(p) for p in model.layer3.parameters()}
    assert by_name["head/depth5"] == {id(p) for p in model.fc.parameters()}
    # the rate each group trains at: the trainer's set_lr gives lr x lr_mult
    sgd = build_optimizer(groups, config)
    for group in sgd.param_groups:
        group["lr"] = 0.1 * group["lr_mult"]
    assert [g["lr"] for g in sgd.param_groups] == [0.1 * 0.5 * 0.5 ** k for k in (5, 4, 3, 2, 1)] + [0.1]
    assert [len(g) for g in (param_groups(model, TrainConfig(layer_decay=1.0)),)] == [2]  # 1.0: no split


def test_layer_depths_of_vgg_start_at_its_first_stage_and_need_stages():
    model = megzoo.vgg11(num_classes=3)
    depths = layer_depths(model)
    named = dict(model.named_parameters())
    assert {depths[id(p)] for n, p in named.items() if n.startswith("s1.")} == {1}
    assert {depths[id(p)] for n, p in named.items() if n.startswith("s5.")} == {5}
    assert {depths[id(p)] for n, p in named.items() if n.startswith("head.")} == {6}
    import megengine.module as M

    with pytest.raises(ValueError) as error:
        layer_depths(M.Linear(2, 2))
    assert str(error.value) == ("layer_decay needs a model that lists its stages (feature_info, as megzoo models "
                                "do); Linear has none")


@pytest.mark.parametrize("values, message", [
    ({"optimizer": "adam"}, "optimizer must be one of sgd, adamw, got 'adam'"),
    ({"betas": (0.9, 1.0)}, "betas must be two numbers in [0, 1), got (0.9, 1.0)"),
    ({"eps": 0.0}, "eps must be > 0, got 0.0"),
    ({"layer_decay": 0.0}, "layer_decay must be in (0, 1] (leave it unset for none), got 0.0"),
])
def test_bad_optimizer_values_are_named(values, message):
    with pytest.raises(ValueError) as error:
        TrainConfig(**values)
    assert str(error.value) == message


def test_megzoo_train_takes_the_optimizer_options():
    from megzoo.cli import build_parser
    from megzoo.cli.train import config_from_args

    parser = build_parser()
    config = config_from_args(parser.parse_args(["train", "--data", "d", "--optimizer", "adamw", "--betas", "0.8",
                                                 "0.99", "--eps", "1e-6", "--layer-decay", "0.7", "--wd", "0.05"]))
    assert (config.optimizer, config.betas, config.eps, config.layer_decay, config.weight_decay) == \
        ("adamw", (0.8, 0.99), 1e-6, 0.7, 0.05)
    assert config_from_args(parser.parse_args(["train", "--data", "d"])).optimizer == "sgd"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--optimizer", "adam"])
    help_text = " ".join(parser._subparsers._group_actions[0].choices["train"].format_help().split())
    assert "--optimizer {sgd,adamw}" in help_text and "optimizer:" in help_text


def test_a_stage_listed_as_a_module_path_owns_the_parameters_under_it():
    import megengine.module as M

    from megzoo.models.base import FeatureLevel

    class Staged(M.Module):
        """Stages in a list (``stages.0``, ``stages.1``), as transformer families keep them."""

        def __init__(self):
            super().__init__()
            self.stem = M.Conv2d(3, 4, 1)
            self.stages = [M.Conv2d(4, 4, 1), M.Conv2d(4, 4, 1)]
            self.head = M.Linear(4, 2)
            self.feature_info = [FeatureLevel("stem", 4, 1, ("stem",), is_stem=True),
                                 FeatureLevel("s1", 4, 1, ("stages.0",)), FeatureLevel("s2", 4, 1, ("stages.1",))]

        def forward(self, x):
            return x

    model = Staged()
    depths = {name: layer_depths(model)[id(p)] for name, p in model.named_parameters()}
    assert depths == {"stem.weight": 0, "stem.bias": 0, "stages.0.weight": 1, "stages.0.bias": 1,
                      "stages.1.weight": 2, "stages.1.bias": 2, "head.weight": 3, "head.bias": 3}
