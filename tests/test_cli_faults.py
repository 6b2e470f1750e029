"""The command line against hostile inputs and faults (issue 30, items 3, 10, 14, 20 and minors):
sizes from a best.json or an option are bounded, output paths are checked before the work starts,
read-only and full disks give one error line naming the path (exit 2) and leave no partial file,
unknown device names list the valid ones, names from files are printed escaped.

Full and read-only disks are real: small tmpfs mounts (the tests run as root here)."""
import contextlib
import json
import os
import re
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

import megengine

import megzoo
from megzoo.cli import main

ENOSPC_FIX = "(free space on that disk, or write to another one)"
EROFS_FIX = "(that file system is read-only: write to another folder)"
ENOTDIR_FIX = "(that is a file where a folder is needed: choose another path)"


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "1m", read_only: bool = False):
    """A tmpfs of ``size`` mounted at ``path`` meanwhile (read-only when asked)."""
    path.mkdir()
    options = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def _last_line(err: str) -> str:
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


def _files(root: Path):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """An image, a train/val folder of 2 classes, a ResNet-18 ImageNet state dict (.pkl), and a
    2-class ResNet-18 checkpoint with its best.json."""
    root = tmp_path_factory.mktemp("faults")
    rng = np.random.RandomState(0)
    for split in ("train", "val"):
        for name in ("a", "b"):
            (root / "data" / split / name).mkdir(parents=True)
            for i in range(2):
                cv2.imwrite(str(root / "data" / split / name / f"{i}.png"), rng.randint(0, 255, (20, 20, 3), np.uint8))
    cv2.imwrite(str(root / "img.png"), rng.randint(0, 255, (40, 48, 3), np.uint8))
    np.save(root / "probs.npy", np.full((4, 2), 0.5))
    np.random.seed(0)
    megengine.random.seed(0)
    megengine.save({k: np.array(v) for k, v in megzoo.resnet18().state_dict().items()}, str(root / "r18.pkl"))
    (root / "ckpt").mkdir()
    megengine.save({k: np.array(v) for k, v in megzoo.resnet18(num_classes=2).state_dict().items()},
                   str(root / "ckpt" / "best.pkl"))
    return root


def _checkpoint(work: Path, target: Path, **changes) -> Path:
    """``target/best.pkl`` (the 2-class ResNet-18 of ``work``) with a best.json changed by ``changes``."""
    target.mkdir()
    os.link(work / "ckpt" / "best.pkl", target / "best.pkl")
    meta = {"model": "resnet18", "num_classes": 2, "classes": ["cat", "dog"], "weights_file": "best.pkl",
            "preprocess": {"input_size": 32, "resize_size": 32, "interpolation": "bilinear", "color_order": "BGR",
                           "mean": [103.53, 116.28, 123.675], "std": [57.375, 57.12, 58.395]}}
    for key, value in changes.items():
        if key in meta["preprocess"]:
            meta["preprocess"][key] = value
        else:
            meta[key] = value
    (target / "best.json").write_text(json.dumps(meta))
    return target / "best.pkl"


# -- item 3: sizes read from a file or an option are bounded ------------------------------------------

@pytest.mark.parametrize("changes, message", [
    ({"input_size": 1100, "resize_size": 1100},
     "preprocess: input_size 1100 is larger than megzoo's bound of 1024 px"),
    ({"input_size": 224, "resize_size": 3000},
     "preprocess: resize_size 3000 is larger than megzoo's bound of 2048 px"),
    ({"num_classes": 200_000}, "num_classes 200000 is larger than megzoo's bound of 100000"),
])
def test_predict_refuses_sizes_in_best_json_above_the_bounds(work, tmp_path, capsys, changes, message):
    best = _checkpoint(work, tmp_path / "run", **changes)
    code = main(["predict", str(work / "img.png"), "--model", "resnet18", "--weights", str(best), "--backend", "eager"])
    err = capsys.readouterr().err
    assert code == 2
    assert _last_line(err) == (f"megzoo predict: error: {best.with_suffix('.json')}: {message} "
                               "(docs/cli.md#size-limits): correct that file (megzoo train writes the sizes it "
                               "trained and evaluated with)")


def test_sizes_of_a_preprocessing_record_and_of_training_are_bounded():
    with pytest.raises(ValueError, match=r"^input_size 2000 is larger than megzoo's bound of 1024 px"):
        megzoo.Classifier("resnet18", weights=False, num_classes=2,
                          preprocess={"input_size": 2000, "resize_size": 2000})
    with pytest.raises(ValueError, match=r"^resize_size 4096 is larger than megzoo's bound of 2048 px"):
        megzoo.eval_transform(input_size=224, resize_size=4096)
    with pytest.raises(ValueError, match=r"^eval_size 1500 is larger than megzoo's bound of 1024 px"):
        megzoo.train.TrainConfig(data="d", input_size=224, eval_size=1500)
    assert megzoo.eval_transform(input_size=1024, resize_size=2048) is not None  # the bounds themselves pass


@pytest.mark.parametrize("argv, message", [
    (["summary", "nosuchmodel", "--input-size", "1100"],
     "argument --input-size: input_size 1100 is larger than megzoo's bound of 1024 px"),
    (["clean", "nowhere", "--input-size", "1100"],
     "argument --input-size: input_size 1100 is larger than megzoo's bound of 1024 px"),
    (["predict", "x.png", "--model", "nosuchmodel", "--num-classes", "200000"],
     "argument --num-classes: num_classes 200000 is larger than megzoo's bound of 100000"),
    # minor: 0 is refused by clean as by train (leave the option out for the automatic size)
    (["clean", "nowhere", "--input-size", "0"], "argument --input-size: expected a positive integer, got '0'"),
    # minor: a parity tolerance is a finite number >= 0
    (["export", "nosuchmodel", "-o", "x.mge", "--tolerance", "-1"],
     "argument --tolerance: expected a finite number >= 0, got '-1' (--no-check skips the check)"),
    (["export", "nosuchmodel", "-o", "x.mge", "--tolerance", "nan"],
     "argument --tolerance: expected a finite number >= 0, got 'nan' (--no-check skips the check)"),
])
def test_size_options_are_bounded_and_checked_by_the_parser(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in _last_line(capsys.readouterr().err)


def test_export_input_shape_is_bounded_before_the_model_is_built(capsys):
    assert main(["export", "nosuchmodel", "-o", "x.mge", "--input-shape", "1,3,1100,1100"]) == 2
    assert _last_line(capsys.readouterr().err) == ("megzoo export: error: --input-shape 1,3,1100,1100: H and W must "
                                                   "be at most 1024 px (docs/cli.md#size-limits)")


def test_train_input_size_is_bounded(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--model", "resnet18", "--input-size", "1100",
                 "--output", str(tmp_path / "run")]) == 2
    assert _last_line(capsys.readouterr().err) == ("megzoo train: error: input_size 1100 is larger than megzoo's "
                                                   "bound of 1024 px (docs/cli.md#size-limits): give a smaller value")


# -- item 14: device names ----------------------------------------------------------------------------

DEVICES = ("valid devices are cpu, gpu, cuda, cpux, cpuN, gpux, gpuN, xpux, multithreadT:N "
           "(N: a device number, T: threads; e.g. cpu, gpu1, multithread2:0)")


@pytest.mark.parametrize("command", ["predict", "eval"])
def test_an_unknown_device_lists_the_valid_ones(work, capsys, command):
    target = [str(work / "img.png")] if command == "predict" else ["--data", str(work / "data" / "val")]
    assert main([command, *target, "--model", "resnet18", "--weights", "x.pkl", "--device", "bogus9"]) == 2
    assert _last_line(capsys.readouterr().err) == f"megzoo {command}: error: unknown device 'bogus9': {DEVICES}"


def test_an_unknown_megzoo_device_variable_is_named(work, capsys, monkeypatch):
    monkeypatch.setenv("MEGZOO_DEVICE", "tpu0")
    assert main(["predict", str(work / "img.png"), "--model", "resnet18", "--weights", "x.pkl"]) == 2
    assert _last_line(capsys.readouterr().err) == f"megzoo predict: error: unknown $MEGZOO_DEVICE 'tpu0': {DEVICES}"


# -- item 20: names from files are printed escaped -----------------------------------------------------

def test_class_names_with_terminal_codes_are_printed_escaped(work, tmp_path, capsys):
    best = _checkpoint(work, tmp_path / "run", classes=["\x1b[2J\x1b]0;pwned\x07cat", "dog\u202egod"])
    argv = ["predict", str(work / "img.png"), "--model", "resnet18", "--weights", str(best), "--backend", "eager"]
    assert main(argv + ["--topk", "2"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "  \\x1b[2J\\x1b]0;pwned\\x07cat (0)" in out and "  dog\\u202egod (1)" in out
    assert main(argv + ["--json"]) == 0  # JSON escapes them itself: the names come back unchanged
    names = {s["name"] for s in json.loads(capsys.readouterr().out)["results"][0]["topk"]}
    assert names == {"\x1b[2J\x1b]0;pwned\x07cat", "dog\u202egod"}


# -- item 10: output paths checked first, OSError as one line -----------------------------------------

def test_export_to_a_folder_is_refused_before_the_model_is_built(tmp_path, capsys, monkeypatch):
    import megzoo.model_source

    def never(*args, **kwargs):
        raise AssertionError("the model was built before the output was checked")

    monkeypatch.setattr(megzoo.model_source, "model_from_source", never)
    folder = tmp_path / "out"
    folder.mkdir()
    assert main(["export", "resnet18", "-o", str(folder), "--input-shape", "1,3,32,32"]) == 2
    assert _last_line(capsys.readouterr().err) == (f"megzoo export: error: Is a directory: {folder} (that is a folder "
                                                   "where a file is needed: give a file name, e.g. one inside it)")
    (tmp_path / "m.mge.json").mkdir()  # where the metadata goes
    assert main(["export", "resnet18", "-o", str(tmp_path / "m.mge"), "--input-shape", "1,3,32,32"]) == 2
    assert f"Is a directory: {tmp_path / 'm.mge.json'}" in _last_line(capsys.readouterr().err)


def _commands(work: Path, out: Path):
    """The writing commands, each writing to ``out`` (a file or a folder as it needs)."""
    return {
        "export": ["export", "resnet18", "-o", str(out / "m.onnx"), "--input-shape", "1,3,32,32", "--no-check"],
        "convert": ["convert", str(work / "r18.pkl"), "--arch", "resnet18", "-o", str(out / "c.pkl")],
        "train": ["train", "--data", str(work / "data"), "--model", "resnet18", "--input-size", "16", "--resize-size",
                  "16", "--epochs", "1", "--batch-size", "4", "--workers", "0", "--no-progress", "--no-plot",
                  "--cpu-threads", "1", "--output", str(out / "run")],
        "clean": ["clean", str(work / "data" / "train"), "--method", "given", "--pred-probs", str(work / "probs.npy"),
                  "--no-progress", "--out", str(out / "report")],
    }


@pytest.mark.parametrize("command", ["export", "convert", "train", "clean"])
def test_a_read_only_output_is_one_error_line_before_the_work(work, tmp_path, capsys, command):
    with tmpfs(tmp_path / "ro", read_only=True) as ro:
        assert main(_commands(work, ro)[command]) == 2
        expected = f"megzoo {command}: error: Read-only file system: {ro} {EROFS_FIX}"
        assert _last_line(capsys.readouterr().err) == expected


@pytest.mark.parametrize("argv", [
    ["train", "--data", "{work}/data", "--model", "resnet18", "--output", "{file}"],
    ["clean", "{work}/data/train", "--method", "given", "--pred-probs", "{work}/probs.npy", "--out", "{file}/report"],
    ["download", "resnet18", "--to", "{file}"],
    ["convert", "{work}/r18.pkl", "--arch", "resnet18", "-o", "{file}/c.pkl"],
])
def test_a_file_where_a_folder_is_needed_is_one_error_line(work, tmp_path, capsys, argv):
    file = tmp_path / "a_file"
    file.write_text("mine\n")
    assert main([a.format(work=work, file=file) for a in argv]) == 2
    assert _last_line(capsys.readouterr().err) == f"megzoo {argv[0]}: error: Not a directory: {file} {ENOTDIR_FIX}"
    assert file.read_text() == "mine\n"


@pytest.mark.parametrize("command, written", [("export", "m.onnx"), ("convert", "c.pkl"), ("clean", "report")])
def test_a_full_disk_is_one_error_line_and_leaves_no_partial_file(work, tmp_path, capsys, command, written):
    size = "8k" if command == "clean" else "1m"
    with tmpfs(tmp_path / "disk", size=size) as disk:
        assert main(_commands(work, disk)[command]) == 2
        line = _last_line(capsys.readouterr().err)
        if command == "clean":  # the report file that did not fit
            assert re.fullmatch(re.escape(f"megzoo clean: error: No space left on device: {disk / written}/") +
                                r"[a-z_]+\.(csv|txt|json|png) " + re.escape(ENOSPC_FIX), line), line
        else:
            assert line == f"megzoo {command}: error: No space left on device: {disk / written} {ENOSPC_FIX}"
        left = _files(disk)
        assert not [name for name in left if name.endswith(".tmp")], left
        if command != "clean":  # clean writes its report files one by one, each whole or not at all
            assert left == []
        else:
            for name in left:
                if name.endswith(".csv"):
                    assert (disk / name).read_text().startswith("path,")


def test_a_full_disk_during_training_keeps_the_last_checkpoint(work, tmp_path, capsys):
    with tmpfs(tmp_path / "disk", size="400m") as disk:
        argv = _commands(work, disk)["train"]
        assert main(argv) == 0
        run = disk / "run"
        before = {name: (run / name).read_bytes() for name in ("last.pkl", "best.pkl", "best.json")}
        stat = os.statvfs(disk)
        used = (stat.f_blocks - stat.f_bfree) * stat.f_frsize
        subprocess.run(["mount", "-o", f"remount,size={used + (256 << 10)}", str(disk)], check=True)
        capsys.readouterr()
        assert main(argv[:argv.index("--epochs") + 1] + ["2"] + argv[argv.index("--epochs") + 2:]) == 2
        line = _last_line(capsys.readouterr().err)
        assert line in [f"megzoo train: error: No space left on device: {run / name} {ENOSPC_FIX}"
                        for name in ("last.pkl", "best.pkl")]  # the file being written
        assert {name: (run / name).read_bytes() for name in before} == before
        assert not [name for name in _files(disk) if name.endswith(".tmp")]


def test_a_full_disk_during_download_is_one_error_line(tmp_path, capsys, monkeypatch):
    from megzoo.registry import get_weights

    url = get_weights("resnet18").urls[0]
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / url.rsplit("/", 1)[1]).write_bytes(os.urandom(2 << 20))  # 2 MiB: more than the disk holds
    monkeypatch.setenv("MEGZOO_MIRRORS", f"{url.rsplit('/', 1)[0]}/={mirror.as_uri()}/")
    with tmpfs(tmp_path / "disk", size="1m") as disk:
        assert main(["download", "resnet18", "--to", str(disk), "--no-progress"]) == 2
        line = _last_line(capsys.readouterr().err)
        assert line.startswith("megzoo download: error: ") and "No space left on device" in line
        assert str(disk) in line
        assert not [name for name in _files(disk) if name.endswith((".part", ".tmp", ".pkl"))]


def test_a_closed_pipe_stops_the_command_quietly():
    """``megzoo list | head``: the reader is gone before the listing is written; the command stops
    with 141 and says nothing (it used to print a Broken pipe error, or a traceback)."""
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to the pipe fails with EPIPE
    try:
        proc = subprocess.run([sys.executable, "-m", "megzoo.cli", "list"], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (141, "")


def test_only_a_write_error_without_a_name_is_given_the_outputs_path(tmp_path):
    """A full disk during training names the output folder; an error of another kind without a file
    name (a data read, a worker's shared memory) is not blamed on it."""
    import errno

    from megzoo.cli.paths import naming_output

    out = tmp_path / "run"
    with pytest.raises(OSError) as full:
        with naming_output(out):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(OSError) as other:
        with naming_output(out):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
    with pytest.raises(OSError) as staged:
        with naming_output(out):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / ".last.pkl.123.abcd_x12.tmp"))
    assert (full.value.filename, other.value.filename, staged.value.filename) == (str(out), None, str(out / "last.pkl"))
