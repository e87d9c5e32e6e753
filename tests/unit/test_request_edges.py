"""Edges of request validation (issue 15, item 7): integers are integers in every request
body, a schedule's window runs forwards, its zone does not depend on the host, a secret
stays secret through a change, and refusals say in words what is allowed. Plain
functions: the schemas, distasks.daemon.schedules and distasks.domain.cron, no app or servers."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from distasks.api import schemas
from distasks.api.parse import parse_body
from distasks.daemon import schedules
from distasks.daemon.creation import CreationRules
from distasks.domain import cron
from distasks.domain.errors import InvalidInput
from distasks.domain.model import Actor
from distasks.handlers import builtin_registry

NOW = datetime(2030, 1, 1, tzinfo=UTC)
RULES = CreationRules(registry=builtin_registry(), default_handler="demo",
                      default_max_retries=3, max_payload_bytes=10_000)


def refused(model: type[Any], body: dict[str, Any]) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        parse_body(model, json.dumps(body).encode())
    return caught.value


# --- integers are strict -----------------------------------------------------------------

# (model, a body that passes, the dotted path of an integer field in it)
INTEGER_FIELDS = [
    (schemas.CreateTask, {"name": "x"}, "priority"),
    (schemas.CreateTask, {"name": "x"}, "max_retries"),
    (schemas.CreateTasks, {"tasks": [{"name": "x"}]}, "tasks.0.max_retries"),
    (schemas.CreateTasks, {"tasks": [{"name": "x"}]}, "tasks.0.priority"),
    (schemas.DlqSelection, {}, "count"),
    (schemas.ReplayDlq, {}, "count"),
    (schemas.ReplayDlq, {}, "override_priority"),
    (schemas.CreateKey, {"name": "k", "scopes": ["tasks:read"]}, "rate_per_minute"),
    (schemas.CreateSchedule, {"name": "s", "cron": "* * * * *"}, "catch_up_max"),
    (schemas.CreateSchedule, {"name": "s", "cron": "* * * * *"}, "task.priority"),
    (schemas.CreateSchedule, {"name": "s", "cron": "* * * * *"}, "task.max_retries"),
    (schemas.UpdateSchedule, {}, "catch_up_max"),
    (schemas.UpdateSchedule, {}, "task.priority"),
    (schemas.UpdateSchedule, {}, "task.max_retries"),
]


def with_value(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    body = json.loads(json.dumps(body))
    *parents, last = path.split(".")
    here: Any = body
    for p in parents:
        if isinstance(here, list):
            here = here[int(p)]
        else:
            here = here.setdefault(p, {})
    here[last] = value
    return body


@pytest.mark.parametrize(("model", "body", "path"), INTEGER_FIELDS)
@pytest.mark.parametrize("value", [3.0, True])
def test_an_integer_field_refuses_a_float_or_a_boolean(model, body, path, value):
    parse_body(model, json.dumps(with_value(body, path, 3)).encode())  # 3 itself passes

    e = refused(model, with_value(body, path, value))

    assert (e.code, e.field) == ("invalid_input", path)
    assert "integer" in e.message


def test_the_openapi_document_still_calls_these_fields_integers():
    props = schemas.CreateTask.model_json_schema()["properties"]
    assert props["max_retries"]["anyOf"][0]["type"] == "integer"
    assert props["priority"]["type"] == "integer"


# --- a schedule's window ------------------------------------------------------------------

@pytest.mark.parametrize("end_at", ["2030-01-01T00:00:00Z", "2029-12-31T23:00:00Z"])
def test_a_schedule_whose_end_is_not_after_its_start_is_refused_naming_end_at(end_at):
    e = refused(schemas.CreateSchedule, {"name": "s", "cron": "* * * * *",
                                         "start_at": "2030-01-01T00:00:00Z", "end_at": end_at})
    assert e.field == "end_at"
    assert "after start_at" in e.message


def stored(**fields: Any) -> Any:
    req = schemas.CreateSchedule.model_validate_json(
        json.dumps({"name": "s", "cron": "* * * * *", **fields}))
    return schedules.from_request(req, tenant="default", owner="api", actor=Actor("t"),
                                  now=NOW)


@pytest.mark.parametrize(("change", "field"), [
    ({"end_at": "2030-06-01T00:00:00Z"}, "end_at"),      # before the stored start
    ({"start_at": "2031-06-01T00:00:00Z"}, "start_at"),  # after the stored end
])
def test_a_change_that_turns_the_window_backwards_is_refused_naming_the_field(change, field):
    s = stored(start_at="2030-07-01T00:00:00Z", end_at="2031-01-01T00:00:00Z")
    req = schemas.UpdateSchedule.model_validate_json(json.dumps(change))

    with pytest.raises(InvalidInput) as caught:
        schedules.check_definition(schedules.apply_update(s, req, now=NOW), RULES, now=NOW,
                                   changed=req.model_fields_set)

    assert caught.value.field == field


def test_a_change_that_keeps_the_window_forwards_passes():
    s = stored(start_at="2030-07-01T00:00:00Z")
    req = schemas.UpdateSchedule.model_validate_json(b'{"end_at": "2030-08-01T00:00:00Z"}')
    schedules.check_definition(schedules.apply_update(s, req, now=NOW), RULES, now=NOW,
                               changed=req.model_fields_set)


# --- time zones -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["localtime", "posixrules", "Factory"])
def test_a_zone_that_depends_on_the_host_or_names_none_is_refused(name):
    with pytest.raises(cron.CronError) as caught:
        cron.check("0 0 * * *", name, now=NOW)
    assert caught.value.field == "timezone"


@pytest.mark.parametrize("name", ["UTC", "Europe/Berlin", "America/Argentina/Buenos_Aires",
                                  "Etc/GMT+5"])
def test_real_iana_zones_pass(name):
    cron.check("0 0 * * *", name, now=NOW)


# --- secrets stay secret ------------------------------------------------------------------

SECRET = {"task": {"payload": {"to": "a@example.com", "password": "hunter2"},
                   "secret_fields": ["password"]}}


@pytest.mark.parametrize("secret_fields", [[], ["to"]])
def test_unmarking_a_secret_without_replacing_the_payload_is_refused(secret_fields):
    s = stored(**SECRET)
    req = schemas.UpdateSchedule.model_validate(
        {"task": {"secret_fields": secret_fields}})

    with pytest.raises(InvalidInput) as caught:
        schedules.apply_update(s, req, now=NOW)

    assert caught.value.field == "task.secret_fields"
    assert "password" in caught.value.message


def test_marking_more_keys_or_replacing_the_payload_may_change_the_marks():
    s = stored(**SECRET)
    more = schemas.UpdateSchedule.model_validate(
        {"task": {"secret_fields": ["password", "to"]}})
    assert schedules.apply_update(s, more, now=NOW).secret_fields == ("password", "to")

    fresh = schemas.UpdateSchedule.model_validate(
        {"task": {"payload": {"to": "b@example.com"}, "secret_fields": []}})
    assert schedules.apply_update(s, fresh, now=NOW).secret_fields == ()


# --- refusals in words --------------------------------------------------------------------

@pytest.mark.parametrize(("model", "body", "field", "words"), [
    (schemas.CreateTask, {"name": "x", "queue_name": "a b"}, "queue_name",
     "letters, digits"),
    (schemas.CreateSchedule, {"name": "a b", "cron": "* * * * *"}, "name", "letters, digits"),
    (schemas.CreateKey, {"name": "k", "scopes": ["tasks:read"], "tenant": "A B"}, "tenant",
     "lower-case letters"),
    (schemas.CreateSchedule, {"name": "s", "cron": "61 * * * *"}, "cron", "minute"),
])
def test_a_refused_pattern_is_described_in_words_not_as_a_regular_expression(
        model, body, field, words):
    e = refused(model, body)

    assert e.field == field
    assert words in e.message
    assert "pattern" not in e.message and "^" not in e.message
    assert "Value error" not in e.message


# --- the schedule's schema says what it can ---------------------------------------------

@pytest.mark.parametrize(("expression", "allowed"), [
    ("30 2 * * *", True), ("0 3 * * MON-FRI", True), ("*/10 * * * * *", True),
    ("0 9 * * MON-7", True), ("0 0 1,15 JAN-4 *", True), ("59-59 23 31 DEC SUN", True),
    ("0 0 L * 5L", True), ("0 0 * * MON#2", True), ("0 0-23/2 1-31 1-12 0-7", True),
    ("22-10 * * * *", False), ("* 23-1 * * *", False), ("* * * NOV-JUL *", False),
    ("* * * * SAT-SUN", False), ("* * * * 5-0", False), ("61 * * * *", False),
])
def test_the_cron_pattern_allows_forward_ranges_of_values_in_range_only(expression, allowed):
    import re  # noqa: PLC0415

    assert bool(re.fullmatch(schemas.CRON_PATTERN, expression)) is allowed


def test_the_document_names_only_real_zones_and_describes_the_window():
    from distasks.api import openapi  # noqa: PLC0415

    doc = openapi.document(title="t", version="0", handlers={"demo": {}})
    create = doc["components"]["schemas"]["CreateSchedule"]["properties"]
    assert "Europe/Berlin" in create["timezone"]["enum"]
    assert not {"localtime", "posixrules", "Factory"} & set(create["timezone"]["enum"])
    assert "after start_at" in create["end_at"]["description"]
