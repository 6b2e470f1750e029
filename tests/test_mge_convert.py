"""``megzoo convert model.mge -o model.onnx`` (issue 31, mgeconvert's ``mge_to_onnx`` use case):
graph files MegEngine dumped with and without ``optimize_for_inference`` converted to ONNX and run
by ONNX Runtime against MegEngine Lite running the same file, at batch 1 and 3; the CLI's output
and its refusals (a blocked layout, an operator without a mapping, another input), each with its
exact message and nothing written."""
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import megengine.functional as F
import megengine.module as M

import megzoo
from megzoo.cli import main
from megzoo.inference import load
from megzoo.inference.graph import trace_and_dump
from megzoo.inference.graph_onnx import UnsupportedOperatorError, mge_to_onnx
from megzoo.inference.graph_onnx.reader import read_mge

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_graph_onnx as gallery  # noqa: E402  (the converter's user-style modules, one per operator group)

TOLERANCE = 1e-4  # of the output scale, as export's parity check
GALLERY = {"squeeze_excite": "SqueezeExcite", "inverted_residual": "InvertedResidual",
           "channel_shuffle": "ChannelShuffle", "attention": "Attention", "neck": "Neck", "softmax_head": "SoftmaxHead"}


def _kinds(path) -> set:
    """The graph's operator kinds, and ``Elemwise:MODE`` for its element-wise modes."""
    kinds = set()
    for op in read_mge(path).all_oprs:
        kind = type(op).__name__
        kinds.add(getattr(op, "type", kind) if kind == "ReadOnlyOpNode" else kind)
        if kind == "Elemwise":
            kinds.add(f"Elemwise:{op.params['mode']}")
    return kinds


class Mix(M.Module):
    def forward(self, x):
        return F.cumsum(x, axis=1)  # no ONNX mapping


class WithCumsum(M.Module):
    def __init__(self):
        super().__init__()
        self.conv = M.Conv2d(3, 4, 3)
        self.mix = Mix()
        self.head = M.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(self.mix(self.conv(x)))


class Blocked(M.Module):
    """Convolutions with 8 channels: MegEngine's nchw88 dump puts them in blocks of 8."""

    def __init__(self):
        super().__init__()
        self.conv1 = M.Conv2d(3, 8, 3, padding=1)
        self.conv2 = M.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return self.conv2(F.relu(self.conv1(x)))


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """.mge files: ResNet-18 (10 classes, 32x32) and the gallery's modules (16x16), each dumped
    with (``fused``) and without (``plain``) optimize_for_inference."""
    root = tmp_path_factory.mktemp("mge")
    files = {}
    models = {"resnet18": (megzoo.resnet18(num_classes=10), (1, 3, 32, 32)),
              **{name: (getattr(gallery, cls)(), (1, 3, 16, 16)) for name, cls in GALLERY.items()}}
    for name, (model, shape) in models.items():
        model.eval()
        for fuse in (False, True):
            key = f"{name}_{'fused' if fuse else 'plain'}"
            files[key] = root / f"{key}.mge"
            trace_and_dump(model, shape, files[key], fuse=fuse)
    return files


def _onnx_vs_lite(proto, mge_path):
    """max |ONNX Runtime - Lite| / max |Lite| over the outputs at batch 1 and 3, and the ONNX op types."""
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    lite = load(mge_path, threads=1, algo="heuristic")
    shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim][1:]
    worst = 0.0
    for n in (1, 3):
        x = np.random.RandomState(n).randn(n, *shape).astype(np.float32)
        ref = lite(x)
        ref = ref if isinstance(ref, list) else [ref]
        got = session.run(None, {"data": x})
        assert [g.shape for g in got] == [r.shape for r in ref]
        worst = max([worst] + [float(np.abs(g - r).max() / np.abs(r).max()) for g, r in zip(got, ref)])
    return worst, {node.op_type for node in proto.graph.node}


@pytest.mark.parametrize("name", ["resnet18"] + list(GALLERY))
@pytest.mark.parametrize("dumped", ["plain", "fused"])
def test_a_dumped_graph_converts_and_matches_lite_at_batch_1_and_3(graphs, name, dumped):
    path = graphs[f"{name}_{dumped}"]
    kinds = _kinds(path)
    assert ("ConvBiasForward" in kinds) == (dumped == "fused")  # optimize_for_inference fused conv + bias (+ relu)
    proto = mge_to_onnx(path)
    error, ops = _onnx_vs_lite(proto, path)
    assert error < TOLERANCE
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert "BatchNormalization" not in ops
    if name == "resnet18" and dumped == "fused":  # BN folded; the residual add went into a ConvBias, then a fused mode
        assert "Elemwise:FUSE_ADD_RELU" in kinds and "BatchNormForward" not in kinds
    if name == "attention":  # LayerNorm's epsilon and softmax's axis, read from the file
        assert {"LayerNormForward", "SoftmaxForward"} <= kinds and {"LayerNormalization", "Softmax"} <= ops


def test_a_features_only_backbone_converts_with_its_five_outputs(tmp_path):
    path = tmp_path / "features.mge"
    trace_and_dump(megzoo.resnet18(features_only=True), (1, 3, 32, 32), path, fuse=True)
    proto = mge_to_onnx(path)
    error, _ = _onnx_vs_lite(proto, path)
    assert error < TOLERANCE and [o.name for o in proto.graph.output] == [f"output{i}" for i in range(5)]


def test_layer_norm_converts_in_primitive_form_before_opset_17(graphs):
    proto = mge_to_onnx(graphs["attention_fused"], opset=13)
    error, ops = _onnx_vs_lite(proto, graphs["attention_fused"])
    assert error < TOLERANCE and "LayerNormalization" not in ops and {"ReduceMean", "Sqrt", "Softmax"} <= ops


def test_the_cli_writes_the_onnx_file_and_prints_the_parity_with_lite(graphs, tmp_path, capsys):
    out = tmp_path / "head.onnx"
    assert main(["convert", str(graphs["softmax_head_fused"]), "-o", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(re.escape(f"wrote {out} (") + r"0\.[0-9] MiB, " + re.escape(
        f"ONNX opset 17, batch dynamic, input data 1x3x16x16, outputs output) from {graphs['softmax_head_fused']} in ")
        + r"[0-9]+\.[0-9] s", lines[0]), lines[0]
    assert lines[1] == "parity vs MegEngine Lite running softmax_head_fused.mge (tolerance 0.0001, max |diff| / " \
                       "max |Lite output|):"
    assert [line.split()[:4] for line in lines[2:]] == [["random", "normal", "batch", "(N=1)"],
                                                       ["random", "normal", "batch", "(N=3)"]]
    assert all(line.endswith("  ok") and float(line.split("relative ")[1].split()[0]) < TOLERANCE for line in lines[2:])
    error, _ = _onnx_vs_lite(__import__("onnx").load(str(out)), graphs["softmax_head_fused"])
    assert error < TOLERANCE


def test_the_cli_static_batch_is_the_dumped_one_checked_once(graphs, tmp_path, capsys):
    import onnx

    out = tmp_path / "static.onnx"
    assert main(["convert", str(graphs["attention_plain"]), "-o", str(out), "--static-batch", "--opset", "13"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "ONNX opset 13, batch static 1, input data 1x3x16x16" in lines[0]
    assert len(lines) == 3 and lines[2].split()[:4] == ["random", "normal", "batch", "(N=1)"]
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    assert {p.key for p in model.metadata_props} == {"input_shape", "parity_max_rel"}


def test_a_failed_parity_check_exits_1_and_writes_nothing(graphs, tmp_path, capsys, monkeypatch):
    from megzoo.inference.ort import OrtRunner

    run = OrtRunner.run
    monkeypatch.setattr(OrtRunner, "run", lambda self, x: [y + 1e-2 for y in run(self, x)])  # a wrong conversion
    out = tmp_path / "wrong.onnx"
    assert main(["convert", str(graphs["softmax_head_plain"]), "-o", str(out)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("megzoo convert: error: parity check failed: exported model differs from Lite by ")
    assert err[0].endswith(" relative to the logit scale, above the tolerance 0.0001")
    assert err[-1] == f"megzoo convert: {out} not written"
    assert list(tmp_path.iterdir()) == []


def test_an_nchw88_graph_is_refused_as_a_layout_onnx_cannot_express(tmp_path, capsys):
    path = tmp_path / "blocked.mge"
    trace_and_dump(Blocked(), (1, 3, 8, 8), path, fuse=True, layout="nchw88")  # dumping works on any machine
    out = tmp_path / "blocked.onnx"
    assert main(["convert", str(path), "-o", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"megzoo convert: error: {path} was dumped with MegEngine's NCHW88 layout (channels in blocks of 8 inside "
        "the graph, for x86 AVX2 kernels), which ONNX cannot express: ONNX tensors are NCHW. Dump the model again "
        "without the layout option (megzoo export -o FILE.mge --layout nchw; MegEngine: dump without enable_nchw88) "
        "and convert that file")
    assert not out.exists()


def test_an_operator_without_a_mapping_is_refused_naming_it_and_its_module(tmp_path, capsys):
    path = tmp_path / "cumsum.mge"
    trace_and_dump(WithCumsum(), (1, 3, 8, 8), path, fuse=True)
    out = tmp_path / "cumsum.onnx"
    out.write_bytes(b"an older file")
    assert main(["convert", str(path), "-o", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        "megzoo convert: error: cannot convert MegEngine operator Cumsum (making mix.Cumsum) to ONNX: no mapping for "
        "this operator; MegEngine Lite runs the .mge as it is (megzoo.inference.load(FILE))")
    assert out.read_bytes() == b"an older file" and sorted(p.name for p in tmp_path.iterdir()) == ["cumsum.mge",
                                                                                                    "cumsum.onnx"]


def test_a_graph_whose_input_is_not_an_nchw_batch_is_refused(tmp_path):
    path = tmp_path / "vector.mge"
    trace_and_dump(M.Linear(8, 2), (1, 8), path, fuse=False)
    with pytest.raises(UnsupportedOperatorError) as info:
        mge_to_onnx(path)
    assert str(info.value) == (f"{path}: its input data is float32 of shape (1, 8); megzoo converts graphs whose one "
                               "input is a float32 (N, C, H, W) batch")


def test_what_is_not_a_graph_or_a_graph_option_is_one_error_line(graphs, tmp_path, capsys):
    pickle = tmp_path / "weights.mge"
    pickle.write_bytes(b"\x80\x04K\x01.")
    assert main(["convert", str(pickle), "-o", str(tmp_path / "w.onnx")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"megzoo convert: error: {pickle} is not a MegEngine .mge graph: it is a Python pickle (a state dict or "
        "checkpoint? those are weights: --weights FILE, pretrained=FILE). megzoo convert takes a MegEngine .mge graph "
        "(megengine.jit.trace(...).dump, `megzoo export -o FILE.mge`)")
    assert main(["convert", str(graphs["attention_plain"]), "--arch", "resnet18", "-o", str(tmp_path / "a.onnx")]) == 2
    assert capsys.readouterr().err.strip() == ("megzoo convert: error: --arch is for checkpoints; a .mge graph is "
                                               "converted as it is")
    assert main(["convert", str(graphs["attention_plain"]), "-o", str(tmp_path / "a.pkl")]) == 2
    assert capsys.readouterr().err.strip() == ("megzoo convert: error: a .mge graph converts to ONNX: name the output "
                                               f"FILE.onnx, not {tmp_path / 'a.pkl'}")
    assert main(["convert", "r18.pth", "--static-batch", "-o", str(tmp_path / "c.pkl")]) == 2
    assert capsys.readouterr().err.strip() == ("megzoo convert: error: --static-batch: for a .mge graph converted to "
                                               "ONNX, not for a checkpoint")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.mge"]
