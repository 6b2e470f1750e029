"""Map a checkpoint's state dict onto a megzoo model, and adapt it for fine-tuning.

Source layouts:

* ``megengine``: megzoo's own keys (MegEngine/Models ResNets, checkpoints saved from megzoo).
* ``basecls``: BaseCls VGG; convolution biases are added as zeros
  (:func:`megzoo.models.vgg.convert_basecls_state_dict`).
* ``torchvision``: ``num_batches_tracked`` dropped, VGG ``features.N``/``classifier.N`` renamed,
  conv weights/biases reshaped to MegEngine's shapes (grouped (G, O/G, I/G, kh, kw), bias
  (1, O, 1, 1)), and the first convolution's input channels reversed (RGB -> BGR) so the model takes
  megzoo's BGR 0-255 input with the MegEngine mean/std.

Adaptation (reported in a :class:`LoadReport`): a classifier whose shape differs from the model's
(other ``num_classes``) is left freshly initialised; a first convolution with other input
channels is adapted: summed over RGB for 1 channel, else tiled and scaled by 3 / in_channels.
"""
import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import megengine.module as M
import numpy as np

from ..models.base import ZooModel
from ..models.resnet import ResNet
from ..models.vgg import VGG, convert_basecls_state_dict
from .errors import WeightsError

__all__ = ["LoadReport", "ArchitectureMismatchError", "to_megzoo_layout", "load_into", "detect_layout"]

logger = logging.getLogger("megzoo.weights")


class ArchitectureMismatchError(WeightsError):
    """The checkpoint's keys or shapes do not fit the model."""


@dataclass
class LoadReport:
    """What happened to each state-dict entry when weights were loaded."""

    source: str  #: tag name, path or URL
    loaded: List[str] = field(default_factory=list)  #: keys copied as they are
    adapted: Dict[str, str] = field(default_factory=dict)  #: key -> how it was changed
    reinitialized: List[str] = field(default_factory=list)  #: model keys left at their initialisation
    unused: List[str] = field(default_factory=list)  #: checkpoint keys the model has no place for
    file: Optional[str] = None  #: the local file read

    def __str__(self) -> str:
        lines = [f"weights from {self.source}: {len(self.loaded)} loaded, {len(self.adapted)} adapted, "
                 f"{len(self.reinitialized)} re-initialised, {len(self.unused)} unused"]
        lines += [f"  adapted {k}: {how}" for k, how in self.adapted.items()]
        if self.reinitialized:
            lines.append(f"  re-initialised: {', '.join(self.reinitialized)}")
        if self.unused:
            lines.append(f"  unused: {', '.join(self.unused)}")
        return "\n".join(lines)


def detect_layout(state_dict: Dict[str, np.ndarray], model: ZooModel, is_torch_file: bool) -> str:
    """``torchvision`` for a torch file, ``basecls`` for a VGG pickle without conv biases, else ``megengine``."""
    if is_torch_file:
        return "torchvision"
    if isinstance(model, VGG) and "s1.b1.0.weight" in state_dict and "s1.b1.0.bias" not in state_dict:
        return "basecls"
    return "megengine"


def _torchvision_vgg_names(model: VGG) -> Dict[str, str]:
    """torchvision VGG module path -> megzoo module path (``features.N`` -> ``sI.bJ.K``)."""
    names, index = {}, 0
    has_norm = len(model.s1.b1) == 3
    for stage in range(1, 6):
        for block in range(1, getattr(model, f"s{stage}").depth + 1):
            names[f"features.{index}"] = f"s{stage}.b{block}.0"
            if has_norm:
                names[f"features.{index + 1}"] = f"s{stage}.b{block}.1"
            index += 3 if has_norm else 2
        index += 1  # max-pool
    names.update({f"classifier.{i}": f"head.classifier.{i}" for i in (0, 3, 6)})
    return names


def _rename_torchvision(state_dict, model: ZooModel) -> Dict[str, np.ndarray]:
    renamed = {}
    names = _torchvision_vgg_names(model) if isinstance(model, VGG) else {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        module, _, param = key.rpartition(".")
        renamed[f"{names.get(module, module)}.{param}"] = value
    return renamed


def to_megzoo_layout(state_dict: Dict[str, np.ndarray], model: ZooModel, layout: str) -> Dict[str, np.ndarray]:
    """Rename/convert ``state_dict`` from ``layout`` to ``model``'s keys (shapes are fixed by :func:`load_into`)."""
    if layout == "megengine":
        return dict(state_dict)
    if layout == "basecls":
        return convert_basecls_state_dict(state_dict)
    if layout == "torchvision":
        if not isinstance(model, (ResNet, VGG)):
            raise WeightsError(f"no torchvision mapping for {type(model).__name__}")
        converted = _rename_torchvision(state_dict, model)
        first = f"{model.first_conv_key}.weight"
        if first in converted and converted[first].shape[1] == 3:
            converted[first] = np.ascontiguousarray(converted[first][:, ::-1])  # RGB -> BGR input
        return converted
    raise ValueError(f"unknown checkpoint layout {layout!r}: use 'megengine', 'basecls' or 'torchvision'")


def _conv_keys(model: M.Module) -> set:
    keys = set()
    for name, module in model.named_modules():
        if isinstance(module, M.Conv2d):
            keys.update({f"{name}.weight", f"{name}.bias"})
    return keys


def _adapt_first_conv(weight: np.ndarray, in_channels: int) -> np.ndarray:
    """(O, 3, kh, kw) -> (O, in_channels, kh, kw): summed for 1 channel, else tiled and scaled."""
    if in_channels == 1:
        return weight.sum(axis=1, keepdims=True)
    repeats = -(-in_channels // weight.shape[1])
    return (np.tile(weight, (1, repeats, 1, 1))[:, :in_channels] * (weight.shape[1] / in_channels)).astype(weight.dtype)


def load_into(model: ZooModel, state_dict: Dict[str, np.ndarray], source: str) -> LoadReport:
    """Load a megzoo-layout ``state_dict`` into ``model`` strictly, except for the documented
    adaptations (classifier of another size, first conv of other input channels).

    Raises :class:`ArchitectureMismatchError` naming the keys/shapes when anything else differs.
    """
    report = LoadReport(source=source)
    current = model.state_dict()
    target = {k: tuple(v.shape) for k, v in current.items()}
    conv_keys = _conv_keys(model)
    classifier = model.classifier_key + "."
    first_conv = f"{model.first_conv_key}.weight"
    to_load, missing, mismatched = {}, [], []

    for key, shape in target.items():
        if key not in state_dict:
            (report.reinitialized if key.startswith(classifier) else missing).append(key)
            continue
        value = np.asarray(state_dict[key])
        if value.shape == shape:
            to_load[key] = value
            report.loaded.append(key)
        elif key in conv_keys and value.size == int(np.prod(shape)):
            to_load[key] = value.reshape(shape)  # torch conv shapes -> MegEngine (grouped / bias)
            report.loaded.append(key)
        elif key == first_conv and value.ndim == 4 and value.shape[0] == shape[0] and value.shape[2:] == shape[2:]:
            to_load[key] = _adapt_first_conv(value, shape[1])
            report.adapted[key] = f"input channels {value.shape[1]} -> {shape[1]}"
        elif key.startswith(classifier):
            report.reinitialized.append(key)
        else:
            mismatched.append(f"{key}: checkpoint {value.shape}, model {shape}")
    report.unused = [k for k in state_dict if k not in to_load and k not in report.adapted]
    unexpected = [k for k in state_dict if k not in target and not k.startswith(classifier)]
    if missing or mismatched or unexpected:
        details = []
        if missing:
            details.append(f"missing {len(missing)} keys (first: {', '.join(missing[:3])})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:3])})")
        if mismatched:
            details.append(f"{len(mismatched)} shape mismatches (first: {'; '.join(mismatched[:3])})")
        raise ArchitectureMismatchError(
            f"weights from {source} do not fit {model.model_name}: {'; '.join(details)}. "
            "Check that the checkpoint is for this architecture (and its groups/width options)"
        )
    for key in report.reinitialized:
        to_load[key] = current[key]  # keep the fresh initialisation; lets the load stay strict
    model.load_state_dict(to_load, strict=True)
    if report.reinitialized:
        logger.warning("%s: loaded everything but the classifier (%s re-initialised for num_classes=%d)",
                       model.model_name, ", ".join(report.reinitialized), model.num_classes)
    for key, how in report.adapted.items():
        logger.warning("%s: adapted %s (%s)", model.model_name, key, how)
    return report
