"""The training recipe as data: :class:`TrainConfig` and the learning-rate schedule.

The defaults are MegEngine's reference ImageNet recipe for ResNet
(``MegEngine/Models``, ``official/vision/classification/resnet/train.py``): 90 epochs, batch 64
per GPU, SGD with momentum 0.9 and weight decay 1e-4, learning rate 0.025 per GPU (so 0.2 on 8
GPUs, batch 512), 5 warm-up epochs rising linearly from 0, then x0.1 at epochs 30, 60 and 80;
``RandomResizedCrop(224)`` + horizontal flip (+ colour jitter 0.4 for the models bigger than
ResNet-34); evaluation on the 224 centre crop of a 256 resize. The reference sums gradients
over GPUs and multiplies the weight decay by the number of GPUs; megzoo averages them and
multiplies the learning rate by the number of GPUs instead, which is the same update.

Recipes (``recipe``): the fields marked "recipe" below default to None, and ``__post_init__``
fills each one left None from :data:`RECIPES` (``"megengine"``, the reference above, or
``"tv2"``, torchvision's recipe of its ResNet-50 V2 weights); a value given explicitly wins.
The saved ``config.json`` holds the resolved values.
"""
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, List, Optional, Tuple, Union

from ..weights.catalog import WEIGHTS
from ..weights.limits import check_size

__all__ = ["TrainConfig", "REFERENCE_TOP1", "imagenet_recipe", "learning_rate", "config_fields", "FieldDoc", "RECIPES",
           "RECIPE_FIELDS", "recipe_summary"]

#: top-1 accuracy (%) on ImageNet-1k val of MegEngine's reference training of each architecture
#: (MegEngine/Models, official/vision/classification/resnet), the target of the recipe: read from
#: the weights catalogue, where the published figures live
REFERENCE_TOP1 = {w.arch: w.top1 for w in WEIGHTS.values() if w.tag == "megengine" and w.top1 is not None}

SCHEDULES = ("step", "cosine")
AUGMENTS = ("none", "ta_wide", "randaugment", "autoaugment")  # megzoo.augment.POLICIES (no import: layer order)
#: the CPU engine's choices (checked here, when the config is built, without importing the engine)
FAST_CONV_METHODS = ("auto", "blas", "swap", "gemm", "im2col", "native", "off")
FAST_CONV_FORWARDS = ("native", "blas")

#: the values of the recipe fields, per recipe. tv2 is torchvision's ResNet-50 V2 recipe
#: (80.858% top-1; references/classification, 8 GPUs x batch 128): 600 epochs, lr 0.5 per 1,024
#: images (linear scaling: here 0.5 x batch_size / 1024 per process), cosine after 5 warm-up
#: epochs, weight decay 2e-5 (none on norm layers), label smoothing 0.1, mixup 0.2, cutmix 1.0,
#: TrivialAugmentWide, random erasing 0.1, EMA every 32 steps (decay 0.99998 adjusted as
#: torchvision does), train crop 176, test resize 232 and crop 224 (both scaled with a given
#: input_size; below FIXRES_MIN_INPUT the crop stays at input_size and only the resize scales).
#: Left out: repeated augmentation (ra_sampler) and mixed precision.
RECIPES = {
    "megengine": {"epochs": 90, "batch_size": 64, "lr": 0.025, "weight_decay": 1e-4, "no_bn_decay": False,
                  "schedule": "step", "label_smoothing": 0.0, "input_size": 224, "augment": "none",
                  "random_erasing": 0.0, "mixup": 0.0, "cutmix": 0.0, "ema_decay": 0.0, "optimizer": "sgd"},
    "tv2": {"epochs": 600, "batch_size": 128, "weight_decay": 2e-5, "no_bn_decay": True, "schedule": "cosine",
            "label_smoothing": 0.1, "input_size": 176, "augment": "ta_wide", "random_erasing": 0.1, "mixup": 0.2,
            "cutmix": 1.0, "color_jitter": 0.0, "optimizer": "sgd"},
}
#: tv2 tests at a higher resolution than it trains (FixRes) only from this training crop (px) up: a
#: stride-32 network's last stage is then at least 4 cells wide. Below it the extra test pixels
#: change that map's size (1x1 -> 2x2 at 32 px: a digits ResNet-18 falls from 90.8% to 16%, see
#: docs/training-recipes.md), so the test crop stays at input_size and the resize alone keeps tv2's
#: object-size ratio 232/176 (the same digits model: 94.7%).
FIXRES_MIN_INPUT = 128
#: the recipe fields a recipe derives from the others (resolved in ``TrainConfig.__post_init__``)
RECIPE_RULES = {
    "megengine": {"eval_size": "input_size", "resize_size": "eval_size / 0.875",
                  "color_jitter": "0.4 above ResNet-34 at 64 px or more, else 0"},
    "tv2": {"lr": "0.5 x batch_size / 1024",
            "eval_size": f"input_size x 224 / 176 from {FIXRES_MIN_INPUT} px up, else input_size",
            "resize_size": "eval_size x 232 / 224; input_size x 232 / 176 when eval_size is input_size",
            "ema_decay": "1 - (1 - 0.99998) x processes x batch_size x ema_steps / epochs"},
}
TV2_EMA_DECAY = 0.99998


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved in the run folder as ``config.json``).

    Data: ``data`` is a folder holding ``train/`` and ``val/`` (one sub-folder per class in each,
    as ``megengine.data.dataset.ImageFolder`` reads them), or a folder of class sub-folders split
    into training and validation images by ``val_split``; ``train_dir``/``val_dir`` name the two
    folders directly.
    """

    recipe: str = field(default="megengine", metadata={"group": "recipe", "help": (
        "the defaults of the fields marked \"recipe\": megengine (MegEngine's reference ImageNet recipe) or tv2 "
        "(torchvision's ResNet-50 V2 recipe: TrivialAugment, mixup, cutmix, EMA, ...; docs/training-recipes.md)")})
    model: str = field(default="resnet50", metadata={"group": "model", "help": "registered model name (`megzoo list`)"})
    num_classes: Optional[int] = field(default=None, metadata={"group": "model", "help": (
        "classifier outputs (default: the number of class folders)")})
    pretrained: Union[bool, str, None] = field(default=None, metadata={"group": "model", "help": (
        "start from weights: True/'default', a tag (`megzoo info MODEL`), or a .pkl/.pth path or URL; the "
        "classifier is re-initialised when the number of classes differs")})
    qat: bool = field(default=False, metadata={"group": "model", "help": (
        "quantization-aware fine-tuning: train the int8 form (fake-quantized weights and activations) of the "
        "model, e.g. from --pretrained best.pkl with a low --lr; best.pkl then reloads as the int8 model "
        "(docs/quantization.md)")})
    freeze_stages: Optional[int] = field(default=None, metadata={"group": "model", "help": (
        "freeze the stem and the first N stages, their BatchNorm in inference mode (default: nothing)")})
    backbone_lr_mult: float = field(default=1.0, metadata={"group": "optimizer", "help": (
        "backbone learning rate = this x the head's (fine-tuning: 0.1)")})
    model_kwargs: dict = field(default_factory=dict, metadata={"group": "model", "help": (
        "more builder keywords (e.g. drop_rate); API only")})
    drop_path: float = field(default=0.0, metadata={"group": "model", "help": (
        "stochastic depth of the residual branches (ResNets): the last block's drop probability, rising linearly "
        "from 0")})
    data: Optional[str] = field(default=None, metadata={"group": "data", "help": (
        "folder with train/ and val/ (or class folders, with val_split)")})
    train_dir: Optional[str] = field(default=None, metadata={"group": "data", "help": (
        "training folder (instead of data)")})
    val_dir: Optional[str] = field(default=None, metadata={"group": "data", "help": "validation folder"})
    val_split: float = field(default=0.0, metadata={"group": "data", "help": (
        "hold out this fraction of each class when there is no validation folder")})
    exclude: Optional[str] = field(default=None, metadata={"group": "data", "help": (
        "a file listing images to leave out (one path per line, absolute or relative to the data folder), e.g. "
        "the exclude.txt of `megzoo clean`")})
    input_size: Optional[int] = field(default=None, metadata={"group": "data", "help": "recipe: training crop (px)"})
    eval_size: Optional[int] = field(default=None, metadata={"group": "data", "help": (
        "recipe: evaluation centre crop (px); larger than input_size for the FixRes effect")})
    resize_size: Optional[int] = field(default=None, metadata={"group": "data", "help": (
        "recipe: evaluation resize before the centre crop (px)")})
    crop_scale: Tuple[float, float] = field(default=(0.08, 1.0), metadata={"group": "augmentation", "help": (
        "RandomResizedCrop area range (min, max)")})
    hflip: float = field(default=0.5, metadata={"group": "augmentation", "help": (
        "horizontal flip probability (0 for digits, text ...)")})
    color_jitter: Optional[float] = field(default=None, metadata={"group": "augmentation", "help": (
        "recipe: brightness/contrast/saturation jitter")})
    augment: Optional[str] = field(default=None, metadata={"group": "augmentation", "help": (
        "recipe: policy augmentation after crop and flip: none, ta_wide (TrivialAugmentWide), randaugment, "
        "autoaugment (ImageNet policy)")})
    randaugment: Tuple[int, int] = field(default=(2, 9), metadata={"group": "augmentation", "help": (
        "RandAugment's number of operations and magnitude (0-30)")})
    random_erasing: Optional[float] = field(default=None, metadata={"group": "augmentation", "help": (
        "recipe: probability of erasing one rectangle of a training image")})
    workers: int = field(default=2, metadata={"group": "data", "help": (
        "DataLoader worker processes (0: load in the training process)")})
    eval_batch_size: int = field(default=100, metadata={"group": "data", "help": "batch size of the validation passes"})
    epochs: Optional[int] = field(default=None, metadata={"group": "schedule", "help": "recipe: training epochs"})
    batch_size: Optional[int] = field(default=None, metadata={"group": "schedule", "help": (
        "recipe: per worker process (GPU or CPU)")})
    lr: Optional[float] = field(default=None, metadata={"group": "schedule", "help": (
        "recipe: learning rate per worker; the run uses lr x number of workers")})
    optimizer: Optional[str] = field(default=None, metadata={"group": "optimizer", "help": (
        "recipe: the optimizer: sgd (momentum, nesterov) or adamw (betas, eps; decoupled weight decay)")})
    momentum: float = field(default=0.9, metadata={"group": "optimizer", "help": "SGD momentum"})
    nesterov: bool = field(default=False, metadata={"group": "optimizer", "help": "Nesterov momentum"})
    betas: Tuple[float, float] = field(default=(0.9, 0.999), metadata={"group": "optimizer", "help": (
        "AdamW's moving-average factors of the gradient and its square")})
    eps: float = field(default=1e-8, metadata={"group": "optimizer", "help": "AdamW's term added to the denominator"})
    weight_decay: Optional[float] = field(default=None, metadata={"group": "optimizer", "help": (
        "recipe: L2 weight decay")})
    no_bn_decay: Optional[bool] = field(default=None, metadata={"group": "optimizer", "help": (
        "recipe: exempt BatchNorm weights/biases and all biases from weight decay")})
    layer_decay: Optional[float] = field(default=None, metadata={"group": "optimizer", "help": (
        "layer-wise learning-rate decay for fine-tuning: a parameter at depth d of D (stem 0, stage i, head D) "
        "learns at lr x layer_decay ** (D - d) (default: off, as 1.0)")})
    schedule: Optional[str] = field(default=None, metadata={"group": "schedule", "help": (
        "recipe: learning-rate schedule after the warm-up")})
    milestones: Tuple[int, ...] = field(default=(30, 60, 80), metadata={"group": "schedule", "help": (
        "epochs of the x gamma steps of the step schedule")})
    gamma: float = field(default=0.1, metadata={"group": "schedule", "help": "step schedule factor"})
    warmup_epochs: float = field(default=5.0, metadata={"group": "schedule", "help": (
        "linear warm-up from 0 (epochs, may be fractional; 0: none)")})
    min_lr: float = field(default=0.0, metadata={"group": "schedule", "help": (
        "floor of the cosine schedule (absolute, after scaling)")})
    label_smoothing: Optional[float] = field(default=None, metadata={"group": "augmentation", "help": (
        "recipe: label smoothing epsilon of the cross-entropy")})
    mixup: Optional[float] = field(default=None, metadata={"group": "augmentation", "help": (
        "recipe: mixup Beta alpha (0: off); with cutmix too, one of the two per batch")})
    cutmix: Optional[float] = field(default=None, metadata={"group": "augmentation", "help": (
        "recipe: cutmix Beta alpha (0: off)")})
    ema_decay: Optional[float] = field(default=None, metadata={"group": "optimizer", "help": (
        "recipe: exponential moving average of the weights (BN statistics included), decay per update (0: off); "
        "evaluated beside the model, the better one saved as best.pkl")})
    ema_steps: int = field(default=32, metadata={"group": "optimizer", "help": "optimiser steps between EMA updates"})
    clip_grad_norm: Optional[float] = field(default=None, metadata={"group": "optimizer", "help": (
        "clip the gradients' global L2 norm to this (default: no clipping)")})
    steps_per_epoch: Optional[int] = field(default=None, metadata={"group": "schedule", "help": (
        "cap the steps of an epoch (smoke tests, benchmarks; default: the whole data)")})
    output: str = field(default="runs/train", metadata={"group": "run", "help": (
        "run folder: checkpoints, log, history, plot, best model")})
    resume: bool = field(default=True, metadata={"group": "run", "help": (
        "continue from output/last.pkl when it exists (off: start afresh, overwriting it)")})
    seed: int = field(default=0, metadata={"group": "run", "help": "seed of every random generator of the run"})
    device: Optional[str] = field(default=None, metadata={"group": "run", "help": (
        "cpu, gpu, or a MegEngine device name (default: a GPU if usable, else the CPU)")})
    gpus: int = field(default=1, metadata={"group": "run", "help": "GPUs (processes) for distributed training"})
    fast_conv: str = field(default="auto", metadata={"group": "cpu engine", "help": (
        "CPU convolution backward formulation (auto = blas; off: MegEngine's own)")})
    fast_conv_forward: str = field(default="blas", metadata={"group": "cpu engine", "help": (
        "CPU training forward of the convolutions: blas (several times faster on small maps, equal to float "
        "rounding) or native (MegEngine's operator, bit for bit); evaluation always uses MegEngine's operator")})
    fused_blocks: bool = field(default=True, metadata={"group": "cpu engine", "help": (
        "CPU training with the blas forward: each residual block (and the stem) computed whole in NumPy on "
        "channels-last arrays, BatchNorm, ReLU, pooling and adds included (equal to float rounding; figures in "
        "docs/training-speed.md), and the validation's eval-mode forward too; off: per convolution, validation on "
        "MegEngine's operators")})
    cpu_threads: Optional[int] = field(default=None, metadata={"group": "run", "help": (
        "CPU threads (a multithread comp node; default: all usable cores)")})
    dtr: bool = field(default=False, metadata={"group": "run", "help": (
        "dynamic tensor rematerialisation: trade compute for memory (big models/batches on a GPU)")})
    dtr_threshold: Optional[str] = field(default=None, metadata={"group": "run", "help": (
        "DTR eviction threshold, e.g. 4GB")})
    eval_every: int = field(default=1, metadata={"group": "run", "help": (
        "evaluate every N epochs (the last epoch is always evaluated)")})
    progress: bool = field(default=True, metadata={"group": "run", "help": (
        "tqdm progress bars (on a terminal; never in a log file)")})
    plot: bool = field(default=True, metadata={"group": "run", "help": "write curves.png at the end"})
    log_every: int = field(default=0, metadata={"group": "run", "help": "also log every N steps (0: per epoch only)"})

    def __post_init__(self):
        self.crop_scale = tuple(float(v) for v in self.crop_scale)  # type: ignore[assignment]
        self.milestones = tuple(int(v) for v in self.milestones)
        self.randaugment = tuple(int(v) for v in self.randaugment)  # type: ignore[assignment]
        self.betas = tuple(float(v) for v in self.betas)  # type: ignore[assignment]
        self._apply_recipe()
        self.validate()

    def _apply_recipe(self) -> None:
        """Fill the recipe fields left None (see the module docstring)."""
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        for name, value in RECIPES[self.recipe].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.recipe == "tv2":
            if self.lr is None:
                self.lr = 0.5 * self.batch_size / 1024
            fixres = isinstance(self.input_size, int) and self.input_size >= FIXRES_MIN_INPUT
            if self.eval_size is None and isinstance(self.input_size, int):
                self.eval_size = int(round(self.input_size * 224 / 176)) if fixres else self.input_size
            if self.resize_size is None and isinstance(self.eval_size, int):
                ratio = 232 / 224 if self.eval_size != self.input_size else 232 / 176
                self.resize_size = int(round(self.eval_size * ratio))
            if self.ema_decay is None:
                from .ema import torchvision_decay

                self.ema_decay = torchvision_decay(TV2_EMA_DECAY, self.gpus, self.batch_size, self.ema_steps,
                                                   self.epochs)
        if self.eval_size is None:
            self.eval_size = self.input_size
        if self.color_jitter is None:
            small = self.model in ("resnet18", "resnet34") or (isinstance(self.input_size, int)
                                                                 and self.input_size < 64)
            self.color_jitter = 0.0 if small else 0.4

    def validate(self) -> None:
        def positive_int(name, minimum=1):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")

        for name in ("epochs", "batch_size", "input_size", "eval_size", "gpus", "eval_batch_size", "eval_every",
                     "ema_steps"):
            positive_int(name)
        positive_int("workers", 0)
        positive_int("log_every", 0)
        for name in ("num_classes", "steps_per_epoch", "resize_size", "cpu_threads"):
            if getattr(self, name) is not None:
                positive_int(name)
        if self.freeze_stages is not None:
            positive_int("freeze_stages", 0)
        for name in ("input_size", "eval_size", "resize_size", "num_classes"):  # megzoo.weights.limits
            if getattr(self, name) is not None:
                check_size(name, getattr(self, name))
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        for name in ("lr", "momentum", "weight_decay", "warmup_epochs", "min_lr", "backbone_lr_mult"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if not 0.0 <= self.val_split < 1.0:
            raise ValueError(f"val_split must be in [0, 1), got {self.val_split!r}")
        if not 0.0 <= self.hflip <= 1.0:
            raise ValueError(f"hflip is a probability, got {self.hflip!r}")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale must be (min, max) with 0 < min <= max <= 1, got {self.crop_scale!r}")
        if self.nesterov and self.momentum <= 0:
            raise ValueError("nesterov needs momentum > 0")
        self._validate_optimizer()
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTS)}, got {self.augment!r}")
        ops, magnitude = self.randaugment
        if len(self.randaugment) != 2 or ops < 0 or not 0 <= magnitude <= 30:
            raise ValueError(f"randaugment must be (num_ops >= 0, magnitude 0-30), got {self.randaugment!r}")
        for name in ("random_erasing",):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a probability, got {getattr(self, name)!r}")
        for name in ("mixup", "cutmix", "color_jitter"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0 (0: off), got {getattr(self, name)!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0: no EMA), got {self.ema_decay!r}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {self.drop_path!r}")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise ValueError(f"clip_grad_norm must be > 0 (leave it unset for no clipping), "
                             f"got {self.clip_grad_norm!r}")

        for name, choices in (("fast_conv", FAST_CONV_METHODS), ("fast_conv_forward", FAST_CONV_FORWARDS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")

    def _validate_optimizer(self) -> None:
        """The optimizer's name (one of :data:`megzoo.train.optim.OPTIMIZERS`) and its values."""
        from .optim import OPTIMIZERS

        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps!r}")
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1] (leave it unset for none), got {self.layer_decay!r}")

    @property
    def eval_resize(self) -> int:
        """Evaluation resize (px): ``resize_size``, else ``eval_size / 0.875``."""
        return self.resize_size or max(self.eval_size, int(round(self.eval_size / 0.875)))

    @property
    def mixes(self) -> bool:
        """Whether batches are mixed (mixup or cutmix on): the loss then takes soft targets."""
        return self.mixup > 0 or self.cutmix > 0

    def as_dict(self) -> dict:
        """JSON-friendly dict (tuples become lists)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown config key(s): {', '.join(sorted(unknown))}")
        return cls(**values)


#: allowed values of the fields that take one of a few words (and ``optimizer``: :func:`config_fields`)
FIELD_CHOICES = {"schedule": SCHEDULES, "recipe": tuple(RECIPES), "augment": AUGMENTS, "fast_conv": FAST_CONV_METHODS,
                 "fast_conv_forward": FAST_CONV_FORWARDS}

#: the fields a recipe sets, in the order :func:`recipe_summary` prints them
RECIPE_FIELDS = ("epochs", "batch_size", "lr", "schedule", "warmup_epochs", "weight_decay", "no_bn_decay",
                 "label_smoothing", "input_size", "eval_size", "resize_size", "color_jitter", "augment",
                 "random_erasing", "mixup", "cutmix", "ema_decay", "ema_steps", "drop_path", "clip_grad_norm")


def recipe_summary(config: "TrainConfig") -> str:
    """One line of the resolved recipe: its name and every recipe-related field, e.g.
    ``recipe tv2: epochs=600 batch_size=128 lr=0.0625 ...``."""
    def show(value):
        return f"{value:g}" if isinstance(value, float) else str(value)

    values = dict((name, getattr(config, name)) for name in RECIPE_FIELDS)
    values["resize_size"] = config.eval_resize
    if config.augment == "randaugment":
        values["augment"] = f"randaugment{config.randaugment}"
    return f"recipe {config.recipe}: " + " ".join(f"{k}={show(v)}" for k, v in values.items())


@dataclass(frozen=True)
class FieldDoc:
    """One :class:`TrainConfig` field as it declares itself: name, type, default, and the ``help``
    and ``group`` of its metadata (``megzoo train`` builds its options from these)."""

    name: str
    type: Any
    default: Any
    help: str
    group: str
    choices: Optional[Tuple[str, ...]] = None


def config_fields() -> List[FieldDoc]:
    """Every :class:`TrainConfig` field with its help and group, in declaration order."""
    import typing

    from .optim import OPTIMIZERS

    choices = dict(FIELD_CHOICES, optimizer=tuple(OPTIMIZERS))
    hints = typing.get_type_hints(TrainConfig)
    docs = []
    for f in fields(TrainConfig):
        default = f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]
        docs.append(FieldDoc(f.name, hints[f.name], default, f.metadata.get("help", ""), f.metadata.get("group", ""),
                             choices.get(f.name)))
    return docs


def imagenet_recipe(model: str, data: Optional[str] = None, **overrides) -> TrainConfig:
    """MegEngine's reference ImageNet recipe for ``model`` (see the module docstring), with
    ``overrides``. ``data`` is the ImageNet folder with ``train/`` and ``val/``."""
    return TrainConfig(model=model, data=data, **overrides)


def learning_rate(config: TrainConfig, step: int, steps_per_epoch: int, world_size: int = 1) -> float:
    """Learning rate (of the head; the backbone gets ``x backbone_lr_mult``) before ``step``
    (0-based, counted over the whole run): ``lr x world_size``, warmed up linearly from 0 over
    ``warmup_epochs``, then the step or cosine schedule over the epochs."""
    base = config.lr * world_size
    total = config.epochs * steps_per_epoch
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    if warmup > 0 and step < warmup:
        return base * step / warmup
    if config.schedule == "step":
        drops = sum(1 for m in config.milestones if step >= m * steps_per_epoch)
        return base * config.gamma ** drops
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    floor = min(config.min_lr, base)
    return floor + (base - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

