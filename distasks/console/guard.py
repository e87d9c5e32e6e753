"""Who is looking at a console page, and whether they may: the console's side of
architecture §7, run before every console route.

The API's check (distasks.api.access) wants a bearer token and JSON bodies; a browser has
a session cookie and sends forms. So the console checks for itself, with the same parts:
the Host rule, the principal as the API's lookup makes it (from the session's credential,
or the anonymous loopback principal), each page's scope and the rate limits through
`access.require`. On top, for every POST: no other web origin, and the session's CSRF
token. What a page hides is courtesy; this is the protection (DESIGN promise 9).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from quart import g, request

from distasks.access import principals
from distasks.access.principals import Principal
from distasks.api import access, connections
from distasks.api.services import Services
from distasks.console import sessions
from distasks.domain.errors import Refused, Unauthenticated

# No inline script or style, nothing from another origin, no framing, forms post only
# here. The console's own files are all it loads.
HEADERS = {
    **access.SECURITY_HEADERS,
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"),
    # A form's POST carries its Origin only under a policy that sends something to the
    # same origin (under no-referrer, Chromium sends "Origin: null"); nothing goes
    # elsewhere.
    "Referrer-Policy": "same-origin",
}


# Sent by console.js when a page refreshes itself: that keeps no session alive.
REFRESH_HEADER = "X-Console-Refresh"


class SignInNeeded(Exception):
    """No live session and no anonymous access: the page sends the browser to sign in."""


@dataclass(frozen=True, slots=True)
class Visitor:
    """Who looks: the principal (as the API would see them) and their session."""

    principal: Principal
    session: sessions.Session


def access_request(credential: str | None) -> access.Request:
    """This request as the API's access control reads it, with the session's credential
    as a bearer token in place of the cookie."""
    headers = {k.lower(): v for k, v in request.headers.items()
               if k.lower() not in ("authorization", "cookie")}
    if credential is not None:
        headers["authorization"] = f"Bearer {credential}"
    return access.Request(request.method, headers, request.remote_addr or "")


def check_transport(s: Services) -> None:
    """The Host rule, and for a POST: sent by a page of this very origin. A browser says
    where a form comes from (Origin, Sec-Fetch-Site); a tool that sends neither still
    needs the CSRF token, which only a session's own pages hold."""
    req = access_request(None)
    access.check_host(req, s.config)
    if request.method in access.SAFE_METHODS:
        return
    origin = request.headers.get("origin")
    if (origin is not None and origin not in s.config.http.trusted_origins
            and not same_host(origin, request.headers.get("host", ""))):
        raise Refused(403, "cross_origin", f"console forms from {origin!r} are refused")
    if request.headers.get("sec-fetch-site") in ("cross-site", "same-site"):
        raise Refused(403, "cross_origin", "cross-site console forms are refused")


def same_host(origin: str, host: str) -> bool:
    """Whether a form's Origin names the host this request was sent to. Host names only:
    behind a TLS proxy the scheme differs, and a proxy may forward Host without the port
    (deploy/nginx sends $host); Sec-Fetch-Site and the CSRF token still apply."""
    try:
        theirs = urlsplit(origin).hostname
        ours = urlsplit(f"//{host}").hostname
    except ValueError:
        return False
    return theirs is not None and theirs == ours


async def visitor(s: Services) -> Visitor:
    """The signed-in (or anonymous) visitor of this request; SignInNeeded if there is none.
    A session whose credential the API no longer accepts (revoked, expired) is ended."""
    now = s.clock()
    session = await sessions.resume(s.broker, request.cookies.get(sessions.COOKIE, ""),
                                    now=now, touch=REFRESH_HEADER not in request.headers)
    req = access_request(session.credential if session else None)
    g.address = access.address(s, req)
    if session is not None and session.credential is not None:
        try:
            who = await access.principal(s, req)
        except Unauthenticated:
            await sessions.end(s.broker, session.session_id)
            g.clear_cookie = True
            raise SignInNeeded() from None
        assert who is not None
        return Visitor(who, session)
    # No credential: the anonymous principal, where this request may be anonymous.
    anonymous = await access.principal(s, access_request(None))
    if anonymous is None:
        if session is not None:
            await sessions.end(s.broker, session.session_id)
            g.clear_cookie = True
        raise SignInNeeded()
    if session is None:
        # A session all the same: it is what the CSRF token is bound to.
        session = await sessions.start(s.broker, None, now=now)
        g.new_session = session
    return Visitor(anonymous, session)


def admit(who: Visitor) -> None:
    """Record `who` for the request: the audit actor (services.actor) reads g.principal."""
    g.principal = who.principal
    g.visitor = who
    connections.note_authenticated(request.scope)


def check_csrf(who: Visitor, given: str | None) -> None:
    if not sessions.csrf_matches(who.session.session_id, given):
        raise Refused(403, "csrf", "the form's CSRF token is missing or not this session's; "
                      "reload the page and try again")


def secure_cookie(s: Services) -> bool:
    """Whether the browser reached us over TLS: directly, or through a trusted proxy that
    says so."""
    if request.scheme == "https":
        return True
    proto = request.headers.get("x-forwarded-proto", "").lower()
    return proto == "https" and principals.in_networks(request.remote_addr or "",
                                                       s.config.auth.trusted_proxies)
