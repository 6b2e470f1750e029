"""Post-training quantization: calibrate a megzoo model's activation ranges, convert it to int8.

    q = megzoo.quantize(model, "data/train")        # a folder, an array or an iterator of batches
    q(x)                                             # eager int8 MegEngine model, logits (N, classes)
    fast = megzoo.compile(q)                         # int8 QDQ ONNX on ONNX Runtime (or backend="lite")

The model is made quantizable (:meth:`~megzoo.models.base.ZooModel.to_quantizable`: a copy, the
float model is left alone), MegEngine observers are attached (``quantize_qat`` with a
calibration ``QConfig``: weights ``qint8_narrow`` min/max, activations by the observer chosen),
the calibration batches run through it in float32 with BatchNorm in inference mode, then
``megengine.quantization.quantize`` swaps every module for its int8 form. MegEngine quantizes
per tensor and symmetrically.
"""
import sys
import time
from functools import partial
from typing import Optional

from ..device import using_device
from ..models.quantizable import QuantizableModel, QuantizationError
from .calibration import DEFAULT_MAX_IMAGES, CalibrationSet, calibration_batches

__all__ = ["quantize", "OBSERVERS", "DEFAULT_OBSERVER", "observer_qconfig", "as_quantizable"]

#: activation observers: ``histogram`` (MegEngine's calibration default: the range minimising the
#: L2 error of a 2048-bin histogram, in numpy), ``minmax`` (the largest value seen), ``ema``
#: (an exponential moving average of each batch's range, momentum 0.9)
OBSERVERS = ("minmax", "histogram", "ema")
#: the default: measured on the digits model (docs/quantization.md)
DEFAULT_OBSERVER = "minmax"


def observer_qconfig(observer: str):
    """The calibration ``QConfig`` of ``observer`` (one of :data:`OBSERVERS`): no fake
    quantization, only the observers (weights: per-tensor min/max, ``qint8_narrow``)."""
    from megengine.quantization import ExponentialMovingAverageObserver, HistogramObserver, MinMaxObserver, QConfig

    kinds = {"minmax": MinMaxObserver, "histogram": HistogramObserver, "ema": ExponentialMovingAverageObserver}
    if observer not in kinds:
        raise ValueError(f"observer must be one of {', '.join(OBSERVERS)}, got {observer!r}")
    return QConfig(weight_observer=partial(MinMaxObserver, dtype="qint8_narrow"),
                   act_observer=partial(kinds[observer], dtype="qint8"), weight_fake_quant=None, act_fake_quant=None)


def as_quantizable(model) -> QuantizableModel:
    """``model``'s quantizable form: a float megzoo model is fused (a copy); a float
    :class:`QuantizableModel` is taken as it is; anything else is refused with the reason."""
    if isinstance(model, QuantizableModel):
        if model.precision != "float32":
            raise QuantizationError(f"{model.model_name} is already in {model.precision} form")
        return model
    if not hasattr(model, "to_quantizable"):
        raise QuantizationError(f"{type(model).__name__} is not a megzoo model: megzoo quantizes its ResNet/ResNeXt/"
                                "Wide-ResNet and VGG models (made quantizable by module surgery)")
    return model.to_quantizable()


def quantize(model, calibration_data, *, observer: str = DEFAULT_OBSERVER, batch_size: int = 32,
             max_images: Optional[int] = DEFAULT_MAX_IMAGES, preprocess=None,
             progress: bool = True) -> QuantizableModel:
    """An int8 copy of ``model`` calibrated on ``calibration_data``.

    Args:
        model: a megzoo classifier (float32; it is not modified).
        calibration_data: a folder of images (read with ``preprocess``, default the model's own
            evaluation preprocessing), a preprocessed float32 (N, C, H, W) array, or an iterable
            of such batches.
        observer: how activation ranges are chosen, one of :data:`OBSERVERS`.
        batch_size: images per calibration batch (folder or array input).
        max_images: images used at most (None: all); spread over the folder's sorted files.
        progress: a progress bar on stderr.

    Returns the :class:`~megzoo.models.quantizable.QuantizableModel` in int8 form (eval mode),
    with ``quantization`` = {observer, calibration: {source, images, batches}, seconds}.
    """
    import megengine
    from megengine.quantization import enable_observer, quantize as to_int8, quantize_qat
    from tqdm import tqdm

    qconfig = observer_qconfig(observer)
    qmodel = as_quantizable(model)
    device = qmodel.quant_device()
    record = CalibrationSet("")
    t0 = time.perf_counter()
    # observers, MegEngine's temporaries and the int8 weights on the device of the model's weights
    with using_device(device.logical_name):
        quantize_qat(qmodel, qconfig=qconfig)
        qmodel.eval()  # BatchNorm with its running statistics; eval() also switches observers off ...
        enable_observer(qmodel)  # ... so switch them back on
        bar = tqdm(desc="calibrating", unit="img", file=sys.stderr, disable=not progress, leave=False)
        try:
            for batch in calibration_batches(calibration_data, preprocess if preprocess is not None else model,
                                             batch_size=batch_size, max_images=max_images, record=record):
                qmodel(megengine.tensor(batch, device=device))
                bar.update(len(batch))
        finally:
            bar.close()
        to_int8(qmodel)
    qmodel.eval()
    qmodel.quantization = {"method": "ptq", "observer": observer, "calibration": record.as_dict(),
                           "seconds": round(time.perf_counter() - t0, 2)}
    return qmodel
