"""Copy result tables from benchmarks/results/*.md into README.md, between marker comments.

A block `<!-- results:NAME -->` ... `<!-- /results -->` in README.md is replaced by the
contents of benchmarks/results/NAME.md, so the README quotes the files the scripts wrote.

    python benchmarks/readme_tables.py
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"<!-- results:(?P<name>[\w.-]+) -->\n.*?<!-- /results -->", re.S)


def fill(text: str) -> str:
    def repl(m: re.Match) -> str:
        name = m.group("name")
        path = ROOT / "benchmarks" / "results" / f"{name}.md"
        body = path.read_text().strip() if path.exists() else f"(not yet produced: {path.name})"
        # A file's own title would break the README's outline: keep what follows it.
        lines = [line for line in body.splitlines() if not line.startswith("# ")]
        lines = [f"**{line[3:].strip()}**" if line.startswith("## ") else line for line in lines]
        body = "\n".join(lines).strip()
        # Relative links in a result file point next to it; from README.md they need the folder.
        body = re.sub(r"\]\((?!https?:|/|#)([^)]+)\)", r"](benchmarks/results/\1)", body)
        return f"<!-- results:{name} -->\n{body}\n<!-- /results -->"

    return BLOCK.sub(repl, text)


if __name__ == "__main__":
    readme = ROOT / "README.md"
    readme.write_text(fill(readme.read_text()))
    print(f"updated {readme}")
