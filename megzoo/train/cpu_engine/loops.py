"""The row-wise loops of :mod:`.kernels`, compiled by Numba.

NumPy runs BatchNorm, max pooling and the residual ReLU as several passes over the whole array,
and a pass whose other operand is a per-channel vector (C,) runs an inner loop only C long; these
loops take about half of NumPy's time or less (figures: docs/training-speed.md;
``benchmarks/profile_training.py``). Each makes one pass per step that needs one (the
statistics, then the output) and visits each element once per pass; the max pool keeps the tap
of each maximum (uint8) so that its backward pass is one scatter.

Every function is serial and releases the GIL (``nogil``); the callers split the rows or images
between the cores (:func:`.conv.split_over`). Arrays are float32 C-contiguous:
(M, C) for the row-wise loops (M = N*H*W), (N, H, W, C) for pooling. Sums and sums of products
are accumulated in float64 (per channel, row after row). Compiled on first use (~4 s) and cached
beside this file, or in Numba's user cache directory when that is not writable; the plain
Python functions here are the loops' source (:func:`compiled` gives the compiled ones).
"""
import threading
import warnings
from types import SimpleNamespace

import numpy as np


def column_sums(a):
    """(M, C) -> float64 (C,): the sum of each column."""
    m, c = a.shape
    total = np.zeros(c, np.float64)
    for i in range(m):
        row = a[i]
        for j in range(c):
            total[j] += row[j]
    return total


def centre(y, mean):
    """``y -= mean`` in place, (M, C) - (C,); returns the float64 column sums of the squares."""
    m, c = y.shape
    total = np.zeros(c, np.float64)
    for i in range(m):
        row = y[i]
        for j in range(c):
            v = row[j] - mean[j]
            row[j] = v
            total[j] += np.float64(v) * v
    return total


def normalise(y, inv, gamma, beta, relu, out):
    """``y *= inv`` in place (the centred values become ``xhat``) and ``out = xhat * gamma + beta``,
    then ``max(out, 0)`` if ``relu``; (M, C) with per-channel (C,) vectors."""
    m, c = y.shape
    for i in range(m):
        row, o = y[i], out[i]
        for j in range(c):
            xhat = row[j] * inv[j]
            row[j] = xhat
            v = xhat * gamma[j] + beta[j]
            o[j] = 0.0 if relu and not v > 0.0 else v


def scale_shift(y, scale, shift, relu, out):
    """``out = y * scale + shift`` (BatchNorm in inference mode, folded into one scale and shift
    per channel), then ``max(out, 0)`` if ``relu``; (M, C) with per-channel (C,) vectors."""
    m, c = y.shape
    for i in range(m):
        row, o = y[i], out[i]
        for j in range(c):
            v = row[j] * scale[j] + shift[j]
            o[j] = 0.0 if relu and not v > 0.0 else v


def gradient_sums(d, xhat, out, masked):
    """The sums BatchNorm's backward pass needs, float64 (C,) each: ``(sum g, sum g * xhat)`` with
    ``g = d``, or (``out`` of more than 0 rows: the output after the ReLU) ``g = d`` where
    ``out > 0`` else 0, written to ``masked``; all (M, C)."""
    m, c = d.shape
    mask = out.shape[0] > 0
    sum_g, sum_gx = np.zeros(c, np.float64), np.zeros(c, np.float64)
    for i in range(m):
        drow, xrow = d[i], xhat[i]
        for j in range(c):
            g = drow[j]
            if mask:
                if not out[i, j] > 0.0:
                    g = np.float32(0.0)
                masked[i, j] = g
            sum_g[j] += g
            sum_gx[j] += np.float64(g) * xrow[j]
    return sum_g, sum_gx


def gradient_combine(g, xhat, shift, slope, k, dy):
    """``dy = (g - shift - xhat * slope) * k``, (M, C) with per-channel (C,) vectors (``dy`` may be ``g``)."""
    m, c = g.shape
    for i in range(m):
        grow, xrow, drow = g[i], xhat[i], dy[i]
        for j in range(c):
            drow[j] = ((grow[j] - shift[j]) - xrow[j] * slope[j]) * k[j]


def add_relu(a, b, out):
    """``out = max(a + b, 0)``, flat arrays of one length."""
    for i in range(a.shape[0]):
        v = a[i] + b[i]
        out[i] = v if v > 0.0 else 0.0


def relu_mask(d, out, masked):
    """``masked = d`` where ``out > 0`` else 0, flat arrays of one length."""
    for i in range(d.shape[0]):
        masked[i] = d[i] if out[i] > 0.0 else 0.0


def max_pool(x, first, end, kh, kw, sh, sw, ph, pw, out, argmax):
    """Max pooling of images ``first:end`` of ``x`` (N, H, W, C) into ``out`` (N, OH, OW, C);
    ``argmax`` (uint8, like ``out``) gets each maximum's tap ``i * kw + j``, the first in row-major
    order among equal values (padding never wins; a NaN wins and stays)."""
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    oh, ow = out.shape[1], out.shape[2]
    for n in range(first, end):
        for r in range(oh):
            for q in range(ow):
                o, ix = out[n, r, q], argmax[n, r, q]
                for j in range(c):
                    o[j] = -np.inf
                    ix[j] = 0
                for a in range(kh):
                    y = r * sh - ph + a
                    if y < 0 or y >= h:
                        continue
                    for b in range(kw):
                        xx = q * sw - pw + b
                        if xx < 0 or xx >= w:
                            continue
                        src, tap = x[n, y, xx], a * kw + b
                        for j in range(c):
                            v = src[j]
                            if v > o[j] or (v != v and o[j] == o[j]):
                                o[j] = v
                                ix[j] = tap


def max_pool_grad(d, argmax, first, end, kw, sh, sw, ph, pw, dx):
    """Gradient of :func:`max_pool` for images ``first:end``: ``dx`` (N, H, W, C) zeroed, then each
    output's gradient ``d`` (N, OH, OW, C) added to the input its ``argmax`` names (outputs in
    row-major order)."""
    oh, ow, c = d.shape[1], d.shape[2], d.shape[3]
    h, w = dx.shape[1], dx.shape[2]
    for n in range(first, end):
        dx[n] = 0.0
        for r in range(oh):
            for q in range(ow):
                g, ix = d[n, r, q], argmax[n, r, q]
                for j in range(c):
                    tap = ix[j]
                    y, xx = r * sh - ph + tap // kw, q * sw - pw + tap % kw
                    if 0 <= y < h and 0 <= xx < w:  # a window wholly in the padding has no input
                        dx[n, y, xx, j] += g[j]


def col2im_add(dcols, kh, kw, sh, sw, ph, pw, dh, dw, dx):
    """Adds one image's patch gradients ``dcols`` (OH*OW, KH*KW*C), tap-major then channel, into
    ``dx`` (H, W, C) at the inputs each tap read (padding skipped); outputs in row-major order."""
    h, w, c = dx.shape
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    for r in range(oh):
        for q in range(ow):
            row = dcols[r * ow + q]
            for a in range(kh):
                y = r * sh - ph + a * dh
                if y < 0 or y >= h:
                    continue
                for b in range(kw):
                    xx = q * sw - pw + b * dw
                    if xx < 0 or xx >= w:
                        continue
                    base, out = (a * kw + b) * c, dx[y, xx]
                    for j in range(c):
                        out[j] += row[base + j]

_LOOPS = (column_sums, centre, normalise, scale_shift, gradient_sums, gradient_combine, add_relu, relu_mask, max_pool,
          max_pool_grad, col2im_add)
_COMPILED = None
_COMPILING = threading.Lock()


def compiled() -> SimpleNamespace:
    """The loops above compiled by Numba, by name (Numba imported, and each loop compiled or read
    from the cache, on first use: not by ``import megzoo``, nor by hub users who only predict).
    Safe to call from several threads at once: the first caller compiles, the others wait for it.
    Where Numba finds no writable cache directory (beside this file, or its user cache), the loops
    are compiled anew in each process, with a warning that names ``NUMBA_CACHE_DIR``."""
    global _COMPILED
    if _COMPILED is None:
        with _COMPILING:
            if _COMPILED is None:
                _COMPILED = _compile()
    return _COMPILED


def _compile() -> SimpleNamespace:
    from numba import njit

    def jitted(**options) -> SimpleNamespace:
        jit = njit(nogil=True, **options)
        return SimpleNamespace(**{loop.__name__: jit(loop) for loop in _LOOPS})

    try:
        return jitted(cache=True)
    except RuntimeError as error:  # Numba: "cannot cache function ...: no locator available"
        warnings.warn(f"megzoo's host loops are compiled without a cache ({error}); each process "
                      "compiles them again (~4 s). Set NUMBA_CACHE_DIR to a writable directory to "
                      "keep them.", RuntimeWarning, stacklevel=3)
        return jitted()
