"""Training and fine-tuning: MegEngine's reference ImageNet recipe and torchvision's V2 recipe as a library API.

    from megzoo.train import TrainConfig, train
    result = train(model="resnet18", data="my_images/", epochs=30, input_size=128,
                   pretrained=True, freeze_stages=2, backbone_lr_mult=0.1)
    result.best_top1, result.best_path          # best.pkl: plain state dict for pretrained=PATH

Modules: :mod:`~megzoo.train.recipe` (the config, the named recipes, the learning-rate
schedule), :mod:`~megzoo.train.trainer` (the loop), :mod:`~megzoo.train.model_setup` (the model a
run trains), :mod:`~megzoo.train.callbacks` (what runs around the loop: the CPU engine, EMA,
checkpoints, the run record, the log), :mod:`~megzoo.train.optim` (parameter groups, the
optimizers by name), :mod:`~megzoo.train.mixing` (mixup, cutmix, soft-target loss), :mod:`~megzoo.train.ema` (the
weights' moving average), :mod:`~megzoo.train.data` (image folders, transforms and loaders
through ``megengine.data``), :mod:`~megzoo.train.checkpoint` (atomic, safely loadable checkpoints),
:mod:`~megzoo.train.distributed` (several GPUs), :mod:`~megzoo.train.cpu_engine` (the CPU training engine:
convolutions and whole residual blocks on host arrays; one object, ``CpuEngine``), :mod:`~megzoo.train.plot`
(curves). The command line is ``megzoo train``; see docs/training.md.
"""
import importlib

from .callbacks import Callback
from .optim import OPTIMIZERS, build_optimizer, param_groups
from .recipe import RECIPES, REFERENCE_TOP1, TrainConfig, imagenet_recipe, learning_rate
from .trainer import Trainer, TrainResult, setup_device, train

__all__ = ["OPTIMIZERS", "RECIPES", "REFERENCE_TOP1", "Callback", "TrainConfig", "TrainResult", "Trainer",
           "build_optimizer", "fast_conv", "fused_blocks", "imagenet_recipe", "learning_rate", "param_groups",
           "setup_device", "train"]

#: old names of the engine's modules, imported on first access (``megzoo.train`` imports without the engine)
_ENGINE_MODULES = {"fast_conv": "conv", "fused_blocks": "blocks"}


def __getattr__(name):
    if name in _ENGINE_MODULES:
        module = importlib.import_module(f"{__name__}.cpu_engine.{_ENGINE_MODULES[name]}")
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
