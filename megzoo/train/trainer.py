"""The training loop: :class:`Trainer` and :func:`train`.

One process (CPU or one GPU) or several GPUs (``config.gpus``, through
:mod:`megzoo.train.distributed`) run the same code:

1. pick the device (on CPU, MegEngine's ``multithread`` device with one thread per core) and
   seed everything from ``config.seed``;
2. read the image folders (:mod:`megzoo.train.data`), build the model (``pretrained=`` weights,
   new ``num_classes``), freeze the stem and the first stages if asked, give its convolutions the
   fast CPU backward pass (:mod:`megzoo.train.fast_conv`) and its residual blocks the host
   implementation (:mod:`megzoo.train.fused_blocks`);
3. SGD with momentum over parameter groups (backbone / head learning rate, optional weight-decay
   exemption of BatchNorm and bias parameters), a ``GradManager`` attached to the trainable
   parameters (averaging gradients over GPUs);
4. every epoch: train with warm-up + step/cosine learning rate (batches mixed by mixup/cutmix
   when asked, :mod:`megzoo.train.mixing`; gradients clipped when asked; the weights' moving
   average updated, :mod:`megzoo.train.ema`), evaluate (the model and its average), write
   ``last.pkl`` (resumable), ``best.pkl`` + ``best.json`` when the top-1 improved (of the model
   or of its average, whichever is better), ``history.json`` and a log line; at the end
   ``curves.png``.

A run resumed from ``last.pkl`` continues exactly: the same batches, augmentations and updates as
an uninterrupted run with the same seed (every epoch is seeded from ``(seed, epoch, rank)``).
"""
import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, List, Optional

import megengine
import megengine.functional as F
import megengine.optimizer as optim
import numpy as np
from megengine.autodiff import GradManager

from ..device import is_cpu_device, move_tensors, poller_yields, select_device
from ..host import atomic_write_text, lock_folder, usable_cpus
from ..metrics import log_softmax, topk_correct
from ..registry import get_model
from ..transforms import eval_transform, resolve_preprocess, train_transform
from . import checkpoint as ckpt
from .data import FolderData, build_folder_data, eval_loader, seed_epoch, train_loader
from .distributed import all_reduce_sum, allreduce_callback, broadcast_module, launch, rank, world_size
from .fast_conv import enable as enable_fast_conv
from .fused_blocks import enable as enable_fused_blocks, host_evaluation
from .guards import check_loss, check_weights, open_output
from .ema import WeightEma
from .mixing import BatchMixer, soft_cross_entropy
from .optim import inplace_update, param_groups
from .recipe import TrainConfig, learning_rate, recipe_summary
from .workspace import WORKSPACE

__all__ = ["Trainer", "TrainResult", "train", "setup_device", "move_module", "HISTORY", "CURVES", "LOG", "CONFIG"]

HISTORY = "history.json"
CURVES = "curves.png"
LOG = "log.txt"
CONFIG = "config.json"


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


def move_module(module, device: Optional[str] = None) -> int:
    """Put ``module``'s parameters and buffers on ``device`` (default: MegEngine's current default
    device) in place (the same Parameter objects); returns how many were moved."""
    return len(move_tensors(list(module.parameters()) + list(module.buffers()), device))


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    return repr(value)


def _format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Trainer:
    """A training run configured by :class:`TrainConfig` (see the module docstring).

    ``module`` (a built MegEngine module) and ``data`` (:class:`FolderData`) replace what the
    config would build; a custom module needs ``forward(x) -> logits`` and may provide
    ``trainable_parameters()`` and ``get_classifier()`` (as megzoo models do); ``config.model``
    then only names it.
    """
    def __init__(self, config: TrainConfig, module=None, data: Optional[FolderData] = None):
        self.config = config
        self.rank, self.world = rank(), world_size()
        self.main = self.rank == 0
        self.output = os.path.abspath(config.output)
        self._log_file = os.path.join(self.output, LOG)
        self._lock = open_output(self, module, (ckpt.LAST, ckpt.BEST, ckpt.BEST_META, HISTORY, CONFIG, CURVES))
        self._setup_device_and_seeds()
        self._setup_data(data)
        last = os.path.join(self.output, ckpt.LAST)
        self.resume_state = ckpt.load_training_state(last) if config.resume and os.path.isfile(last) else None
        self._setup_model(module)
        self._setup_optimizer()
        self._setup_loaders()
        self.epoch = 0  # epochs completed
        self.step = 0
        self.best_top1: Optional[float] = None
        self.best_epoch: Optional[int] = None
        self.history: List[dict] = []
        if self.resume_state is not None:
            self._restore(self.resume_state, last)
        self.resume_state = None

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
                         "slower and raised peak memory; it is meant for GPU memory (docs/training.md)")
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
        """The model (given or built) on the device, frozen stages, the fast CPU convolutions,
        the same initial weights on every process."""
        config = self.config
        self.model = module if module is not None else self._build_model()
        if config.qat:
            from ..quantization import prepare_qat

            if config.freeze_stages is not None:
                raise ValueError("freeze_stages does not combine with qat (the fused int8 form has no stages to freeze)")
            self.model = prepare_qat(self.model)  # fused and fake-quantized (a copy of the float model)
        move_module(self.model)  # a module built before the device was chosen
        if config.freeze_stages is not None:
            if not hasattr(self.model, "freeze"):
                raise ValueError("freeze_stages needs a megzoo model (with .freeze())")
            self.model.freeze(config.freeze_stages)
        self.fast_conv = None
        if config.fast_conv != "off" and is_cpu_device(self.device) and not config.qat:  # QAT: MegEngine's own
            if enable_fast_conv(self.model, method=config.fast_conv, forward=config.fast_conv_forward):
                self.fast_conv = config.fast_conv + (", BLAS forward" if config.fast_conv_forward == "blas" else "")
            if config.fused_blocks and config.fast_conv_forward == "blas" and enable_fused_blocks(self.model):
                self.fast_conv = (self.fast_conv or config.fast_conv) + ", fused blocks"
        broadcast_module(self.model)
        self.ema = WeightEma(self.model, config.ema_decay, config.ema_steps) if config.ema_decay > 0 else None

    def _setup_optimizer(self) -> None:
        """Parameter groups, the gradient manager (all-reduced over processes) and SGD."""
        config = self.config
        self.groups = param_groups(self.model, config)
        self.params = [p for g in self.groups for p in g["params"]]
        callback = allreduce_callback()
        self.gm = GradManager().attach(self.params, callbacks=[callback] if callback else None)
        self.optimizer = optim.SGD(self.groups, lr=config.lr * self.world, momentum=config.momentum,
                                   nesterov=config.nesterov, weight_decay=config.weight_decay)

    def _setup_loaders(self) -> None:
        """Preprocessing (the weights' normalisation), transforms and the data loaders."""
        config = self.config
        self.preprocess = self._preprocess(self.resume_state)
        p = self.preprocess
        from ..augment import policy_transform

        self.train_transform = train_transform(config.input_size, scale=config.crop_scale, hflip=config.hflip,
                                               color_jitter=config.color_jitter, mean=p.mean, std=p.std,
                                               color_order=p.color_order, interpolation=p.interpolation,
                                               augment=policy_transform(config.augment, config.randaugment),
                                               random_erasing=config.random_erasing)
        self.mixer = BatchMixer(self.num_classes, config.mixup, config.cutmix, config.label_smoothing)
        self.eval_transform = eval_transform(p)
        self.train_loader = train_loader(self.data.train, self.train_transform, config.batch_size, config.workers,
                                         self.world, self.rank)
        self.val_loader = None
        if self.data.val is not None and len(self.data.val) > 0:
            self.val_loader = eval_loader(self.data.val, self.eval_transform, config.eval_batch_size,
                                          config.workers, self.world, self.rank)
        self.steps_per_epoch = len(self.train_loader.sampler)
        if config.steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, config.steps_per_epoch)

    def _build_model(self):
        config = self.config
        pretrained = config.pretrained
        if self.resume_state is not None or pretrained in (None, False, ""):
            pretrained = False  # resuming: the checkpoint's weights replace anything loaded here
        kwargs = dict(config.model_kwargs)
        if config.drop_path > 0:
            if config.qat:
                raise ValueError("drop_path does not combine with qat (the fused int8 blocks have no residual branch "
                                 "to drop); fine-tune the int8 form without it")
            kwargs["drop_path_rate"] = config.drop_path
        try:
            model = get_model(config.model, pretrained=pretrained, num_classes=self.num_classes, **kwargs)
        except TypeError as error:
            if "drop_path_rate" not in str(error):
                raise
            raise ValueError(f"drop_path (stochastic depth) needs a model with residual blocks (the resnet, resnext "
                             f"and wide_resnet families); {config.model} has none: leave drop_path at 0") from None
        report = getattr(model, "load_report", None)
        if report is not None and self.main:
            self.log(str(report).splitlines()[0])
        return model

    def _preprocess(self, state: Optional[dict]):
        """The weights' normalisation (a resumed run keeps the one it started with), at the
        configured sizes."""

        if state is not None and state.get("preprocess"):
            saved = dict(state["preprocess"])
            record = resolve_preprocess({**saved, "mean": tuple(saved["mean"]), "std": tuple(saved["std"])})
        else:
            record = resolve_preprocess(self.model if hasattr(self.model, "model_name") else None)
        return replace(record, input_size=self.config.eval_size, resize_size=self.config.eval_resize)

    def _restore(self, state: dict, path: str) -> None:
        saved = state.get("config", {})
        if saved.get("model") != self.config.model and self.config.model:
            raise ValueError(f"{path} is a run of {saved.get('model')}, not {self.config.model}; "
                             "use another output folder or resume=False")
        if bool(saved.get("qat", False)) != bool(self.config.qat):
            kind = "quantization-aware (qat)" if saved.get("qat") else "float (not qat)"
            raise ValueError(f"{path} is a {kind} run, and this one is {'qat' if self.config.qat else 'not qat'}; "
                             "use another output folder (--output) or start afresh (--no-resume / resume=False)")
        self.model.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        self.best_top1 = state.get("best_top1")
        self.best_epoch = state.get("best_epoch")
        self.history = list(state.get("history") or [])
        ckpt.set_rng_state(state["rng"])
        note = ""
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        elif self.ema is not None:
            note = "; the weights' average starts from the resumed weights (the checkpoint has none)"
        if self.main:
            self.log(f"resumed from {path}: {self.epoch} epoch(s) done, step {self.step}{note}")

    # -- output ----------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        """Print ``message`` and append it to ``log.txt`` (rank 0 only)."""
        if not self.main:
            return
        from tqdm import tqdm

        tqdm.write(message, file=sys.stdout)
        sys.stdout.flush()
        with open(self._log_file, "a", encoding="utf-8") as f:
            f.write(message + "\n")

    def _meta(self, record: dict, weights: str = "model") -> dict:
        p = self.preprocess
        prefix = "ema_" if weights == "ema" else ""
        return {
            "model": self.config.model,
            "num_classes": self.num_classes,
            "classes": self.classes,
            "epoch": record["epoch"],
            "top1": record.get(prefix + "val_top1"),
            "top5": record.get(prefix + "val_top5"),
            "weights": weights,
            "preprocess": {"input_size": p.input_size, "resize_size": p.resize_size,
                           "interpolation": p.interpolation, "color_order": p.color_order,
                           "mean": list(p.mean), "std": list(p.std)},
            "model_kwargs": _jsonable(self.config.model_kwargs),
            "weights_file": ckpt.BEST,
            **({"qat": True, "quantization": _jsonable(getattr(self.model, "quantization", {}))} if self.config.qat else {}),
        }

    def _write_json(self, name: str, value) -> str:
        path = os.path.join(self.output, name)
        atomic_write_text(path, json.dumps(_jsonable(value), indent=2) + "\n")
        return path

    def _training_state(self) -> dict:
        return {
            "format": ckpt.FORMAT, "version": ckpt.VERSION,
            "epoch": self.epoch, "step": self.step,
            "best_top1": self.best_top1, "best_epoch": self.best_epoch,
            "model": ckpt.state_dict_numpy(self.model),
            "optimizer": ckpt.optimizer_state_numpy(self.optimizer),
            "rng": ckpt.rng_state(),
            "config": _jsonable(self.config.as_dict()),
            "classes": self.classes,
            "history": self.history,
            "preprocess": _jsonable(asdict(self.preprocess)),
            "ema": self.ema.state_dict() if self.ema is not None else None,
        }

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

    def update_ema(self) -> None:
        """After step ``self.step`` (1-based): every ``ema_steps`` steps, average the weights
        into the EMA (copy them during the learning-rate warm-up)."""
        if self.ema is None or self.step % self.ema.steps:
            return
        warmup = int(round(self.config.warmup_epochs * self.steps_per_epoch))
        self.ema.update(self.model, copy=self.step <= warmup)

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
                self.update_ema()
                elapsed = time.perf_counter() - start
                bar.update(images_per_step)
                bar.set_postfix_str(f"loss {loss_sum / seen:.4f} acc {100 * correct / seen:.2f}% "
                                    f"{seen * self.world / max(elapsed, 1e-9):.1f} img/s lr {lr:.4g}", refresh=False)
                if config.log_every and self.step % config.log_every == 0:
                    self.log(f"  step {self.step}: loss {loss:.4f} lr {lr:.4g}")
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
            # with fused blocks on, the plans run on the host in eval mode too (to float rounding;
            # ResNet-18 at 32 px, batch 32: 0.65 s a batch with MegEngine's operators, 0.06 s:
            # benchmarks/bench_validation.py)
            with host_evaluation():
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
        if self.main:
            self._write_json(CONFIG, config.as_dict())
            if self.epoch == 0:
                self.log(self.describe())
        # MegEngine's poller thread wakes ~13,000 times a second; on a CPU it would take cores from the
        # BLAS convolutions (ResNet-18 step 6.8 -> 6.0 s with it yielding: docs/training.md)
        with poller_yields() if is_cpu_device(self.device) else contextlib.nullcontext():
            while self.epoch < stop:
                epoch_start = time.perf_counter()
                record: Dict[str, Any] = {"epoch": self.epoch + 1}
                record.update(self.train_epoch())
                check_weights(self)  # nothing non-finite is evaluated or saved
                evaluate = (self.epoch + 1) % config.eval_every == 0 or self.epoch + 1 == config.epochs
                if evaluate:
                    record.update(self.evaluate())
                    if self.ema is not None and self.val_loader is not None:
                        with self.ema.applied(self.model):
                            record.update({"ema_" + k: v for k, v in self.evaluate().items()})
                self.epoch += 1
                record["seconds"] = time.perf_counter() - epoch_start
                weights = "ema" if record.get("ema_val_top1", -1.0) > record.get("val_top1", -1.0) else "model"
                top1 = record.get("ema_val_top1" if weights == "ema" else "val_top1")
                improved = top1 is not None and (self.best_top1 is None or top1 > self.best_top1)
                if improved:
                    self.best_top1, self.best_epoch = top1, self.epoch
                    record["best_weights"] = weights
                self.history.append(record)
                if self.main:
                    if improved:
                        with self.ema.applied(self.model) if weights == "ema" else contextlib.nullcontext():
                            ckpt.save_weights(self.model, os.path.join(self.output, ckpt.BEST),
                                              self._meta(record, weights))
                    ckpt.atomic_save(self._training_state(), os.path.join(self.output, ckpt.LAST))
                    self._write_json(HISTORY, {"model": config.model, "classes": self.classes, "epochs": self.history})
                    self.log(self._epoch_line(record))
        WORKSPACE.clear()  # the host plans' free buffers (~1.5 GB for a ResNet-18 at 224 px) go back to the system
        plot_path = None
        if self.main and config.plot and self.history and self.epoch == config.epochs:
            from .plot import plot_history

            root = os.path.normpath(self.data.train_root)
            if os.path.basename(root) == "train":
                root = os.path.dirname(root)
            plot_path = plot_history(self.history, os.path.join(self.output, CURVES),
                                     title=f"{config.model} on {os.path.basename(root)}")
        seconds = time.perf_counter() - start
        result = self.result(seconds, plot_path)
        if self.main:
            best = "no validation data" if self.best_top1 is None else \
                f"best top-1 {100 * self.best_top1:.2f}% at epoch {self.best_epoch}"
            self.log(f"done: {self.epoch} epochs, {best}; {_format_seconds(seconds)} in this run; "
                     f"files in {self.output}")
        return result

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
        c = self.config
        trainable = sum(int(np.prod(p.shape)) for p in self.params)
        total = sum(int(np.prod(p.shape)) for p in self.model.parameters())
        val = len(self.data.val) if self.data.val is not None else 0
        groups = ", ".join(f"{g['name']} x{g['lr_mult']:g} wd {g['weight_decay']:g} ({len(g['params'])})"
                           for g in self.groups)
        return (f"{c.model}: {self.num_classes} classes, {trainable:,} of {total:,} parameters trained"
                f"{'' if c.freeze_stages is None else f' (stem + {c.freeze_stages} stage(s) frozen)'}\n"
                f"data: {len(self.data.train)} training images ({self.data.train_root}), {val} validation images"
                f"{self._excluded_note()}; "
                f"{c.input_size}px, batch {c.batch_size} x {self.world} process(es), "
                f"{self.steps_per_epoch} steps/epoch\n"
                f"SGD lr {c.lr * self.world:g} (x{self.world}) momentum {c.momentum} groups: {groups}; {c.schedule} "
                f"schedule, {c.warmup_epochs:g} warm-up epoch(s), label smoothing {c.label_smoothing:g}\n"
                f"{recipe_summary(c)}\n"
                f"device {self.device}, fast conv backward {self.fast_conv or 'off'}, DTR {'on' if c.dtr else 'off'}, "
                f"seed {c.seed}, output {self.output}")

    def _excluded_note(self) -> str:
        ex = getattr(self.data, "excluded", None)
        if not ex:
            return ""
        return (f" ({ex['train']} training and {ex['val']} validation images left out, of {ex['listed']} listed in "
                f"{ex['file']})")

    def _epoch_line(self, r: dict) -> str:
        remaining = (self.config.epochs - self.epoch) * np.mean([h["seconds"] for h in self.history[-3:]])
        line = (f"epoch {r['epoch']:>3}/{self.config.epochs}  train loss {r['train_loss']:.4f} acc "
                f"{100 * r['train_acc']:6.2f}%")
        if "val_top1" in r:
            line += (f" | val loss {r['val_loss']:.4f} top-1 {100 * r['val_top1']:6.2f}% top-5 "
                     f"{100 * r['val_top5']:6.2f}%")
        if "ema_val_top1" in r:
            line += f" | EMA top-1 {100 * r['ema_val_top1']:6.2f}%"
        line += f" | lr {r['lr']:.4g}  {r['images_per_second']:.1f} img/s  {r['seconds']:.1f}s"
        if self.epoch < self.config.epochs:
            line += f"  eta {_format_seconds(remaining)}"
        if self.best_epoch == r["epoch"]:
            line += "  *best" + (" (EMA)" if r.get("best_weights") == "ema" else "")
        return line


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
