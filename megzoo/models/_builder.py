"""The one path every builder function goes through: construct, load weights, make a backbone."""
from typing import Optional, Sequence, Type

from ..weights import load_pretrained
from .base import ZooModel

__all__ = ["build_model", "builder_doc"]


def build_model(name: str, model_cls: Type[ZooModel], pretrained=False, *, features_only: bool = False,
                out_indices: Optional[Sequence[int]] = None, progress: bool = True, **kwargs) -> ZooModel:
    """Build ``model_cls(**kwargs)`` registered as ``name``, load ``pretrained`` weights (a bool,
    tag, path or URL; see :func:`megzoo.weights.load_pretrained`) and, with ``features_only``,
    turn it into a backbone returning the maps at ``out_indices``. The weights load report is
    kept as ``model.load_report``."""
    if out_indices is not None and not features_only:
        raise ValueError("out_indices only applies with features_only=True")
    model = model_cls(**kwargs)
    model._model_name = name
    model.load_report = None
    if pretrained is not False and pretrained is not None:
        model.load_report = load_pretrained(model, name, pretrained, progress=progress)
    if features_only:
        model.as_features(out_indices)
    return model


def builder_doc(levels: str, options_class: str):
    """Decorator appending the arguments every builder shares to its docstring."""

    def decorate(fn):
        fn.__doc__ = fn.__doc__.rstrip() + f"""

    Args:
        pretrained: False, True (the default weights), a weight tag (``megzoo.model_info(name)``
            lists them), or a path/URL of a checkpoint (.pkl or torchvision .pth).
        progress: show a download progress bar (on a terminal).
        features_only: return a backbone whose forward gives a list of feature maps.
        out_indices: which levels ({levels}) ``features_only`` returns; default all.
        **kwargs: :class:`{options_class}` options (num_classes, in_channels, norm_layer, ...).
    """
        return fn

    return decorate
