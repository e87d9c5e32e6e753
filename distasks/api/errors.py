"""Every error the API answers, as `{"error": {"code", "message", "field"}}` with a 4xx
(or 503 while a backing service is down); a 500 never carries a traceback."""

from __future__ import annotations

import logging
from typing import Any

import pydantic
from quart import Quart, Response, jsonify
from werkzeug.exceptions import HTTPException

from distasks.api.schemas import API_PATTERN_RULES
from distasks.domain.errors import (
    BrokerUnavailable,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    Refused,
    StoreUnavailable,
    UnknownHandler,
)
from distasks.domain.fields import invalid_input

log = logging.getLogger(__name__)

# Seconds a client should wait before retrying while PostgreSQL or Redis is down.
RETRY_AFTER_S = 2


def error_response(status: int, code: str, message: str, field: str | None = None) -> Response:
    response = jsonify(_body(code, message, field))
    response.status_code = status
    return response


def from_validation_error(e: pydantic.ValidationError) -> InvalidInput:
    """The first problem pydantic found, with the field as a dotted path."""
    return invalid_input(e, API_PATTERN_RULES)

INTERNAL_BODY: dict[str, Any] = {"error": {
    "code": "internal", "message": "internal error; see the daemon's log", "field": None}}


def error_for(e: Exception) -> tuple[int, dict[str, Any], dict[str, str]] | None:
    """Status, JSON body and extra headers for one of our errors; None for anything else
    (a bug: a 500). Shared by the Quart routes and the lean create route (api/fast.py)."""
    if isinstance(e, InvalidInput):
        if isinstance(e, PayloadTooLarge):
            status = 413
        elif isinstance(e, UnknownHandler) or e.code not in ("malformed_json", "invalid_body"):
            status = 422
        else:
            status = 400
        return status, _body(e.code, e.message, e.field), {}
    if isinstance(e, Refused):
        return e.status, _body(e.code, e.message, e.field), e.headers
    if isinstance(e, NotFound):
        return 404, _body("not_found", e.message), {}
    if isinstance(e, StoreUnavailable | BrokerUnavailable):
        what = "postgres" if isinstance(e, StoreUnavailable) else "redis"
        return (503, _body(f"{what}_unavailable", f"{what} is unavailable, try again"),
                {"Retry-After": str(RETRY_AFTER_S)})
    return None


def _body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field}}


def install(app: Quart) -> None:
    @app.errorhandler(InvalidInput)
    @app.errorhandler(NotFound)
    @app.errorhandler(StoreUnavailable)
    @app.errorhandler(BrokerUnavailable)
    @app.errorhandler(Refused)
    async def ours(e: Exception) -> Response:
        mapped = error_for(e)
        assert mapped is not None
        status, body, headers = mapped
        response = jsonify(body)
        response.status_code = status
        response.headers.update(headers)
        return response

    @app.errorhandler(HTTPException)
    async def http_error(e: HTTPException) -> Response:
        code = (e.name or "error").lower().replace(" ", "_")
        field = "body" if e.code == 413 else None
        response = error_response(e.code or 500, code, e.description or e.name or "error", field)
        for name, value in e.get_headers():
            if name.lower() == "allow":  # a 405 lists the methods the resource supports
                response.headers["Allow"] = value
        return response

    @app.errorhandler(Exception)
    async def internal(e: Exception) -> Any:
        log.exception("unhandled error in a request", extra={"event": "http_internal_error"})
        response = jsonify(INTERNAL_BODY)
        response.status_code = 500
        return response
