"""The console's blueprint, and the scope each of its routes needs (checked by
console.hooks before the route runs, as openapi.SCOPE_BY_ENDPOINT is for the API)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from quart import Blueprint

F = TypeVar("F", bound=Callable[..., Any])

bp = Blueprint("console", __name__, url_prefix="/console", template_folder="templates",
               static_folder="static", static_url_path="/static")

#: endpoint -> the scope it needs (None: any signed-in visitor)
SCOPE_BY_ENDPOINT: dict[str, str | None] = {}


def page(rule: str, scope: str | None, *, methods: tuple[str, ...] = ("GET",),
         ) -> Callable[[F], F]:
    """Route `rule` (under /console) to the function, needing `scope`."""
    def register(fn: F) -> F:
        SCOPE_BY_ENDPOINT[f"console.{fn.__name__}"] = scope
        bp.add_url_rule(rule, fn.__name__, fn, methods=list(methods))
        return fn
    return register
