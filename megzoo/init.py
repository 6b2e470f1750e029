"""MSRA ("He") initialisation, the scheme of MegEngine's reference ResNet, for any module tree.

Public so other projects can call it on their own models::

    from megzoo.init import msra_init_, zero_init_residual_
    msra_init_(my_model)                  # conv / norm / linear, in place
    zero_init_residual_(my_model)         # blocks exposing ``residual_norm``

The scheme, per module type:

* ``Conv2d``: weight ~ N(0, std^2) with std = sqrt(2 / fan_out) (``msra_normal_``, mode ``fan_out``,
  ReLU gain); fan_out = (out_channels / groups) * kh * kw, MegEngine's convention for grouped
  weights of shape (G, O/G, I/G, kh, kw). Bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
* BatchNorm / GroupNorm / InstanceNorm / LayerNorm: weight 1, bias 0.
* ``Linear``: weight ``msra_uniform_`` with a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in));
  bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
"""
import math

import megengine.module as M
from megengine.module import init as mge_init

__all__ = ["msra_init_", "init_conv_", "init_linear_", "init_norm_", "zero_init_residual_", "NORM_TYPES"]

#: Module types whose affine parameters are reset to weight 1, bias 0.
NORM_TYPES = (M.BatchNorm1d, M.BatchNorm2d, M.GroupNorm, M.InstanceNorm, M.LayerNorm)


def _uniform_fan_in_(tensor, weight) -> None:
    fan_in, _ = mge_init.calculate_fan_in_and_fan_out(weight)
    bound = 1.0 / math.sqrt(fan_in)
    mge_init.uniform_(tensor, -bound, bound)


def init_conv_(conv: M.Conv2d) -> M.Conv2d:
    """MSRA-normal (fan_out, ReLU) weight; bias uniform in +-1/sqrt(fan_in). Returns ``conv``."""
    mge_init.msra_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        _uniform_fan_in_(conv.bias, conv.weight)
    return conv


def init_linear_(linear: M.Linear) -> M.Linear:
    """MSRA-uniform weight with a=sqrt(5); bias uniform in +-1/sqrt(fan_in). Returns ``linear``."""
    mge_init.msra_uniform_(linear.weight, a=math.sqrt(5))
    if linear.bias is not None:
        _uniform_fan_in_(linear.bias, linear.weight)
    return linear


def init_norm_(norm: M.Module) -> M.Module:
    """Affine weight 1, bias 0 (no-op for non-affine norms). Returns ``norm``."""
    if getattr(norm, "weight", None) is not None:
        mge_init.ones_(norm.weight)
    if getattr(norm, "bias", None) is not None:
        mge_init.zeros_(norm.bias)
    return norm


def msra_init_(module: M.Module) -> M.Module:
    """Initialise every Conv2d, normalisation and Linear layer below ``module`` in place.

    Returns ``module`` so it can be chained: ``model = msra_init_(MyNet())``.
    """
    for m in module.modules():
        if isinstance(m, M.Conv2d):
            init_conv_(m)
        elif isinstance(m, NORM_TYPES):
            init_norm_(m)
        elif isinstance(m, M.Linear):
            init_linear_(m)
    return module


def zero_init_residual_(module: M.Module, attr: str = "residual_norm") -> int:
    """Zero the weight (gamma) of the last norm layer of every residual block below ``module``.

    Each block then starts as an identity mapping (Goyal et al., 2017, "Accurate, Large Minibatch
    SGD"). A block opts in by exposing its last norm layer as attribute ``attr`` (megzoo's
    ``BasicBlock``/``Bottleneck`` expose ``residual_norm``); pass e.g. ``attr="bn3"`` for other
    models. Returns the number of norm layers zeroed.
    """
    count = 0
    for m in module.modules():
        norm = getattr(m, attr, None)
        if isinstance(norm, M.Module) and getattr(norm, "weight", None) is not None:
            mge_init.zeros_(norm.weight)
            count += 1
    return count
