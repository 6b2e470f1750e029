"""Model families, one per module. Importing this package registers every builder."""
from ._registry import (ModelEntry, UnknownModelError, get_model, get_model_entry, get_weights, list_models,  # noqa: F401
                        model_entries, model_info)  # (the lookups; megzoo.registry re-exports them)
from .base import FeatureInfo, FeatureLevel, ZooModel
from .resnet import *  # noqa: F401,F403
from .resnet import __all__ as _resnet_all
from .vgg import *  # noqa: F401,F403
from .vgg import __all__ as _vgg_all

__all__ = ["FeatureInfo", "FeatureLevel", "ZooModel", *_resnet_all, *_vgg_all]
