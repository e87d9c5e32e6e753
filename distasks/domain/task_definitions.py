"""A task's definition: what a create may say, wherever it comes from (the API's create
body, a row of an application's outbox, architecture §10). api/schemas.py publishes it;
daemon/creation.py applies the deployment's rules to it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from distasks.domain.fields import (
    CONCURRENCY_KEY_MAX,
    NO_NUL_TEXT,
    QUEUE_NAME_PATTERN,
    SECRET_FIELDS_RULE,
    Priority,
    Retries,
    SecretFieldName,
    Strict,
    UtcDatetime,
    text,
)

# What the type decides: an immediate task takes neither run_at nor delay_seconds; a
# delayed one exactly one of them.
TIMING_RULES: dict[str, Any] = {"anyOf": [
    {"properties": {"type": {"const": "immediate"}, "run_at": {"type": "null"},
                    "delay_seconds": {"type": "null"}}},
    {"required": ["type", "run_at"],
     "properties": {"type": {"const": "delayed"}, "run_at": {"type": "string"},
                    "delay_seconds": {"type": "null"}}},
    {"required": ["type", "delay_seconds"],
     "properties": {"type": {"const": "delayed"}, "delay_seconds": {"type": "number"},
                    "run_at": {"type": "null"}}},
]}

class CreateTask(Strict):
    model_config = ConfigDict(json_schema_extra={**TIMING_RULES, **SECRET_FIELDS_RULE})

    name: str = Field(min_length=1, max_length=256, description="A free label",
                      json_schema_extra=NO_NUL_TEXT)
    handler: str | None = text(1, 128, "Registered handler; the config's default if absent")
    type: Literal["immediate", "delayed"] = "immediate"
    queue_name: str = Field("default", pattern=QUEUE_NAME_PATTERN)
    priority: Priority = 0
    payload: Any = Field(default_factory=dict, description="Any JSON value")
    dedup_key: str | None = text(1, 256)
    max_retries: Retries | None = None
    timeout_seconds: float | None = Field(None, gt=0, le=7 * 86400)
    run_at: UtcDatetime | None = Field(None, description="RFC 3339, for type delayed")
    delay_seconds: float | None = Field(None, ge=0, le=366 * 86400,
                                        description="For type delayed, instead of run_at")
    secret_fields: list[SecretFieldName] = Field(
        default_factory=list, max_length=64,
        description="Top-level keys of the (object) payload whose values the API and CLI "
                    "show as \"[secret]\"; the handler gets them as given")
    concurrency_key: str | None = text(
        1, CONCURRENCY_KEY_MAX, "Runs sharing it count against the queue's "
        "max_running_per_key, and keys are served round robin (e.g. a customer id)")

