"""The training loop: :class:`Trainer` and :func:`train`.

One process (CPU or one GPU) or several GPUs (``config.gpus``, through
:mod:`megzoo.train.distributed`) run the same code:

1. pick the device (on CPU, MegEngine's ``multithread`` device with one thread per core) and
   seed everything from ``config.seed``;
2. read the image folders and build the transforms and loaders (:mod:`megzoo.train.data`), build
   the model (:mod:`megzoo.train.model_setup`: ``pretrained=`` weights, new ``num_classes``, the
   QAT form, the stem and the first stages frozen if asked);
3. the optimizer ``config.optimizer`` names (:func:`megzoo.train.optim.build_optimizer`) over
   parameter groups (backbone / head learning rate, optional weight-decay exemption of BatchNorm
   and bias parameters, optional layer-wise decay), a ``GradManager`` attached to the trainable
   parameters (averaging gradients over GPUs);
4. every epoch: train with warm-up + step/cosine learning rate (batches mixed by mixup/cutmix
   when asked, :mod:`megzoo.train.mixing`; gradients clipped when asked), evaluate.

Everything around that loop is a callback (:mod:`megzoo.train.callbacks`, called in order): the
CPU engine, the weights' moving average, ``last.pkl`` / ``best.pkl`` + ``best.json``,
``config.json`` / ``history.json`` / ``curves.png`` and the log.

A run resumed from ``last.pkl`` continues exactly: the same batches, augmentations and updates as
an uninterrupted run with the same seed (every epoch is seeded from ``(seed, epoch, rank)``); it
refuses a changed plan (:func:`megzoo.train.checkpoint.check_plan`).
"""
import contextlib
import os
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence

import megengine
import megengine.functional as F
import megengine.optimizer as optim
import numpy as np
from megengine.autodiff import GradManager

from ..device import is_cpu_device, poller_yields, select_device
from ..host import lock_folder, usable_cpus
from ..metrics import log_softmax, topk_correct
from . import checkpoint as ckpt
from .callbacks import (CONFIG, CURVES, HISTORY, LOG, Callback, Checkpoints, CpuEngineCallback, EmaCallback,
                        default_callbacks, describe_run, log_line)
from .data import FolderData, build_folder_data, seed_epoch, training_pipeline, training_preprocess
from .distributed import all_reduce_sum, allreduce_callback, broadcast_module, launch, rank, world_size
from .guards import check_loss, check_weights, open_output
from .mixing import soft_cross_entropy
from .model_setup import move_module, training_model
from .optim import build_optimizer, inplace_update, param_groups
from .recipe import TrainConfig, learning_rate

__all__ = ["Trainer", "TrainResult", "train", "setup_device", "move_module", "HISTORY", "CURVES", "LOG", "CONFIG"]


@dataclass
class TrainResult:
    """What :func:`train` returns (accuracies are fractions in [0, 1])."""
    output: str  #: the run folder
    epochs: int  #: epochs completed (including those of earlier, resumed runs)
    best_top1: Optional[float]  #: best validation top-1 (None without validation data)
    best_epoch: Optional[int]
    last: Dict[str, Any] = field(default_factory=dict)  #: the last epoch's history record
    seconds: float = 0.0  #: wall time of this call
    best_path: Optional[str] = None  #: best.pkl (plain state dict), or None
    last_path: Optional[str] = None  #: last.pkl (training state)
    plot_path: Optional[str] = None
    history_path: Optional[str] = None

    def as_dict(self) -> dict:
        return asdict(self)


def setup_device(device: Optional[str] = None, cpu_threads: Optional[int] = None) -> str:
    """Set MegEngine's default device for training and return it. ``device`` as for
    :func:`megzoo.device.select_device`; when that is the CPU (``cpu``/``cpux``, or no GPU),
    MegEngine's ``multithread<T>:0`` device is used with ``cpu_threads`` threads (default: the
    cores this process may use), which runs each operator on several cores. An explicit
    ``cpu0``/``multithread...`` name is kept as given."""
    name = select_device(device)
    explicit = (device or os.environ.get("MEGZOO_DEVICE") or "").strip().lower()
    if name == "cpux" and explicit in ("", "cpu", "cpux"):
        threads = cpu_threads or usable_cpus()
        name = f"multithread{threads}:0" if threads > 1 else "cpu0"
        megengine.set_default_device(name)
    return name


class Trainer:
    """A training run configured by :class:`TrainConfig` (see the module docstring).

    ``module`` (a built MegEngine module) and ``data`` (:class:`FolderData`) replace what the
    config would build; a custom module needs ``forward(x) -> logits`` and may provide
    ``trainable_parameters()`` and ``get_classifier()`` (as megzoo models do); ``config.model``
    then only names it. ``callbacks`` (:class:`~megzoo.train.callbacks.Callback`) are called after
    the engine and the EMA and before the checkpoints, run record and log
    (:func:`~megzoo.train.callbacks.default_callbacks`).
    """
    def __init__(self, config: TrainConfig, module=None, data: Optional[FolderData] = None,
                 callbacks: Sequence[Callback] = ()):
        self.config = config
        self.rank, self.world = rank(), world_size()
        self.main = self.rank == 0
        self.output = os.path.abspath(config.output)
        self.callbacks: List[Callback] = default_callbacks(config, callbacks)
        self._lock = open_output(self, module, (ckpt.LAST, ckpt.BEST, ckpt.BEST_META, HISTORY, CONFIG, CURVES))
        last = os.path.join(self.output, ckpt.LAST)
        self.resume_state = ckpt.read_resume_state(config, last)  # refuses a changed plan
        self._setup_device_and_seeds()
        self._setup_data(data)
        self._setup_model(module)
        self._setup_optimizer()
        self._setup_loaders()
        self.epoch = 0  # epochs completed
        self.step = 0
        self.history: List[dict] = []
        if self.resume_state is not None:
            self._restore(self.resume_state, last)
        self.resume_state = None

    def _callback(self, kind: type):
        return next(c for c in self.callbacks if isinstance(c, kind))

    @property
    def cpu_engine(self) -> CpuEngineCallback:
        return self._callback(CpuEngineCallback)

    @property
    def fast_conv(self) -> Optional[str]:
        """What the CPU engine runs (e.g. ``auto, BLAS forward, fused blocks``), or None when off."""
        return self.cpu_engine.description if self.cpu_engine.running else None

    @property
    def ema(self):
        """The weights' moving average (:class:`~megzoo.train.ema.WeightEma`), or None."""
        return self._callback(EmaCallback).ema

    @property
    def best_top1(self) -> Optional[float]:
        return self._callback(Checkpoints).best_top1

    @property
    def best_epoch(self) -> Optional[int]:
        return self._callback(Checkpoints).best_epoch

    def close(self) -> None:
        """Release the output folder (a later run may use it while this object lives)."""
        if self._lock is not None:
            self._lock.release()

    def _call(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    # -- construction -------------------------------------------------------------------------
    def _setup_device_and_seeds(self) -> None:
        """The device (a distributed launcher has chosen it already), DTR if asked, the seeds."""
        config = self.config
        if self.world > 1:  # the launcher has set this process's GPU
            self.device = megengine.get_default_device()
        else:
            self.device = setup_device(config.device, config.cpu_threads)
        if config.dtr:
            import megengine.dtr as dtr

            if config.dtr_threshold:
                dtr.eviction_threshold = config.dtr_threshold
            dtr.enable()
            if is_cpu_device(self.device) and self.main:
                self.log("warning: DTR on a CPU device: in megzoo's measurements it made training several times "
                         "slower and raised peak memory; it is meant for GPU memory (docs/training-speed.md)")
        megengine.random.seed(config.seed)
        np.random.seed(config.seed)

    def _setup_data(self, data: Optional[FolderData]) -> None:
        """The image folders (given, or read from the config) and the class list."""
        config = self.config
        self.data = data if data is not None else build_folder_data(config.data, config.train_dir, config.val_dir,
                                                                     config.val_split, config.seed, config.exclude)
        self.classes = list(self.data.classes)
        self.num_classes = config.num_classes or len(self.classes)
        if len(self.classes) > self.num_classes:
            raise ValueError(f"the data has {len(self.classes)} classes but num_classes={self.num_classes}")

    def _setup_model(self, module) -> None:
        """The model (:func:`~megzoo.train.model_setup.training_model`), the same initial weights on
        every process; then the callbacks' ``on_model`` (the CPU engine, the EMA)."""
        self.model = training_model(self.config, module, self.num_classes, self.resume_state is not None,
                                    self.log if self.main else None)
        broadcast_module(self.model)
        self._call("on_model")

    def _setup_optimizer(self) -> None:
        """Parameter groups, the gradient manager (all-reduced over processes), the optimizer."""
        config = self.config
        self.groups = param_groups(self.model, config)
        self.params = [p for g in self.groups for p in g["params"]]
        callback = allreduce_callback()
        self.gm = GradManager().attach(self.params, callbacks=[callback] if callback else None)
        self.optimizer = build_optimizer(self.groups, config, lr=config.lr * self.world)

    def _setup_loaders(self) -> None:
        """Preprocessing (the weights' normalisation), transforms, mixing and the data loaders."""
        self.preprocess = training_preprocess(self.config, self.model, self.resume_state)
        pipe = training_pipeline(self.config, self.data, self.preprocess, self.num_classes, self.world, self.rank)
        self.train_transform, self.eval_transform, self.mixer = pipe.train_transform, pipe.eval_transform, pipe.mixer
        self.train_loader, self.val_loader = pipe.train_loader, pipe.val_loader
        self.steps_per_epoch = pipe.steps_per_epoch

    def _restore(self, state: dict, path: str) -> None:
        """Continue from a training state (its plan already checked): weights, optimizer, counters,
        history, random generators, and each callback's part."""
        self.model.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        self.history = list(state.get("history") or [])
        ckpt.set_rng_state(state["rng"])
        notes = "".join(f"; {note}" for c in self.callbacks if (note := c.load_state_dict(state)))
        self.log(f"resumed from {path}: {self.epoch} epoch(s) done, step {self.step}{notes}")

    # -- output ----------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        """Print ``message`` and append it to ``log.txt`` (rank 0 only)."""
        if self.main:
            log_line(os.path.join(self.output, LOG), message)

    def state_dict(self) -> dict:
        """The training state ``last.pkl`` holds: the loop's, and each callback's entries."""
        state = {
            "format": ckpt.FORMAT, "version": ckpt.VERSION,
            "epoch": self.epoch, "step": self.step,
            "model": ckpt.state_dict_numpy(self.model),
            "optimizer": ckpt.optimizer_state_numpy(self.optimizer),
            "rng": ckpt.rng_state(),
            "config": ckpt.jsonable(self.config.as_dict()),
            "classes": self.classes,
            "history": self.history,
            "preprocess": ckpt.jsonable(asdict(self.preprocess)),
        }
        for callback in self.callbacks:
            state.update(callback.state_dict())
        return state

    # -- the loop ---------------------------------------------------------------------------------
    def set_lr(self, step: int) -> float:
        lr = learning_rate(self.config, step, self.steps_per_epoch, self.world)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
        return lr

    def train_step(self, image: np.ndarray, label: np.ndarray):
        """One optimisation step; returns (loss, logits) as numpy. With mixup/cutmix the batch
        is mixed first and the loss is the soft-target cross-entropy of the mixed targets."""
        config = self.config
        if self.mixer.enabled:
            image, targets = self.mixer(image, label)
        x = megengine.Tensor(image, dtype="float32")
        with self.gm:
            logits = self.model(x)
            if self.mixer.enabled:
                loss = soft_cross_entropy(logits, megengine.Tensor(targets, dtype="float32"))
            else:
                loss = F.nn.cross_entropy(logits, megengine.Tensor(label, dtype="int32"),
                                          label_smooth=config.label_smoothing)
            self.gm.backward(loss)
        if config.clip_grad_norm is not None:
            optim.clip_grad_norm(self.params, config.clip_grad_norm)
        with inplace_update():
            self.optimizer.step().clear_grad()
        return float(loss.item()), logits.numpy()

    def train_epoch(self) -> dict:
        """Train one epoch (``self.epoch`` is the 0-based index of it); returns its statistics."""
        from tqdm import tqdm

        config = self.config
        seed_epoch(self.train_loader, config.seed, self.epoch, self.rank)
        self.model.train()
        images_per_step = config.batch_size * self.world
        bar = tqdm(total=self.steps_per_epoch * images_per_step, unit="img", leave=False, dynamic_ncols=True,
                   desc=f"epoch {self.epoch + 1}/{config.epochs}",
                   disable=None if config.progress and self.main else True,  # None: only on a terminal
                   mininterval=0.5)
        loss_sum = correct = seen = 0.0
        lr = self.set_lr(self.step)
        self._call("on_epoch_start")
        start = time.perf_counter()
        try:
            for i, (image, label) in enumerate(self.train_loader):
                if i >= self.steps_per_epoch:
                    break
                lr = self.set_lr(self.step)
                loss, logits = self.train_step(image, label)
                check_loss(self, loss)  # stops at a non-finite loss, naming the step and the fix
                n = len(label)
                loss_sum += loss * n
                correct += float((logits.argmax(axis=1) == np.asarray(label)).sum())
                seen += n
                self.step += 1
                self._call("after_step", loss, lr)
                elapsed = time.perf_counter() - start
                bar.update(images_per_step)
                bar.set_postfix_str(f"loss {loss_sum / seen:.4f} acc {100 * correct / seen:.2f}% "
                                    f"{seen * self.world / max(elapsed, 1e-9):.1f} img/s lr {lr:.4g}", refresh=False)
        finally:
            bar.close()
        seconds = time.perf_counter() - start
        return {"train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1), "lr": lr,
                "images_per_second": seen * self.world / max(seconds, 1e-9), "train_seconds": seconds}

    def evaluate(self, loader=None) -> Dict[str, float]:
        """Loss, top-1 and top-5 (fractions) over the validation data (all ranks)."""
        from tqdm import tqdm

        loader = loader or self.val_loader
        if loader is None:
            return {}
        self.model.eval()
        totals = np.zeros(4)  # images, loss sum, top-1, top-k
        bar = tqdm(total=len(loader.sampler.indices or []), unit="img", leave=False, dynamic_ncols=True,
                   desc="  validation", disable=None if self.config.progress and self.main else True,
                   mininterval=0.5)
        try:
            with contextlib.ExitStack() as stack:  # the callbacks' contexts (the CPU engine's host plans)
                for callback in self.callbacks:
                    stack.enter_context(callback.evaluation(self))
                for image, label in loader:
                    logits = self.model(megengine.Tensor(image, dtype="float32")).numpy()
                    label = np.asarray(label, dtype=np.int64)
                    logp = log_softmax(logits)
                    totals += (len(label), -logp[np.arange(len(label)), label].sum(),
                               *topk_correct(logits, label, (1, 5)))
                    bar.update(len(label))
        finally:
            bar.close()
            self.model.train()
        n, loss, top1, top5 = all_reduce_sum(list(totals))
        return {"val_loss": loss / max(n, 1), "val_top1": top1 / max(n, 1), "val_top5": top5 / max(n, 1),
                "val_images": int(n)}

    def fit(self, until_epoch: Optional[int] = None) -> TrainResult:
        """Train from ``self.epoch`` to ``config.epochs`` (or stop after epoch ``until_epoch``,
        as if interrupted there: the schedule is still that of ``config.epochs``); returns the
        :class:`TrainResult`."""
        config = self.config
        stop = config.epochs if until_epoch is None else min(int(until_epoch), config.epochs)
        start = time.perf_counter()
        self._call("on_fit_start")
        # MegEngine's poller thread wakes thousands of times a second; on a CPU it would take cores from the
        # BLAS convolutions (docs/training-speed.md)
        with poller_yields() if is_cpu_device(self.device) else contextlib.nullcontext():
            while self.epoch < stop:
                self.run_epoch()
        self._call("on_fit_end")
        return self.result(time.perf_counter() - start)

    def run_epoch(self) -> dict:
        """Train epoch ``self.epoch + 1``, evaluate it when due; returns its history record."""
        config = self.config
        epoch_start = time.perf_counter()
        record: Dict[str, Any] = {"epoch": self.epoch + 1}
        record.update(self.train_epoch())
        check_weights(self)  # nothing non-finite is evaluated or saved
        if (self.epoch + 1) % config.eval_every == 0 or self.epoch + 1 == config.epochs:
            record.update(self.evaluate())
            self._call("on_validation", record)
        self.epoch += 1
        record["seconds"] = time.perf_counter() - epoch_start
        self.history.append(record)
        self._call("on_epoch_end", record)
        return record

    def result(self, seconds: float = 0.0, plot_path: Optional[str] = None) -> TrainResult:
        best = os.path.join(self.output, ckpt.BEST)
        plot = plot_path or os.path.join(self.output, CURVES)
        return TrainResult(output=self.output, epochs=self.epoch, best_top1=self.best_top1, best_epoch=self.best_epoch,
                           last=dict(self.history[-1]) if self.history else {}, seconds=seconds,
                           best_path=best if os.path.isfile(best) else None,
                           last_path=os.path.join(self.output, ckpt.LAST),
                           plot_path=plot if os.path.isfile(plot) else None,
                           history_path=os.path.join(self.output, HISTORY))

    def describe(self) -> str:
        """The run's description, as its log starts (:func:`~megzoo.train.callbacks.describe_run`)."""
        return describe_run(self)


def _worker(config_dict: dict) -> dict:
    return Trainer(TrainConfig.from_dict(config_dict)).fit().as_dict()


def train(config: Optional[TrainConfig] = None, *, module=None, data: Optional[FolderData] = None,
          **overrides) -> TrainResult:
    """Run a training (see the module docstring). ``config`` fields may be given or overridden
    as keywords: ``train(model="resnet18", data="digits/", epochs=30, input_size=32)``.
    ``module``/``data`` replace the model and datasets the config builds (one process only)."""
    if config is None:
        config = TrainConfig(**overrides)
    elif overrides:
        if "recipe" in overrides and overrides["recipe"] != config.recipe:
            raise ValueError("a TrainConfig's recipe values are resolved when it is built: pass recipe= to "
                             "TrainConfig(...) (or to train() without a config), not as an override of one")
        config = replace(config, **overrides)
    if config.gpus > 1 and world_size() == 1:
        if module is not None or data is not None:
            raise ValueError("with gpus > 1 every process builds its own model and data: pass them through the config")
        start = time.perf_counter()
        with lock_folder(config.output):  # the processes' rank 0 writes there; a second run is refused
            results = launch(_worker, config.gpus, config.as_dict())
        result = TrainResult(**results[0])
        result.seconds = time.perf_counter() - start
        return result
    return Trainer(config, module=module, data=data).fit()
