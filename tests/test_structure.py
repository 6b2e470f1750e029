"""The package's structure: import arrows point one way, each module stays one concern.

Layers, lowest first (a module may import its own layer and the ones below, never above):

0. host helpers: ``_version``, ``host``, ``device``, ``layers``, ``init``, ``images``, ``metrics``, ``data``,
   ``summary``;
1. ``weights`` (catalogue, downloads, safe reading, generic loading: no model knowledge);
2. ``models`` and ``registry`` (families own their checkpoint conversions);
3. the library: ``inference``, ``transforms``, ``predict``, ``evaluate``, ``train``, ``benchmark``,
   ``bench_worker``, ``model_source``, ``quantization``;
4. ``cli``.

Every import counts, at the top of a module or inside a function: a lazy import that points up
is a cycle all the same. Two modules have a stricter contract, because they are loaded alone by
path (a deployment process, a benchmark subprocess, the PyTorch side of the benchmark): the Lite
runtime imports no megzoo module at all, and ``bench_worker`` none at its top level.
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "megzoo"

LAYERS = {
    "_version": 0, "host": 0, "device": 0, "layers": 0, "init": 0, "images": 0, "metrics": 0, "data": 0, "summary": 0,
    "weights": 1,
    "models": 2, "registry": 2,
    "inference": 3, "transforms": 3, "predict": 3, "evaluate": 3, "train": 3, "benchmark": 3, "bench_worker": 3,
    "model_source": 3, "quantization": 3, "cleaning": 3, "augment": 3,
    "cli": 4,
}
MAX_LINES = 600


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        yield path, parts


def _imports(path: Path, parts, top_level_only: bool = False):
    """(line, imported megzoo module parts) for every import of a megzoo module in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else ast.walk(tree)
    package = parts[:-1]  # the package a relative import starts from (for __init__, its own)
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package)[: len(package) - (node.level - 1)] if node.level > 1 else list(package)
                target = base + (node.module.split(".") if node.module else [])
                names = [target + [a.name] for a in node.names] if not node.module else [target]
                for name in names:
                    if not node.module and len(name) == 1 and name[0] not in LAYERS:
                        name = []  # ``from .. import __version__``: a name of the package itself
                    yield node.lineno, tuple(name)
            elif node.module and node.module.split(".")[0] == "megzoo":
                yield node.lineno, tuple(node.module.split(".")[1:])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "megzoo":
                    yield node.lineno, tuple(alias.name.split(".")[1:])


def test_every_module_has_a_layer():
    missing = sorted({parts[0] for _, parts in _modules()
                      if parts[0] not in LAYERS and parts not in (("__init__",), ("__main__",))})
    assert not missing, f"give these a layer in LAYERS: {missing}"


def test_imports_point_down():
    upward = []
    for path, parts in _modules():
        if parts in (("__init__",), ("__main__",)):
            continue  # the package front door re-exports everything
        mine = LAYERS[parts[0]]
        for line, target in _imports(path, parts):
            if not target:
                upward.append(f"{'/'.join(parts)}.py:{line} imports the megzoo package itself")
                continue
            theirs = LAYERS.get(target[0])
            if theirs is not None and theirs > mine:
                upward.append(f"{'/'.join(parts)}.py:{line} ({parts[0]}, layer {mine}) imports "
                              f"{'.'.join(target)} (layer {theirs})")
    assert not upward, "imports pointing up:\n" + "\n".join(upward)


def test_weights_know_no_model():
    offenders = [f"{'/'.join(parts)}.py:{line} imports {'.'.join(target)}"
                 for path, parts in _modules() if parts[0] == "weights"
                 for line, target in _imports(path, parts) if target and target[0] in ("models", "registry")]
    assert not offenders, offenders


@pytest.mark.parametrize("module, top_level_only", [(("inference", "lite"), False), (("inference", "ort"), False),
                                                     (("host",), False), (("bench_worker",), True)])
def test_standalone_modules_import_no_megzoo_module(module, top_level_only):
    path = PACKAGE.joinpath(*module).with_suffix(".py")
    found = [f"line {line}: {'.'.join(target) or 'megzoo'}"
             for line, target in _imports(path, module, top_level_only=top_level_only)]
    assert not found, f"{path.name} must load alone, but imports: {found}"


@pytest.mark.parametrize("module, runner", [("lite", "LiteRunner"), ("ort", "OrtRunner")])
def test_runtime_loads_alone_by_path(tmp_path, module, runner):
    """The contract in practice: a fresh interpreter loads megzoo/inference/lite.py (or ort.py)
    by path and neither the megzoo package nor MegEngine's Python runtime gets imported."""
    import subprocess
    import sys

    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('alone', {str(PACKAGE / 'inference' / f'{module}.py')!r})\n"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            "print(sorted(n for n in sys.modules if n == 'megzoo' or n.startswith(('megzoo.', 'megengine'))))\n"
            f"print(m.{runner}.__name__)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:2] == ["[]", runner]


def test_import_megzoo_leaves_onnx_and_numba_out():
    """``onnx`` and ``onnxruntime`` are imported only when an ONNX path runs, ``numba`` only when
    CPU training runs its host kernels."""
    import subprocess
    import sys

    code = "import sys, megzoo\nprint(sorted(n for n in ('onnx', 'onnxruntime', 'numba') if n in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_no_module_grows_past_the_limit():
    long = {"/".join(parts) + ".py": n for path, parts in _modules()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"split these by concern (over {MAX_LINES} lines): {long}"
