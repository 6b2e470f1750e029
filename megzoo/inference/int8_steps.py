"""The unit of an int8 model's parity check: one quantization step of its last int8 tensors, as the outputs see it.

An int8 graph run elsewhere (ONNX Runtime's QDQ kernels, Lite) may round a value to the
neighbouring step of the int8 grid where eager MegEngine did not; what that is worth in the
outputs depends on what follows the last int8 tensors, so the check counts it in *output steps*.
megzoo's own int8 models (:func:`megzoo.quantize`) measure it themselves
(``QuantizableModel.output_step``). Any other module quantized with MegEngine's
``megengine.quantization`` is measured here where it leaves int8, at its ``DequantStub``s: each
stub's step (the scale of its int8 input) times the L1 norm of the gradient of each image's
largest output element with respect to the stub's float output, summed over the stubs (first
order; exact for a linear head, and the step itself when the stub is the output).
"""
from typing import Optional

import numpy as np

from .compiled import is_int8
from .graph import flatten_outputs

__all__ = ["is_int8_model", "output_step"]


def is_int8_model(model) -> bool:
    """True for an int8 model: megzoo's (its ``precision`` says so) or any module holding
    MegEngine quantized modules (``megengine.quantization.quantize``'s result)."""
    if model is None:
        return False
    if hasattr(model, "precision"):
        return is_int8(model)
    from ..models.quantizable import precision_of

    return precision_of(model) == "int8"


def output_step(model, x) -> float:
    """What one quantization step of the last int8 tensors of ``model`` is worth in its outputs
    for the (N, C, H, W) float32 batch ``x`` (module docstring); the largest over the images."""
    if hasattr(model, "output_step"):
        return float(model.output_step(x))
    step = _dequant_step(model, x)
    if step is None:
        raise ValueError(f"cannot measure the int8 output step of {type(model).__name__}: no quantized DequantStub "
                         "turns its int8 tensors back to float (end the int8 part with megengine.module.DequantStub), "
                         "or export without the parity check")
    return step


def _dequant_step(model, x) -> Optional[float]:
    import megengine
    import megengine.functional as F
    from megengine.autodiff import GradManager
    from megengine.core.tensor import dtype as qdtype
    from megengine.module.quantized import DequantStub

    points = []
    gm = GradManager()

    def hook(module, inputs, output):  # the stub's float output, made a leaf the gradient reaches
        leaf = megengine.tensor(output.numpy(), device=output.device)
        gm.attach([leaf])
        points.append((float(qdtype.get_scale(inputs[0].dtype)), leaf))
        return leaf

    stubs = [m for m in model.modules() if isinstance(m, DequantStub)]
    if not stubs:
        return None
    was_training = model.training
    model.eval()  # MegEngine's quantized modules run in eval mode only
    handles = [stub.register_forward_hook(hook) for stub in stubs]
    try:
        with gm:
            tensors, _ = flatten_outputs(model(megengine.tensor(np.asarray(x, dtype=np.float32))))
            picked = 0
            for out in tensors:
                flat = out.reshape(out.shape[0], -1).astype("float32")
                picked = picked + F.sum(F.indexing_one_hot(flat, F.argmax(flat, axis=1), 1))
            gm.backward(picked)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if not points:
        return None
    per_image = np.zeros(len(x))
    for step, leaf in points:
        if leaf.grad is not None:
            per_image += step * np.abs(leaf.grad.numpy()).reshape(len(x), -1).sum(axis=1)
    return float(per_image.max())
