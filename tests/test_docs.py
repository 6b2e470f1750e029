"""The docs: scripts/gen_docs.py's --check sees every stale generated table, every generated table has a
generator, every relative link (and its #anchor) resolves, and no page in docs/ is over 300 lines."""
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GEN_DOCS = ROOT / "scripts" / "gen_docs.py"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "benchmarks/results").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^()\s]+)\)")
MARKER = re.compile(r"<!-- BEGIN ([\w-]+) -->")


def gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", GEN_DOCS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prose(path: Path) -> str:
    """The page without its fenced code blocks (links there are examples, not links)."""
    return re.sub(r"^ *```.*?^ *```", "", path.read_text(), flags=re.S | re.M)


def anchors(path: Path) -> set:
    """GitHub's heading anchors of a Markdown page: lower case, punctuation dropped, spaces as hyphens."""
    seen: dict = {}
    for heading in re.findall(r"^#+ (.+)$", prose(path), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
        yield slug if seen[slug] == 0 else f"{slug}-{seen[slug]}"


def test_check_names_every_stale_generated_table(tmp_path):
    """A copy of the pages with one row of every generated table edited: --check exits 1 naming each table."""
    tables = gen_docs().TABLES
    expected = []
    for page, names in tables.items():
        text = (ROOT / page).read_text()
        for name in names:
            text, edited = re.subn(rf"(<!-- BEGIN {name} -->\n[^\n]*)", r"\1 (edited)", text)
            assert edited == 1, f"{page}: marker {name}"
            expected.append(f"{page} ({name})")
        (tmp_path / page).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / page).write_text(text)
    result = subprocess.run([sys.executable, str(GEN_DOCS), "--check", "--pages", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout == f"stale generated tables: {', '.join(expected)}; run python scripts/gen_docs.py\n"
    current = subprocess.run([sys.executable, str(GEN_DOCS), "--pages", str(tmp_path)], capture_output=True, text=True)
    assert current.returncode == 0, current.stderr
    assert all((tmp_path / page).read_text() == (ROOT / page).read_text() for page in tables)


def test_check_passes_on_a_current_copy(tmp_path):
    """The same copy unedited: --check exits 0 and prints nothing."""
    for page in gen_docs().TABLES:
        (tmp_path / page).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / page, tmp_path / page)
    result = subprocess.run([sys.executable, str(GEN_DOCS), "--check", "--pages", str(tmp_path)],
                            capture_output=True, text=True)
    assert (result.returncode, result.stdout) == (0, ""), result.stderr


def test_every_generated_table_has_a_generator():
    """Each BEGIN marker in README.md, docs/ and benchmarks/results/ is one gen_docs.TABLES regenerates."""
    tables = gen_docs().TABLES
    found = {(str(p.relative_to(ROOT)), name) for p in PAGES for name in MARKER.findall(p.read_text())}
    assert found == {(page, name) for page, names in tables.items() for name in names}


def test_relative_links_resolve():
    """Every relative link of README.md, docs/ and benchmarks/results/ names a file that exists, and its
    #anchor a heading of that page."""
    broken = []
    for page in PAGES:
        for target in LINK.findall(prose(page)):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in set(anchors(path)):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert broken == []


def test_docs_pages_are_at_most_300_lines():
    """The guides stay short: the run-by-run record lives in benchmarks/results/."""
    long = {p.name: n for p in (ROOT / "docs").glob("*.md") if (n := len(p.read_text().splitlines())) > 300}
    assert long == {}
