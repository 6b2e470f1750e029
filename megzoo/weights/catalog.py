"""The pretrained-weight catalogue: every known ImageNet-1k weight file for megzoo's architectures,
as data. Facts are the publishers' (MegEngine/Models, BaseCls, torchvision); nothing is invented:
where a publisher gives no figure (BaseCls accuracy, file sizes, full hashes) the field is None.

Tags: ``megengine`` (MegEngine/Models official), ``basecls`` (BaseCls VGG), ``tv_in1k``
(torchvision IMAGENET1K_V1), ``tv2_in1k`` (torchvision IMAGENET1K_V2). A weight is named
``ARCH.TAG`` (e.g. ``resnet50.tv2_in1k``); torchvision's enum names ``IMAGENET1K_V1``/``_V2`` are
accepted as aliases of ``tv_in1k``/``tv2_in1k``.

Every weight, once loaded into megzoo, takes the same input: BGR, 0-255, mean
(103.530, 116.280, 123.675), std (57.375, 57.120, 58.395). torchvision weights are trained on
RGB 0-1 with mean (0.485, 0.456, 0.406) / std (0.229, 0.224, 0.225), the same affine map in the
other channel order, so their first convolution's input channels are reversed on conversion.
"""
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

__all__ = ["Weights", "Preprocess", "WEIGHTS", "weights_for", "default_weights", "find_weights",
           "MEAN_BGR", "STD_BGR", "TAG_ALIASES"]

MEAN_BGR = (103.530, 116.280, 123.675)
STD_BGR = (57.375, 57.120, 58.395)

TAG_ALIASES = {"imagenet1k_v1": "tv_in1k", "imagenet1k_v2": "tv2_in1k", "default": None}


@dataclass(frozen=True)
class Preprocess:
    """What the evaluation transform needs: resize the shorter side to ``resize_size`` px with
    ``interpolation``, centre-crop ``input_size`` px, subtract ``mean`` and divide by ``std``
    per channel of a ``color_order`` image in 0-255."""

    input_size: int = 224
    resize_size: int = 256
    interpolation: str = "bilinear"
    color_order: str = "BGR"
    mean: Tuple[float, float, float] = MEAN_BGR
    std: Tuple[float, float, float] = STD_BGR


@dataclass(frozen=True)
class Weights:
    """One pretrained weight file and its facts."""

    arch: str  #: builder name, e.g. "resnet50"
    tag: str  #: e.g. "megengine", "tv2_in1k"
    urls: Tuple[str, ...]  #: where to fetch it, in order of preference
    #: how the file names and shapes its tensors: "megengine" (native), "basecls" (VGG without conv
    #: bias) or "torchvision" (.pth); not a memory layout (those are megzoo.inference.layouts')
    checkpoint_layout: str
    origin: str  #: publisher and repository
    license: str
    top1: Optional[float] = None  #: ImageNet-1k val top-1 %, as the publisher reports it
    top5: Optional[float] = None
    accuracy_source: str = ""
    sha256: Optional[str] = None  #: full sha256 when published
    sha256_prefix: Optional[str] = None  #: leading hex digits of the sha256 carried by the file name
    size: Optional[int] = None  #: bytes, when published
    recipe: str = ""
    preprocess: Preprocess = field(default_factory=Preprocess)
    num_classes: int = 1000
    categories: str = "imagenet-1k"  #: megzoo.data.imagenet1k_categories()

    @property
    def name(self) -> str:
        return f"{self.arch}.{self.tag}"

    @property
    def layout(self) -> str:
        """The old name of :attr:`checkpoint_layout`."""
        return self.checkpoint_layout

    @property
    def filename(self) -> str:
        return self.urls[0].rsplit("/", 1)[-1]

    def as_dict(self) -> dict:
        d = asdict(self)
        d["name"], d["filename"] = self.name, self.filename
        d["urls"] = list(self.urls)
        d["layout"] = self.checkpoint_layout  # the old key
        return d


_MGE_BASE = "https://data.megengine.org.cn/models/weights/"
_BASECLS_BASE = "https://data.megengine.org.cn/research/basecls/models/vgg/"
_TV_BASE = "https://download.pytorch.org/models/"
_MGE_ORIGIN = "MegEngine/Models official/vision/classification/resnet"
_TV_ORIGIN = "pytorch/vision (torchvision.models)"
_TV_LICENSE = "BSD-3-Clause (torchvision repository)"
_MGE_LICENSE = "Apache-2.0 (MegEngine/Models repository)"

# (arch, file, top1, top5)
_MEGENGINE = [
    ("resnet18", "resnet18_naiveaug_70312_78a63ca6.pkl", 70.312, 89.430),
    ("resnet34", "resnet34_naiveaug_73960_fd9d869d.pkl", 73.960, 91.630),
    ("resnet50", "resnet50_fbaug_76254_4e14b7d1.pkl", 76.254, 93.056),
    ("resnet101", "resnet101_fbaug_77944_b7932921.pkl", 77.944, 93.844),
    ("resnet152", "resnet152_fbaug_78582_7551aff3.pkl", 78.582, 94.130),
    ("resnext50_32x4d", "resnext50_32x4d_fbaug_77592_c4b04e5e.pkl", 77.592, 93.644),
    ("resnext101_32x8d", "resnext101_32x8d_fbaug_79520_80efb344.pkl", 79.520, 94.586),
]
_VGG_ARCHS = ["vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"]
_TV_V1 = [
    ("resnet18", "resnet18-f37072fd.pth", 69.758, 89.078),
    ("resnet34", "resnet34-b627a593.pth", 73.314, 91.420),
    ("resnet50", "resnet50-0676ba61.pth", 76.130, 92.862),
    ("resnet101", "resnet101-63fe2227.pth", 77.374, 93.546),
    ("resnet152", "resnet152-394f9c45.pth", 78.312, 94.046),
    ("resnext50_32x4d", "resnext50_32x4d-7cdf4587.pth", 77.618, 93.698),
    ("resnext101_32x8d", "resnext101_32x8d-8ba56ff5.pth", 79.312, 94.526),
    ("wide_resnet50_2", "wide_resnet50_2-95faca4d.pth", 78.468, 94.086),
    ("wide_resnet101_2", "wide_resnet101_2-32ee1156.pth", 78.848, 94.284),
    ("vgg11", "vgg11-8a719046.pth", 69.020, 88.628),
    ("vgg11_bn", "vgg11_bn-6002323d.pth", 70.370, 89.810),
    ("vgg13", "vgg13-19584684.pth", 69.928, 89.246),
    ("vgg13_bn", "vgg13_bn-abd245e5.pth", 71.586, 90.374),
    ("vgg16", "vgg16-397923af.pth", 71.592, 90.382),
    ("vgg16_bn", "vgg16_bn-6c64b313.pth", 73.360, 91.516),
    ("vgg19", "vgg19-dcbb9e9d.pth", 72.376, 90.876),
    ("vgg19_bn", "vgg19_bn-c79401a0.pth", 74.218, 91.842),
]
_TV_V2 = [
    ("resnet50", "resnet50-11ad3fa6.pth", 80.858, 95.434),
    ("resnet101", "resnet101-cd907fc2.pth", 81.886, 95.780),
    ("resnet152", "resnet152-f82ba261.pth", 82.284, 96.002),
    ("resnext50_32x4d", "resnext50_32x4d-1a0047aa.pth", 81.198, 95.340),
    ("resnext101_32x8d", "resnext101_32x8d-110c445d.pth", 82.834, 96.228),
    ("wide_resnet50_2", "wide_resnet50_2-9ba9bcbe.pth", 81.602, 95.758),
    ("wide_resnet101_2", "wide_resnet101_2-d733dc28.pth", 82.510, 96.020),
]


def _build() -> List[Weights]:
    weights = [
        Weights(arch, "megengine", (_MGE_BASE + file,), "megengine", _MGE_ORIGIN, _MGE_LICENSE, top1, top5,
                accuracy_source="MegEngine/Models README (ImageNet-1k val, 224 crop)",
                recipe="naive augmentation" if "naiveaug" in file else "fb augmentation (Goyal et al. recipe)")
        for arch, file, top1, top5 in _MEGENGINE
    ]
    weights += [
        Weights(arch, "basecls", (f"{_BASECLS_BASE}{arch}/{arch}.pkl",), "basecls",
                "megvii-research/basecls basecls/models/vgg.py", "Apache-2.0 (BaseCls repository)",
                accuracy_source="not published in the BaseCls repository")
        for arch in _VGG_ARCHS
    ]
    for tag, table, resize, recipe in (("tv_in1k", _TV_V1, 256, "torchvision V1 (original recipe)"),
                                       ("tv2_in1k", _TV_V2, 232, "torchvision V2 (new training recipe)")):
        weights += [
            Weights(arch, tag, (_TV_BASE + file,), "torchvision", _TV_ORIGIN, _TV_LICENSE, top1, top5,
                    accuracy_source="torchvision model metadata (ImageNet-1k val)",
                    sha256_prefix=file.rsplit("-", 1)[1].split(".")[0], recipe=recipe,
                    preprocess=Preprocess(resize_size=resize))
            for arch, file, top1, top5 in table
        ]
    return weights


#: every registered weight, by name ``ARCH.TAG``
WEIGHTS: Dict[str, Weights] = {w.name: w for w in _build()}

#: the default tag per arch: the official MegEngine weights, else BaseCls, else torchvision V1
_DEFAULT_ORDER = ("megengine", "basecls", "tv_in1k", "tv2_in1k")


def weights_for(arch: str) -> List[Weights]:
    """All weights of ``arch``, default first."""
    found = [w for w in WEIGHTS.values() if w.arch == arch]
    return sorted(found, key=lambda w: _DEFAULT_ORDER.index(w.tag) if w.tag in _DEFAULT_ORDER else 99)


def default_weights(arch: str) -> Optional[Weights]:
    found = weights_for(arch)
    return found[0] if found else None


def find_weights(arch: str, tag: str) -> Optional[Weights]:
    """The weight of ``arch`` named by ``tag`` (``"tv2_in1k"``, ``"resnet50.tv2_in1k"``,
    ``"IMAGENET1K_V2"``, ``"default"``), or None."""
    key = tag.lower()
    if key.startswith(arch + "."):
        key = key[len(arch) + 1:]
    key = TAG_ALIASES.get(key, key)
    if key is None:
        return default_weights(arch)
    return WEIGHTS.get(f"{arch}.{key}")
