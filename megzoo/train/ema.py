"""Exponential moving average of a model's weights, BatchNorm statistics included.

Every ``steps`` optimiser steps, :meth:`WeightEma.update` sets each float entry of the state dict
(parameters and buffers such as BatchNorm's running mean and variance) to
``decay * ema + (1 - decay) * current``; during the learning-rate warm-up it copies the model
instead (the early weights are not worth remembering), as torchvision's reference does. The
averages are NumPy float32 arrays kept beside the model (no second module, no gradients);
:meth:`WeightEma.applied` swaps them into the model for evaluation or saving and puts the
trained weights back bit for bit. :meth:`state_dict` goes into ``last.pkl``, so a resumed run
averages exactly as the uninterrupted one.

:func:`torchvision_decay` gives the per-update decay torchvision's V2 recipe uses:
``1 - min(1, (1 - 0.99998) * processes * batch * steps / epochs)``.
"""
import contextlib
from typing import Dict

import numpy as np

__all__ = ["WeightEma", "torchvision_decay"]


def torchvision_decay(base_decay: float, processes: int, batch_size: int, steps: int, epochs: int) -> float:
    """torchvision's adjustment of the EMA decay to the total batch and the run length."""
    alpha = min(1.0, (1.0 - base_decay) * processes * batch_size * steps / max(1, epochs))
    return 1.0 - alpha


def _float_state(model) -> Dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in model.state_dict().items()
            if np.issubdtype(np.asarray(v).dtype, np.floating)}


class WeightEma:
    """The moving average of ``model``'s float state (module docstring); starts as a copy."""

    def __init__(self, model, decay: float, steps: int = 1):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay!r}")
        if steps < 1:
            raise ValueError(f"ema steps must be >= 1, got {steps!r}")
        self.decay, self.steps = float(decay), int(steps)
        self.average = {k: np.array(v, dtype=np.float32, copy=True) for k, v in _float_state(model).items()}
        self.updates = 0

    def update(self, model, copy: bool = False) -> None:
        """One averaging step (or, with ``copy``, take the model's values)."""
        d = np.float32(self.decay)
        for name, value in _float_state(model).items():
            avg = self.average[name]
            if copy:
                avg[...] = value
            else:
                avg *= d
                avg += (np.float32(1.0) - d) * value.astype(np.float32)
        self.updates += 1

    @contextlib.contextmanager
    def applied(self, model):
        """Within the block, ``model`` holds the averaged weights; afterwards its own again."""
        own = {k: np.array(v, copy=True) for k, v in _float_state(model).items()}
        model.load_state_dict({k: v.astype(own[k].dtype) for k, v in self.average.items()}, strict=False)
        try:
            yield model
        finally:
            model.load_state_dict(own, strict=False)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "steps": self.steps, "updates": self.updates,
                "average": {k: v.copy() for k, v in self.average.items()}}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.average) - set(state["average"])
        if missing:
            raise ValueError(f"the EMA state lacks {len(missing)} entries of the model (e.g. {sorted(missing)[0]}): "
                             "was it saved for another model?")
        self.decay, self.steps, self.updates = float(state["decay"]), int(state["steps"]), int(state["updates"])
        self.average = {k: np.array(state["average"][k], dtype=np.float32, copy=True) for k in self.average}
