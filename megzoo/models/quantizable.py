"""The quantizable form of a megzoo model: every conv + BN (+ ReLU) fused, stubs around the int8 part.

MegEngine quantizes a module tree by swapping modules it knows (``quantize_qat`` then
``quantize``): ``ConvBnRelu2d``, ``ConvBn2d``, ``ConvRelu2d``, ``Conv2d``, ``Elemwise`` and the
``QuantStub``/``DequantStub`` pair. A plain ``BatchNorm2d`` has no int8 form, so every
convolution must carry its BatchNorm (and the ReLU after it) as one fused module, and a residual
``relu(a + b)`` must be one ``Elemwise("FUSE_ADD_RELU")``. :class:`QuantizableModel` is that tree,
made from a float megzoo model by module surgery (:meth:`megzoo.models.base.ZooModel.to_quantizable`):
the family says how each of its levels fuses (``_fused_level``) and gives its float head
(``_float_head``); the fused modules hold the model's own convolution and BatchNorm modules, so
any weights a float model loads reach the quantized one unchanged. Nothing here imports the
quantization API: :mod:`megzoo.quantization` calibrates, fine-tunes and converts this tree.

The int8 part runs from the input stub to the last feature map; the head (global pooling and the
classifier; VGG's fully connected layers) stays float32, as torchvision's quantized ResNets keep
their pooling in float.
"""
from typing import List, Optional, Sequence

import megengine.module as M
import numpy as np
from megengine import Parameter

from ..device import using_device
from ..layers import FrozenBatchNorm2d, check_input, pair

__all__ = ["QuantizableModel", "QuantizationError", "fuse_conv", "precision_of"]


class QuantizationError(ValueError):
    """A model, or a part of one, that has no int8 form (the message says which and why)."""


_BATCH_NORMS = (M.BatchNorm2d, FrozenBatchNorm2d, M.SyncBatchNorm)


def _why_not(norm) -> str:
    if isinstance(norm, M.GroupNorm):
        return ("GroupNorm normalises each image by its own statistics at run time, so it cannot be folded into "
                "the convolution before it, and MegEngine has no int8 GroupNorm; build the model with "
                "norm_layer='bn' (or 'frozen_bn') to quantize it, or run this one in float32 (megzoo.compile)")
    return (f"only BatchNorm2d (and FrozenBatchNorm2d, SyncBatchNorm) folds into a convolution for int8; "
            f"{type(norm).__name__} has no int8 form")


def fuse_conv(conv: M.Conv2d, norm: Optional[M.Module] = None, relu: bool = False, where: str = "") -> M.Module:
    """``conv`` (a ``Conv2d``, with or without bias), the BatchNorm ``norm`` after it and a ReLU,
    as MegEngine's one quantizable module: ``ConvBnRelu2d``, ``ConvBn2d``, ``ConvRelu2d`` or the
    ``Conv2d`` itself. The fused module holds ``conv``'s (and ``norm``'s) own parameters and
    computes ``relu(norm(conv(x)))`` as before. ``where`` names the module in errors."""
    where = where or "a convolution"
    if type(conv) is not M.Conv2d:
        raise QuantizationError(f"{where} ({type(conv).__name__}) cannot be quantized: "
                                "only Conv2d has an int8 form here")
    if getattr(conv, "padding_mode", "zeros") != "zeros":
        raise QuantizationError(f"{where}: only zero-padded convolutions are quantized (got {conv.padding_mode!r})")
    args = dict(in_channels=conv.in_channels, out_channels=conv.out_channels, kernel_size=pair(conv.kernel_size),
                stride=pair(conv.stride), padding=pair(conv.padding), dilation=pair(conv.dilation), groups=conv.groups,
                bias=conv.bias is not None)
    if norm is not None:
        if type(norm) not in _BATCH_NORMS:
            raise QuantizationError(f"{where} cannot be quantized: {_why_not(norm)}")
        if conv.bias is None:
            # a zero bias of its own: MegEngine's fused module otherwise makes one per call with
            # ``zeros()``, whose cached constant stays on the device of its first call (training
            # on another CPU device then fails with "t.comp_node == out_cn")
            conv.bias = Parameter(np.zeros(conv._infer_bias_shape(), dtype=np.float32), device=conv.weight.device)
            args["bias"] = True
        fused = (M.ConvBnRelu2d if relu else M.ConvBn2d)(**args)
        fused.conv, fused.bn = conv, norm
        return fused
    if not relu:
        return conv
    fused = M.ConvRelu2d(**args)
    fused.weight, fused.bias = conv.weight, conv.bias
    return fused


class QuantizableModel(M.Module):
    """A megzoo classifier in quantizable form: ``quant`` (input stub), ``levels`` (the fused
    feature levels, in order), ``dequant`` (output stub), ``head`` (float32, never quantized).
    Input (N, C, H, W) float32 as the float model's; output its (N, num_classes) logits.

    As made by ``model.to_quantizable()`` it computes what the float model computes (float32,
    BatchNorm in inference mode); :func:`megzoo.quantization.quantize` calibrates and converts it
    to int8 in place, :func:`megzoo.quantization.prepare_qat` to fake-quantized training form.
    :attr:`precision` tells which it is now. ``quantization`` holds how it was quantized
    (observer, calibration images), for metadata."""

    def __init__(self, source, levels: Sequence[M.Module], head: M.Module):
        super().__init__()
        self.quant = M.QuantStub()
        self.levels = list(levels)
        self.dequant = M.DequantStub()
        self.head = head
        head.disable_quantize()  # pooling and classifier stay float32
        self.in_channels = source.in_channels
        self.num_classes = source.num_classes
        self.min_input_size = source.min_input_size
        self._model_name = source.model_name
        self.load_report = getattr(source, "load_report", None)  # where the weights came from (preprocessing)
        self.quantization: dict = {}

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def precision(self) -> str:
        """``"float32"`` (fused, not quantized yet), ``"qat"`` (fake-quantized, for calibration
        or training) or ``"int8"`` (converted)."""
        return precision_of(self)

    def forward(self, x):
        with using_device(self.quant_device().logical_name):
            return self.head(self.features(x))

    def quant_device(self):
        """The device the model's parameters are on (inputs and MegEngine's own temporaries go there)."""
        return next(iter(self.parameters())).device

    def trainable_parameters(self) -> List[Parameter]:
        """Parameters the trainer updates: all but those of FrozenBatchNorm2d layers (frozen in
        the float model, frozen here too: MegEngine's fused QAT conv reads their weight and bias
        undetached when it folds them into the convolution)."""
        frozen = {id(p) for m in self.modules() if isinstance(m, FrozenBatchNorm2d) for p in m.parameters()}
        return [p for p in self.parameters() if id(p) not in frozen]

    def get_classifier(self) -> Optional[M.Module]:
        """The final classifier (inside the float head), for the trainer's head learning rate."""
        return self.head.get_classifier()

    def features(self, x):
        """The last feature map (N, C, h, w) float32, as the int8 part computes it (dequantized)."""
        return self.dequant(self._int8_part(x))

    def _int8_part(self, x):
        """Input stub and fused levels: the tensor the ``dequant`` stub reads (int8 once converted)."""
        check_input(x, self.in_channels, self.model_name, self.min_input_size)
        # MegEngine's fake-quant and observer temporaries go to the default device: keep them
        # beside the weights whatever the caller's default is
        with using_device(self.quant_device().logical_name):
            x = self.quant(x)
            for level in self.levels:
                x = level(x)
            return x

    def last_step(self, x=None) -> float:
        """The quantization step (scale) of the last int8 tensor, the one the head reads: read
        from that tensor's dtype (from the (N, C, H, W) batch ``x``, default one zero image), not
        from the modules, whose order need not be the order they run in (a ResNet block's
        residual add runs after its body's last conv)."""
        if self.precision != "int8":
            raise QuantizationError(f"{self.model_name} is in {self.precision} form: it has no int8 steps yet")
        import megengine
        from megengine.core.tensor import dtype as qdtype

        if x is None:
            side = max(self.min_input_size, 32)
            x = np.zeros((1, self.in_channels, side, side), dtype=np.float32)
        out = self._int8_part(megengine.tensor(np.asarray(x, dtype=np.float32), device=self.quant_device()))
        return float(qdtype.get_scale(out.dtype))

    def output_step(self, x) -> float:
        """What one quantization step of the last int8 tensor is worth in the logits of the
        (N, C, H, W) batch ``x``: the most the top-1 logit of an image moves when every element
        of that tensor moves by one step (to first order: the step times the L1 norm of the
        logit's gradient; exact for ResNet's linear head). The unit of the int8 parity check
        (``megzoo export --int8``)."""
        if self.precision != "int8":
            raise QuantizationError(f"{self.model_name} is in {self.precision} form: it has no int8 steps yet")
        import megengine
        import megengine.functional as F
        from megengine.autodiff import GradManager
        from megengine.core.tensor import dtype as qdtype

        device = self.quant_device()
        int8 = self._int8_part(megengine.tensor(np.asarray(x, dtype=np.float32), device=device))
        step = float(qdtype.get_scale(int8.dtype))
        feats = megengine.tensor(self.dequant(int8).numpy(), device=device)
        gm = GradManager().attach([feats])
        with gm:
            logits = self.head(feats)
            top = F.argmax(logits, axis=1)
            picked = F.sum(F.indexing_one_hot(logits, top, 1))
            gm.backward(picked)
        grad = np.abs(feats.grad.numpy()).reshape(len(feats), -1).sum(axis=1)
        return float(step * grad.max())


def precision_of(module: M.Module) -> str:
    """``"int8"`` if any submodule of ``module`` is a MegEngine quantized module, ``"qat"`` if
    any is a QAT module, else ``"float32"``."""
    from megengine.module.qat import QATModule
    from megengine.module.quantized import QuantizedModule

    kinds: List[type] = [type(m) for m in module.modules()]
    if any(issubclass(k, QuantizedModule) for k in kinds):
        return "int8"
    if any(issubclass(k, QATModule) for k in kinds):
        return "qat"
    return "float32"
