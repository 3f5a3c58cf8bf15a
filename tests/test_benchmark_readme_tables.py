"""benchmarks/readme_tables.py: results blocks refilled from benchmarks/results/, links relative to each document."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def rt(load_benchmark):
    return load_benchmark("readme_tables.py")


RESULT = "# Title\n\nSome text.\n\n## Verdict\n\n![plot](x.png) [web](https://e.org/a) [here](#top) [abs](/etc/f)\n"


def _layout(tmp_path):
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    (results / "x.md").write_text(RESULT)
    (tmp_path / "docs").mkdir()
    return results


def test_fill_replaces_the_block_and_rewrites_links_per_document(rt, tmp_path):
    results = _layout(tmp_path)
    text = "before\n<!-- results:x -->\nstale\n<!-- /results -->\nafter\n"
    top = rt.fill(text, tmp_path, results)
    assert top == (
        "before\n<!-- results:x -->\nSome text.\n\n**Verdict**\n\n"
        "![plot](benchmarks/results/x.png) [web](https://e.org/a) [here](#top) [abs](/etc/f)\n"
        "<!-- /results -->\nafter\n"
    )
    docs = rt.fill(text, tmp_path / "docs", results)
    assert "![plot](../benchmarks/results/x.png)" in docs
    assert "[web](https://e.org/a) [here](#top) [abs](/etc/f)" in docs
    # Filling again gives the same text: the block is rebuilt from the results file each time.
    assert rt.fill(top, tmp_path, results) == top
    assert rt.fill(docs, tmp_path / "docs", results) == docs


def test_fill_names_a_missing_results_file(rt, tmp_path):
    results = _layout(tmp_path)
    out = rt.fill("<!-- results:nope -->\n<!-- /results -->", tmp_path, results)
    assert out == "<!-- results:nope -->\n(not yet produced: nope.md)\n<!-- /results -->"


def test_update_writes_changed_documents_only_and_is_idempotent(rt, tmp_path):
    results = _layout(tmp_path)
    readme, doc = tmp_path / "README.md", tmp_path / "docs" / "results.md"
    readme.write_text("no blocks here\n")
    doc.write_text("<!-- results:x -->\n<!-- /results -->\n")
    missing = tmp_path / "docs" / "absent.md"
    assert rt.update((readme, doc, missing), results) == [doc]
    assert "](../benchmarks/results/x.png)" in doc.read_text()
    assert readme.read_text() == "no blocks here\n"
    assert rt.update((readme, doc, missing), results) == []
    assert not missing.exists()


def test_shipped_documents_quote_the_current_results_files(rt):
    """README.md and docs/results.md hold exactly what the results files say (run readme_tables.py)."""
    for doc in rt.DOCUMENTS:
        text = doc.read_text()
        assert rt.fill(text, doc.parent) == text, f"{doc.name} is out of date: python benchmarks/readme_tables.py"
    assert "<!-- results:" in (rt.ROOT / "docs" / "results.md").read_text()
