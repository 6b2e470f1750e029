"""Kernels for CPU training on channels-last (NHWC) host arrays: convolution (forward, data
and weight gradients), BatchNorm in training mode, max pooling and the residual ReLU, forward and
backward.

Channels-last because every product is then one large GEMM over the whole batch, with the pixels
as the long dimension: ``Y (N*OH*OW, O) = cols (N*OH*OW, KH*KW*C) @ F^T`` (``F`` (O, KH*KW*C): each
filter permuted in place, its transpose only a view), the weight gradient ``cols^T @ dY`` and the
data gradient ``dY @ F`` followed by col2im (at stride 1 on large maps, a convolution); im2col copies
runs of KW*C contiguous floats; a 1x1 convolution at stride 1 needs no copy at all. A patch matrix
of more than 16 MB (ResNet's 3x3 convolutions on 56x56 to 14x14 maps at batch 16) is never formed
whole: each core forms 2 MB blocks of it and multiplies each while it is in its L2 cache, with
single-threaded BLAS (faster than the whole matrix with multi-threaded BLAS: docs/training-speed.md).
BatchNorm, max pooling and the ReLU masks are loops compiled by Numba (:mod:`.loops`).

Shapes: activations (N, H, W, C) float32 C-contiguous; convolution weights as MegEngine stores them,
(O, C, KH, KW) (dense only: groups of 1); per-channel vectors (C,). Work is split over the cores
(:func:`.conv.split_over`; NumPy, BLAS and the compiled loops release the GIL).

Memory: every large output and temporary is taken from :data:`.workspace.WORKSPACE`;
temporaries go back inside the kernel, outputs are the caller's to give back (or to drop).
"""
import contextlib
import threading
from typing import Iterator, NamedTuple, Optional, Tuple

import numpy as np

from .conv import im2col_nchw, kernel_taps, output_size, split_over, tap_window
from .workspace import WORKSPACE


def _loops():
    """The compiled loops of :mod:`.loops` (Numba takes ~0.5 s to import: only
    when a host kernel first runs)."""
    from .loops import compiled

    return compiled()

__all__ = ["ConvGeometry", "PoolGeometry", "BlockedPatches", "conv_forward", "lent_patches", "conv_input_grad",
           "conv_weight_grad", "matmul_rows", "matmul_tn", "single_blas_thread", "bn_forward", "bn_backward",
           "add_relu", "relu_mask", "maxpool_forward", "maxpool_backward", "to_nhwc", "to_nchw"]



class ConvGeometry(NamedTuple):
    """A dense convolution: kernel (KH, KW), stride, zero padding and dilation, each (h, w)."""
    kernel: Tuple[int, int]
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    dilation: Tuple[int, int]

    def out_size(self, h: int, w: int) -> Tuple[int, int]:
        return (output_size(h, self.kernel[0], self.stride[0], self.padding[0], self.dilation[0]),
                output_size(w, self.kernel[1], self.stride[1], self.padding[1], self.dilation[1]))

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
        return (output_size(h, self.kernel[0], self.stride[0], self.padding[0], 1),
                output_size(w, self.kernel[1], self.stride[1], self.padding[1], 1))


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
    taps = kernel_taps(kh, kw, (oh, ow), (h, w), g.stride, g.padding, g.dilation)

    def fill(lo, hi):
        for k, rows, columns in taps:
            (orow, irow), (ocol, icol) = tap_window(rows, g.stride[0]), tap_window(columns, g.stride[1])
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


def _fill_rows(xp: np.ndarray, g: ConvGeometry, band, ow: int, out: np.ndarray) -> np.ndarray:
    """Patches of output rows ``r0:r1`` of images ``i0:i1`` (``band``) from the padded input ``xp``
    into ``out`` (at least that many floats): without dilation along W the KW taps of a pixel are
    KW*C consecutive floats of ``xp``, so one strided copy per kernel row (3 for a 3x3, not 9)
    fills them. -> (rows, KH*KW*C), a view of ``out``."""
    i0, i1, r0, r1 = band
    c = xp.shape[3]
    kh, kw = g.kernel
    (sh, sw), dh = g.stride, g.dilation[0]
    n, rows = i1 - i0, r1 - r0
    cols = out.reshape(-1)[:n * rows * ow * kh * kw * c].reshape(n, rows, ow, kh, kw * c)
    sn, sy, sx, sc = xp.strides
    for i in range(kh):
        start = xp[i0:i1, r0 * sh + i * dh:]
        cols[:, :, :, i] = np.lib.stride_tricks.as_strided(start, (n, rows, ow, kw * c), (sn, sy * sh, sx * sw, sc),
                                                           writeable=False)
    return cols.reshape(n * rows * ow, kh * kw * c)


def _im2col_rows(x: np.ndarray, g: ConvGeometry, oh: int, ow: int) -> np.ndarray:
    """:func:`_im2col` without dilation along W (:func:`_fill_rows` on each core's images)."""
    n, h, w, c = x.shape
    kh, kw = g.kernel
    xp = _padded(x, *g.padding) if any(g.padding) else x
    cols = WORKSPACE.take((n, oh, ow, kh, kw * c))
    split_over(lambda lo, hi: _fill_rows(xp, g, (lo, hi, 0, oh), ow, cols[lo:hi]), n, cols.size)
    if xp is not x:
        WORKSPACE.give(xp)
    return cols.reshape(n * oh * ow, kh * kw * c)


# ------------------------------------------------------------ convolution by blocks of patches

#: a patch matrix of more bytes than this is never formed whole: the forward pass and the weight
#: gradient form it block by block, each block multiplied while it is in the core's L2 cache
_BLOCKED_ABOVE = 16 << 20
_BLOCK_BYTES = 1 << 21  #: bytes of patches per block (2 MB: one core's L2 on the machines measured)


class BlockedPatches(NamedTuple):
    """What :func:`conv_weight_grad` needs when :func:`conv_forward` never formed the patch matrix
    whole: the convolution's input (N, H, W, C), owned by the caller, and its geometry."""
    x: np.ndarray
    geometry: ConvGeometry


def _blocked(x_shape, g: ConvGeometry) -> bool:
    n, h, w, c = x_shape
    oh, ow = g.out_size(h, w)
    return (not g.pointwise and g.dilation[1] == 1 and c >= _FEW_CHANNELS
            and n * oh * ow * g.kernel[0] * g.kernel[1] * c * 4 > _BLOCKED_ABOVE)


def _bands(n: int, oh: int, ow: int, row_floats: int):
    """Blocks of about :data:`_BLOCK_BYTES` of patches: ``(i0, i1, r0, r1)``, output rows of one
    image on large maps, whole images on small ones (each block contiguous in the output)."""
    rows = max(1, _BLOCK_BYTES // (4 * row_floats))
    if oh * ow >= rows:
        per = max(1, rows // ow)
        return [(i, i + 1, r, min(oh, r + per)) for i in range(n) for r in range(0, oh, per)]
    per = max(1, rows // (oh * ow))
    return [(i, min(n, i + per), 0, oh) for i in range(0, n, per)]


_BLAS = None  # threadpoolctl's controller, made on first use
_BLAS_LIMIT = None  # the owner's limit while it holds single_blas_thread()
_BLAS_OWNER = None  # the thread that switched BLAS to one thread
_BLAS_DEPTH = 0  # the owner's nesting depth
_BLAS_LOCK = threading.Lock()


@contextlib.contextmanager
def single_blas_thread() -> Iterator[None]:
    """NumPy's BLAS single-threaded meanwhile (each core then runs its own products; every BLAS
    library loaded when this is first used is switched, NumPy's among them). Re-entrant:
    only the outermost call switches, since each switch back to several threads costs ~0.5 ms
    (OpenBLAS re-arms its workers): a host plan holds it for its whole forward or backward pass.

    The BLAS thread count is one setting for the process, and NumPy's OpenBLAS 0.3.23 was seen
    to ignore changes made from some threads other than the one that made the last change, so
    the thread that switched (the owner) is the one that switches back, when its outermost call
    ends; another thread entering meanwhile runs under the owner's switch and never switches
    itself, even if the owner leaves first (its products are then multi-threaded: slower, never
    wrong)."""
    global _BLAS, _BLAS_LIMIT, _BLAS_OWNER, _BLAS_DEPTH
    me = threading.get_ident()
    with _BLAS_LOCK:
        if _BLAS_OWNER is None:
            if _BLAS is None:
                from threadpoolctl import ThreadpoolController

                _BLAS = ThreadpoolController()
            _BLAS_LIMIT = _BLAS.limit(limits=1, user_api="blas")
            _BLAS_OWNER = me
        owner = _BLAS_OWNER == me
        if owner:
            _BLAS_DEPTH += 1
    try:
        yield
    finally:
        if owner:
            with _BLAS_LOCK:
                _BLAS_DEPTH -= 1
                if not _BLAS_DEPTH:
                    limit, _BLAS_LIMIT, _BLAS_OWNER = _BLAS_LIMIT, None, None  # released even if restoring fails
                    limit.restore_original_limits()


def _over_bands(fn, bands) -> list:
    """``fn(bands share)`` on every core (single-threaded BLAS); the results in core order."""
    results = {}

    def run(lo, hi):
        results[lo] = fn(bands[lo:hi])

    with single_blas_thread():
        split_over(run, len(bands), 1 << 30)
    return [results[k] for k in sorted(results)]


def matmul_rows(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = a @ b`` (``a`` (..., M, K), ``out`` (..., M, N)) with the leading axis split between
    the cores, each core's product single-threaded: OpenBLAS's own threads keep spinning (and
    calling ``sched_yield``) after a product, competing with the copies and loops that follow
    (much system time per step: ``benchmarks/profile_training.py``)."""
    with single_blas_thread():
        split_over(lambda lo, hi: np.matmul(a[lo:hi], b, out=out[lo:hi]), a.shape[0], 1 << 30)
    return out


def matmul_tn(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = a^T @ b`` (``a`` (K, M), ``b`` (K, N), ``out`` (M, N)) with the M output rows split
    between the cores (single-threaded products, as :func:`matmul_rows`). Not the summed K: its
    partial products would each be a whole (M, N) array (9.4 MB for a 512-filter 3x3 weight)."""
    with single_blas_thread():
        split_over(lambda lo, hi: np.matmul(a[:, lo:hi].T, b, out=out[lo:hi]), a.shape[1], 1 << 30)
    return out


def _conv_forward_blocked(x: np.ndarray, weight: np.ndarray, g: ConvGeometry, y: np.ndarray) -> None:
    """``y`` (N*OH*OW, O) = the convolution of ``x``, block by block of patches."""
    n, h, w, c = x.shape
    oh, ow = g.out_size(h, w)
    o, k = weight.shape[0], g.kernel[0] * g.kernel[1] * c
    xp = _padded(x, *g.padding) if any(g.padding) else x
    filters = _filters(weight).T
    y4 = y.reshape(n, oh, ow, o)

    def run(bands):
        buf = np.empty(_BLOCK_BYTES // 4 + k * ow, np.float32)
        for band in bands:
            i0, i1, r0, r1 = band
            np.matmul(_fill_rows(xp, g, band, ow, buf), filters, out=y4[i0:i1, r0:r1].reshape(-1, o))

    _over_bands(run, _bands(n, oh, ow, k))
    if xp is not x:
        WORKSPACE.give(xp)


def _weight_grad_blocked(p: BlockedPatches, dy: np.ndarray, o: int) -> np.ndarray:
    """``patches^T @ dy`` (KH*KW*C, O) with the patches formed block by block from ``p.x``."""
    x, g = p
    n, h, w, c = x.shape
    oh, ow = g.out_size(h, w)
    k = g.kernel[0] * g.kernel[1] * c
    xp = _padded(x, *g.padding) if any(g.padding) else x
    dy4 = dy.reshape(n, oh, ow, o)

    def run(bands):
        buf = np.empty(_BLOCK_BYTES // 4 + k * ow, np.float32)
        total, part = np.zeros((k, o), np.float32), np.empty((k, o), np.float32)
        for band in bands:
            i0, i1, r0, r1 = band
            np.matmul(_fill_rows(xp, g, band, ow, buf).T, dy4[i0:i1, r0:r1].reshape(-1, o), out=part)
            total += part
        return total

    parts = _over_bands(run, _bands(n, oh, ow, k))
    if xp is not x:
        WORKSPACE.give(xp)
    return sum(parts[1:], parts[0])


def _filters(weight: np.ndarray) -> np.ndarray:
    """(O, C, KH, KW) -> (O, KH*KW*C): each filter in :func:`_im2col`'s column order. Only the
    inside of each filter is permuted (cache-friendly); the products use its transpose as a view,
    never a transposed copy of the whole weight (which costs more than the GEMM on small maps)."""
    o, c, kh, kw = weight.shape
    return np.ascontiguousarray(weight.reshape(o, c, kh * kw).transpose(0, 2, 1)).reshape(o, kh * kw * c)


#: below this many input channels, im2col copies runs of C floats too short to be fast in NHWC
#: (the RGB stem: channels-first patches are several times faster; ``benchmarks/profile_training.py``)
_FEW_CHANNELS = 16


def conv_forward(x: np.ndarray, weight: np.ndarray, g: ConvGeometry):
    """(N, H, W, C) -> ``(y (N*OH*OW, O), patches)``; the patches are what
    :func:`conv_weight_grad` needs: (N*OH*OW, KH*KW*C), the input itself for a pointwise
    convolution, for few input channels channels-first patches (N, C*KH*KW, OH*OW), and for a
    patch matrix of more than :data:`_BLOCKED_ABOVE` bytes :class:`BlockedPatches` (the matrix is
    formed and multiplied block by block, never whole). ``y`` and patch arrays are lent from the
    workspace, except the patches of a pointwise convolution (:func:`lent_patches`)."""
    n, h, w, c = x.shape
    oh, ow = g.out_size(h, w)
    o = weight.shape[0]
    y = WORKSPACE.take((n * oh * ow, o))
    if c < _FEW_CHANNELS and not g.pointwise:
        xt = _transposed(x, (0, 3, 1, 2), WORKSPACE.take((n, c, h, w)))
        kh, kw = g.kernel
        cols = im2col_nchw(xt, kh, kw, g.stride, g.padding, g.dilation, oh, ow,
                        out=WORKSPACE.take((n, c * kh * kw, oh * ow)))
        WORKSPACE.give(xt)
        matmul_rows(cols.transpose(0, 2, 1), weight.reshape(o, -1).T, y.reshape(n, oh * ow, o))
        return y, cols
    if _blocked(x.shape, g):
        _conv_forward_blocked(x, weight, g, y)
        return y, BlockedPatches(x, g)
    cols = _im2col(x, g, oh, ow)
    matmul_rows(cols, _filters(weight).T, y)
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
        WORKSPACE.give(lent_patches(cols, transposed))
        return dx.reshape(n, h, w, c)
    filters = _filters(weight)
    if not g.pointwise:
        return _input_grad_by_images(dy, filters, input_shape, g)
    return matmul_rows(dy, filters, WORKSPACE.take((dy.shape[0], filters.shape[1]))).reshape(n, h, w, c)


_MIN_GEMM_ROWS = 256  # rows of one dY @ F product of the per-image data gradient, at least


def _input_grad_by_images(dy: np.ndarray, filters: np.ndarray, input_shape, g: ConvGeometry) -> np.ndarray:
    """``dy @ F`` then col2im, a few images at a time on each core (their patch gradients stay in
    cache; the summing loop is compiled, :func:`.loops.col2im_add`). Small maps
    take as many images per product as make ``_MIN_GEMM_ROWS`` rows: one image of a 1x1 map is a
    single row, and a product per row reads the whole filter matrix each time. -> (N, H, W, C),
    lent from the workspace."""
    n, h, w, c = input_shape
    oh, ow = g.out_size(h, w)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = g.kernel, g.stride, g.padding, g.dilation
    rows = oh * ow
    dy3 = dy.reshape(n, rows, -1)
    dx = WORKSPACE.take((n, h, w, c))
    add = _loops().col2im_add
    per = max(1, -(-_MIN_GEMM_ROWS // rows))  # images per product

    def images(lo, hi):
        dcols = np.empty((min(per, hi - lo) * rows, filters.shape[1]), np.float32)
        for first in range(lo, hi, per):
            last = min(hi, first + per)
            part = dcols[:(last - first) * rows]
            np.matmul(dy3[first:last].reshape(-1, dy3.shape[2]), filters, out=part)
            for i in range(first, last):
                dx[i] = 0
                add(part[(i - first) * rows:(i - first + 1) * rows], kh, kw, sh, sw, ph, pw, dh, dw, dx[i])

    with single_blas_thread():
        split_over(images, n, 1 << 30)
    return dx


def lent_patches(patches, g: ConvGeometry) -> Optional[np.ndarray]:
    """The array among :func:`conv_forward`'s patches to give back to the workspace, if any."""
    return None if g.pointwise or isinstance(patches, BlockedPatches) else patches


def conv_weight_grad(cols, dy: np.ndarray, weight_shape) -> np.ndarray:
    """Weight gradient from :func:`conv_forward`'s patches and ``dy`` (N*OH*OW, O): (O, C, KH, KW)."""
    o, c, kh, kw = weight_shape
    if isinstance(cols, BlockedPatches):
        gt = _weight_grad_blocked(cols, dy, o)
        return np.ascontiguousarray(gt.reshape(kh * kw, c, o).transpose(2, 1, 0)).reshape(o, c, kh, kw)
    if cols.ndim == 3:  # channels-first patches (N, C*KH*KW, P): a sum of per-image products
        n, ck, p = cols.shape
        d = dy.reshape(n, p, o)
        parts = {}

        def images(lo, hi):
            total = cols[lo] @ d[lo]
            for i in range(lo + 1, hi):
                total += cols[i] @ d[i]
            parts[lo] = total

        with single_blas_thread():
            split_over(images, n, 1 << 30)
        g = sum((parts[k] for k in sorted(parts)[1:]), parts[min(parts)])
        return np.ascontiguousarray(g.T).reshape(o, c, kh, kw)
    if cols.shape[0] < 4 * cols.shape[1]:
        # few pixels, a large weight (deep layers on small maps): dY^T @ cols gives the weight in
        # filter order; the other product's (KH*KW*C, O) result would need a strided transpose of
        # the whole weight (slower than this product for e.g. 512 3x3 filters at 1x1)
        gm = matmul_rows(dy.T, cols, WORKSPACE.take((o, cols.shape[1])))  # (O, KH*KW*C)
        # a copy always (for a 1x1 kernel the transpose is contiguous: ascontiguousarray would
        # return a view of the buffer given back)
        g = gm.reshape(o, kh * kw, c).transpose(0, 2, 1).copy().reshape(o, c, kh, kw)
        WORKSPACE.give(gm)
        return g
    # many pixels: cols^T @ dY, the same sums faster from OpenBLAS than dY^T @ cols for the
    # 3x3 shapes of a ResNet on large maps (``benchmarks/profile_training.py``)
    gt = matmul_tn(cols, dy, WORKSPACE.take((cols.shape[1], o)))  # (KH*KW*C, O)
    g = gt.reshape(kh * kw, c, o).transpose(2, 1, 0).copy().reshape(o, c, kh, kw)
    WORKSPACE.give(gt)
    return g


# --------------------------------------------------------------------------- BatchNorm

def _rows_split(fn, m: int, c: int) -> list:
    """``fn(lo, hi)`` over row ranges of an (M, C) array, one range per core; results in order."""
    results = {}

    def run(lo, hi):
        results[lo] = fn(lo, hi)

    split_over(run, m, m * c)
    return [results[k] for k in sorted(results)]


def bn_forward(y: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float, relu: bool):
    """BatchNorm (training mode) of ``y`` (M, C) float32, M = N*H*W, then an optional ReLU.
    ``y`` is overwritten with the normalised ``xhat`` (kept for the backward pass). Returns
    ``(out (M, C), batch mean (C,), biased batch variance (C,), 1/sqrt(var + eps) (C,))``, ``out``
    lent from the workspace. Two passes for the statistics (the mean, then the squares of the
    centred values: no cancellation), one for the output (:mod:`.loops`)."""
    m, c = y.shape
    loops = _loops()  # here, not in the pool's threads (Numba itself compiles on the first call, under its lock)
    mean = (sum(_rows_split(lambda lo, hi: loops.column_sums(y[lo:hi]), m, c)) / m).astype(np.float32)
    var = (sum(_rows_split(lambda lo, hi: loops.centre(y[lo:hi], mean), m, c)) / m).astype(np.float32)
    inv = (1.0 / np.sqrt(var + eps)).astype(np.float32)
    gamma, beta = np.ascontiguousarray(gamma, np.float32), np.ascontiguousarray(beta, np.float32)
    out = WORKSPACE.take(y.shape)
    _rows_split(lambda lo, hi: loops.normalise(y[lo:hi], inv, gamma, beta, relu, out[lo:hi]), m, c)
    return out, mean, var, inv


def bn_inference(y: np.ndarray, mean: np.ndarray, var: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                 eps: float, relu: bool) -> np.ndarray:
    """BatchNorm in inference mode of ``y`` (M, C) float32 with the running ``mean`` and ``var``
    (C,), then an optional ReLU: ``(y - mean) / sqrt(var + eps) * gamma + beta`` as one scale and
    shift per channel (folded in float64). -> (M, C), lent from the workspace."""
    m, c = y.shape
    scale64 = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    shift = (beta.astype(np.float64) - mean.astype(np.float64) * scale64).astype(np.float32)
    scale = scale64.astype(np.float32)
    loops = _loops()
    out = WORKSPACE.take(y.shape)
    _rows_split(lambda lo, hi: loops.scale_shift(y[lo:hi], scale, shift, relu, out[lo:hi]), m, c)
    return out


def bn_backward(d: np.ndarray, xhat: np.ndarray, inv: np.ndarray, gamma: np.ndarray,
                out: Optional[np.ndarray] = None):
    """Gradients of :func:`bn_forward` from ``d`` (M, C), the gradient of its output; with ``out``
    (the output after the ReLU) ``d`` is first masked by ``out > 0``. Returns ``(d_y (M, C),
    d_gamma (C,), d_beta (C,))``, ``d_y`` lent from the workspace; ``d`` is not modified."""
    m, c = d.shape
    loops = _loops()
    dy = WORKSPACE.take(xhat.shape)
    no_rows = np.empty((0, c), np.float32)
    parts = _rows_split(lambda lo, hi: loops.gradient_sums(
        d[lo:hi], xhat[lo:hi], no_rows if out is None else out[lo:hi], dy[lo:hi]), m, c)
    dbeta = sum(p[0] for p in parts).astype(np.float32)
    dgamma = sum(p[1] for p in parts).astype(np.float32)
    k = (gamma * inv).astype(np.float32)
    shift, slope = (dbeta / m).astype(np.float32), (dgamma / m).astype(np.float32)
    g = d if out is None else dy  # the masked gradient is in dy already
    _rows_split(lambda lo, hi: loops.gradient_combine(g[lo:hi], xhat[lo:hi], shift, slope, k, dy[lo:hi]), m, c)
    return dy, dgamma, dbeta


# --------------------------------------------------------------------------- residual ReLU

def _flat_split(fn, *arrays) -> None:
    """``fn(*flat slices)`` over ranges of arrays of one size, one range per core."""
    flats = [a.reshape(-1) for a in arrays]
    split_over(lambda lo, hi: fn(*(f[lo:hi] for f in flats)), flats[0].size, flats[0].size)


def _same_shape(what: str, a: np.ndarray, b: np.ndarray) -> None:
    """The compiled loops do not check bounds: refuse arrays of two shapes before they run."""
    if a.shape != b.shape:
        raise ValueError(f"{what} on the host needs two arrays of one shape, got {a.shape} and {b.shape}: "
                         "a residual block's shortcut must give its body's output shape (stride, "
                         "padding and channels)")


def add_relu(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``max(a + b, 0)`` of two arrays of one shape (a residual add), lent from the workspace."""
    _same_shape("the residual add", a, b)
    out = WORKSPACE.take(a.shape)
    _flat_split(_loops().add_relu, a, b, out)
    return out


def relu_mask(d: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``d`` where ``out > 0`` else 0 (the gradient through a ReLU whose output is ``out``), lent
    from the workspace."""
    _same_shape("the ReLU's gradient", d, out)
    masked = WORKSPACE.take(d.shape)
    _flat_split(_loops().relu_mask, d, out, masked)
    return masked


# --------------------------------------------------------------------------- max pooling

def maxpool_forward(x: np.ndarray, g: PoolGeometry):
    """(N, H, W, C) -> ``(out (N, OH, OW, C), argmax)``: the maximum over each window (padding
    excluded) and, uint8 of the same shape, which tap of the window holds it (row-major, the
    first of equal values); both lent from the workspace."""
    n, h, w, c = x.shape
    oh, ow = g.out_size(h, w)
    (kh, kw), (sh, sw), (ph, pw) = g.kernel, g.stride, g.padding
    if kh * kw > 256:
        raise ValueError(f"max pooling on the host: a {kh}x{kw} window has more taps than uint8 "
                         "indices name (256); use a smaller kernel or MegEngine's pooling")
    out = WORKSPACE.take((n, oh, ow, c))
    argmax = WORKSPACE.take((n, oh, ow, c), np.uint8)
    pool = _loops().max_pool
    split_over(lambda lo, hi: pool(x, lo, hi, kh, kw, sh, sw, ph, pw, out, argmax), n, x.size)
    return out, argmax


def maxpool_backward(d: np.ndarray, argmax: np.ndarray, input_shape, g: PoolGeometry) -> np.ndarray:
    """Gradient of :func:`maxpool_forward`: each output's gradient ``d`` (N, OH, OW, C) goes to
    the input its ``argmax`` names. -> (N, H, W, C), lent from the workspace."""
    kw, (sh, sw), (ph, pw) = g.kernel[1], g.stride, g.padding
    dx = WORKSPACE.take(tuple(input_shape))
    pool_grad = _loops().max_pool_grad
    split_over(lambda lo, hi: pool_grad(d, argmax, lo, hi, kw, sh, sw, ph, pw, dx),
               dx.shape[0], dx.size)
    return dx
