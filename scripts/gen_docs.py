"""Regenerate the tables in docs/ from the package's data (models, weights, the ONNX converter's
operator mappings, benchmark results), between the
``<!-- BEGIN name -->`` / ``<!-- END name -->`` markers. ``--check`` exits 1 if a page is stale
(the test suite runs it).

    .venv/bin/python scripts/gen_docs.py [--check]
"""
import re
import sys
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
                        f"| {w.layout} | [{w.filename}]({w.urls[0]}) |")
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
    """docs/export.md: what each MegEngine operator becomes in ONNX (megzoo.inference.graph_onnx:
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
    """docs/export.md: benchmarks/results/bench_onnx_converter.json, the per-block emitters' ONNX
    files against the converter's, timed in one run."""
    import json

    data = json.loads((ROOT / "benchmarks/results/bench_onnx_converter.json").read_text())
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


TABLES = {"docs/models.md": {"models-table": models_table}, "docs/weights.md": {"weights-table": weights_table},
          "docs/export.md": {"onnx-operators": onnx_operators_table, "onnx-converter-speed": onnx_converter_speed}}


def render(text: str, tables) -> str:
    for name, make in tables.items():
        pattern = re.compile(rf"(<!-- BEGIN {name} -->\n)(?:.*?\n)?(<!-- END {name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"marker {name} missing")
        text = pattern.sub(lambda m: m.group(1) + make() + "\n" + m.group(2), text)
    return text


def main(argv) -> int:
    stale = []
    for page, tables in TABLES.items():
        path = ROOT / page
        old = path.read_text()
        new = render(old, tables)
        if new != old:
            stale.append(page)
            if "--check" not in argv:
                path.write_text(new)
    if stale and "--check" in argv:
        print(f"stale generated tables in {', '.join(stale)}: run python scripts/gen_docs.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
