"""The registered backends: :func:`register_backend` once per runtime, then every generic part of
megzoo (``compile``, ``load``, the Classifier, the CLI's ``--backend`` choices, the benchmark's
modes, ``backend="auto"``) asks this registry instead of naming a runtime.

Registration order is the order choices are listed in, and the order ``backend="auto"`` measures
and falls back in. Names, options and benchmark modes must be unique across backends.
"""
from collections.abc import Sequence
from typing import Callable, Dict, Iterator, List, Tuple

from ..model_files import FileKind
from .base import COMMON_OPTIONS, PRECISIONS, Backend, BenchMode

__all__ = ["register_backend", "unregister_backend", "get_backend", "backend_names", "registered_backends",
           "option_owners", "registered_file_kinds", "backend_for_file_kind", "backends_loading", "bench_modes",
           "NameView"]

_backends: Dict[str, Backend] = {}
#: names that are not backends but appear where a backend is chosen
RESERVED = ("auto", "compiled", "eager", "custom")


class NameView(Sequence):
    """A read-only tuple of names computed from the registry each time it is read, so a name kept
    at import time (``BACKENDS``, ``MODES``) follows later registrations."""

    def __init__(self, names: Callable[[], Tuple[str, ...]]):
        self._names = names

    def __getitem__(self, index):
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __contains__(self, name) -> bool:
        return name in self._names()

    def __eq__(self, other) -> bool:
        return tuple(self) == (tuple(other) if isinstance(other, (tuple, list, NameView)) else other)

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __add__(self, other) -> tuple:
        return tuple(self) + tuple(other)

    def __radd__(self, other) -> tuple:
        return tuple(other) + tuple(self)

    def __repr__(self) -> str:
        return repr(tuple(self))


def register_backend(backend: Backend) -> Backend:
    """Make ``backend`` a choice everywhere; returns it. ValueError for a name, option, file kind
    or benchmark mode another registered backend has, an option every backend takes, a precision
    megzoo does not know, or a reserved name."""
    name = backend.name
    if not name or not name.isidentifier() or name in RESERVED:
        raise ValueError(f"a backend needs a name of letters, digits and _ other than {', '.join(RESERVED)}; "
                         f"got {name!r}")
    if name in _backends:
        raise ValueError(f"a backend named {name!r} is registered already ({_backends[name]!r})")
    odd = [p for p in backend.precisions if p not in PRECISIONS]
    if odd or "fp32" not in backend.precisions:
        raise ValueError(f"backend {name!r}: precisions must include 'fp32' and be some of {PRECISIONS}, "
                         f"got {tuple(backend.precisions)!r}")
    taken = sorted(set(backend.options) & (set(option_owners()) | set(COMMON_OPTIONS)))
    if taken:
        raise ValueError(f"backend {name!r}: options {', '.join(taken)} belong to another backend")
    kinds = sorted({k.name for k in backend.file_kinds} & {k.name for k in registered_file_kinds()})
    if kinds:
        raise ValueError(f"backend {name!r}: {', '.join(kinds)} files are loaded by another backend")
    modes = {n for m in bench_modes() for n in (m.name, *m.aliases)} | {"eager"}
    clash = sorted({n for m in backend.bench_modes() for n in (m.name, *m.aliases)} & modes)
    if clash:
        raise ValueError(f"backend {name!r}: benchmark modes {', '.join(clash)} exist already")
    _backends[name] = backend
    return backend


def unregister_backend(name: str) -> Backend:
    """Take the backend ``name`` out of the registry (a test's, a plugin's); returns it."""
    return _backends.pop(get_backend(name).name)


def get_backend(name: str) -> Backend:
    """The registered backend ``name``; ValueError naming the choices otherwise."""
    try:
        return _backends[name]
    except (KeyError, TypeError):
        raise ValueError(f"backend must be one of {('auto',) + backend_names()}, got {name!r}") from None


def backend_names() -> Tuple[str, ...]:
    """The registered backends' names, in registration order."""
    return tuple(_backends)


def registered_backends() -> List[Backend]:
    """The registered backends, in registration order."""
    return list(_backends.values())


def option_owners() -> Dict[str, Backend]:
    """Each backend-specific option of compile/load -> the backend that takes it."""
    return {option: b for b in _backends.values() for option in b.options}


def registered_file_kinds() -> Tuple[FileKind, ...]:
    """The file kinds :func:`megzoo.inference.load` takes, in registration order."""
    return tuple(kind for b in _backends.values() for kind in b.file_kinds)


def backend_for_file_kind(kind: str) -> Backend:
    """The backend that loads files of the kind named ``kind`` (ValueError: none does)."""
    for backend in _backends.values():
        if any(k.name == kind for k in backend.file_kinds):
            return backend
    raise ValueError(f"no registered backend loads {kind} files")


def backends_loading(kind: str) -> List[Backend]:
    """The backends that load files of the kind named ``kind``: its default loader first
    (:func:`backend_for_file_kind`), then those that also load it (``also_loads``: by name, or
    under ``auto`` when measured faster)."""
    default = [b for b in _backends.values() if any(k.name == kind for k in b.file_kinds)]
    return default + [b for b in _backends.values() if any(k.name == kind for k in b.also_loads)]


def bench_modes() -> List[BenchMode]:
    """Every registered backend's benchmark modes, backend by backend."""
    return [mode for b in _backends.values() for mode in b.bench_modes()]
