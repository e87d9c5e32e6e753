"""Field rules every request obeys, wherever it comes from (the HTTP API, the config
file): strict models, text without NUL, bounded integers, JSON values, times kept in
UTC, queue names; and a refusal that says in words what a field allows.

These are pydantic types and models; the API publishes them as its schemas
(api/schemas.py), and the configuration checks its `[[schedules]]` with the same ones
(domain/schedule_definitions.py), so no rule is written twice.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

import pydantic
from pydantic import AfterValidator, AwareDatetime, BeforeValidator, ConfigDict, Field

from distasks.domain.errors import InvalidInput
from distasks.domain.tenancy import TENANT_PATTERN

# 1-64 of [A-Za-z0-9_.-], except "." and "..", which cannot stand in a URL path. The
# models use Python's re (for the lookahead), whose "$" also matches before a final
# newline: "(?!\n)" refuses "default\n", a queue no daemon could serve.
QUEUE_NAME_PATTERN = r"^(?!\.{1,2}$)[A-Za-z0-9_.-]{1,64}$(?!\n)"
QUEUE_NAME_RE = re.compile(QUEUE_NAME_PATTERN)

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def _rfc3339(value: Any) -> Any:
    """Lax parsing would read "1.5" as a Unix time; a query date-time must look like one."""
    if isinstance(value, str) and not re.match(r"^\d{4}-\d{2}-\d{2}[Tt ]", value):
        raise ValueError("must be an RFC 3339 date-time, e.g. 2030-01-01T00:00:00Z")
    return value


def _utc(value: datetime) -> datetime:
    """PostgreSQL takes UTC offsets up to 15:59 only, and RFC 3339 allows up to 23:59:
    every time is kept in UTC."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range once converted to UTC") from None


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_utc)]
QueryDatetime = Annotated[AwareDatetime, BeforeValidator(_rfc3339), AfterValidator(_utc)]

# What each pattern allows, in words: a refusal says this (api/errors.py), never the
# regular expression itself.
QUEUE_NAME_RULE = ("1-64 characters of letters, digits, '.', '_' and '-' (not '.' or '..' "
                   "alone)")
PATTERN_RULES: dict[str, str] = {
    QUEUE_NAME_PATTERN: QUEUE_NAME_RULE,
    TENANT_PATTERN: ("1-32 characters of lower-case letters, digits, '_' and '-', starting "
                     "with a letter or digit"),
}

# PostgreSQL text and jsonb cannot hold NUL: said in the schema by this pattern on every
# free text (the server refuses NUL itself, naming the field, api/parse.py refuse_nul).
NO_NUL = r"^[^\x00]*$"
NO_NUL_TEXT: dict[str, Any] = {"pattern": NO_NUL}

# The longest concurrency_key: it is a Redis key name's suffix and a hash field.
CONCURRENCY_KEY_MAX = 128

# The one statement of the priority scale, shown wherever the API takes a priority.
PRIORITY_DESCRIPTION = (
    "Dispatch order within the queue: a 32-bit integer, higher runs first (default 0, "
    "negative below it); equal priorities run in the order they became ready. A retry, "
    "a delayed run that comes due and a DLQ replay (unless it overrides it) keep the "
    "task's priority")


# Integers within bounds. The bounds sit inside the type, so that they stay in the schema
# (on the field of an `int | None` they would not). In a body an integer is strict, as
# the README promises: 3.0, "3" and true are refused (`_Strict`'s config, the one rule
# for every request body).
Priority = Annotated[int, Field(ge=INT32_MIN, le=INT32_MAX, description=PRIORITY_DESCRIPTION)]
Retries = Annotated[int, Field(ge=0, le=1000)]
SelectionCount = Annotated[int, Field(ge=1, le=10_000)]
TaskPageLimit = Annotated[int, Field(ge=1, le=500)]
DlqPageCount = Annotated[int, Field(ge=0, le=1000)]
DlqPageLimit = Annotated[int, Field(ge=1, le=1000)]
RatePerMinute = Annotated[int, Field(ge=0, le=10_000_000)]


def text(min_length: int, max_length: int, description: str | None = None) -> Any:
    """A free-text field, absent by default."""
    return Field(None, min_length=min_length, max_length=max_length, description=description,
                 json_schema_extra=NO_NUL_TEXT)


# Any JSON value without NUL in its strings or keys: what a payload may be. The document
# (api/openapi.py) gives it to the payload field, which pydantic can only call "any".
JSON_VALUE_SCHEMA: dict[str, Any] = {"anyOf": [
    {"type": "null"}, {"type": "boolean"}, {"type": "number"},
    {"type": "string", "pattern": NO_NUL},
    {"type": "array", "items": {"$ref": "#/components/schemas/JsonValue"}},
    {"type": "object", "propertyNames": {"pattern": NO_NUL},
     "additionalProperties": {"$ref": "#/components/schemas/JsonValue"}},
]}

# A payload with secret fields is an object. (Names it does not hold mark nothing: JSON
# Schema cannot tie one field's items to another's keys, and the document must say
# exactly what is accepted; see architecture §7.)
SECRET_FIELDS_RULE: dict[str, Any] = {
    "if": {"required": ["secret_fields"], "properties": {"secret_fields": {"minItems": 1}}},
    "then": {"properties": {"payload": {"type": "object"}}},
}

SecretFieldName = Annotated[str, Field(min_length=1, max_length=256,
                                       json_schema_extra=NO_NUL_TEXT)]


class Strict(pydantic.BaseModel):
    # Unknown fields are refused (a typo such as `max_retry` must not pass silently);
    # strict types: "3", 3.0 and true are not integers, 1 is no boolean.
    model_config = ConfigDict(extra="forbid", strict=True, regex_engine="python-re")


class Query(pydantic.BaseModel):
    # Query strings are text: lax mode turns "50" into 50. Unknown parameters are refused.
    model_config = ConfigDict(extra="forbid", regex_engine="python-re")



def invalid_input(e: pydantic.ValidationError,
                  pattern_rules: dict[str, str] = PATTERN_RULES) -> InvalidInput:
    """The first problem pydantic found, with the field as a dotted path and, for a
    pattern, what it allows in words (`pattern_rules`), never the regular expression."""
    err = e.errors(include_url=False)[0]
    field = ".".join(str(p) for p in err["loc"]) or None
    kind = err["type"]
    if kind == "json_invalid":
        return InvalidInput(f"malformed JSON: {err['msg']}", code="malformed_json")
    if kind == "extra_forbidden":
        return InvalidInput(f"unknown field {field!r}", field=field, code="unknown_field")
    if kind == "missing":
        return InvalidInput(f"{field} is required", field=field, code="missing_field")
    if kind == "model_type":
        return InvalidInput("the body must be a JSON object", code="invalid_body")
    message = err["msg"]
    if kind == "string_pattern_mismatch":
        # A regular expression helps no reader: say what is allowed.
        rule = pattern_rules.get(str(err.get("ctx", {}).get("pattern")))
        message = f"must be {rule}" if rule else "is not in the allowed form"
    elif kind == "int_type":
        # Strict: JSON numbers with a fraction part (even .0), strings and booleans are not.
        message = "must be an integer, written as one (3, not 3.0, \"3\" or true)"
    elif kind == "value_error":
        # Our validators' ValueError text is already a sentence; pydantic prefixes it.
        message = message.removeprefix("Value error, ")
    return InvalidInput(f"{field}: {message}" if field else message, field=field)

