"""Pick MegEngine's device without its CUDA probing noise.

On a machine without a usable CUDA driver, MegEngine's first use of its default device (``xpux``)
prints a block of ``info: ... Failed to load CUDA driver library ...`` and ``debug: failed to load
cuda func`` lines on stderr (from C++, so Python cannot silence them). :func:`select_device`
avoids them: it probes CUDA once with file descriptor 2 pointed at ``/dev/null`` and then sets
the default device to ``cpux`` when there is no GPU, so MegEngine never probes again (the
``megzoo`` commands do this). Library calls use :func:`quiet_device` and :func:`using_device`
instead: they build their model on the quiet choice without changing the program's default.

Device names: ``cpu`` (= ``cpux``), ``gpu``/``cuda`` (= ``gpux``), or any MegEngine name
(``cpu0``, ``gpu1``, ``xpux``, ...). ``MEGZOO_DEVICE`` gives one when the caller does not.
"""
import contextlib
import os
import sys
from typing import Iterator, Optional

__all__ = ["select_device", "quiet_device", "using_device", "cuda_available", "quiet_stderr", "is_cpu_device",
           "move_tensors"]

_ALIASES = {"cpu": "cpux", "gpu": "gpux", "cuda": "gpux"}
_cuda: Optional[bool] = None


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Send everything written to file descriptor 2 (C and Python alike) to /dev/null meanwhile."""
    try:
        sys.stderr.flush()
    except (AttributeError, ValueError):
        pass
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 at all
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def cuda_available() -> bool:
    """Whether MegEngine can use a CUDA GPU, probed once and silently."""
    global _cuda
    if _cuda is None:
        import megengine

        with quiet_stderr():
            _cuda = bool(megengine.is_cuda_available())
    return _cuda


def select_device(device: Optional[str] = None) -> str:
    """Set MegEngine's default device and return its name.

    ``device`` (or else ``$MEGZOO_DEVICE``) is used as given (after the aliases above); with
    neither, ``xpux`` (MegEngine's choice, the GPU) when CUDA is usable, else ``cpux``.
    """
    import megengine

    name = (device or os.environ.get("MEGZOO_DEVICE") or "").strip()
    name = _checked(name) if name else ("xpux" if cuda_available() else "cpux")
    megengine.set_default_device(name)
    return name


def _checked(name: str) -> str:
    name = _ALIASES.get(name.lower(), name)
    if name.startswith("gpu") and not cuda_available():
        raise ValueError(f"device {name!r} asked for, but MegEngine finds no usable CUDA GPU here "
                         "(use cpu, or check the NVIDIA driver)")
    return name


def quiet_device(device: Optional[str] = None) -> str:
    """The device library calls (``megzoo.Classifier``) build their model on, without changing
    MegEngine's default: ``device`` or ``$MEGZOO_DEVICE`` (aliases as above); else a default
    device the program has set; else, while the default is still MegEngine's own ``xpux``, the
    same choice made quietly (``xpux`` with a usable GPU, ``cpux`` without)."""
    import megengine

    name = (device or os.environ.get("MEGZOO_DEVICE") or "").strip()
    if name:
        return _checked(name)
    current = megengine.get_default_device()
    if current != "xpux":
        return current
    return "xpux" if cuda_available() else "cpux"


@contextlib.contextmanager
def using_device(name: str) -> Iterator[str]:
    """Make ``name`` MegEngine's default device meanwhile (modules built inside put their
    parameters there), then restore the previous default."""
    import megengine

    previous = megengine.get_default_device()
    megengine.set_default_device(name)
    try:
        yield name
    finally:
        megengine.set_default_device(previous)


def is_cpu_device(device) -> bool:
    """True for MegEngine CPU devices (``cpu0``, ``multithread2:0``, ``xpux`` on a machine
    without GPU ...); ``device`` is a name or a ``CompNode`` (``tensor.device``)."""
    name = str(getattr(device, "physical_name", device)).lower()
    return name.startswith("cpu") or name.startswith("multithread")


def move_tensors(tensors, device: Optional[str] = None) -> list:
    """Put each MegEngine tensor of ``tensors`` on ``device`` (default: MegEngine's current default
    device) in place (the same objects, as MegEngine's optimizers update them); returns
    ``[(tensor, previous logical device name)]`` for those that moved, so a caller can move them
    back. MegEngine refuses to mix tensors of different devices, even ``xpux`` and ``cpu0`` on the
    same CPU."""
    import megengine

    target = megengine.Tensor(0.0, device=device).device
    moved = []
    for tensor in tensors:
        if tensor.device.logical_name != target.logical_name:
            moved.append((tensor, tensor.device.logical_name))
            tensor._reset(tensor.to(target))
    return moved
