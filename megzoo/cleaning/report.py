"""What ``megzoo clean`` writes: ``issues.csv``, ``summary.json``, ``contact_sheet.png``, ``exclude.txt``.

Every file is written atomically into the output folder (never into the data folder); a user's
image is only ever read. ``issues.csv`` has one row per image with any flag (columns:
:data:`CSV_COLUMNS`), unreadable files first, then label issues worst first, then the rest by
path; ``exclude.txt`` lists the absolute paths of the images whose flags are in
``exclude_flags`` (default: unreadable, label, duplicate), for ``megzoo train --exclude``: ``#``
comment lines, then one path a line written as a JSON string (``"/data/cat/a\\nb.jpg"``), so
that any file name, one holding a newline included, reads back exactly
(:func:`megzoo.train.data.read_exclude_list`).
"""
import csv
import io
import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..host import atomic_write_bytes, atomic_write_text
from ..images import ImageError, read_image

__all__ = ["CSV_COLUMNS", "FLAGS", "DEFAULT_EXCLUDE_FLAGS", "write_issues_csv", "write_exclude", "write_summary",
           "contact_sheet"]

#: every flag an image can carry, in the order ``flags`` lists them
FLAGS = ("unreadable", "label", "duplicate", "near_duplicate", "grayscale", "odd_size", "near_constant", "outlier")
DEFAULT_EXCLUDE_FLAGS = ("unreadable", "label", "duplicate")
CSV_COLUMNS = ("path", "split", "given", "suggested", "p_given", "p_suggested", "label_quality", "is_label_issue",
               "flags", "duplicate_of", "note")


def write_issues_csv(path: str, rows: Sequence[Dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in CSV_COLUMNS})
    # a file name's bytes that are not UTF-8 are written back as they are (surrogateescape), so the
    # row names the very file instead of the write failing
    atomic_write_bytes(path, buffer.getvalue().encode("utf-8", errors="surrogateescape"))
    return path


def _json_line(path: str) -> str:
    """``path`` as a one-line JSON string: non-ASCII letters kept as they are, unless the name holds
    bytes that are not UTF-8 (then ``\\udcxx`` escapes, which read back to the same name)."""
    text = json.dumps(path, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(path)
    return text


def write_exclude(path: str, rows: Sequence[Dict], root: str, flags: Sequence[str] = DEFAULT_EXCLUDE_FLAGS) -> int:
    """Write the images of ``rows`` carrying any of ``flags``; returns how many."""
    chosen = [r for r in rows if set(r["flags"].split(";")) & set(flags)]
    lines = [f"# megzoo clean: {len(chosen)} images of {_json_line(root)} flagged {', '.join(flags)}",
             "# use: megzoo train --data DATA --exclude THIS_FILE (absolute paths, one JSON string a line; "
             "the images stay where they are)"]
    lines += [_json_line(os.path.join(root, r["path"])) for r in chosen]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return len(chosen)


def write_summary(path: str, summary: Dict) -> str:
    atomic_write_text(path, json.dumps(summary, indent=2) + "\n")
    return path


def _thumbnail(path: str, side: int) -> np.ndarray:
    import cv2

    try:
        image = read_image(path)  # megzoo's checks: a truncated or too large file is not decoded
    except ImageError:
        image = None
    if image is None:
        image = np.full((side, side, 3), 64, np.uint8)
        cv2.line(image, (0, 0), (side - 1, side - 1), (0, 0, 255), 2)
        return image
    h, w = image.shape[:2]
    scale = side / max(h, w)
    interp = cv2.INTER_NEAREST if scale >= 2 else cv2.INTER_AREA
    image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=interp)
    canvas = np.full((side, side, 3), 255, np.uint8)
    top, left = (side - image.shape[0]) // 2, (side - image.shape[1]) // 2
    canvas[top:top + image.shape[0], left:left + image.shape[1]] = image
    return canvas


def contact_sheet(path: str, items: Sequence[Dict], columns: int = 8, side: int = 128,
                  title: Optional[str] = None) -> Optional[str]:
    """A PNG grid of ``items`` (dicts with ``file`` and ``caption``), each image ``side`` px
    with its caption below; None when there is nothing to show."""
    import cv2

    if not items:
        return None
    columns = min(columns, len(items))
    rows = -(-len(items) // columns)
    caption_h, title_h = 22, 28 if title else 0
    sheet = np.full((title_h + rows * (side + caption_h), columns * side, 3), 255, np.uint8)
    if title:
        cv2.putText(sheet, title[:120], (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for n, item in enumerate(items):
        r, c = divmod(n, columns)
        y, x = title_h + r * (side + caption_h), c * side
        sheet[y:y + side, x:x + side] = _thumbnail(item["file"], side)
        cv2.rectangle(sheet, (x, y), (x + side - 1, y + side - 1), (200, 200, 200), 1)
        text = item["caption"]
        scale = min(0.42, 0.42 * 18 / max(len(text), 1))
        cv2.putText(sheet, text, (x + 3, y + side + 15), cv2.FONT_HERSHEY_SIMPLEX, max(scale, 0.28), (0, 0, 160), 1,
                    cv2.LINE_AA)
    ok, encoded = cv2.imencode(".png", sheet)
    if not ok:
        raise RuntimeError("OpenCV could not encode the contact sheet")
    atomic_write_bytes(path, encoded.tobytes())
    return path


def sort_rows(rows: List[Dict]) -> List[Dict]:
    """Unreadable first, then label issues by label quality (worst first), then by path."""
    def key(r):
        flags = r["flags"].split(";")
        if "unreadable" in flags:
            return (0, 0.0, r["path"])
        if "label" in flags:
            return (1, float(r["label_quality"]), r["path"])
        return (2, 0.0, r["path"])
    return sorted(rows, key=key)
