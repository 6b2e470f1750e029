"""Model statistics: parameter count, multiply-accumulates (MACs) and a printable summary."""
from typing import Dict, Tuple

import megengine
import megengine.module as M
import numpy as np

__all__ = ["count_params", "count_macs", "model_summary"]


def count_params(model: M.Module) -> int:
    """Number of parameters (weights and biases; BatchNorm running statistics are buffers, not counted)."""
    return int(sum(int(np.prod(p.shape)) for p in model.parameters()))


def _conv_macs(module: M.Conv2d, output) -> int:
    kh, kw = module.kernel_size if isinstance(module.kernel_size, tuple) else (module.kernel_size,) * 2
    return int(np.prod(output.shape)) * (module.in_channels // module.groups) * kh * kw


def count_macs(model: M.Module, input_size: Tuple[int, int] = (224, 224), in_channels: int = 3) -> int:
    """Multiply-accumulates of convolutions and Linear layers for one (1, C, H, W) input.

    This is the convention of torchvision's "GFLOPS" metadata (which counts MACs); BatchNorm,
    activations and pooling are not counted. Runs one forward pass in eval mode.
    """
    counts = []
    hooks = []
    for m in model.modules():
        if isinstance(m, M.Conv2d):
            hooks.append(m.register_forward_hook(lambda mod, inp, out: counts.append(_conv_macs(mod, out))))
        elif isinstance(m, M.Linear):
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out: counts.append(int(np.prod(out.shape)) * mod.in_features)))
    was_training = model.training
    model.eval()
    try:
        model(megengine.tensor(np.zeros((1, in_channels, *input_size), dtype=np.float32)))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return int(sum(counts))


def model_summary(model: M.Module, input_size: Tuple[int, int] = (224, 224)) -> str:
    """A short text summary: parameters, GMACs, and each feature level's shape at ``input_size``."""
    in_channels = getattr(model, "in_channels", 3)
    x = megengine.tensor(np.zeros((1, in_channels, *input_size), dtype=np.float32))
    model.eval()
    lines = [f"model        {getattr(model, 'model_name', type(model).__name__)}",
             f"parameters   {count_params(model):,}",
             f"GMACs        {count_macs(model, input_size, in_channels) / 1e9:.3f} at {input_size[0]}x{input_size[1]}"]
    feats: Dict[str, object] = model.extract_features(x) if hasattr(model, "extract_features") else {}
    info = {level.name: level for level in getattr(model, "feature_info", [])}
    lines.append(f"input        (1, {in_channels}, {input_size[0]}, {input_size[1]})")
    for name, value in feats.items():
        stride = f"  stride {info[name].stride}" if name in info else ""
        lines.append(f"  {name:<10} {tuple(value.shape)}{stride}")
    if not getattr(model, "features_only", False):
        lines.append(f"output       {tuple(model(x).shape)}")
    return "\n".join(lines)
