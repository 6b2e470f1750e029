"""``megzoo export`` (a ``.mge`` for MegEngine Lite, with metadata and a parity check) and
``megzoo benchmark`` (eager vs optimised inference: images/s, latency, peak memory, % of peak).

Every benchmark configuration runs in a fresh subprocess (``python -m megzoo.cli.deploy
--worker JSON``) so peak-memory figures do not mix."""
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

#: keys of one row of ``megzoo benchmark --json`` (documented in docs/performance.md)
RESULT_KEYS = ("model", "batch", "input_size", "threads", "mode", "images_per_s", "latency_p50_ms",
               "latency_p90_ms", "peak_rss_mib", "gmacs", "gflops", "peak_fraction", "repeats", "error")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="write a .mge for MegEngine Lite (+ .mge.json metadata), checked against eager",
        description="Trace a model, optimise the graph (BN folding, conv+bias+ReLU fusion) and write a .mge "
                    "for MegEngine Lite, with its metadata in OUTPUT.json. The written file is loaded back and "
                    "compared with eager MegEngine on a random batch and a real image; the export fails above "
                    "--tolerance.")
    p.add_argument("model", metavar="NAME|CHECKPOINT",
                   help="registered model name (e.g. resnet50), or a checkpoint file: a pickled module, or "
                        "a state dict with --arch")
    p.add_argument("-o", "--output", required=True, metavar="FILE.mge", help="output file")
    p.add_argument("--weights", metavar="TAG|FILE", default=None,
                   help="weights for NAME: a tag (megzoo info NAME lists them), 'default', or a checkpoint path "
                        "(default: none, random initialisation)")
    p.add_argument("--arch", metavar="NAME", help="architecture of a state-dict CHECKPOINT (default: from its file name)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier outputs (default: the model's)")
    p.add_argument("--input-shape", default="1,3,224,224", metavar="N,C,H,W",
                   help="input shape the graph is traced with (default 1,3,224,224); the batch stays dynamic")
    p.add_argument("--fuse", dest="fuse", action="store_true", default=True,
                   help="apply inference graph optimisations: BN folding, conv+bias+ReLU fusion (default)")
    p.add_argument("--no-fuse", dest="fuse", action="store_false", help="dump the graph as traced")
    p.add_argument("--layout", choices=("auto", "nchw", "nchw88", "nchw44"), default="auto",
                   help="internal convolution layout: auto (nchw88 on x86 with AVX2, else nchw), nchw (portable), "
                        "nchw88 (x86), nchw44 (ARM); input and output stay NCHW")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="parity tolerance: max |exported - eager| / max |eager| (default 1e-4)")
    p.add_argument("--image", metavar="FILE", default=None,
                   help="real image for the parity check (default: docs/sample.jpg if present, else a generated one)")
    p.add_argument("--no-check", dest="check", action="store_false", help="skip the parity check")
    p.add_argument("--threads", type=int, default=None, help="threads for the parity run (default: all usable CPUs)")
    p.set_defaults(handler=cmd_export)

    p = subparsers.add_parser(
        "benchmark", help="images/s, latency, peak memory: eager vs optimised inference",
        description="Measure eager MegEngine and megzoo's optimised path (traced, fused graph run by MegEngine "
                    "Lite with profiled kernels) side by side. Each configuration runs in a fresh process. "
                    "Figures are unreliable while other work loads the machine (check `uptime`).")
    p.add_argument("--models", default="resnet18,resnet50,vgg16", help="comma-separated model names")
    p.add_argument("--batch", default="1,16", help="comma-separated batch sizes (default 1,16)")
    p.add_argument("--threads", type=int, default=None, help="threads of the optimised path (default: all usable CPUs)")
    p.add_argument("--input-size", type=int, default=224, metavar="PX")
    p.add_argument("--modes", default="eager,optimised", help="which paths to run (default eager,optimised)")
    p.add_argument("--repeats", type=int, default=20, help="timed runs at most (median reported; default 20)")
    p.add_argument("--min-repeats", type=int, default=3, help="timed runs at least (default 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    p.add_argument("--time-budget", type=float, default=20.0, metavar="S",
                   help="stop adding timed runs past this many seconds per configuration (default 20)")
    p.add_argument("--algo", choices=("profile", "heuristic"), default="profile",
                   help="kernel choice of the optimised path (default profile, cached in $MEGZOO_HOME/algo_cache)")
    p.add_argument("--layout", choices=("auto", "nchw", "nchw88"), default="auto",
                   help="internal convolution layout of the optimised path (default auto: nchw88 on x86 with AVX2)")
    p.add_argument("--cold", action="store_true",
                   help="also measure the first compile with an empty algorithm cache (slow)")
    p.add_argument("--peak-gflops", type=float, default=None,
                   help="fp32 peak of the machine in GFLOP/s (default: cores x FLOP/cycle x clock, printed)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds allowed per configuration (default 1800)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(handler=cmd_benchmark)


# ------------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------------
def _parse_shape(text: str) -> tuple:
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"--input-shape must be N,C,H,W positive ints, got {text!r}")
    return shape


def _int_list(text: str, what: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ValueError(f"{what} must be comma-separated positive ints, got {text!r}")
    return values


def _guess_arch(path: Path) -> Optional[str]:
    from ..registry import list_models

    stem = path.name.lower()
    matches = [n for n in list_models() if stem.startswith(n)]
    return max(matches, key=len) if matches else None


def _build_for_export(args):
    """(model, metadata) for the export command."""
    import megzoo
    from ..registry import get_model_entry, list_models

    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    source = args.model
    weights_obj = None
    weights_label = args.weights
    if source in list_models():
        pretrained = False
        if args.weights is not None:
            pretrained = True if args.weights in ("default", "true", "True") else args.weights
        model = megzoo.get_model(source, pretrained=pretrained, **kwargs)
        name = source
        if args.weights is None:
            print(f"note: exporting {name} with random weights (pass --weights TAG|FILE for trained ones)",
                  file=sys.stderr)
        elif not Path(args.weights).expanduser().exists():
            try:
                tag = "" if pretrained is True else f".{args.weights}"
                weights_obj = megzoo.get_weights(f"{name}{tag}")
            except Exception:  # noqa: BLE001 - a URL or an alias the catalogue lacks: metadata defaults
                weights_obj = None
    else:
        path = Path(source).expanduser()
        if not path.exists():
            get_model_entry(source)  # unknown name -> UnknownModelError listing close names
        weights_label = str(path.resolve())
        import megengine
        import megengine.module as M

        loaded = None
        if path.suffix in (".pkl", ".mge_pkl") and args.arch is None:
            try:
                loaded = megengine.load(str(path))
            except Exception:  # noqa: BLE001 - not a pickle: treat as a weights file below
                loaded = None
        if isinstance(loaded, M.Module):
            model, name = loaded, getattr(loaded, "model_name", type(loaded).__name__)
        else:
            name = args.arch or _guess_arch(path)
            if name is None:
                raise ValueError(f"cannot tell the architecture of {path.name}: pass --arch NAME")
            model = megzoo.get_model(name, pretrained=str(path), **kwargs)
    model.eval()
    meta: Dict[str, object] = {"model": name, "weights": weights_label}
    num_classes = getattr(model, "num_classes", None)
    if weights_obj is not None:
        pre = weights_obj.preprocess
        meta.update(weights=weights_obj.name, color_order=pre.color_order, mean=list(pre.mean), std=list(pre.std),
                    resize_size=pre.resize_size, crop_size=pre.input_size, interpolation=pre.interpolation)
    if num_classes == 1000:
        from ..data import imagenet1k_categories

        meta["class_names"] = imagenet1k_categories()
    return model, meta


def _default_image() -> Optional[Path]:
    for candidate in (Path.cwd() / "docs" / "sample.jpg", Path(__file__).resolve().parents[2] / "docs" / "sample.jpg"):
        if candidate.is_file():
            return candidate
    return None


def cmd_export(args) -> int:
    from ..inference import ParityError, export

    shape = _parse_shape(args.input_shape)
    model, meta = _build_for_export(args)
    if shape[1] != getattr(model, "in_channels", shape[1]):
        raise ValueError(f"--input-shape has {shape[1]} channels but the model takes {model.in_channels}")
    image = Path(args.image) if args.image else _default_image()
    t0 = time.perf_counter()
    try:
        report = export(model, args.output, shape, fuse=args.fuse, layout=args.layout, metadata=meta, check=args.check,
                        tolerance=args.tolerance, image=image, threads=args.threads)
    except ParityError as exc:
        print(f"megzoo export: error: {exc}", file=sys.stderr)
        print(f"megzoo export: {args.output} not written", file=sys.stderr)
        return 1
    size = report.path.stat().st_size
    print(f"wrote {report.path} ({size / 2**20:.1f} MiB, {'fused' if args.fuse else 'not fused'}, "
          f"layout {report.metadata['layout']}, "
          f"input {_describe_input(report.metadata)}) and {report.metadata_path.name} "
          f"in {time.perf_counter() - t0:.1f} s")
    if report.parity:
        print(f"parity vs eager (tolerance {args.tolerance:g}, max |diff| / max |logit|):")
        for name, r in report.parity["inputs"].items():
            print(f"  {name:<28} max abs diff {r['max_abs']:.3g}  logit scale {r['scale']:.3g}  relative {r['rel']:.3g}  ok")
    else:
        print("parity check skipped (--no-check)")
    return 0


def _describe_input(meta) -> str:
    return f"{meta['input_name']} {'x'.join(str(v) for v in meta['input_shape'])} {meta['color_order']}"


# ------------------------------------------------------------------------------------------------
# benchmark
# ------------------------------------------------------------------------------------------------
def cpu_peak_gflops(threads: int) -> Dict[str, object]:
    """fp32 peak estimate: cores x FLOP/cycle x clock, with the assumptions spelled out.
    FLOP/cycle: 2 FMA pipes x vector lanes x 2 (AVX-512/AVX2 with FMA: 32 per core; AVX without
    FMA: 16; SSE: 8). Zen 4 runs AVX-512 on two 256-bit pipes, which is also 32."""
    flags, mhz, model = set(), 0.0, ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "flags" and not flags:
                    flags = set(value.split())
                elif key == "cpu MHz" and not mhz:
                    mhz = float(value)
                elif key == "model name" and not model:
                    model = value.strip()
    except OSError:
        pass
    try:
        max_khz = float(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text())
        mhz = max(mhz, max_khz / 1000)
    except (OSError, ValueError):
        pass
    if "fma" in flags and ("avx512f" in flags or "avx2" in flags):
        per_cycle, isa = 32, "AVX-512/AVX2 + FMA: 2 FMA units x 8 fp32 lanes x 2"
    elif "avx" in flags:
        per_cycle, isa = 16, "AVX without FMA: 2 units x 8 lanes"
    else:
        per_cycle, isa = 8, "SSE: 2 units x 4 lanes"
    ghz = mhz / 1000 if mhz else 3.0
    return {"cpu": model, "cores": threads, "flop_per_cycle": per_cycle, "clock_ghz": round(ghz, 3),
            "isa": isa + ("" if mhz else " (clock unknown, 3 GHz assumed)"),
            "peak_gflops": round(threads * per_cycle * ghz, 1)}


def _percentile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _vm_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
    except OSError:
        pass


def time_loop(fn, warmup: int, min_repeats: int, max_repeats: int, budget_s: float) -> List[float]:
    """Per-call seconds of ``fn()`` after ``warmup`` calls: at least ``min_repeats``, at most
    ``max_repeats``, adding runs while the total stays under ``budget_s``."""
    for _ in range(warmup):
        fn()
    times: List[float] = []
    start = time.perf_counter()
    while len(times) < max_repeats:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= min_repeats and time.perf_counter() - start > budget_s:
            break
    return times


def _worker(cfg: dict) -> dict:
    """One configuration, in this (fresh) process."""
    import numpy as np

    out = {"model": cfg["model"], "batch": cfg["batch"], "input_size": cfg["input_size"], "mode": cfg["mode"]}
    shape = (cfg["batch"], 3, cfg["input_size"], cfg["input_size"])
    x = np.random.RandomState(0).standard_normal(shape).astype(np.float32)
    mode = cfg["mode"]
    if mode == "eager":
        import megengine
        import megzoo

        model = megzoo.get_model(cfg["model"])
        model.eval()
        out["threads"] = 1

        def fn():
            model(megengine.tensor(x)).numpy()
    elif mode == "compile":
        import megzoo
        from ..inference import compile as compile_

        model = megzoo.get_model(cfg["model"])
        model.eval()
        kwargs = dict(threads=cfg["threads"], algo=cfg["algo"], cache_dir=cfg.get("cache_dir"),
                      layout=cfg.get("layout", "auto"), split_batch=cfg.get("split_batch", True))
        t0 = time.perf_counter()
        compiled = compile_(model, shape, **kwargs)
        out["compile_s"] = time.perf_counter() - t0
        info = compiled.compile_log[0]
        out.update(layout=compiled.layout, trace_dump_s=info.trace_dump_s, load_s=info.load_s, first_run_s=info.first_run_s,
                   algo_cache_existed=info.algo_cache_existed, algo_cache_hit=info.algo_cache_hit,
                   algo_cache_file=str(compiled.algo_cache_file))
        compiled.export(cfg["mge_path"], shape)
        return out
    elif mode == "optimised":
        # a deployment process: megzoo.inference loaded as a standalone file (no megzoo package, no
        # MegEngine Python runtime), running the exported .mge with MegEngine Lite
        import importlib.util

        spec = importlib.util.spec_from_file_location("megzoo_inference_standalone", cfg["inference_py"])
        standalone = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(standalone)
        compiled = standalone.load(cfg["mge_path"], threads=cfg["threads"], algo=cfg["algo"],
                                   cache_dir=cfg.get("cache_dir"), split_batch=cfg.get("split_batch", True))
        out["threads"] = compiled.threads
        out["megengine_imported"] = "megengine" in sys.modules

        def fn():
            compiled(x)
    else:
        raise ValueError(f"unknown mode {mode!r}")
    _reset_peak()
    times = time_loop(fn, cfg["warmup"], cfg["min_repeats"], cfg["repeats"], cfg["time_budget"])
    median = _percentile(times, 0.5)
    out.update(images_per_s=cfg["batch"] / median, latency_p50_ms=median * 1e3,
               latency_p90_ms=_percentile(times, 0.9) * 1e3, repeats=len(times),
               peak_rss_mib=_vm_kib("VmHWM") / 1024)
    return out


def _run_worker(cfg: dict, timeout: float) -> dict:
    env = dict(os.environ)
    env.setdefault("PYTHONWARNINGS", "ignore")
    if cfg.get("mode") == "optimised":  # run this file as a plain script: the megzoo package is not imported
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(cfg)]
    else:
        cmd = [sys.executable, "-m", "megzoo.cli.deploy", "--worker", json.dumps(cfg)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("@@RESULT@@"):
            return json.loads(line[len("@@RESULT@@"):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"worker exited with {proc.returncode}: {tail}"}


def run_benchmark(models: List[str], batches: List[int], *, threads: int, input_size: int = 224,
                  modes=("eager", "optimised"), repeats: int = 20, min_repeats: int = 3, warmup: int = 2,
                  time_budget: float = 20.0, algo: str = "profile", layout: str = "auto", cold: bool = False,
                  peak_gflops: Optional[float] = None, timeout: float = 1800, split_batch: bool = True,
                  log=None) -> dict:
    """Run the benchmark; returns ``{"machine": {...}, "results": [row, ...], "compile": [...]}``
    with rows of :data:`RESULT_KEYS`."""
    from ..registry import get_model_entry

    def say(msg):
        if log:
            log(msg)

    machine = cpu_peak_gflops(threads)
    if peak_gflops:
        machine["peak_gflops"] = peak_gflops
        machine["isa"] = "given with --peak-gflops"
    machine["load_average"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    results, compiles = [], []
    base = dict(input_size=input_size, threads=threads, algo=algo, layout=layout, repeats=repeats, min_repeats=min_repeats,
                warmup=warmup, time_budget=time_budget, split_batch=split_batch)
    with tempfile.TemporaryDirectory(prefix="megzoo-bench-") as tmp:
        for name in models:
            entry = get_model_entry(name)
            gmacs = entry.gmacs * (input_size / 224) ** 2  # conv MACs scale with the pixel count
            for batch in batches:
                cfg = dict(base, model=name, batch=batch)
                rows = []
                if "eager" in modes:
                    say(f"{name} batch {batch}: eager ...")
                    rows.append({**cfg, "mode": "eager", **_run_worker(dict(cfg, mode="eager"), timeout)})
                if "optimised" in modes:
                    mge_path = str(Path(tmp) / f"{name}-b{batch}.mge")
                    if cold:
                        cold_dir = str(Path(tmp) / f"cold-{name}-{batch}")
                        for label in ("first", "cached"):
                            say(f"{name} batch {batch}: compile ({label}, cache {cold_dir}) ...")
                            r = _run_worker(dict(cfg, mode="compile", mge_path=mge_path, cache_dir=cold_dir), timeout)
                            compiles.append({**r, "model": name, "batch": batch,
                                             "cache": "cached" if r.get("algo_cache_hit") else "first"})
                    say(f"{name} batch {batch}: compile ...")
                    r = _run_worker(dict(cfg, mode="compile", mge_path=mge_path), timeout)
                    compiles.append({**r, "model": name, "batch": batch,
                                     "cache": ("cached" if r.get("algo_cache_hit") else "first") if algo == "profile" else "none"})
                    if "error" in r:
                        rows.append({**cfg, "mode": "optimised", "error": r["error"]})
                    else:
                        say(f"{name} batch {batch}: optimised ...")
                        rows.append({**cfg, "mode": "optimised",
                                     **_run_worker(dict(cfg, mode="optimised", mge_path=mge_path,
                                                        inference_py=str(Path(__file__).resolve().parents[1] / "inference.py")),
                                                   timeout)})
                for row in rows:
                    row.setdefault("error", None)
                    row["gmacs"] = round(gmacs, 3)
                    ips = row.get("images_per_s")
                    if ips:
                        row["gflops"] = gmacs * 2 * ips
                        cores = row.get("threads") or threads
                        peak = machine["peak_gflops"] * cores / machine["cores"]
                        row["peak_fraction"] = row["gflops"] / peak
                    results.append({k: row.get(k) for k in RESULT_KEYS})
    return {"machine": machine, "results": results, "compile": compiles}


def format_table(report: dict) -> str:
    m = report["machine"]
    lines = [f"machine: {m['cpu'] or 'unknown CPU'}, {m['cores']} threads; fp32 peak assumed "
             f"{m['peak_gflops']} GFLOP/s = {m['cores']} cores x {m['flop_per_cycle']} FLOP/cycle x "
             f"{m['clock_ghz']} GHz ({m['isa']}); load average at start {m.get('load_average')}",
             "peak fraction = GMACs x 2 x images/s / peak of the threads used (eager uses 1 thread)",
             f"{'model':<10} {'batch':>5} {'mode':<10} {'thr':>3} {'img/s':>8} {'p50 ms':>9} {'p90 ms':>9} "
             f"{'peak MiB':>9} {'% peak':>7}"]
    for r in report["results"]:
        if r.get("error"):
            lines.append(f"{r['model']:<10} {r['batch']:>5} {r['mode']:<10} error: {r['error']}")
            continue
        lines.append(f"{r['model']:<10} {r['batch']:>5} {r['mode']:<10} {r['threads']:>3} {r['images_per_s']:>8.2f} "
                     f"{r['latency_p50_ms']:>9.1f} {r['latency_p90_ms']:>9.1f} {r['peak_rss_mib']:>9.0f} "
                     f"{100 * r['peak_fraction']:>6.1f}%")
    if report.get("compile"):
        lines.append("compile (trace + optimise + Lite load + first run incl. algorithm profiling):")
        for c in report["compile"]:
            if c.get("error"):
                lines.append(f"  {c['model']} batch {c['batch']}: error: {c['error']}")
            else:
                lines.append(f"  {c['model']:<10} batch {c['batch']:>3}  {c.get('layout', '?'):<6} {c['cache']:<6} algo cache: "
                             f"{c['compile_s']:.1f} s (trace+dump {c['trace_dump_s']:.1f}, load {c['load_s']:.1f}, "
                             f"first run {c['first_run_s']:.1f})")
    return "\n".join(lines)


def cmd_benchmark(args) -> int:
    from ..inference import default_threads
    from ..registry import get_model_entry

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for name in models:
        get_model_entry(name)
    batches = _int_list(args.batch, "--batch")
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    bad = set(modes) - {"eager", "optimised"}
    if bad or not modes:
        raise ValueError(f"--modes takes eager and/or optimised, got {args.modes!r}")
    threads = args.threads or default_threads()
    log = None if args.json else (lambda msg: print(msg, file=sys.stderr, flush=True))
    report = run_benchmark(models, batches, threads=threads, input_size=args.input_size, modes=modes,
                           repeats=args.repeats, min_repeats=args.min_repeats, warmup=args.warmup,
                           time_budget=args.time_budget, algo=args.algo, layout=args.layout, cold=args.cold,
                           peak_gflops=args.peak_gflops, timeout=args.timeout, log=log)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_table(report))
    return 1 if any(r.get("error") for r in report["results"]) else 0


def _worker_main(argv: List[str]) -> int:
    cfg = json.loads(argv[argv.index("--worker") + 1])
    result = _worker(cfg)
    print("@@RESULT@@" + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv))
