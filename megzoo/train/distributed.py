"""Several GPUs through MegEngine's own distributed engine (``megengine.distributed``).

:func:`launch` starts one process per GPU with ``megengine.distributed.launcher`` (which creates
the process group, NCCL); in each process the trainer

* broadcasts the parameters and buffers from rank 0 at start (:func:`broadcast_module`,
  ``dist.bcast_list_``), so every rank starts from the same weights;
* attaches the parameters to its ``GradManager`` with ``dist.make_allreduce_cb("mean")``
  (:func:`allreduce_callback`): gradients are averaged over ranks during the backward pass;
* reads its share of every epoch through the samplers' ``world_size``/``rank``;
* sums evaluation counts over ranks (:func:`all_reduce_sum`);
* logs and writes files from rank 0 only (``rank() == 0``; the trainer's ``main``).

With one process none of this runs: the same code path, with ``world_size() == 1``.
"""
from typing import Callable, List, Optional

import numpy as np

__all__ = ["launch", "rank", "world_size", "broadcast_module", "allreduce_callback", "all_reduce_sum"]


def _dist():
    import megengine.distributed as dist

    return dist


def world_size() -> int:
    dist = _dist()
    return dist.get_world_size() if dist.is_distributed() else 1


def rank() -> int:
    dist = _dist()
    return dist.get_rank() if dist.is_distributed() else 0


def broadcast_module(module) -> None:
    """Give every rank rank 0's parameters and buffers (BatchNorm statistics)."""
    if world_size() > 1:
        dist = _dist()
        dist.bcast_list_(list(module.parameters()) + list(module.buffers()), dist.WORLD)


def allreduce_callback() -> Optional[Callable]:
    """The GradManager callback averaging gradients over ranks (None with one process)."""
    if world_size() == 1:
        return None
    return _dist().make_allreduce_cb("mean")


def all_reduce_sum(values: List[float]) -> List[float]:
    """Element-wise sum of ``values`` over ranks (identity with one process)."""
    if world_size() == 1:
        return list(values)
    import megengine
    import megengine.functional as F

    total = F.distributed.all_reduce_sum(megengine.Tensor(np.asarray(values, dtype=np.float32)))
    return [float(v) for v in total.numpy()]


def launch(fn: Callable, gpus: int, *args, **kwargs) -> list:
    """Run ``fn(*args, **kwargs)`` in ``gpus`` processes, one per GPU, in a MegEngine process
    group (NCCL); returns the list of the processes' return values, rank 0's first."""
    if gpus < 1:
        raise ValueError(f"gpus must be >= 1, got {gpus}")
    import megengine

    available = megengine.get_device_count("gpu")
    if available < gpus:
        raise ValueError(f"{gpus} GPUs asked for, MegEngine sees {available}")
    dist = _dist()
    return dist.launcher(fn, n_gpus=gpus, world_size=gpus, device_type="gpu", backend="nccl")(*args, **kwargs)
