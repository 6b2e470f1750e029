"""megzoo.compile / export / load and the ``megzoo export`` / ``megzoo benchmark`` commands.

Small inputs (32-64 px), narrow models and few iterations keep this fast; nothing here asserts on
timings. Algorithm profiling is exercised on a tiny network so it takes seconds."""
import json
import os
import subprocess
import sys
from pathlib import Path

import megengine
import megengine.module as M
import numpy as np
import pytest

import megzoo
from megzoo.inference import ParityError, check_parity, compile, default_threads, export, load

from conftest import require_layout_or_skip
from megzoo.models.vgg import VGG

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _megzoo_home(tmp_path, monkeypatch):
    """Every test gets its own empty $MEGZOO_HOME (the algorithm cache lives there)."""
    monkeypatch.setenv("MEGZOO_HOME", str(tmp_path / "home"))


def _rel_err(got, ref):
    return float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))


def _eager(model, x):
    return model(megengine.tensor(x)).numpy()


def _randomise_bn(model, seed=0):
    """Non-trivial BatchNorm statistics, so folding BN into the convolutions is really tested."""
    rng = np.random.RandomState(seed)
    for m in model.modules():
        if isinstance(m, M.BatchNorm2d):
            c = m.num_features
            m.running_mean[...] = megengine.tensor(rng.uniform(-0.2, 0.2, (1, c, 1, 1)).astype("float32"))
            m.running_var[...] = megengine.tensor(rng.uniform(0.5, 2.0, (1, c, 1, 1)).astype("float32"))
            m.weight[...] = megengine.tensor(rng.uniform(0.5, 1.5, (1, c, 1, 1)).astype("float32"))
            m.bias[...] = megengine.tensor(rng.uniform(-0.2, 0.2, (1, c, 1, 1)).astype("float32"))
    return model


#: a Conv-BN-ReLU, global pool, Linear network that profiles in seconds (source shared with a subprocess)
TINY_SRC = """
import megengine.functional as F
import megengine.module as M

class Tiny(M.Module):
    def __init__(self, num_classes=5):
        super().__init__()
        self.conv = M.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = M.BatchNorm2d(8)
        self.fc = M.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(F.mean(F.relu(self.bn(self.conv(x))), axis=(2, 3)))
"""
_namespace: dict = {}
exec(TINY_SRC, _namespace)
Tiny = _namespace["Tiny"]


@pytest.fixture(scope="module")
def resnet18():
    model = _randomise_bn(megzoo.resnet18())
    model.eval()
    return model


@pytest.fixture(scope="module")
def narrow_vgg():
    """VGG-11 layout (AdaptiveAvgPool2d(7), flatten, 3 Linear) with narrow convolutions."""
    model = VGG((1, 1, 2, 2, 2), widths=(8, 16, 16, 32, 32), num_classes=10, norm_layer="bn")
    model.head.classifier[0] = M.Linear(32 * 49, 64)
    model.head.classifier[3] = M.Linear(64, 64)
    model.head.classifier[6] = M.Linear(64, 10)
    model.eval()
    return _randomise_bn(model, seed=1)


# --- exactness -------------------------------------------------------------------------------
def test_resnet18_compiled_matches_eager(resnet18):
    x = np.random.RandomState(0).standard_normal((2, 3, 64, 64)).astype("float32")
    compiled = compile(resnet18, input_shape=x.shape, algo="heuristic")
    out = compiled(x)
    assert isinstance(out, np.ndarray) and out.shape == (2, 1000) and out.dtype == np.float32
    assert _rel_err(out, _eager(resnet18, x)) < 1e-4
    assert resnet18.training is False


def test_vgg_compiled_matches_eager_and_restores_train_mode(narrow_vgg):
    x = np.random.RandomState(1).standard_normal((1, 3, 64, 64)).astype("float32")
    narrow_vgg.train()
    try:
        compiled = compile(narrow_vgg, input_shape=x.shape, algo="heuristic")
        assert narrow_vgg.training  # compile traced in eval mode and put train mode back
    finally:
        narrow_vgg.eval()
    assert _rel_err(compiled(x), _eager(narrow_vgg, x)) < 1e-4
    # a spatial size that is not a multiple of 7 (the exact adaptive pooling matmul path)
    y = np.random.RandomState(2).standard_normal((2, 3, 50, 50)).astype("float32")
    assert _rel_err(compiled(y), _eager(narrow_vgg, y)) < 1e-4


def test_accepts_megengine_tensor_and_lazy_shape(resnet18):
    compiled = compile(resnet18, algo="heuristic")  # compiled on the first call
    assert compiled.cached_shapes == []
    x = np.random.RandomState(3).standard_normal((1, 3, 32, 32)).astype("float32")
    out = compiled(megengine.tensor(x))
    assert compiled.input_shape == (1, 3, 32, 32)
    assert _rel_err(out, _eager(resnet18, x)) < 1e-4


@pytest.mark.parametrize("layout", ["nchw", "nchw88"])
def test_layouts_match_eager_for_backbone_outputs(layout):
    """A features_only ResNet returns 5 maps; they come back in NCHW whatever the internal layout."""
    require_layout_or_skip(layout)
    model = _randomise_bn(megzoo.resnet18(features_only=True, out_indices=(1, 3)), seed=3)
    model.eval()
    x = np.random.RandomState(9).standard_normal((2, 3, 64, 64)).astype("float32")
    compiled = compile(model, input_shape=x.shape, layout=layout, algo="heuristic")
    assert compiled.layout == layout
    outs = compiled(x)
    refs = [t.numpy() for t in model(megengine.tensor(x))]
    assert isinstance(outs, list) and [o.shape for o in outs] == [r.shape for r in refs]
    for out, ref in zip(outs, refs):
        assert _rel_err(out, ref) < 1e-4


# --- batch sizes and the shape cache -----------------------------------------------------------
def test_dynamic_batch_reuses_one_graph(narrow_vgg):
    compiled = compile(narrow_vgg, input_shape=(2, 3, 64, 64), algo="heuristic")
    rng = np.random.RandomState(4)
    for n in (1, 5, 2):
        x = rng.standard_normal((n, 3, 64, 64)).astype("float32")
        out = compiled(x)
        assert out.shape == (n, 10)
        assert _rel_err(out, _eager(narrow_vgg, x)) < 1e-4
    assert compiled.cached_shapes == [(3, 64, 64)]
    assert len(compiled.compile_log) == 1


def test_shape_cache_is_bounded_lru():
    model = Tiny()
    model.eval()
    compiled = compile(model, algo="heuristic", max_shapes=2)
    rng = np.random.RandomState(5)
    for side in (16, 24, 16, 32):
        x = rng.standard_normal((1, 3, side, side)).astype("float32")
        assert _rel_err(compiled(x), _eager(model, x)) < 1e-4
    assert compiled.cached_shapes == [(3, 16, 16), (3, 32, 32)]  # 24 least recently used, dropped
    assert len(compiled.compile_log) == 3


def test_static_batch_compiles_each_shape():
    model = Tiny()
    model.eval()
    compiled = compile(model, input_shape=(1, 3, 16, 16), algo="heuristic", dynamic_batch=False)
    compiled(np.zeros((3, 3, 16, 16), "float32"))
    assert compiled.cached_shapes == [(1, 3, 16, 16), (3, 3, 16, 16)]


def test_split_batch_runs_shares_on_single_thread_networks(narrow_vgg):
    """threads=2: a batch of N >= 2 is cut into 2 contiguous shares run at once by two
    single-thread networks (weights shared); a batch of 1 uses one 2-thread network. Both equal
    eager, and the unsplit graph, to float rounding; each kind is loaded only when first used."""
    split = compile(narrow_vgg, input_shape=(5, 3, 64, 64), threads=2, algo="heuristic")
    runner = split._runners[(3, 64, 64)]
    assert runner._main is None and len(runner._workers) == 2  # batch 5 needed only the workers
    assert split.compile_log[0].load_s > 0  # the networks are loaded inside the compile's "load" step
    whole = compile(narrow_vgg, threads=2, algo="heuristic", split_batch=False)
    rng = np.random.RandomState(8)
    for n in (5, 1, 2, 3):
        x = rng.standard_normal((n, 3, 64, 64)).astype("float32")
        out = split(x)
        assert out.shape == (n, 10)
        assert _rel_err(out, _eager(narrow_vgg, x)) < 1e-4
        assert _rel_err(out, whole(x)) < 1e-4
    assert runner._main is not None  # the batch of 1
    assert whole._runners[(3, 64, 64)]._workers == []
    assert compile(narrow_vgg, (3, 3, 64, 64), threads=1, algo="heuristic")._runners[(3, 64, 64)]._workers == []


# --- threads -------------------------------------------------------------------------------------
def test_thread_count_defaults_to_affinity(monkeypatch):
    model = Tiny()
    model.eval()
    compiled = compile(model, input_shape=(1, 3, 16, 16), algo="heuristic")
    assert compiled.threads == len(os.sched_getaffinity(0)) == default_threads()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert default_threads() == 1
    assert compile(model, algo="heuristic").threads == 1
    with pytest.raises(ValueError, match="threads"):
        compile(model, threads=0)


# --- the persistent algorithm cache --------------------------------------------------------------------
def test_algo_cache_persisted_and_reused(tmp_path):
    model = Tiny()
    model.eval()
    # a shape no other test compiles: MegEngine keeps, per process, the kernel chosen for a shape
    # with algo="heuristic", and a later profiling compile of that shape on the same kind of CPU
    # comp node uses it instead of measuring (nothing new for the cache file)
    x = np.random.RandomState(6).standard_normal((1, 3, 20, 20)).astype("float32")
    compiled = compile(model, input_shape=x.shape, threads=1, algo="profile", backend="lite")
    cache = compiled.algo_cache_file
    assert cache.parent == tmp_path / "home" / "algo_cache"
    assert cache.is_file() and cache.stat().st_size > 0
    assert b"ConvBias" in cache.read_bytes()  # the profiled convolution's algorithm ranking
    assert compiled.compile_log[0].algo_cache_existed is False and compiled.compile_log[0].algo_cache_hit is False
    assert _rel_err(compiled(x), _eager(model, x)) < 1e-4
    before = cache.stat().st_size

    # a fresh process reuses the file: it finds it, and has nothing new to add to it
    code = TINY_SRC + (
        "\nimport megzoo.inference as I\nm = Tiny()\nm.eval()\n"
        "c = I.compile(m, (1, 3, 20, 20), threads=1, algo='profile', backend='lite')\n"
        "print('EXISTED', c.compile_log[0].algo_cache_existed, c.compile_log[0].algo_cache_hit, c.algo_cache_file)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ), cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"EXISTED True True {cache}" in proc.stdout
    assert cache.stat().st_size == before  # rewritten with the same entries


def test_heuristic_has_no_cache():
    model = Tiny()
    model.eval()
    compiled = compile(model, input_shape=(1, 3, 16, 16), algo="heuristic")
    assert compiled.algo_cache_file is None
    with pytest.raises(ValueError, match="algo"):
        compile(model, algo="fastest")


# --- export, load and the parity check -----------------------------------------------------------------
def test_export_writes_mge_and_metadata_and_loads(tmp_path, narrow_vgg):
    path = tmp_path / "out" / "vgg.mge"
    report = export(narrow_vgg, path, (1, 3, 64, 64), metadata={"class_names": [str(i) for i in range(10)]})
    assert path.is_file() and path.stat().st_size > 0
    meta = json.loads((tmp_path / "out" / "vgg.mge.json").read_text())
    for key in ("input_name", "input_shape", "mean", "std", "color_order", "class_names", "output_names",
                "megengine_version", "parity", "fused"):
        assert key in meta, key
    assert meta["input_shape"] == [1, 3, 64, 64] and meta["color_order"] == "BGR" and meta["fused"] is True
    assert set(report.parity["inputs"]) == {"random normal batch", "generated test image"}
    assert meta["parity"]["max_rel"] < 1e-4

    loaded = load(path, algo="heuristic")
    assert loaded.metadata["class_names"][3] == "3"
    x = np.random.RandomState(7).standard_normal((3, 3, 64, 64)).astype("float32")
    assert _rel_err(loaded(x), _eager(narrow_vgg, x)) < 1e-4  # batch 3 from a graph traced at 1
    with pytest.raises(ValueError, match="this .mge was made for inputs"):
        loaded(np.zeros((1, 3, 32, 32), "float32"))


def test_export_no_fuse_also_matches(tmp_path):
    model = _randomise_bn(Tiny())
    model.eval()
    report = export(model, tmp_path / "tiny.mge", (2, 3, 16, 16), fuse=False)
    assert report.metadata["fused"] is False and report.parity["max_rel"] < 1e-4


def test_parity_check_fails_loudly(tmp_path, resnet18):
    compiled = compile(resnet18, input_shape=(1, 3, 32, 32), algo="heuristic")
    perturbed = megzoo.resnet18()
    perturbed.load_state_dict(resnet18.state_dict())
    perturbed.fc.bias[...] = perturbed.fc.bias + 0.01
    perturbed.eval()
    x = np.random.RandomState(8).standard_normal((1, 3, 32, 32)).astype("float32")
    with pytest.raises(ParityError) as info:
        check_parity(perturbed, compiled, {"random batch": x}, tolerance=0.0)
    message = str(info.value)
    assert "parity check failed" in message and "above the tolerance 0" in message
    assert "random batch: max |exported - eager|" in message and "relative" in message
    # the unperturbed model passes the same check at the documented tolerance
    assert check_parity(resnet18, compiled, {"random batch": x})["max_rel"] < 1e-4
    assert check_parity(resnet18, compiled, {"tensor": megengine.tensor(x)})["max_rel"] < 1e-4  # Tensors too


def test_cli_export_fails_with_impossible_tolerance(tmp_path):
    from megzoo.cli import main

    out = tmp_path / "r18.mge"
    ok = main(["export", "resnet18", "-o", str(out), "--input-shape", "1,3,32,32"])
    assert ok == 0 and out.is_file() and (tmp_path / "r18.mge.json").is_file()
    meta = json.loads((tmp_path / "r18.mge.json").read_text())
    assert meta["model"] == "resnet18" and len(meta["class_names"]) == 1000

    bad = tmp_path / "bad.mge"
    proc = subprocess.run([sys.executable, "-m", "megzoo.cli", "export", "resnet18", "-o", str(bad),
                           "--input-shape", "1,3,32,32", "--tolerance", "0"],
                          capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 1
    assert "parity check failed" in proc.stderr and "above the tolerance 0" in proc.stderr
    assert not bad.exists() and not (tmp_path / "bad.mge.json").exists()


# --- megzoo benchmark ------------------------------------------------------------------------------------
def test_cli_benchmark_json_keys():
    from megzoo.benchmark import RESULT_KEYS

    proc = subprocess.run([sys.executable, "-m", "megzoo.cli", "benchmark", "--models", "resnet18", "--batch", "1",
                           "--json", "--input-size", "32", "--repeats", "2", "--min-repeats", "1", "--warmup", "0",
                           "--time-budget", "0", "--algo", "heuristic",
                           "--modes", "eager,optimised,onnxruntime,ort_alone,onnxruntime_untamed"],
                          capture_output=True, text=True, timeout=600, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["machine"]["isa"] == f"measured: {report['machine']['cores']} threads x 12 independent " \
        f"{32 * report['machine']['fma_loop']['lanes']}-bit FMA chains, best of 5"
    assert {"cpu", "cores", "clock_ghz", "peak_gflops", "estimated_peak_gflops"} <= set(report["machine"])
    assert report["machine"]["peak_gflops"] == report["machine"]["fma_loop"]["gflops"]  # measured, not assumed
    rows = report["results"]
    # "optimised", the old name of the lite mode, is still taken
    assert [r["mode"] for r in rows] == ["eager", "lite", "onnxruntime", "ort_alone", "onnxruntime_untamed"]
    for row in rows:
        assert set(row) == set(RESULT_KEYS)
        assert row["error"] is None and row["model"] == "resnet18" and row["batch"] == 1
        assert row["images_per_s"] > 0 and row["latency_p90_ms"] >= row["latency_p50_ms"] > 0
        assert row["peak_rss_mib"] > 0 and 0 < row["peak_fraction"] < 1
        assert row["gmacs"] == pytest.approx(1.814 * (32 / 224) ** 2, rel=1e-2)
    assert report["compile"][0]["compile_s"] > 0


def test_benchmark_int8_modes_quantize_compile_and_run():
    """onnxruntime_int8 and lite_int8: quantized on random batches, compiled, timed; optional modes."""
    from megzoo.benchmark import DEFAULT_MODES, MODES, format_table, run_benchmark

    int8_modes = {"onnxruntime_int8", "lite_int8"}
    assert int8_modes <= set(MODES) and not int8_modes & set(DEFAULT_MODES)
    report = run_benchmark(["resnet18"], [2], threads=2, input_size=32, modes=("onnxruntime_int8", "lite_int8"),
                           repeats=2, min_repeats=1, warmup=0, time_budget=0, algo="heuristic", peak_gflops=100.0,
                           measure_peak=False, timeout=300)
    rows = report["results"]
    assert [r["mode"] for r in rows] == ["onnxruntime_int8", "lite_int8"]
    for row in rows:
        assert row["error"] is None and row["batch"] == 2 and row["threads"] == 2
        assert row["images_per_s"] > 0 and row["latency_p50_ms"] > 0 and row["peak_rss_mib"] > 0
    assert [(q["mode"], q["precision"]) for q in report["int8"]] == [("onnxruntime_int8", "int8"),
                                                                     ("lite_int8", "int8")]
    assert all(q["quantize_s"] > 0 and q["compile_s"] > 0 and q["error"] is None for q in report["int8"])
    table = format_table(report)
    assert "onnxruntime_int8" in table and "lite_int8" in table and "quantize" in table


def test_profile_ops_script_groups_operators_by_kind_and_names_their_kernels(tmp_path):
    """benchmarks/profile_ops.py: ResNet-18's convolutions land in the right groups (counts from
    the architecture), each group names the kernel MegEngine chose, and both thread counts' kernel
    choices are saved in megzoo's algorithm cache."""
    env = dict(os.environ, MEGZOO_HOME=str(tmp_path / "home"))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "profile_ops.py"), "--model", "resnet18",
                           "--input-size", "32", "--threads", "2", "--rounds", "1"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {}
    for line in proc.stdout.splitlines():
        if line.startswith(("stem", "conv ")):
            name, rest = line[:16].strip(), line[16:].split()
            rows[name] = rest
    # stem 7x7/2; 3x3/1: 4 in stage 1 + 3 in each later stage; 3x3/2 and 1x1/2: one per later stage
    assert {name: int(rest[0]) for name, rest in rows.items()} == {
        "stem": 1, "conv 3x3 s1": 13, "conv 3x3 s2": 3, "conv 1x1 s2": 3}
    for name, rest in rows.items():
        assert len(rest) >= 7 and rest[6][0].isalpha(), f"no kernel named for {name}: {rest}"
    assert "whole network (median of 10): 1 thread" in proc.stdout
    cache = sorted(p.name for p in (tmp_path / "home" / "algo_cache").glob("lite-*.cache"))
    assert [name.rsplit("-", 1)[1] for name in cache] == ["t1.cache", "t2.cache"]


# --- micro-batches: one kernel profile for every batch size -----------------------------------------
def test_micro_batch_one_profile_serves_every_batch_size(tmp_path):
    """With NCHW and profiling, "auto" runs each network one image at a time: a new batch size
    adds nothing to the profile cache, and the outputs equal eager and whole-share runs."""
    model = _randomise_bn(Tiny())
    model.eval()
    compiled = compile(model, input_shape=(4, 3, 24, 24), threads=2, layout="nchw", algo="profile")
    assert compiled.micro_batch == 1
    cache = compiled.split_algo_cache_file  # batches >= 2 run on the split networks, with their own cache
    assert cache.name.endswith("-t1-split.cache") and not compiled.algo_cache_file.exists()
    size = cache.stat().st_size
    whole = compile(model, threads=2, layout="nchw", algo="heuristic", micro_batch=None)
    assert whole.micro_batch is None
    rng = np.random.RandomState(11)
    for n in (6, 3, 1):
        x = rng.standard_normal((n, 3, 24, 24)).astype("float32")
        out = compiled(x)
        assert out.shape == (n, 5)
        assert _rel_err(out, _eager(model, x)) < 1e-4 and _rel_err(out, whole(x)) < 1e-4
        if n > 1:  # the single-thread networks: their one-image profile already covers batches 6 and 3
            assert cache.stat().st_size == size
    assert compiled._runners[(3, 24, 24)].batches_seen == {4, 6, 3, 1}
    # the batch of 1 ran on the 2-thread network, profiled into its own file; the split one is untouched
    assert compiled.algo_cache_file.is_file() and cache.stat().st_size == size
    with pytest.raises(ValueError, match="micro_batch must be 'auto', None or an int >= 1, got 0"):
        compile(model, micro_batch=0)
    assert compile(model, (2, 3, 24, 24), layout="nchw", algo="heuristic").micro_batch is None


def test_a_static_batch_graph_runs_whole_batches():
    """dynamic_batch=False is for graphs that bake their batch size in: such a batch is neither
    split over networks nor cut into micro-batches, whatever the layout."""
    class Baked(M.Module):
        def __init__(self):
            super().__init__()
            self.conv = M.Conv2d(3, 4, 3, padding=1)
            self.fc = M.Linear(4 * 8 * 8, 3)

        def forward(self, x):
            return self.fc(self.conv(x).reshape(4, -1))  # batch 4, baked in

    model = Baked()
    model.eval()
    compiled = compile(model, (4, 3, 8, 8), threads=2, layout="nchw", algo="profile", dynamic_batch=False)
    assert compiled.micro_batch is None and compiled.split_batch is False
    x = np.random.RandomState(12).standard_normal((4, 3, 8, 8)).astype("float32")
    assert _rel_err(compiled(x), _eager(model, x)) < 1e-4
