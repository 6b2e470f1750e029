"""ResNet, ResNeXt and Wide-ResNet (He et al. 2015; Xie et al. 2016; Zagoruyko & Komodakis 2016).

The state-dict layout is exactly MegEngine/Models' ``official/vision/classification/resnet``
(``conv1``, ``bn1``, ``layer1..4.{i}.{conv,bn}{1..3}``, ``downsample.{0,1}``, ``fc``; grouped
convolution weights shaped (G, O/G, I/G, 3, 3)), so the official MegEngine checkpoints load with
``strict=True``. Unlike that implementation, global pooling is a mean over H and W, so any input
size gives correct logits.

Feature levels: stem (after max-pool, stride 4, 64 ch), res2 (4), res3 (8), res4 (16), res5 (32).
"""
from typing import Optional, Sequence, Type, Union

import megengine.functional as F
import megengine.module as M

from ..init import init_linear_, msra_init_, zero_init_residual_
from ..layers import ConvNorm, DropPath, NormLayer, ResidualPlan, get_norm_layer
from ._registry import register_model
from ._builder import build_model, builder_doc
from .base import FeatureInfo, FeatureLevel, ZooModel
from .quantizable import fuse_conv

__all__ = [
    "ResNet", "BasicBlock", "Bottleneck", "FusedBlock", "PooledClassifier",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext50_32x4d", "resnext101_32x8d", "wide_resnet50_2", "wide_resnet101_2",
]


def _downsample(in_channels: int, out_channels: int, stride: int, norm_layer: NormLayer) -> Optional[M.Sequential]:
    """1x1 projection shortcut when shape changes, else ``None`` (identity)."""
    if in_channels == out_channels and stride == 1:
        return None
    return M.Sequential(M.Conv2d(in_channels, out_channels, 1, stride, bias=False), norm_layer(out_channels))


class BasicBlock(M.Module):
    """Two 3x3 convolutions (ResNet-18/34). (N, in_channels, H, W) -> (N, channels, H/stride, W/stride)."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1, groups: int = 1,
                 base_width: int = 64, dilation: int = 1, norm_layer: NormLayer = M.BatchNorm2d):
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError(
                f"BasicBlock (resnet18/34) supports only groups=1 and width_per_group=64, got "
                f"groups={groups}, width_per_group={base_width}; use a Bottleneck model (resnet50+) for ResNeXt/Wide"
            )
        self.conv1 = M.Conv2d(in_channels, channels, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = norm_layer(channels)
        self.conv2 = M.Conv2d(channels, channels, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = norm_layer(channels)
        self.downsample = _downsample(in_channels, channels, stride, norm_layer)
        self.drop_path: Optional[M.Module] = None  #: stochastic depth of the branch (ResNet's drop_path_rate)

    @property
    def residual_norm(self) -> M.Module:
        return self.bn2

    def host_plans(self):
        """:meth:`forward` as data (``megzoo.layers.ResidualPlan``), for the CPU training engine."""
        body = (ConvNorm(self.conv1, self.bn1, True), ConvNorm(self.conv2, self.bn2, False))
        shortcut = _shortcut_plan(self.downsample)
        return {"forward": ResidualPlan(body, shortcut, True, self.drop_path)}

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.drop_path is not None:
            out = self.drop_path(out)
        return F.relu(out + identity)

    def fused(self, where: str) -> "FusedBlock":
        """This block in quantizable form (``where``: its name, for errors)."""
        return FusedBlock([fuse_conv(self.conv1, self.bn1, True, f"{where}.conv1"),
                           fuse_conv(self.conv2, self.bn2, False, f"{where}.conv2")],
                          _fused_downsample(self.downsample, where))


class Bottleneck(M.Module):
    """1x1 reduce, 3x3 (grouped, possibly dilated), 1x1 expand by 4 (ResNet-50+, ResNeXt, Wide).
    Inner width = int(channels * base_width / 64) * groups."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1, groups: int = 1,
                 base_width: int = 64, dilation: int = 1, norm_layer: NormLayer = M.BatchNorm2d):
        super().__init__()
        width = int(channels * (base_width / 64.0)) * groups
        out_channels = channels * self.expansion
        self.conv1 = M.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = norm_layer(width)
        self.conv2 = M.Conv2d(width, width, 3, stride, padding=dilation, dilation=dilation, groups=groups, bias=False)
        self.bn2 = norm_layer(width)
        self.conv3 = M.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = norm_layer(out_channels)
        self.downsample = _downsample(in_channels, out_channels, stride, norm_layer)
        self.drop_path: Optional[M.Module] = None  #: stochastic depth of the branch (ResNet's drop_path_rate)

    @property
    def residual_norm(self) -> M.Module:
        return self.bn3

    def host_plans(self):
        """:meth:`forward` as data (``megzoo.layers.ResidualPlan``), for the CPU training engine."""
        body = (ConvNorm(self.conv1, self.bn1, True), ConvNorm(self.conv2, self.bn2, True),
                ConvNorm(self.conv3, self.bn3, False))
        shortcut = _shortcut_plan(self.downsample)
        return {"forward": ResidualPlan(body, shortcut, True, self.drop_path)}

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.drop_path is not None:
            out = self.drop_path(out)
        return F.relu(out + identity)

    def fused(self, where: str) -> "FusedBlock":
        """This block in quantizable form (``where``: its name, for errors)."""
        return FusedBlock([fuse_conv(self.conv1, self.bn1, True, f"{where}.conv1"),
                           fuse_conv(self.conv2, self.bn2, True, f"{where}.conv2"),
                           fuse_conv(self.conv3, self.bn3, False, f"{where}.conv3")],
                          _fused_downsample(self.downsample, where))


def _shortcut_plan(downsample: Optional[M.Sequential]) -> Optional[ConvNorm]:
    """The projection shortcut as a ``ConvNorm`` (None: the identity), for ``host_plans``."""
    return None if downsample is None else ConvNorm(downsample[0], downsample[1], False)


def _fused_downsample(downsample: Optional[M.Sequential], where: str) -> Optional[M.Module]:
    if downsample is None:
        return None
    return fuse_conv(downsample[0], downsample[1], False, f"{where}.downsample.0")


class FusedBlock(M.Module):
    """A residual block in quantizable form: ``body`` (its fused conv + BN (+ ReLU) modules in
    order), the fused projection ``downsample`` (or None) and ``relu(body + shortcut)`` as one
    ``Elemwise("FUSE_ADD_RELU")``. Same function and shapes as the block it was made from."""

    def __init__(self, body, downsample: Optional[M.Module]):
        super().__init__()
        self.body = M.Sequential(*body)
        self.downsample = downsample
        self.add_relu = M.Elemwise("FUSE_ADD_RELU")

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return self.add_relu(self.body(x), identity)

class PooledClassifier(M.Module):
    """ResNet's head as a module (the float part of the quantizable form): mean over H and W,
    then ``fc`` ((N, C, H, W) -> (N, num_classes)); without ``fc``, the pooled (N, C)."""

    def __init__(self, fc: Optional[M.Linear], dropout: Optional[M.Module] = None):
        super().__init__()
        self.fc = fc
        self.dropout = dropout  # the float model's, so QAT trains with it as float training does

    def forward(self, x):
        x = F.mean(x, axis=(2, 3))
        if self.dropout is not None:
            x = self.dropout(x)
        return x if self.fc is None else self.fc(x)

    def get_classifier(self) -> Optional[M.Linear]:
        return self.fc

_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(ZooModel):
    """ResNet family. Input (N, in_channels, H, W), any H, W; output (N, num_classes).

    Args:
        block: ``BasicBlock``/``Bottleneck`` or ``"basic"``/``"bottleneck"``.
        layers: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
        num_classes: classifier outputs; 0 removes the classifier (forward returns pooled features).
        in_channels: input image channels.
        zero_init_residual: zero the last norm weight of every block (each starts as identity).
        groups, width_per_group: ResNeXt cardinality and per-group width (Wide-ResNet: 128).
        replace_stride_with_dilation: 3 bools for res3/res4/res5; (False, True, True) gives output
            stride 8, (False, False, True) output stride 16.
        norm_layer: None/"bn", "frozen_bn", "gn", "gn:G" or a callable ``channels -> module``.
        drop_rate: dropout probability before the classifier.
        drop_path_rate: stochastic depth: block ``i`` of ``n`` drops its residual branch with
            probability ``drop_path_rate * i / (n - 1)`` in training (the first never, the last
            at the full rate).
    """

    classifier_key = "fc"
    first_conv_key = "conv1"

    def __init__(self, block: Union[str, Type[M.Module]], layers: Sequence[int], num_classes: int = 1000,
                 in_channels: int = 3, zero_init_residual: bool = False, groups: int = 1,
                 width_per_group: int = 64, replace_stride_with_dilation: Optional[Sequence[bool]] = None,
                 norm_layer=None, drop_rate: float = 0.0, drop_path_rate: float = 0.0):
        super().__init__(in_channels, num_classes)
        block = _BLOCKS.get(block, block) if isinstance(block, str) else block
        if block not in _BLOCKS.values():
            raise ValueError(f"block must be 'basic', 'bottleneck', BasicBlock or Bottleneck, got {block!r}")
        if len(layers) != 4 or not all(isinstance(n, int) and n >= 1 for n in layers):
            raise ValueError(f"layers must be 4 positive ints (blocks per stage), got {layers!r}")
        dilate = tuple(replace_stride_with_dilation or (False, False, False))
        if len(dilate) != 3:
            raise ValueError(
                "replace_stride_with_dilation must be None or 3 bools for res3, res4, res5 "
                f"(e.g. (False, True, True) for output stride 8), got {replace_stride_with_dilation!r}"
            )
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate!r}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}")
        norm = get_norm_layer(norm_layer)
        self.groups, self.base_width = groups, width_per_group

        self.conv1 = M.Conv2d(in_channels, 64, 7, 2, padding=3, bias=False)
        self.bn1 = norm(64)
        self.maxpool = M.MaxPool2d(kernel_size=3, stride=2, padding=1)
        levels = [FeatureLevel("stem", 64, 4, ("conv1", "bn1"), is_stem=True)]

        channels_in, stride_total, dilation = 64, 4, 1
        for index, (blocks, channels) in enumerate(zip(layers, (64, 128, 256, 512))):
            stride = 1 if index == 0 else 2
            previous_dilation = dilation
            if index > 0 and dilate[index - 1]:
                dilation, stride = dilation * stride, 1
            stage = [block(channels_in, channels, stride, groups, width_per_group, previous_dilation, norm)]
            channels_in = channels * block.expansion
            stage += [block(channels_in, channels, 1, groups, width_per_group, dilation, norm)
                      for _ in range(1, blocks)]
            setattr(self, f"layer{index + 1}", M.Sequential(*stage))
            stride_total *= stride
            levels.append(FeatureLevel(f"res{index + 2}", channels_in, stride_total, (f"layer{index + 1}",)))
        self.feature_info = FeatureInfo(levels)
        self.drop_path_rate = drop_path_rate
        if drop_path_rate > 0:
            blocks = [b for i in range(4) for b in getattr(self, f"layer{i + 1}")]
            for i, b in enumerate(blocks):
                if i > 0:
                    b.drop_path = DropPath(drop_path_rate * i / max(1, len(blocks) - 1))
        self.num_features = channels_in
        self.drop_rate = drop_rate
        self.dropout = M.Dropout(drop_rate) if drop_rate > 0 else None
        self.fc = M.Linear(channels_in, num_classes) if num_classes > 0 else None

        msra_init_(self)
        if zero_init_residual:
            zero_init_residual_(self)

    def forward_stem(self, x):
        """conv1, bn1, ReLU: (N, in_channels, H, W) -> (N, 64, H/2, W/2) (before the max-pool)."""
        return F.relu(self.bn1(self.conv1(x)))

    def host_plans(self):
        """:meth:`forward_stem`, and :meth:`forward_levels` when the model has all its levels, as
        data (``megzoo.layers.ResidualPlan`` steps), for the CPU training engine (``megzoo.train.cpu_engine``)."""
        stem = ResidualPlan((ConvNorm(self.conv1, self.bn1, True),), None, False)
        plans = {"forward_stem": stem}
        if all(self._has_level(i) for i in range(len(self._all_levels()))):
            blocks = [b.host_plans()["forward"] for i in range(4) for b in getattr(self, f"layer{i + 1}")]
            plans["forward_levels"] = (stem, self.maxpool, *blocks)
        return plans

    def _run_level(self, index, x):
        if index == 0:
            return self.maxpool(self.forward_stem(x))
        return getattr(self, f"layer{index}")(x)

    def forward_head(self, x, pre_logits: bool = False):
        x = F.mean(x, axis=(2, 3))  # global average pool, exact at any size: (N, C)
        if pre_logits or self.fc is None:
            return x
        if self.dropout is not None:
            x = self.dropout(x)
        return self.fc(x)

    def _fused_level(self, index: int) -> M.Module:
        if index == 0:
            return M.Sequential(fuse_conv(self.conv1, self.bn1, True, "conv1"), self.maxpool)
        stage = getattr(self, f"layer{index}")
        return M.Sequential(*[block.fused(f"layer{index}.{i}") for i, block in enumerate(stage)])

    def _float_head(self) -> M.Module:
        return PooledClassifier(self.fc, self.dropout)

    def get_classifier(self):
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        self.num_classes = num_classes
        self.fc = init_linear_(M.Linear(self.num_features, num_classes)) if num_classes > 0 else None

    def _remove_head(self) -> None:
        self.fc = None
        self.dropout = None


_documented = builder_doc("0 stem, 1 res2 ... 4 res5", "ResNet")


def _resnet(name: str, block: str, layers, pretrained, **kwargs) -> ResNet:
    return build_model(name, ResNet, pretrained, block=block, layers=layers, **kwargs)




@register_model(params=11_689_512, gmacs=1.814)
@_documented
def resnet18(pretrained=False, **kwargs) -> ResNet:
    """ResNet-18 (He et al., 2015, arXiv:1512.03385): BasicBlock, (2, 2, 2, 2)."""
    return _resnet("resnet18", "basic", (2, 2, 2, 2), pretrained, **kwargs)


@register_model(params=21_797_672, gmacs=3.664)
@_documented
def resnet34(pretrained=False, **kwargs) -> ResNet:
    """ResNet-34 (He et al., 2015, arXiv:1512.03385): BasicBlock, (3, 4, 6, 3)."""
    return _resnet("resnet34", "basic", (3, 4, 6, 3), pretrained, **kwargs)


@register_model(params=25_557_032, gmacs=4.089)
@_documented
def resnet50(pretrained=False, **kwargs) -> ResNet:
    """ResNet-50 (He et al., 2015, arXiv:1512.03385): Bottleneck, (3, 4, 6, 3)."""
    return _resnet("resnet50", "bottleneck", (3, 4, 6, 3), pretrained, **kwargs)


@register_model(params=44_549_160, gmacs=7.801)
@_documented
def resnet101(pretrained=False, **kwargs) -> ResNet:
    """ResNet-101 (He et al., 2015, arXiv:1512.03385): Bottleneck, (3, 4, 23, 3)."""
    return _resnet("resnet101", "bottleneck", (3, 4, 23, 3), pretrained, **kwargs)


@register_model(params=60_192_808, gmacs=11.514)
@_documented
def resnet152(pretrained=False, **kwargs) -> ResNet:
    """ResNet-152 (He et al., 2015, arXiv:1512.03385): Bottleneck, (3, 8, 36, 3)."""
    return _resnet("resnet152", "bottleneck", (3, 8, 36, 3), pretrained, **kwargs)


@register_model(params=25_028_904, gmacs=4.230)
@_documented
def resnext50_32x4d(pretrained=False, **kwargs) -> ResNet:
    """ResNeXt-50 32x4d (Xie et al., 2016, arXiv:1611.05431): 32 groups of width 4."""
    return _resnet("resnext50_32x4d", "bottleneck", (3, 4, 6, 3), pretrained, groups=32, width_per_group=4, **kwargs)


@register_model(params=88_791_336, gmacs=16.414)
@_documented
def resnext101_32x8d(pretrained=False, **kwargs) -> ResNet:
    """ResNeXt-101 32x8d (Xie et al., 2016, arXiv:1611.05431): 32 groups of width 8."""
    return _resnet("resnext101_32x8d", "bottleneck", (3, 4, 23, 3), pretrained, groups=32, width_per_group=8, **kwargs)


@register_model(params=68_883_240, gmacs=11.398)
@_documented
def wide_resnet50_2(pretrained=False, **kwargs) -> ResNet:
    """Wide ResNet-50-2 (Zagoruyko & Komodakis, 2016, arXiv:1605.07146): bottleneck width x2."""
    return _resnet("wide_resnet50_2", "bottleneck", (3, 4, 6, 3), pretrained, width_per_group=128, **kwargs)


@register_model(params=126_886_696, gmacs=22.753)
@_documented
def wide_resnet101_2(pretrained=False, **kwargs) -> ResNet:
    """Wide ResNet-101-2 (Zagoruyko & Komodakis, 2016, arXiv:1605.07146): bottleneck width x2."""
    return _resnet("wide_resnet101_2", "bottleneck", (3, 4, 23, 3), pretrained, width_per_group=128, **kwargs)
