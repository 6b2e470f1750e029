"""A faster convolution backward pass for training on CPU.

MegEngine 1.13's CPU kernel for the *weight* gradient of a convolution is many times slower than
its forward pass and data gradient, which makes CPU training of a ResNet far slower than PyTorch's
(figures: docs/training-speed.md). The same gradient computed another way is much
faster and equal to within float rounding.

:func:`enable` makes the ``Conv2d`` modules of a model run inside a
:class:`megengine.autodiff.Function` whose forward pass is MegEngine's own convolution operator
(identical outputs) and whose backward pass computes

* the data gradient, only when the input needs one (not for the image fed to the first layer);
* the weight gradient, only when the weight needs one (not for frozen layers);
* the bias gradient, the sum of the output gradient over N, H, W;

by one of these formulations (:data:`METHODS`), for ``dW[o, c, i, j] = sum_{n, a, b}
dY[n, o, a, b] * Xpad[n, c, a * stride + i * dilation, b * stride + j * dilation]``:

* ``"blas"``: im2col on host arrays (a CPU tensor's ``.numpy()`` is a zero-copy view; the copies
  are split over the cores) and NumPy's multi-threaded BLAS for the products: ``sum_n dY[n]
  cols[n]^T`` for the weights, ``W^T dY[n]`` then col2im for the data; matrices of few pixels are
  multiplied as one product over the batch. NumPy's BLAS multiplies float32 matrices faster
  than MegEngine 1.13's CPU matrix product, so this is the fastest;
* from MegEngine operators only (data gradient: MegEngine's ``ConvolutionBackwardData``):
  ``"swap"``, a convolution with batch and channels swapped (the input seen as C images of N
  channels, the output gradient as O filters of N x OH x OW, stride and dilation exchanged, groups
  kept); ``"gemm"``, shifted strided views of the input concatenated per image and one batched
  matrix product over the batch; ``"im2col"``, ``F.sliding_window`` transposed to
  (N*OH*OW, C*KH*KW) and one matrix product;
* ``"native"``: MegEngine's own gradient (the module is left as it is).

``"auto"`` (the default) is :data:`AUTO_METHOD`, ``"blas"``: the fastest for every ResNet
convolution shape measured (``benchmarks/bench_training.py --layers``), so no per-shape choice.

``forward="blas"`` (opt-in for :func:`enable`; ``megzoo train``'s default on CPU) also computes
the *training* forward pass by im2col + BLAS: outputs equal to float rounding rather than bit for
bit, and faster than MegEngine's CPU convolution, most on small feature maps (e.g. 512 channels
at 1x1 or 2x2). Inference (no gradient recording) always uses MegEngine's operator.

The replacement is used on CPU devices only (``cpu*``, ``multithread*``, ``xpux`` without GPU)
with zero padding, the default compute mode and no mixed precision; anything else runs
MegEngine's own path. It is switchable: :func:`disable` (or ``enable(model, False)``), the context
manager :func:`fast_conv`, and the environment variable ``MEGZOO_FAST_CONV=0``
(:func:`enabled_by_environment`, which switches off the host blocks of :mod:`.blocks` too).
"""
import contextlib
import os
import types
from typing import Iterator, Optional, Tuple

import numpy as np
import megengine.functional as F
import megengine.module as M
from megengine import Tensor
from megengine.autodiff import Function

from ...device import is_cpu_device
from ...host import usable_cpus
from ...layers import pair

__all__ = ["METHODS", "FORWARDS", "enable", "disable", "fast_conv", "is_enabled", "conv2d", "conv2d_weight_grad",
           "conv2d_input_grad", "AUTO_METHOD", "is_cpu_device", "blas_conv2d", "blas_input_grad", "blas_weight_grad",
           "split_over", "enabled_by_environment", "tracked", "output_size", "kernel_taps", "tap_window",
           "im2col_nchw"]

#: what ``method="auto"`` means: one formulation for every shape, the fastest for every ResNet
#: convolution shape measured (``benchmarks/bench_training.py --layers``; results in benchmarks/results/)
AUTO_METHOD = "blas"
#: backward formulations (see the module docstring); "auto" is :data:`AUTO_METHOD`
METHODS = ("auto", "blas", "swap", "gemm", "im2col", "native")
#: how the training forward pass is computed: MegEngine's operator (bit-identical) or NumPy's BLAS
FORWARDS = ("native", "blas")

_ATTR = "_megzoo_fast_conv"


def enabled_by_environment() -> bool:
    """False when ``MEGZOO_FAST_CONV`` is ``0``/``false``/``no``/``off``: the engine then leaves every call
    to MegEngine's own operators."""
    return os.environ.get("MEGZOO_FAST_CONV", "1").strip().lower() not in ("0", "false", "no", "off")


# --------------------------------------------------------------------------- the gradients

def conv2d_input_grad(dy: Tensor, weight: Tensor, input_shape, stride=1, padding=0, dilation=1,
                      groups: int = 1) -> Tensor:
    """Gradient of ``conv2d(x, weight, ...)`` with respect to ``x`` (shape ``input_shape``),
    by MegEngine's ``ConvolutionBackwardData`` operator."""
    from megengine.core._imperative_rt.core2 import apply
    from megengine.core.ops import builtin
    from megengine.core.tensor.utils import astensor1d
    from megengine.functional.debug_param import get_execution_strategy

    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
    op = builtin.ConvolutionBackwardData(stride_h=sh, stride_w=sw, pad_h=ph, pad_w=pw, dilate_h=dh, dilate_w=dw,
                                         strategy=get_execution_strategy(),
                                         sparse="dense" if groups == 1 else "group")
    shape = astensor1d([int(s) for s in input_shape], dy, dtype="int32", device=dy.device)
    (dx,) = apply(op, weight, dy, shape)
    return dx


def _kernel_shape(weight_shape, groups: int) -> Tuple[int, int, int, int]:
    """(out_channels, in_channels per group, kh, kw) of a dense or grouped conv weight."""
    if groups == 1:
        o, c, kh, kw = weight_shape
        return o, c, kh, kw
    g, og, cg, kh, kw = weight_shape
    return g * og, cg, kh, kw


def _weight_grad_swap(x, dy, weight_shape, stride, padding, dilation, groups):
    n, c, h, w = x.shape
    o, cg, kh, kw = _kernel_shape(weight_shape, groups)
    oh, ow = dy.shape[2], dy.shape[3]
    if groups == 1:
        xt = x.transpose(1, 0, 2, 3)  # (C, N, H, W): C "images" of N channels
        ft = dy.transpose(1, 0, 2, 3)  # (O, N, OH, OW): O filters of N x OH x OW
    else:
        # (N, G, C/G, H, W) -> (C/G, G*N, H, W); dY (N, G, O/G, OH, OW) -> (G, O/G, N, OH, OW)
        xt = x.reshape(n, groups, cg, h, w).transpose(2, 1, 0, 3, 4).reshape(cg, groups * n, h, w)
        ft = dy.reshape(n, groups, o // groups, oh, ow).transpose(1, 2, 0, 3, 4)
    # stride and dilation exchange roles; the result is (C/G, O, >=KH, >=KW)
    g = F.conv2d(xt, ft, None, stride=dilation, padding=padding, dilation=stride, groups=groups)
    if g.shape[2] != kh or g.shape[3] != kw:
        g = g[:, :, :kh, :kw]
    if groups == 1:
        return g.transpose(1, 0, 2, 3)
    return g.reshape(cg, groups, o // groups, kh, kw).transpose(1, 2, 0, 3, 4)


def _weight_grad_gemm(x, dy, weight_shape, stride, padding, dilation, groups):
    n, c, h, w = x.shape
    o, cg, kh, kw = _kernel_shape(weight_shape, groups)
    oh, ow = dy.shape[2], dy.shape[3]
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    if ph or pw:
        x = F.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    p = oh * ow
    og = o // groups
    d = dy.reshape(n * groups, og, p)  # (N*G, O/G, P)
    taps = []
    for i in range(kh):
        for j in range(kw):
            top, left = i * dh, j * dw
            view = x[:, :, top:top + (oh - 1) * sh + 1:sh, left:left + (ow - 1) * sw + 1:sw]
            taps.append(view.reshape(n * groups, cg, p))  # (N*G, C/G, P)
    cols = taps[0] if len(taps) == 1 else F.concat(taps, axis=1)  # (N*G, K*C/G, P), tap-major
    g = F.matmul(d, cols, transpose_b=True)  # (N*G, O/G, K*C/G)
    g = g.reshape(n, groups, og, kh * kw, cg).sum(axis=0)  # (G, O/G, K, C/G)
    g = g.transpose(0, 1, 3, 2).reshape(groups, og, cg, kh, kw)
    return g.reshape(o, cg, kh, kw) if groups == 1 else g


def _weight_grad_im2col(x, dy, weight_shape, stride, padding, dilation, groups):
    n, c, h, w = x.shape
    o, cg, kh, kw = _kernel_shape(weight_shape, groups)
    oh, ow = dy.shape[2], dy.shape[3]
    cols = F.sliding_window(x, (kh, kw), padding=padding, stride=stride, dilation=dilation)  # (N, C, OH, OW, KH, KW)
    cols = cols.reshape(n, groups, cg, oh * ow, kh * kw).transpose(1, 0, 3, 2, 4)
    cols = cols.reshape(groups, n * oh * ow, cg * kh * kw)
    d = dy.reshape(n, groups, o // groups, oh * ow).transpose(1, 2, 0, 3).reshape(groups, o // groups, n * oh * ow)
    g = F.matmul(d, cols)  # (G, O/G, C/G*K)
    if groups == 1:
        return g.reshape(o, cg, kh, kw)
    return g.reshape(groups, o // groups, cg, kh, kw)


# --------------------------------------------------------------------------- BLAS (NumPy) kernels
# The same im2col algebra on host arrays: a CPU tensor's ``.numpy()`` is a zero-copy view, and
# NumPy's BLAS (multi-threaded OpenBLAS) multiplies float32 matrices faster than MegEngine 1.13's
# own CPU matrix product. Batches of small matrices (few output pixels) are done as one large
# product instead.

_SMALL_P = 256  #: below this many output pixels per image, one big product beats a batch of small ones


_POOL = None


def split_over(fn, n: int, work: int) -> None:
    """``fn(lo, hi)`` over ``range(n)`` (images, channels) split between the cores (NumPy's copies
    and ufuncs release the GIL); in the calling thread when ``work`` (elements touched) is too small
    to be worth it."""
    global _POOL
    parts = min(usable_cpus(), n)
    if parts <= 1 or work < (1 << 18):
        fn(0, n)
        return
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(usable_cpus(), thread_name_prefix="megzoo-host")
    bounds = [n * i // parts for i in range(parts + 1)]
    for future in [_POOL.submit(fn, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]:
        future.result()


def _tap(start: int, out: int, stride: int, size: int, pad: int):
    """For one kernel tap: (first output, end output, first input) that fall inside the image
    (output pixel o reads padded input start + o * stride, i.e. input start - pad + o * stride)."""
    first = max(0, -(-(pad - start) // stride))
    last = min(out, (size - 1 + pad - start) // stride + 1)
    return first, max(first, last), start - pad + first * stride


def kernel_taps(kh, kw, out_size, in_size, stride, padding, dilation):
    """(tap index, rows, columns) of every kernel tap, rows/columns as :func:`_tap` gives them."""
    (oh, ow), (h, w), (sh, sw), (ph, pw), (dh, dw) = out_size, in_size, stride, padding, dilation
    return [(i * kw + j, _tap(i * dh, oh, sh, h, ph), _tap(j * dw, ow, sw, w, pw))
            for i in range(kh) for j in range(kw)]


def tap_window(tap, stride: int) -> Tuple[slice, slice]:
    """(output slice, input slice) of one kernel tap along one axis, ``tap`` as :func:`_tap` gives it."""
    first, end, start = tap
    return slice(first, end), slice(start, start + (end - first - 1) * stride + 1, stride)


def im2col_nchw(x: np.ndarray, kh, kw, stride, padding, dilation, oh, ow,
                out: Optional[np.ndarray] = None) -> np.ndarray:
    """im2col of (N, C, H, W): (N, C*KH*KW, OH*OW), kernel-tap-minor like the weight layout;
    the zero padding is never materialised. Written into ``out`` when given (not for 1x1)."""
    n, c, h, w = x.shape
    (sh, sw), (ph, pw) = stride, padding
    if kh == kw == 1 and (sh, sw) == (1, 1) and (ph, pw) == (0, 0):
        return x.reshape(n, c, oh * ow)
    cols = np.empty((n, c, kh * kw, oh, ow), np.float32) if out is None else out.reshape(n, c, kh * kw, oh, ow)
    taps = kernel_taps(kh, kw, (oh, ow), (h, w), stride, padding, dilation)

    def fill(lo, hi):
        for k, (r0, r1, y0), (c0, c1, x0) in taps:
            block = cols[lo:hi, :, k]
            if r0 > 0 or r1 < oh or c0 > 0 or c1 < ow:
                block[:, :, :r0] = 0
                block[:, :, r1:] = 0
                block[:, :, r0:r1, :c0] = 0
                block[:, :, r0:r1, c1:] = 0
            if r1 > r0 and c1 > c0:
                (orow, irow), (ocol, icol) = tap_window((r0, r1, y0), sh), tap_window((c0, c1, x0), sw)
                block[:, :, orow, ocol] = x[lo:hi, :, irow, icol]

    split_over(fill, n, cols.size)
    return cols.reshape(n, c * kh * kw, oh * ow)


def _np_col2im(cols: np.ndarray, input_shape, kh, kw, stride, padding, dilation, oh, ow) -> np.ndarray:
    """Adjoint of :func:`im2col_nchw`: (N, C*KH*KW, OH*OW) -> (N, C, H, W), overlapping taps summed."""
    n, c, h, w = input_shape
    (sh, sw), (ph, pw) = stride, padding
    if kh == kw == 1 and (sh, sw) == (1, 1) and (ph, pw) == (0, 0):
        return cols.reshape(n, c, h, w)
    out = np.empty((n, c, h, w), np.float32)
    cols = cols.reshape(n, c, kh * kw, oh, ow)
    taps = kernel_taps(kh, kw, (oh, ow), (h, w), stride, padding, dilation)

    def add(lo, hi):
        out[lo:hi] = 0
        for k, (r0, r1, y0), (c0, c1, x0) in taps:
            if r1 > r0 and c1 > c0:
                (orow, irow), (ocol, icol) = tap_window((r0, r1, y0), sh), tap_window((c0, c1, x0), sw)
                out[lo:hi, :, irow, icol] += cols[lo:hi, :, k, orow, ocol]

    split_over(add, n, cols.size)
    return out


def _np_matmul_nb(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a (G, M, K) @ b (N, G, K, P) -> (N, G, M, P)`` (``a`` shared by the batch)."""
    n, g, k, p = b.shape
    if p >= _SMALL_P or n == 1:
        return np.matmul(a[None], b)
    flat = b.transpose(1, 2, 0, 3).reshape(g, k, n * p)  # one product over the whole batch
    return np.matmul(a, flat).reshape(g, a.shape[1], n, p).transpose(2, 0, 1, 3)


def _blas_geometry(x_shape, weight_shape, groups, oh, ow):
    n, c, h, w = x_shape
    o, cg, kh, kw = _kernel_shape(weight_shape, groups)
    return n, c, o, cg, kh, kw, oh * ow


def blas_conv2d(x: np.ndarray, weight: np.ndarray, stride, padding, dilation, groups, oh, ow) -> np.ndarray:
    """Forward convolution (no bias) with NumPy's BLAS: (N, O, OH, OW)."""
    n, c, o, cg, kh, kw, p = _blas_geometry(x.shape, weight.shape, groups, oh, ow)
    cols = im2col_nchw(x, kh, kw, stride, padding, dilation, oh, ow).reshape(n, groups, cg * kh * kw, p)
    y = _np_matmul_nb(weight.reshape(groups, o // groups, cg * kh * kw), cols)
    return y.reshape(n, o, oh, ow)


def blas_input_grad(dy: np.ndarray, weight: np.ndarray, input_shape, stride, padding, dilation, groups) -> np.ndarray:
    """Data gradient with NumPy's BLAS: ``W^T dY`` per image, then col2im."""
    oh, ow = dy.shape[2], dy.shape[3]
    n, c, o, cg, kh, kw, p = _blas_geometry(input_shape, weight.shape, groups, oh, ow)
    wt = weight.reshape(groups, o // groups, cg * kh * kw).transpose(0, 2, 1)  # (G, CgK, O/G)
    dcols = _np_matmul_nb(wt, dy.reshape(n, groups, o // groups, p))  # (N, G, CgK, P)
    return _np_col2im(dcols.reshape(n, c * kh * kw, p), input_shape, kh, kw, stride, padding, dilation, oh, ow)


def blas_weight_grad(x: np.ndarray, dy: np.ndarray, weight_shape, stride, padding, dilation, groups) -> np.ndarray:
    """Weight gradient with NumPy's BLAS: ``sum_n dY[n] cols[n]^T``."""
    oh, ow = dy.shape[2], dy.shape[3]
    n, c, o, cg, kh, kw, p = _blas_geometry(x.shape, weight_shape, groups, oh, ow)
    og, ck = o // groups, cg * kh * kw
    cols = im2col_nchw(x, kh, kw, stride, padding, dilation, oh, ow).reshape(n, groups, ck, p)
    d = dy.reshape(n, groups, og, p)
    if p >= _SMALL_P:
        g = np.zeros((groups, og, ck), np.float32)
        for i in range(n):
            g += np.matmul(d[i], cols[i].transpose(0, 2, 1))
    else:  # few pixels per image: one product over the whole batch
        g = np.matmul(d.transpose(1, 2, 0, 3).reshape(groups, og, n * p),
                      cols.transpose(1, 0, 3, 2).reshape(groups, n * p, ck))
    return g.reshape(weight_shape)


def _weight_grad_blas(x, dy, weight_shape, stride, padding, dilation, groups):
    from megengine import Tensor as _Tensor

    g = blas_weight_grad(x.numpy(), dy.numpy(), weight_shape, stride, padding, dilation, groups)
    return _Tensor(g, device=dy.device)


_WEIGHT_GRADS = {"swap": _weight_grad_swap, "gemm": _weight_grad_gemm, "im2col": _weight_grad_im2col,
                 "blas": _weight_grad_blas}


def conv2d_weight_grad(x: Tensor, dy: Tensor, weight_shape, stride=1, padding=0, dilation=1, groups: int = 1,
                       method: str = "auto") -> Tensor:
    """Gradient of ``conv2d(x, weight, ...)`` with respect to ``weight`` (of ``weight_shape``:
    (O, C, KH, KW), or (G, O/G, C/G, KH, KW) when grouped), given the output gradient ``dy``."""
    stride, padding, dilation = pair(stride), pair(padding), pair(dilation)
    weight_shape = tuple(int(s) for s in weight_shape)
    if method == "auto":
        method = AUTO_METHOD
    if method not in _WEIGHT_GRADS:
        raise ValueError(f"method must be one of {', '.join(m for m in METHODS if m != 'native')}, got {method!r}")
    return _WEIGHT_GRADS[method](x, dy, weight_shape, stride, padding, dilation, groups)


# --------------------------------------------------------------------------- the Function

def tracked(tensor: Tensor) -> bool:
    """Whether some active gradient recording needs a gradient for ``tensor``."""
    from megengine.core._imperative_rt import core2

    return core2.get_grad_key([tensor]) is not None


def output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output pixels along one axis of a zero-padded convolution or pooling (sizes in pixels)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


class _Conv2dFunction(Function):
    """``conv2d`` with the backward pass described above. One instance per call (MegEngine's
    rule for Functions). ``forward="native"`` computes the output with MegEngine's own operator
    (bit-identical outputs); ``"blas"`` with NumPy's BLAS (equal to float rounding)."""

    def __init__(self, stride, padding, dilation, groups, method, need_input_grad, need_weight_grad,
                 forward="native"):
        super().__init__()
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.method = method
        self.need_input_grad = need_input_grad
        self.need_weight_grad = need_weight_grad
        self.forward_mode = forward

    def forward(self, x, weight, bias=None):
        self.x, self.weight = x, weight
        self.has_bias = bias is not None
        if self.forward_mode != "blas":
            return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        from megengine import Tensor as _Tensor

        kh, kw = weight.shape[-2], weight.shape[-1]
        oh = output_size(x.shape[2], kh, self.stride[0], self.padding[0], self.dilation[0])
        ow = output_size(x.shape[3], kw, self.stride[1], self.padding[1], self.dilation[1])
        y = blas_conv2d(x.numpy(), weight.numpy(), self.stride, self.padding, self.dilation, self.groups, oh, ow)
        if bias is not None:
            y += bias.numpy()
        return _Tensor(y, device=x.device)

    def backward(self, dy):
        x, weight = self.x, self.weight
        self.x = self.weight = None  # free the saved tensors as soon as possible
        args = (self.stride, self.padding, self.dilation, self.groups)
        dx = dw = db = None
        if self.method == "blas":
            from megengine import Tensor as _Tensor

            dy_np = dy.numpy()
            if self.need_input_grad:
                dx = _Tensor(blas_input_grad(dy_np, weight.numpy(), tuple(x.shape), *args), device=dy.device)
            if self.need_weight_grad:
                dw = _Tensor(blas_weight_grad(x.numpy(), dy_np, tuple(weight.shape), *args), device=dy.device)
            if self.has_bias:
                db = _Tensor(dy_np.sum(axis=(0, 2, 3), keepdims=True), device=dy.device)
        else:
            if self.need_input_grad:
                dx = conv2d_input_grad(dy, weight, x.shape, *args)
            if self.need_weight_grad:
                dw = conv2d_weight_grad(x, dy, weight.shape, *args, method=self.method)
            if self.has_bias:
                db = dy.sum(axis=(0, 2, 3), keepdims=True)  # (1, O, 1, 1), the Conv2d bias shape
        return (dx, dw, db) if self.has_bias else (dx, dw)


def conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride=1, padding=0, dilation=1,
           groups: int = 1, method: str = "auto", forward: str = "native") -> Tensor:
    """``megengine.functional.conv2d`` (zero padding, default compute mode) with the fast backward
    pass; same output. ``bias`` must have shape (1, O, 1, 1) as in ``Conv2d``. Without gradient
    recording (inference) this is ``F.conv2d`` itself."""
    stride, padding, dilation = pair(stride), pair(padding), pair(dilation)
    need_x, need_w = tracked(x), tracked(weight)
    need_b = bias is not None and tracked(bias)
    if not (need_x or need_w or need_b) or method == "native":
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    if method == "auto":
        method = AUTO_METHOD
    fn = _Conv2dFunction(stride, padding, dilation, groups, method, need_x, need_w, forward)
    if bias is None:
        return fn(x, weight)
    return fn(x, weight, bias)


# --------------------------------------------------------------------------- switching modules

def _fast_forward(self, inp):
    """``Conv2d.forward`` with the fast backward (falls back to the module's own path off-CPU,
    for non-zero padding modes, non-default compute modes and mixed precision)."""
    from megengine.core.tensor import amp  # its _enabled flag: inside megengine.amp.autocast

    state = getattr(self, _ATTR, None)
    if (state is None or not state["on"] or not enabled_by_environment() or amp._enabled
            or self.padding_mode != "zeros" or str(self.compute_mode).lower() != "default"
            or not is_cpu_device(inp.device)):
        return type(self).forward(self, inp)
    return conv2d(inp, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
                  state["method"], state["forward"])


def _conv_modules(model):
    if isinstance(model, M.Conv2d):
        yield model
        return
    for module in model.modules():
        if type(module) is M.Conv2d or (isinstance(module, M.Conv2d) and type(module).forward is M.Conv2d.forward):
            yield module


def enable(model, on: bool = True, method: str = "auto", forward: str = "native") -> int:
    """Give every ``Conv2d`` of ``model`` the fast backward pass (``on=False``: remove it).
    Returns the number of convolutions switched. ``method`` is one of :data:`METHODS`.
    ``forward="native"`` (default) keeps MegEngine's forward operator, so outputs are unchanged
    bit for bit; ``"blas"`` also computes the training forward pass with NumPy's BLAS (faster on
    CPU, outputs equal to float rounding; inference is never changed). The state dict is unchanged."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if forward not in FORWARDS:
        raise ValueError(f"forward must be one of {', '.join(FORWARDS)}, got {forward!r}")
    count = 0
    for module in _conv_modules(model):
        if on and method != "native":
            object.__setattr__(module, _ATTR, {"on": True, "method": method, "forward": forward})
            object.__setattr__(module, "forward", types.MethodType(_fast_forward, module))
        else:
            module.__dict__.pop(_ATTR, None)
            module.__dict__.pop("forward", None)
        count += 1
    return count


def disable(model) -> int:
    """Remove the fast backward pass from ``model``'s convolutions; returns how many there are."""
    return enable(model, False)


def is_enabled(model) -> bool:
    """True when some ``Conv2d`` of ``model`` uses the fast backward pass."""
    return any(getattr(m, _ATTR, None) is not None for m in _conv_modules(model))


@contextlib.contextmanager
def fast_conv(model, method: str = "auto", forward: str = "native") -> Iterator[None]:
    """``with fast_conv(model): ...`` enables the fast backward pass meanwhile and restores the
    previous setting afterwards."""
    before = {id(m): (m.__dict__.get(_ATTR), m.__dict__.get("forward")) for m in _conv_modules(model)}
    enable(model, True, method, forward)
    try:
        yield
    finally:
        for module in _conv_modules(model):
            state, forward = before.get(id(module), (None, None))
            module.__dict__.pop(_ATTR, None)
            module.__dict__.pop("forward", None)
            if state is not None:
                object.__setattr__(module, _ATTR, state)
                object.__setattr__(module, "forward", forward)
