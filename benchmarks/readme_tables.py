"""Copy result tables from benchmarks/results/*.md into the docs, between marker comments.

A block `<!-- results:NAME -->` ... `<!-- /results -->` in docs/results.md or README.md is
replaced by the contents of benchmarks/results/NAME.md, so the docs quote the files the
scripts wrote. Relative links in a results file point next to that file; they are rewritten
to be relative to the document that quotes them (`../benchmarks/results/...` from docs/).
Running it twice changes nothing the second time.

    python benchmarks/readme_tables.py
"""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
# The documents that quote results files (those without a marker are left as they are).
DOCUMENTS = (ROOT / "README.md", ROOT / "docs" / "results.md")
BLOCK = re.compile(r"<!-- results:(?P<name>[\w.-]+) -->\n.*?<!-- /results -->", re.S)
# A Markdown link or image target that is relative (not a URL, an absolute path or an anchor).
RELATIVE_LINK = re.compile(r"\]\((?!https?:|/|#)([^)]+)\)")


def fill(text: str, doc_dir: Path = ROOT, results_dir: Path = RESULTS) -> str:
    """Replace every results block of ``text`` by the current contents of its results file.

    Args:
        text: the document's Markdown.
        doc_dir: folder of the document (relative links are rewritten to start from it).
        results_dir: folder holding ``NAME.md``.
    Returns:
        The document with every block refilled.
    """
    prefix = Path(os.path.relpath(results_dir, doc_dir)).as_posix()

    def repl(m: re.Match) -> str:
        name = m.group("name")
        path = results_dir / f"{name}.md"
        body = path.read_text().strip() if path.exists() else f"(not yet produced: {path.name})"
        # A file's own title would break the document's outline: keep what follows it.
        lines = [line for line in body.splitlines() if not line.startswith("# ")]
        lines = [f"**{line[3:].strip()}**" if line.startswith("## ") else line for line in lines]
        body = "\n".join(lines).strip()
        body = RELATIVE_LINK.sub(lambda link: f"]({prefix}/{link.group(1)})", body)
        return f"<!-- results:{name} -->\n{body}\n<!-- /results -->"

    return BLOCK.sub(repl, text)


def update(documents: tuple[Path, ...] = DOCUMENTS, results_dir: Path = RESULTS) -> list[Path]:
    """Refill the blocks of every document that exists.

    Returns:
        The documents whose text changed.
    """
    changed = []
    for doc in documents:
        if not doc.is_file():
            continue
        old = doc.read_text()
        new = fill(old, doc.parent, results_dir)
        if new != old:
            doc.write_text(new)
            changed.append(doc)
    return changed


if __name__ == "__main__":
    changed = update()
    for doc in DOCUMENTS:
        state = "updated" if doc in changed else "unchanged" if doc.is_file() else "missing"
        print(f"{state} {doc.relative_to(ROOT)}")
