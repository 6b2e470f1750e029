"""megzoo clean: the array-level core, image health, the reports, the three methods, bad input,
``megzoo train --exclude`` and unreadable training images.

Small generated folders; the digits proof (k-fold on 1,797 images with seeded flips) is
benchmarks/bench_clean.py, its figures in docs/cleaning.md.
"""
import csv
import hashlib
import json
import os
from pathlib import Path

import cv2
import megengine
import numpy as np
import pytest

import megzoo
from megzoo.cleaning import (CleaningInputError, argmax_issues, check_images, find_label_issues, health_flags,
                             label_issues, scan_folder)
from megzoo.cleaning.health import CONSTANT_STD
from megzoo.cleaning.label_issues import check_pred_probs, near_duplicates, require_cleanlab
from megzoo.cleaning.probabilities import stratified_folds

CLASSES = ("blue", "green", "red")


# --- the array-level core -----------------------------------------------------------------------
def _confident(n=300, k=3, flips=30, seed=0):
    """Labels with ``flips`` known wrong ones and probabilities that know the truth (0.9)."""
    rng = np.random.RandomState(seed)
    truth = np.arange(n) % k
    probs = np.full((n, k), 0.1 / (k - 1))
    probs[np.arange(n), truth] = 0.9
    given = truth.copy()
    flipped = rng.choice(n, flips, replace=False)
    given[flipped] = (truth[flipped] + 1 + rng.randint(0, k - 1, flips)) % k
    return given, probs, np.isin(np.arange(n), flipped)


def test_label_issues_finds_exactly_the_flips():
    given, probs, wrong = _confident()
    found = label_issues(given, probs, ["a", "b", "c"])
    assert found.is_issue.sum() == 30
    np.testing.assert_array_equal(found.is_issue, wrong)
    np.testing.assert_allclose(found.quality[wrong], 0.05)  # self-confidence: p(given label)
    np.testing.assert_allclose(found.quality[~wrong], 0.9)
    assert set(found.ranked) == set(np.flatnonzero(wrong))
    np.testing.assert_array_equal(argmax_issues(given, probs), wrong)
    classes = found.health["classes"]
    assert [c["class"] for c in classes] == ["a", "b", "c"]
    assert sum(c["images"] for c in classes) == 300 and sum(c["label_issues"] for c in classes) == 30
    assert found.health["confused_pairs"] and sum(p["images"] for p in found.health["confused_pairs"]) == 30


def test_confident_learning_beats_argmax_when_a_class_is_underconfident():
    # class 2's images are predicted with only 0.45 on the truth (an uncertain class): argmax still
    # agrees, but a flipped label into class 2 has p(given) of 0.45 > 0.30, the per-class threshold
    n, k = 300, 3
    truth = np.arange(n) % k
    probs = np.full((n, k), 0.05)
    probs[np.arange(n), truth] = 0.9
    probs[truth == 2] = [0.3, 0.25, 0.45]
    probs /= probs.sum(axis=1, keepdims=True)
    given = truth.copy()
    given[:9:3] = 1  # three images of class 0 labelled 1
    found = label_issues(given, probs)
    assert set(np.flatnonzero(found.is_issue)) == {0, 3, 6}


def test_pred_probs_are_checked_with_the_fix():
    with pytest.raises(CleaningInputError, match=r"pred_probs has shape \(5, 2\); expected \(6, 3\): one row per "
                                                 r"image in the order megzoo clean lists them, columns in class-folder "
                                                 r"order \(a, b, c\)"):
        check_pred_probs(np.full((5, 2), 0.5), 6, ["a", "b", "c"])
    with pytest.raises(CleaningInputError, match=r"2 row\(s\) do not sum to 1 \(row 0 sums to 2\); give "
                                                 r"probabilities \(softmax of the logits\), not logits"):
        check_pred_probs(np.array([[1.0, 1.0], [2.0, 0.0], [0.5, 0.5]]), 3, ["a", "b"])
    with pytest.raises(CleaningInputError, match="negative or non-finite"):
        check_pred_probs(np.array([[np.nan, 1.0]]), 1, ["a", "b"])


def test_folds_are_stratified_and_small_classes_refused():
    labels = np.repeat([0, 1, 2], [10, 6, 3])
    folds = stratified_folds(labels[:16], 3, 0, ["a", "b"])
    for k in range(3):
        held = labels[:16][folds == k]
        assert set(held) == {0, 1}
    with pytest.raises(CleaningInputError, match=r"class 'c' has 3 usable image\(s\), fewer than the 5 folds \(every "
                                                 r"fold holds out images of every class\): lower --folds to 3 or add "
                                                 r"images to it"):
        stratified_folds(labels, 5, 0, ["a", "b", "c"])


def test_near_duplicates_pair_each_copy_with_its_original():
    rng = np.random.RandomState(0)
    f = rng.standard_normal((20, 8)).astype(np.float32)
    f[7] = f[2] + 1e-3
    f[15] = f[11] * 1.01  # an exact duplicate already reported: left out
    pairs = near_duplicates(f, exclude=[(11, 15)])
    assert [(a, b) for a, b, _ in pairs] == [(2, 7)]
    # look-alikes in feature space whose pixels differ are not near-duplicates
    thumbs = rng.standard_normal((20, 16)).astype(np.float32)
    thumbs /= np.linalg.norm(thumbs, axis=1, keepdims=True)
    assert near_duplicates(f, thumbnails=thumbs) == []
    thumbs[7] = thumbs[2]
    assert [(a, b) for a, b, _ in near_duplicates(f, thumbnails=thumbs)] == [(2, 7)]


def test_missing_cleanlab_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "cleanlab", None)
    with pytest.raises(ImportError, match=r"megzoo clean needs cleanlab >= 2.8: pip install 'megzoo\[clean\]'"):
        require_cleanlab()


# --- a folder with every kind of problem ------------------------------------------------------------
def _colour(rng, k, size=32):
    base = np.zeros((size, size, 3), np.float32)
    base[:, :, k] = 180
    return np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture()
def messy(tmp_path):
    """train/ + val/ of three colour classes (8 + 3 each), plus one image of every problem."""
    rng = np.random.RandomState(0)
    root = tmp_path / "data"
    for split, n in (("train", 8), ("val", 3)):
        for k, name in enumerate(CLASSES):
            os.makedirs(root / split / name)
            for i in range(n):
                cv2.imwrite(str(root / split / name / f"{i}.png"), _colour(rng, k))
    t = root / "train"
    (t / "blue" / "zero.png").write_bytes(b"")
    (t / "blue" / "text.jpg").write_text("not an image")
    ok, jpg = cv2.imencode(".jpg", _colour(rng, 1))
    (t / "green" / "cut.jpg").write_bytes(jpg.tobytes()[: len(jpg) // 2])
    gray = cv2.cvtColor(cv2.cvtColor(_colour(rng, 2), cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    cv2.imwrite(str(t / "red" / "gray.png"), gray)
    cv2.imwrite(str(t / "red" / "wide.png"), np.concatenate([_colour(rng, 2, 32)] * 6, axis=1))
    cv2.imwrite(str(t / "green" / "blank.png"), np.full((32, 32, 3), 90, np.uint8))
    # the same pixels in another class (a conflicting duplicate), and a training image copied into val
    (t / "red" / "copy_of_blue0.png").write_bytes((t / "blue" / "0.png").read_bytes())
    cv2.imwrite(str(root / "val" / "green" / "train_copy.bmp"), cv2.imread(str(t / "green" / "1.png")))
    return root


def _tree_digest(root) -> dict:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_image_health_finds_each_problem_and_nothing_on_clean_images(messy):
    images = scan_folder(str(messy))
    assert images.classes == list(CLASSES) and len(images) == 31 + 10  # train (with the problems) + val
    health = check_images(images.paths, progress=False)
    flags = health_flags(health)
    name = {images.relative(i): i for i in range(len(images))}
    problems = {images.relative(i): health.problem[i] for i in range(len(images)) if health.problem[i]}
    assert problems == {"train/blue/zero.png": "zero-byte file",
                        "train/blue/text.jpg": "not an image OpenCV can decode",
                        "train/green/cut.jpg": "truncated JPEG (no end-of-image marker)"}
    flagged = {kind: sorted(images.relative(i) for i in np.flatnonzero(v)) for kind, v in flags.items()}
    assert flagged == {"unreadable": ["train/blue/text.jpg", "train/blue/zero.png", "train/green/cut.jpg"],
                       "grayscale": ["train/green/blank.png", "train/red/gray.png"],  # blank is grey too
                       "odd_size": ["train/red/wide.png"], "near_constant": ["train/green/blank.png"]}
    assert health.digest[name["train/red/copy_of_blue0.png"]] == health.digest[name["train/blue/0.png"]]
    assert health.digest[name["val/green/train_copy.bmp"]] == health.digest[name["train/green/1.png"]]


def _given_probs(images):
    """Probabilities that agree with the given labels, except that train/red/0.png looks blue."""
    probs = np.full((len(images), 3), 0.05)
    probs[np.arange(len(images)), images.labels] = 0.9
    wrong = images.paths.index(os.path.join(images.root, "train", "red", "0.png"))
    probs[wrong] = [0.9, 0.05, 0.05]
    return probs


def test_given_method_writes_every_report_and_leaves_the_data_alone(messy, tmp_path):
    before = _tree_digest(messy)
    images = scan_folder(str(messy))
    np.save(tmp_path / "p.npy", _given_probs(images))
    out = tmp_path / "report"
    result = find_label_issues(str(messy), method="given", pred_probs=str(tmp_path / "p.npy"), out=str(out),
                               progress=False)
    assert _tree_digest(messy) == before  # nothing moved, deleted or rewritten
    assert sorted(os.listdir(out)) == ["contact_sheet.png", "exclude.txt", "issues.csv", "summary.json"]
    rows = list(csv.DictReader(open(out / "issues.csv", encoding="utf-8")))
    assert list(rows[0]) == ["path", "split", "given", "suggested", "p_given", "p_suggested", "label_quality",
                             "is_label_issue", "flags", "duplicate_of", "note"]
    by_path = {r["path"]: r for r in rows}
    assert [r["path"] for r in rows[:3]] == ["train/blue/text.jpg", "train/blue/zero.png", "train/green/cut.jpg"]
    assert by_path["train/blue/zero.png"]["note"] == "zero-byte file"
    red0 = by_path["train/red/0.png"]
    assert (red0["given"], red0["suggested"], red0["p_suggested"], red0["is_label_issue"]) == ("red", "blue", "0.9000",
                                                                                              "True")
    assert red0["flags"] == "label" and rows[3]["path"] == "train/red/0.png"  # label issues right after unreadable
    dup = by_path["train/red/copy_of_blue0.png"]
    assert dup["flags"] == "duplicate" and dup["duplicate_of"] == "train/blue/0.png"
    assert "copies carry different labels: blue, red" in dup["note"]
    assert by_path["train/blue/0.png"]["flags"] == "duplicate"  # conflicting: both copies flagged
    assert "copies in train and val" in by_path["val/green/train_copy.bmp"]["note"]
    assert by_path["train/red/wide.png"]["flags"] == "odd_size"
    assert by_path["train/green/blank.png"]["flags"] == "grayscale;near_constant"
    assert len(rows) == 3 + 1 + 4 + 3  # unreadable, label, duplicates (2 pairs), gray/wide/blank
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"unreadable": 3, "label": 1, "duplicate": 4, "near_duplicate": 0, "grayscale": 2,
                                 "odd_size": 1, "near_constant": 1, "outlier": 0}
    assert summary["settings"]["method"] == "given" and summary["settings"]["features"] is None
    assert summary["exact_duplicate_groups"] == 2 and summary["duplicate_groups_with_conflicts"] == 2
    assert summary["versions"]["cleanlab"].split(".")[0] == "2" and summary["readable"] == len(images) - 3
    excluded = [json.loads(line) for line in (out / "exclude.txt").read_text().splitlines() if not line.startswith("#")]
    assert excluded == [os.path.join(str(messy), r["path"]) for r in rows
                        if set(r["flags"].split(";")) & {"unreadable", "label", "duplicate"}]
    assert len(excluded) == 8
    sheet = cv2.imread(str(out / "contact_sheet.png"))
    assert sheet is not None and sheet.shape == (28 + 128 + 22, 128, 3)  # one label issue: one tile
    assert result.label_issue_paths == [os.path.join(str(messy), "train", "red", "0.png")]


def test_clean_and_train_list_the_same_classes_and_files(tmp_path):
    from megzoo.train.data import build_folder_data

    data = _colour_folder(tmp_path / "data", seed=3, size=8, n=2)
    (data / ".ipynb_checkpoints").mkdir()
    cv2.imwrite(str(data / ".ipynb_checkpoints" / "0.png"), _colour(np.random.RandomState(0), 0, 8))
    (data / "red" / "._0.png").write_bytes(b"\x00\x05\x16\x07 resource fork")  # macOS metadata beside 0.png
    (data / "red" / ".cache").mkdir()
    cv2.imwrite(str(data / "red" / ".cache" / "x.png"), _colour(np.random.RandomState(0), 2, 8))
    (data / "green" / "more").mkdir()
    cv2.imwrite(str(data / "green" / "more" / "a.png"), _colour(np.random.RandomState(0), 1, 8))
    (data / "green" / "more" / "loop").symlink_to(data / "green")  # a link back up: listed once
    images = scan_folder(str(data))
    folder = build_folder_data(str(data))
    assert images.classes == folder.classes == list(CLASSES)
    listed = [(images.relative(i), int(images.labels[i])) for i in range(len(images))]
    assert listed == [(os.path.relpath(p, str(data)), label) for p, label in folder.train.samples]
    assert [p for p, _ in listed] == ["blue/0.png", "blue/1.png", "green/0.png", "green/1.png", "green/more/a.png",
                                      "red/0.png", "red/1.png"]


def _jpeg_with_thumbnail(image, thumbnail) -> bytes:
    """A JPEG whose APP1 (EXIF) segment holds a whole small JPEG, as camera files do."""
    main = cv2.imencode(".jpg", image)[1].tobytes()
    thumb = cv2.imencode(".jpg", thumbnail)[1].tobytes()
    payload = b"Exif\x00\x00" + thumb
    return main[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + main[2:]


def test_jpeg_completeness_reads_the_structure_not_the_last_bytes(tmp_path):
    from megzoo.images import file_problem as _byte_problem

    rng = np.random.RandomState(4)
    image, thumb = _colour(rng, 0, 64), _colour(rng, 1, 8)
    whole = _jpeg_with_thumbnail(image, thumb)
    assert cv2.imdecode(np.frombuffer(whole, np.uint8), cv2.IMREAD_COLOR).shape == (64, 64, 3)
    assert _byte_problem(whole) == ""
    assert _byte_problem(whole + b"\x00\x00\x00\x18ftypmp42" + bytes(500)) == ""  # a motion photo's video after EOI
    progressive = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    assert _byte_problem(progressive + bytes(64)) == ""
    # cut inside the image's scan: the thumbnail's end marker (inside APP1) does not count
    assert _byte_problem(whole[: len(whole) - 200]) == "truncated JPEG (no end-of-image marker)"
    assert _byte_problem(progressive[:-2]) == "truncated JPEG (no end-of-image marker)"


def test_health_sees_images_as_the_trainer_reads_them(tmp_path):
    rng = np.random.RandomState(5)
    eight = _colour(rng, 2, 16)
    cv2.imwrite(str(tmp_path / "a.png"), eight)
    cv2.imwrite(str(tmp_path / "a16.png"), eight.astype(np.uint16) * 257)  # the same picture, 16-bit
    cv2.imwrite(str(tmp_path / "dark16.png"), eight.astype(np.uint16) * 2)  # a dark 16-bit image stays dark
    cv2.imwrite(str(tmp_path / "alpha.png"), np.dstack([eight, np.full((16, 16), 7, np.uint8)]))
    paths = [str(tmp_path / n) for n in ("a.png", "a16.png", "dark16.png", "alpha.png")]
    health = check_images(paths, progress=False)
    assert health.problem == ["", "", "", ""]
    assert health.digest[0] == health.digest[1] == health.digest[3] != health.digest[2]
    assert health.std[2] < CONSTANT_STD  # not stretched to full range as a per-image rescale would
    np.testing.assert_array_equal(megzoo.read_image(paths[1]), eight)  # what the trainer reads


def test_a_class_with_no_readable_image_is_reported_not_fatal(messy, tmp_path):
    broken = messy / "train" / "zebra"
    broken.mkdir()
    (broken / "0.jpg").write_bytes(b"")
    (broken / "1.jpg").write_text("no")
    (messy / "val" / "zebra").mkdir()
    images = scan_folder(str(messy))
    probs = np.full((len(images), 4), 0.05)
    probs[np.arange(len(images)), images.labels] = 0.85
    wrong = images.paths.index(os.path.join(images.root, "train", "red", "0.png"))
    probs[wrong] = [0.85, 0.05, 0.05, 0.05]
    unreadable = [i for i, p in enumerate(images.paths) if os.path.basename(p) in
                  ("zero.png", "text.jpg", "cut.jpg", "0.jpg", "1.jpg")]
    probs[unreadable] = np.nan  # no prediction for files that cannot be read
    np.save(tmp_path / "p.npy", probs)
    result = find_label_issues(str(messy), method="given", pred_probs=str(tmp_path / "p.npy"), out=str(tmp_path / "r"),
                               progress=False)
    assert result.summary["classes_without_readable_images"] == ["zebra"]
    assert result.summary["counts"]["unreadable"] == 5 and result.summary["counts"]["label"] == 1
    assert result.label_issue_paths == [images.paths[wrong]]
    assert result.labels.suggested[np.flatnonzero(result.labels.is_issue)].tolist() == [0]  # blue, in all classes
    probs[images.paths.index(os.path.join(images.root, "train", "red", "1.png"))] = np.nan
    np.save(tmp_path / "p2.npy", probs)
    with pytest.raises(CleaningInputError, match=r"--pred-probs has no probabilities \(NaN\) for 1 readable "
                                                 r"image\(s\), the first train/red/1.png: give a row for every "
                                                 r"readable image"):
        find_label_issues(str(messy), method="given", pred_probs=str(tmp_path / "p2.npy"), progress=False)


def test_bad_input_is_named_with_the_fix(messy, tmp_path):
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    with pytest.raises(CleaningInputError, match=r"holds no image files in its class folders"):
        find_label_issues(str(empty), method="given", pred_probs=str(tmp_path / "x.npy"), progress=False)
    with pytest.raises(CleaningInputError, match="has no class sub-folders"):
        scan_folder(str(tmp_path / "empty" / "a"))
    with pytest.raises(CleaningInputError, match=r"method 'given' needs the probabilities: --pred-probs FILE.npy"):
        find_label_issues(str(messy), method="given", progress=False)
    np.save(tmp_path / "short.npy", np.full((4, 3), 1 / 3))
    with pytest.raises(CleaningInputError, match=r"--pred-probs short.npy has shape \(4, 3\); expected \(41, 3\)"):
        find_label_issues(str(messy), method="given", pred_probs=str(tmp_path / "short.npy"), progress=False)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(CleaningInputError, match="is not a plain .npy array of probabilities"):
        find_label_issues(str(messy), method="given", pred_probs=str(tmp_path / "objects.npy"), progress=False)
    with pytest.raises(CleaningInputError, match=r"class 'blue' has 11 usable image\(s\), fewer than the 12 "
                                                 r"folds \(every fold holds out images of every class\): lower "
                                                 r"--folds to 11"):
        find_label_issues(str(messy), method="kfold", folds=12, progress=False)
    with pytest.raises(CleaningInputError, match=r"class 'c' has 1 usable image\(s\), fewer than the 2 folds "
                                                 r"\(every fold holds out images of every class\): add at least 1 "
                                                 r"image\(s\) to it \(2 folds need 2 images of every class\)$"):
        stratified_folds(np.array([0, 0, 1, 1, 2]), 2, 0, ["a", "b", "c"])
    with pytest.raises(CleaningInputError, match=r"exclude_flags dupe unknown: choose from unreadable, label, "
                                                 r"duplicate, near_duplicate"):
        find_label_issues(str(messy), method="given", pred_probs=str(tmp_path / "x.npy"), exclude_flags=["dupe"])


def _colour_folder(data, seed, size, n=6):
    """DATA/CLASS/i.png: ``n`` noisy images per colour class."""
    rng = np.random.RandomState(seed)
    for k, name in enumerate(CLASSES):
        os.makedirs(data / name)
        for i in range(n):
            cv2.imwrite(str(data / name / f"{i}.png"), _colour(rng, k, size))
    return data


def test_kfold_trains_a_model_per_fold_and_predicts_what_it_did_not_see(tmp_path):
    data = _colour_folder(tmp_path / "data", seed=1, size=16)
    out = tmp_path / "clean"
    result = find_label_issues(str(data), method="kfold", folds=2, epochs=1, out=str(out), progress=False,
                               input_size=16, train_settings={"batch_size": 6, "hflip": 0.0})
    assert result.pred_probs.shape == (18, 3)
    np.testing.assert_allclose(result.pred_probs.sum(axis=1), 1.0, atol=1e-6)
    (run,) = (out / "folds").glob("plan-*")
    plan = json.loads((run / "folds.json").read_text())
    assert sorted(np.bincount(plan["folds"]).tolist()) == [9, 9]
    assert all(np.bincount(np.array(plan["labels"])[np.array(plan["folds"]) == k]).tolist() == [3, 3, 3]
               for k in (0, 1))
    assert (run / "fold-0" / "last.pkl").is_file() and (run / "fold-1" / "last.pkl").is_file()
    s = result.summary["settings"]
    assert s["method"] == "kfold" and s["train"]["input_size"] == 16 and s["features"] == "last fold's model"
    assert len(s["fold_top1_vs_given"]) == 2 and s["work_dir"] == str(run)
    # the same plan again resumes each finished fold; another plan (seed) trains in its own folder
    again = find_label_issues(str(data), method="kfold", folds=2, epochs=1, out=str(out), progress=False,
                              input_size=16, train_settings={"batch_size": 6, "hflip": 0.0})
    assert "resumed from" in (run / "fold-1" / "log.txt").read_text()
    np.testing.assert_array_equal(again.pred_probs, result.pred_probs)
    other = find_label_issues(str(data), method="kfold", folds=2, epochs=1, out=str(out), progress=False, seed=1,
                              input_size=16, train_settings={"batch_size": 6, "hflip": 0.0})
    runs = sorted((out / "folds").glob("plan-*"))
    assert len(runs) == 2 and other.summary["settings"]["work_dir"] != str(run)
    assert "resumed from" not in (Path(other.summary["settings"]["work_dir"]) / "fold-0" / "log.txt").read_text()


def test_probe_uses_a_local_backbone_and_finds_a_near_copy(tmp_path):
    data = _colour_folder(tmp_path / "data", seed=2, size=32)
    near = cv2.imread(str(data / "green" / "2.png"))
    near[0, 0] = near[0, 0] // 2 + 1  # one pixel changed: not an exact duplicate
    cv2.imwrite(str(data / "green" / "2_edit.png"), near)
    np.random.seed(0)
    megengine.random.seed(0)
    weights = tmp_path / "r18.pkl"
    megengine.save({k: np.array(v) for k, v in megzoo.resnet18().state_dict().items()}, str(weights))
    result = find_label_issues(str(data), method="probe", folds=3, model="resnet18", weights=str(weights),
                               input_size=32, progress=False)
    rows = {r["path"]: r for r in result.rows}
    assert rows["green/2_edit.png"]["flags"].split(";")[-1] in ("near_duplicate", "outlier")
    assert "near_duplicate" in rows["green/2_edit.png"]["flags"]
    assert rows["green/2_edit.png"]["duplicate_of"] == "green/2.png"
    assert result.summary["settings"]["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert result.pred_probs.shape == (19, 3)


def test_cli_clean_prints_the_report_and_json(messy, tmp_path, capsys):
    from megzoo.cli import main

    images = scan_folder(str(messy))
    np.save(tmp_path / "p.npy", _given_probs(images))
    code = main(["clean", str(messy), "--method", "given", "--pred-probs", str(tmp_path / "p.npy"),
                 "--out", str(tmp_path / "r"), "--no-progress"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "41 images, 3 classes: 11 flagged (unreadable 3, label 1, duplicate 4, grayscale 2" in printed.out
    assert "  train/red/0.png: given red, suggested blue (p 0.9000)" in printed.out
    assert f"next: megzoo train --data {messy} --exclude {tmp_path / 'r' / 'exclude.txt'}" in printed.out
    code = main(["clean", str(messy), "--method", "given", "--pred-probs", str(tmp_path / "p.npy"),
                 "--out", str(tmp_path / "r2"), "--no-progress", "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["label_issues"] == 1
    assert main(["clean", str(messy), "--pred-probs", str(tmp_path / "p.npy")]) == 2
    assert "--pred-probs goes with --method given" in capsys.readouterr().err


# --- training on the cleaned data ------------------------------------------------------------------
def _train_config(data, out, **kw):
    from megzoo.train import TrainConfig

    values = dict(model="resnet18", data=str(data), output=str(out), input_size=16, resize_size=16, epochs=1,
                  batch_size=4, lr=0.01, warmup_epochs=0, workers=0, progress=False, plot=False, device="cpu",
                  cpu_threads=1, eval_batch_size=8)
    values.update(kw)
    return TrainConfig(**values)


def test_train_exclude_leaves_out_the_listed_images(messy, tmp_path, capsys):
    from megzoo.train.trainer import Trainer

    listed = tmp_path / "exclude.txt"
    listed.write_text("# comment\n" + "\n".join([str(messy / "train" / "blue" / "zero.png"), "train/blue/text.jpg",
                                                 "train/green/cut.jpg", "val/green/train_copy.bmp"]) + "\n")
    trainer = Trainer(_train_config(messy, tmp_path / "run", exclude=str(listed)))
    assert len(trainer.data.train) == 31 - 3 and len(trainer.data.val) == 10 - 1
    assert trainer.data.excluded == {"train": 3, "val": 1, "listed": 4, "file": str(listed)}
    assert "(3 training and 1 validation images left out, of 4 listed in" in trainer.describe()
    other = tmp_path / "other.txt"
    other.write_text("/nowhere/a.png\n")
    with pytest.raises(ValueError, match=r"none of the 1 images listed in .*other.txt is in .* \(was the list written "
                                         r"for another folder\?"):
        Trainer(_train_config(messy, tmp_path / "run2", exclude=str(other)))


def test_an_unreadable_training_image_is_named_and_replaced(messy, tmp_path, capsys):
    from megzoo.train.data import ImageSamples

    blue = messy / "train" / "blue"
    train = ImageSamples([(str(blue / "zero.png"), 0), (str(blue / "0.png"), 0)], replace_unreadable=True)
    image, label = train[0]
    np.testing.assert_array_equal(image, cv2.imread(str(messy / "train" / "blue" / "0.png")))
    train[0]
    err = capsys.readouterr().err
    assert err.count("cannot read image") == 1  # once per file
    assert f"megzoo: cannot read image {messy / 'train' / 'blue' / 'zero.png'} (zero-byte file): " \
           "replaced by the next readable image of the training set" in err
    val = ImageSamples([(str(messy / "train" / "blue" / "text.jpg"), 1)])
    with pytest.raises(ValueError, match=r"cannot read image .*text.jpg .*`megzoo clean DATA` lists every such file; "
                                         r"leave them out with --exclude exclude.txt"):
        val[0]
