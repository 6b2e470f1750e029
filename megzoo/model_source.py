"""Turn what a user names on the command line into a model: a registered name, or a checkpoint file.

:func:`model_from_source` is what ``megzoo export`` builds its model with:

* a registered name (``resnet50``) with optional ``weights`` (a tag, ``"default"``, or a file);
* a state-dict checkpoint (``.pkl`` from ``megengine.save(model.state_dict())``, or a ``.pth``),
  read by megzoo's allow-list reader (nothing in the file is run); the architecture comes from
  ``arch`` or the file name (``resnet50-best.pkl`` -> ``resnet50``);
* a pickled whole module (``megengine.save(model)``) only with ``trust_pickle=True``: unpickling
  it runs whatever code the file carries. Without it such a file is refused with
  :class:`UntrustedPickleError`, which names the flag and the safe alternative.
"""
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from .data import imagenet1k_categories
from .registry import get_model, get_model_entry, get_weights, list_models
from .weights import pretrained_value
from .weights.errors import UnsafeCheckpointError, WeightsError
from .weights.serialization import is_torch_zip, load_checkpoint
from .weights.sidecar import read_weights_metadata

__all__ = ["model_from_source", "guess_arch", "sidecar_metadata", "UntrustedPickleError"]

#: the preprocessing fields of a sidecar's ``preprocess`` record, as export metadata names them
_PREPROCESS_KEYS = ("color_order", "mean", "std", "resize_size", "input_size", "interpolation")


def sidecar_metadata(weights) -> Dict[str, Any]:
    """Export metadata from the JSON sidecar of a ``megzoo train`` checkpoint (``best.json``
    beside ``best.pkl``): the evaluation preprocessing it was trained with and its class names
    (empty when ``weights`` has no sidecar)."""
    saved = read_weights_metadata(weights) or {}
    meta: Dict[str, Any] = {k: v for k, v in (saved.get("preprocess") or {}).items() if k in _PREPROCESS_KEYS}
    if saved.get("classes"):
        meta["class_names"] = list(saved["classes"])
    return meta


class UntrustedPickleError(WeightsError):
    """A checkpoint holds pickled objects (a whole module), which only ``--trust-pickle`` loads."""


def guess_arch(path: Path) -> Optional[str]:
    """The longest registered model name the file name starts with (``resnet50_best.pkl`` ->
    ``resnet50``), or None."""
    stem = path.name.lower()
    matches = [n for n in list_models() if stem.startswith(n)]
    return max(matches, key=len) if matches else None


def _trusted_module(path: Path):
    """``megengine.load`` of a file the user vouched for: the module it holds, or None (a state
    dict, or a torch zip, which the safe reader handles). Unpickling errors are raised as they are."""
    import megengine
    import megengine.module as M

    if is_torch_zip(path):  # a torch .pth: not a MegEngine pickle
        return None
    loaded = megengine.load(str(path))
    return loaded if isinstance(loaded, M.Module) else None


def model_from_source(source: str, *, weights: Optional[str] = None, arch: Optional[str] = None,
                      num_classes: Optional[int] = None, trust_pickle: bool = False) -> Tuple[Any, Dict[str, Any]]:
    """``(model in eval mode, metadata)`` for ``source``, a registered model name or a checkpoint
    path (module docstring). ``metadata`` has ``model`` and ``weights`` and, for registered
    weights, their preprocessing (``color_order``, ``mean``, ``std``, ``resize_size``,
    ``input_size``, ``interpolation``) and, for 1000 classes, the ImageNet class names."""
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    registered = None
    weights_label = weights
    if source in list_models():
        name = source
        pretrained = False if weights is None else pretrained_value(weights)
        model = get_model(name, pretrained=pretrained, **kwargs)
        if weights is not None and not Path(weights).expanduser().exists():
            try:
                registered = get_weights(name if pretrained is True else f"{name}.{weights}")
            except WeightsError:  # a URL or an alias the catalogue lacks: default preprocessing
                registered = None
    else:
        path = Path(source).expanduser()
        if not path.exists():
            get_model_entry(source)  # an unknown name: UnknownModelError listing close names
        weights_label = str(path.resolve())
        module = _trusted_module(path) if trust_pickle else None
        if module is not None:
            model, name = module, getattr(module, "model_name", type(module).__name__)
        else:
            saved = read_weights_metadata(path) or {}  # a megzoo train checkpoint names its model
            name = arch or saved.get("model") or guess_arch(path)
            if saved and name == saved.get("model"):
                kwargs = {**dict(saved.get("model_kwargs") or {}), **kwargs}
                if num_classes is None and saved.get("num_classes"):
                    kwargs["num_classes"] = int(saved["num_classes"])
            try:
                if name is None:
                    load_checkpoint(path)  # a pickled module is named as such, not as a missing --arch
                    raise ValueError(f"cannot tell the architecture of {path.name}: pass --arch NAME")
                model = get_model(name, pretrained=str(path), **kwargs)
            except UnsafeCheckpointError as exc:
                raise UntrustedPickleError(
                    f"{path} is not a plain state dict: it holds pickled objects ({exc}). Loading it would run code "
                    "from the file. If you trust the file, pass --trust-pickle (trust_pickle=True) to unpickle it "
                    "with megengine.load; otherwise save model.state_dict() with megengine.save and export that "
                    "with --arch NAME.") from exc
    model.eval()
    meta: Dict[str, Any] = {"model": name, "weights": weights_label}
    if registered is not None:
        pre = registered.preprocess
        meta.update(weights=registered.name, color_order=pre.color_order, mean=list(pre.mean), std=list(pre.std),
                    resize_size=pre.resize_size, input_size=pre.input_size, interpolation=pre.interpolation)
    if getattr(model, "num_classes", None) == 1000:
        meta["class_names"] = imagenet1k_categories()
    if registered is None:  # a local checkpoint's own preprocessing and classes (megzoo train's sidecar)
        meta.update(sidecar_metadata(weights if weights is not None else source))
    return model, meta
