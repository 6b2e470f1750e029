"""What a training run checks and holds before it writes anything, and what stops a diverged run.

* :func:`open_output`: the input sizes against the model's minimum (before the output folder is
  touched), then the output folder created and locked (:func:`megzoo.host.lock_folder`: a second
  run on it stops with :class:`~megzoo.host.FolderInUseError` naming the first one's PID), the
  temporary files of the run's names a killed run left there removed (all of them: the lock is
  held), and the DataLoader stores a killed run left running stopped
  (:func:`megzoo.train.workers.reap_leaked_stores`); both logged.
* :func:`check_loss` / :func:`check_weights`: :class:`DivergedError` at the first loss, or the
  first epoch's weights, that is not finite, naming the step and the fix (a lower ``--lr``).
  Nothing of that epoch is saved: ``last.pkl`` stays the last good epoch.
"""
import math
import os
import typing
from typing import Iterable, Optional

import numpy as np

from ..host import FolderLock, lock_folder, remove_stale_temporaries
from ..registry import get_model_entry
from .checkpoint import LAST
from .workers import reap_leaked_stores

__all__ = ["DivergedError", "open_output", "check_input_sizes", "check_loss", "check_weights"]


class DivergedError(FloatingPointError):
    """The loss or the weights stopped being finite numbers (the message names the step and the fix)."""


def min_input_size(model_name: str, module=None) -> int:
    """The smallest input side (px) ``module``, or the model registered as ``model_name`` (the
    class its builder returns), takes; 1 when it says none."""
    if module is None:
        try:
            module = typing.get_type_hints(get_model_entry(model_name).builder).get("return")
        except Exception:  # not a registered name, or an unresolvable annotation: the forward checks
            module = None
    size = getattr(module, "min_input_size", 1)
    return size if isinstance(size, int) else 1


def check_input_sizes(config, module=None) -> None:
    """``ValueError`` when the training crop or the evaluation crop is smaller than the model takes."""
    least = min_input_size(config.model, module)
    for name in ("input_size", "eval_size"):
        size = getattr(config, name)
        if isinstance(size, int) and size < least:
            raise ValueError(f"{config.model} needs inputs of at least {least}x{least} pixels, got {name}={size}: "
                             f"give --{name.replace('_', '-')} {least} or more")


def open_output(trainer, module, names: Iterable[str]) -> Optional[FolderLock]:
    """Before the run writes anything: the input sizes (:func:`check_input_sizes`); then, on the
    main process, the output folder created and locked (not on the processes of a multi-GPU run:
    their launcher holds it), stale temporaries of ``names`` removed and leaked stores stopped,
    each logged. Returns the lock (held as long as it is referenced)."""
    check_input_sizes(trainer.config, module)
    if not trainer.main:
        return None
    lock = lock_folder(trainer.output) if trainer.world == 1 else None
    os.makedirs(trainer.output, exist_ok=True)
    # held (by this process, or by the launcher of a multi-GPU run): no writer of these names is
    # left but a killed one, so every temporary of them goes, whatever PID it names
    removed = remove_stale_temporaries(trainer.output, names, folder_held=True)
    if removed:
        trainer.log(f"removed {len(removed)} temporary file(s) that a killed run left: "
                    f"{', '.join(p.name for p in removed)}")
    for note in reap_leaked_stores():
        trainer.log(note)
    return lock


def _stopped(trainer, what: str) -> DivergedError:
    last = os.path.join(trainer.output, LAST)
    kept = (f"{LAST} keeps epoch {trainer.epoch}" if trainer.epoch and os.path.isfile(last)
            else "no checkpoint was written")
    return DivergedError(f"training stopped: {what}; lower --lr (now {trainer.config.lr:g}) and resume; "
                         f"nothing of this epoch was saved, {kept}")


def check_loss(trainer, loss: float) -> None:
    """:class:`DivergedError` when the loss of step ``trainer.step + 1`` is not finite."""
    if not math.isfinite(loss):
        raise _stopped(trainer, f"the loss became {loss} at step {trainer.step + 1} (epoch {trainer.epoch + 1})")


def check_weights(trainer) -> None:
    """:class:`DivergedError` when a parameter or buffer of the model is not finite after the
    epoch's training (the last update can break them with a finite loss), before they are saved."""
    for name, value in trainer.model.state_dict().items():
        array = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise _stopped(trainer, f"the weights became non-finite ({name}) by step {trainer.step} "
                                    f"(epoch {trainer.epoch + 1})")
