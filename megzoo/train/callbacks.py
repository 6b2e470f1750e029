"""What a training run does around its loop, as callbacks the :class:`~megzoo.train.Trainer` calls.

A :class:`Callback` overrides the hooks it needs (each does nothing by default); the trainer calls
one hook on every callback, in list order, at these points (``trainer`` is the running trainer):

* ``on_model(trainer)``: the model is built, on its device, the same on every process;
* ``on_fit_start(trainer)``: :meth:`~megzoo.train.Trainer.fit` begins (a resumed run too);
* ``on_epoch_start(trainer)``: before epoch ``trainer.epoch`` (0-based, epochs done) trains;
* ``after_step(trainer, loss, lr)``: after optimiser step ``trainer.step`` (1-based), its loss and
  learning rate;
* ``evaluation(trainer)``: a context manager entered around every validation pass;
* ``on_validation(trainer, record)``: the model's validation columns are in the epoch's ``record``
  (a callback may add its own, as the EMA does);
* ``on_epoch_end(trainer, record)``: the record is complete and last in ``trainer.history``;
  ``trainer.epoch`` counts this epoch;
* ``on_fit_end(trainer)``: after the last epoch of this call;
* ``weights(trainer)``: other weights the callback can put into the model, by name (the EMA's
  ``"ema"``): the best checkpoint is the better of the model and these;
* ``state_dict()`` / ``load_state_dict(state)``: the top-level entries the callback keeps in
  ``last.pkl``, and its restore on resume (returning a note for the "resumed from" line, or None).

:func:`default_callbacks` gives the order: the CPU engine, the EMA, then a user's
(``Trainer(config, callbacks=[...])``), then the checkpoints, the run record (config, history,
curves) and the log, so what a user's callback adds is in the files of the same epoch.
"""
import contextlib
import json
import os
import sys
import time
from typing import Callable, ContextManager, Dict, List, Optional, Sequence

import numpy as np

from ..host import atomic_write_text
from . import checkpoint as ckpt
from .ema import WeightEma
from .recipe import recipe_summary

__all__ = ["Callback", "CpuEngineCallback", "EmaCallback", "Checkpoints", "History", "Log", "default_callbacks",
           "describe_run", "HISTORY", "CURVES", "LOG", "CONFIG", "NOT_INSTALLED"]

HISTORY = "history.json"
CURVES = "curves.png"
LOG = "log.txt"
CONFIG = "config.json"
#: why the CPU engine is off when its package cannot be imported
NOT_INSTALLED = "not installed"


class Callback:
    """A training callback: override the hooks you need (the module docstring lists them)."""

    def on_model(self, trainer) -> None:
        pass

    def on_fit_start(self, trainer) -> None:
        pass

    def on_epoch_start(self, trainer) -> None:
        pass

    def after_step(self, trainer, loss: float, lr: float) -> None:
        pass

    def evaluation(self, trainer) -> ContextManager:
        return contextlib.nullcontext()

    def on_validation(self, trainer, record: dict) -> None:
        pass

    def on_epoch_end(self, trainer, record: dict) -> None:
        pass

    def on_fit_end(self, trainer) -> None:
        pass

    def weights(self, trainer) -> Dict[str, Callable[[], ContextManager]]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> Optional[str]:
        return None


class CpuEngineCallback(Callback):
    """The CPU training engine (:mod:`megzoo.train.cpu_engine`) installed on the model, entered
    around validation and released after training; off, with the reason, when it declines or
    its package cannot be imported (training then runs MegEngine's own operators)."""

    def __init__(self, config):
        try:
            from .cpu_engine import NOT_PREPARED, CpuEngine
        except ModuleNotFoundError as error:  # the package is not there; an error inside it is raised
            if not (error.name or "").startswith(f"{__package__}.cpu_engine"):
                raise
            self.engine, self.reason = None, NOT_INSTALLED
        else:
            self.engine, self.reason = CpuEngine.from_config(config), NOT_PREPARED

    @property
    def running(self) -> bool:
        return self.engine is not None and self.reason is None

    @property
    def description(self) -> str:
        """What runs (e.g. ``auto, BLAS forward, fused blocks``), or ``off`` / ``off (REASON)``."""
        return self.engine.description if self.engine is not None else f"off ({self.reason})"

    def on_model(self, trainer) -> None:
        if self.engine is not None:
            self.reason = self.engine.prepare(trainer.model, trainer.device)

    def evaluation(self, trainer) -> ContextManager:
        return self.engine.evaluation() if self.running else contextlib.nullcontext()

    def on_fit_end(self, trainer) -> None:
        if self.engine is not None:
            self.engine.release()  # the host buffers kept between steps go back to the system


class EmaCallback(Callback):
    """The weights' moving average (:class:`~megzoo.train.ema.WeightEma`, when ``ema_decay`` > 0):
    updated every ``ema_steps`` steps (copied during the warm-up), evaluated after the model
    (the ``ema_`` columns), offered to the best checkpoint as ``"ema"``, kept in ``last.pkl``."""

    def __init__(self, config):
        self.config = config
        self.ema: Optional[WeightEma] = None

    def on_model(self, trainer) -> None:
        if self.config.ema_decay > 0:
            self.ema = WeightEma(trainer.model, self.config.ema_decay, self.config.ema_steps)

    def after_step(self, trainer, loss: float, lr: float) -> None:
        if self.ema is None or trainer.step % self.ema.steps:
            return
        warmup = int(round(self.config.warmup_epochs * trainer.steps_per_epoch))
        self.ema.update(trainer.model, copy=trainer.step <= warmup)

    def on_validation(self, trainer, record: dict) -> None:
        if self.ema is not None and trainer.val_loader is not None:
            with self.ema.applied(trainer.model):
                record.update({"ema_" + k: v for k, v in trainer.evaluate().items()})

    def weights(self, trainer) -> Dict[str, Callable[[], ContextManager]]:
        return {} if self.ema is None else {"ema": lambda: self.ema.applied(trainer.model)}

    def state_dict(self) -> dict:
        return {"ema": self.ema.state_dict() if self.ema is not None else None}

    def load_state_dict(self, state: dict) -> Optional[str]:
        if self.ema is None:
            return None
        if state.get("ema") is None:
            return "the weights' average starts from the resumed weights (the checkpoint has none)"
        self.ema.load_state_dict(state["ema"])
        return None


def _top1_key(weights: str) -> str:
    return "val_top1" if weights == "model" else f"{weights}_val_top1"


class Checkpoints(Callback):
    """``best.pkl`` + ``best.json`` when the validation top-1 improved (of the model, or of the
    other weights a callback offers, the better one), ``last.pkl`` after every epoch; holds the
    best top-1 and its epoch (the run's resume checks: :func:`megzoo.train.checkpoint.check_plan`)."""

    def __init__(self, config):
        self.best_top1: Optional[float] = None
        self.best_epoch: Optional[int] = None

    def on_epoch_end(self, trainer, record: dict) -> None:
        candidates: Dict[str, Callable[[], ContextManager]] = {"model": contextlib.nullcontext}
        for callback in trainer.callbacks:
            candidates.update(callback.weights(trainer))
        weights = "model"
        for name in candidates:
            if record.get(_top1_key(name), -1.0) > record.get(_top1_key(weights), -1.0):
                weights = name
        top1 = record.get(_top1_key(weights))
        improved = top1 is not None and (self.best_top1 is None or top1 > self.best_top1)
        if improved:
            self.best_top1, self.best_epoch = top1, trainer.epoch
            record["best_weights"] = weights
        if not trainer.main:
            return
        if improved:
            with candidates[weights]():
                ckpt.save_weights(trainer.model, os.path.join(trainer.output, ckpt.BEST),
                                  best_meta(trainer, record, weights))
        ckpt.atomic_save(trainer.state_dict(), os.path.join(trainer.output, ckpt.LAST))

    def state_dict(self) -> dict:
        return {"best_top1": self.best_top1, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict) -> Optional[str]:
        self.best_top1, self.best_epoch = state.get("best_top1"), state.get("best_epoch")
        return None


def best_meta(trainer, record: dict, weights: str = "model") -> dict:
    """``best.json``: what loading ``best.pkl`` needs (model, classes, preprocessing) and its accuracy."""
    p = trainer.preprocess
    config = trainer.config
    prefix = "" if weights == "model" else weights + "_"
    quantization = getattr(trainer.model, "quantization", {})
    return {
        "model": config.model,
        "num_classes": trainer.num_classes,
        "classes": trainer.classes,
        "epoch": record["epoch"],
        "top1": record.get(prefix + "val_top1"),
        "top5": record.get(prefix + "val_top5"),
        "weights": weights,
        "preprocess": {"input_size": p.input_size, "resize_size": p.resize_size,
                       "interpolation": p.interpolation, "color_order": p.color_order,
                       "mean": list(p.mean), "std": list(p.std)},
        "model_kwargs": ckpt.jsonable(config.model_kwargs),
        "weights_file": ckpt.BEST,
        **({"qat": True, "quantization": ckpt.jsonable(quantization)} if config.qat else {}),
    }


def write_json(trainer, name: str, value) -> str:
    """``value`` as JSON in the run folder (atomically); returns the path."""
    path = os.path.join(trainer.output, name)
    atomic_write_text(path, json.dumps(ckpt.jsonable(value), indent=2) + "\n")
    return path


class History(Callback):
    """The run's record: ``config.json`` at the start, ``history.json`` after every epoch,
    ``curves.png`` once the last epoch is done (``plot``)."""

    def on_fit_start(self, trainer) -> None:
        if trainer.main:
            write_json(trainer, CONFIG, trainer.config.as_dict())

    def on_epoch_end(self, trainer, record: dict) -> None:
        if trainer.main:
            write_json(trainer, HISTORY, {"model": trainer.config.model, "classes": trainer.classes,
                                          "epochs": trainer.history})

    def on_fit_end(self, trainer) -> None:
        config = trainer.config
        if not (trainer.main and config.plot and trainer.history and trainer.epoch == config.epochs):
            return
        from .plot import plot_history

        root = os.path.normpath(trainer.data.train_root)
        if os.path.basename(root) == "train":
            root = os.path.dirname(root)
        plot_history(trainer.history, os.path.join(trainer.output, CURVES),
                     title=f"{config.model} on {os.path.basename(root)}")


def log_line(path: str, message: str) -> None:
    """Print ``message`` (above any progress bar) and append it to the log file ``path``."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stdout)
    sys.stdout.flush()
    with open(path, "a", encoding="utf-8") as f:
        f.write(message + "\n")


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Log(Callback):
    """``log.txt`` and the console (through :meth:`Trainer.log`, rank 0): the run's description
    at its first start, a line every ``log_every`` steps, one per epoch, and the summary."""

    def __init__(self, config):
        self.started = time.perf_counter()

    def on_fit_start(self, trainer) -> None:
        self.started = time.perf_counter()
        if trainer.epoch == 0:
            trainer.log(trainer.describe())

    def after_step(self, trainer, loss: float, lr: float) -> None:
        every = trainer.config.log_every
        if every and trainer.step % every == 0:
            trainer.log(f"  step {trainer.step}: loss {loss:.4f} lr {lr:.4g}")

    def on_epoch_end(self, trainer, record: dict) -> None:
        trainer.log(epoch_line(trainer, record))

    def on_fit_end(self, trainer) -> None:
        best = "no validation data" if trainer.best_top1 is None else \
            f"best top-1 {100 * trainer.best_top1:.2f}% at epoch {trainer.best_epoch}"
        trainer.log(f"done: {trainer.epoch} epochs, {best}; {format_seconds(time.perf_counter() - self.started)} "
                    f"in this run; files in {trainer.output}")


def epoch_line(trainer, r: dict) -> str:
    """The log line of the epoch whose history record is ``r``."""
    epochs = trainer.config.epochs
    remaining = (epochs - trainer.epoch) * np.mean([h["seconds"] for h in trainer.history[-3:]])
    line = f"epoch {r['epoch']:>3}/{epochs}  train loss {r['train_loss']:.4f} acc {100 * r['train_acc']:6.2f}%"
    if "val_top1" in r:
        line += (f" | val loss {r['val_loss']:.4f} top-1 {100 * r['val_top1']:6.2f}% top-5 "
                 f"{100 * r['val_top5']:6.2f}%")
    if "ema_val_top1" in r:
        line += f" | EMA top-1 {100 * r['ema_val_top1']:6.2f}%"
    line += f" | lr {r['lr']:.4g}  {r['images_per_second']:.1f} img/s  {r['seconds']:.1f}s"
    if trainer.epoch < epochs:
        line += f"  eta {format_seconds(remaining)}"
    if "best_weights" in r:  # the best so far
        line += "  *best" + (" (EMA)" if r["best_weights"] == "ema" else "")
    return line


_OPTIMIZER_NAMES = {"sgd": "SGD", "adamw": "AdamW"}


def describe_run(trainer) -> str:
    """The run's description (the first lines of its log): model, data, optimizer, recipe, device."""
    c = trainer.config
    trainable = sum(int(np.prod(p.shape)) for p in trainer.params)
    total = sum(int(np.prod(p.shape)) for p in trainer.model.parameters())
    val = len(trainer.data.val) if trainer.data.val is not None else 0
    groups = ", ".join(f"{g['name']} x{g['lr_mult']:g} wd {g['weight_decay']:g} ({len(g['params'])})"
                       for g in trainer.groups)
    settings = f"momentum {c.momentum}" if c.optimizer == "sgd" else f"betas {c.betas} eps {c.eps:g}"
    if c.layer_decay is not None:
        settings += f" layer decay {c.layer_decay:g}"
    return (f"{c.model}: {trainer.num_classes} classes, {trainable:,} of {total:,} parameters trained"
            f"{'' if c.freeze_stages is None else f' (stem + {c.freeze_stages} stage(s) frozen)'}\n"
            f"data: {len(trainer.data.train)} training images ({trainer.data.train_root}), {val} validation images"
            f"{_excluded_note(trainer.data)}; "
            f"{c.input_size}px, batch {c.batch_size} x {trainer.world} process(es), "
            f"{trainer.steps_per_epoch} steps/epoch\n"
            f"{_OPTIMIZER_NAMES.get(c.optimizer, c.optimizer)} lr {c.lr * trainer.world:g} (x{trainer.world}) "
            f"{settings} groups: {groups}; {c.schedule} "
            f"schedule, {c.warmup_epochs:g} warm-up epoch(s), label smoothing {c.label_smoothing:g}\n"
            f"{recipe_summary(c)}\n"
            f"device {trainer.device}, fast conv backward {trainer.cpu_engine.description}, "
            f"DTR {'on' if c.dtr else 'off'}, seed {c.seed}, output {trainer.output}")


def _excluded_note(data) -> str:
    ex = getattr(data, "excluded", None)
    if not ex:
        return ""
    return (f" ({ex['train']} training and {ex['val']} validation images left out, of {ex['listed']} listed in "
            f"{ex['file']})")


def default_callbacks(config, extra: Sequence[Callback] = ()) -> List[Callback]:
    """The run's callbacks in the order they are called: the run's own that compute (the CPU
    engine, the EMA), then ``extra`` (a user's), then those that write (checkpoints, the run
    record, the log), so what a user's callback adds to an epoch's record or keeps in its state
    is in that epoch's files."""
    return [CpuEngineCallback(config), EmaCallback(config), *extra, Checkpoints(config), History(), Log(config)]
