"""Hostile image folders and image files (issue 30, items 4, 5, 7, 18, 19): link loops and links
out of a class folder (one lister for train, eval and clean), images too large to decode, a
truncated JPEG in training, a file name with a newline in ``exclude.txt``.

Tiny files written with OpenCV into ``tmp_path``; what could hang or take gigabytes runs in a
subprocess with a timeout or a measured peak.
"""
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from megzoo.cleaning import check_images, scan_folder
from megzoo.evaluate import find_samples
from megzoo.images import ImageError, read_image
from megzoo.train.data import ImageSamples, build_folder_data, read_exclude_list

REPO = Path(__file__).resolve().parents[1]
LINK_NOTE = ("images reached through such a link belong to no class and are left out; to use them, move them (or "
             "links to the image files) into the class folder\n")


def _image(path: Path, value: int, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((size, size, 3), value, np.uint8))
    return path


def _two_classes(root: Path) -> Path:
    _image(root / "0" / "a.jpg", 40)
    _image(root / "1" / "b.jpg", 200)
    return root


def _run(code: str, *args, env=None, timeout=120) -> subprocess.CompletedProcess:
    environ = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    try:
        proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                              timeout=timeout, env=environ)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {timeout} s (a link loop followed without end?)")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


# --- item 4: link loops -----------------------------------------------------------------------------
def test_eval_ends_on_link_loops_and_lists_each_image_once(tmp_path):
    data = _two_classes(tmp_path / "data")
    os.symlink("..", data / "1" / "loopdir")
    os.symlink("../1", data / "1" / "sub")
    code = ("import json, sys\nfrom megzoo.evaluate import find_samples\n"
            "print(json.dumps(find_samples(sys.argv[1], num_classes=2)))")
    proc = _run(code, data, timeout=90)
    samples, mode = json.loads(proc.stdout)
    assert (samples, mode) == ([[str(data / "0" / "a.jpg"), 0], [str(data / "1" / "b.jpg"), 1]], "index")
    assert proc.stderr == (f"megzoo: skipped 1 link to a folder outside its class folder under {data} "
                           f"({data / '1' / 'loopdir'} -> {data}): " + LINK_NOTE)


def test_train_eval_and_clean_list_a_self_link_once(tmp_path, capsys):
    data = _two_classes(tmp_path / "data")
    os.symlink(".", data / "1" / "self")
    expected = [(str(data / "0" / "a.jpg"), 0), (str(data / "1" / "b.jpg"), 1)]
    assert find_samples(data, num_classes=2) == (expected, "index")  # was 42 images
    assert build_folder_data(str(data)).train.samples == expected
    images = scan_folder(str(data))
    assert list(zip(images.paths, images.labels.tolist())) == expected
    assert capsys.readouterr().err == ""  # a link inside its class folder is fine: nothing to say


# --- item 5: a link out of the class folder -----------------------------------------------------------
def test_a_link_out_of_its_class_folder_files_nothing_under_that_class(tmp_path, capsys):
    data = _two_classes(tmp_path / "data")
    os.symlink("..", data / "1" / "loopdir")  # 0/a.jpg would be class 1 through it
    os.symlink("../0", data / "1" / "zero")
    expected = [(str(data / "0" / "a.jpg"), 0), (str(data / "1" / "b.jpg"), 1)]
    said = (f"megzoo: skipped 2 links to a folder outside its class folder under {data} (the first: "
            f"{data / '1' / 'loopdir'} -> {data}): " + LINK_NOTE)
    assert build_folder_data(str(data)).train.samples == expected
    assert capsys.readouterr().err == said  # once, with how many and the first
    images = scan_folder(str(data))
    assert list(zip(images.paths, images.labels.tolist())) == expected
    assert capsys.readouterr().err == said
    assert find_samples(data, num_classes=2) == (expected, "index")
    assert capsys.readouterr().err == said


# --- item 7: images too large to decode ------------------------------------------------------------
def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height RGB pixels and holds none (a few dozen bytes)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


def test_an_image_over_the_pixel_bound_is_refused_by_every_reader(tmp_path, monkeypatch, capsys):
    from megzoo.transforms import EvalPreprocessor

    huge = tmp_path / "huge.png"
    huge.write_bytes(_png_header(20000, 20000))
    why = ("too large: 20000x20000 pixels (400.0 megapixels), over the limit of 256 megapixels (set "
           "MEGZOO_MAX_IMAGE_PIXELS to allow more)")
    with pytest.raises(ImageError, match=rf"^{huge} is {why.replace('(', '[(]').replace(')', '[)]')}$"):
        read_image(huge)
    with EvalPreprocessor({"input_size": 8, "resize_size": 8}) as pre:  # predict and eval
        with pytest.raises(ImageError, match=rf"^{huge} is too large: 20000x20000 pixels"):
            pre([str(huge)])
    good = _image(tmp_path / "good.png", 90)
    image, label = ImageSamples([(str(huge), 0), (str(good), 1)], replace_unreadable=True)[0]  # train
    assert label == 1 and image.shape == (8, 8, 3)
    assert capsys.readouterr().err.startswith(f"megzoo: cannot read image {huge} ({why}): replaced by the next")
    with pytest.raises(ValueError, match=rf"^cannot read image {huge} \(too large: 20000x20000 pixels"):
        ImageSamples([(str(huge), 0)])[0]  # validation
    assert check_images([str(huge)], progress=False).problem == ["too large to check" + why[len("too large"):]]
    from megzoo.inference.export import _real_input  # export's parity image (--image)
    with pytest.raises(ImageError, match=rf"^{huge} is too large: 20000x20000 pixels"):
        _real_input((1, 3, 8, 8), huge, (0, 0, 0), (1, 1, 1), "BGR")
    # a JPEG's size comes from its frame header; the bound can be set (here lowered) per process
    jpeg = bytearray(cv2.imencode(".jpg", np.full((8, 8, 3), 90, np.uint8))[1].tobytes())
    frame = jpeg.find(b"\xff\xc0")
    jpeg[frame + 5:frame + 9] = struct.pack(">HH", 1000, 1200)  # height, width
    monkeypatch.setenv("MEGZOO_MAX_IMAGE_PIXELS", "1_000_000")
    with pytest.raises(ImageError, match=r"^<bytes> is too large: 1200x1000 pixels \(1\.2 megapixels\), over the "
                                         r"limit of 1 megapixels"):
        read_image(bytes(jpeg), "<bytes>")
    monkeypatch.setenv("MEGZOO_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ValueError, match=r"^MEGZOO_MAX_IMAGE_PIXELS must be a positive whole number of pixels "
                                         r"\(e\.g\. 200000000\), got 'lots'$"):
        read_image(good)


MEASURE = """
import json, sys
from megzoo.cleaning.health import check_images

def status(key):  # kB
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":"))

def growth(paths):
    \"\"\"(problems, peak resident memory above the start in MB) of check_images(paths).\"\"\"
    open("/proc/self/clear_refs", "w").write("5")  # Linux: the peak (VmHWM) restarts from now
    start = status("VmRSS")
    health = check_images(paths, progress=False, workers=1)
    return health.problem, (status("VmHWM") - start) / 1e3

over, over_mb = growth([sys.argv[1]])
under, under_mb = growth([sys.argv[2]])
print(json.dumps({"over": over, "over_mb": over_mb, "under": under, "under_mb": under_mb}))
"""


def test_clean_reads_large_images_in_bounded_memory(tmp_path):
    """A 16-megapixel image over a 10-megapixel bound costs nothing; a 9-megapixel one under it
    costs what OpenCV's decoder takes (about 2 x 27 MB) and a grey copy, not the 29 bytes a pixel
    of float64 statistics (about 300 MB)."""
    over, under = tmp_path / "over.png", tmp_path / "under.png"
    cv2.imwrite(str(over), np.zeros((4000, 4000, 3), np.uint8))
    ramp = np.add.outer(np.arange(3000) % 256, np.arange(3000) % 256).astype(np.uint8)  # compresses small
    cv2.imwrite(str(under), np.dstack([ramp, ramp // 2, ramp // 3]))
    proc = _run(MEASURE, over, under, env={"MEGZOO_MAX_IMAGE_PIXELS": "10000000"})
    found = json.loads(proc.stdout)
    assert found["over"] == ["too large to check: 4000x4000 pixels (16.0 megapixels), over the limit of 10 "
                             "megapixels (set MEGZOO_MAX_IMAGE_PIXELS to allow more)"]
    assert found["over_mb"] < 20, found
    assert found["under"] == [""] and found["under_mb"] < 100, found
    image = np.dstack([ramp, ramp // 2, ramp // 3])[:200, :300]
    cv2.imwrite(str(tmp_path / "small.png"), image)
    assert check_images([str(tmp_path / "small.png")], progress=False).std == [pytest.approx(image.std(), abs=1e-9)]


# --- item 18: a truncated JPEG in training ------------------------------------------------------------
def test_training_refuses_a_truncated_jpeg_by_name_as_predict_and_clean_do(tmp_path, capfd):
    data = tmp_path / "data"
    whole = cv2.imencode(".jpg", (np.random.RandomState(0).rand(64, 64, 3) * 255).astype(np.uint8))[1].tobytes()
    cut = data / "0" / "cut.jpg"
    cut.parent.mkdir(parents=True)
    cut.write_bytes(whole[: len(whole) * 3 // 5])
    good = _image(data / "0" / "good.jpg", 90)
    _image(data / "1" / "other.jpg", 200)
    why = "truncated JPEG (no end-of-image marker)"
    train = build_folder_data(str(data)).train
    assert train.samples[0] == (str(cut), 0)
    image, label = train[0]
    np.testing.assert_array_equal(image, read_image(good))  # the next readable image, not a grey-filled one
    err = capfd.readouterr().err
    assert err == (f"megzoo: cannot read image {cut} ({why}): replaced by the next readable image of the training "
                   "set; `megzoo clean DATA` lists every such file, and --exclude exclude.txt leaves them out\n")
    with pytest.raises(ValueError, match=rf"^cannot read image {cut} \({why.replace('(', '[(]').replace(')', '[)]')}"
                                         r"\): `megzoo clean DATA` lists every such file"):
        ImageSamples([(str(cut), 0)])[0]
    with pytest.raises(ImageError, match=rf"^{cut} is not an image OpenCV can decode: truncated JPEG"):
        read_image(cut)  # predict and eval
    assert check_images([str(cut)], progress=False).problem == [why]  # clean
    assert "Premature end of JPEG file" not in capfd.readouterr().err  # libjpeg never saw it


# --- item 19: a file name with a newline in exclude.txt ------------------------------------------------
def test_exclude_list_keeps_a_file_name_with_a_newline_on_one_line(tmp_path):
    from megzoo.cleaning.report import write_exclude

    data = tmp_path / "data"
    odd = _image(data / "red" / "a\nb.png", 10)
    _image(data / "red" / "ok.png", 20)
    _image(data / "blue" / "x y.png", 30)
    _image(data / "blue" / "z.png", 40)
    out = tmp_path / "exclude.txt"
    rows = [{"path": "red/a\nb.png", "flags": "unreadable"}, {"path": "blue/x y.png", "flags": "label"},
            {"path": "blue/z.png", "flags": "grayscale"}]
    assert write_exclude(str(out), rows, str(data)) == 2
    listed = [line for line in out.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    assert [json.loads(line) for line in listed] == [str(odd), str(data / "blue" / "x y.png")]
    assert read_exclude_list(str(out), str(data)) == [str(odd), str(data / "blue" / "x y.png")]
    folder = build_folder_data(str(data), exclude=str(out))
    assert folder.excluded == {"train": 2, "val": 0, "listed": 2, "file": str(out)}
    assert [os.path.relpath(p, data) for p, _ in folder.train.samples] == ["blue/z.png", "red/ok.png"]
    plain = tmp_path / "plain.txt"  # lists written before: one plain path a line, still read
    plain.write_text("# old\nblue/x y.png\n" + str(data / "red" / "ok.png") + "\n", encoding="utf-8")
    assert build_folder_data(str(data), exclude=str(plain)).excluded["train"] == 2


def test_issues_csv_names_a_file_whose_name_is_not_utf8(tmp_path):
    """A name's bytes that are not UTF-8 (``os.fsdecode`` gives ``\\udcxx``) are written back as they
    are: the report names the very file instead of ``clean`` failing with UnicodeEncodeError."""
    from megzoo.cleaning.report import write_issues_csv

    name = os.fsdecode(b"red/caf\xe9.png")  # Latin-1 bytes in a UTF-8 file system
    out = tmp_path / "issues.csv"
    write_issues_csv(str(out), [{"path": name, "flags": "grayscale"}])
    assert out.read_bytes().splitlines()[1].startswith(b"red/caf\xe9.png,")
