"""Regenerate the tables in docs/ from the package's data (models and weights), between the
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


TABLES = {"docs/models.md": {"models-table": models_table}, "docs/weights.md": {"weights-table": weights_table}}


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
