"""Console sessions: a credential the API accepts (an API key or a JWT), given once at
sign-in and kept server-side, so that the browser holds only a random session id in an
HttpOnly, SameSite=Strict cookie.

Redis keeps each session under a digest of its id, with the credential encrypted by a key
derived from the same id: what Redis holds is useless without the cookie, and the cookie
alone holds no credential. The CSRF token is derived from the id too, so nothing else is
stored. Every request presents the credential to the API's own principal lookup
(distasks.api.access.principal, cached), so a revoked key signs its sessions out within
that cache's lifetime and a JWT's expiry ends its session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from distasks.broker import Broker

COOKIE = "distasks_console"
# A session unused this long ends (each page view, including the page's own refresh,
# starts it again).
IDLE_S = 30 * 60
# A session ends this long after sign-in, used or not.
MAX_AGE_S = 12 * 3600
# Random bytes of a session id.
ID_BYTES = 32
# Bytes of an AES-GCM nonce.
NONCE_BYTES = 12


@dataclass(frozen=True, slots=True)
class Session:
    """A live session: the credential it signed in with (None: the anonymous principal of
    a loopback request, where auth.anonymous allows it) and when it began."""

    session_id: str
    credential: str | None
    started_at: float

    @property
    def csrf_token(self) -> str:
        return csrf_token(self.session_id)


def new_id() -> str:
    return secrets.token_urlsafe(ID_BYTES)


def csrf_token(session_id: str) -> str:
    return hmac.new(_derive(session_id, b"csrf"), b"console-csrf", hashlib.sha256).hexdigest()


def csrf_matches(session_id: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(csrf_token(session_id), given)


def _derive(session_id: str, purpose: bytes) -> bytes:
    return hashlib.sha256(purpose + b":" + session_id.encode()).digest()


def _digest(session_id: str) -> str:
    return _derive(session_id, b"id").hex()


async def start(broker: Broker, credential: str | None, *, now: float) -> Session:
    """A new session for `credential`, stored."""
    session = Session(new_id(), credential, now)
    sealed = None
    if credential is not None:
        nonce = secrets.token_bytes(NONCE_BYTES)
        box = AESGCM(_derive(session.session_id, b"key"))
        sealed = base64.b64encode(nonce + box.encrypt(nonce, credential.encode(), None)).decode()
    blob = json.dumps({"credential": sealed, "started_at": now})
    await broker.put_session(_digest(session.session_id), blob, idle_ms=IDLE_S * 1000)
    return session


async def resume(broker: Broker, session_id: str, *, now: float,
                 touch: bool = True) -> Session | None:
    """The session of a cookie's id, its idle time started again unless not `touch` (a
    page refreshing itself is nobody's activity); None if there is none (expired, signed
    out, past MAX_AGE_S, or not one this deployment made)."""
    if not session_id or len(session_id) > 128:
        return None
    blob = await broker.touch_session(_digest(session_id),
                                      idle_ms=IDLE_S * 1000 if touch else None)
    if blob is None:
        return None
    try:
        state = json.loads(blob)
        started_at = float(state["started_at"])
        credential = None
        if state["credential"] is not None:
            raw = base64.b64decode(state["credential"])
            box = AESGCM(_derive(session_id, b"key"))
            credential = box.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], None).decode()
    except (ValueError, KeyError, TypeError, InvalidTag):
        return None
    if now - started_at > MAX_AGE_S:
        await end(broker, session_id)
        return None
    return Session(session_id, credential, started_at)


async def end(broker: Broker, session_id: str) -> None:
    await broker.drop_session(_digest(session_id))
