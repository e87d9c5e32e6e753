"""What runs around every console route: access (console.guard), the session cookie,
the security headers, error pages; and signing in and out."""

from __future__ import annotations

import time
from typing import Any

from quart import Response, g, redirect, render_template, request, url_for

from distasks.api import access
from distasks.api.services import actor, services
from distasks.console import guard, sessions
from distasks.console.blueprint import SCOPE_BY_ENDPOINT, bp, page
from distasks.domain import times
from distasks.domain.errors import (
    BrokerUnavailable,
    InvalidInput,
    NotFound,
    Refused,
    StoreUnavailable,
    Unauthenticated,
)
from distasks.store.audit import AuditEvent

# Longest credential accepted at sign-in (a JWT with many claims stays far below).
MAX_CREDENTIAL_CHARS = 8192
# Endpoints served without a signed-in visitor.
OPEN_ENDPOINTS = frozenset({"console.static", "console.sign_in", "console.sign_in_form"})


@bp.before_request
async def check() -> Any:
    g.security_headers = guard.HEADERS
    s = services()
    guard.check_transport(s)
    if request.endpoint == "console.static":
        return None
    try:
        who = await guard.visitor(s)
    except guard.SignInNeeded:
        if request.endpoint in OPEN_ENDPOINTS:
            return None
        if request.method == "GET":
            return redirect(url_for("console.sign_in_form"))
        raise Unauthenticated("sign in to the console first") from None
    guard.admit(who)
    if request.method == "POST":
        form = await request.form
        guard.check_csrf(who, form.get("csrf"))
    scope = SCOPE_BY_ENDPOINT.get(request.endpoint or "")
    if scope is not None:
        await access.require(s, who.principal, scope)
    return None


@bp.after_request
async def keep_session(response: Response) -> Response:
    s = services()
    # What the page cost the daemon, rendering included (bench/console_pages.py reads it).
    started = g.get("started")
    if started is not None:
        response.headers["Server-Timing"] = (
            f"app;dur={(time.perf_counter() - started) * 1000:.2f}")
    new: sessions.Session | None = g.get("new_session")
    if new is not None:
        response.set_cookie(sessions.COOKIE, new.session_id, max_age=sessions.MAX_AGE_S,
                            path="/console", secure=guard.secure_cookie(s), httponly=True,
                            samesite="Strict")
    elif g.get("clear_cookie"):
        response.delete_cookie(sessions.COOKIE, path="/console", secure=guard.secure_cookie(s),
                               httponly=True, samesite="Strict")
    return response


@bp.context_processor
async def visitor_context() -> dict[str, Any]:
    who: guard.Visitor | None = g.get("visitor")

    def can(scope: str) -> bool:
        return who is not None and who.principal.allows(scope)

    return {"who": who.principal if who else None, "can": can,
            "csrf": who.session.csrf_token if who else "",
            "anonymous": who is not None and who.session.credential is None}


async def error_page(status: int, title: str, message: str) -> Response:
    response = Response(await render_template("console/error.html", status=status,
                                              title=title, message=message), status=status)
    return response


@bp.errorhandler(Refused)
async def refused(e: Refused) -> Any:
    if isinstance(e, Unauthenticated) and request.method == "GET":
        return redirect(url_for("console.sign_in_form"))
    response = await error_page(e.status, "Refused", e.message)
    if "Retry-After" in e.headers:
        response.headers["Retry-After"] = e.headers["Retry-After"]
    return response


@bp.errorhandler(InvalidInput)
async def invalid(e: InvalidInput) -> Response:
    return await error_page(422, "Invalid input", e.message)


@bp.errorhandler(NotFound)
async def not_found(e: NotFound) -> Response:
    return await error_page(404, "Not found", e.message)


@bp.errorhandler(StoreUnavailable)
@bp.errorhandler(BrokerUnavailable)
async def unavailable(e: Exception) -> Response:
    what = "PostgreSQL" if isinstance(e, StoreUnavailable) else "Redis"
    response = await error_page(503, "Unavailable", f"{what} is unavailable; try again")
    response.headers["Retry-After"] = "2"
    return response


@page("/sign-in", None)
async def sign_in_form() -> Any:
    who: guard.Visitor | None = g.get("visitor")
    if who is not None and who.session.credential is not None:
        return redirect(url_for("console.overview"))
    return await render_template("console/sign_in.html", problem=None)


@page("/sign-in", None, methods=("POST",))
async def sign_in() -> Any:
    """Exchange an API key or a JWT, checked as the API checks it, for a session."""
    s = services()
    form = await request.form
    credential = (form.get("credential") or "").strip()
    problem = None
    if not credential:
        problem = "Paste an API key (dtk_…) or a JWT."
    elif len(credential) > MAX_CREDENTIAL_CHARS:
        problem = "That is no credential this server gave out."
    else:
        try:
            who = await access.principal(s, guard.access_request(credential))
        except Unauthenticated as e:
            problem = e.message
        else:
            assert who is not None
            session = await sessions.start(s.broker, credential, now=s.clock())
            guard.admit(guard.Visitor(who, session))
            g.new_session = session
            await _audit("console.sign_in", {"name": who.name})
            return redirect(url_for("console.overview"), 303)
    html = await render_template("console/sign_in.html", problem=problem)
    return Response(html, status=401)


@page("/sign-out", None, methods=("POST",))
async def sign_out() -> Any:
    s = services()
    who: guard.Visitor = g.visitor
    await sessions.end(s.broker, who.session.session_id)
    await _audit("console.sign_out", {})
    g.clear_cookie = True
    return redirect(url_for("console.sign_in_form"), 303)


async def _audit(action: str, detail: dict[str, Any]) -> None:
    s = services()
    await s.store.record_events([AuditEvent(at=times.utc(s.clock()), actor=actor(),
                                            action=action, detail=detail)])
