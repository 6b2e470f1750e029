"""The JSON sidecar beside a weights file: ``best.json`` next to ``best.pkl``.

``megzoo train`` writes it (:func:`megzoo.train.checkpoint.save_weights`); everything that loads
weights reads it here (model name, number of classes, class names, evaluation preprocessing,
``"qat": true`` for a quantization-aware checkpoint), so the reader sits below every user of it.
"""
import json
import os
from typing import Optional

__all__ = ["read_weights_metadata"]


def read_weights_metadata(weights) -> Optional[dict]:
    """The JSON sidecar beside ``weights`` (``best.json`` next to ``best.pkl``), when ``weights``
    is a local file and the JSON names it (``"weights_file"``); else None."""
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
    return meta if isinstance(meta, dict) and meta.get("weights_file") == os.path.basename(path) else None
