"""Schemathesis hooks for test_schemathesis.py (loaded by path through SCHEMATHESIS_HOOKS).

Request bodies take integers strictly: 3.0 is refused like "3" (README, create fields).
JSON Schema cannot say so: to it 3.0 *is* the integer 3, and schemathesis spells some
generated integers as whole floats on purpose, to catch servers that refuse what their
schema admits. Here the refusal is the documented rule, so generated bodies spell whole
numbers as integers; every other check runs on them unchanged. (A whole float is refused
with a 422 naming the field: tests/unit/test_request_edges.py.)
"""

from __future__ import annotations

from typing import Any

import schemathesis


def _plain_integers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_plain_integers(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain_integers(v) for k, v in value.items()}
    return value


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    return _plain_integers(body)
