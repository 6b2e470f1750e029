"""Registry lookups and the ``megzoo list`` / ``megzoo summary`` commands; docs/models.md's table."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import megzoo
from megzoo.cli import main
from megzoo.registry import get_model_entry, model_entries

ALL_MODELS = [
    "resnet101", "resnet152", "resnet18", "resnet34", "resnet50", "resnext101_32x8d", "resnext50_32x4d",
    "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
    "wide_resnet101_2", "wide_resnet50_2",
]
ROOT = Path(__file__).resolve().parents[1]


def test_list_models_returns_all_names_sorted():
    assert megzoo.list_models() == ALL_MODELS
    assert [e.name for e in model_entries()] == ALL_MODELS


@pytest.mark.parametrize("pattern, expected", [
    ("resnet*", ["resnet101", "resnet152", "resnet18", "resnet34", "resnet50"]),
    ("*_bn", ["vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]),
    ("vgg1?", ["vgg11", "vgg13", "vgg16", "vgg19"]),
    (["wide_*", "resnext*"], ["resnext101_32x8d", "resnext50_32x4d", "wide_resnet101_2", "wide_resnet50_2"]),
    (("resnet18", "resnet1*"), ["resnet101", "resnet152", "resnet18"]),
    ("resnet50", ["resnet50"]),
    ("RESNET*", []),  # case-sensitive, like the names
    ("mobilenet*", []),
])
def test_list_models_patterns(pattern, expected):
    assert megzoo.list_models(pattern) == expected


def test_get_model_passes_kwargs():
    model = megzoo.get_model("resnet34", num_classes=7, in_channels=1, zero_init_residual=True)
    assert isinstance(model, megzoo.ResNet) and model.model_name == "resnet34"
    assert model.fc.weight.shape == (7, 512) and model.conv1.weight.shape == (64, 1, 7, 7)
    assert not model.layer3[5].bn2.weight.numpy().any()
    backbone = megzoo.get_model("resnet18", features_only=True, out_indices=(4,))
    assert backbone.feature_info.names() == ["res5"] and backbone.fc is None
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        megzoo.get_model("resnet18", colour="red")


def test_registry_entry():
    entry = get_model_entry("vgg16_bn")
    assert (entry.name, entry.family, entry.params, entry.gmacs) == ("vgg16_bn", "vgg", 138_365_992, 15.470)
    assert entry.builder is megzoo.vgg16_bn
    assert entry.summary == 'VGG-16 (configuration "D") with BatchNorm after every convolution.'


# --- CLI (in process) ---------------------------------------------------------------------------------
def test_cli_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "model                family          params   GMACs"
    assert [line.split()[0] for line in out[1:]] == ALL_MODELS
    assert "resnet50             resnet      25,557,032   4.089" in out
    assert "wide_resnet101_2     resnet     126,886,696  22.753" in out
    assert "vgg19_bn             vgg        143,678,248  19.632" in out


def test_cli_list_pattern_json(capsys):
    assert main(["list", "vgg*", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows] == ["vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19",
                                             "vgg19_bn"]
    assert rows[0] == {"name": "vgg11", "family": "vgg", "params": 132_863_336, "gmacs": 7.609}
    assert all(row == {"name": e.name, "family": e.family, "params": e.params, "gmacs": e.gmacs}
               for row, e in zip(rows, (get_model_entry(r["name"]) for r in rows)))


def test_cli_list_no_match(capsys):
    assert main(["list", "alexnet*"]) == 1
    assert capsys.readouterr().out == "no model matches 'alexnet*'\n"


def test_cli_summary(capsys):
    assert main(["summary", "resnet18", "--input-size", "64"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "\n".join([
        "model        resnet18",
        "parameters   11,689,512",
        "GMACs        0.149 at 64x64",
        "input        (1, 3, 64, 64)",
        "  stem       (1, 64, 16, 16)  stride 4",
        "  res2       (1, 64, 16, 16)  stride 4",
        "  res3       (1, 128, 8, 8)  stride 8",
        "  res4       (1, 256, 4, 4)  stride 16",
        "  res5       (1, 512, 2, 2)  stride 32",
        "output       (1, 1000)",
    ]) + "\n"


def test_cli_summary_num_classes(capsys):
    assert main(["summary", "resnet18", "--input-size", "32", "--num-classes", "10"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "parameters   11,181,642" and out[-1] == "output       (1, 10)"


def test_cli_unknown_model(capsys):
    assert main(["summary", "resnet5"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ("megzoo summary: error: unknown model 'resnet5'; did you mean resnet50, wide_resnet50_2, "
                            "resnet152, resnet34, resnet18? (megzoo.list_models() lists all)\n")


def test_cli_usage_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["summary"])
    assert exc.value.code == 2
    assert "the following arguments are required: model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["summary", "resnet18", "--input-size", "big"])
    assert exc.value.code == 2


def test_console_script():
    """The installed ``megzoo`` entry point (the one subprocess test: it imports MegEngine anew)."""
    script = Path(sys.executable).parent / "megzoo"
    assert script.exists(), f"console script not installed next to {sys.executable}"
    result = subprocess.run([str(script), "list", "resnet*"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "model                family          params   GMACs",
        "resnet101            resnet      44,549,160   7.801",
        "resnet152            resnet      60,192,808  11.514",
        "resnet18             resnet      11,689,512   1.814",
        "resnet34             resnet      21,797,672   3.664",
        "resnet50             resnet      25,557,032   4.089",
    ]
    assert "Traceback" not in result.stderr


# --- docs/models.md ---------------------------------------------------------------------------------
def test_generated_docs_tables_are_current():
    """docs/models.md and docs/weights.md tables come from the registry and the weights catalogue."""
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_docs.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
