"""The benchmarks page: bench/README.md, served as benchmarks.md.

An MkDocs hook (`hooks:` in mkdocs.yml). The bench's README stays beside the scripts it
describes (where GitHub shows it); the site gets the same text as a generated page, so
there is one copy. Its title becomes "Benchmarks".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File

SOURCE = Path(__file__).resolve().parents[2] / "bench" / "README.md"


def on_files(files: Any, config: Any) -> Any:
    text = SOURCE.read_text()
    if text.startswith("# bench\n"):
        text = "# Benchmarks\n" + text[len("# bench\n"):]
    files.append(File.generated(config, "benchmarks.md", content=text))
    return files
