"""int8 quantization of megzoo models: post-training calibration and quantization-aware fine-tuning.

    q = megzoo.quantize(model, "data/train")    # post-training: calibrate, convert (a copy)
    q(x)                                         # eager MegEngine int8
    megzoo.compile(q)                            # ONNX Runtime on the int8 QDQ graph (or backend="lite")
    megzoo.inference.export(q, "m.onnx")         # an int8 .onnx (or .mge for MegEngine Lite)

The modules: :mod:`~megzoo.quantization.calibration` (the calibration images),
:mod:`~megzoo.quantization.ptq` (:func:`quantize`, the observers),
:mod:`~megzoo.quantization.qat` (:func:`prepare_qat`, :func:`convert_qat`, QAT checkpoints),
:mod:`~megzoo.quantization.export_int8` (:class:`Int8Export`: the int8 side of ``megzoo export --int8``),
:mod:`~megzoo.quantization.bf16` (:func:`emulate_bf16`: what bf16 arithmetic costs a model, measured on
any CPU).
The quantizable form itself (fused modules, stubs) is the models' (:mod:`megzoo.models.quantizable`);
its ONNX form is the converter's QDQ graph (:mod:`megzoo.inference.graph_onnx.qdq`). See docs/quantization.md.
"""
from ..models.quantizable import QuantizableModel, QuantizationError, precision_of
from .bf16 import emulate_bf16, fold_batch_norms, round_to_bf16
from .compare import top1_agreement
from .calibration import DEFAULT_MAX_IMAGES, CalibrationSet, calibration_batches, list_images
from .export_int8 import Int8Export, MissingCalibrationError
from .ptq import DEFAULT_OBSERVER, OBSERVERS, as_quantizable, observer_qconfig, quantize
from .qat import QAT_OBSERVER, convert_qat, is_qat_checkpoint, load_qat_checkpoint, prepare_qat

__all__ = ["quantize", "prepare_qat", "convert_qat", "load_qat_checkpoint", "is_qat_checkpoint", "QuantizableModel",
           "QuantizationError", "precision_of", "OBSERVERS", "DEFAULT_OBSERVER", "QAT_OBSERVER", "observer_qconfig",
           "as_quantizable", "calibration_batches", "list_images", "CalibrationSet", "DEFAULT_MAX_IMAGES",
           "top1_agreement", "Int8Export", "MissingCalibrationError", "emulate_bf16", "round_to_bf16",
           "fold_batch_norms"]
