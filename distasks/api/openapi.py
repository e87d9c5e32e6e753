"""The OpenAPI document, generated from the same declarations that route and validate
requests: every route is declared with `operation(...)`, which registers it with Quart
and records its body, query and response models here."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from quart import Blueprint

from distasks.api.schemas import ErrorOut
from distasks.domain.cron import known_zones
from distasks.domain.fields import JSON_VALUE_SCHEMA, QUEUE_NAME_PATTERN

F = TypeVar("F", bound=Callable[..., Any])

# Path parameters by name: what a valid one looks like.
PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "task_id": {"type": "string", "format": "uuid"},
    "key_id": {"type": "string", "format": "uuid"},
    "workflow_id": {"type": "string", "format": "uuid"},
    "queue": {"type": "string", "pattern": QUEUE_NAME_PATTERN},
    # a schedule's name
    "name": {"type": "string", "pattern": QUEUE_NAME_PATTERN},
}

# Errors every operation may answer, besides its own.
COMMON_ERRORS = {
    "400": "Malformed JSON, or a Host this daemon does not answer to",
    "422": "Invalid input: the body names the field",
    "503": "PostgreSQL or Redis unavailable (or, for a list with payloads, too many at "
           "once: busy); retry after Retry-After seconds",
}


@dataclass(frozen=True)
class Operation:
    method: str
    rule: str
    summary: str
    tag: str
    responses: dict[int, type[BaseModel] | None]
    #: what a principal needs to call it (distasks.access.principals.SCOPES); None: open to anyone
    scope: str | None = None
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    errors: dict[int, str] = field(default_factory=dict)
    #: False when every field has a default, so an empty body is as good as {}
    body_required: bool = True

    @property
    def path(self) -> str:
        """The OpenAPI path: Quart's `<name>` becomes `{name}`."""
        return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", self.rule)


OPERATIONS: list[Operation] = []


# The scope each Quart endpoint ("blueprint.function") needs; absent: open.
SCOPE_BY_ENDPOINT: dict[str, str] = {}


def operation(bp: Blueprint, method: str, rule: str, *, summary: str, tag: str,
              responses: dict[int, type[BaseModel] | None], scope: str | None = None,
              body: type[BaseModel] | None = None, query: type[BaseModel] | None = None,
              errors: dict[int, str] | None = None,
              body_required: bool = True) -> Callable[[F], F]:
    """Register a route on `bp` and describe it in the OpenAPI document; `scope` is what
    a caller needs (api/access.py checks it before the route runs)."""
    op = Operation(method.upper(), rule, summary, tag, responses, scope, body, query,
                   errors or {}, body_required)
    OPERATIONS.append(op)

    def register(fn: F) -> F:
        bp.route(rule, methods=[op.method])(fn)
        if scope is not None:
            SCOPE_BY_ENDPOINT[f"{bp.name}.{fn.__name__}"] = scope
        return fn

    return register


def document(*, title: str, version: str, handlers: Mapping[str, dict[str, Any] | None],
             anonymous_allowed: bool = False,
             keyless_scopes: frozenset[str] = frozenset(),
             jwt: bool = False) -> dict[str, Any]:
    """The document of every declared operation. `handlers` are this daemon's handlers
    by name with the JSON Schema of the payloads each accepts (`{}`: any JSON value;
    None: none at all, so the name is left out), so that the document promises no more
    than the server takes. With `anonymous_allowed` (auth.anonymous = "loopback") a key
    is optional, and so it is for the `keyless_scopes` (metrics:read, when
    auth.metrics_networks names any). With `jwt` (auth.jwt.enabled) a JWT from the
    configured identity provider is accepted wherever a key is."""
    models: set[type[BaseModel]] = {ErrorOut}
    for op in OPERATIONS:
        models.update(m for m in op.responses.values() if m is not None)
        if op.body is not None:
            models.add(op.body)
    _, top = models_json_schema([(m, "validation") for m in sorted(models, key=lambda m: m.__name__)],
                                ref_template="#/components/schemas/{model}")
    schemas = top.get("$defs", {})
    schemas["JsonValue"] = JSON_VALUE_SCHEMA
    # A task's handler and payload, wherever a task is described (a create, a schedule's
    # template): only registered handlers, each with the payloads it takes.
    for model in ("CreateTask", "ScheduleTask"):
        create = schemas[model]["properties"]
        create["payload"] = {"$ref": "#/components/schemas/JsonValue",
                             "description": create["payload"].get("description", "")}
        [handler_name, _null] = create["handler"]["anyOf"]
        handler_name["enum"] = sorted(name for name, payload in handlers.items()
                                      if payload is not None)
        schemas[model].setdefault("allOf", []).extend(
            {"if": {"required": ["handler"], "properties": {"handler": {"const": name}}},
             "then": {"properties": {"payload": payload}}}
            for name, payload in sorted(handlers.items()) if payload)
    # The time zones this daemon knows (its tzdata): a name outside them is a 422.
    zones = sorted(known_zones())
    schemas["CreateSchedule"]["properties"]["timezone"]["enum"] = zones
    [zone_name, _null] = schemas["UpdateSchedule"]["properties"]["timezone"]["anyOf"]
    zone_name["enum"] = zones
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(
            op, anonymous_allowed or op.scope in keyless_scopes, jwt)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version,
                 "description": "distasks: tasks recorded in PostgreSQL, dispatched via Redis."},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": security_schemes(jwt)},
    }


def security_schemes(jwt: bool) -> dict[str, Any]:
    schemes: dict[str, Any] = {"apiKey": {
        "type": "http", "scheme": "bearer",
        "description": "An API key (dtk_…) from `distasks keys create`; each operation "
                       "names the scope it needs"}}
    if jwt:
        schemes["jwt"] = {
            "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
            "description": "A JWT from the configured identity provider (auth.jwt): HS256, "
                           "RS256 or EdDSA as configured, with exp, iss and aud; its scope "
                           "claim grants the scopes each operation names"}
    return schemes


def _operation(op: Operation, key_optional: bool, jwt: bool) -> dict[str, Any]:
    summary = op.summary if op.scope is None else f"{op.summary} (scope {op.scope})"
    doc: dict[str, Any] = {"summary": summary, "tags": [op.tag],
                           "operationId": re.sub(r"\W+", "_", f"{op.method}_{op.path}").strip("_")}
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": PATH_PARAMETERS[name]}
        for name in re.findall(r"{([a-z_]+)}", op.path)]
    if op.query is not None:
        schema = op.query.model_json_schema()
        required = set(schema.get("required", []))
        for name, prop in schema.get("properties", {}).items():
            params.append({"name": name, "in": "query", "required": name in required,
                           "schema": _inline(prop)})
    if params:
        doc["parameters"] = params
    if op.body is not None:
        doc["requestBody"] = {"required": op.body_required, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{op.body.__name__}"}}}}
    responses: dict[str, Any] = {}
    for status, model in op.responses.items():
        entry: dict[str, Any] = {"description": "OK" if status < 300 else "See the body"}
        if model is not None:
            entry["content"] = {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}
        responses[str(status)] = entry
    error_ref = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
    own = dict(op.errors)
    if op.scope is not None:
        schemes: list[dict[str, list[str]]] = [{"apiKey": []}]
        if jwt:
            schemes.append({"jwt": []})
        doc["security"] = [*schemes, {}] if key_optional else schemes
        own.setdefault(401, "No API key, or one unknown, expired or revoked"
                       + ("; or a JWT refused (expired, another audience or issuer, a bad "
                          "signature)" if jwt else ""))
        own.setdefault(403, f"The key lacks the scope {op.scope}, or a cross-site write")
        own.setdefault(429, "Over the rate limit of the key or its tenant; see Retry-After")
    if op.method not in ("GET", "HEAD"):
        own.setdefault(415, "A body that is not Content-Type: application/json")
    for status, text in {**{int(k): v for k, v in COMMON_ERRORS.items()}, **own}.items():
        responses.setdefault(str(status), {"description": text, "content": error_ref})
    if op.body is not None:
        responses.setdefault("413", {"description": "Body or payload too large",
                                     "content": error_ref})
    doc["responses"] = responses
    return doc


def _inline(prop: dict[str, Any]) -> dict[str, Any]:
    """Query parameter schemas are small; drop titles and keep them inline."""
    return {k: v for k, v in prop.items() if k != "title"}
