"""The OpenAPI document describes every route the app serves, from the same models
that validate requests."""

from __future__ import annotations

import re

from distasks.api import create_app
from distasks.api.services import Services
from distasks.config import QUEUE_NAME_PATTERN, Config
from distasks.control import TaskWaiters
from distasks.handlers import builtin_registry


def make_app():
    return create_app(Services(config=Config(), store=None, broker=None, intake=None,  # type: ignore[arg-type]
                               registry=builtin_registry(), waiters=TaskWaiters(),
                               clock=lambda: 0.0))


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
