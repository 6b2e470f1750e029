"""Training checkpoints: written atomically, read back with megzoo's safe loader.

A run folder holds

* ``last.pkl``: the full training state after the latest finished epoch (see
  :func:`training_state`): model state dict, optimizer state (momentum buffers), epochs done,
  step, best accuracy, RNG state, config, class names, history. Rewritten every epoch;
* ``best.pkl``: the model with the best validation top-1 so far, as a plain state dict
  (``{name: numpy array}``), loadable by ``megzoo.<arch>(pretrained="best.pkl", num_classes=N)``,
  ``megzoo.get_model(...)`` and ``megzoo predict --weights``;
* ``best.json``: what is needed to use ``best.pkl``: model name, number of classes, class names,
  evaluation preprocessing, accuracy.

A run resumes from ``last.pkl`` only with the plan it was started with (:func:`check_plan`: every
config field but the :data:`RUN_FIELDS`, which say where things are and how the run executes).

Everything saved is numpy arrays and builtins (dicts, lists, tuples, str, int, float, bool,
None), so megzoo's allow-list unpickler (:mod:`megzoo.weights.serialization`) reads it: loading a
checkpoint never runs code from the file. Files are written to a temporary name in the same folder,
flushed to disk and renamed over the old one, so a crash leaves the previous file intact.
"""
import json
import os
import random
from collections import OrderedDict
from dataclasses import fields
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ..host import atomic_write
from ..host import atomic_write_text as _write_text
from ..weights.serialization import load_megengine_pickle
from ..weights.sidecar import read_weights_metadata  # noqa: F401  (re-exported: its old home)

__all__ = ["atomic_save", "load_training_state", "save_weights", "rng_state",
           "set_rng_state", "state_dict_numpy", "optimizer_state_numpy", "read_weights_metadata", "LAST", "BEST",
           "BEST_META", "jsonable", "check_plan", "read_resume_state", "RUN_FIELDS"]

LAST = "last.pkl"
BEST = "best.pkl"
BEST_META = "best.json"
FORMAT = "megzoo-train-checkpoint"
VERSION = 1


def atomic_save(obj: Any, path: str) -> str:
    """``megengine.save(obj, path)`` atomically (:func:`megzoo.host.atomic_write`)."""
    import megengine

    atomic_write(path, lambda f: megengine.save(obj, f))
    return os.fspath(path)


#: the config fields a resumed run may change: where the files are and how the run executes, not
#: what it computes (every other field is the plan, which :func:`check_plan` holds to), and its
#: length: raising ``epochs`` continues a finished run, the schedule recomputed for the new length
RUN_FIELDS = ("data", "train_dir", "val_dir", "output", "resume", "pretrained", "device", "cpu_threads", "workers",
              "eval_batch_size", "fast_conv", "fast_conv_forward", "fused_blocks", "dtr", "dtr_threshold",
              "eval_every", "progress", "plot", "log_every", "epochs")


def jsonable(value):
    """``value`` with what JSON cannot hold made plain: tuples as lists, numpy scalars as numbers,
    dict keys as strings, anything else as its ``repr``."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    return repr(value)


def _plain(value):
    """``value`` with Tensors as numpy arrays and numpy scalars as Python numbers."""
    from megengine import Tensor

    if isinstance(value, Tensor):
        return value.numpy()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (dict, OrderedDict)):
        return type(value)((k, _plain(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def state_dict_numpy(model) -> "OrderedDict[str, np.ndarray]":
    """``model.state_dict()`` as an OrderedDict of numpy arrays (copies)."""
    return OrderedDict((k, np.array(v.numpy() if hasattr(v, "numpy") else v, copy=True))
                       for k, v in model.state_dict().items())


def optimizer_state_numpy(optimizer) -> dict:
    """``optimizer.state_dict()`` with numpy arrays and Python numbers only."""
    return _plain(optimizer.state_dict())


def rng_state() -> Dict[str, Any]:
    """The global NumPy and Python ``random`` generator states, as arrays and ints."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "numpy": {"name": str(name), "keys": np.asarray(keys, dtype=np.uint32).copy(), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": np.asarray(internal, dtype=np.int64), "gauss": gauss},
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    n = state["numpy"]
    np.random.set_state((n["name"], np.asarray(n["keys"], dtype=np.uint32), int(n["pos"]), int(n["has_gauss"]),
                         float(n["cached_gaussian"])))
    p = state["python"]
    random.setstate((int(p["version"]), tuple(int(v) for v in p["state"]), p["gauss"]))


def load_training_state(path: str) -> dict:
    """Read a ``last.pkl`` written by the trainer (with the safe loader); checks its format."""
    state = load_megengine_pickle(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path}: not a megzoo training checkpoint (no format={FORMAT!r} record); "
                         "to start from weights only, use pretrained=PATH")
    if int(state.get("version", 0)) > VERSION:
        raise ValueError(f"{path}: checkpoint version {state['version']} is newer than this megzoo reads ({VERSION})")
    return state


def check_plan(saved: Dict[str, Any], config, path: str = "the checkpoint") -> None:
    """``ValueError`` naming the first plan field (a config field not in :data:`RUN_FIELDS`) whose
    value in ``config`` differs from the checkpoint's ``saved`` config; a field the checkpoint
    predates counts as that field's default (resolved by the default recipe). A float run and a
    quantization-aware one (``qat``) are told apart first, in words: their weights differ in kind."""
    if bool(saved.get("qat", False)) != bool(config.qat):
        kind = "quantization-aware (qat)" if saved.get("qat") else "float (not qat)"
        raise ValueError(f"{path} is a {kind} run, and this one is {'qat' if config.qat else 'not qat'}; "
                         "use another output folder (--output) or start afresh (--no-resume / resume=False)")
    defaults = None
    skipped = set(RUN_FIELDS)
    if saved.get("epochs") != config.epochs:  # a longer run: what the recipe derives from its length follows it
        skipped |= set(epochs_derived(config.recipe))
    for f in fields(config):
        if f.name in skipped:
            continue
        if f.name in saved:
            old = saved[f.name]
        else:
            defaults = defaults or type(config)()
            old = getattr(defaults, f.name)
        new = getattr(config, f.name)
        if jsonable(old) != jsonable(new):
            raise ValueError(f"cannot resume: {f.name} changed from {_shown(old)} to {_shown(new)} (the checkpoint's "
                             "plan); start a new --output or pass the checkpoint's value")


def epochs_derived(recipe: str) -> Tuple[str, ...]:
    """The fields ``recipe`` derives from ``epochs`` (tv2: ``ema_decay``), which follow a raised ``epochs``."""
    from .recipe import RECIPE_RULES

    return tuple(name for name, rule in RECIPE_RULES.get(recipe, {}).items() if "epochs" in rule)


def _shown(value) -> str:
    return str(tuple(value) if isinstance(value, list) else value)


def read_resume_state(config, path: str) -> Optional[dict]:
    """The training state to resume from: ``path`` (``last.pkl``) read and held to the run's plan
    (:func:`check_plan`), or None when ``config.resume`` is off or there is no such file."""
    if not config.resume or not os.path.isfile(path):
        return None
    state = load_training_state(path)
    check_plan(state.get("config") or {}, config, path)
    return state


def save_weights(model, path: str, meta: Optional[dict] = None) -> str:
    """Save ``model``'s state dict as a plain ``{name: array}`` pickle at ``path`` (atomically)
    and, with ``meta``, the JSON sidecar next to it (``path`` with ``.json``)."""
    atomic_save(state_dict_numpy(model), path)
    if meta is not None:
        _write_text(os.path.splitext(path)[0] + ".json", json.dumps(meta, indent=2) + "\n")
    return path
