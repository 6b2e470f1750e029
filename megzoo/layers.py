"""Small building blocks shared by the model families: norm-layer factory, frozen BN, exact
adaptive average pooling and input checks."""
import functools
from typing import Callable, NamedTuple, Optional, Sequence, Tuple, Union

import megengine
import megengine.functional as F
import megengine.module as M
import numpy as np

__all__ = ["ConvNorm", "ResidualPlan", "DropPath", "FrozenBatchNorm2d", "AdaptiveAvgPool2d", "get_norm_layer",
           "NormLayer", "check_input", "pair"]

#: A callable ``channels -> module`` building one normalisation layer.
NormLayer = Callable[[int], M.Module]


class ConvNorm(NamedTuple):
    """One convolution, the norm layer applied to its output, and whether a ReLU follows."""
    conv: M.Conv2d
    norm: M.Module
    relu: bool


class ResidualPlan(NamedTuple):
    """What a module method computes, as data for a faster implementation to follow (the CPU
    training engine's block plans, ``megzoo.train.cpu_engine.blocks``): with ``residual``,
    ``relu(body(x) + shortcut(x))``, ``body`` the chain of ``ConvNorm`` (the last without ReLU),
    ``shortcut`` one ``ConvNorm`` or ``None`` for the identity, ``drop_path`` the branch's
    stochastic depth (or None); without, ``body(x)``."""
    body: Tuple[ConvNorm, ...]
    shortcut: Optional[ConvNorm] = None
    residual: bool = True
    drop_path: Optional[M.Module] = None


class FrozenBatchNorm2d(M.BatchNorm2d):
    """BatchNorm2d that always normalises with its running statistics and never updates them.

    Its weight and bias are detached in the forward pass (no gradients), in training mode too.
    The state-dict keys are those of ``BatchNorm2d``, so checkpoints load unchanged.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, **kwargs):
        kwargs.pop("freeze", None)
        super().__init__(num_features, eps=eps, freeze=True, **kwargs)


class DropPath(M.Module):
    """Stochastic depth (Huang et al. 2016) of a residual branch: in training, each sample's
    branch output is zeroed with probability ``rate`` and the kept ones scaled by
    ``1 / (1 - rate)``; in evaluation the identity. (N, ...) -> (N, ...)."""

    def __init__(self, rate: float):
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop path rate must be in [0, 1), got {rate!r}")
        self.rate = float(rate)

    def forward(self, x):
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = (megengine.random.uniform(size=shape) < keep).astype(x.dtype)
        return x * (mask / keep)

    def __repr__(self):
        return f"DropPath(rate={self.rate:g})"


def _group_norm(channels: int, num_groups: int = 32) -> M.GroupNorm:
    groups = num_groups
    while channels % groups:  # e.g. 3 or 16-channel layers in small custom configs
        groups //= 2
    return M.GroupNorm(groups, channels)


_NORM_LAYERS = {
    "bn": M.BatchNorm2d,
    "batchnorm": M.BatchNorm2d,
    "frozen_bn": FrozenBatchNorm2d,
    "frozenbn": FrozenBatchNorm2d,
    "gn": _group_norm,
    "groupnorm": _group_norm,
}


def get_norm_layer(norm: Union[None, str, NormLayer]) -> NormLayer:
    """Resolve ``norm`` into a callable ``channels -> module``.

    Accepts ``None`` (BatchNorm2d), one of ``"bn"``, ``"frozen_bn"``, ``"gn"`` (32 groups, halved
    until it divides the channels), ``"gn:G"`` (G groups), or any callable taking the channel count
    (e.g. a module class or ``functools.partial(M.GroupNorm, 16)``).
    """
    if norm is None:
        return M.BatchNorm2d
    if callable(norm):
        return norm
    if isinstance(norm, str):
        key = norm.lower()
        if key.startswith("gn:") and key[3:].isdigit() and int(key[3:]) > 0:
            return functools.partial(_group_norm, num_groups=int(key[3:]))
        if key in _NORM_LAYERS:
            return _NORM_LAYERS[key]
    raise ValueError(
        f"unknown norm_layer {norm!r}: use one of 'bn', 'frozen_bn', 'gn', 'gn:<groups>' "
        "or a callable taking the number of channels"
    )


def pair(value) -> Tuple[int, int]:
    """A kernel/stride/padding argument as ``(h, w)``: an int for both, or a 2-sequence."""
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _pooling_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) averaging matrix with PyTorch's adaptive-pool bins:
    bin i covers [floor(i*in/out), ceil((i+1)*in/out))."""
    mat = np.zeros((out_size, in_size), dtype=np.float32)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)
        mat[i, start:end] = 1.0 / (end - start)
    return mat


class AdaptiveAvgPool2d(M.Module):
    """Adaptive average pooling to ``output_size`` with PyTorch's bin boundaries at every size.

    MegEngine's ``adaptive_avg_pool2d`` uses uniform windows, which differ from PyTorch's (and so
    from what torchvision-trained VGG heads expect) whenever the input is not a multiple of the
    output. When it is a multiple this is a plain ``avg_pool2d``; otherwise two small matmuls.
    Input (N, C, H, W) -> output (N, C, oh, ow).
    """

    def __init__(self, output_size: Union[int, Sequence[int]]):
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.output_size = tuple(int(s) for s in output_size)

    def forward(self, x):
        (h, w), (oh, ow) = x.shape[2:], self.output_size
        if (h, w) == (oh, ow):
            return x
        if h % oh == 0 and w % ow == 0:
            kernel = (h // oh, w // ow)
            return F.avg_pool2d(x, kernel, stride=kernel)
        rows = megengine.tensor(_pooling_matrix(h, oh), device=x.device)
        cols = megengine.tensor(_pooling_matrix(w, ow).T, device=x.device)
        return F.matmul(F.matmul(rows, x), cols)  # (oh,h)@(N,C,h,w)@(w,ow) -> (N,C,oh,ow)

    def _module_info_string(self) -> str:
        return f"output_size={self.output_size}"


def check_input(x, in_channels: int, model_name: str, min_size: int = 1) -> None:
    """Raise ``ValueError`` unless ``x`` is (N, in_channels, H, W) with H, W >= ``min_size``."""
    shape = tuple(x.shape)
    if not all(isinstance(s, (int, np.integer)) for s in shape):
        return  # symbolic shape while tracing: nothing to check
    if len(shape) != 4:
        raise ValueError(
            f"{model_name} expects a 4-D input (N, C, H, W) with C={in_channels}, "
            f"got shape {shape}; add a batch axis with x[None] for one image"
        )
    if shape[1] != in_channels:
        if shape[3] == in_channels:  # (N, H, W, C): rebuilding with in_channels=H would be wrong advice
            hint = " (channels-last? transpose to N, C, H, W)"
        else:
            hint = f"; build the model with in_channels={shape[1]} to accept it"
        raise ValueError(f"{model_name} expects {in_channels} input channels (N, {in_channels}, H, W), "
                         f"got shape {shape}{hint}")
    if min(shape[2:]) < min_size:
        raise ValueError(
            f"{model_name} needs inputs of at least {min_size}x{min_size} pixels, got {shape[2]}x{shape[3]}"
        )
