"""Regenerate the generated tables of the docs (docs/, README.md, benchmarks/results/*.md) from the package's
data (models, weights, the ONNX converter's operator mappings) and the benchmarks' JSON in benchmarks/results/,
between the ``<!-- BEGIN name -->`` / ``<!-- END name -->`` markers. ``--check`` exits 1 naming every stale
table (the test suite runs it); ``--pages DIR`` reads and writes the pages under DIR instead of the project.

    .venv/bin/python scripts/gen_docs.py [--check] [--pages DIR]
"""
import json
import re
import sys
from statistics import mean
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def models_table() -> str:
    """docs/models.md: every registered model with its params and GMACs (data the tests check)."""
    from megzoo.registry import model_entries

    rows = ["| model | family | description | params | GMACs |", "| --- | --- | --- | ---: | ---: |"]
    rows += [f"| `{e.name}` | {e.family} | {e.summary} | {e.params:,} | {e.gmacs:.3f} |" for e in model_entries()]
    return "\n".join(rows)


def weights_table() -> str:
    from megzoo.registry import list_models
    from megzoo.weights.catalog import weights_for

    rows = ["| weights | top-1 | top-5 | resize / crop | layout | file |", "| --- | ---: | ---: | --- | --- | --- |"]
    for arch in list_models():
        for i, w in enumerate(weights_for(arch)):
            acc = ["n/a" if v is None else f"{v:.3f}" for v in (w.top1, w.top5)]
            name = f"`{w.name}`" + (" (default)" if i == 0 else "")
            rows.append(f"| {name} | {acc[0]} | {acc[1]} | {w.preprocess.resize_size} / {w.preprocess.input_size} "
                        f"| {w.checkpoint_layout} | [{w.filename}]({w.urls[0]}) |")
    return "\n".join(rows)


#: MegEngine operator -> (ONNX operators written, a short note); a row per kind in the converter's
#: MAPPINGS (onnx_operators_table refuses a kind without a row, or a row without a mapping)
ONNX_OPERATORS = {
    "ConvolutionForward": ("Conv", "grouped, depthwise, dilated; a bias add and an inference BatchNorm after it "
                                   "folded in (float64)"),
    "ConvBiasForward": ("Conv (+ Add, activation)", "optimize_for_inference's: bias, residual input and "
                                                     "RELU/SIGMOID/H_SWISH/TANH in one operator"),
    "BatchNormForward": ("Mul, Add; BatchNormalization", "inference mode; Mul + Add where no convolution precedes "
                                                          "it; a node with `fuse=False` (`--no-fuse`)"),
    "Elemwise": ("per mode, below", ""),
    "PoolingForward": ("MaxPool, AveragePool", "padding counted or not, as the mode says"),
    "AdaptivePoolingForward": ("MaxPool, AveragePool", "MegEngine's uniform windows, for the traced size"),
    "Reduce": ("ReduceMean, ReduceSum, ReduceMax, ReduceMin, ReduceProd, ReduceSumSquare; GlobalAveragePool, "
               "Flatten", "one axis at a time; a mean over H and W is GlobalAveragePool + Flatten"),
    "AxisAddRemove": ("Unsqueeze, Squeeze", ""),
    "MatrixMul": ("Gemm; MatMul", "Gemm for 2-D, with the bias add after it"),
    "BatchedMatrixMul": ("MatMul (+ Transpose, Add)", ""),
    "GetVarShape": ("Shape, Gather", "`x.shape`: shape arithmetic, so the batch stays dynamic"),
    "Reshape": ("Reshape", ""),
    "Broadcast": ("Expand", ""),
    "Dimshuffle": ("Transpose (+ Unsqueeze)", "`transpose`, new axes"),
    "Concat": ("Concat", ""),
    "Subtensor": ("Slice, Gather, Squeeze", "`x[a:b:s]`, `x[i]`"),
    "Split": ("Split", "`F.split`; the axis told from the shapes"),
    "TypeCvt": ("Cast", "float and integer types; qint8/qint32 in int8 graphs"),
    "Identity": ("(none)", "passes its input on"),
    "Copy": ("(none)", "passes its input on"),
    "ResizeForward": ("Resize", "NEAREST and LINEAR (`F.nn.interpolate`)"),
    "PaddingForward": ("Pad", "constant, reflect, replicate"),
    "SoftmaxForward": ("Softmax", "from a `.mge`; traced modules write softmax from primitives"),
    "LayerNormForward": ("LayerNormalization (opset 17+; before: its primitive form)",
                         "from a `.mge`; traced modules write it from primitives"),
    "ElemwiseMultiType": ("the mode's, + QuantizeLinear, DequantizeLinear", "int8 only: `QADD`, `QFUSE_ADD_RELU`, ..."),
}


def onnx_operators_table() -> str:
    """docs/onnx-operators.md: what each MegEngine operator becomes in ONNX (megzoo.inference.graph_onnx:
    its MAPPINGS, the int8 kinds of qdq, ELEMWISE's modes run through their emitters at opsets 13
    and 17)."""
    from types import SimpleNamespace

    from megzoo.inference.graph_onnx import ops, qdq
    from megzoo.inference.graph_onnx.builder import OnnxBuilder
    from megzoo.inference.graph_onnx.convert import CONSTANT_KINDS

    kinds = list(ops.MAPPINGS)  # qdq.install() has added the int8-only kinds
    missing = [k for k in kinds if k not in ONNX_OPERATORS]
    extra = [k for k in ONNX_OPERATORS if k not in kinds]
    if missing or extra:
        raise SystemExit(f"scripts/gen_docs.py ONNX_OPERATORS: no row for {missing}, no mapping for {extra}")
    source = "".join(p.read_text() for p in (ROOT / "megzoo/inference/graph_onnx").glob("*.py"))
    for kind, (onnx_ops, _) in ONNX_OPERATORS.items():  # every ONNX operator named is one graph_onnx writes
        unknown = [w for w in re.findall(r"\b[A-Z][A-Za-z]+\b", onnx_ops) if f'"{w}"' not in source]
        if unknown:
            raise SystemExit(f"scripts/gen_docs.py ONNX_OPERATORS[{kind!r}]: {unknown} not written by graph_onnx")

    def int8(kind: str) -> str:
        if kind in qdq.INT8:
            return "QDQ mapping"
        return "on DQ values" if kind in qdq.PASS_THROUGH_KINDS else ""

    rows = ["| MegEngine operator | ONNX | int8 | note |", "| --- | --- | --- | --- |"]
    groups: dict = {}  # kinds with one row's content (Identity, Copy) share the row
    for k in kinds:
        groups.setdefault(ONNX_OPERATORS[k] + (int8(k),), []).append(k)
    rows += [f"| {', '.join(f'`{k}`' for k in ks)} | {onnx_ops} | {q} | {note} |"
             for (onnx_ops, note, q), ks in groups.items()]
    rows.append(f"| constants ({', '.join(f'`{k}`' for k in CONSTANT_KINDS[:2])}, ...) | initializers | | |")

    def written(emit, arity: int, opset: int) -> str:
        builder = OnnxBuilder(opset)
        emit(SimpleNamespace(b=builder), [f"x{i}" for i in range(arity)], "y")
        return ", ".join(node.op_type for node in builder.nodes)

    cells = []
    for mode, (arity, emit) in ops.ELEMWISE.items():
        new, old = written(emit, arity, 17), written(emit, arity, 13)
        cells.append(f"`{mode}` | {new}" + (f" (opset 13: {old})" if old != new else ""))
    per_row = 4
    rows += ["", "| `Elemwise` mode | ONNX " * per_row + "|", "| --- | --- " * per_row + "|"]
    for i in range(0, len(cells), per_row):
        chunk = cells[i:i + per_row] + [" | "] * (per_row - len(cells[i:i + per_row]))
        rows.append("| " + " | ".join(chunk) + " |")
    return "\n".join(rows)


def onnx_converter_speed() -> str:
    """benchmarks/results/inference-history.md: bench_onnx_converter.json, the per-block emitters' ONNX
    files against the converter's, timed in one run."""
    data = results("bench_onnx_converter.json")
    rows = ["| model | precision | batch | per-block emitters, images/s | converter, images/s | converter / emitters |",
            "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in data["rows"]:
        old, new = (f"{r[k + '_images_per_s']:.1f} ({r[k + '_range'][0]:.1f}-{r[k + '_range'][1]:.1f})"
                    for k in ("old", "new"))
        rows.append(f"| {r['model']} | {r['precision']} | {r['batch']} | {old} | {new} | {r['new_over_old']:.2f} |")
    m = data["machine"]
    threads = sorted({r["threads"] for r in data["rows"]})
    rows += ["", f"{m['model_name']} (CPU family {m['family']}, model {m['model']}), ONNX Runtime with "
                 f"{'/'.join(map(str, threads))} threads, {data['date']}; median (min-max) of the rounds; "
                 f"load average {data['load_start'][0]:.1f} at the start, {data['load_end'][0]:.1f} at the end."]
    return "\n".join(rows)


def every_model_table() -> str:
    """docs/onnx-operators.md: convert_every_model.json, every registered model converted and run by
    ONNX Runtime against eager MegEngine."""
    data = results("convert_every_model.json")
    rows = ["| model | parity, batch 1 | parity, batch 3 | seconds to convert | ONNX MB | nodes |",
            "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in data["rows"]:
        rows.append(f"| {r['model']} | {r['parity_batch1']:.1e} | {r['parity_batch3']:.1e} | {r['convert_s']:.1f} | "
                    f"{r['onnx_mb']:.0f} | {r['nodes']} |")
    rows += ["", f"{data['size']} px inputs, random weights; parity: largest difference over the largest logit. "
                 f"{data['date']}, load average {data['load_average'][0]:.1f} (the seconds ran beside other work)."]
    return "\n".join(rows)


def converter_before_after() -> str:
    """benchmarks/results/inference-history.md: bench_inference_converter.json, bench_inference.py run in
    the tree before the converter and after it, with PyTorch's best mode in each run."""
    import statistics

    data = results("bench_inference_converter.json")
    cells = {}
    for run in data["runs"]:
        for s in run["summary"]:
            c = cells.setdefault((s["model"], s["batch"]), {})
            for key, value in (("fp32", s["megzoo_onnxruntime"]), ("int8", s["megzoo_int8"]),
                               ("fp32_ratio", s["megzoo_onnxruntime"] / s["torch_best"]),
                               ("int8_ratio", s["megzoo_int8"] / s["torch_int8_best"])):
                c.setdefault((run["tree"], key), []).append(value)
    med = statistics.median
    rows = ["| model | batch | fp32 images/s, before / after | after / before | ÷ PyTorch fp32 best, before / after | "
            "int8 images/s, before / after | after / before | ÷ PyTorch int8 best, before / after |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for (model, batch), c in sorted(cells.items()):
        line = [model, str(batch)]
        for key in ("fp32", "int8"):
            b, a = med(c[("before", key)]), med(c[("after", key)])
            rb, ra = med(c[("before", key + "_ratio")]), med(c[("after", key + "_ratio")])
            line += [f"{b:.1f} / {a:.1f}", f"{a / b:.2f}", f"{rb:.2f} / {ra:.2f}"]
        rows.append("| " + " | ".join(line) + " |")
    loads = [run["load_average"]["before"][0] for run in data["runs"]]
    rows += ["", f"{data['machine_name']}, {data['date']}: medians of {len(data['runs']) // 2} runs per tree (order "
                 f"{', '.join(run['tree'] for run in data['runs'])}), PyTorch {data['torch']} measured in each run; "
                 f"load average {min(loads):.1f}-{max(loads):.1f} at the starts."]
    return "\n".join(rows)


def int8_accuracy_before_after() -> str:
    """benchmarks/results/inference-history.md: bench_int8_accuracy_converter.json, the digits model's int8
    accuracy with the per-block emitters and with the converter."""
    data = results("bench_int8_accuracy_converter.json")
    before, after = data["trees"]["before"], data["trees"]["after"]
    rows = ["| method | observer | runtime | top-1 before | top-1 after | unchanged top-1, before / after |",
            "| --- | --- | --- | ---: | ---: | ---: |"]
    for b, a in zip(before, after):
        same = "-" if b.get("agreement") is None else f"{100 * b['agreement']:.1f}% / {100 * a['agreement']:.1f}%"
        rows.append(f"| {b['method']} | {b['observer'] or '-'} | {b['runtime']} | {100 * b['top1']:.2f}% | "
                    f"{100 * a['top1']:.2f}% | {same} |")
    rows += ["", f"{data['images']} held-out digits, {data['date']}."]
    return "\n".join(rows)


def bf16_accuracy_table() -> str:
    """docs/quantization.md: bench_bf16_accuracy.json, fp32 against bf16 emulated in float32 on the same images."""
    data = results("bench_bf16_accuracy.json")
    rows = ["| model (weights) | images | top-1 fp32 | top-1 bf16 | same top-1 as fp32 | max logit error / logit scale "
            "| folding alone | median top-1 margin / scale | margins of the flipped images |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in data["rows"]:
        top1 = [f"{100 * r[k]:.2f}%" if k in r else "-" for k in ("top1_fp32", "top1_bf16")]
        weights = "digits demo" if "digits" in r["data"] else "random"
        rows.append(f"| {r['model']} ({weights}) | {r['images']} {r['data']}, {r['input_size']} px | {top1[0]} "
                    f"| {top1[1]} | {100 * r['top1_agreement']:.1f}% | {r['max_rel_logit_error']:.1e} "
                    f"| {r['max_rel_logit_error_fold_only']:.1e} | {r['median_rel_top1_margin']:.1e} "
                    f"| {', '.join(f'{m:.1e}' for m in r['rel_top1_margins_of_flipped']) or '-'} |")
    rows += ["", f"{data['machine']}; {data['date']}; MegEngine {data['megengine']}, eager."]
    return "\n".join(rows)


def results(name: str):
    """One benchmark's JSON from benchmarks/results/."""
    return json.loads((ROOT / "benchmarks/results" / name).read_text())


def machine(data) -> str:
    """The JSON's machine without its details: '2-vCPU AMD EPYC Zen 4'."""
    return re.split(r"[,;(]", data["machine"])[0].strip()


def ratio_range(values) -> str:
    """'1.06-1.39x' (or '1.17x' for one value) for ratios."""
    lo, hi = min(values), max(values)
    return f"{lo:.2f}x" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f}-{hi:.2f}x"


#: bench_training_zen4.json's runs of the current CPU engine (the JSON's command names their commit); the
#: earlier runs are the record in benchmarks/results/training-history.md
TRAINING_CURRENT_RUNS = ("run7.json", "run8.json", "run9.json")


def training_speed_rows():
    """(run, order, {arch: (megzoo s/step, PyTorch s/step, megzoo peak GB, PyTorch peak GB)}) per current run."""
    data = results("bench_training_zen4.json")
    for run in data["runs"]:
        if run["file"] not in TRAINING_CURRENT_RUNS:
            continue
        number = int(re.match(r"run(\d+)", run["file"]).group(1))
        by = {(r["arch"], r["config"]): r for r in run["results"]}
        archs = sorted({arch for arch, _ in by})
        first = "PyTorch first" if run["results"][0]["config"] == "pytorch" else "megzoo first"
        yield number, first, run["load_before"], {
            a: (by[a, "megzoo-fused"]["seconds_per_step"], by[a, "pytorch"]["seconds_per_step"],
                by[a, "megzoo-fused"]["peak_rss_gb"], by[a, "pytorch"]["peak_rss_gb"]) for a in archs}


def training_speed_table() -> str:
    """docs/training-speed.md: a CPU training step against PyTorch eager's, the current engine's runs."""
    data = results("bench_training_zen4.json")
    rows = [f"{data['machine']}, {data['date']}; batch 16, 224 px, 2 threads, 1 warm-up step; seconds per step and "
            "the worker's peak resident memory (GB).", "",
            "| run (order, load before) | ResNet-18 megzoo | PyTorch | megzoo / PyTorch | ResNet-50 megzoo | PyTorch "
            "| megzoo / PyTorch | peak GB, ResNet-18 / ResNet-50 (megzoo; PyTorch) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for number, first, load, by in training_speed_rows():
        (m18, t18, g18, p18), (m50, t50, g50, p50) = by["resnet18"], by["resnet50"]
        rows.append(f"| {number} ({first}, {load}) | {m18:.2f} s | {t18:.2f} s | {m18 / t18:.2f}x | {m50:.2f} s "
                    f"| {t50:.2f} s | {m50 / t50:.2f}x | {g18:.2f} / {g50:.2f}; {p18:.2f} / {p50:.2f} |")
    return "\n".join(rows)


def training_speed_summary() -> str:
    """docs/training-speed.md and README.md: the ratio ranges of the current runs, one sentence."""
    data = results("bench_training_zen4.json")
    runs = [by for _, _, _, by in training_speed_rows()]
    r18, r50 = (ratio_range([by[a][0] / by[a][1] for by in runs]) for a in ("resnet18", "resnet50"))
    return (f"A CPU training step (batch 16, 224 px, 2 threads) takes {r18} PyTorch eager's time on ResNet-18 and "
            f"{r50} on ResNet-50 (a {machine(data)}, {data['date']}).")


def validation_table() -> str:
    """docs/training-speed.md: the trainer's validation on the CPU engine against MegEngine's operators."""
    data = results("bench_validation_zen4.json")
    rows = [f"{data['machine']}, {data['date']}; seconds per batch, median [min-max] of 5 alternating repeats, "
            "random weights.", "",
            "| model, input | MegEngine's operators | CPU engine | faster | logits' largest difference |",
            "| --- | ---: | ---: | ---: | ---: |"]
    for r in data["rows"]:
        me, host = (f"{r[k + '_s']:.3f} [{r[k + '_range'][0]:.3f}-{r[k + '_range'][1]:.3f}]"
                    for k in ("megengine", "host"))
        name = {"resnet18": "ResNet-18", "resnet50": "ResNet-50"}[r["arch"]]
        rows.append(f"| {name}, {r['size']} px, batch {r['batch_size']} | {me} | {host} "
                    f"| {r['megengine_s'] / r['host_s']:.1f}x | {r['max_relative_logit_difference']:.1e} |")
    rows += ["", "(The difference is relative to the logits' largest magnitude.)"]
    return "\n".join(rows)


def recipe_table() -> str:
    """docs/training-recipes.md: bench_recipe.json, each recipe piece's held-out top-1 on the digits over seeds."""
    data = results("bench_recipe.json")
    by: dict = {}
    for r in data:
        by.setdefault(r["row"], []).append(r)
    rows = ["| recipe | top-1 mean (%) | min-max | seeds | s/run |", "| --- | ---: | ---: | --- | ---: |"]
    for name, runs in by.items():
        top1 = [100 * r["top1"] for r in sorted(runs, key=lambda r: r["seed"])]
        seeds = " / ".join(f"{t:.1f}" for t in top1)
        label = f"`--recipe {name}`" if name in ("megengine", "tv2") else name
        rows.append(f"| {label} | {mean(top1):.1f} | {min(top1):.1f}-{max(top1):.1f} | {seeds} "
                    f"| {mean(r['seconds'] for r in runs):.0f} |")
    return "\n".join(rows)


def demo_sentence() -> str:
    """docs/training.md and README.md: the digits demo's result, one sentence."""
    d = results("bench_demo.json")
    minutes, seconds = divmod(d["wall_seconds"], 60)
    return (f"`bash scripts/demo.sh` reached top-1 {100 * d['correct'] / d['held_out']:.2f}% ({d['correct']}/"
            f"{d['held_out']}) on the held-out digits in {minutes} min {seconds:02d} s, all steps included "
            f"(a {machine(d)}, {d['date']}).")


def inference_table() -> str:
    """docs/performance.md: images/s of both backends against PyTorch's best mode, one run."""
    data = results("bench_inference_zen5.json")
    s = data["settings"]
    rows = [f"{data['machine']}; {data['date']}. Random weights, {s['input_size']} px, {s['threads']} threads, "
            f"ONNX Runtime {s['onnxruntime']}, PyTorch {s['torch']}; images/s.", "",
            "| model | batch | megzoo Lite | megzoo ONNX Runtime (`auto` here) | ONNX Runtime alone "
            "| PyTorch best (mode) | `auto` / PyTorch best |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in data["rows"]:
        rows.append(f"| {r['model']} | {r['batch']} | {r['lite']:.1f} | {r['onnxruntime']:.1f} | {r['ort_alone']:.1f} "
                    f"| {r['pytorch_best']:.1f} ({r['pytorch_best_mode']}) | {r['default_over_pytorch_best']:.2f} |")
    return "\n".join(rows)


def inference_summary() -> str:
    """README.md: the compiled models' speed against PyTorch's best mode, one sentence."""
    data = results("bench_inference_zen5.json")
    ratios = [r["default_over_pytorch_best"] for r in data["rows"]]
    models = sorted({r["model"] for r in data["rows"]})
    return (f"`megzoo.compile` ran {', '.join(models)} at {ratio_range(ratios)} PyTorch's best mode "
            f"(a {machine(data)}, {data['date']}).")


def _cell(value, spec: str = ".1f", suffix: str = "") -> str:
    return "-" if value is None else format(value, spec) + suffix


def precision_table() -> str:
    """docs/backends.md: fp32, bf16 and int8 images/s by runtime, with PyTorch's, one interleaved run."""
    data = results("bench_inference_precision_zen3.json")
    m, limits = data["machine"], data["int8_limit"]["before"]
    bf16_cpu = any(data["cpu_bf16"].values())
    disturbed = [r["round"] for r in data["rounds"] if r.get("disturbed")]
    rows = [f"{m['cpu']} (family {m['cpu_family']}; BF16: {'yes' if bf16_cpu else 'no'}), {m['cores']} threads, "
            f"{data['date']}; random weights, 224 px; medians of {len(data['rounds'])} interleaved rounds"
            + (f" (rounds {disturbed} started above load 0.5)" if disturbed else " (each started at load <= 0.5)")
            + f". Limits measured in the run: fp32 {m['peak_gflops']} GFLOP/s, int8 {m['int8_peak_gmacs']} G MAC/s "
            f"({limits.get('instruction')}). Images/s; in brackets, % of the int8 limit.", "",
            "| model | batch | ONNX Runtime fp32 | OpenVINO fp32 | OpenVINO bf16 | PyTorch bf16 | ONNX Runtime int8 "
            "| OpenVINO int8 | PyTorch int8 best | megzoo int8 best / PyTorch's |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in data["summary"]:
        frac = r["int8_fraction"]
        ov_bf16 = _cell(r["megzoo_openvino_bf16"]) if r["megzoo_openvino_bf16"] else "refused: no BF16"
        best8 = max(v for v in (r["megzoo_int8"], r["megzoo_openvino_int8"]) if v)
        torch8 = r["torch_int8_best"]
        rows.append(
            f"| {r['model']} | {r['batch']} | {_cell(r['megzoo_onnxruntime'])} | {_cell(r['megzoo_openvino'])} "
            f"| {ov_bf16} | {_cell(r['torch_bf16_best'])} "
            f"| {_cell(r['megzoo_int8'])} ({_cell(frac['megzoo_int8'] and 100 * frac['megzoo_int8'], '.0f')}%) "
            f"| {_cell(r['megzoo_openvino_int8'])} "
            f"({_cell(frac['openvino_int8'] and 100 * frac['openvino_int8'], '.0f')}%) "
            f"| {_cell(torch8)} ({r['torch_int8_best_mode']}, "
            f"{_cell(frac['torch_int8_best'] and 100 * frac['torch_int8_best'], '.0f')}%) "
            f"| {_cell(torch8 and best8 / torch8, '.2f')} |")
    return "\n".join(rows)


def openvino_hint_sentence() -> str:
    """docs/backends.md: LATENCY against THROUGHPUT for the openvino backend, measured."""
    data = results("bench_openvino_hint.json")
    one = [r["throughput_1_request_vs_latency"] for r in data["rows"]]
    every = [r["throughput_all_vs_latency"] for r in data["rows"]]
    shapes = ", ".join(f"{r['model']} batch {r['batch']}" for r in data["rows"])
    return (f"Measured ({data['cpu']['model_name']} family {data['cpu']['family']}, {data['threads']} threads, "
            f"OpenVINO {data['openvino'].split('-')[0]}, {data['date']}, {shapes}, medians of {len(data['rounds'])} "
            f"interleaved rounds: `benchmarks/bench_openvino_hint.py`): a megzoo call under `THROUGHPUT` "
            f"({data['rows'][0]['streams']['throughput']} streams, one request at a time) ran at "
            f"{ratio_range(one)} `LATENCY`'s images/s; `THROUGHPUT` with all its requests in flight reached "
            f"{ratio_range(every)}, which only a caller keeping several batches in flight gets.")


#: page -> {marker name: the function that writes what goes between its markers}
TABLES = {
    "README.md": {"demo-figure": demo_sentence, "inference-figure": inference_summary,
                  "training-figure": training_speed_summary},
    "docs/models.md": {"models-table": models_table},
    "docs/weights.md": {"weights-table": weights_table},
    "docs/onnx-operators.md": {"onnx-operators": onnx_operators_table, "every-model": every_model_table},
    "docs/performance.md": {"inference-speed": inference_table},
    "docs/backends.md": {"precision-speed": precision_table, "openvino-hint": openvino_hint_sentence},
    "docs/quantization.md": {"bf16-accuracy": bf16_accuracy_table},
    "docs/training.md": {"digits-demo": demo_sentence},
    "docs/training-recipes.md": {"recipe-pieces": recipe_table},
    "docs/training-speed.md": {"training-speed-summary": training_speed_summary,
                               "cpu-training-speed": training_speed_table, "host-validation": validation_table},
    "benchmarks/results/inference-history.md": {"onnx-converter-speed": onnx_converter_speed,
                                                "converter-before-after": converter_before_after,
                                                "int8-accuracy-before-after": int8_accuracy_before_after},
}


def render(text: str, tables) -> str:
    """``text`` with each named table regenerated between its markers."""
    for name, make in tables.items():
        pattern = re.compile(rf"(<!-- BEGIN {name} -->\n)(?:.*?\n)?(<!-- END {name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"marker {name} missing")
        text = pattern.sub(lambda m: m.group(1) + make() + "\n" + m.group(2), text)
    return text


def stale_tables(pages: Path = ROOT, write: bool = False) -> list:
    """``page (table)`` for every generated table under ``pages`` that differs from its data; ``write``
    regenerates them."""
    stale = []
    for page, tables in TABLES.items():
        path = pages / page
        old = text = path.read_text()
        for name, make in tables.items():
            new = render(text, {name: make})
            if new != text:
                stale.append(f"{page} ({name})")
            text = new
        if write and text != old:
            path.write_text(text)
    return stale


def main(argv) -> int:
    pages = Path(argv[argv.index("--pages") + 1]) if "--pages" in argv else ROOT
    stale = stale_tables(pages, write="--check" not in argv)
    if stale and "--check" in argv:
        print(f"stale generated tables: {', '.join(stale)}; run python scripts/gen_docs.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
