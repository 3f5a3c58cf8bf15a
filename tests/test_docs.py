"""README.md and docs/: the method's section numbers that code cites, links, size, and figures traceable to results files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
METHOD = ROOT / "docs" / "method.md"
RESULTS = ROOT / "benchmarks" / "results"

# What each section of docs/method.md is about, and phrases that code, configs and tests citing
# it rely on (a reference `docs/method.md s.N` must find them in section N).
SECTIONS = {
    1: ("idea", ["peak", "RED blocks"]),
    2: ("deriving the student", ["resnext18-2-21221", "resnext18-4-11221", "resnext18-8-11211", "[8,1,1,2,2,1]",
                                 "layer4 first, then the max-pool, then layer3"]),
    3: ("the red block", ["y = x * g + r", "sigmoid(BN(conv_1x1(x)))", "ReLU6(BN(conv_3x3(x)))"]),
    4: ("the red loss", ["1 - cos", "temperature 2..4", "0.5 * CE + 0.5 * mean_k(alpha_k * L_k)"]),
    5: ("pairing rule", ["resolutions", "layer4.0", "features.14.conv.3", "MobileNetV3-small the authors list no pairs"]),
    6: ("training recipes", ["RandAugment(2, 10)", "180, 240 and 270", "student+", "batch 512"]),
    7: ("baselines", ["FitNet 100", "AT 1000", "MLLD"]),
    8: ("reported results", ["65.23", "84.80", "43-95%"]),
    9: ("peak-memory conventions", ["3920 KiB", "9408 KiB", "1372 kB", "7056 KiB"]),
    10: ("mistakes", ["train mode", "conv groups", "tracemalloc"]),
}
REFERENCE = re.compile(r"docs/method\.md(?:\s+section\s+|\s+s\.)(\d+)(?:-(\d+))?")


def _method_sections() -> dict[int, tuple[str, str]]:
    parts = re.split(r"^## (\d+)\. (.+)$", METHOD.read_text(), flags=re.M)
    return {int(n): (title, body) for n, title, body in zip(parts[1::3], parts[2::3], parts[3::3])}


def test_method_has_the_ten_sections_in_order():
    sections = _method_sections()
    assert list(sections) == list(range(1, 11))
    for n, (topic, phrases) in SECTIONS.items():
        title, body = sections[n]
        assert topic in title.lower(), (n, title)
        for phrase in phrases:
            assert phrase in body, f"docs/method.md s.{n} ({title}) lacks {phrase!r}"


def test_every_method_reference_names_an_existing_section():
    sections = _method_sections()
    found = 0
    for folder in ("src", "tests", "benchmarks", "configs"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix not in (".py", ".yaml", ".md") or not path.is_file():
                continue
            for m in REFERENCE.finditer(path.read_text()):
                first, last = int(m.group(1)), int(m.group(2) or m.group(1))
                for n in range(first, last + 1):
                    assert n in sections, f"{path.relative_to(ROOT)}: {m.group(0)} has no section {n}"
                found += 1
    assert found > 20
    assert "METHOD.md" not in README.read_text()


@pytest.mark.parametrize("doc", ["README.md"] + sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")))
def test_relative_links_resolve(doc):
    path = ROOT / doc
    for target in re.findall(r"\]\(([^)]+)\)", path.read_text()):
        if target.startswith(("http:", "https:", "#")):
            continue
        assert (path.parent / target.split("#")[0]).exists(), f"{doc}: broken link {target}"


def test_readme_is_a_short_guide():
    text = README.read_text()
    assert len(text.encode()) <= 12 * 1024, "README.md should stay a guide of at most ~12 KB"
    assert text.index("make demo") < text.index("make test") < text.index("## What it does")
    for command in ("memory", "models", "derive", "layers", "train", "eval", "export", "sample", "deploy", "patch",
                    "fid", "demo"):
        assert f"| `{command}" in text, f"the command reference lacks {command}"
    # The headline claim counts what red_summary counts (settings where RED beats both controls).
    beaten = re.search(r"RED beats both vanilla and student\+ by more than the seeds' spread in (\d+)",
                       (RESULTS / "red_summary.md").read_text())
    words = ["no", "one", "two", "three", "four", "five"]
    assert beaten and f"beyond the seed spread in {words[int(beaten.group(1))]} setting" in text


def _row(table_text: str, first_cell: str) -> list[str] | None:
    for line in table_text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == first_cell:
            return cells
    return None


def _mean(cell: str) -> str:
    return cell.replace("*", "").split(" ±")[0].split(" (")[0].strip()


def test_readme_results_table_quotes_the_results_files():
    """Each README summary row: teacher / vanilla / RED / gap shares from red_summary.md, KD from its own file."""
    text = README.read_text()
    table = text[text.index("| results file | setting |"):]
    table = table[: table.index("\n\n")]
    summary = (RESULTS / "red_summary.md").read_text()
    header = _row(summary, "results file")
    rows = [_row(table, c) for c in re.findall(r"^\| (`\w+`) \|", table, re.M)]
    assert len(rows) == len(re.findall(r"^\| `fashion_mnist\w*` \|", summary, re.M))
    for cells in rows:
        name = cells[0]
        src = dict(zip(header, _row(summary, name)))
        _, _, teacher, vanilla, red, kd, red_share, kd_share = cells
        assert teacher == _mean(src["teacher"]), name
        assert vanilla == _mean(src["vanilla"]), name
        assert red == _mean(src["RED"]), name
        assert red_share == _mean(src["RED gap share (per seed)"]), name
        assert kd_share == _mean(src["KD gap share"]), name
        kd_row = _row((RESULTS / f"{name.strip('`')}.md").read_text(), "kd")
        assert kd == (_mean(kd_row[2]) if kd_row else "-"), name
