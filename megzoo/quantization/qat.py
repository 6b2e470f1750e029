"""Quantization-aware fine-tuning: train with fake-quantized weights and activations, convert to int8.

    qat = prepare_qat(model)          # fused, fake-quantized (MegEngine's ema_fakequant_qconfig)
    ... train qat with a low learning rate (megzoo train --qat does this) ...
    q = convert_qat(qat)              # the int8 model, as megzoo.quantize returns

During training every fused conv + BN computes its batch statistics, folds them into the weights
and rounds the folded weights to int8 steps; every activation is rounded to the int8 step its
observer (an exponential moving average of the range) gives, with a straight-through gradient.
A checkpoint of the QAT model (``best.pkl`` of ``megzoo train --qat``, its ``best.json`` says
``"qat": true``) reloads with :func:`load_qat_checkpoint`.
"""
import os
from typing import Optional

from ..models.quantizable import QuantizableModel, QuantizationError
from .ptq import as_quantizable

__all__ = ["prepare_qat", "convert_qat", "load_qat_checkpoint", "is_qat_checkpoint", "QAT_OBSERVER"]

#: how ``prepare_qat`` observes activations (kept in the metadata)
QAT_OBSERVER = "ema"


def prepare_qat(model) -> QuantizableModel:
    """``model`` (a float megzoo model; not modified) in fake-quantized training form, in train mode."""
    from megengine.quantization import ema_fakequant_qconfig, quantize_qat

    from ..device import using_device

    qmodel = as_quantizable(model)
    with using_device(qmodel.quant_device().logical_name):  # observers beside the weights
        quantize_qat(qmodel, qconfig=ema_fakequant_qconfig)
    qmodel.train()
    qmodel.quantization = {"method": "qat", "observer": QAT_OBSERVER}
    return qmodel


def convert_qat(qmodel: QuantizableModel) -> QuantizableModel:
    """The int8 model of a fine-tuned QAT model (converted in place; eval mode)."""
    from megengine.quantization import quantize as to_int8

    if not isinstance(qmodel, QuantizableModel) or qmodel.precision != "qat":
        raise QuantizationError("convert_qat takes the model prepare_qat returned (fake-quantized form)")
    from ..device import using_device

    qmodel.eval()
    with using_device(qmodel.quant_device().logical_name):
        to_int8(qmodel)
    qmodel.eval()
    return qmodel


def is_qat_checkpoint(weights) -> bool:
    """True for a ``megzoo train --qat`` checkpoint (its JSON sidecar says ``"qat": true``)."""
    from ..weights.sidecar import read_weights_metadata

    meta = read_weights_metadata(weights)
    return bool(meta and meta.get("qat"))


def load_qat_checkpoint(path, model: Optional[str] = None, num_classes: Optional[int] = None) -> QuantizableModel:
    """The int8 model of a QAT checkpoint: the architecture (``model``, default the sidecar's)
    built without weights, made fake-quantized, the checkpoint loaded (strictly), converted."""
    from ..registry import get_model
    from ..weights.convert import checked_values
    from ..weights.sidecar import read_weights_metadata
    from ..weights.serialization import load_megengine_pickle

    meta = read_weights_metadata(path) or {}
    if not meta.get("qat"):
        raise QuantizationError(f"{path} is not a QAT checkpoint (its .json sidecar has no \"qat\": true): for a "
                                "float checkpoint, quantize with calibration images (--int8 --calibration DIR)")
    arch = model or meta.get("model")
    classes = num_classes or meta.get("num_classes")
    kwargs = dict(meta.get("model_kwargs") or {})  # as trained: width, norm layer, dropout ...
    qmodel = prepare_qat(get_model(arch, pretrained=False, num_classes=int(classes), **kwargs))
    state = checked_values(qmodel, load_megengine_pickle(os.fspath(path)), os.fspath(path))
    qmodel.load_state_dict(state, strict=True)
    qmodel = convert_qat(qmodel)
    qmodel.quantization = {"method": "qat", "observer": QAT_OBSERVER, "checkpoint": os.fspath(path)}
    return qmodel
