"""The README's links into the repository (docs/, bench/) lead somewhere: the files exist
and so do the headings they name. (Links between docs pages are checked by the strict
MkDocs build, `make docs`; the README is not part of the site.)"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slugs(markdown: str) -> set[str]:
    """The anchors of a page's headings, as GitHub and MkDocs both spell simple ones."""
    out = set()
    fenced = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6} (.+)", line)):
            text = re.sub(r"[^\w\- ]", "", m.group(1).lower()).strip()
            out.add(re.sub(r"[ ]+", "-", text))
    return out


def test_every_relative_link_of_the_readme_exists() -> None:
    readme = (ROOT / "README.md").read_text()
    links = [t for t in LINK.findall(readme) if not re.match(r"[a-z]+:", t)]
    assert any(t.startswith("docs/") for t in links)
    for target in links:
        path, _, anchor = target.partition("#")
        file = ROOT / path
        assert file.exists(), f"README links to {path}, which does not exist"
        if anchor:
            assert anchor in slugs(file.read_text()), f"README links to {target}: no such heading"
