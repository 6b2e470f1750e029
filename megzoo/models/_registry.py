"""Model registry: every builder registers itself here; lookup by name or glob pattern.

``list_models("resnet*")``, ``get_model("resnet50", pretrained=True)``. Architecture facts
(parameter count, GMACs at 224x224) are data attached at registration and checked against the
built models by the test suite. The family modules import :func:`register_model` from here;
``megzoo.models`` imports every family before anyone can look a name up, so the lookups need no
import of their own (``megzoo.registry`` re-exports them).
"""
import difflib
import fnmatch
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Union

from ..weights.catalog import Weights, find_weights, weights_for
from ..weights.errors import WeightsError

__all__ = ["ModelEntry", "UnknownModelError", "register_model", "list_models", "get_model",
           "get_model_entry", "model_entries", "get_weights", "model_info"]


@dataclass(frozen=True)
class ModelEntry:
    name: str  #: builder name, e.g. "resnet50"
    family: str  #: module under megzoo.models, e.g. "resnet"
    builder: Callable  #: the public builder function
    params: int  #: parameters with the 1000-class head (published torchvision figure)
    gmacs: float  #: multiply-accumulates at 224x224, in 10^9 (torchvision's "GFLOPS" field)

    @property
    def summary(self) -> str:
        return (self.builder.__doc__ or "").strip().splitlines()[0]


class UnknownModelError(ValueError):
    """Raised for a model name that is not registered; the message lists close names."""


_REGISTRY: Dict[str, ModelEntry] = {}


def register_model(params: int, gmacs: float):
    """Decorator registering a builder ``fn(pretrained=False, **kwargs)`` under ``fn.__name__``."""

    def decorate(fn: Callable) -> Callable:
        family = fn.__module__.rsplit(".", 1)[-1]  # megzoo.models.resnet -> resnet
        if fn.__name__ in _REGISTRY:
            raise RuntimeError(f"model {fn.__name__!r} registered twice")
        _REGISTRY[fn.__name__] = ModelEntry(fn.__name__, family, fn, params, gmacs)
        return fn

    return decorate


def close_names(name: str, candidates: Iterable[str], limit: int = 5) -> List[str]:
    """Up to ``limit`` candidates resembling ``name`` (substring matches first, then fuzzy)."""
    candidates = sorted(candidates)
    lowered = name.lower()
    found = [c for c in candidates if lowered and (lowered in c or c in lowered)]
    found += [c for c in difflib.get_close_matches(lowered, candidates, n=limit, cutoff=0.5) if c not in found]
    return found[:limit]


def get_model_entry(name: str) -> ModelEntry:
    if not isinstance(name, str) or name not in _REGISTRY:
        close = close_names(str(name), _REGISTRY)
        hint = f"did you mean {', '.join(close)}?" if close else f"known models: {', '.join(sorted(_REGISTRY))}"
        raise UnknownModelError(f"unknown model {name!r}; {hint} (megzoo.list_models() lists all)")
    return _REGISTRY[name]


def model_entries() -> List[ModelEntry]:
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def list_models(pattern: Union[None, str, Iterable[str]] = None, pretrained: bool = False) -> List[str]:
    """Sorted model names matching ``pattern`` (a glob such as ``"resnet*"``, or several);
    with ``pretrained=True`` only those with at least one registered weight."""
    names = [entry.name for entry in model_entries()]
    if pattern:
        patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if pretrained:
        names = [n for n in names if weights_for(n)]
    return names


def get_model(name: str, **kwargs):
    """Build the model registered as ``name``; ``kwargs`` go to its builder
    (``pretrained``, ``num_classes``, ``features_only``, ...)."""
    return get_model_entry(name).builder(**kwargs)


def get_weights(name: str) -> Weights:
    """A registered weight by ``ARCH.TAG`` (or ``ARCH`` for its default)."""
    arch, _, tag = name.partition(".")
    get_model_entry(arch)  # unknown arch -> UnknownModelError with close names
    weights = find_weights(arch, tag or "default")
    if weights is None:
        tags = ", ".join(w.tag for w in weights_for(arch)) or "none"
        raise WeightsError(f"no weights {name!r}; {arch} has: {tags}")
    return weights


def model_info(name: str) -> dict:
    """Everything known about a model: family, params, GMACs at 224, summary and its weights
    (default first) with accuracy, source, hash, preprocessing."""
    entry = get_model_entry(name)
    weights = weights_for(entry.name)
    return {
        "name": entry.name,
        "family": entry.family,
        "summary": entry.summary,
        "params": entry.params,
        "gmacs": entry.gmacs,
        "default_weights": weights[0].name if weights else None,
        "weights": [w.as_dict() for w in weights],
    }
