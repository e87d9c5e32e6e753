"""The configuration reference of the docs (docs/hooks/config_reference.py) is generated
from the config dataclasses: every key of every section is in it, with a description, so
a new key cannot go undocumented."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from types import ModuleType

from distasks import config

ROOT = Path(__file__).resolve().parents[2]


def load_hook() -> ModuleType:
    path = ROOT / "docs" / "hooks" / "config_reference.py"
    spec = importlib.util.spec_from_file_location("config_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def every_key(cls: type, section: str) -> list[tuple[str, str, object]]:
    out = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.default):
            out += every_key(type(f.default), f"{section}.{f.name}")
        else:
            out.append((section, f.name, f.default))
    return out


def config_keys() -> list[tuple[str, str, object]]:
    out = []
    for f in dataclasses.fields(config.Config):
        if f.name in ("tenants", "schedules", "queues", "outbox"):  # tables by name, a list: prose
            continue
        out += every_key(type(f.default), f.name)
    return out


def test_every_key_of_every_section_is_in_the_table_with_a_description() -> None:
    hook = load_hook()
    table = hook.reference()
    generated = {(k.section, k.name): k for k in hook.keys()}
    expected = config_keys()
    assert len(expected) > 60 and set(generated) == {(s, n) for s, n, _ in expected}
    for section, name, default in expected:
        key = generated[(section, name)]
        assert key.description, f"{section}.{name} has no #: comment in distasks/config.py"
        description = hook._cell(key.description)
        env = f"DISTASKS_{section.upper().replace('.', '_')}_{name.upper()}"
        assert key.env[0] == env and key.default == hook.toml_value(default)
        assert f"### [{section}]" in table
        assert f"| `{name}` | `{key.type}` | `{key.default}` | " in table
        assert f"{description}<br>`{env}`" in table


def test_nested_tables_tuples_and_legacy_variables_are_shown() -> None:
    table = load_hook().reference()
    assert "### [auth.jwt]" in table and "`DISTASKS_AUTH_JWT_ENABLED`" in table
    assert '| `queues` | `tuple[str, ...]` | `["default"]` |' in table
    assert 'as "&lt;tenant&gt;/&lt;queue&gt;"' in table  # not swallowed as an HTML tag
    assert '`["RS256", "EdDSA"]`' in table and "| `allowed_hosts` | `tuple[str, ...]` | `[]` |" in table
    for legacy in config.LEGACY_ENV:
        assert f"`, `{legacy}` |" in table


def test_the_hook_replaces_the_marker_of_the_configuration_page() -> None:
    hook = load_hook()
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert page.count(hook.MARKER) == 1
    rendered = hook.on_page_markdown(page, None, None, None)
    assert hook.MARKER not in rendered and "### [worker]" in rendered
