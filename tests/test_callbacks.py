"""Callbacks: a user's callback sees the loop's hooks in order and keeps its state in last.pkl; a
resumed run refuses a changed plan, naming the field and both values (API and `megzoo train`)."""
import pytest

from megzoo.train import Trainer
from megzoo.train.callbacks import Callback
from megzoo.train.checkpoint import check_plan

from test_train import _config, _tiny


class Recorder(Callback):
    """Records the hooks it sees; keeps a counter of steps in last.pkl."""

    def __init__(self):
        self.calls, self.steps = [], 0

    def on_model(self, trainer):
        self.calls.append("model")

    def on_fit_start(self, trainer):
        self.calls.append("fit_start")

    def on_epoch_start(self, trainer):
        self.calls.append(f"epoch_start {trainer.epoch}")

    def after_step(self, trainer, loss, lr):
        self.steps += 1
        self.calls.append(f"step {trainer.step}")

    def on_validation(self, trainer, record):
        record["extra"] = 1.0
        self.calls.append("validation")

    def on_epoch_end(self, trainer, record):
        self.calls.append(f"epoch_end {trainer.epoch} {sorted(record) == sorted(trainer.history[-1])}")

    def on_fit_end(self, trainer):
        self.calls.append("fit_end")

    def state_dict(self):
        return {"recorder_steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["recorder_steps"]
        return f"recorder at {self.steps} steps"


def test_a_callback_sees_the_hooks_in_order_and_resumes_its_state(shapes, tmp_path):
    recorder = Recorder()
    trainer = Trainer(_config(shapes, tmp_path, epochs=2, steps_per_epoch=2, eval_every=2), module=_tiny(),
                      callbacks=[recorder])
    trainer.fit(until_epoch=1)
    assert recorder.calls == ["model", "fit_start", "epoch_start 0", "step 1", "step 2", "epoch_end 1 True", "fit_end"]
    trainer.close()
    again = Recorder()
    resumed = Trainer(_config(shapes, tmp_path, epochs=2, steps_per_epoch=2, eval_every=2), module=_tiny(),
                      callbacks=[again])
    assert again.steps == 2 and again.calls == ["model"]
    resumed.fit()
    assert again.calls[1:] == ["fit_start", "epoch_start 1", "step 3", "step 4", "validation", "epoch_end 2 True",
                               "fit_end"]
    assert resumed.history[-1]["extra"] == 1.0
    log = (tmp_path / "log.txt").read_text()
    assert f"resumed from {tmp_path / 'last.pkl'}: 1 epoch(s) done, step 2; recorder at 2 steps\n" in log


@pytest.fixture(scope="module")
def stopped_run(shapes, tmp_path_factory):
    """`megzoo train` arguments (resnet18, 2 epochs of 1 step) and a run folder after epoch 1."""
    import megengine

    from megzoo.cli import build_parser
    from megzoo.cli.train import config_from_args

    out = tmp_path_factory.mktemp("stopped") / "run"
    args = ["train", "--model", "resnet18", "--data", shapes, "--input-size", "16", "--resize-size", "16",
            "--batch-size", "4", "--steps-per-epoch", "1", "--epochs", "2", "--lr", "0.01", "--workers", "0",
            "--no-progress", "--no-plot", "--device", "cpu", "--cpu-threads", "1", "--fast-conv", "off",
            "--output", str(out)]
    device = megengine.get_default_device()
    try:
        trainer = Trainer(config_from_args(build_parser().parse_args(args)))
        trainer.fit(until_epoch=1)
        trainer.close()
    finally:
        megengine.set_default_device(device)
    return args, out


def _changed(args, flag, value):
    i = args.index(flag) if flag in args else None
    return args[:i] + [flag, value] + args[i + 2:] if i is not None else [*args, flag, value]


@pytest.mark.parametrize("flag, value, field, old, new", [
    ("--lr", "0.02", "lr", "0.01", "0.02"),
    ("--batch-size", "6", "batch_size", "4", "6"),
    ("--schedule", "cosine", "schedule", "step", "cosine"),
    ("--optimizer", "adamw", "optimizer", "sgd", "adamw"),
    ("--model", "resnet34", "model", "resnet18", "resnet34"),
    ("--milestones", "10,20", "milestones", "(30, 60, 80)", "(10, 20)"),
    ("--seed", "1", "seed", "0", "1"),
])
def test_resuming_with_a_changed_plan_is_refused_naming_the_field(stopped_run, capsys, flag, value, field, old, new):
    from megzoo.cli import main

    args, out = stopped_run
    before = sorted(p.name for p in out.iterdir())
    capsys.readouterr()
    assert main(_changed(args, flag, value)) == 2
    assert capsys.readouterr().err == (f"megzoo train: error: cannot resume: {field} changed from {old} to {new} "
                                       "(the checkpoint's plan); start a new --output or pass the checkpoint's value\n")
    assert sorted(p.name for p in out.iterdir()) == before


def test_what_is_not_the_plan_may_change_and_an_older_checkpoint_counts_as_the_defaults(stopped_run, capsys):
    from megzoo.cli import main
    from megzoo.cli import build_parser
    from megzoo.cli.train import config_from_args
    from megzoo.train.checkpoint import load_training_state

    args, out = stopped_run
    saved = load_training_state(str(out / "last.pkl"))["config"]
    changed = config_from_args(build_parser().parse_args([*args, "--log-every", "1", "--eval-every", "2",
                                                          "--workers", "1", "--no-fused-blocks", "--epochs", "3"]))
    check_plan(saved, changed)  # no error: how the run executes, not what it computes; a longer run
    older = {k: v for k, v in saved.items() if k not in ("optimizer", "betas", "eps", "layer_decay")}
    check_plan(older, config_from_args(build_parser().parse_args(args)))
    with pytest.raises(ValueError) as error:
        check_plan(older, config_from_args(build_parser().parse_args([*args, "--layer-decay", "0.5"])))
    assert str(error.value) == ("cannot resume: layer_decay changed from None to 0.5 (the checkpoint's plan); "
                                "start a new --output or pass the checkpoint's value")
    assert main([*args, "--no-resume", "--output", str(out.parent / "fresh"), "--epochs", "1"]) == 0


class EpochCounter(Callback):
    """Counts epochs at each epoch's end, in its state and in the epoch's record."""

    def __init__(self):
        self.epochs = 0

    def on_epoch_end(self, trainer, record):
        self.epochs += 1
        record["counted"] = self.epochs

    def state_dict(self):
        return {"counted_epochs": self.epochs}


def test_what_a_callback_does_at_an_epochs_end_is_in_that_epochs_files(shapes, tmp_path):
    import json

    from megzoo.train.checkpoint import load_training_state

    trainer = Trainer(_config(shapes, tmp_path, epochs=2, steps_per_epoch=1), module=_tiny(),
                      callbacks=[EpochCounter()])
    trainer.fit(until_epoch=1)
    trainer.close()
    assert load_training_state(str(tmp_path / "last.pkl"))["counted_epochs"] == 1
    assert json.loads((tmp_path / "history.json").read_text())["epochs"][-1]["counted"] == 1


def test_raising_epochs_of_a_tv2_run_resumes_though_the_recipe_derives_ema_decay_from_them():
    from dataclasses import replace

    from megzoo.train import TrainConfig
    from megzoo.train.checkpoint import jsonable

    saved = TrainConfig(recipe="tv2", model="resnet18", epochs=10, batch_size=32)
    longer = TrainConfig(recipe="tv2", model="resnet18", epochs=20, batch_size=32)
    assert longer.ema_decay != saved.ema_decay
    check_plan(jsonable(saved.as_dict()), longer)  # no error: the length, and what follows from it
    with pytest.raises(ValueError) as error:
        check_plan(jsonable(saved.as_dict()), replace(longer, lr=0.1))
    assert str(error.value) == (f"cannot resume: lr changed from {saved.lr} to 0.1 (the checkpoint's plan); "
                                "start a new --output or pass the checkpoint's value")
