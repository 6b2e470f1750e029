"""Model registry: every builder registers itself here; lookup by name or glob pattern.

``list_models("resnet*")``, ``get_model("resnet50", pretrained=True)``, ``model_info("vgg16")``.
Architecture facts (parameter count, GMACs at 224x224) are data attached at registration and
checked against the built models by the test suite.
"""
import difflib
import fnmatch
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Union

__all__ = ["ModelEntry", "UnknownModelError", "register_model", "list_models", "get_model",
           "get_model_entry", "model_entries"]


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
        family = fn.__module__.rsplit(".", 1)[-1]
        if fn.__name__ in _REGISTRY:
            raise RuntimeError(f"model {fn.__name__!r} registered twice")
        _REGISTRY[fn.__name__] = ModelEntry(fn.__name__, family, fn, params, gmacs)
        return fn

    return decorate


def _ensure_loaded() -> None:
    from . import models  # noqa: F401  (importing the families registers them)


def close_names(name: str, candidates: Iterable[str], limit: int = 5) -> List[str]:
    """Up to ``limit`` candidates resembling ``name`` (substring matches first, then fuzzy)."""
    candidates = sorted(candidates)
    lowered = name.lower()
    found = [c for c in candidates if lowered and (lowered in c or c in lowered)]
    found += [c for c in difflib.get_close_matches(lowered, candidates, n=limit, cutoff=0.5) if c not in found]
    return found[:limit]


def get_model_entry(name: str) -> ModelEntry:
    _ensure_loaded()
    if not isinstance(name, str) or name not in _REGISTRY:
        close = close_names(str(name), _REGISTRY)
        hint = f"did you mean {', '.join(close)}?" if close else f"known models: {', '.join(sorted(_REGISTRY))}"
        raise UnknownModelError(f"unknown model {name!r}; {hint} (megzoo.list_models() lists all)")
    return _REGISTRY[name]


def model_entries() -> List[ModelEntry]:
    _ensure_loaded()
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def list_models(pattern: Union[None, str, Iterable[str]] = None, pretrained: bool = False) -> List[str]:
    """Sorted model names matching ``pattern`` (a glob such as ``"resnet*"``, or several);
    with ``pretrained=True`` only those with at least one registered weight."""
    names = [entry.name for entry in model_entries()]
    if pattern:
        patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if pretrained:
        from .weights.catalog import weights_for

        names = [n for n in names if weights_for(n)]
    return names


def get_model(name: str, **kwargs):
    """Build the model registered as ``name``; ``kwargs`` go to its builder
    (``pretrained``, ``num_classes``, ``features_only``, ...)."""
    return get_model_entry(name).builder(**kwargs)
