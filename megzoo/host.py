"""Facts about this machine and process, and the file helpers every cache shares (stdlib only).

* :func:`megzoo_home`: the cache root, ``$MEGZOO_HOME`` or ``~/.cache/megzoo``;
* :func:`usable_cpus`: CPUs this process may run on;
* :func:`cpu_info` / :func:`machine_tag`: the CPU model, family/model/stepping and ISA flags,
  and a file-name-safe tag of them that tells two machines apart when their model names agree
  (a Zen 4 and a Zen 5 "AMD EPYC" both say just that);
* :func:`atomic_write` (and its ``_bytes`` / ``_text`` forms): write a file so that a reader sees
  the old content or the new, never a part (temporary file in the same folder, fsync, rename).

Nothing here imports another megzoo module or MegEngine, so every layer may use it.
"""
import functools
import hashlib
import os
import platform
import re
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Dict, FrozenSet, Union

__all__ = ["megzoo_home", "usable_cpus", "cpu_info", "cpu_flags", "machine_tag", "machine_record", "atomic_write",
           "atomic_write_bytes", "atomic_write_text"]

PathLike = Union[str, "os.PathLike[str]"]


def megzoo_home() -> Path:
    """The megzoo cache root: ``$MEGZOO_HOME``, else ``~/.cache/megzoo`` (absolute; may not exist)."""
    home = os.environ.get("MEGZOO_HOME", "").strip()
    return Path(home or "~/.cache/megzoo").expanduser().absolute()


def usable_cpus() -> int:
    """CPUs this process may run on (``os.sched_getaffinity``; ``os.cpu_count()`` where that is
    not available), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


@functools.lru_cache(maxsize=None)
def _read_cpuinfo(path: str = "/proc/cpuinfo") -> Dict[str, str]:
    """The first processor's ``key: value`` lines of ``/proc/cpuinfo`` ({} where there is none)."""
    fields: Dict[str, str] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    if fields:
                        break  # end of the first processor's block
                    continue
                key, sep, value = line.partition(":")
                if sep:
                    fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_info() -> Dict[str, object]:
    """``{"model_name", "vendor", "family", "model", "stepping", "mhz", "flags"}`` of this CPU
    (strings; ``flags`` a frozenset; empty where unknown)."""
    fields = _read_cpuinfo()
    return {
        "model_name": fields.get("model name") or platform.processor() or platform.machine() or "cpu",
        "vendor": fields.get("vendor_id", ""),
        "family": fields.get("cpu family", ""),
        "model": fields.get("model", ""),
        "stepping": fields.get("stepping", ""),
        "mhz": fields.get("cpu MHz", ""),
        "flags": frozenset(fields.get("flags", "").split()),
    }


def cpu_flags() -> FrozenSet[str]:
    """This CPU's ISA flags as ``/proc/cpuinfo`` lists them (``avx2``, ``avx512f``, ...)."""
    return cpu_info()["flags"]  # type: ignore[return-value]


def machine_record() -> Dict[str, object]:
    """The CPU's identity as the per-machine records (layout probe, backend choice) keep it:
    ``{"model_name", "vendor", "family", "model", "stepping"}``."""
    info = cpu_info()
    return {k: info[k] for k in ("model_name", "vendor", "family", "model", "stepping")}


def machine_tag() -> str:
    """A file-name-safe tag for this kind of CPU: model name, family-model-stepping and a digest
    of the ISA flags, e.g. ``AMD-EPYC-f26m2s0-1a2b3c4d``. Caches whose contents depend on the
    CPU (kernel choices, layout verdicts) are keyed by it."""
    info = cpu_info()
    name = re.sub(r"[^A-Za-z0-9]+", "-", str(info["model_name"])).strip("-")[:48] or "cpu"
    fms = f"f{info['family'] or 'x'}m{info['model'] or 'x'}s{info['stepping'] or 'x'}"
    flags = hashlib.sha1(" ".join(sorted(info["flags"])).encode()).hexdigest()[:8]  # type: ignore[arg-type]
    return f"{name}-{fms}-{flags}"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(str(directory), os.O_RDONLY)
    except OSError:  # pragma: no cover - not possible on some platforms
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _new_file_mode() -> int:
    """The permissions ``open(path, "w")`` would give a new file: 0o666 less the umask (read
    from ``/proc/self/status`` where it can be, so the process-wide umask is not touched)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Create or replace ``path`` atomically and durably: ``write(f)`` fills a temporary file
    (opened ``"wb"``) beside it, which is fsynced and renamed over ``path`` (``os.replace``), and
    the folder is fsynced. The folder is created if needed. On any error the temporary file is
    removed and ``path`` keeps its old content: a reader never sees a part. A new file gets the
    permissions a plain ``open`` would give it (not the temporary file's 0o600); a replaced one
    keeps its own."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        try:
            mode = path.stat().st_mode & 0o7777  # a replaced file keeps its permissions
        except OSError:
            mode = _new_file_mode()
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """:func:`atomic_write` of ``text`` encoded with ``encoding``."""
    return atomic_write_bytes(path, text.encode(encoding))
