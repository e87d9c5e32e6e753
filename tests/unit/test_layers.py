"""The package's layers: every import in distasks/ points down (architecture, top).

The layers are written once, here, from the top down. A module may import its own
package and anything in a lower layer. Names that share a layer are independent of each
other (PostgreSQL and Redis code never call one another). Imports made only for type
checking or inside a function count the same: a cycle hidden in a function is still a
cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "distasks"

#: top to bottom; within a row, independent siblings
LAYERS: list[tuple[str, ...]] = [
    ("distasks.testing",),             # test tooling: daemons as subprocesses, faults
    ("distasks.__main__",),            # python -m distasks
    ("distasks.cli",),                 # the command line
    ("distasks.daemon.supervisor",),   # builds every component and runs them in one nursery
    ("distasks.console",),             # the web console: pages on the API's app
    ("distasks.api",),                 # HTTP: parse, authorize, call, render
    ("distasks.daemon",),              # the components that run in the daemon
    ("distasks.access",),              # principals, API keys, JWTs, scopes, limits, quotas
    ("distasks.store", "distasks.broker"),  # PostgreSQL; Redis
    ("distasks.config",),              # the configuration, read once
    ("distasks.access.principals",),   # what a principal, an API key and a scope are
    ("distasks.handlers",),            # the code tasks run
    ("distasks.client", "distasks.outbox"),  # the HTTP client; the outbox helper
    ("distasks.domain",),              # the rules: model, states, retries, cron, errors
    ("distasks.aio", "distasks.logs"),  # the asyncio bridge; logging
]


def place(module: str) -> tuple[int, str] | None:
    """(layer index, the layer name that holds `module`), by the longest name that is
    `module` or a package above it; None for the package root itself."""
    best: tuple[int, str] | None = None
    for i, row in enumerate(LAYERS):
        for name in row:
            if (module == name or module.startswith(name + ".")) and (
                    best is None or len(name) > len(best[1])):
                best = (i, name)
    return best


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every distasks import in the file, wherever it stands."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "distasks":  # from distasks import x: x is a module
                found += [(node.lineno, f"distasks.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module))
    return [(line, m) for line, m in found if m.startswith("distasks.")]


def upward_imports(root: Path = PACKAGE) -> list[str]:
    problems = []
    for path in sorted(root.rglob("*.py")):
        importer = module_name(path, root)
        here = place(importer)
        if here is None:
            continue  # distasks/__init__.py: the package's face
        for line, imported in imports_of(path):
            there = place(imported)
            if there is None or there[1] == here[1]:
                continue
            if there[0] <= here[0]:
                what = "a sibling" if there[0] == here[0] else "a higher layer"
                problems.append(f"{path.relative_to(root.parent)}:{line}: {importer} imports "
                                f"{imported}, {what} ({there[1]} over {here[1]})")
    return problems


def test_every_module_has_a_layer() -> None:
    unplaced = [module_name(p) for p in PACKAGE.rglob("*.py")
                if place(module_name(p)) is None and module_name(p) != "distasks"]
    assert unplaced == []


def test_imports_point_only_down() -> None:
    problems = upward_imports()
    assert problems == [], "\n".join(problems)


def test_an_upward_import_is_caught(tmp_path: Path) -> None:
    """The check itself: a domain module importing the API fails it."""
    fake = tmp_path / "distasks"
    (fake / "domain").mkdir(parents=True)
    (fake / "domain" / "model.py").write_text("from distasks.api import schemas\n")
    problems = upward_imports(fake)
    assert len(problems) == 1 and "distasks.api, a higher layer" in problems[0]


@pytest.mark.parametrize("module,layer", [
    ("distasks.daemon.supervisor", "distasks.daemon.supervisor"),
    ("distasks.daemon.worker", "distasks.daemon"),
    ("distasks.store.tasks", "distasks.store"),
])
def test_a_module_belongs_to_its_nearest_layer(module: str, layer: str) -> None:
    assert (p := place(module)) is not None and p[1] == layer
