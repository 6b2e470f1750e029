"""Fixtures shared by the test modules.

* ``shared_dir``: the reference material at ``../shared/`` next to the repository (present in CI).
* ``anchor_layout(name)``: a reference checkpoint layout, ``{"num_params": int,
  "state_dict": {key: (shape tuple, dtype name)}}``.
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
