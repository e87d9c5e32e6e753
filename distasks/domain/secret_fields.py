"""Secret payload fields: the values a task's `secret_fields` name reach its handler and
nothing else. The API shows them as SECRET; a run's outcome (error text and result) is
scrubbed of them before it is written (distasks.daemon.completer), whichever handler echoed
them, so that no run, DLQ listing or log line built from it quotes one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from distasks.domain.model import Task

# What a secret payload field's value reads as wherever it would be shown.
SECRET = "[secret]"
# The shortest start of a secret that a cut text may not end with (shorter ones could be
# any text: "ht" of "https://…").
PARTIAL_MIN_CHARS = 4


def redacted(payload: dict[str, Any], secret_fields: tuple[str, ...]) -> dict[str, Any]:
    """`payload` with the value of each secret field that it holds replaced by SECRET."""
    return {k: SECRET if k in secret_fields else v for k, v in payload.items()}


def secret_values(task: Task) -> tuple[str, ...]:
    """The texts no outcome of `task` may hold, longest first (so that a value holding
    another is replaced whole): every string within its secret fields' values, and of
    each that is a URL also its path and query, because errors and logs quote a URL
    without its query or without its host, and a webhook's token lives in its path."""
    if not task.secret_fields or not isinstance(task.payload, dict):
        return ()
    found: set[str] = set()
    for name in task.secret_fields:
        for text in _strings(task.payload.get(name)):
            found.add(text)
            found.update(_url_parts(text))
    return tuple(sorted((t for t in found if t), key=len, reverse=True))


def scrub(text: str, values: tuple[str, ...]) -> str:
    """`text` with each of `values` (secret_values) replaced by SECRET."""
    for value in values:
        if value in text:
            text = text.replace(value, SECRET)
    return text


def without_partial_tail(text: str, values: tuple[str, ...]) -> str:
    """`text` (scrubbed, then cut short elsewhere) without a secret's start at its end:
    a cut that split a secret must not leave its first half. A start of fewer than
    PARTIAL_MIN_CHARS characters is left, as it could be any text."""
    for value in values:
        for keep in range(len(value) - 1, PARTIAL_MIN_CHARS - 1, -1):
            if text.endswith(value[:keep]):
                return text[:-keep] + SECRET
    return text


def scrub_json(document: str, values: tuple[str, ...]) -> str:
    """A JSON document with `values` replaced in each of its strings (keys too), read and
    written again: a secret in the text may be escaped (non-ASCII, quotes), so a plain
    replace on the document could miss it."""
    if not values:
        return document
    return json.dumps(_scrub_value(json.loads(document), values), separators=(",", ":"),
                      ensure_ascii=False)


def _scrub_value(value: Any, values: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        return scrub(value, values)
    if isinstance(value, list):
        return [_scrub_value(v, values) for v in value]
    if isinstance(value, dict):
        return {scrub(k, values): _scrub_value(v, values) for k, v in value.items()}
    return value


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, dict):  # its keys name parts of the secret; they are none
        for v in value.values():
            yield from _strings(v)


def _url_parts(text: str) -> tuple[str, ...]:
    """The path (unless just "/") and query of `text` if it is a URL, else nothing."""
    try:
        parts = urlsplit(text)
    except ValueError:
        return ()
    if not parts.scheme or not parts.netloc:
        return ()
    return tuple(p for p in (parts.path if len(parts.path) > 1 else "", parts.query) if p)
