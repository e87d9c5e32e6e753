"""The configuration reference, generated from the config dataclasses at build time.

An MkDocs hook (`hooks:` in mkdocs.yml): in docs/configuration.md the marker line
`<!-- config-reference -->` is replaced by one table per section of `distasks.config`,
each key with its type, default, description (the `#:` comment above the field) and
environment variables. So a key added to the code shows up here by itself, and
tests/unit/test_config_reference.py fails when one has no description.

Imports nothing from MkDocs: `reference()` is a plain function the unit test calls.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from collections.abc import Iterator
from typing import Any, NamedTuple

from distasks import config

MARKER = "<!-- config-reference -->"


class Key(NamedTuple):
    """One configuration key, as the reference shows it. (A NamedTuple: a dataclass
    needs its module in sys.modules, which a hook loaded from a path may not be.)"""

    section: str       # "http", "auth.jwt"
    name: str          # "port"
    type: str          # the annotation as written: "int", "tuple[str, ...]"
    default: str       # as TOML would write it
    description: str   # the `#:` lines above the field, joined
    env: tuple[str, ...]  # DISTASKS_<SECTION>_<KEY>, then the legacy variables


def field_comments(cls: type) -> dict[str, tuple[str, str]]:
    """{field: (annotation, `#:` comment)} from the class's source, in field order."""
    lines = textwrap.dedent(inspect.getsource(cls)).splitlines()
    body = ast.parse("\n".join(lines)).body[0]
    assert isinstance(body, ast.ClassDef)
    out: dict[str, tuple[str, str]] = {}
    for node in body.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        comment: list[str] = []
        i = node.lineno - 2  # the line above the field, 0-based
        while i >= 0 and lines[i].strip().startswith("#:"):
            comment.insert(0, lines[i].strip()[2:].strip())
            i -= 1
        out[node.target.id] = (ast.unparse(node.annotation), " ".join(comment))
    return out


def toml_value(value: Any) -> str:
    """A default as it would be written in the TOML file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if hasattr(value, "toml"):  # a value with its own TOML form (worker.queue_weights)
        return str(value.toml())
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, float) and value.is_integer():
        return f"{value:.1f}"
    return str(value)


def keys(cls: type | None = None, section: str = "") -> Iterator[Key]:
    """Every key of every section of `config.Config`, nested tables ([auth.jwt]) after
    their section's own keys. `[tenants.<name>]` and `[[schedules]]` are not sections
    (their names are open-ended) and are described in prose."""
    if cls is None:
        for name, section_cls in config._section_classes().items():
            yield from keys(section_cls, name)
        return
    comments = field_comments(cls)
    nested = []
    for field in dataclasses.fields(cls):
        annotation, description = comments[field.name]
        if dataclasses.is_dataclass(field.default):
            nested.append((type(field.default), f"{section}.{field.name}"))
            continue
        env = [f"DISTASKS_{section.upper().replace('.', '_')}_{field.name.upper()}"]
        env += [var for var, where in config.LEGACY_ENV.items() if where == (section, field.name)]
        yield Key(section, field.name, annotation, toml_value(field.default), description,
                  tuple(env))
    for nested_cls, nested_section in nested:
        yield from keys(nested_cls, nested_section)


def _code(text: str) -> str:
    """Text for a `code` span in a table cell: only the pipes need escaping."""
    return text.replace("|", "\\|")


def _cell(text: str) -> str:
    """Text fit for a table cell: pipes escaped, and outside `code` spans < and > too
    (else "<tenant>" would read as an HTML tag and vanish)."""
    parts = text.replace("|", "\\|").split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)


def reference() -> str:
    """The Markdown of the reference: one heading and table per section."""
    out: list[str] = []
    section = None
    for key in keys():
        if key.section != section:
            section = key.section
            out += ["", f"### [{section}]", "",
                    "| key | type | default | meaning and environment |",
                    "| --- | --- | --- | --- |"]
        env = ", ".join(f"`{name}`" for name in key.env)
        out.append(f"| `{key.name}` | `{_code(key.type)}` | `{_code(key.default)}` "
                   f"| {_cell(key.description)}<br>{env} |")
    return "\n".join(out).strip() + "\n"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs event: put the reference where the marker stands."""
    if MARKER in markdown:
        return markdown.replace(MARKER, reference())
    return markdown
