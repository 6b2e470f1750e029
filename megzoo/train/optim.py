"""What the optimiser updates and how: SGD parameter groups, MegEngine's in-place update.

:func:`param_groups` splits the trainable parameters into backbone and head (their own learning
rate multipliers) and, with ``no_bn_decay``, into decayed and not decayed (normalisation layers'
weights and biases and every bias are exempt from weight decay, as torchvision's V2 recipe and
timm do).
"""
import contextlib
import os
from typing import List

import megengine.module as M

from .recipe import TrainConfig

__all__ = ["param_groups", "inplace_update", "is_norm"]


def is_norm(module) -> bool:
    return isinstance(module, (M.BatchNorm1d, M.BatchNorm2d, M.GroupNorm, M.LayerNorm, M.InstanceNorm))


def param_groups(model, config: TrainConfig, params=None) -> List[dict]:
    """SGD parameter groups of ``params`` (default: the model's trainable parameters):
    backbone and head (``lr_mult`` = ``backbone_lr_mult`` and 1), each split into decayed and
    not decayed (BatchNorm weights/biases and all biases when ``no_bn_decay``); empty groups are
    left out. Each group has ``name``, ``lr_mult`` and ``weight_decay``."""
    if params is None:
        params = model.trainable_parameters() if hasattr(model, "trainable_parameters") else list(model.parameters())
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    no_decay = set()
    if config.no_bn_decay:
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                no_decay.add(id(p))
        for m in model.modules():
            if is_norm(m):
                no_decay.update(id(p) for p in m.parameters())
    groups = []
    for part, mult in (("backbone", config.backbone_lr_mult), ("head", 1.0)):
        for decayed in (True, False):
            chosen = [p for p in params
                      if (id(p) in head_ids) == (part == "head") and (id(p) not in no_decay) == decayed]
            if chosen:
                groups.append({"params": chosen, "name": f"{part}{'' if decayed else '/no_decay'}",
                               "lr_mult": float(mult), "weight_decay": float(config.weight_decay if decayed else 0.0)})
    if not groups:
        raise ValueError("no trainable parameters (everything is frozen?)")
    return groups


@contextlib.contextmanager
def inplace_update():
    """MegEngine's in-place SGD update (``MEGENGINE_INPLACE_UPDATE=1``: the same arithmetic in
    fused in-place operators, fewer passes over the parameters) unless the user chose otherwise."""
    if "MEGENGINE_INPLACE_UPDATE" in os.environ:
        yield
        return
    os.environ["MEGENGINE_INPLACE_UPDATE"] = "1"
    try:
        yield
    finally:
        os.environ.pop("MEGENGINE_INPLACE_UPDATE", None)
