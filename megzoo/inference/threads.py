"""Which threads may run MegEngine, and a clear error instead of its assertion in the others.

MegEngine 1.13 sets up its dispatch context in the thread that imported it (normally the main
thread) and in no other: there, any eager operation, even ``megengine.tensor(1) + 1`` or reading
a tensor's ``.shape`` or ``.numpy()``, fails with ``assertion 'depth <
context.transformations.size()'``. What needs MegEngine therefore runs in that thread only:
``megzoo.compile``, tracing a new input size for the Lite backend, ``export``, an eager model.
What does not, runs in any thread: calling a compiled model, a new input size of an
``onnxruntime`` compiled model (built from the weights read at compile time), ``load`` of an
``.onnx`` (and of a ``.mge`` whose metadata file names its layout).

* :func:`on_megengine_thread`: whether MegEngine runs in the calling thread (asked once per thread);
* :func:`require_megengine_thread`: :class:`MegEngineThreadError` before any work, where it does not;
* :func:`megengine_thread_errors`: the same error where MegEngine's assertion comes up on the way.
"""
import contextlib
import threading
from typing import Iterator

__all__ = ["MegEngineThreadError", "on_megengine_thread", "require_megengine_thread", "megengine_thread_errors",
           "thread_message", "COMPILE_HINT"]

#: the part of MegEngine's assertion message that names the missing per-thread context
_ASSERTION = "context.transformations"
#: what to do instead, for work done at compile time
COMPILE_HINT = "compile in the main thread, then call the compiled model from any thread"

_local = threading.local()


class MegEngineThreadError(RuntimeError):
    """Work that needs MegEngine was asked for in a thread where MegEngine 1.13 cannot run it."""


def on_megengine_thread() -> bool:
    """Whether MegEngine's eager operations work in the calling thread: the thread that imported
    MegEngine (importing it here if nobody has). Asked once per thread, with a one-element tensor
    on the CPU."""
    ok = getattr(_local, "ok", None)
    if ok is None:
        import megengine

        try:
            megengine.tensor(0, device="cpux")
            ok = True
        except RuntimeError as exc:
            if _ASSERTION not in str(exc):
                raise
            ok = False
        _local.ok = ok
    return ok


def thread_message(what: str, hint: str = COMPILE_HINT) -> str:
    """``"<what> must run in the main thread: ...; <hint>"``."""
    return (f"{what} must run in the main thread (the one that imported MegEngine): MegEngine 1.13 cannot run "
            f"eager operations in other threads; {hint}")


def require_megengine_thread(what: str, hint: str = COMPILE_HINT) -> None:
    """Raise :class:`MegEngineThreadError` (:func:`thread_message`) unless MegEngine runs here."""
    if not on_megengine_thread():
        raise MegEngineThreadError(thread_message(what, hint))


@contextlib.contextmanager
def megengine_thread_errors(what: str, hint: str = COMPILE_HINT) -> Iterator[None]:
    """Within: MegEngine's other-thread assertion is raised as :class:`MegEngineThreadError`
    (:func:`thread_message`), without MegEngine's C++ backtrace; other errors pass unchanged."""
    try:
        yield
    except MegEngineThreadError:
        raise
    except RuntimeError as exc:
        if _ASSERTION in str(exc) and not on_megengine_thread():
            raise MegEngineThreadError(thread_message(what, hint)) from None
        raise
