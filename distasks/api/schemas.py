"""Request bodies and query parameters, declared once: they validate requests and
describe them (their JSON Schema)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

QUEUE_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


class _Strict(BaseModel):
    # Unknown fields are refused (a typo such as `max_retry` must not pass silently);
    # strict types: "3" is not an integer.
    model_config = ConfigDict(extra="forbid", strict=True)


class CreateTask(_Strict):
    name: str = Field(min_length=1, max_length=256, description="A free label")
    handler: str | None = Field(None, min_length=1, max_length=128,
                                description="Registered handler; the config's default if absent")
    type: Literal["immediate", "delayed"] = "immediate"
    queue_name: str = Field("default", pattern=QUEUE_NAME_PATTERN)
    priority: int = Field(0, ge=INT32_MIN, le=INT32_MAX)
    payload: Any = Field(default_factory=dict, description="Any JSON value")
    dedup_key: str | None = Field(None, min_length=1, max_length=256)
    max_retries: int | None = Field(None, ge=0, le=1000)
    timeout_seconds: float | None = Field(None, gt=0, le=7 * 86400)
    run_at: AwareDatetime | None = Field(None, description="RFC 3339, for type delayed")
    delay_seconds: float | None = Field(None, ge=0, le=366 * 86400,
                                        description="For type delayed, instead of run_at")


class ReplayDlq(_Strict):
    count: int = Field(10, ge=1, le=10_000)
    override_priority: int | None = Field(None, ge=INT32_MIN, le=INT32_MAX)


class DlqQuery(BaseModel):
    # Query strings are text: plain (lax) mode turns "50" into 50.
    model_config = ConfigDict(extra="ignore")
    count: int = Field(50, ge=1, le=1000)
