"""Secret payload fields as plain functions: what a create with `secret_fields` becomes
(distasks.daemon.creation), how a task reads in the API (distasks.api.render), and refusals
that never quote a secret value."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from distasks.api import schemas
from distasks.api.parse import parse_body, task_request
from distasks.api.render import task_json
from distasks.daemon import creation
from distasks.domain import secret_fields
from distasks.domain.errors import InvalidInput
from distasks.domain.model import NewTask, Task, TaskStatus, TaskType
from distasks.domain.secret_fields import SECRET
from distasks.handlers import builtin_registry
from distasks.handlers.http import HttpHandler

NOW = datetime(2030, 1, 1, tzinfo=UTC)
RULES = creation.CreationRules(
    registry=builtin_registry(http=HttpHandler(("api.example.com",), 1000)),
    default_handler="demo", default_max_retries=3, max_payload_bytes=10_000)


def parse(body: dict[str, Any]) -> NewTask:
    raw = json.dumps(body).encode()
    return creation.new_task(task_request(parse_body(schemas.CreateTask, raw), "default"), RULES,
                             now=NOW)


def test_marks_are_kept_once_each_in_one_order_and_the_payload_whole():
    new = parse({"name": "x", "payload": {"b": 1, "a": "s"}, "secret_fields": ["b", "a", "b"]})
    assert new.secret_fields == ("a", "b")
    assert new.payload == {"b": 1, "a": "s"}
    # A name the payload does not hold marks nothing, and is no error (architecture §7).
    assert parse({"name": "x", "payload": {}, "secret_fields": ["c"]}).secret_fields == ("c",)


@pytest.mark.parametrize("body, field", [
    ({"name": "x", "payload": "s3cret", "secret_fields": ["a"]}, "payload"),
    ({"name": "x", "payload": {"a": 1}, "secret_fields": [""]}, "secret_fields.0"),
    ({"name": "x", "payload": {"a": 1}, "secret_fields": "a"}, "secret_fields"),
])
def test_bad_marks_are_refused_naming_the_field(body: dict[str, Any], field: str):
    with pytest.raises(InvalidInput) as refused:
        parse(body)
    assert refused.value.field == field


def test_a_refusal_about_a_secret_field_does_not_quote_its_value():
    body = {"name": "x", "handler": "http",
            "payload": {"url": "https://secret-host.internal/x"}}
    with pytest.raises(InvalidInput) as plain:
        parse(body)
    assert "secret-host" in plain.value.message
    with pytest.raises(InvalidInput) as secret:
        parse({**body, "secret_fields": ["url"]})
    assert secret.value.field == plain.value.field == "payload.url"
    assert "secret-host" not in secret.value.message


def test_the_api_shows_secret_values_redacted_and_lists_no_payload_unless_asked():
    task = Task(id=uuid.uuid4(), name="x",
                handler="demo", type=TaskType.IMMEDIATE, queue_name="default", priority=0,
                payload={"to": "a@example.com", "token": "s3cret"}, dedup_key=None,
                max_retries=3, timeout_s=None, status=TaskStatus.QUEUED, failures=0,
                run_at=None, created_at=NOW, updated_at=NOW, finished_at=None,
                secret_fields=("token", "absent"))
    shown = task_json(task)
    assert shown["payload"] == {"to": "a@example.com", "token": SECRET}
    assert shown["secret_fields"] == ["token", "absent"]
    assert "payload" not in task_json(task, with_payload=False)
    assert task.payload["token"] == "s3cret"  # what the handler gets is untouched


def test_an_outcome_is_scrubbed_of_every_secret_value_however_it_is_written():
    """Nested values, a URL's path and query apart, and a value a JSON result escapes
    (non-ASCII, quotes): each is replaced; text that holds none is left as it was."""
    task = Task(id=uuid.uuid4(), name="x", handler="http", type=TaskType.IMMEDIATE,
                queue_name="default", priority=0, dedup_key=None, max_retries=3,
                timeout_s=None, status=TaskStatus.QUEUED, failures=0, run_at=None,
                created_at=NOW, updated_at=NOW, finished_at=None,
                payload={"url": "https://hooks.example/T0/B0/tok3n?sig=abc123",
                         "auth": {"user": "ops", "pass": ['pä"ss']}, "to": "a@example.com"},
                secret_fields=("url", "auth"))
    values = secret_fields.secret_values(task)
    assert "/T0/B0/tok3n" in values and "sig=abc123" in values and 'pä"ss' in values
    error = "HTTP 302 from https://hooks.example: moved to /T0/B0/tok3n?sig=abc123"
    assert secret_fields.scrub(error, values) == (
        "HTTP 302 from https://hooks.example: moved to [secret]?[secret]")
    result = json.dumps({"echo": 'pä"ss', "user": "ops", "to": "a@example.com"})
    assert json.loads(secret_fields.scrub_json(result, values)) == {
        "echo": SECRET, "user": SECRET, "to": "a@example.com"}
    assert secret_fields.scrub("nothing here", values) == "nothing here"


def test_an_error_is_scrubbed_before_it_is_cut():
    """The worker keeps MAX_ERROR_CHARS of an error: a secret across that cut leaves
    none of itself, because the text is scrubbed first."""
    from distasks.daemon.worker import MAX_ERROR_CHARS, _describe

    token = "tok3n-" + "s" * 30
    exc = RuntimeError("x" * (MAX_ERROR_CHARS - 30) + token)
    assert token[:10] in _describe(exc)  # unscrubbed, the cut keeps the secret's start
    described = _describe(exc, (token,))
    assert "tok3n" not in described and described.endswith("[secret]")


def test_a_cut_text_ends_with_no_start_of_a_secret():
    token = "tok3n-secret"
    assert secret_fields.without_partial_tail("body … tok3n-se", (token,)) == "body … [secret]"
    assert secret_fields.without_partial_tail("body … tok", (token,)) == "body … tok"
    assert secret_fields.without_partial_tail("nothing", (token,)) == "nothing"
