"""The model as a training run needs it: built from the config (pretrained weights, a new number
of classes, stochastic depth) or given, in its quantization-aware form for QAT, on the training
device, with the stem and first stages frozen when asked."""
from typing import Callable, Optional

from ..device import move_tensors
from ..registry import get_model

__all__ = ["training_model", "build_model", "move_module"]


def move_module(module, device: Optional[str] = None) -> int:
    """Put ``module``'s parameters and buffers on ``device`` (default: MegEngine's current default
    device) in place (the same Parameter objects); returns how many were moved."""
    return len(move_tensors(list(module.parameters()) + list(module.buffers()), device))


def build_model(config, num_classes: int, resuming: bool, log: Optional[Callable[[str], None]] = None):
    """``config.model`` with ``num_classes`` outputs: ``config.pretrained`` weights unless
    ``resuming`` (the checkpoint's replace them), ``config.drop_path`` as the builder's stochastic
    depth; ``log`` gets the first line of the weights' load report."""
    pretrained = config.pretrained
    if resuming or pretrained in (None, False, ""):
        pretrained = False
    kwargs = dict(config.model_kwargs)
    if config.drop_path > 0:
        if config.qat:
            raise ValueError("drop_path does not combine with qat (the fused int8 blocks have no residual branch "
                             "to drop); fine-tune the int8 form without it")
        kwargs["drop_path_rate"] = config.drop_path
    try:
        model = get_model(config.model, pretrained=pretrained, num_classes=num_classes, **kwargs)
    except TypeError as error:
        if "drop_path_rate" not in str(error):
            raise
        raise ValueError(f"drop_path (stochastic depth) needs a model with residual blocks (the resnet, resnext "
                         f"and wide_resnet families); {config.model} has none: leave drop_path at 0") from None
    report = getattr(model, "load_report", None)
    if report is not None and log is not None:
        log(str(report).splitlines()[0])
    return model


def training_model(config, module, num_classes: int, resuming: bool, log: Optional[Callable[[str], None]] = None):
    """The model to train: ``module`` if given, else :func:`build_model`; its QAT form when
    ``config.qat`` (a fused, fake-quantized copy); moved to the current default device; the stem
    and the first ``config.freeze_stages`` stages frozen."""
    model = module if module is not None else build_model(config, num_classes, resuming, log)
    if config.qat:
        from ..quantization import prepare_qat

        if config.freeze_stages is not None:
            raise ValueError("freeze_stages does not combine with qat "
                             "(the fused int8 form has no stages to freeze)")
        model = prepare_qat(model)  # fused and fake-quantized (a copy of the float model)
    move_module(model)  # a module built before the device was chosen
    if config.freeze_stages is not None:
        if not hasattr(model, "freeze"):
            raise ValueError("freeze_stages needs a megzoo model (with .freeze())")
        model.freeze(config.freeze_stages)
    return model
