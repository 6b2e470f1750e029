"""Model families, one per module. Importing this package registers every builder."""
from .base import FeatureInfo, FeatureLevel, ZooModel
from .resnet import *  # noqa: F401,F403
from .resnet import __all__ as _resnet_all
from .vgg import *  # noqa: F401,F403
from .vgg import __all__ as _vgg_all

__all__ = ["FeatureInfo", "FeatureLevel", "ZooModel", *_resnet_all, *_vgg_all]
