"""The int8 side of an export (``megzoo export --int8``): which int8 model to write, what checks it,
and how far the written file's answers are from the float model's.

    int8 = Int8Export((1, 3, 224, 224), checkpoint="resnet18.pkl", calibration="data/train")
    q, parity_inputs = int8.quantized(float_model)       # calibrated (or a QAT checkpoint as it is)
    export(q, "m.onnx", parity_inputs=parity_inputs, tolerance=INT8_TOLERANCE_STEPS)
    int8.agreement(float_model, "m.onnx")                # (top-1 agreement, images)

The int8 model is a QAT checkpoint's (:func:`~megzoo.quantization.qat.load_qat_checkpoint`, already
int8) or the float model calibrated on images (:func:`~megzoo.quantization.ptq.quantize`), both
with the preprocessing the checkpoint was trained with (its sidecar), else the model's own.
"""
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

from .calibration import DEFAULT_MAX_IMAGES, calibration_batches
from .compare import top1_agreement
from .ptq import DEFAULT_OBSERVER, quantize
from .qat import is_qat_checkpoint, load_qat_checkpoint

__all__ = ["Int8Export", "MissingCalibrationError", "AGREEMENT_IMAGES", "PARITY_IMAGES"]

#: calibration images the top-1 agreement of the written file is measured on, at most
AGREEMENT_IMAGES = 256
#: calibration images of the parity check's batch
PARITY_IMAGES = 8

PathLike = Union[str, "os.PathLike[str]"]


class MissingCalibrationError(ValueError):
    """An int8 export of a float model was asked for without calibration images."""


class Int8Export:
    """One int8 export: the int8 model, its parity inputs and its agreement with the float model.

    Args:
        input_shape: (N, C, H, W) the file is made for; H sets the preprocessing's input size.
        checkpoint: the weights file (a ``megzoo train --qat`` checkpoint is used as it is), or None.
        calibration: a folder of calibration images (e.g. the training folder); needed unless
            ``checkpoint`` is a QAT checkpoint, which they then only check.
        observer: how activation ranges are set (:data:`~megzoo.quantization.ptq.OBSERVERS`; default
            :data:`~megzoo.quantization.ptq.DEFAULT_OBSERVER`); ``max_images``: calibration images used at most.
        static_batch: the file takes batches of N only (the agreement then runs full batches of N).
        log: called with one line of progress (the calibration's images, observer and seconds).
    Raises :class:`MissingCalibrationError` without ``calibration`` for a float checkpoint.
    """

    def __init__(self, input_shape: Sequence[int], *, checkpoint: Optional[PathLike] = None,
                 calibration: Optional[PathLike] = None, observer: Optional[str] = None,
                 max_images: int = DEFAULT_MAX_IMAGES, static_batch: bool = False,
                 log: Optional[Callable[[str], None]] = None):
        self.input_shape = tuple(input_shape)
        self.checkpoint = checkpoint
        self.calibration = calibration
        self.observer = observer or DEFAULT_OBSERVER
        self.max_images = max_images
        self.static_batch = static_batch
        self.log = log
        self.preprocess = None
        self.qat_checkpoint = checkpoint is not None and is_qat_checkpoint(checkpoint)
        if not self.qat_checkpoint and calibration is None:
            raise MissingCalibrationError("an int8 export of a float model needs calibration images (calibration=DIR, "
                                          "e.g. the training folder), or a quantization-aware (QAT) checkpoint")

    def qat_model(self, arch: Optional[str] = None, num_classes: Optional[int] = None) -> Tuple[Any, Dict[str, Any]]:
        """The QAT checkpoint's int8 model (``arch``: default the sidecar's) and its export metadata
        (model name, the checkpoint's absolute path, the sidecar's class names and preprocessing)."""
        from ..model_source import sidecar_metadata

        model = load_qat_checkpoint(self.checkpoint, arch, num_classes)
        return model, {"model": model.model_name, "weights": str(Path(self.checkpoint).resolve()),
                       **sidecar_metadata(self.checkpoint)}

    def quantized(self, model) -> Tuple[Any, Optional[Dict[str, Any]]]:
        """(the int8 model, the parity inputs: name -> a preprocessed batch of calibration images,
        or None without them). A QAT checkpoint's model is returned as it is; a float one is
        calibrated on the images (a copy; ``model`` is left alone)."""
        self.preprocess = self._preprocess(model)
        if self.qat_checkpoint:  # already int8; calibration images (if any) only check it
            return model, (self._parity_batch() if self.calibration is not None else None)
        t0 = time.perf_counter()
        q = quantize(model, self.calibration, observer=self.observer, max_images=self.max_images,
                     preprocess=self.preprocess)
        calib = q.quantization["calibration"]
        if self.log is not None:
            self.log(f"calibrated on {calib['images']} images of {calib['source']} ({self.observer} observer) in "
                     f"{time.perf_counter() - t0:.1f} s")
        return q, self._parity_batch()

    def agreement(self, float_model, path: PathLike, threads: Optional[int] = None) -> Optional[Tuple[float, int]]:
        """(top-1 agreement in [0, 1], images) of the written int8 file at ``path`` with ``float_model``
        (compiled), on up to :data:`AGREEMENT_IMAGES` calibration images. None without calibration
        images or for a model that is not float32 (a QAT checkpoint has no fp32 form here)."""
        from ..inference import compile as compile_model, load

        if self.calibration is None or getattr(float_model, "precision", "float32") != "float32":
            return None
        fp32 = compile_model(float_model, threads=threads)
        written = load(path, threads=threads)
        batch_size = self.input_shape[0] if self.static_batch else 32
        batches = calibration_batches(self.calibration, self.preprocess or self._preprocess(float_model),
                                      batch_size=batch_size, max_images=AGREEMENT_IMAGES)
        if self.static_batch:  # the file takes its one batch size: full batches only
            batches = (b for b in batches if len(b) == batch_size)
        return top1_agreement(fp32, written, batches)

    def _preprocess(self, model):
        """The checkpoint's saved preprocessing (else ``model``'s) at the input size H."""
        from ..transforms import resolve_preprocess
        from ..weights.sidecar import read_weights_metadata

        saved = (read_weights_metadata(self.checkpoint) or {}).get("preprocess") if self.checkpoint else None
        size = self.input_shape[2]
        spec = saved if saved else model
        pre = resolve_preprocess(spec)
        return resolve_preprocess(spec, input_size=size,
                                  resize_size=pre.resize_size if pre.input_size == size else None)

    def _parity_batch(self) -> Dict[str, Any]:
        """The parity check's input: the first :data:`PARITY_IMAGES` calibration images."""
        batches = calibration_batches(self.calibration, self.preprocess, batch_size=PARITY_IMAGES,
                                      max_images=PARITY_IMAGES)
        return {"calibration images": next(iter(batches))}
