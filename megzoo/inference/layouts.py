"""Which convolution layouts MegEngine Lite can run on this machine: a probe, its verdicts, the guard.

MegEngine's non-portable layouts (``nchw88``: x86 AVX2/AVX-512 kernels on channel blocks of 8;
``nchw44``: ARM) are fast where they work, but on some CPUs MegEngine 1.13's own kernels abort
the process or deadlock (on AMD Zen 5, NCHW88 prints ``bad err=45 in Xbyak::Error`` and then
segfaults, or hangs in ``LITE_wait``). A crash or a hang cannot be caught inside the process, so
before any of megzoo's public calls runs such a layout here it is *probed*:

* :func:`run_probe` dumps a small network with the ResNet patterns (7x7/2 stem, residual 3x3
  pair, 1x1/2 expansion, linear head) in that layout and runs it in a subprocess with a time
  limit (:data:`PROBE_TIMEOUT_S`, ``$MEGZOO_PROBE_TIMEOUT``) the way megzoo runs graphs: a
  2-thread network with weight pre-processing at batch 1, then a 1-thread network on another
  comp node at batch 3, kernels chosen by profiling. The outputs must match eager MegEngine.
* :func:`layout_verdict` keeps each verdict in a record per machine (CPU model,
  family/model/stepping, ISA flags: :func:`megzoo.host.machine_tag`) and MegEngine version, in
  ``$MEGZOO_PROBE_DIR`` (default ``$MEGZOO_HOME/algo_cache``), so a machine probes each layout
  once. Delete the record to probe again. A record (or folder) another user could have written
  is refused (:mod:`~megzoo.inference.cache_files`), never read.
* :func:`require_layout` turns a failed verdict into :class:`LayoutUnavailableError` (the layout,
  the probe's reason, the record and the fix) instead of running the kernels.
* :func:`best_layout` is what ``layout="auto"`` means here: ``nchw88`` on x86 with AVX2 + FMA if
  it passes its probe, else ``nchw`` (with a warning naming the reason). ``MEGZOO_LAYOUT`` forces
  a layout, under the same guard.

NCHW is MegEngine's portable baseline and is not probed.
"""
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from ..host import atomic_write_text, cpu_info, machine_record, machine_tag, megzoo_home
from .cache_files import prepare_folder, read_json
from .graph import DEFAULT_TOLERANCE, LAYOUTS, trace_and_dump

__all__ = ["LayoutUnavailableError", "PROBE_TIMEOUT_S", "probe_record_path", "run_probe", "layout_verdict",
           "require_layout", "best_layout", "resolve_layout", "megengine_version", "fit_layout"]

#: seconds a probe may take (a healthy one takes 1-3 s here, most of it starting Python);
#: ``$MEGZOO_PROBE_TIMEOUT`` overrides
PROBE_TIMEOUT_S = 20.0
#: the layouts that are probed before use (NCHW is the portable baseline)
PROBED_LAYOUTS = tuple(layout for layout in LAYOUTS if layout != "nchw")
_OK_MARK = "LAYOUT-PROBE-OK"

#: the subprocess: ``python -c PROBE_SRC graph.mge x.npy out_prefix``; writes out_prefix{1,3}.npy
PROBE_SRC = r"""
import sys
import numpy as np
from megenginelite import LiteAlgoSelectStrategy as S, LiteConfig, LiteNetwork, LiteOptions

graph, inputs, out = sys.argv[1:4]
x = np.load(inputs)
for threads, preprocess, device_id, batch in ((2, True, 0, 1), (1, False, 1, 3)):
    options = LiteOptions()
    options.weight_preprocess = preprocess
    net = LiteNetwork(LiteConfig(option=options))
    if threads > 1:
        net.threads_number = threads
    if device_id:
        net.device_id = device_id
    net.set_network_algo_policy(S.LITE_ALGO_PROFILE | S.LITE_ALGO_OPTIMIZED)
    net.load(graph)
    net.get_io_tensor(net.get_input_name(0)).set_data_by_copy(np.ascontiguousarray(x[:batch]))
    net.forward()
    net.wait()
    np.save(out + str(batch) + ".npy", net.get_io_tensor(net.get_output_name(0)).to_numpy())
print("LAYOUT-PROBE-OK", flush=True)
"""


class LayoutUnavailableError(RuntimeError):
    """A convolution layout was asked for that failed its probe on this machine: running its
    kernels would crash or hang the process."""


def megengine_version() -> str:
    """MegEngine's version, without importing it (a Lite-only process need not)."""
    try:
        from importlib.metadata import version

        return version("MegEngine")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        import megengine

        return megengine.__version__


def probe_timeout() -> float:
    """:data:`PROBE_TIMEOUT_S`, or ``$MEGZOO_PROBE_TIMEOUT`` seconds (a positive number)."""
    text = os.environ.get("MEGZOO_PROBE_TIMEOUT", "").strip()
    if not text:
        return PROBE_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ValueError(f"MEGZOO_PROBE_TIMEOUT must be a positive number of seconds, got {text!r}")
    return value


def probe_record_path() -> Path:
    """The verdict record of this machine and MegEngine version:
    ``$MEGZOO_PROBE_DIR`` (default ``$MEGZOO_HOME/algo_cache``)
    ``/layout-probe-mge<version>-<machine tag>.json``."""
    folder = os.environ.get("MEGZOO_PROBE_DIR", "").strip()
    root = Path(folder).expanduser().absolute() if folder else megzoo_home() / "algo_cache"
    return root / f"layout-probe-mge{megengine_version()}-{machine_tag()}.json"


def _probe_model():
    import megengine.functional as F
    import megengine.module as M

    class LayoutProbe(M.Module):
        def __init__(self):
            super().__init__()
            self.stem = M.ConvBnRelu2d(3, 16, 7, stride=2, padding=3)
            self.a = M.ConvBnRelu2d(16, 16, 3, padding=1)
            self.b = M.ConvBn2d(16, 16, 3, padding=1)
            self.c = M.ConvBnRelu2d(16, 32, 1, stride=2)
            self.fc = M.Linear(32, 10)

        def forward(self, x):
            x = self.stem(x)
            x = F.relu(self.b(self.a(x)) + x)
            return self.fc(F.mean(self.c(x), axis=(2, 3)))

    model = LayoutProbe()
    model.eval()
    return model


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def run_probe(layout: str, timeout: Optional[float] = None) -> Dict[str, object]:
    """Probe ``layout`` now (no record is read or written): ``{"ok": bool, "reason": str,
    "seconds": float}``. ``reason`` is the largest relative output error when the subprocess
    finished, else its exit status and last line of stderr, or the time limit it overran."""
    import megengine

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    timeout = probe_timeout() if timeout is None else float(timeout)
    model = _probe_model()
    x = np.random.RandomState(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="megzoo-probe-") as tmp:
        graph, inputs, out = Path(tmp) / "probe.mge", Path(tmp) / "x.npy", Path(tmp) / "out"
        trace_and_dump(model, (1, 3, 32, 32), graph, layout=layout)
        np.save(inputs, x)
        try:
            proc = subprocess.run([sys.executable, "-c", PROBE_SRC, str(graph), str(inputs), str(out)],
                                  capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            seconds = time.perf_counter() - t0
            tail = _last_line(exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr)
            return {"ok": False, "seconds": round(seconds, 2),
                    "reason": f"no answer within {timeout:g} s (hang)" + (f"; last output: {tail}" if tail else "")}
        seconds = time.perf_counter() - t0
        if proc.returncode != 0 or _OK_MARK not in proc.stdout:
            return {"ok": False, "seconds": round(seconds, 2),
                    "reason": f"exit status {proc.returncode}: {_last_line(proc.stderr) or 'no output'}"}
        ref = model(megengine.tensor(x)).numpy()
        errors = [float(np.max(np.abs(np.load(f"{out}{n}.npy") - ref[:n])) / np.max(np.abs(ref[:n])))
                  for n in (1, 3)]
    worst = max(errors)
    ok = bool(worst < DEFAULT_TOLERANCE)
    wrong = "" if ok else " (outputs wrong; tolerance 1e-4)"  # 1e-4 = DEFAULT_TOLERANCE
    return {"ok": ok, "seconds": round(seconds, 2), "reason": f"max relative error {worst:.3g}{wrong}"}


def _read_record(path: Path) -> Dict[str, dict]:
    data = read_json(path)
    verdicts = data.get("verdicts") if isinstance(data, dict) else None
    return verdicts if isinstance(verdicts, dict) else {}


def layout_verdict(layout: str) -> Dict[str, object]:
    """This machine's verdict on ``layout``: ``{"ok", "reason", "seconds"}``, from the record
    (:func:`probe_record_path`) or, the first time, from :func:`run_probe` (then recorded).
    NCHW is always ``ok`` (not probed)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout not in PROBED_LAYOUTS:
        return {"ok": True, "reason": "portable baseline layout (not probed)", "seconds": 0.0}
    record = probe_record_path()
    verdicts = _read_record(record)
    verdict = verdicts.get(layout)
    if isinstance(verdict, dict) and isinstance(verdict.get("ok"), bool):
        return verdict
    verdict = run_probe(layout)
    _probed_here.add((str(record), layout))
    verdicts = _read_record(record)  # another process may have added a verdict meanwhile
    verdicts[layout] = verdict
    machine = machine_record()
    try:
        prepare_folder(record.parent)
        atomic_write_text(record, json.dumps({"megengine": megengine_version(), "machine": machine,
                                              "verdicts": verdicts}, indent=2) + "\n")
    except OSError as exc:  # a read-only cache: the verdict still holds for this process
        warnings.warn(f"megzoo: could not record the {layout} layout probe in {record}: {exc}", RuntimeWarning)
    return verdict


def require_layout(layout: str, asked_by: str = "") -> str:
    """``layout`` if it may run here, else :class:`LayoutUnavailableError`. ``asked_by`` names
    where the request came from for the message (e.g. ``"MEGZOO_LAYOUT"``)."""
    verdict = layout_verdict(layout)
    if verdict["ok"]:
        return layout
    info = cpu_info()
    where = f"{info['model_name']}, CPU family {info['family'] or '?'} model {info['model'] or '?'}"
    source = f" ({asked_by}={layout})" if asked_by else ""
    busy = ", or if the machine was busy when the probe timed out"
    raise LayoutUnavailableError(
        f"the {layout} convolution layout{source} failed its probe on this machine ({where}, MegEngine "
        f"{megengine_version()}): {verdict['reason']}. Its kernels would crash or hang this process, so megzoo "
        f"will not run them. Use layout='auto' or 'nchw' (--layout auto|nchw on the command line"
        f"{', or unset MEGZOO_LAYOUT' if asked_by == 'MEGZOO_LAYOUT' else ''}); to probe again (e.g. after "
        f"upgrading MegEngine{busy if 'hang' in str(verdict['reason']) else ''}), "
        f"delete {probe_record_path()}")


_auto: Dict[str, str] = {}  # probe record path -> what "auto" chose (once per process and record)
_probed_here: set = set()  # (record, layout) probed by this process (the fallback warning is said then)


def best_layout() -> str:
    """The layout ``layout="auto"`` uses here: ``$MEGZOO_LAYOUT`` if set (guarded by
    :func:`require_layout`); else ``"nchw88"`` on x86 with AVX2 + FMA when it passes its probe
    (MegEngine's fast x86 kernels, oneDNN among them, live there, with few algorithms to profile);
    else ``"nchw"``, with a warning naming the reason when the probe has just failed (later
    processes read the record silently)."""
    forced = os.environ.get("MEGZOO_LAYOUT", "").strip().lower()
    if forced and forced != "auto":
        if forced not in LAYOUTS:
            raise ValueError(f"MEGZOO_LAYOUT must be one of {('auto',) + LAYOUTS}, got {forced!r}")
        return require_layout(forced, asked_by="MEGZOO_LAYOUT")
    key = str(probe_record_path())
    if key not in _auto:
        choice = "nchw"
        if platform.machine().lower() in ("x86_64", "amd64") and {"avx2", "fma"} <= cpu_info()["flags"]:
            verdict = layout_verdict("nchw88")
            if verdict["ok"]:
                choice = "nchw88"
            elif (key, "nchw88") in _probed_here:  # said once, when found; the record keeps it
                warnings.warn(f"megzoo: the nchw88 layout failed its probe on this machine ({verdict['reason']}); "
                              f"using nchw (record: {key})", RuntimeWarning)
        _auto[key] = choice
    return _auto[key]


def fit_layout(model, layout: str, requested: str = "auto") -> str:
    """``layout`` (a resolved one) for ``model``, or ``"nchw"`` when ``requested`` was ``"auto"``
    and a convolution of ``model`` does not suit the blocked layouts of MegEngine 1.13: a dilated
    one (the NCHW88/NCHW44 conversion fails on an assertion; asked for by name, ValueError) or one
    whose output channels are not a multiple of the block (8, or 4 for NCHW44: padded, and a
    biased convolution followed by BatchNorm then fails in Lite with "broadcast on dim")."""
    if layout == "nchw":
        return layout
    block = 4 if layout == "nchw44" else 8
    odd = False
    for name, module in model.named_modules():
        dilation = getattr(module, "dilation", None)  # MegEngine's convolution modules: an int or a pair
        channels = getattr(module, "out_channels", None)
        if dilation is None or not isinstance(channels, int):
            continue
        values = dilation if isinstance(dilation, (tuple, list)) else [dilation]
        if any(isinstance(d, int) and d != 1 for d in values):
            if requested == "auto":
                return "nchw"
            raise ValueError(f"layout {layout!r} cannot hold {name} ({type(module).__name__}, dilation {dilation}): "
                             "MegEngine's blocked layouts take no dilated convolution; use layout 'nchw' or 'auto'")
        odd = odd or channels % block != 0
    return "nchw" if odd and requested == "auto" else layout


def resolve_layout(layout: str, fuse: bool = True) -> str:
    """The layout to run for a request: ``"auto"`` -> :func:`best_layout` (``"nchw"`` without
    ``fuse``); an explicit layout is checked with :func:`require_layout`."""
    if layout == "auto":
        return best_layout() if fuse else "nchw"
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {('auto',) + LAYOUTS}, got {layout!r}")
    if layout != "nchw" and not fuse:
        raise ValueError(f"layout {layout!r} needs the graph optimisations (fuse=True)")
    return require_layout(layout)
