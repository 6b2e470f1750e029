"""megzoo: a model zoo for MegEngine (ResNet/ResNeXt/Wide-ResNet, VGG) with verified pretrained weights.

    import megzoo
    model = megzoo.resnet50(pretrained=True)
    megzoo.list_models("resnet*", pretrained=True)
"""
from ._version import __version__  # noqa: E402

from . import init  # noqa: F401
from .models import *  # noqa: F401,F403
from .models import __all__ as _models_all
from .registry import UnknownModelError, get_model, get_weights, list_models, model_info
from .weights import LoadReport, Weights, list_weights
from .images import read_image
from .transforms import EvalPreprocessor, eval_transform, train_transform
from .predict import Classifier, predict  # megzoo.predict / megzoo.evaluate name the functions, not the modules
from .evaluate import evaluate
from .train import TrainConfig, TrainResult  # megzoo.train is the training subpackage

__all__ = ["__version__", "init", "get_model", "list_models", "UnknownModelError", "model_info", "get_weights",
           "list_weights", "Weights", "LoadReport", *_models_all]
__all__ += ["read_image", "eval_transform", "train_transform", "EvalPreprocessor", "Classifier", "predict", "evaluate"]
__all__ += ["TrainConfig", "TrainResult"]
from . import inference  # noqa: E402  (fast inference: megzoo.compile, megzoo.inference.export/load)
from .inference import CompiledModel, CompiledModelBase, compile  # noqa: E402,F401,A001  (megzoo.compile; out of
__all__ += ["inference", "CompiledModel", "CompiledModelBase"]  # __all__ so `import *` keeps the builtin compile)
from . import quantization  # noqa: E402  (int8: megzoo.quantize, megzoo.quantization.prepare_qat)
from .quantization import quantize  # noqa: E402
__all__ += ["quantization", "quantize"]
from . import cleaning  # noqa: E402  (megzoo clean: label errors, broken and duplicated images)
from .cleaning import find_label_issues  # noqa: E402
__all__ += ["cleaning", "find_label_issues"]
