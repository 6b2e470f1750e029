"""Pretrained weights: catalogue, verified downloads, safe deserialisation, layout conversion.

``load_pretrained(model, "resnet50", pretrained)`` is what ``megzoo.resnet50(pretrained=...)``
calls. ``pretrained`` may be ``True`` (the default weight of the architecture), a tag
(``"tv2_in1k"``, ``"resnet50.tv2_in1k"``, ``"IMAGENET1K_V2"``), a URL (http, https, file) or a
local path of a MegEngine ``.pkl`` or torchvision ``.pth``.

A cached file that fails its hash, fails to deserialise or does not fit the architecture is
reported with its path, removed and fetched once more; nothing is unpickled with plain pickle.
"""
import hashlib
import logging
import os
from pathlib import Path
from typing import Optional, Union

from .cache import evict
from .catalog import WEIGHTS, Preprocess, Weights, default_weights, find_weights, weights_for
from .convert import ArchitectureMismatchError, InvalidWeightsError, LoadReport, detect_layout, load_into, \
    to_megzoo_layout
from .download import check_url_scheme, fetch
from .errors import CorruptCheckpointError, UnsafeCheckpointError, WeightsError
from .serialization import extract_state_dict, is_torch_zip, load_checkpoint

__all__ = ["load_pretrained", "resolve_weights", "list_weights", "fetch_weights",
           "Weights", "Preprocess", "LoadReport", "WEIGHTS", "WeightsError", "ArchitectureMismatchError",
           "InvalidWeightsError",
           "pretrained_value", "DEFAULT_WEIGHT_WORDS"]

logger = logging.getLogger("megzoo.weights")

_URL_SCHEMES = ("http://", "https://", "file://")


def _is_url(text: str) -> bool:
    return text.lower().startswith(_URL_SCHEMES)


#: the words that mean "the model's default pretrained weights" on the command line
DEFAULT_WEIGHT_WORDS = ("default", "true", "yes")


def pretrained_value(text: str):
    """A command-line weights argument as a ``pretrained=`` value: ``True`` for one of
    :data:`DEFAULT_WEIGHT_WORDS` (any case), else the text (a tag, a path or a URL)."""
    return True if text.strip().lower() in DEFAULT_WEIGHT_WORDS else text


def resolve_weights(arch: str, pretrained) -> Union[Weights, str, Path]:
    """Turn a ``pretrained=`` value into a registered :class:`Weights`, a URL string or a local Path."""
    if pretrained is True:
        weights = default_weights(arch)
        if weights is None:
            raise WeightsError(f"{arch} has no registered pretrained weights; pass pretrained=PATH_OR_URL "
                               "to load a checkpoint of your own")
        return weights
    if isinstance(pretrained, os.PathLike):
        return _existing_path(Path(pretrained))
    if not isinstance(pretrained, str) or not pretrained:
        raise WeightsError(f"pretrained must be True, a weight tag, a URL or a path, got {pretrained!r}")
    weights = find_weights(arch, pretrained)
    if weights is not None:
        return weights
    if _is_url(pretrained):
        return pretrained
    check_url_scheme(pretrained)  # ftp://... : "unsupported URL scheme", not "file not found"
    looks_like_path = (os.sep in pretrained or pretrained.endswith((".pkl", ".pth", ".pt", ".mge"))
                       or os.path.exists(pretrained))
    if looks_like_path:
        return _existing_path(Path(pretrained).expanduser())
    tags = ", ".join(w.tag for w in weights_for(arch)) or "none"
    raise WeightsError(f"unknown weight tag {pretrained!r} for {arch}; available tags: {tags} "
                       "(or pass a path or URL of a checkpoint)")


def _existing_path(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    return path


def _url_filename(url: str) -> str:
    """Cache name of an ad-hoc URL: ``url-<12 hex of sha256(url)>-<basename>`` (no collisions)."""
    base = url.rstrip("/").rsplit("/", 1)[-1].split("?")[0] or "weights"
    return f"url-{hashlib.sha256(url.encode()).hexdigest()[:12]}-{base}"


def fetch_weights(source: Union[Weights, str], progress: bool = True) -> Path:
    """Download (or find in the cache) a registered weight or URL; returns the verified local file.
    A torchvision weight is checked against the sha256 prefix its file name carries."""

    if isinstance(source, Weights):
        return fetch(list(source.urls), source.filename, sha256=source.sha256 or source.sha256_prefix,
                     size=source.size, progress=progress, name=source.name)
    return fetch([source], _url_filename(source), progress=progress)


def _read_state_dict(path: Path):
    return extract_state_dict(load_checkpoint(path))


def _load_file(model, path: Path, source: str, layout: Optional[str]) -> LoadReport:
    state_dict = _read_state_dict(path)
    layout = layout or detect_layout(state_dict, model, is_torch_zip(path))
    report = load_into(model, to_megzoo_layout(state_dict, model, layout), source)
    report.file = str(path)
    return report


def load_pretrained(model, arch: str, pretrained, progress: bool = True) -> LoadReport:
    """Load ``pretrained`` (see module docstring) into ``model`` (built as ``arch``) and return the report."""

    source = resolve_weights(arch, pretrained)
    if isinstance(source, Path):
        return _load_file(model, source, str(source), None)
    label = source.name if isinstance(source, Weights) else source
    layout = source.checkpoint_layout if isinstance(source, Weights) else None
    for attempt in (1, 2):
        path = fetch_weights(source, progress=progress)
        try:
            return _load_file(model, path, label, layout)
        except UnsafeCheckpointError:

            evict(path, "it contains code or objects a checkpoint must not have")
            raise
        except (CorruptCheckpointError, ArchitectureMismatchError) as exc:

            kept = evict(path, str(exc))
            if kept:
                raise WeightsError(f"{label}: the cached file {path} is unusable ({exc}); it was kept, as it cannot "
                                   f"be removed here ({kept}): remove it with the rights of the cache's owner, or "
                                   "set MEGZOO_HOME to a cache of your own") from exc
            if attempt == 2:
                raise WeightsError(f"{label}: the downloaded file is still unusable after a fresh download "
                                   f"({exc}); it was removed from the cache") from exc
            logger.warning("%s: cached file %s was unusable (%s); removed it, downloading again", label, path, exc)
    raise AssertionError("unreachable")


def list_weights(pattern: Optional[str] = None):
    """Registered weight names ``ARCH.TAG`` matching the glob ``pattern``, sorted."""
    import fnmatch

    return sorted(n for n in WEIGHTS if pattern is None or fnmatch.fnmatchcase(n, pattern))
