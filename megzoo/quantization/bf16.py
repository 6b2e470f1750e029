"""bf16 inference emulated in float32, to measure its accuracy cost on a CPU without BF16.

What a bf16 runtime (OpenVINO with ``INFERENCE_PRECISION_HINT=bf16`` on AVX512_BF16 or AMX) does
numerically: the inputs of every convolution and matrix multiply, activations and weights, are
rounded to bfloat16 (8 significant bits, float32's exponent range) and the products are summed in
float32. :func:`emulate_bf16` reproduces that rounding exactly in a copy of a MegEngine model; the
summation order of the real kernels is not reproduced (a float32-sized difference, far below bf16's).

* :func:`round_to_bf16`: float32 -> the nearest bf16 value (ties to even), still float32, bit for bit
  what ``VCVTNEPS2BF16`` (Intel SDM) stores: NaN stays NaN (quiet), +-inf stays +-inf, a finite value
  at or above the midpoint between bf16's largest value (3.3895314e38) and 2**128 becomes inf (as IEEE
  rounding says; never NaN), and subnormal inputs become a zero of the same sign (the instruction's
  rule; ``flush_subnormals=False`` rounds them to bf16 subnormals instead).
* :func:`fold_batch_norms`: a copy with every inference BatchNorm folded into the convolution before
  it, as OpenVINO's graph has them (megzoo models: their quantizable form finds the conv + BN pairs,
  :meth:`megzoo.models.base.ZooModel.to_quantizable`; the arithmetic is MegEngine's
  ``megengine.utils.bn_fusion.fold_weight_bias``, in float32).
* :func:`emulate_bf16`: a copy (the model given is never changed) whose ``Conv2d`` and ``Linear``
  modules have bf16 weights and round their input to bf16 on every call; biases, BatchNorms that were
  not folded, residual adds and pooling stay float32.

MegEngine 1.13 has no bit-cast operator (``TypeCvt`` converts values), so the inputs are rounded in
numpy inside the forward pass: the emulated model is for evaluation only (eager, no gradient, not
traceable); calling it in training mode is refused.
"""
import contextlib
import copy
import logging

import megengine
import megengine.module as M
import numpy as np
from megengine import Parameter
from megengine.utils.bn_fusion import fold_weight_bias

from ..models.quantizable import QuantizationError, precision_of

__all__ = ["round_to_bf16", "fold_batch_norms", "emulate_bf16"]

_SIGN, _EXPONENT, _HIGH_HALF, _QUIET = 0x80000000, 0x7F800000, 0xFFFF0000, 0x00400000


def round_to_bf16(x: np.ndarray, *, flush_subnormals: bool = True) -> np.ndarray:
    """``x`` (float32, any shape) rounded to the nearest bfloat16 value, ties to even; float32 out,
    same shape, every value exactly representable in bf16 (its low 16 bits zero). NaN -> a quiet
    NaN of the same sign, +-inf -> +-inf, finite values from the midpoint above bf16's largest
    (0x7F7F8000, 3.3961e38) up -> inf. Subnormals (|x| < 2**-126) -> zero of the same sign, as
    ``VCVTNEPS2BF16`` does; with ``flush_subnormals=False`` they round to bf16's subnormals
    (multiples of 2**-133)."""
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise TypeError(f"round_to_bf16 rounds float32 values (what a bf16 runtime reads), got {x.dtype}: "
                        "pass x.astype(np.float32)")
    bits = x.astype(np.float32).view(np.uint32)  # a copy: the caller's array is not touched
    lsb = (bits >> 16) & 1
    # below 0xFFFF8001 (every value but some NaNs) the add cannot wrap around 2**32
    rounded = (bits + (0x7FFF + lsb)) & _HIGH_HALF
    rounded = np.where(np.isnan(x), (bits & _HIGH_HALF) | _QUIET, rounded)
    if flush_subnormals:
        rounded = np.where((bits & _EXPONENT) == 0, bits & _SIGN, rounded)
    return rounded.astype(np.uint32).view(np.float32)


def fold_batch_norms(model: M.Module) -> M.Module:
    """A copy of ``model`` in eval mode with each inference BatchNorm folded into the convolution
    before it (the conv gets the folded weight and bias; the BatchNorm becomes ``M.Identity``): a
    megzoo classifier through its quantizable form (every conv + BN pair of its family), any other
    module through the MegEngine ``ConvBn2d``/``ConvBnRelu2d`` modules it contains (a plain
    ``BatchNorm2d`` elsewhere stays as it is). A model without BatchNorm (GroupNorm) is copied as it
    is. Computes what ``model`` computes, to float32 rounding."""
    _check_float(model)
    if not any(isinstance(m, (M.BatchNorm2d, M.SyncBatchNorm)) for m in model.modules()):
        return _float_copy(model)  # nothing to fold (e.g. a GroupNorm model: its norms run as they are)
    if getattr(model, "features_only", False):
        raise ValueError(f"{model.model_name} is a features_only backbone, whose BatchNorms megzoo folds only in the "
                         "classifier's form: build it without features_only, or emulate bf16 with fold_bn=False")
    if hasattr(model, "to_quantizable"):
        try:
            with _module_warnings_muted():
                folded = model.to_quantizable()  # a copy, in eval mode
        except QuantizationError as error:
            raise ValueError(f"cannot fold the BatchNorms of {getattr(model, 'model_name', 'the model')}: {error}; "
                             "or emulate bf16 with them unfolded (fold_bn=False)") from error
    else:
        folded = copy.deepcopy(model)
        folded.eval()
    for module in folded.modules():
        if type(module) in (M.ConvBn2d, M.ConvBnRelu2d):
            _fold_into_conv(module)
    return folded


def emulate_bf16(model: M.Module, *, fold_bn: bool = True) -> M.Module:
    """A copy of ``model`` (float32, MegEngine) that computes as a bf16 runtime does: the weights of
    every ``Conv2d`` and ``Linear`` (and their subclasses, e.g. ``ConvRelu2d``) rounded to bf16 once,
    their input rounded to bf16 (:func:`round_to_bf16`) on every call, products summed in float32.
    ``fold_bn``: fold the BatchNorms into the convolutions first (:func:`fold_batch_norms`), so the
    folded weights are what is rounded, as in OpenVINO's graph. The copy is in eval mode; it takes
    and returns what ``model`` does ((N, C, H, W) float32 -> logits), eagerly; in training mode its
    call is refused (the rounding has no gradient). ``model`` itself is not changed."""
    emulated = fold_batch_norms(model) if fold_bn else _float_copy(model)
    for module in emulated.modules():
        if isinstance(module, (M.Conv2d, M.Linear)):
            module.weight = Parameter(round_to_bf16(module.weight.numpy()), device=module.weight.device)
            module.register_forward_pre_hook(_round_inputs)
    return emulated


def _float_copy(model: M.Module) -> M.Module:
    _check_float(model)
    duplicate = copy.deepcopy(model)
    duplicate.eval()
    return duplicate


def _check_float(model) -> None:
    if not isinstance(model, M.Module):
        raise TypeError(f"bf16 emulation takes a MegEngine module, got {type(model).__name__}")
    precision = precision_of(model)
    if precision != "float32":
        raise ValueError(f"the model is in {precision} form; bf16 emulation starts from the float32 model "
                         "(the one quantized or fine-tuned with QAT)")


@contextlib.contextmanager
def _module_warnings_muted():
    """MegEngine's Module warns once per submodule moved into a fused module ("its name ... will
    remain unchanged"), about a hundred lines for a ResNet: muted while the quantizable form is made."""
    logger = logging.getLogger("megengine.module.module")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _fold_into_conv(fused: M.Module) -> None:
    """``fused`` (a float ``ConvBn2d``/``ConvBnRelu2d``): its BatchNorm folded into its conv."""
    conv, bn = fused.conv, fused.bn
    if bn.running_mean is None:
        raise ValueError("a BatchNorm without running statistics (track_running_stats=False) normalises by each "
                         "batch and cannot be folded: emulate bf16 with fold_bn=False")
    weight, bias = fold_weight_bias(conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var,
                                    bn.eps)
    conv.weight = Parameter(weight.numpy(), device=conv.weight.device)
    conv.bias = Parameter(bias.numpy().reshape(conv._infer_bias_shape()), device=conv.weight.device)
    fused.bn = M.Identity()


def _round_inputs(module: M.Module, inputs: tuple) -> tuple:
    """Forward pre-hook of the emulated Conv2d/Linear modules: their inputs rounded to bf16."""
    if module.training:
        raise RuntimeError(f"{type(module).__name__} of a bf16-emulated model called in training mode: the "
                           "emulation is for evaluation (its rounding has no gradient); call .eval() on it")
    return tuple(_round_tensor(x) for x in inputs)


def _round_tensor(x):
    if not isinstance(x, megengine.Tensor):
        return x
    if x.dtype != np.float32:
        raise TypeError(f"bf16 emulation rounds float32 activations, got {x.dtype}: run the model in float32")
    return megengine.tensor(round_to_bf16(x.numpy()), device=x.device)
