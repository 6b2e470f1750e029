"""Fixtures shared by the test modules.

* ``shared_dir``: the reference material at ``../shared/`` next to the repository (present in CI).
* ``anchor_layout(name)``: a reference checkpoint layout, ``{"num_params": int,
  "state_dict": {key: (shape tuple, dtype name)}}``.
* an autouse fixture restores MegEngine's default device after every test.
* ``dead_pid``: the PID of a process that has ended (and been reaped).
* ``zoo_model(name)``: a registry model built with its defaults once per session, in eval mode.
  Building the large models dominates the suite's run time, so tests share these instances. Their
  weights are unspecified: a test may load other finite, well-scaled weights into one, so it must
  not rely on the initial values. Anything else a test changes (mode, structure, freezing) it puts
  back; otherwise it builds a private model.
"""
import json
from pathlib import Path

import pytest

SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(autouse=True)
def _restore_default_device():
    """The trainer and the CLI set MegEngine's (process-wide) default device for good; every test
    gets back the default it started with, so later tests build models where they expect."""
    import megengine

    device = megengine.get_default_device()
    yield
    megengine.set_default_device(device)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    assert SHARED_DIR.is_dir(), f"reference material missing: {SHARED_DIR}"
    return SHARED_DIR


@pytest.fixture(scope="session")
def anchor_layout(shared_dir):
    cache = {}

    def load(name: str) -> dict:
        if name not in cache:
            data = json.loads((shared_dir / "reference" / "anchor_state_dicts" / f"{name}.json").read_text())
            layout = {key: (tuple(shape), dtype) for key, (shape, dtype) in data["state_dict"].items()}
            cache[name] = {"num_params": data["num_params"], "state_dict": layout}
        return cache[name]

    return load


@pytest.fixture
def dead_pid() -> int:
    """The PID of a process that ran and has been reaped (no process has it, until reused)."""
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


class _ModelCache:
    def __init__(self):
        self._models = {}

    def __call__(self, name: str):
        if name not in self._models:
            import megzoo

            model = megzoo.get_model(name)
            model.eval()
            self._models[name] = model
        return self._models[name]

    def drop(self, name: str) -> None:
        """Free a model no later test needs."""
        self._models.pop(name, None)


@pytest.fixture(scope="session")
def zoo_model():
    cache = _ModelCache()
    yield cache
    cache._models.clear()


# --- machine-specific kernels --------------------------------------------------------------------
@pytest.fixture(scope="session", autouse=True)
def _shared_layout_probe(tmp_path_factory):
    """One layout-probe verdict for the whole run (and its subprocesses), whatever $MEGZOO_HOME a
    test sets: ``$MEGZOO_PROBE_DIR`` points at one session folder, so a machine where a layout
    hangs pays its time limit once, not once per test."""
    import os

    previous = os.environ.get("MEGZOO_PROBE_DIR")
    os.environ["MEGZOO_PROBE_DIR"] = str(tmp_path_factory.mktemp("layout-probe"))
    yield
    if previous is None:
        os.environ.pop("MEGZOO_PROBE_DIR", None)
    else:
        os.environ["MEGZOO_PROBE_DIR"] = previous


def require_layout_or_skip(layout: str) -> None:
    """Skip the calling test, with the probe's reason, where ``layout`` fails its probe here
    (MegEngine 1.13's NCHW88 kernels crash or hang on AMD Zen 5); a test that runs a
    machine-specific layout asks this first."""
    from megzoo.inference import layout_verdict

    verdict = layout_verdict(layout)
    if not verdict["ok"]:
        pytest.skip(f"the {layout} layout fails its probe on this machine: {verdict['reason']}")


# --- a run that never ends is a run that lands nothing -------------------------------------------
_stack_file = None


def pytest_configure(config):
    """SIGUSR1 dumps every thread's Python stack (C-level, so it works while a test is blocked in
    C holding the GIL): ``.ci/run``'s watchdog sends it before it kills a run, and prints the file
    ``$MEGZOO_CURRENT_TEST_FILE.stacks`` it goes to (pytest captures file descriptor 2 meanwhile)."""
    import faulthandler
    import os
    import signal
    import sys

    global _stack_file
    path = os.environ.get("MEGZOO_CURRENT_TEST_FILE")
    _stack_file = open(path + ".stacks", "w") if path else sys.__stderr__
    faulthandler.register(signal.SIGUSR1, file=_stack_file, all_threads=True)


def pytest_runtest_logstart(nodeid, location):
    """Write the test that is starting to ``$MEGZOO_CURRENT_TEST_FILE`` (set by ``.ci/run``), so
    the watchdog can name it."""
    import os

    path = os.environ.get("MEGZOO_CURRENT_TEST_FILE")
    if path:
        with open(path, "w", encoding="utf-8") as f:
            f.write(nodeid + "\n")


# --- a tiny image folder for training runs ------------------------------------------------------
SHAPE_CLASSES = ("circle", "hbar", "vbar")


def _draw(kind: str, rng, size=16):
    import cv2
    import numpy as np

    image = np.full((size, size), 30, np.uint8)
    c, r = size // 2 + rng.randint(-2, 3), size // 2 + rng.randint(-2, 3)
    if kind == "circle":
        cv2.circle(image, (c, r), size // 4, 230, 2)
    elif kind == "hbar":
        cv2.line(image, (2, r), (size - 3, r), 230, 2)
    else:
        cv2.line(image, (c, 2), (c, size - 3), 230, 2)
    noisy = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
    return cv2.cvtColor(noisy, cv2.COLOR_GRAY2BGR)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """train/ (10 per class) and val/ (4 per class) folders of 16x16 shapes (:data:`SHAPE_CLASSES`)."""
    import os

    import cv2
    import numpy as np

    root = tmp_path_factory.mktemp("shapes")
    rng = np.random.RandomState(0)
    for split, n in (("train", 10), ("val", 4)):
        for kind in SHAPE_CLASSES:
            os.makedirs(root / split / kind)
            for i in range(n):
                cv2.imwrite(str(root / split / kind / f"{i:02d}.png"), _draw(kind, rng))
    return str(root)
