"""What the optimiser updates and how: parameter groups, the optimizer, MegEngine's in-place update.

:func:`param_groups` splits the trainable parameters into backbone and head (their own learning
rate multipliers) and, with ``no_bn_decay``, into decayed and not decayed (normalisation layers'
weights and biases and every bias are exempt from weight decay, as torchvision's V2 recipe and
timm do). With ``layer_decay`` each of those is split by depth too (:func:`layer_depths`).

:func:`build_optimizer` makes the optimizer ``config.optimizer`` names from :data:`OPTIMIZERS`
(a new optimizer is one entry there: a function ``(groups, config, lr) -> Optimizer``).
"""
import contextlib
import os
from typing import Callable, Dict, List, Optional

import megengine.module as M
import megengine.optimizer as optim

from .recipe import TrainConfig

__all__ = ["param_groups", "inplace_update", "is_norm", "build_optimizer", "OPTIMIZERS", "layer_depths"]


def is_norm(module) -> bool:
    return isinstance(module, (M.BatchNorm1d, M.BatchNorm2d, M.GroupNorm, M.LayerNorm, M.InstanceNorm))


def layer_depths(model) -> Dict[int, int]:
    """``{id(parameter): depth}`` for layer-wise decay, from the stages the model lists in its
    ``feature_info`` (megzoo models): the stem is depth 0, the i-th stage (1-based) depth i (a
    model without a stem level, e.g. VGG, starts at stage 1 = depth 1), and every parameter in no
    stage (the head) the deepest, D = last stage + 1. A parameter's stage is read from its name:
    ``layer2.0.conv1.weight`` is in ResNet's stage ``layer2`` (depth 2 of D = 5); a stage listed as
    a module path (``stages.0``) owns the parameters under it."""
    levels = list(getattr(model, "feature_info", None) or [])
    if not levels:
        raise ValueError(f"layer_decay needs a model that lists its stages (feature_info, as megzoo models do); "
                         f"{type(model).__name__} has none")
    first = 0 if levels[0].is_stem else 1
    owner = {name: first + i for i, level in enumerate(levels) for name in level.modules}
    head = first + len(levels)

    def depth(parameter: str) -> int:  # the longest listed module path the parameter is in
        parts = parameter.split(".")
        return next((owner[p] for p in (".".join(parts[:k]) for k in range(len(parts) - 1, 0, -1)) if p in owner), head)

    return {id(p): depth(name) for name, p in model.named_parameters()}


def param_groups(model, config: TrainConfig, params=None) -> List[dict]:
    """Parameter groups of ``params`` (default: the model's trainable parameters): backbone and
    head (``lr_mult`` = ``backbone_lr_mult`` and 1), each split into decayed and not decayed
    (BatchNorm weights/biases and all biases when ``no_bn_decay``) and, with ``layer_decay``, by
    depth d of D (:func:`layer_depths`; ``lr_mult`` x ``layer_decay ** (D - d)``, names ending
    ``/depthD``); empty groups are left out. Each group has ``name``, ``lr_mult`` and ``weight_decay``."""
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
    if config.layer_decay is not None and config.layer_decay != 1.0:
        groups = _split_by_depth(groups, layer_depths(model), config.layer_decay)
    return groups


def _split_by_depth(groups: List[dict], depths: Dict[int, int], decay: float) -> List[dict]:
    """Each group split by the depth d of its parameters, ``lr_mult`` x ``decay ** (D - d)``."""
    deepest = max(depths.values())
    split = []
    for group in groups:
        for depth in sorted({depths[id(p)] for p in group["params"]}):
            chosen = [p for p in group["params"] if depths[id(p)] == depth]
            split.append({**group, "params": chosen, "name": f"{group['name']}/depth{depth}",
                          "lr_mult": group["lr_mult"] * decay ** (deepest - depth)})
    return split


def _sgd(groups: List[dict], config: TrainConfig, lr: float) -> optim.Optimizer:
    return optim.SGD(groups, lr=lr, momentum=config.momentum, nesterov=config.nesterov,
                     weight_decay=config.weight_decay)


def _adamw(groups: List[dict], config: TrainConfig, lr: float) -> optim.Optimizer:
    return optim.AdamW(groups, lr=lr, betas=tuple(config.betas), eps=config.eps, weight_decay=config.weight_decay)


#: the optimizers ``config.optimizer`` chooses from: name -> ``(groups, config, lr) -> Optimizer``
#: (a group's own ``weight_decay`` wins over the config's)
OPTIMIZERS: Dict[str, Callable[[List[dict], TrainConfig, float], optim.Optimizer]] = {"sgd": _sgd, "adamw": _adamw}


def build_optimizer(params_or_groups, config: TrainConfig, lr: Optional[float] = None) -> optim.Optimizer:
    """The optimizer ``config.optimizer`` names over ``params_or_groups`` (parameters, or the
    groups of :func:`param_groups`), at learning rate ``lr`` (default ``config.lr``; the trainer
    sets each group's rate every step)."""
    if config.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {config.optimizer!r}")
    return OPTIMIZERS[config.optimizer](params_or_groups, config, config.lr if lr is None else lr)


@contextlib.contextmanager
def inplace_update():
    """MegEngine's in-place optimizer update (``MEGENGINE_INPLACE_UPDATE=1``: the same arithmetic in
    fused in-place operators, fewer passes over the parameters) unless the user chose otherwise."""
    if "MEGENGINE_INPLACE_UPDATE" in os.environ:
        yield
        return
    os.environ["MEGENGINE_INPLACE_UPDATE"] = "1"
    try:
        yield
    finally:
        os.environ.pop("MEGENGINE_INPLACE_UPDATE", None)
