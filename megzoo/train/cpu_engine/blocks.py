"""Whole residual blocks computed on the host for CPU training: convolution + BatchNorm + ReLU
(+ the residual add, the max-pool) forward and backward in NumPy, as one MegEngine autodiff
``Function`` per plan.

Why: with only the convolutions on NumPy's BLAS (:mod:`.conv`), MegEngine 1.13's CPU BatchNorm,
ReLU, pooling and add operators and their gradients took a large share of a ResNet training step
(several times what PyTorch spends on them; docs/training-speed.md), and
every convolution's output crossed from NumPy to a MegEngine tensor and back. Here a plan's data
stays in channels-last NumPy arrays (:mod:`.kernels`) from its input to its output: for a whole
ResNet body, one layout change in and one out.

A model opts in by giving its modules a ``host_plans()`` method: ``{method name: plan}``, where a
plan is a ``megzoo.layers.ResidualPlan`` (e.g. ``BasicBlock.forward`` is ``relu(bn2(conv2(relu(
bn1(conv1(x))))) + shortcut(x))``) or a sequence of them and ``MaxPool2d`` modules (ResNet's
``forward_levels``: stem, max-pool, every block). This module knows no model family.
:func:`enable` replaces those methods on the instances; the replacement runs the host version
only when it computes exactly what the method does (:func:`plan_supported`) and the call is a
CPU training step with gradient recording (or, inside :func:`host_evaluation`, an ``eval()``-mode
call without one); otherwise (other evaluation, GPUs, frozen BatchNorm in training, group
norm, grouped convolutions, drop path in use, mixed precision, ``MEGZOO_FAST_CONV=0``) the method
itself runs. When a whole-body plan does not apply, the per-block plans inside it still may.

Numerics: BatchNorm in training mode as MegEngine's ``BatchNorm2d`` computes it (batch mean and
biased variance for the normalisation, ``eps`` inside the square root; running statistics updated
as ``momentum * running + (1 - momentum) * batch`` with the unbiased variance), equal to float32
rounding, not bit for bit (closer to a float64 reference than MegEngine's own). Gradients are
checked against MegEngine's own in ``tests/test_fused_blocks.py``. Memory: patch matrices over
16 MB are never formed whole (blocks of 2 MB per core, re-formed for the weight gradient); the peak
resident memory of a step is about PyTorch's (``benchmarks/bench_training.py``; figures in
benchmarks/results/). In ``eval()`` mode the plans run on the host only inside
:func:`host_evaluation` (the trainer's validation). Every large array comes from the workspace
(:mod:`.workspace`) and goes back once the backward pass is done with it (each op gives back what
it produced, and the gradient it received), so the next step reuses the same memory.
"""
import contextlib
import contextvars
import types
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import megengine.module as M
from megengine import Tensor
from megengine.autodiff import Function

from ...device import is_cpu_device
from ...layers import ConvNorm, ResidualPlan, pair
from .conv import enabled_by_environment, tracked
from .kernels import ConvGeometry, PoolGeometry, add_relu, bn_backward, bn_forward, bn_inference, \
    conv_forward, conv_input_grad, conv_weight_grad, lent_patches, maxpool_backward, maxpool_forward, relu_mask, \
    single_blas_thread, to_nchw, to_nhwc
from .workspace import WORKSPACE

__all__ = ["enable", "disable", "is_enabled", "host_evaluation", "plan_supported", "run_plan", "run_plan_inference"]

_ATTR = "_megzoo_fused_blocks"


# --------------------------------------------------------------------------- one conv + BN unit

class _Unit(NamedTuple):
    """One ConvNorm as geometry: the convolution, BN's eps, whether a ReLU follows."""
    conv: ConvGeometry
    eps: float
    relu: bool


def _unit(spec: ConvNorm) -> _Unit:
    conv = spec.conv
    geometry = ConvGeometry(pair(conv.kernel_size), pair(conv.stride), pair(conv.padding), pair(conv.dilation))
    return _Unit(geometry, float(spec.norm.eps), bool(spec.relu))


def _unit_forward(unit: _Unit, x: np.ndarray, weight: np.ndarray, gamma: np.ndarray, beta: np.ndarray):
    """(N, H, W, C) -> (out (N, OH, OW, O), saved for the backward pass, batch mean, batch
    variance). ``saved`` holds ``out`` (at index 4): given back by :func:`_unit_backward` unless
    the caller gives it back sooner and sets it to None."""
    n, h, w, _ = x.shape
    oh, ow = unit.conv.out_size(h, w)
    y, cols = conv_forward(x, weight, unit.conv)
    out, mean, var, inv = bn_forward(y, gamma, beta, unit.eps, unit.relu)
    out = out.reshape(n, oh, ow, -1)
    return out, [x.shape, cols, y, inv, out], mean, var


def _unit_backward(unit: _Unit, d: np.ndarray, saved, weight: np.ndarray, gamma: np.ndarray,
                   need_x: bool, need_w: bool):
    """(d_x (N, H, W, C) or None, d_weight or None, d_gamma, d_beta) from ``d``, the gradient of
    the unit's output (N, OH, OW, O). Gives back the unit's saved arrays (not ``d``)."""
    x_shape, cols, xhat, inv, out = saved
    dy, dgamma, dbeta = bn_backward(d.reshape(xhat.shape), xhat, inv, gamma,
                                    out.reshape(xhat.shape) if unit.relu else None)
    dw = conv_weight_grad(cols, dy, weight.shape) if need_w else None
    dx = conv_input_grad(dy, weight, x_shape, unit.conv) if need_x else None
    WORKSPACE.give(dy, xhat, out, lent_patches(cols, unit.conv))
    return dx, dw, dgamma, dbeta


# --------------------------------------------------------------------------- compiled plans

class _Block(NamedTuple):
    """A ResidualPlan as geometry: its units (body then shortcut), the body length, the add."""
    units: Tuple[_Unit, ...]
    n_body: int
    residual: bool


def _compile(steps) -> Tuple[list, list]:
    """``(ops, modules)`` of a plan: ops are ``_Block``/``PoolGeometry``; modules, per block, its
    ``ConvNorm`` specs (body, then shortcut)."""
    ops, specs = [], []
    for step in steps:
        if isinstance(step, ResidualPlan):
            s = _specs(step)
            ops.append(_Block(tuple(_unit(u) for u in s), len(step.body), step.residual))
            specs.append(s)
        elif isinstance(step, M.MaxPool2d):
            ops.append(PoolGeometry(pair(step.kernel_size), pair(step.stride), pair(step.padding)))
        else:
            raise TypeError(f"a host plan step is a ResidualPlan or a MaxPool2d, got {type(step).__name__}")
    return ops, specs


def _through_block(block: _Block, x: np.ndarray, run_unit):
    """``run_unit(i, input) -> output`` for each unit of ``block``: the body's units chained from
    ``x``, the shortcut's unit on ``x``. -> ``(body output, shortcut output)``, the shortcut output
    ``x`` itself for an identity shortcut, or None for a block that adds nothing."""
    a, body = x, None
    for i in range(len(block.units)):
        if i == block.n_body:
            body = a
        a = run_unit(i, a if i < block.n_body else x)
    if not block.residual:
        return a, None
    return (a, x) if body is None else (body, a)


def _block_forward(block: _Block, x: np.ndarray, weights, gammas, betas):
    """(out, saved, [(mean, var)] per unit) of one block on host arrays."""
    saved, stats = [], []

    def run_unit(i, inp):
        a, s, mean, var = _unit_forward(block.units[i], inp, weights[i], gammas[i], betas[i])
        saved.append(s)
        stats.append((mean, var))
        return a

    body, short = _through_block(block, x, run_unit)
    if short is None:
        return body, (saved, None), stats
    out = add_relu(body, short)
    for unit, s in zip(block.units[block.n_body - 1:], saved[block.n_body - 1:]):
        if not unit.relu:  # an added output (body end, shortcut) without a ReLU mask: read by nothing else
            WORKSPACE.give(s[4])
            s[4] = None
    return out, (saved, out), stats


def _block_backward(block: _Block, d: np.ndarray, cache, weights, gammas, need_x: bool, needs):
    """(d_x or None, [(d_weight, d_gamma, d_beta)] per unit) of one block; ``needs[i]``: which of
    unit i's three parameters need a gradient. ``d`` is consumed (given back)."""
    saved, out = cache
    if out is not None:
        masked = relu_mask(d, out)
        WORKSPACE.give(d, out)
        d = masked
    grads = [None] * len(block.units)
    parts, d_body = [], d  # parts: gradients of the block input (shortcut, body)
    for i in list(range(block.n_body, len(block.units))) + list(range(block.n_body - 1, -1, -1)):
        reads_input = i == 0 or i >= block.n_body
        d_in = d if i >= block.n_body else d_body
        dx, dw, dg, db = _unit_backward(block.units[i], d_in, saved[i], weights[i],
                                        gammas[i], need_x if reads_input else True, needs[i][0])
        saved[i] = None
        if d_in is not d:
            WORKSPACE.give(d_in)
        grads[i] = tuple(g if need else None for g, need in zip((dw, dg, db), needs[i]))
        if not reads_input:
            d_body = dx
        elif dx is not None:
            parts.append(dx)
    if block.residual and block.n_body == len(block.units):
        parts.append(d)  # identity shortcut
    else:
        WORKSPACE.give(d)
    if not need_x:
        WORKSPACE.give(*parts)
        return None, grads
    total = parts[0]
    for p in parts[1:]:
        total += p
        WORKSPACE.give(p)
    return total, grads


class _PlanFunction(Function):
    """A compiled plan (blocks and max pools in order) on host arrays as one autodiff Function.
    Inputs: x, then (weight, gamma, beta) of every unit in order. One instance per call
    (MegEngine's rule). After the forward pass ``self.stats`` holds, per unit, the batch mean,
    the biased batch variance and the count behind them."""

    def __init__(self, ops, needs: Sequence[bool], param_shapes):
        super().__init__()
        self.ops, self.needs, self.param_shapes = ops, list(needs), list(param_shapes)

    def forward(self, x, *params):
        with single_blas_thread():
            return self._forward(x, *params)

    def backward(self, dout):
        with single_blas_thread():
            return self._backward(dout)

    def _forward(self, x, *params):
        arrays = [p.numpy() for p in params]
        self.weights = arrays[0::3]
        self.gammas = [a.reshape(-1) for a in arrays[1::3]]
        betas = [a.reshape(-1) for a in arrays[2::3]]
        self.caches, self.stats = [], []
        a, k = to_nhwc(x.numpy()), 0
        self.input = a
        for op in self.ops:
            if isinstance(op, PoolGeometry):
                out, argmax = maxpool_forward(a, op)
                self.caches.append((a.shape, out, argmax))
            else:
                u = len(op.units)
                out, cache, stats = _block_forward(op, a, self.weights[k:k + u], self.gammas[k:k + u],
                                                   betas[k:k + u])
                self.caches.append(cache)
                self.stats += [(mean, var, saved[2].shape[0]) for (mean, var), saved in zip(stats, cache[0])]
                k += u
            a = out
        return Tensor(to_nchw(a), device=x.device)

    def _backward(self, dout):
        d = to_nhwc(dout.numpy())
        grads: List[Optional[np.ndarray]] = [None] * (1 + len(self.param_shapes))
        k = len(self.weights)
        for index in range(len(self.ops) - 1, -1, -1):
            op, cache = self.ops[index], self.caches[index]
            self.caches[index] = None
            need_x = self.needs[0] if index == 0 else True
            if isinstance(op, PoolGeometry):
                dx = maxpool_backward(d, cache[2], cache[0], op) if need_x else None
                WORKSPACE.give(d, cache[1], cache[2])
                d = dx
            else:
                u = len(op.units)
                k -= u
                needs = [tuple(self.needs[1 + 3 * (k + i) + j] for j in range(3)) for i in range(u)]
                d, unit_grads = _block_backward(op, d, cache, self.weights[k:k + u], self.gammas[k:k + u],
                                                need_x, needs)
                for i, triple in enumerate(unit_grads):
                    grads[1 + 3 * (k + i):4 + 3 * (k + i)] = triple
            if d is None:
                break
        grads[0] = to_nchw(d) if self.needs[0] and d is not None else None
        WORKSPACE.give(d, self.input)
        self.weights = self.gammas = self.input = None
        device = dout.device
        shapes = [None] + self.param_shapes
        return tuple(None if g is None else Tensor(g if shape is None else g.reshape(shape), device=device)
                     for g, shape in zip(grads, shapes))


# --------------------------------------------------------------------------- inference (evaluation)

def _unit_inference(unit: _Unit, x: np.ndarray, weight: np.ndarray, norm: M.BatchNorm2d) -> np.ndarray:
    """(N, H, W, C) -> (N, OH, OW, O): the convolution, BatchNorm with the running statistics,
    the ReLU; lent from the workspace (the patches are given back at once)."""
    n, h, w, _ = x.shape
    oh, ow = unit.conv.out_size(h, w)
    y, cols = conv_forward(x, weight, unit.conv)
    WORKSPACE.give(lent_patches(cols, unit.conv))
    out = bn_inference(y, *(t.numpy().reshape(-1) for t in (norm.running_mean, norm.running_var, norm.weight,
                                                                norm.bias)), unit.eps, unit.relu)
    WORKSPACE.give(y)
    return out.reshape(n, oh, ow, -1)


def _block_inference(block: _Block, x: np.ndarray, specs: Sequence[ConvNorm]) -> np.ndarray:
    """One block in inference mode; ``x`` stays the caller's, the result is lent."""
    def run_unit(i, inp):
        out = _unit_inference(block.units[i], inp, specs[i].conv.weight.numpy(), specs[i].norm)
        if inp is not x:
            WORKSPACE.give(inp)  # a body unit's output, read once
        return out

    body, short = _through_block(block, x, run_unit)
    if short is None:
        return body
    out = add_relu(body, short)
    WORKSPACE.give(body, None if short is x else short)
    return out


def run_plan_inference(plan, x: Tensor) -> Tensor:
    """``plan`` applied to ``x`` in inference mode (BatchNorm with its running statistics), on
    host arrays, no gradient: what the plan's method computes in ``eval()`` mode, to float32
    rounding (the convolutions as BLAS products, not MegEngine's operator)."""
    ops, specs = _compile(_steps(plan))
    with single_blas_thread():
        a, k = to_nhwc(x.numpy()), 0
        for op in ops:
            if isinstance(op, PoolGeometry):
                out, argmax = maxpool_forward(a, op)
                WORKSPACE.give(argmax)
            else:
                out = _block_inference(op, a, specs[k])
                k += 1
            WORKSPACE.give(a)
            a = out
        y = to_nchw(a)
        WORKSPACE.give(a)
    return Tensor(y, device=x.device)


_HOST_EVALUATION = contextvars.ContextVar("megzoo_host_evaluation", default=False)


@contextlib.contextmanager
def host_evaluation():
    """Meanwhile, enabled models in ``eval()`` mode run their plans on host arrays too
    (:func:`run_plan_inference`): the trainer's validation. Outside it, evaluation and inference
    run MegEngine's own operators, as they always do."""
    token = _HOST_EVALUATION.set(True)
    try:
        yield
    finally:
        _HOST_EVALUATION.reset(token)


# --------------------------------------------------------------------------- plans and switching

def _specs(plan: ResidualPlan) -> List[ConvNorm]:
    return list(plan.body) + ([plan.shortcut] if plan.shortcut is not None else [])


def _unit_params(spec: ConvNorm):
    """The three parameters of one unit, in the Function's input order."""
    return spec.conv.weight, spec.norm.weight, spec.norm.bias


def _steps(plan) -> list:
    """A plan as a list of steps: one ResidualPlan, or a sequence of ResidualPlans and MaxPool2d."""
    return [plan] if isinstance(plan, ResidualPlan) else list(plan)


def plan_supported(plan, training: bool = True) -> bool:
    """Whether the host version computes exactly what ``plan`` describes now: every norm an
    affine ``BatchNorm2d`` tracking running statistics, in training mode and not frozen (or, with
    ``training=False``, in inference mode), every convolution a dense (groups 1), bias-free,
    zero-padded ``Conv2d`` in the default compute mode, no active drop path."""
    for step in _steps(plan):
        if isinstance(step, M.MaxPool2d):
            if type(step) is not M.MaxPool2d:
                return False
            continue
        if step.drop_path is not None and getattr(step.drop_path, "rate", 0.0) > 0 and step.drop_path.training:
            return False
        for spec in _specs(step):
            conv, norm = spec.conv, spec.norm
            if type(conv) is not M.Conv2d or conv.bias is not None or conv.groups != 1 \
                    or conv.padding_mode != "zeros" or str(conv.compute_mode).lower() != "default":
                return False
            if type(norm) is not M.BatchNorm2d or norm.training != training or not norm.affine \
                    or (training and norm.freeze) or not norm.track_running_stats:
                return False
    return True


def run_plan(plan, x: Tensor) -> Tensor:
    """``plan`` (a ResidualPlan, or a sequence of them and MaxPool2d modules) applied to ``x`` by
    one :class:`_PlanFunction`; running statistics updated as ``BatchNorm2d`` updates them."""
    ops, specs = _compile(_steps(plan))
    units = [s for block in specs for s in block]
    params = [t for s in units for t in _unit_params(s)]
    fn = _PlanFunction(ops, [tracked(x)] + [tracked(p) for p in params], [tuple(p.shape) for p in params])
    y = fn(x, *params)
    for spec, (mean, var, count) in zip(units, fn.stats):
        _update_running(spec.norm, mean, var, count)
    fn.stats = None
    return y


def _update_running(norm: M.BatchNorm2d, mean: np.ndarray, var: np.ndarray, count: int) -> None:
    """``running = momentum * running + (1 - momentum) * batch``; the variance unbiased (MegEngine's rule)."""
    m = float(norm.momentum)
    unbiased = var * (count / max(1, count - 1))
    shape = tuple(norm.running_mean.shape)
    new_mean = m * norm.running_mean.numpy() + (1.0 - m) * mean.reshape(shape)
    new_var = m * norm.running_var.numpy() + (1.0 - m) * unbiased.reshape(shape)
    norm.running_mean[...] = Tensor(new_mean.astype(np.float32), device=norm.running_mean.device)
    norm.running_var[...] = Tensor(new_var.astype(np.float32), device=norm.running_var.device)


def _needs_gradient(plan, x: Tensor) -> bool:
    return tracked(x) or any(tracked(p) for step in _steps(plan) if isinstance(step, ResidualPlan)
                              for s in _specs(step) for p in _unit_params(s))


def _host_call(self, name: str, *args):
    """The replacement of method ``name``: the host plan when it applies, else the method itself."""
    from megengine.core.tensor import amp

    original = getattr(type(self), name)
    x = args[0] if args else None
    if (not self.__dict__.get(_ATTR) or not enabled_by_environment() or amp._enabled or len(args) != 1
            or not isinstance(x, Tensor) or not is_cpu_device(x.device)
            or not (self.training or _HOST_EVALUATION.get())):
        return original(self, *args)
    plan = self.host_plans().get(name)
    if plan is None or not plan_supported(plan, self.training):
        return original(self, *args)
    if self.training:
        return run_plan(plan, x) if _needs_gradient(plan, x) else original(self, *args)
    return original(self, *args) if _needs_gradient(plan, x) else run_plan_inference(plan, x)


def _planned_modules(model):
    for module in model.modules():
        if callable(getattr(type(module), "host_plans", None)):
            yield module


def enable(model, on: bool = True) -> int:
    """Run the planned methods of ``model``'s modules (those with ``host_plans()``: ``{method name:
    plan}``) on the host in CPU training (``on=False``: remove it). Returns the number of methods
    switched; the state dict is unchanged."""
    count = 0
    for module in _planned_modules(model):
        names = list(module.host_plans())
        if on:
            object.__setattr__(module, _ATTR, True)
            for name in names:
                object.__setattr__(module, name, types.MethodType(
                    lambda self, *args, _name=name: _host_call(self, _name, *args), module))
        else:
            module.__dict__.pop(_ATTR, None)
            for name in names:
                module.__dict__.pop(name, None)
        count += len(names)
    return count


def disable(model) -> int:
    """Remove the host blocks from ``model`` and drop the workspace's free buffers; returns how many
    planned methods there are."""
    WORKSPACE.clear()
    return enable(model, False)


def is_enabled(model) -> bool:
    """True when some module of ``model`` runs its planned methods on the host."""
    return any(m.__dict__.get(_ATTR) for m in _planned_modules(model))
