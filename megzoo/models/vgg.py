"""VGG with and without BatchNorm (Simonyan & Zisserman, 2014, arXiv:1409.1556).

Layout: five stages ``s1..s5``, each ``b1..bk`` blocks of ``Sequential(conv3x3 (with bias),
[norm], ReLU)`` followed by a 2x2 max-pool, and ``head.classifier.{0,3,6}`` (4096-4096-classes
with ReLU and dropout). This is BaseCls's layout plus the convolution biases of the paper (and of
torchvision), so a BaseCls checkpoint loads through :func:`convert_basecls_state_dict` and a
torchvision one through :meth:`VGG.torchvision_key_map` (the hooks ``megzoo.weights`` calls).

The head pools to 7x7 with PyTorch's adaptive bins (identity at 224 px), so any input of at least
32 px works. Feature levels s1..s5 are the stage outputs after pooling: strides 2, 4, 8, 16, 32.
"""
from typing import Dict, Optional, Sequence

import megengine.module as M
import numpy as np

from ..init import init_linear_, msra_init_
from ..layers import AdaptiveAvgPool2d, get_norm_layer
from ._registry import register_model
from ._builder import build_model, builder_doc
from .base import FeatureInfo, FeatureLevel, ZooModel
from .quantizable import fuse_conv

__all__ = [
    "VGG", "VGGStage", "VGGHead", "convert_basecls_state_dict",
    "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
]

_WIDTHS = (64, 128, 256, 512, 512)
_DEPTHS = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}


class VGGStage(M.Module):
    """``depth`` conv3x3-[norm]-ReLU blocks then 2x2 max-pool: (N, C_in, H, W) -> (N, C_out, H/2, W/2)."""

    def __init__(self, in_channels: int, out_channels: int, depth: int, norm_layer=None):
        super().__init__()
        self.depth = depth
        for i in range(depth):
            layers = [M.Conv2d(in_channels, out_channels, 3, padding=1, bias=True)]
            if norm_layer is not None:
                layers.append(norm_layer(out_channels))
            layers.append(M.ReLU())
            setattr(self, f"b{i + 1}", M.Sequential(*layers))
            in_channels = out_channels
        self.max_pool = M.MaxPool2d(kernel_size=2, stride=2)

    def forward(self, x):
        for i in range(self.depth):
            x = getattr(self, f"b{i + 1}")(x)
        return self.max_pool(x)


class VGGHead(M.Module):
    """Adaptive 7x7 average pool, flatten, then Linear-ReLU-Dropout x2 and the final Linear:
    (N, C, H, W) -> (N, num_classes). With ``num_classes=0`` the final Linear is left out and the
    output is the (N, hidden) pre-logits."""

    def __init__(self, in_channels: int, num_classes: int, hidden: int = 4096, drop_rate: float = 0.5):
        super().__init__()
        self.pool = AdaptiveAvgPool2d(7)
        layers = [M.Linear(in_channels * 49, hidden), M.ReLU(), M.Dropout(drop_rate),
                  M.Linear(hidden, hidden), M.ReLU(), M.Dropout(drop_rate)]
        if num_classes > 0:
            layers.append(M.Linear(hidden, num_classes))
        self.classifier = M.Sequential(*layers)
        self.hidden = hidden

    def forward(self, x, pre_logits: bool = False):
        x = self.pool(x).reshape(x.shape[0], -1)
        if not pre_logits:
            return self.classifier(x)
        for layer in list(self.classifier)[:6]:
            x = layer(x)
        return x

    def get_classifier(self) -> Optional[M.Linear]:
        """The final Linear, or None without one (``num_classes=0``)."""
        return self.classifier[6] if len(self.classifier) == 7 else None


class VGG(ZooModel):
    """VGG. Input (N, in_channels, H, W) with H, W >= 32; output (N, num_classes).

    Args:
        depths: conv blocks per stage, e.g. (2, 2, 3, 3, 3) for VGG-16.
        widths: channels per stage (default 64, 128, 256, 512, 512).
        num_classes: classifier outputs; 0 removes the last Linear (forward returns 4096-d pre-logits).
        in_channels: input image channels.
        norm_layer: None for plain VGG, or "bn", "frozen_bn", "gn", "gn:G", a callable ``channels -> module``.
        drop_rate: dropout probability of the two hidden head layers (paper: 0.5).
    """

    classifier_key = "head.classifier.6"
    first_conv_key = "s1.b1.0"
    #: ``basecls``: megvii-research/basecls checkpoints (convolutions without bias)
    checkpoint_layouts = ("megengine", "basecls", "torchvision")

    def detect_checkpoint_layout(self, state_dict, is_torch_file: bool) -> str:
        """``basecls`` for a pickle whose first convolution has no bias, else as for any model."""
        if not is_torch_file and "s1.b1.0.weight" in state_dict and "s1.b1.0.bias" not in state_dict:
            return "basecls"
        return super().detect_checkpoint_layout(state_dict, is_torch_file)

    def torchvision_key_map(self) -> Dict[str, str]:
        """torchvision's ``features.N`` / ``classifier.N`` -> ``sI.bJ.K`` / ``head.classifier.N``."""
        names, index = {}, 0
        has_norm = len(self.s1.b1) == 3
        for stage in range(1, 6):
            for block in range(1, getattr(self, f"s{stage}").depth + 1):
                names[f"features.{index}"] = f"s{stage}.b{block}.0"
                if has_norm:
                    names[f"features.{index + 1}"] = f"s{stage}.b{block}.1"
                index += 3 if has_norm else 2
            index += 1  # max-pool
        names.update({f"classifier.{i}": f"head.classifier.{i}" for i in (0, 3, 6)})
        return names

    def convert_checkpoint(self, state_dict, layout: str):
        if layout == "basecls":
            return convert_basecls_state_dict(state_dict)
        return super().convert_checkpoint(state_dict, layout)
    min_input_size = 32

    def __init__(self, depths: Sequence[int], widths: Sequence[int] = _WIDTHS, num_classes: int = 1000,
                 in_channels: int = 3, norm_layer=None, drop_rate: float = 0.5):
        super().__init__(in_channels, num_classes)
        if len(depths) != 5 or len(widths) != 5:
            raise ValueError(f"depths and widths must have 5 entries (one per stage), got {depths!r}, {widths!r}")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate!r}")
        norm = None if norm_layer is None else get_norm_layer(norm_layer)
        levels, channels = [], in_channels
        for i, (depth, width) in enumerate(zip(depths, widths)):
            setattr(self, f"s{i + 1}", VGGStage(channels, width, depth, norm))
            levels.append(FeatureLevel(f"s{i + 1}", width, 2 ** (i + 1), (f"s{i + 1}",)))
            channels = width
        self.feature_info = FeatureInfo(levels)
        self.num_features = channels
        self.head = VGGHead(channels, num_classes, drop_rate=drop_rate)
        msra_init_(self)

    def _run_level(self, index, x):
        return getattr(self, f"s{index + 1}")(x)

    def forward_head(self, x, pre_logits: bool = False):
        return self.head(x, pre_logits=pre_logits)

    def _fused_level(self, index: int) -> M.Module:
        stage = getattr(self, f"s{index + 1}")
        fused = []
        for i in range(stage.depth):
            block = list(getattr(stage, f"b{i + 1}"))  # conv, [norm], ReLU
            norm = block[1] if len(block) == 3 else None
            fused.append(fuse_conv(block[0], norm, True, f"s{index + 1}.b{i + 1}"))
        return M.Sequential(*fused, stage.max_pool)

    def _float_head(self) -> M.Module:
        return self.head

    def get_classifier(self) -> Optional[M.Linear]:
        if self.head is None:  # removed by as_features
            return None
        return self.head.get_classifier()

    def reset_classifier(self, num_classes: int) -> None:
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        layers = list(self.head.classifier)[:6]
        if num_classes > 0:
            layers.append(init_linear_(M.Linear(self.head.hidden, num_classes)))
        self.head.classifier = M.Sequential(*layers)
        self.num_classes = num_classes

    def _remove_head(self) -> None:
        self.head = None


def convert_basecls_state_dict(state_dict: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Map a BaseCls VGG checkpoint (convolutions without bias) onto megzoo's VGG.

    Keys are already the same (``s{i}.b{j}.{0,1}.*``, ``head.classifier.{0,3,6}.*``); every
    convolution weight ``s{i}.b{j}.0.weight`` (O, I, 3, 3) gets a zero bias ``s{i}.b{j}.0.bias`` of
    shape (1, O, 1, 1), so the converted model computes exactly what BaseCls computes. Returns a
    new dict; the input is not modified.
    """
    converted = dict(state_dict)
    for key, value in state_dict.items():
        parts = key.split(".")
        if len(parts) == 4 and parts[0][0] == "s" and parts[1][0] == "b" and parts[2:] == ["0", "weight"]:
            bias_key = key[: -len("weight")] + "bias"
            if bias_key not in state_dict:
                converted[bias_key] = np.zeros((1, value.shape[0], 1, 1), dtype=value.dtype)
    return converted


_documented = builder_doc("0 s1 ... 4 s5", "VGG")


def _vgg(name: str, depth: int, batch_norm: bool, pretrained, **kwargs) -> VGG:
    if batch_norm:
        kwargs.setdefault("norm_layer", "bn")
    return build_model(name, VGG, pretrained, depths=_DEPTHS[depth], **kwargs)


@register_model(params=132_863_336, gmacs=7.609)
@_documented
def vgg11(pretrained=False, **kwargs) -> VGG:
    """VGG-11 (configuration "A"), no BatchNorm."""
    return _vgg("vgg11", 11, False, pretrained, **kwargs)


@register_model(params=132_868_840, gmacs=7.609)
@_documented
def vgg11_bn(pretrained=False, **kwargs) -> VGG:
    """VGG-11 (configuration "A") with BatchNorm after every convolution."""
    return _vgg("vgg11_bn", 11, True, pretrained, **kwargs)


@register_model(params=133_047_848, gmacs=11.308)
@_documented
def vgg13(pretrained=False, **kwargs) -> VGG:
    """VGG-13 (configuration "B"), no BatchNorm."""
    return _vgg("vgg13", 13, False, pretrained, **kwargs)


@register_model(params=133_053_736, gmacs=11.308)
@_documented
def vgg13_bn(pretrained=False, **kwargs) -> VGG:
    """VGG-13 (configuration "B") with BatchNorm after every convolution."""
    return _vgg("vgg13_bn", 13, True, pretrained, **kwargs)


@register_model(params=138_357_544, gmacs=15.470)
@_documented
def vgg16(pretrained=False, **kwargs) -> VGG:
    """VGG-16 (configuration "D"), no BatchNorm."""
    return _vgg("vgg16", 16, False, pretrained, **kwargs)


@register_model(params=138_365_992, gmacs=15.470)
@_documented
def vgg16_bn(pretrained=False, **kwargs) -> VGG:
    """VGG-16 (configuration "D") with BatchNorm after every convolution."""
    return _vgg("vgg16_bn", 16, True, pretrained, **kwargs)


@register_model(params=143_667_240, gmacs=19.632)
@_documented
def vgg19(pretrained=False, **kwargs) -> VGG:
    """VGG-19 (configuration "E"), no BatchNorm."""
    return _vgg("vgg19", 19, False, pretrained, **kwargs)


@register_model(params=143_678_248, gmacs=19.632)
@_documented
def vgg19_bn(pretrained=False, **kwargs) -> VGG:
    """VGG-19 (configuration "E") with BatchNorm after every convolution."""
    return _vgg("vgg19_bn", 19, True, pretrained, **kwargs)
