"""Training and fine-tuning: MegEngine's reference ImageNet recipe as a library API.

    from megzoo.train import TrainConfig, train
    result = train(model="resnet18", data="my_images/", epochs=30, input_size=128,
                   pretrained=True, freeze_stages=2, backbone_lr_mult=0.1)
    result.best_top1, result.best_path          # best.pkl: plain state dict for pretrained=PATH

Modules: :mod:`~megzoo.train.recipe` (the config and learning-rate schedule),
:mod:`~megzoo.train.trainer` (the loop), :mod:`~megzoo.train.data` (image folders through
``megengine.data``), :mod:`~megzoo.train.checkpoint` (atomic, safely loadable checkpoints),
:mod:`~megzoo.train.distributed` (several GPUs), :mod:`~megzoo.train.fast_conv` (a faster
convolution backward pass on CPU), :mod:`~megzoo.train.plot` (curves). The command line is
``megzoo train``; see docs/training.md.
"""
from . import fast_conv
from .recipe import REFERENCE_TOP1, TrainConfig, imagenet_recipe, learning_rate
from .trainer import Trainer, TrainResult, param_groups, setup_device, train

__all__ = ["TrainConfig", "TrainResult", "Trainer", "train", "imagenet_recipe", "learning_rate", "param_groups",
           "setup_device", "REFERENCE_TOP1", "fast_conv"]
