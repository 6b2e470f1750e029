"""Map a checkpoint's state dict onto a megzoo model, and adapt it for fine-tuning.

This module knows no model family: the model says which checkpoint layouts it reads and
converts them (``checkpoint_layouts``, ``detect_checkpoint_layout``, ``convert_checkpoint`` on
:class:`megzoo.models.ZooModel`; VGG adds BaseCls's layout and torchvision's ``features.N``
names). Source layouts today:

* ``megengine``: megzoo's own keys (MegEngine/Models ResNets, checkpoints saved from megzoo).
* ``basecls``: BaseCls VGG; convolution biases are added as zeros.
* ``torchvision``: ``num_batches_tracked`` dropped, module names mapped by the family, and the
  first convolution's input channels reversed (RGB -> BGR) so the model takes megzoo's BGR 0-255
  input with the MegEngine mean/std. Here, conv weights/biases are reshaped to MegEngine's shapes
  (grouped (G, O/G, I/G, kh, kw), bias (1, O, 1, 1)).

The model is duck-typed: besides the three hooks it needs ``state_dict``/``load_state_dict``,
``named_modules``, ``classifier_key``, ``first_conv_key``, ``model_name`` and ``num_classes``.

Adaptation (reported in a :class:`LoadReport`): a classifier whose shape differs from the model's
(other ``num_classes``) is left freshly initialised; a first convolution with other input
channels is adapted: summed over RGB for 1 channel, else tiled and scaled by 3 / in_channels.

Values: floating-point tensors of another precision (float16, float64) are converted to the
model's dtype (reported); integers or booleans where the model has floats, and any NaN/Inf in
what would be loaded, are refused with :class:`InvalidWeightsError` naming the tensor, before the
model is changed.
"""
import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import megengine.module as M
import numpy as np

from .errors import WeightsError

__all__ = ["LoadReport", "ArchitectureMismatchError", "InvalidWeightsError", "to_megzoo_layout", "load_into",
           "detect_layout"]

logger = logging.getLogger("megzoo.weights")


class ArchitectureMismatchError(WeightsError):
    """The checkpoint's keys or shapes do not fit the model."""


class InvalidWeightsError(WeightsError):
    """The checkpoint's values cannot be the model's: non-finite numbers, integers where floats belong."""


@dataclass
class LoadReport:
    """What happened to each state-dict entry when weights were loaded."""

    source: str  #: tag name, path or URL
    loaded: List[str] = field(default_factory=list)  #: keys copied as they are
    adapted: Dict[str, str] = field(default_factory=dict)  #: key -> how it was changed
    reinitialized: List[str] = field(default_factory=list)  #: model keys left at their initialisation
    unused: List[str] = field(default_factory=list)  #: checkpoint keys the model has no place for
    file: Optional[str] = None  #: the local file read
    converted: Dict[str, str] = field(default_factory=dict)  #: key -> dtype change, e.g. "float16 -> float32"

    def __str__(self) -> str:
        converted = f" ({len(self.converted)} converted to the model's dtype)" if self.converted else ""
        lines = [f"weights from {self.source}: {len(self.loaded)} loaded{converted}, {len(self.adapted)} adapted, "
                 f"{len(self.reinitialized)} re-initialised, {len(self.unused)} unused"]
        lines += [f"  converted {how}: {count} tensors" for how, count in _counts(self.converted.values()).items()]
        lines += [f"  adapted {k}: {how}" for k, how in self.adapted.items()]
        if self.reinitialized:
            lines.append(f"  re-initialised: {', '.join(self.reinitialized)}")
        if self.unused:
            lines.append(f"  unused: {', '.join(self.unused)}")
        return "\n".join(lines)


def _counts(values) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def detect_layout(state_dict: Dict[str, np.ndarray], model, is_torch_file: bool) -> str:
    """The layout of ``state_dict`` for ``model``: the model family decides
    (``model.detect_checkpoint_layout``; torchvision for a torch file, BaseCls for a VGG pickle
    without conv biases, else megengine)."""
    return model.detect_checkpoint_layout(state_dict, is_torch_file)


def to_megzoo_layout(state_dict: Dict[str, np.ndarray], model, layout: str) -> Dict[str, np.ndarray]:
    """Rename/convert ``state_dict`` from ``layout`` to ``model``'s keys with the family's own
    converter (``model.convert_checkpoint``); shapes are reconciled by :func:`load_into`."""
    layouts = tuple(getattr(model, "checkpoint_layouts", ("megengine",)))
    if layout not in layouts:
        raise WeightsError(f"{getattr(model, 'model_name', type(model).__name__)} has no converter for {layout!r} "
                           f"checkpoints; it reads: {', '.join(layouts)}")
    return model.convert_checkpoint(state_dict, layout)


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


def _as_dtype(key: str, value: np.ndarray, want: np.dtype, source: str, model_name: str) -> np.ndarray:
    """``value`` as ``want``: floats of any precision convert, so do integers that fit an integer
    entry; anything else is refused naming ``key``."""
    kind, want_kind = value.dtype.kind, want.kind
    fits = want_kind == "f" and kind == "f" or want_kind in "iu" and kind in "iu" and (
        value.size == 0 or np.iinfo(want).min <= value.min() and value.max() <= np.iinfo(want).max)
    if not fits:
        what = "floating-point" if want_kind == "f" else str(want)
        raise InvalidWeightsError(f"weights from {source}: tensor {key!r} holds {value.dtype} values where "
                                  f"{model_name} has {want} ones; refusing to load it (save the model's {what} "
                                  "state dict)")
    with np.errstate(over="ignore"):
        return value.astype(want)


def _non_finite(value: np.ndarray, chunk: int = 1 << 22) -> int:
    """How many NaN/Inf elements ``value`` holds (0 for integers); counted in chunks of elements."""
    if value.dtype.kind not in "fc":
        return 0
    flat = value.reshape(-1)
    return sum(int(part.size - np.count_nonzero(np.isfinite(part)))
               for part in (flat[i:i + chunk] for i in range(0, flat.size, chunk)))


def _check_values(to_load: Dict[str, np.ndarray], current, report: LoadReport, model_name: str) -> None:
    """Convert ``to_load`` in place to the dtypes of ``current`` (the model's state dict), noting
    each change in ``report``; refuse integers where floats belong and non-finite values."""
    bad = []
    for key, value in to_load.items():
        want = np.dtype(current[key].dtype)
        if value.dtype != want:
            to_load[key] = _as_dtype(key, value, want, report.source, model_name)
            report.converted[key] = f"{value.dtype} -> {want}"
        count = _non_finite(to_load[key])
        if count:
            bad.append((key, count, count > _non_finite(value)))
    if bad:
        key, count, overflow = bad[0]
        where = f" after conversion to {current[key].dtype} (values beyond its range)" if overflow else ""
        more = f"; also in {len(bad) - 1} other tensor(s)" if len(bad) > 1 else ""
        raise InvalidWeightsError(f"weights from {report.source}: tensor {key!r} has {count} non-finite values "
                                  f"(NaN/Inf) of {to_load[key].size}{where}{more}; refusing to load it (a diverged "
                                  "training run? use an earlier checkpoint)")


def mismatch_details(missing: List[str], unexpected: List[str], mismatched: List[str]) -> List[str]:
    """The parts of a "does not fit" message: counts and the first few keys of each kind."""
    details = []
    if missing:
        details.append(f"missing {len(missing)} keys (first: {', '.join(missing[:3])})")
    if unexpected:
        details.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:3])})")
    if mismatched:
        details.append(f"{len(mismatched)} shape mismatches (first: {'; '.join(mismatched[:3])})")
    return details


def checked_values(model, state_dict: Dict[str, np.ndarray], source: str) -> Dict[str, np.ndarray]:
    """``state_dict``'s entries that ``model`` has, converted to its dtypes, for a strict load that
    does not go through :func:`load_into` (a QAT checkpoint): the same refusals (integers where
    floats belong, NaN/Inf values), naming the key."""
    current = model.state_dict()
    values = {k: np.asarray(v) for k, v in state_dict.items() if k in current}
    _check_values(values, current, LoadReport(source=source), getattr(model, "model_name", type(model).__name__))
    return {**state_dict, **values}


def load_into(model, state_dict: Dict[str, np.ndarray], source: str) -> LoadReport:
    """Load a megzoo-layout ``state_dict`` into ``model`` strictly, except for the documented
    adaptations (classifier of another size, first conv of other input channels).

    Raises :class:`ArchitectureMismatchError` naming the keys/shapes when anything else differs,
    :class:`InvalidWeightsError` for values the model cannot take (see module docstring).
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
        details = mismatch_details(missing, unexpected, mismatched)
        if any(k.startswith(("quant.", "levels.")) for k in state_dict):  # QuantizableModel's own names
            raise ArchitectureMismatchError(
                f"weights from {source} are a quantization-aware (megzoo train --qat) checkpoint, which loads as "
                "the int8 model: add --int8 (megzoo predict/eval/export), or use "
                "megzoo.quantization.load_qat_checkpoint(path) in Python")
        raise ArchitectureMismatchError(
            f"weights from {source} do not fit {model.model_name}: {'; '.join(details)}. "
            "Check that the checkpoint is for this architecture (and its groups/width options)"
        )
    _check_values(to_load, current, report, model.model_name)
    for key in report.reinitialized:
        to_load[key] = current[key]  # keep the fresh initialisation; lets the load stay strict
    model.load_state_dict(to_load, strict=True)
    if report.reinitialized:
        logger.warning("%s: loaded everything but the classifier (%s re-initialised for num_classes=%d)",
                       model.model_name, ", ".join(report.reinitialized), model.num_classes)
    for key, how in report.adapted.items():
        logger.warning("%s: adapted %s (%s)", model.model_name, key, how)
    for how, count in _counts(report.converted.values()).items():
        logger.warning("%s: converted %d tensors of %s (%s)", model.model_name, count, source, how)
    return report
