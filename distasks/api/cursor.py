"""Opaque keyset cursors: the (timestamp, id) of the last item of a page."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime

from distasks.errors import InvalidInput


def encode(at: datetime, item_id: uuid.UUID) -> str:
    raw = json.dumps([at.isoformat(), str(item_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    """The key a cursor names; InvalidInput (field `cursor`) if it is not one of ours."""
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, item_id = json.loads(raw)
        key = (datetime.fromisoformat(at), uuid.UUID(item_id))
    except (ValueError, TypeError, UnicodeDecodeError):
        raise InvalidInput("cursor is not a cursor this API gave out", field="cursor") from None
    if key[0].tzinfo is None:
        raise InvalidInput("cursor is not a cursor this API gave out", field="cursor")
    return key
