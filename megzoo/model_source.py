"""Turn what a user names on the command line into a model: a registered name, a checkpoint file, or a Python function.

:func:`model_from_source` is what ``megzoo export`` builds its model with:

* a registered name (``resnet50``) with optional ``weights`` (a tag, ``"default"``, or a file);
* a state-dict checkpoint (``.pkl`` from ``megengine.save(model.state_dict())``, or a ``.pth``),
  read by megzoo's allow-list reader (nothing in the file is run); the architecture comes from
  ``arch`` or the file name (``resnet50-best.pkl`` -> ``resnet50``);
* a pickled whole module (``megengine.save(model)``) only with ``trust_pickle=True``: unpickling
  it runs whatever code the file carries. Without it such a file is refused with
  :class:`UntrustedPickleError`, which names the flag and the safe alternative;
* ``FILE.py:FUNCTION``: any MegEngine module, made by the user's own code. The file is imported
  by path (as ``megengine.hub`` imports a ``hubconf.py``: its folder first on ``sys.path`` while
  it runs), so *it runs*: name only code you would run. ``FUNCTION()`` must return a
  ``megengine.module.Module``; ``weights`` (a state-dict file) are then read by the same
  allow-list reader and loaded strictly: every key of the module present with its shape, no
  other key, values checked (:func:`megzoo.weights.convert.checked_values`: floats where floats
  belong, no NaN/Inf). Metadata: the module's class name as ``model``, megzoo's default
  preprocessing unless a ``megzoo train`` sidecar beside the weights says otherwise.
"""
import importlib.util
import inspect
import re
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from .data import imagenet1k_categories
from .registry import get_model, get_model_entry, get_weights, list_models
from .weights import pretrained_value
from .weights.convert import ArchitectureMismatchError, checked_values, mismatch_details
from .weights.errors import UnsafeCheckpointError, WeightsError
from .weights.serialization import extract_state_dict, is_torch_zip, load_checkpoint
from .weights.sidecar import read_weights_metadata

__all__ = ["model_from_source", "guess_arch", "sidecar_metadata", "UntrustedPickleError", "is_function_source",
           "module_from_function", "load_module_weights"]

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


def _untrusted(path: Path, exc: Exception, then: str) -> UntrustedPickleError:
    """The refusal of a checkpoint holding pickled objects: the flag that would load it, and the safe way."""
    return UntrustedPickleError(
        f"{path} is not a plain state dict: it holds pickled objects ({exc}). Loading it would run code from the "
        "file. If you trust the file, pass --trust-pickle (trust_pickle=True) to unpickle it with megengine.load; "
        f"otherwise save model.state_dict() with megengine.save and {then}.")


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
    """``(model in eval mode, metadata)`` for ``source``, a registered model name, a checkpoint
    path or ``FILE.py:FUNCTION`` (module docstring; :func:`module_from_function`, which imports and
    so runs the file). ``metadata`` has ``model`` and ``weights`` and, for registered
    weights, their preprocessing (``color_order``, ``mean``, ``std``, ``resize_size``,
    ``input_size``, ``interpolation``) and, for 1000 classes, the ImageNet class names."""
    if is_function_source(source):
        if arch is not None or num_classes is not None:
            raise ValueError(f"{source}: the function builds the module, so --arch and --num-classes (arch=, "
                             "num_classes=) do not apply; give FUNCTION() the options it needs")
        return module_from_function(source, weights=weights, trust_pickle=trust_pickle)
    if source.lower().endswith(".py"):
        raise ValueError(f"{source} is a Python file: name the function that returns the module, as "
                         f"{source}:FUNCTION")
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
                raise _untrusted(path, exc, "export that with --arch NAME") from exc
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


def is_function_source(source) -> bool:
    """True for ``FILE.py:FUNCTION`` (a Python file and a function name in it)."""
    path, sep, function = str(source).rpartition(":")
    return bool(sep) and path.lower().endswith(".py") and bool(function)


def _importable(name: str) -> bool:
    """True when ``import name`` would find something (a loaded or an installed module)."""
    if name in sys.modules:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return True


def _import_file(path: Path):
    """The Python file at ``path`` imported as a module of its own (it runs), its folder first on
    ``sys.path`` meanwhile so it can import its neighbours. Its module name is the file's stem when
    no module has or could take that name (so a whole module pickled by code that imported the file
    under it unpickles with --trust-pickle), else a name of megzoo's own."""
    name = path.stem if path.stem.isidentifier() and not _importable(path.stem) else \
        "megzoo_user_" + re.sub(r"\W", "_", path.stem)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look classes up there
    folder = str(path.parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module


def module_from_function(source: str, *, weights: Optional[str] = None,
                         trust_pickle: bool = False) -> Tuple[Any, Dict[str, Any]]:
    """``(module in eval mode, metadata)`` for ``FILE.py:FUNCTION``: the file imported (its code
    runs), ``FUNCTION()`` called, the result checked to be a ``megengine.module.Module``, then
    ``weights`` (a state-dict file, optional) loaded into it by :func:`load_module_weights`.
    ``metadata``: ``model`` (the class name, or ``model_name`` where the module has one),
    ``weights``, ``source``, and what a ``megzoo train`` sidecar beside the weights records."""
    import megengine.module as M

    text, _, function = str(source).rpartition(":")
    path = Path(text).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no such Python file: {path} ({source} names FILE.py:FUNCTION, a function in "
                                "that file returning the module)")
    if not function.isidentifier():
        raise ValueError(f"{source}: {function!r} is not a Python function name")
    code = _import_file(path.resolve())
    build = getattr(code, function, None)
    if build is None:
        names = sorted(n for n, v in vars(code).items() if callable(v) and not n.startswith("_")
                       and getattr(v, "__module__", None) == code.__name__)
        defined = f" (it defines {', '.join(names)})" if names else ""
        raise ValueError(f"{path} has no function {function!r}{defined}")
    if not callable(build):
        raise ValueError(f"{source}: {function} is a {type(build).__name__}, not a function returning the module")
    try:
        inspect.signature(build).bind()
    except TypeError:
        raise ValueError(f"{source}: {function} must be callable without arguments (it is called as {function}()); "
                         "give its parameters defaults, or wrap it in a function that takes none") from None
    except ValueError:  # a builtin without a signature: let the call say
        pass
    model = build()
    if not isinstance(model, M.Module):
        what = (f"the class {model.__name__} instead of a megengine.module.Module: return an instance, "
                f"{model.__name__}(...)" if isinstance(model, type) and issubclass(model, M.Module)
                else f"{type(model).__name__} {_short(model)} instead of a megengine.module.Module")
        raise ValueError(f"{source} returned {what}")
    meta: Dict[str, Any] = {"model": getattr(model, "model_name", type(model).__name__), "weights": None,
                            "source": f"{path.resolve()}:{function}"}
    if weights is not None:
        meta["weights"] = load_module_weights(model, weights, trust_pickle=trust_pickle,
                                              owner=f"{type(model).__name__} (from {source})")
        meta.update(sidecar_metadata(weights))
    model.eval()
    return model, meta


def _short(value, limit: int = 40) -> str:
    """``repr(value)``, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _state_dict_of(path: Path, trust_pickle: bool) -> Dict[str, Any]:
    """The state dict in ``path``: by the allow-list reader; a pickled object (a whole module)
    only with ``trust_pickle``, by ``megengine.load``."""
    try:
        return load_checkpoint(path)
    except UnsafeCheckpointError as exc:
        if not trust_pickle:
            raise _untrusted(path, exc, "load that") from exc
    import megengine
    import megengine.module as M

    try:
        loaded = megengine.load(str(path))
    except (ImportError, AttributeError) as exc:  # a class the pickle names that cannot be found here
        raise WeightsError(f"cannot unpickle {path} with megengine.load: {exc}; save model.state_dict() with "
                           "megengine.save and load that instead (no --trust-pickle needed)") from None
    if isinstance(loaded, M.Module):
        return loaded.state_dict()
    if isinstance(loaded, dict):  # tensors as arrays, then the usual look-up under "state_dict", "model", ...
        loaded = {k: v.numpy() if hasattr(v, "numpy") and not isinstance(v, np.ndarray) else v
                  for k, v in loaded.items()}
    return extract_state_dict(loaded)


def load_module_weights(model, weights, *, trust_pickle: bool = False, owner: Optional[str] = None) -> str:
    """Load the state-dict file ``weights`` into ``model`` (any MegEngine module) strictly: the
    same keys and shapes, values checked (:func:`~megzoo.weights.convert.checked_values`), else
    :class:`~megzoo.weights.convert.ArchitectureMismatchError` naming the keys. The file is read
    by megzoo's allow-list reader (a MegEngine pickle or a PyTorch zip; nothing in it runs); a
    pickled module only with ``trust_pickle``. Returns the file's resolved path."""
    path = Path(weights).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"weight file not found: {path}")
    state = _state_dict_of(path, trust_pickle)
    owner = owner or type(model).__name__
    current = model.state_dict()
    missing = [k for k in current if k not in state]
    unexpected = [k for k in state if k not in current]
    mismatched = [f"{k}: file {tuple(np.shape(state[k]))}, module {tuple(np.shape(v))}" for k, v in current.items()
                  if k in state and tuple(np.shape(state[k])) != tuple(np.shape(v))]
    if missing or unexpected or mismatched:
        details = mismatch_details(missing, unexpected, mismatched)
        raise ArchitectureMismatchError(f"weights from {path} do not fit {owner}: {'; '.join(details)}. Check that "
                                        "the file is this module's state dict (model.state_dict())")
    model.load_state_dict(checked_values(model, state, str(path)), strict=True)
    return str(path.resolve())
