"""The OpenAPI document describes every route the app serves, from the same models
that validate requests."""

from __future__ import annotations

import re

from distasks.api import create_app
from distasks.api.services import Services
from distasks.config import Config
from distasks.daemon.waiters import TaskWaiters
from distasks.domain.fields import QUEUE_NAME_PATTERN
from distasks.handlers import builtin_registry


def offline_services(registry) -> Services:
    """What the app needs to describe itself: no store, broker or components."""
    return Services(config=Config(), store=None, broker=None, intake=None,  # type: ignore[arg-type]
                    registry=registry, waiters=TaskWaiters(), clock=lambda: 0.0,
                    operations=None, keys=None, limiter=None, quotas=None)  # type: ignore[arg-type]


def make_app():
    return create_app(offline_services(builtin_registry()))


async def test_every_route_is_in_the_document_and_nothing_else():
    app = make_app()
    spec = (await (await app.test_client().get("/openapi.json")).get_json())
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint in ("static", "openapi_json"):
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            served.add((method.lower(), path))
    documented = {(m, p) for p, ops in spec["paths"].items() for m in ops}
    assert served == documented


async def test_request_schemas_come_from_the_validating_models():
    spec = await (await make_app().test_client().get("/openapi.json")).get_json()
    create = spec["paths"]["/api/v1/tasks"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CreateTask"}
    schema = spec["components"]["schemas"]["CreateTask"]
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["name"]
    assert schema["properties"]["queue_name"]["pattern"] == QUEUE_NAME_PATTERN
    for op in (op for ops in spec["paths"].values() for op in ops.values()):
        assert "503" in op["responses"] and "422" in op["responses"]


def http_app(allowed_hosts: tuple[str, ...]):
    from distasks.handlers.http import HttpHandler
    registry = builtin_registry(http=HttpHandler(allowed_hosts, 1000))
    return create_app(offline_services(registry))


async def test_a_handler_that_accepts_no_payload_is_not_offered():
    """With no allowed host the http handler refuses every create: the document must not
    offer it."""
    spec = await (await http_app(()).test_client().get("/openapi.json")).get_json()
    [name, _null] = spec["components"]["schemas"]["CreateTask"]["properties"]["handler"]["anyOf"]
    assert name["enum"] == ["demo", "noop"]


async def test_the_http_handler_payload_schema_names_its_allowed_hosts():
    spec = await (await http_app(("api.example.com",)).test_client().get("/openapi.json")
                  ).get_json()
    create = spec["components"]["schemas"]["CreateTask"]
    assert "http" in create["properties"]["handler"]["anyOf"][0]["enum"]
    [rule] = [r for r in create["allOf"] if r["if"]["properties"]["handler"]["const"] == "http"]
    url = re.compile(rule["then"]["properties"]["payload"]["properties"]["url"]["pattern"])
    assert url.match("https://API.example.com/hook")
    assert url.match("http://api.example.com:80/hook")
    assert not url.match("https://api.example.com:8443/hook")  # no port named: 80, 443
    assert not url.match("https://api.example.com.evil.test/")
    assert not url.match("https://api.example.com:99999/")


async def test_free_text_and_payload_strings_exclude_nul_in_the_document():
    spec = await (await make_app().test_client().get("/openapi.json")).get_json()
    schemas = spec["components"]["schemas"]
    assert schemas["CreateTask"]["properties"]["name"]["pattern"] == "^[^\\x00]*$"
    assert schemas["CreateTask"]["properties"]["payload"]["$ref"] == (
        "#/components/schemas/JsonValue")
    strings = [s for s in schemas["JsonValue"]["anyOf"] if s.get("type") == "string"]
    assert strings == [{"type": "string", "pattern": "^[^\\x00]*$"}]


def test_the_scopes_a_key_may_be_given_are_the_scopes_there_are():
    import typing

    from distasks.access.principals import SCOPES
    from distasks.api.schemas import ScopeName
    assert set(typing.get_args(ScopeName)) == set(SCOPES)
