"""The web console (issue 20): pages served by the daemon itself at /console, on the API's
port and behind the same access control (console.guard), rendered on the server from
Jinja templates; its only script and style are the package's own static files.

Sits above the API, whose access control, services and parsing it reuses, and below the
supervisor, which installs it on the API's app. May import everything but the supervisor
and the command line (tests/unit/test_layers.py).
"""

from __future__ import annotations

from quart import Quart

from distasks.api import OWN_ACCESS
from distasks.console import (  # noqa: F401 (their routes register)
    actions,
    hooks,
    pages,
    workflows,
)
from distasks.console.blueprint import bp
from distasks.console.day import DAY_CACHE, DayCache


def install(app: Quart) -> None:
    """Serve the console on `app` (made by distasks.api.create_app) at /console."""
    app.register_blueprint(bp)
    app.extensions[DAY_CACHE] = DayCache()
    app.extensions[OWN_ACCESS].add(bp.name)
