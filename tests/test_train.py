"""megzoo.train: the loop learns, checkpoints round-trip bit for bit, an interrupted run resumed
ends with the same weights as an uninterrupted one, and the pieces around them (schedule,
parameter groups, freezing, data folders, best model for pretrained=PATH, CLI, plot)."""
import json
import os
import re

import numpy as np
import pytest

import megengine
import megengine.functional as F
import megengine.module as M

import megzoo
from megzoo.models.base import FeatureInfo, FeatureLevel, ZooModel
from megzoo.train import TrainConfig, Trainer, learning_rate, param_groups, train
from megzoo.train import checkpoint as ckpt
from megzoo.train.data import build_folder_data, eval_loader, train_loader

from conftest import SHAPE_CLASSES as CLASSES  # the shapes fixture's classes


class TinyNet(ZooModel):
    """A two-stage ZooModel small enough for fast tests (freeze, classifier, feature levels)."""

    def __init__(self, num_classes=3):
        super().__init__(3, num_classes)
        self.conv1 = M.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = M.BatchNorm2d(8)
        self.layer1 = M.Sequential(M.Conv2d(8, 12, 3, 2, 1, bias=False), M.BatchNorm2d(12), M.ReLU())
        self.layer2 = M.Sequential(M.Conv2d(12, 16, 3, 2, 1, groups=2), M.BatchNorm2d(16), M.ReLU())
        self.feature_info = FeatureInfo([FeatureLevel("stem", 8, 1, ("conv1", "bn1"), is_stem=True),
                                         FeatureLevel("res2", 12, 2, ("layer1",)),
                                         FeatureLevel("res3", 16, 4, ("layer2",))])
        self.num_features = 16
        self.fc = M.Linear(16, num_classes)

    def _run_level(self, index, x):
        if index == 0:
            return F.relu(self.bn1(self.conv1(x)))
        return getattr(self, f"layer{index}")(x)

    def forward_head(self, x, pre_logits=False):
        x = F.mean(x, axis=(2, 3))
        return x if pre_logits else self.fc(x)

    def get_classifier(self):
        return self.fc

    def reset_classifier(self, num_classes):
        self.fc = M.Linear(16, num_classes)


def _tiny(seed=0) -> TinyNet:
    """A TinyNet with a reproducible initialisation."""
    np.random.seed(seed)
    megengine.random.seed(seed)
    return TinyNet()


def _config(shapes, out, **kw) -> TrainConfig:
    values = dict(model="tinynet", data=shapes, output=str(out), input_size=16, resize_size=16, crop_scale=(0.6, 1.0),
                  hflip=0.0, epochs=3, batch_size=6, lr=0.05, warmup_epochs=0.5, schedule="cosine", workers=0,
                  eval_batch_size=8, progress=False, plot=False, seed=3, device="cpu", cpu_threads=1)
    values.update(kw)
    return TrainConfig(**values)


def _params(model):
    return {k: np.array(v) for k, v in model.state_dict().items()}


def _assert_same(a, b):
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_steps_reduce_the_loss(shapes, tmp_path):
    trainer = Trainer(_config(shapes, tmp_path, warmup_epochs=0, lr=0.1, schedule="step"), module=_tiny())
    batch = np.stack([trainer.train_transform.apply(trainer.data.train[i])[0] for i in range(12)])
    labels = np.array([int(trainer.data.train[i][1]) for i in range(12)], np.int32)
    trainer.set_lr(0)
    losses = [trainer.train_step(batch, labels)[0] for _ in range(8)]
    assert losses[-1] < 0.7 * losses[0], losses


def test_checkpoint_round_trip_and_resume_is_exact(shapes, tmp_path):
    # uninterrupted: 3 epochs
    full = Trainer(_config(shapes, tmp_path / "full", workers=1), module=_tiny())
    result = full.fit()
    assert result.epochs == 3 and len(full.history) == 3
    # interrupted after 2 epochs, then resumed by a new Trainer (a new process would do the same)
    first = Trainer(_config(shapes, tmp_path / "cut", workers=1), module=_tiny())
    first.fit(until_epoch=2)
    saved = ckpt.load_training_state(str(tmp_path / "cut" / ckpt.LAST))
    assert saved["epoch"] == 2 and saved["step"] == first.step
    # round trip: a Trainer resuming from last.pkl holds exactly the saved weights and momentum
    resumed = Trainer(_config(shapes, tmp_path / "cut", workers=1), module=_tiny())
    assert resumed.epoch == 2 and resumed.step == first.step and resumed.history == first.history
    _assert_same(_params(resumed.model), _params(first.model))
    def moments(opt):
        return [opt._state[p]["momentum_buffer"].numpy() for g in opt.param_groups for p in g["params"]]

    for a, b in zip(moments(resumed.optimizer), moments(first.optimizer)):
        np.testing.assert_array_equal(a, b)
    resumed.fit()
    _assert_same(_params(resumed.model), _params(full.model))
    assert resumed.history[-1]["val_top1"] == full.history[-1]["val_top1"]
    # a finished run resumed again does nothing
    again = Trainer(_config(shapes, tmp_path / "cut", workers=1), module=_tiny())
    assert again.fit().epochs == 3
    _assert_same(_params(again.model), _params(full.model))


def test_run_folder_contents(shapes, tmp_path):
    result = train(_config(shapes, tmp_path, epochs=2, plot=True, label_smoothing=0.1, no_bn_decay=True),
                   module=_tiny())
    names = set(os.listdir(tmp_path))
    assert {"last.pkl", "best.pkl", "best.json", "history.json", "log.txt", "config.json", "curves.png"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    with open(result.plot_path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    history = json.loads((tmp_path / "history.json").read_text())
    assert [r["epoch"] for r in history["epochs"]] == [1, 2] and history["classes"] == list(CLASSES)
    for key in ("train_loss", "train_acc", "val_loss", "val_top1", "val_top5", "lr", "images_per_second"):
        assert key in history["epochs"][-1]
    meta = json.loads((tmp_path / "best.json").read_text())
    assert meta["classes"] == list(CLASSES) and meta["num_classes"] == 3
    assert meta["preprocess"]["input_size"] == 16 and meta["preprocess"]["resize_size"] == 16
    # best.pkl is a plain state dict; last.pkl only arrays and builtins: both pass the safe loader
    from megzoo.weights.serialization import load_checkpoint, load_megengine_pickle

    best = load_checkpoint(result.best_path)
    assert set(best) == set(TinyNet().state_dict())
    state = load_megengine_pickle(result.last_path)
    assert state["format"] == ckpt.FORMAT and isinstance(state["rng"]["numpy"]["keys"], np.ndarray)
    assert re.search(r"epoch +2/2 +train loss", (tmp_path / "log.txt").read_text())


def test_best_weights_load_with_pretrained_path(tmp_path):
    model = megzoo.resnet18(num_classes=3)
    path = ckpt.save_weights(model, str(tmp_path / "best.pkl"), {"model": "resnet18", "num_classes": 3})
    loaded = megzoo.resnet18(pretrained=path, num_classes=3)
    assert not loaded.load_report.reinitialized and not loaded.load_report.unused
    _assert_same(_params(loaded), _params(model))
    assert json.loads((tmp_path / "best.json").read_text())["num_classes"] == 3


def test_learning_rate_schedule():
    c = TrainConfig(lr=0.1, epochs=10, warmup_epochs=2, milestones=(5, 8), gamma=0.1)
    assert learning_rate(c, 0, 10) == 0.0
    assert learning_rate(c, 10, 10) == pytest.approx(0.05)
    assert learning_rate(c, 20, 10) == pytest.approx(0.1)
    assert learning_rate(c, 50, 10) == pytest.approx(0.01)
    assert learning_rate(c, 85, 10) == pytest.approx(0.001)
    assert learning_rate(c, 20, 10, world_size=8) == pytest.approx(0.8)  # scaled by the number of workers
    cos = TrainConfig(lr=0.1, epochs=10, warmup_epochs=0, schedule="cosine")
    assert learning_rate(cos, 0, 10) == pytest.approx(0.1)
    assert learning_rate(cos, 50, 10) == pytest.approx(0.05)
    assert learning_rate(cos, 100, 10) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="linear")


def test_param_groups_freeze_and_decay():
    model = TinyNet()
    model.freeze(1)  # stem + first stage: their BN in inference mode, parameters left out
    config = TrainConfig(model="tinynet", no_bn_decay=True, backbone_lr_mult=0.1, weight_decay=1e-4)
    groups = {g["name"]: g for g in param_groups(model, config)}
    assert set(groups) == {"backbone", "backbone/no_decay", "head", "head/no_decay"}
    assert groups["backbone"]["lr_mult"] == 0.1 and groups["head"]["lr_mult"] == 1.0
    assert groups["backbone/no_decay"]["weight_decay"] == 0.0 and groups["head"]["weight_decay"] == 1e-4
    chosen = {id(p) for g in groups.values() for p in g["params"]}
    assert chosen == {id(p) for p in model.trainable_parameters()}
    assert {id(p) for p in model.layer2.parameters()} <= chosen
    frozen = {id(p) for m in (model.conv1, model.bn1, model.layer1) for p in m.parameters()}
    assert frozen and not chosen & frozen
    assert groups["head"]["params"] == [model.fc.weight] and groups["head/no_decay"]["params"] == [model.fc.bias]
    assert model.bn1.freeze and model.layer1[1].freeze and not model.layer2[1].freeze


def test_fine_tuning_keeps_frozen_layers(shapes, tmp_path):
    model = TinyNet()
    before = _params(model)
    trainer = Trainer(_config(shapes, tmp_path, epochs=1, freeze_stages=1, backbone_lr_mult=0.1), module=model)
    trainer.fit()
    after = _params(model)
    for key in before:  # stem and first stage (weights and BN statistics) untouched, the rest trained
        frozen = key.startswith(("conv1", "bn1", "layer1"))
        assert np.array_equal(before[key], after[key]) == frozen, key


def test_folder_data_and_sharding(shapes, tmp_path):
    data = build_folder_data(shapes)
    assert data.classes == list(CLASSES) and len(data.train) == 30 and len(data.val) == 12
    split = build_folder_data(os.path.join(shapes, "train"), val_split=0.2, seed=1)
    assert len(split.train) == 24 and len(split.val) == 6
    assert {int(split.val[i][1]) for i in range(6)} == {0, 1, 2}  # stratified
    # the distributed samplers: each rank gets its own share of every epoch
    seen = []
    for r in range(2):
        loader = train_loader(data.train, None, 5, 0, world_size=2, rank=r)
        seen.append({int(i) for batch in loader.sampler for i in batch})
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 30
    shares = [eval_loader(data.val, None, 4, 0, world_size=3, rank=r).sampler.indices for r in range(3)]
    assert sorted(i for s in shares for i in s) == list(range(12))
    with pytest.raises(ValueError, match="batch"):
        train_loader(data.train, None, 64, 0)


def test_cli_train(shapes, tmp_path):
    from megzoo.cli import main

    out = tmp_path / "run"
    code = main(["train", "--data", shapes, "--model", "resnet18", "--input-size", "16", "--resize-size", "16",
                 "--epochs", "1", "--batch-size", "4", "--steps-per-epoch", "2", "--workers", "0", "--lr", "0.01",
                 "--hflip", "0", "--no-progress", "--no-plot", "--device", "cpu", "--output", str(out), "--json"])
    assert code == 0
    meta = json.loads((out / "best.json").read_text())
    assert meta["model"] == "resnet18" and meta["classes"] == list(CLASSES)
    model = megzoo.resnet18(pretrained=str(out / "best.pkl"), num_classes=3)
    assert not model.load_report.reinitialized
    assert main(["train", "--model", "resnet18"]) == 2  # no data: a one-line error


def test_train_options_are_generated_from_the_config_fields():
    """Every TrainConfig field (but the API-only model_kwargs) is a `megzoo train` option whose
    default is the field's: parsing just --data gives TrainConfig(data=...) exactly; flags reach
    their fields."""
    from dataclasses import fields

    from megzoo.cli import build_parser
    from megzoo.cli.train import config_from_args
    from megzoo.train import TrainConfig

    parser = build_parser()
    args = parser.parse_args(["train", "--data", "d"])
    assert config_from_args(args) == TrainConfig(data="d")
    assert {f.name for f in fields(TrainConfig)} - set(vars(args)) == {"model_kwargs"}
    args = parser.parse_args(["train", "--data", "d", "--wd", "5e-4", "--freeze", "2", "--no-resume", "--nesterov",
                              "--crop-scale", "0.5", "1", "--milestones", "3,6", "--pretrained", "default",
                              "--schedule", "cosine", "--fast-conv", "off"])
    config = config_from_args(args)
    assert (config.weight_decay, config.freeze_stages, config.resume, config.nesterov) == (5e-4, 2, False, True)
    assert (config.crop_scale, config.milestones, config.pretrained) == ((0.5, 1.0), (3, 6), True)
    assert (config.schedule, config.fast_conv) == ("cosine", "off")
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--schedule", "linear"])  # choices come from the recipe


# -- the modern recipe in the loop (the pieces themselves: test_recipe.py, test_augment.py) -----------
_MODERN = dict(augment="ta_wide", random_erasing=0.5, mixup=0.2, cutmix=1.0, label_smoothing=0.1, ema_decay=0.8,
               ema_steps=2, clip_grad_norm=5.0, no_bn_decay=True, workers=1)


def test_resume_with_ema_and_mixing_is_exact(shapes, tmp_path):
    full = Trainer(_config(shapes, tmp_path / "full", **_MODERN), module=_tiny())
    full.fit()
    first = Trainer(_config(shapes, tmp_path / "cut", **_MODERN), module=_tiny())
    first.fit(until_epoch=2)
    resumed = Trainer(_config(shapes, tmp_path / "cut", **_MODERN), module=_tiny())
    assert resumed.ema.updates == first.ema.updates > 0
    _assert_same(resumed.ema.average, first.ema.average)
    resumed.fit()
    _assert_same(_params(resumed.model), _params(full.model))
    _assert_same(resumed.ema.average, full.ema.average)
    keys = ("train_loss", "val_top1", "ema_val_top1", "ema_val_loss")
    assert [[r[k] for k in keys] for r in resumed.history] == [[r[k] for k in keys] for r in full.history]
    assert not np.array_equal(full.ema.average["fc.weight"], _params(full.model)["fc.weight"])


def test_best_weights_are_the_better_of_model_and_average(shapes, tmp_path):
    from megzoo.weights.serialization import load_checkpoint

    trainer = Trainer(_config(shapes, tmp_path, epochs=1, **_MODERN), module=_tiny())
    trainer.fit()
    record = trainer.history[-1]
    meta = json.loads((tmp_path / "best.json").read_text())
    weights = "ema" if record["ema_val_top1"] > record["val_top1"] else "model"
    assert meta["weights"] == weights and meta["top1"] == record[("ema_" if weights == "ema" else "") + "val_top1"]
    expected = trainer.ema.average if weights == "ema" else _params(trainer.model)
    best = load_checkpoint(str(tmp_path / "best.pkl"))
    for key, value in expected.items():
        np.testing.assert_array_equal(np.asarray(best[key]), value, err_msg=key)
    log = (tmp_path / "log.txt").read_text()
    assert "recipe megengine: epochs=1 batch_size=6 lr=0.05 " in log and "mixup=0.2 cutmix=1" in log
    assert "EMA top-1" in log


def test_clip_grad_norm_bounds_the_update(shapes, tmp_path):
    trainer = Trainer(_config(shapes, tmp_path, momentum=0.0, weight_decay=0.0, lr=1.0, warmup_epochs=0,
                              schedule="step", clip_grad_norm=0.01), module=_tiny())
    batch = np.stack([trainer.train_transform.apply(trainer.data.train[i])[0] for i in range(6)])
    labels = np.array([int(trainer.data.train[i][1]) for i in range(6)], np.int32)
    before = {id(p): p.numpy().copy() for p in trainer.params}
    trainer.set_lr(0)
    trainer.train_step(batch, labels)
    step = np.sqrt(sum(float(((p.numpy() - before[id(p)]) ** 2).sum()) for p in trainer.params))
    assert step == pytest.approx(0.01, rel=1e-3)  # lr 1 x the clipped gradient (its norm was far above 0.01)


def test_drop_path_and_the_evaluation_crop_reach_the_model_and_best_json(shapes, tmp_path):
    config = _config(shapes, tmp_path, model="resnet18", drop_path=0.1, eval_size=20, resize_size=24, epochs=1,
                     steps_per_epoch=1, fast_conv="off")
    trainer = Trainer(config)
    assert trainer.model.layer4[1].drop_path.rate == pytest.approx(0.1)
    assert [t.__class__.__name__ for t in trainer.eval_transform.transforms][:2] == ["Resize", "CenterCrop"]
    trainer.fit()
    meta = json.loads((tmp_path / "best.json").read_text())
    assert (meta["preprocess"]["input_size"], meta["preprocess"]["resize_size"]) == (20, 24)
    with pytest.raises(ValueError, match="drop_path .stochastic depth. needs a model with residual blocks"):
        Trainer(_config(shapes, tmp_path / "vgg", model="vgg11", drop_path=0.1, input_size=32, resize_size=32))
    with pytest.raises(ValueError, match="drop_path does not combine with qat"):
        Trainer(_config(shapes, tmp_path / "qat", model="resnet18", drop_path=0.1, qat=True))


def test_cli_recipe_options():
    from megzoo.cli import build_parser
    from megzoo.cli.train import config_from_args

    parser = build_parser()
    config = config_from_args(parser.parse_args(["train", "--data", "d", "--recipe", "tv2", "--no-bn-decay", "off",
                                                 "--augment", "randaugment", "--randaugment", "3", "5",
                                                 "--mixup", "0.5", "--epochs", "30", "--ema-steps", "4"]))
    assert (config.recipe, config.no_bn_decay, config.augment, config.randaugment) == ("tv2", False, "randaugment",
                                                                                      (3, 5))
    assert (config.mixup, config.cutmix, config.epochs, config.input_size) == (0.5, 1.0, 30, 176)
    assert config.ema_decay == pytest.approx(1 - 2e-5 * 128 * 4 / 30)
    assert config_from_args(parser.parse_args(["train", "--data", "d", "--no-bn-decay"])).no_bn_decay is True
    assert config_from_args(parser.parse_args(["train", "--data", "d", "--recipe", "tv2"])) == \
        TrainConfig(data="d", recipe="tv2")
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--augment", "trivial"])
    help_text = parser._subparsers._group_actions[0].choices["train"].format_help()
    assert "megengine: 90, tv2: 600" in " ".join(help_text.split())


def test_megengines_poller_yields_while_training_on_a_cpu_and_is_restored(shapes, tmp_path, monkeypatch):
    from megzoo.device import poller_policy, poller_threads

    trainer = Trainer(_config(shapes, tmp_path, epochs=1), module=_tiny())
    pollers = poller_threads()
    assert pollers, "building the trainer runs MegEngine operators, which start the poller"
    before = [os.sched_getscheduler(tid) for tid in pollers]
    seen = []
    original = Trainer.train_epoch

    def train_epoch(self):
        seen.append([os.sched_getscheduler(tid) for tid in pollers])
        return original(self)

    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)
    trainer.fit()
    assert seen == [[poller_policy()] * len(pollers)] and poller_policy() != os.SCHED_OTHER
    assert [os.sched_getscheduler(tid) for tid in pollers] == before == [os.SCHED_OTHER] * len(pollers)
