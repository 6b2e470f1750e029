"""megzoo: a model zoo for MegEngine (ResNet/ResNeXt/Wide-ResNet, VGG) with verified pretrained weights.

    import megzoo
    model = megzoo.resnet50(pretrained=True)
    megzoo.list_models("resnet*", pretrained=True)
"""
__version__ = "0.1.0"

from . import init  # noqa: F401
from .models import *  # noqa: F401,F403
from .models import __all__ as _models_all
from .registry import UnknownModelError, get_model, list_models

__all__ = ["__version__", "init", "get_model", "list_models", "UnknownModelError", *_models_all]
