"""The behaviour every megzoo classifier shares: feature levels, head, freezing, features-only mode.

A family (``resnet.py``, ``vgg.py``) subclasses :class:`ZooModel` and describes itself with:

* ``feature_info``: a :class:`FeatureInfo`, one :class:`FeatureLevel` per feature map, in order
  (name, channels, stride in pixels of the input, the attribute names of the modules computing it);
* ``_run_level(index, x)``: compute level ``index`` from the previous level's output;
* ``forward_head(x, pre_logits=False)``, ``get_classifier()`` and ``reset_classifier(n)``.

Export needs nothing more: :mod:`megzoo.inference.graph_onnx` converts the traced ``forward``.

Everything else (``extract_features``, ``forward``, ``freeze``, ``as_features``) lives here once.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import megengine.module as M
import numpy as np
from megengine import Parameter, Tensor

from ..layers import check_input

__all__ = ["FeatureLevel", "FeatureInfo", "ZooModel"]


@dataclass(frozen=True)
class FeatureLevel:
    """One feature map a backbone can return."""

    name: str  #: e.g. "res3"
    channels: int  #: C of the (N, C, H, W) map
    stride: int  #: input pixels per output pixel (H_in / H)
    modules: Tuple[str, ...]  #: attribute names of the modules computing this level
    is_stem: bool = False

    def as_dict(self) -> dict:
        return {"name": self.name, "channels": self.channels, "stride": self.stride}


class FeatureInfo(list):
    """List of :class:`FeatureLevel` with timm-style accessors."""

    def names(self) -> List[str]:
        return [level.name for level in self]

    def channels(self) -> List[int]:
        return [level.channels for level in self]

    def strides(self) -> List[int]:
        return [level.stride for level in self]


class ZooModel(M.Module):
    """Base class of megzoo classifiers. Input (N, in_channels, H, W) float32 of any H, W >=
    ``min_input_size``; output logits (N, num_classes), or when ``num_classes == 0`` the
    pre-logits features, ``forward_head(x, pre_logits=True)`` (ResNet: the pooled
    (N, num_features); VGG: the (N, 4096) output of the hidden head layers)."""

    #: smallest input side the architecture accepts
    min_input_size = 1

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        _check_positive_int("in_channels", in_channels, minimum=1)
        _check_positive_int("num_classes", num_classes, minimum=0)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.features_only = False
        self.out_indices: Tuple[int, ...] = ()
        self.feature_info = FeatureInfo()  # filled by the subclass
        self._frozen_levels: Tuple[int, ...] = ()

    # --- what a family provides -------------------------------------------------------------
    def _run_level(self, index: int, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Last feature map (N, C, h, w) -> logits (N, num_classes), or the pooled
        pre-classifier features (N, num_features) when ``pre_logits``."""
        raise NotImplementedError

    def get_classifier(self) -> Optional[M.Module]:
        raise NotImplementedError

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final classifier by a freshly initialised one with ``num_classes`` outputs
        (0 removes it: ``forward`` then returns pooled features)."""
        raise NotImplementedError

    #: state-dict key prefixes of the final classifier and of the first convolution (weights loading)
    classifier_key: str = ""
    first_conv_key: str = ""

    # --- checkpoint layouts: each family says which it reads and how (megzoo.weights stays generic)
    #: the checkpoint layouts this family converts from: ``megengine`` (megzoo's own keys, as
    #: MegEngine/Models saves them) and ``torchvision`` (a ``.pth`` state dict); a family adds its own
    checkpoint_layouts: Tuple[str, ...] = ("megengine", "torchvision")

    def detect_checkpoint_layout(self, state_dict: Dict[str, np.ndarray], is_torch_file: bool) -> str:
        """The layout of ``state_dict``: ``torchvision`` for a torch file, else ``megengine``."""
        return "torchvision" if is_torch_file else "megengine"

    def torchvision_key_map(self) -> Dict[str, str]:
        """torchvision module path -> this model's module path, for modules whose names differ
        (none for families that mirror torchvision's names)."""
        return {}

    def convert_checkpoint(self, state_dict: Dict[str, np.ndarray], layout: str) -> Dict[str, np.ndarray]:
        """``state_dict`` in ``layout`` renamed/converted to this model's keys (a new dict; shapes
        are reconciled by the loader). ``torchvision``: ``num_batches_tracked`` dropped, module
        names mapped (:meth:`torchvision_key_map`) and the first convolution's input channels
        reversed (RGB -> BGR) so the model takes megzoo's BGR 0-255 input with MegEngine's
        mean/std."""
        if layout not in self.checkpoint_layouts:
            raise ValueError(f"{self.model_name} reads {', '.join(self.checkpoint_layouts)} checkpoints, "
                             f"not {layout!r}")
        if layout == "megengine":
            return dict(state_dict)
        if layout == "torchvision":
            names = self.torchvision_key_map()
            converted = {}
            for key, value in state_dict.items():
                if key.endswith("num_batches_tracked"):
                    continue
                module, _, param = key.rpartition(".")
                converted[f"{names.get(module, module)}.{param}"] = value
            first = f"{self.first_conv_key}.weight"
            if first in converted and converted[first].shape[1] == 3:
                converted[first] = np.ascontiguousarray(converted[first][:, ::-1])  # RGB -> BGR input
            return converted
        raise NotImplementedError(f"{type(self).__name__} lists layout {layout!r} but does not convert it")

    # --- shared behaviour ------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return getattr(self, "_model_name", type(self).__name__)

    def _check(self, x: Tensor) -> None:
        check_input(x, self.in_channels, self.model_name, self.min_input_size)

    def extract_features(self, x: Tensor) -> Dict[str, Tensor]:
        """All feature maps, ``{name: (N, C, H/stride, W/stride)}``, e.g. ResNet
        ``{"stem", "res2", "res3", "res4", "res5"}`` (see ``feature_info``)."""
        self._check(x)
        outputs = {}
        for index, level in enumerate(self._all_levels()):  # level indices, also after as_features
            if not self._has_level(index):
                break
            x = self._run_level(index, x)
            outputs[level.name] = x
        return outputs

    def forward_features(self, x: Tensor) -> Tensor:
        """The last feature map (N, C, H/32, W/32) (stride 16 or 8 with dilation); for a backbone
        (``features_only``), the last map it still computes."""
        self._check(x)
        return self.forward_levels(x)

    def forward_levels(self, x: Tensor) -> Tensor:
        """:meth:`forward_features` without the input check: every level this model still has, in order."""
        for index in range(len(self._all_levels())):
            if not self._has_level(index):
                break
            x = self._run_level(index, x)
        return x

    def forward(self, x: Tensor):
        """Logits (N, num_classes); with ``features_only``, the list of maps at ``out_indices``."""
        if self.features_only:
            self._check(x)
            maps = []
            for index in range(self.out_indices[-1] + 1):
                x = self._run_level(index, x)
                if index in self.out_indices:
                    maps.append(x)
            return maps
        return self.forward_head(self.forward_features(x))

    def to_quantizable(self):
        """A :class:`~megzoo.models.quantizable.QuantizableModel` made from a copy of this model
        (this one is left as it is): every conv + BN (+ ReLU) fused, the residual adds as
        quantizable ops, stubs around the int8 part; it computes what this model computes until
        :mod:`megzoo.quantization` calibrates or fine-tunes it. A family provides
        ``_fused_level(index)`` and ``_float_head()``."""
        import copy

        from .quantizable import QuantizableModel, QuantizationError

        if self.features_only:
            raise QuantizationError(f"{self.model_name} is a features_only backbone: megzoo quantizes classifiers "
                                    "(build the model without features_only, quantize it, then use its levels)")
        model = copy.deepcopy(self)
        model.eval()
        levels = [model._fused_level(i) for i in range(len(model._all_levels()))]
        return QuantizableModel(model, levels, model._float_head())

    def _fused_level(self, index: int) -> M.Module:
        raise NotImplementedError(f"{type(self).__name__} has no quantizable form of its level {index}")

    def _float_head(self) -> M.Module:
        raise NotImplementedError(f"{type(self).__name__} has no float head for its quantizable form")

    def _has_level(self, index: int) -> bool:
        return all(getattr(self, name, None) is not None for name in self._all_levels()[index].modules)

    # --- backbone mode ------------------------------------------------------------------------
    def as_features(self, out_indices: Optional[Sequence[int]] = None) -> "ZooModel":
        """Turn this model into a backbone whose ``forward`` returns the list of feature maps at
        ``out_indices`` (default: every level). The head and the levels after the last requested
        one are removed, so their parameters are not kept. ``feature_info`` then describes the
        returned maps. Returns ``self``."""
        count = len(self.feature_info)
        if out_indices is None:
            out_indices = range(count)
        indices = []
        for i in out_indices:
            if not isinstance(i, int) or isinstance(i, bool) or not -count <= i < count:
                raise ValueError(
                    f"out_indices {tuple(out_indices)!r} invalid for {self.model_name}: each must be an "
                    f"int in [{-count}, {count - 1}] indexing {self.feature_info.names()}"
                )
            indices.append(i % count)
        if not indices or len(set(indices)) != len(indices):
            raise ValueError(f"out_indices must be non-empty and without repeats, got {tuple(out_indices)!r}")
        indices = sorted(indices)
        for level in self.feature_info[indices[-1] + 1:]:
            for name in level.modules:
                setattr(self, name, None)
        self._remove_head()
        self.features_only = True
        self.out_indices = tuple(indices)
        self.all_feature_info = self.feature_info
        self.feature_info = FeatureInfo(self.all_feature_info[i] for i in indices)
        return self

    def _remove_head(self) -> None:
        raise NotImplementedError

    # --- fine-tuning helpers ------------------------------------------------------------------
    def freeze(self, num_stages: int = 0, stem: bool = True) -> "ZooModel":
        """Freeze the stem (if ``stem``) and the first ``num_stages`` stages after it.

        Frozen parameters are left out of :meth:`trainable_parameters` (attach only those to the
        ``GradManager`` / optimizer), and every BatchNorm in them is put in inference mode for
        good: it normalises with its running statistics and never updates them, even after
        ``model.train()``. Returns ``self``.
        """
        levels = self._all_levels()
        stages = [i for i, level in enumerate(levels) if not level.is_stem]
        if not isinstance(num_stages, int) or not 0 <= num_stages <= len(stages):
            raise ValueError(f"num_stages must be an int in [0, {len(stages)}] for {self.model_name}, "
                             f"got {num_stages!r}")
        chosen = [i for i, level in enumerate(levels) if level.is_stem and stem] + stages[:num_stages]
        self._frozen_levels = tuple(sorted(set(self._frozen_levels) | set(chosen)))
        for module in self._level_modules(chosen):
            for m in module.modules():
                if isinstance(m, M.BatchNorm2d):
                    m._megzoo_was_frozen = getattr(m, "_megzoo_was_frozen", m.freeze)
                    m.freeze = True
        return self

    def unfreeze(self) -> "ZooModel":
        """Undo :meth:`freeze`: all parameters trainable, BatchNorm back to its own setting."""
        for module in self._level_modules(self._frozen_levels):
            for m in module.modules():
                if isinstance(m, M.BatchNorm2d) and hasattr(m, "_megzoo_was_frozen"):
                    m.freeze = m._megzoo_was_frozen
                    del m._megzoo_was_frozen
        self._frozen_levels = ()
        return self

    def frozen_parameters(self) -> List[Parameter]:
        return [p for m in self._level_modules(self._frozen_levels) for p in m.parameters()]

    def trainable_parameters(self) -> List[Parameter]:
        """Parameters not frozen by :meth:`freeze` (all of them if nothing is frozen)."""
        frozen = {id(p) for p in self.frozen_parameters()}
        return [p for p in self.parameters() if id(p) not in frozen]

    def _all_levels(self) -> FeatureInfo:
        return getattr(self, "all_feature_info", self.feature_info)

    def _level_modules(self, indices) -> List[M.Module]:
        levels = self._all_levels()
        found = []
        for i in indices:
            for name in levels[i].modules:
                module = getattr(self, name, None)
                if module is not None:
                    found.append(module)
        return found


def _check_positive_int(name: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
