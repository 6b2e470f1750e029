"""The CPU training engine behind one object: :class:`CpuEngine`.

The trainer builds it from its config (:meth:`CpuEngine.from_config`), installs it on the model
(:meth:`CpuEngine.prepare`, which runs or declines with the reason), wraps validation in
:meth:`CpuEngine.evaluation` and calls :meth:`CpuEngine.release` after training. What runs:
convolutions with a BLAS backward (and forward) pass on host arrays, and residual blocks computed
whole on channels-last host arrays for models that describe them (``host_plans()``, see
:class:`megzoo.layers.ResidualPlan`). Outputs equal MegEngine's to float rounding; figures are in
docs/training-speed.md and benchmarks/results/.
"""
from contextlib import AbstractContextManager
from dataclasses import dataclass

from ...device import is_cpu_device
from . import blocks, conv
from .conv import FORWARDS, METHODS
from .workspace import WORKSPACE

__all__ = ["FORWARDS", "METHODS", "NO_CONVOLUTIONS", "NOT_PREPARED", "OFF", "QAT", "CpuEngine", "CpuEngineOptions"]

#: the reasons :meth:`CpuEngine.prepare` declines (besides "not a CPU device: DEVICE")
OFF = "off"
QAT = "QAT trains with MegEngine's own operators"
NO_CONVOLUTIONS = "the model has no convolutions it can run"
NOT_PREPARED = "not prepared"


@dataclass(frozen=True)
class CpuEngineOptions:
    """The engine's options: the convolution backward formulation (one of :data:`METHODS`, or
    ``"off"``: MegEngine's own operators throughout), the training forward of the convolutions
    (one of :data:`FORWARDS`), and whether residual blocks run whole on host arrays (only with
    the ``"blas"`` forward)."""
    conv_backward: str = "auto"
    conv_forward: str = "blas"
    fused_blocks: bool = True

    def __post_init__(self):
        if self.conv_backward not in METHODS + (OFF,):
            raise ValueError(f"fast_conv must be one of {', '.join(METHODS + (OFF,))}, got {self.conv_backward!r}")
        if self.conv_forward not in FORWARDS:
            raise ValueError(f"fast_conv_forward must be one of {', '.join(FORWARDS)}, got {self.conv_forward!r}")

    @classmethod
    def from_config(cls, config) -> "CpuEngineOptions":
        """The options a :class:`megzoo.train.TrainConfig` asks for (``fast_conv``,
        ``fast_conv_forward``, ``fused_blocks``)."""
        return cls(config.fast_conv, config.fast_conv_forward, bool(config.fused_blocks))


class CpuEngine:
    """The CPU training engine of one run: installed on a model by :meth:`prepare`, or declined."""

    def __init__(self, options: CpuEngineOptions = CpuEngineOptions(), qat: bool = False):
        self.options = options
        self.qat = qat  #: quantization-aware training: MegEngine's own (fake-quantized) operators run
        self.reason: str | None = NOT_PREPARED  #: why the engine does not run (None: it runs)
        self._description = OFF

    @classmethod
    def from_config(cls, config) -> "CpuEngine":
        """The engine a :class:`megzoo.train.TrainConfig` asks for; ``ValueError`` for unknown choices."""
        return cls(CpuEngineOptions.from_config(config), qat=bool(config.qat))

    def prepare(self, model, device: str) -> str | None:
        """Install the engine on ``model`` trained on ``device``. Returns None when it runs, else
        the reason it declined (one short phrase); a declined engine leaves the model as it is."""
        self.reason = self._decline(device)
        if self.reason is not None:
            return self.reason
        o = self.options
        described = None
        if conv.enable(model, method=o.conv_backward, forward=o.conv_forward):
            described = o.conv_backward + (", BLAS forward" if o.conv_forward == "blas" else "")
        if o.fused_blocks and o.conv_forward == "blas" and blocks.enable(model):
            described = (described or o.conv_backward) + ", fused blocks"
        if described is None:
            self.reason = NO_CONVOLUTIONS
            return self.reason
        self._description = described
        return None

    def _decline(self, device) -> str | None:
        """The reason not to run on ``device``, or None (checked in the trainer's order)."""
        if self.options.conv_backward == OFF:
            return OFF
        if not is_cpu_device(device):
            return f"not a CPU device: {device}"
        if self.qat:
            return QAT
        return None

    @property
    def description(self) -> str:
        """What runs, e.g. ``"blas, BLAS forward, fused blocks"``; ``"off"`` or ``"off (REASON)"``."""
        if self.reason is None:
            return self._description
        return OFF if self.reason == OFF else f"{OFF} ({self.reason})"

    def evaluation(self) -> AbstractContextManager:
        """Meanwhile, enabled models in ``eval()`` mode run their block plans on host arrays too
        (the trainer's validation)."""
        return blocks.host_evaluation()

    def release(self) -> None:
        """Give the host buffers kept between steps back to the system (idempotent)."""
        WORKSPACE.clear()


