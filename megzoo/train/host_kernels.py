"""NumPy kernels for CPU training on channels-last (NHWC) host arrays: convolution (forward, data
and weight gradients), BatchNorm in training mode and max pooling, forward and backward.

Channels-last because every product is then one large GEMM over the whole batch, with the pixels
as the long dimension: ``Y (N*OH*OW, O) = cols (N*OH*OW, KH*KW*C) @ F^T`` (``F`` (O, KH*KW*C): each
filter permuted in place, its transpose only a view), the weight gradient ``dY^T @ cols`` and the
data gradient ``dY @ F`` followed by col2im (at stride 1 on large maps, a convolution); im2col copies
runs of C contiguous floats; a 1x1 convolution at stride 1 needs no copy at all; BatchNorm reduces
over rows. On a 2-core AVX-512 machine NumPy's OpenBLAS multiplies these shapes at 95-140 GFLOP/s
against 55-105 for the per-image NCHW products (``benchmarks/profile_training.py``).

Shapes: activations (N, H, W, C) float32 C-contiguous; convolution weights as MegEngine stores them,
(O, C, KH, KW) (dense only: groups of 1); per-channel vectors (C,). Elementwise work is split over
the cores (:func:`megzoo.train.fast_conv.split_over`; NumPy releases the GIL).

Memory: every large output and temporary is taken from :data:`megzoo.train.workspace.WORKSPACE`;
temporaries go back inside the kernel, outputs are the caller's to give back (or to drop).
"""
from typing import NamedTuple, Optional, Tuple

import numpy as np

from .fast_conv import _np_cols, _output_size, _taps, _window, split_over
from .workspace import WORKSPACE

__all__ = ["ConvGeometry", "PoolGeometry", "conv_forward", "conv_input_grad", "conv_weight_grad",
           "bn_forward", "bn_backward", "maxpool_forward", "maxpool_backward", "to_nhwc", "to_nchw"]

_ROWS = 1024  #: rows summed sequentially before partial sums are combined (float32 accuracy)


class ConvGeometry(NamedTuple):
    """A dense convolution: kernel (KH, KW), stride, zero padding and dilation, each (h, w)."""
    kernel: Tuple[int, int]
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    dilation: Tuple[int, int]

    def out_size(self, h: int, w: int) -> Tuple[int, int]:
        return (_output_size(h, self.kernel[0], self.stride[0], self.padding[0], self.dilation[0]),
                _output_size(w, self.kernel[1], self.stride[1], self.padding[1], self.dilation[1]))

    @property
    def pointwise(self) -> bool:
        """1x1 at stride 1 without padding: the input itself is the patch matrix."""
        return self.kernel == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0)


class PoolGeometry(NamedTuple):
    """A max pooling window: kernel, stride, padding (padded positions never win), each (h, w)."""
    kernel: Tuple[int, int]
    stride: Tuple[int, int]
    padding: Tuple[int, int]

    def out_size(self, h: int, w: int) -> Tuple[int, int]:
        return (_output_size(h, self.kernel[0], self.stride[0], self.padding[0], 1),
                _output_size(w, self.kernel[1], self.stride[1], self.padding[1], 1))


def _transposed(x: np.ndarray, axes, out: np.ndarray) -> np.ndarray:
    def copy(lo, hi):
        out[lo:hi] = x[lo:hi].transpose(axes)

    split_over(copy, x.shape[0], x.size)
    return out


def to_nhwc(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> a C-contiguous (N, H, W, C) copy, lent from the workspace."""
    n, c, h, w = x.shape
    return _transposed(x, (0, 2, 3, 1), WORKSPACE.take((n, h, w, c)))


def to_nchw(x: np.ndarray) -> np.ndarray:
    """(N, H, W, C) -> a C-contiguous (N, C, H, W) copy of its own (not from the workspace: it
    leaves the host plan)."""
    n, h, w, c = x.shape
    return _transposed(x, (0, 3, 1, 2), np.empty((n, c, h, w), np.float32))


def _padded(x: np.ndarray, ph: int, pw: int) -> np.ndarray:
    """(N, H, W, C) zero-padded by (ph, pw) on both sides, lent from the workspace."""
    n, h, w, c = x.shape
    xp = WORKSPACE.take((n, h + 2 * ph, w + 2 * pw, c))

    def fill(lo, hi):
        xp[lo:hi, :ph] = 0
        xp[lo:hi, h + ph:] = 0
        xp[lo:hi, ph:h + ph, :pw] = 0
        xp[lo:hi, ph:h + ph, w + pw:] = 0
        xp[lo:hi, ph:h + ph, pw:w + pw] = x[lo:hi]

    split_over(fill, n, xp.size)
    return xp


# --------------------------------------------------------------------------- convolution

def _im2col(x: np.ndarray, g: ConvGeometry, oh: int, ow: int) -> np.ndarray:
    """(N, H, W, C) -> patches (N*OH*OW, KH*KW*C), tap-major then channel; lent from the
    workspace, except for a pointwise convolution (then the input itself)."""
    n, h, w, c = x.shape
    if g.pointwise:
        return x.reshape(n * h * w, c)
    kh, kw = g.kernel
    if g.dilation[1] == 1:
        return _im2col_rows(x, g, oh, ow)
    cols = WORKSPACE.take((n, oh, ow, kh * kw, c))
    taps = _taps(kh, kw, (oh, ow), (h, w), g.stride, g.padding, g.dilation)

    def fill(lo, hi):
        for k, rows, columns in taps:
            (orow, irow), (ocol, icol) = _window(rows, g.stride[0]), _window(columns, g.stride[1])
            block = cols[lo:hi, :, :, k]
            if orow.start > 0 or orow.stop < oh or ocol.start > 0 or ocol.stop < ow:
                block[:, :orow.start] = 0
                block[:, orow.stop:] = 0
                block[:, orow, :ocol.start] = 0
                block[:, orow, ocol.stop:] = 0
            if orow.stop > orow.start and ocol.stop > ocol.start:
                block[:, orow, ocol] = x[lo:hi, irow, icol]

    split_over(fill, n, cols.size)
    return cols.reshape(n * oh * ow, kh * kw * c)


def _im2col_rows(x: np.ndarray, g: ConvGeometry, oh: int, ow: int) -> np.ndarray:
    """:func:`_im2col` without dilation along W: for each kernel row, the KW taps of a pixel are
    KW*C consecutive floats of the zero-padded input, so one strided copy per kernel row (3 for a
    3x3, not 9) fills them."""
    n, h, w, c = x.shape
    kh, kw = g.kernel
    (sh, sw), (ph, pw), dh = g.stride, g.padding, g.dilation[0]
    xp = _padded(x, ph, pw) if ph or pw else x
    cols = WORKSPACE.take((n, oh, ow, kh, kw * c))
    sn, sy, sx, sc = xp.strides

    def fill(lo, hi):
        for i in range(kh):
            start = xp[lo:hi, i * dh:]
            view = np.lib.stride_tricks.as_strided(start, (hi - lo, oh, ow, kw * c), (sn, sy * sh, sx * sw, sc),
                                                   writeable=False)
            cols[lo:hi, :, :, i] = view

    split_over(fill, n, cols.size)
    if xp is not x:
        WORKSPACE.give(xp)
    return cols.reshape(n * oh * ow, kh * kw * c)


def _col2im(dcols: np.ndarray, input_shape, g: ConvGeometry, oh: int, ow: int) -> np.ndarray:
    """Adjoint of :func:`_im2col`: (N*OH*OW, KH*KW*C) -> (N, H, W, C), overlapping taps summed;
    lent from the workspace (for a pointwise convolution ``dcols`` itself)."""
    n, h, w, c = input_shape
    if g.pointwise:
        return dcols.reshape(n, h, w, c)
    kh, kw = g.kernel
    dcols = dcols.reshape(n, oh, ow, kh * kw, c)
    out = WORKSPACE.zeros((n, h, w, c))
    taps = _taps(kh, kw, (oh, ow), (h, w), g.stride, g.padding, g.dilation)

    def add(lo, hi):
        for k, rows, columns in taps:
            (orow, irow), (ocol, icol) = _window(rows, g.stride[0]), _window(columns, g.stride[1])
            if orow.stop > orow.start and ocol.stop > ocol.start:
                out[lo:hi, irow, icol] += dcols[lo:hi, orow, ocol, k]

    split_over(add, n, dcols.size)
    return out


def _filters(weight: np.ndarray) -> np.ndarray:
    """(O, C, KH, KW) -> (O, KH*KW*C): each filter in :func:`_im2col`'s column order. Only the
    inside of each filter is permuted (cache-friendly); the products use its transpose as a view,
    never a transposed copy of the whole weight (which costs more than the GEMM on small maps)."""
    o, c, kh, kw = weight.shape
    return np.ascontiguousarray(weight.reshape(o, c, kh * kw).transpose(0, 2, 1)).reshape(o, kh * kw * c)


#: below this many input channels, im2col copies runs of C floats too short to be fast in NHWC
#: (the RGB stem: 290 ms against 38 ms for the channels-first patches at batch 16 x 224 px)
_FEW_CHANNELS = 16


def conv_forward(x: np.ndarray, weight: np.ndarray, g: ConvGeometry):
    """(N, H, W, C) -> ``(y (N*OH*OW, O), patches)``; the patches are what
    :func:`conv_weight_grad` needs: (N*OH*OW, KH*KW*C), the input itself for a pointwise
    convolution, or for few input channels channels-first patches (N, C*KH*KW, OH*OW). Both are
    lent from the workspace, except the patches of a pointwise convolution."""
    n, h, w, c = x.shape
    oh, ow = g.out_size(h, w)
    o = weight.shape[0]
    y = WORKSPACE.take((n * oh * ow, o))
    if c < _FEW_CHANNELS and not g.pointwise:
        xt = _transposed(x, (0, 3, 1, 2), WORKSPACE.take((n, c, h, w)))
        kh, kw = g.kernel
        cols = _np_cols(xt, kh, kw, g.stride, g.padding, g.dilation, oh, ow,
                        out=WORKSPACE.take((n, c * kh * kw, oh * ow)))
        WORKSPACE.give(xt)
        np.matmul(cols.transpose(0, 2, 1), weight.reshape(o, -1).T, out=y.reshape(n, oh * ow, o))
        return y, cols
    cols = _im2col(x, g, oh, ow)
    np.matmul(cols, _filters(weight).T, out=y)
    return y, cols


def conv_input_grad(dy: np.ndarray, weight: np.ndarray, input_shape, g: ConvGeometry) -> np.ndarray:
    """Data gradient: ``dy`` (N*OH*OW, O) -> (N, H, W, C). At stride 1 it is itself a
    convolution (of ``dy`` padded by ``dilation * (k - 1) - padding`` with the flipped, transposed
    kernel), computed by the patch copies of the forward pass, where the output gradient outweighs the
    weight; otherwise ``dy @ F`` (:func:`_filters`) and col2im. Lent from the workspace."""
    n, h, w, c = input_shape
    oh, ow = g.out_size(h, w)
    (kh, kw), (dh, dw), (ph, pw) = g.kernel, g.dilation, g.padding
    # as a convolution only where the output gradient outweighs the weight (large maps): its
    # flipped, transposed kernel is a full transposed copy of the weight
    if g.stride == (1, 1) and not g.pointwise and dh * (kh - 1) >= ph and dw * (kw - 1) >= pw \
            and dy.size > 4 * weight.size:
        flipped = np.ascontiguousarray(weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))  # (C, O, KH, KW)
        transposed = ConvGeometry(g.kernel, (1, 1), (dh * (kh - 1) - ph, dw * (kw - 1) - pw), g.dilation)
        dx, cols = conv_forward(dy.reshape(n, oh, ow, -1), flipped, transposed)
        WORKSPACE.give(cols)
        return dx.reshape(n, h, w, c)
    filters = _filters(weight)
    dcols = np.matmul(dy, filters, out=WORKSPACE.take((dy.shape[0], filters.shape[1])))
    dx = _col2im(dcols, input_shape, g, oh, ow)
    if not g.pointwise:
        WORKSPACE.give(dcols)
    return dx


def conv_weight_grad(cols: np.ndarray, dy: np.ndarray, weight_shape) -> np.ndarray:
    """Weight gradient from :func:`conv_forward`'s patches and ``dy`` (N*OH*OW, O): (O, C, KH, KW)."""
    o, c, kh, kw = weight_shape
    if cols.ndim == 3:  # channels-first patches (N, C*KH*KW, P)
        n, ck, p = cols.shape
        d = dy.reshape(n, p, o)
        g = np.zeros((ck, o), np.float32)
        for i in range(n):
            g += cols[i] @ d[i]
        return np.ascontiguousarray(g.T).reshape(o, c, kh, kw)
    g = dy.T @ cols  # (O, KH*KW*C)
    return np.ascontiguousarray(g.reshape(o, kh * kw, c).transpose(0, 2, 1)).reshape(o, c, kh, kw)


# --------------------------------------------------------------------------- BatchNorm

def _column_sums(a: np.ndarray, b: Optional[np.ndarray] = None) -> np.ndarray:
    """Per-column sums of (M, C) ``a`` (or of ``a * b``) in float32, rows added in blocks of
    :data:`_ROWS` then the block sums added (no temporary for the product)."""
    m, c = a.shape
    total = np.zeros(c, np.float32)
    for lo in range(0, m, _ROWS):
        hi = min(m, lo + _ROWS)
        total += a[lo:hi].sum(axis=0) if b is None else np.einsum("mc,mc->c", a[lo:hi], b[lo:hi])
    return total


def _rows_split(fn, m: int, c: int):
    """``fn(lo, hi)`` over row ranges of an (M, C) array on all cores; returns the results in order."""
    results = {}

    def run(lo, hi):
        results[lo] = fn(lo * _ROWS, min(m, hi * _ROWS))

    split_over(run, -(-m // _ROWS), m * c)
    return [results[k] for k in sorted(results)]


def bn_forward(y: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float, relu: bool):
    """BatchNorm (training mode) of ``y`` (M, C) float32, M = N*H*W, then an optional ReLU.
    ``y`` is overwritten with the normalised ``xhat`` (kept for the backward pass). Returns
    ``(out (M, C), batch mean (C,), biased batch variance (C,), 1/sqrt(var + eps) (C,))``, ``out``
    lent from the workspace."""
    m, c = y.shape
    mean = sum(_rows_split(lambda lo, hi: _column_sums(y[lo:hi]), m, c)) / m
    mean = mean.astype(np.float32)

    def centre(lo, hi):
        block = y[lo:hi]
        block -= mean
        return _column_sums(block, block)

    var = (sum(_rows_split(centre, m, c)) / m).astype(np.float32)
    inv = (1.0 / np.sqrt(var + eps)).astype(np.float32)
    out = WORKSPACE.take(y.shape)

    def scale(lo, hi):
        block = y[lo:hi]
        block *= inv
        o = out[lo:hi]
        np.multiply(block, gamma, out=o)
        o += beta
        if relu:
            np.maximum(o, 0, out=o)

    _rows_split(scale, m, c)
    return out, mean, var, inv


def bn_backward(d: np.ndarray, xhat: np.ndarray, inv: np.ndarray, gamma: np.ndarray,
                out: Optional[np.ndarray] = None):
    """Gradients of :func:`bn_forward` from ``d`` (M, C), the gradient of its output; with ``out``
    (the output after the ReLU) ``d`` is first masked by ``out > 0``. Returns ``(d_y (M, C),
    d_gamma (C,), d_beta (C,))``, ``d_y`` lent from the workspace; ``d`` is not modified."""
    m, c = d.shape
    dy = WORKSPACE.take(xhat.shape)

    def sums(lo, hi):
        g = d[lo:hi]
        if out is not None:
            g = np.multiply(g, out[lo:hi] > 0, out=dy[lo:hi])
        return _column_sums(g), _column_sums(g, xhat[lo:hi])

    parts = _rows_split(sums, m, c)
    dbeta = sum(p[0] for p in parts).astype(np.float32)
    dgamma = sum(p[1] for p in parts).astype(np.float32)
    k = (gamma * inv).astype(np.float32)
    shift, slope = (dbeta / m).astype(np.float32), (dgamma / m).astype(np.float32)

    def combine(lo, hi):
        t = dy[lo:hi]
        if out is None:
            np.subtract(d[lo:hi], shift, out=t)
        else:
            t -= shift
        t -= xhat[lo:hi] * slope
        t *= k

    _rows_split(combine, m, c)
    return dy, dgamma, dbeta


# --------------------------------------------------------------------------- max pooling

def maxpool_forward(x: np.ndarray, g: PoolGeometry) -> np.ndarray:
    """(N, H, W, C) -> (N, OH, OW, C), the maximum over each window (padding excluded); lent
    from the workspace."""
    n, h, w, c = x.shape
    oh, ow = g.out_size(h, w)
    out = WORKSPACE.take((n, oh, ow, c))
    taps = _taps(g.kernel[0], g.kernel[1], (oh, ow), (h, w), g.stride, g.padding, (1, 1))

    def images(lo, hi):
        out[lo:hi] = -np.inf
        for _, rows, columns in taps:
            (orow, irow), (ocol, icol) = _window(rows, g.stride[0]), _window(columns, g.stride[1])
            if orow.stop > orow.start and ocol.stop > ocol.start:
                o = out[lo:hi, orow, ocol]
                np.maximum(o, x[lo:hi, irow, icol], out=o)

    split_over(images, n, out.size * len(taps))
    return out


def maxpool_backward(d: np.ndarray, x: np.ndarray, out: np.ndarray, g: PoolGeometry) -> np.ndarray:
    """Gradient of :func:`maxpool_forward`: each output's gradient ``d`` (N, OH, OW, C) goes to
    the first input of its window (taps in row-major order) equal to the maximum. -> (N, H, W, C),
    lent from the workspace."""
    n, h, w, c = x.shape
    oh, ow = out.shape[1:3]
    dx = WORKSPACE.take(x.shape)
    remaining = WORKSPACE.take(d.shape)  # gradient not yet given to an input of its window
    taps = _taps(g.kernel[0], g.kernel[1], (oh, ow), (h, w), g.stride, g.padding, (1, 1))

    def images(lo, hi):
        dx[lo:hi] = 0
        left = remaining[lo:hi]
        left[...] = d[lo:hi]
        for _, rows, columns in taps:
            (orow, irow), (ocol, icol) = _window(rows, g.stride[0]), _window(columns, g.stride[1])
            if orow.stop > orow.start and ocol.stop > ocol.start:
                pending = left[:, orow, ocol]
                given = np.where(x[lo:hi, irow, icol] == out[lo:hi, orow, ocol], pending, 0)
                dx[lo:hi, irow, icol] += given
                pending -= given  # exact: zero where given, unchanged elsewhere

    split_over(images, n, out.size * len(taps))
    WORKSPACE.give(remaining)
    return dx
