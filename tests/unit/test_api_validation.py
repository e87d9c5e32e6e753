"""What a create body must look like, and which field an error names (architecture §5.4): the
API's schemas (distasks.api.parse) and the creation rules (distasks.daemon.creation), run as
plain functions with the rules and the clock passed in; no app, store or broker."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pydantic
import pytest

from distasks.api import schemas
from distasks.api.errors import from_validation_error
from distasks.api.parse import parse_body, task_request
from distasks.daemon import creation
from distasks.domain.errors import InvalidInput, PayloadTooLarge, UnknownHandler
from distasks.domain.model import NewTask, TaskType
from distasks.handlers import builtin_registry

# The clock the rules see, Unix seconds.
NOW_S = 1_700_000_000.0
MAX_PAYLOAD_BYTES = 200
MAX_RETRIES = 5
RULES = creation.CreationRules(registry=builtin_registry(), default_handler="demo",
                               default_max_retries=MAX_RETRIES,
                               max_payload_bytes=MAX_PAYLOAD_BYTES)


def parse(body: bytes | dict[str, Any] | list[Any]) -> NewTask:
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    return creation.new_task(task_request(parse_body(schemas.CreateTask, body), "default"), RULES,
                             now=datetime.fromtimestamp(NOW_S, UTC))


# --- refused -----------------------------------------------------------------------------

BAD_BODIES = [
    # (id, body, exception class, code, field)
    ("malformed_json", b'{"name": "x",', InvalidInput, "malformed_json", None),
    ("not_utf8_json", b"\xff\xfe", InvalidInput, "malformed_json", None),
    ("empty_body", b"", InvalidInput, "invalid_body", None),
    ("body_is_a_list", [{"name": "x"}], InvalidInput, "invalid_body", None),
    ("body_is_a_string", "x", InvalidInput, "invalid_body", None),
    ("missing_name", {"priority": 1}, InvalidInput, "missing_field", "name"),
    ("empty_name", {"name": ""}, InvalidInput, "invalid_input", "name"),
    ("unknown_field", {"name": "x", "max_retry": 3}, InvalidInput, "unknown_field",
     "max_retry"),
    ("name_is_a_number", {"name": 5}, InvalidInput, "invalid_input", "name"),
    ("nul_in_name", {"name": "a\x00b"}, InvalidInput, "invalid_input", "name"),
    ("nul_deep_in_payload", {"name": "x", "payload": {"k": ["ok", "a\x00"]}}, InvalidInput,
     "invalid_input", "payload.k.1"),
    ("name_is_null", {"name": None}, InvalidInput, "invalid_input", "name"),
    ("handler_is_a_number", {"name": "x", "handler": 5}, InvalidInput, "invalid_input",
     "handler"),
    ("priority_is_a_string", {"name": "x", "priority": "1"}, InvalidInput, "invalid_input",
     "priority"),
    ("priority_is_a_fraction", {"name": "x", "priority": 1.5}, InvalidInput,
     "invalid_input", "priority"),
    ("priority_is_a_bool", {"name": "x", "priority": True}, InvalidInput, "invalid_input",
     "priority"),
    ("priority_over_int32", {"name": "x", "priority": 2**31}, InvalidInput,
     "invalid_input", "priority"),
    ("max_retries_negative", {"name": "x", "max_retries": -1}, InvalidInput,
     "invalid_input", "max_retries"),
    ("concurrency_key_too_long", {"name": "x", "concurrency_key": "k" * 129}, InvalidInput,
     "invalid_input", "concurrency_key"),
    ("concurrency_key_empty", {"name": "x", "concurrency_key": ""}, InvalidInput,
     "invalid_input", "concurrency_key"),
    ("type_unknown", {"name": "x", "type": "later"}, InvalidInput, "invalid_input", "type"),
    ("queue_empty", {"name": "x", "queue_name": ""}, InvalidInput, "invalid_input",
     "queue_name"),
    # Python's re lets "$" match before a final newline: a queue no daemon could serve.
    ("queue_with_final_newline", {"name": "x", "queue_name": "default\n"}, InvalidInput,
     "invalid_input", "queue_name"),
    ("queue_with_space", {"name": "x", "queue_name": "a b"}, InvalidInput,
     "invalid_input", "queue_name"),
    ("queue_65_chars", {"name": "x", "queue_name": "q" * 65}, InvalidInput,
     "invalid_input", "queue_name"),
    ("queue_with_slash", {"name": "x", "queue_name": "bad/name"}, InvalidInput,
     "invalid_input", "queue_name"),
    ("queue_with_brace", {"name": "x", "queue_name": "a}b"}, InvalidInput,
     "invalid_input", "queue_name"),
    ("unknown_handler", {"name": "x", "handler": "nope"}, UnknownHandler,
     "unknown_handler", "handler"),
    ("payload_too_large", {"name": "x", "payload": "p" * MAX_PAYLOAD_BYTES},
     PayloadTooLarge, "payload_too_large", "payload"),
    ("payload_nan", b'{"name": "x", "payload": {"v": NaN}}', InvalidInput,
     "invalid_input", "payload"),
    ("timeout_zero", {"name": "x", "timeout_seconds": 0}, InvalidInput, "invalid_input",
     "timeout_seconds"),
    ("delayed_without_time", {"name": "x", "type": "delayed"}, InvalidInput,
     "invalid_input", "run_at"),
    ("delayed_with_both_times", {"name": "x", "type": "delayed", "delay_seconds": 5,
                                 "run_at": "2030-01-01T00:00:00Z"},
     InvalidInput, "invalid_input", "run_at"),
    ("delay_negative", {"name": "x", "type": "delayed", "delay_seconds": -1},
     InvalidInput, "invalid_input", "delay_seconds"),
    ("run_at_without_timezone", {"name": "x", "type": "delayed",
                                 "run_at": "2030-01-01T00:00:00"},
     InvalidInput, "invalid_input", "run_at"),
    ("run_at_not_a_date", {"name": "x", "type": "delayed", "run_at": "tomorrow"},
     InvalidInput, "invalid_input", "run_at"),
    ("run_at_before_year_1_in_utc", {"name": "x", "type": "delayed",
                                     "run_at": "0001-01-01T00:00:00+05:00"},
     InvalidInput, "invalid_input", "run_at"),
    ("run_at_on_immediate", {"name": "x", "run_at": "2030-01-01T00:00:00Z"},
     InvalidInput, "invalid_input", "run_at"),
    ("delay_seconds_on_immediate", {"name": "x", "delay_seconds": 5}, InvalidInput,
     "invalid_input", "delay_seconds"),
]


@pytest.mark.parametrize(("body", "exc_class", "code", "field"),
                         [case[1:] for case in BAD_BODIES], ids=[case[0] for case in BAD_BODIES])
def test_bad_body_is_refused_naming_the_field(body, exc_class, code, field):
    with pytest.raises(InvalidInput) as info:
        parse(body)

    assert type(info.value) is exc_class
    assert (info.value.code, info.value.field) == (code, field)
    assert info.value.message


def test_payload_exactly_at_the_limit_is_accepted_one_byte_more_is_not():
    # A JSON string is its characters plus two quotes.
    at_limit = "p" * (MAX_PAYLOAD_BYTES - 2)

    assert len((parse({"name": "x", "payload": at_limit})).payload_json) == (
        MAX_PAYLOAD_BYTES)
    with pytest.raises(PayloadTooLarge, match=f"{MAX_PAYLOAD_BYTES + 1} bytes"):
        parse({"name": "x", "payload": at_limit + "p"})


def test_unknown_handler_message_names_the_handler():
    with pytest.raises(UnknownHandler, match="'nope'"):
        parse({"name": "x", "handler": "nope"})


# --- accepted ----------------------------------------------------------------------------


def test_minimal_body_gets_the_defaults():
    new = parse({"name": "hello"})

    assert new.name == "hello"
    assert new.type is TaskType.IMMEDIATE
    assert new.queue_name == "default"
    assert new.handler == "demo"
    assert new.priority == 0
    assert new.payload == {}
    assert new.payload_json == "{}"
    assert new.dedup_key is None
    assert new.max_retries == MAX_RETRIES
    assert new.timeout_s is None
    assert new.run_at is None
    assert new.id != new.run_id


def test_every_create_gets_fresh_ids():
    first, second = parse({"name": "x"}), parse({"name": "x"})

    assert first.id != second.id
    assert first.run_id != second.run_id


def test_given_fields_are_kept():
    new = parse({
        "name": "report", "handler": "noop", "queue_name": "A.b-c_9", "priority": -7,
        "payload": {"rows": [1, 2], "title": "é"}, "dedup_key": "report-2024-01",
        "max_retries": 0, "timeout_seconds": 30,
    })

    assert new.handler == "noop"
    assert new.queue_name == "A.b-c_9"
    assert new.priority == -7
    assert new.payload == {"rows": [1, 2], "title": "é"}
    assert json.loads(new.payload_json) == new.payload
    assert new.dedup_key == "report-2024-01"
    assert new.max_retries == 0
    assert new.timeout_s == 30.0


def test_queue_name_of_64_chars_is_accepted():
    assert (parse({"name": "x", "queue_name": "q" * 64})).queue_name == "q" * 64


@pytest.mark.parametrize("payload", [None, [1, "two"], "text", 3.5, True])
def test_payload_may_be_any_json_value(payload):
    new = parse({"name": "x", "payload": payload})

    assert new.payload == payload
    assert json.loads(new.payload_json) == payload


def test_delayed_with_delay_seconds_runs_that_long_after_the_clock():
    new = parse({"name": "x", "type": "delayed", "delay_seconds": 90})

    assert new.type is TaskType.DELAYED
    assert new.run_at is not None
    assert new.run_at.tzinfo is not None
    assert (new.run_at.timestamp() - NOW_S) == pytest.approx(90)


def test_delayed_with_zero_delay_is_due_at_the_clock():
    new = parse({"name": "x", "type": "delayed", "delay_seconds": 0})

    assert new.run_at == datetime.fromtimestamp(NOW_S, UTC)


def test_delayed_with_run_at_keeps_the_instant_in_utc():
    new = parse({"name": "x", "type": "delayed",
                            "run_at": "2030-01-01T02:00:00+02:00"})

    assert new.run_at == datetime(2030, 1, 1, tzinfo=UTC)
    assert new.run_at.tzinfo == UTC


def test_run_at_with_an_offset_postgresql_cannot_hold_is_kept_as_its_utc_instant():
    """RFC 3339 allows offsets up to 23:59, PostgreSQL up to 15:59 (this was a 500)."""
    new = parse({"name": "x", "type": "delayed",
                            "run_at": "2030-01-01T18:41:00+18:41"})

    assert new.run_at == datetime(2030, 1, 1, tzinfo=UTC)


# --- from_validation_error ---------------------------------------------------------------


def validation_error(body: bytes) -> pydantic.ValidationError:
    with pytest.raises(pydantic.ValidationError) as info:
        schemas.CreateTask.model_validate_json(body)
    return info.value


FROM_VALIDATION = [
    # (body, code, field)
    (b"{", "malformed_json", None),
    (b"[]", "invalid_body", None),
    (b"null", "invalid_body", None),
    (b"{}", "missing_field", "name"),
    (b'{"name": "x", "bogus": 1}', "unknown_field", "bogus"),
    (b'{"name": "x", "priority": "1"}', "invalid_input", "priority"),
    (b'{"name": "x", "queue_name": "a b"}', "invalid_input", "queue_name"),
    (b'{"name": "x", "run_at": "2030-01-01T00:00:00"}', "invalid_input", "run_at"),
]


@pytest.mark.parametrize(("body", "code", "field"), FROM_VALIDATION)
def test_from_validation_error_maps_pydantic_errors_to_code_and_field(body, code, field):
    err = from_validation_error(validation_error(body))

    assert isinstance(err, InvalidInput)
    assert (err.code, err.field) == (code, field)


def test_from_validation_error_messages_name_the_field():
    assert "name is required" in from_validation_error(validation_error(b"{}")).message
    assert "'bogus'" in from_validation_error(
        validation_error(b'{"name": "x", "bogus": 1}')).message
    assert from_validation_error(
        validation_error(b'{"name": "x", "priority": "1"}')).message.startswith("priority: ")


def test_from_validation_error_joins_a_nested_location_with_dots():
    class Inner(pydantic.BaseModel):
        count: int

    class Outer(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(strict=True)
        items: list[Inner]

    with pytest.raises(pydantic.ValidationError) as info:
        Outer.model_validate_json(b'{"items": [{"count": 1}, {"count": "x"}]}')

    assert from_validation_error(info.value).field == "items.1.count"


def test_from_validation_error_reports_the_first_problem_in_field_order():
    # pydantic checks fields in declaration order: queue_name before priority.
    err = from_validation_error(
        validation_error(b'{"priority": "1", "queue_name": "", "name": "x"}'))

    assert err.field == "queue_name"


def test_a_concurrency_key_is_kept_as_given():
    assert parse({"name": "x", "concurrency_key": "customer/42"}).concurrency_key == "customer/42"
