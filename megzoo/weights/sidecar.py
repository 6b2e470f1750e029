"""The JSON sidecar beside a weights file: ``best.json`` next to ``best.pkl``.

``megzoo train`` writes it (:func:`megzoo.train.checkpoint.save_weights`); everything that loads
weights reads it here (model name, number of classes, class names, evaluation preprocessing,
``"qat": true`` for a quantization-aware checkpoint), so the reader sits below every user of it.
Its sizes are checked against :mod:`megzoo.weights.limits` here, before anything is built.
"""
import json
import os
from typing import Optional

from .limits import check_size

__all__ = ["read_weights_metadata"]


def read_weights_metadata(weights) -> Optional[dict]:
    """The JSON sidecar beside ``weights`` (``best.json`` next to ``best.pkl``), when ``weights``
    is a local file and the JSON names it (``"weights_file"``); else None. A ValueError naming the
    file when its ``num_classes`` or preprocessing sizes are not positive integers within
    :mod:`megzoo.weights.limits`."""
    if not isinstance(weights, (str, os.PathLike)):
        return None
    path = os.fspath(weights)
    sidecar = os.path.splitext(path)[0] + ".json"
    if path.endswith(".json") or not os.path.isfile(path) or not os.path.isfile(sidecar):
        return None
    try:
        with open(sidecar, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("weights_file") != os.path.basename(path):
        return None
    _check_sizes(meta, sidecar)
    return meta


def _check_sizes(meta: dict, sidecar: str) -> None:
    """The sizes of a sidecar within :mod:`megzoo.weights.limits` (a ValueError naming it)."""
    fix = "correct that file (megzoo train writes the sizes it trained and evaluated with)"
    if meta.get("num_classes") is not None:
        check_size("num_classes", meta["num_classes"], source=sidecar, fix=fix)
    preprocess = meta.get("preprocess")
    if isinstance(preprocess, dict):
        for key in ("input_size", "resize_size"):
            if preprocess.get(key) is not None:
                check_size(key, preprocess[key], source=f"{sidecar}: preprocess", fix=fix)
