"""Keyset cursors: the (timestamp, id) of the last item of a page, as
`<microseconds since the epoch>_<id as 32 hex digits>`. Any string of that shape is a
valid cursor (it names a position), so clients and fuzzers cannot make one that fails."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

from distasks.domain.errors import InvalidInput

PATTERN = r"^[0-9]{1,17}_[0-9a-f]{32}$(?!\n)"  # (?!\n): see config.QUEUE_NAME_PATTERN
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def encode(at: datetime, item_id: uuid.UUID) -> str:
    micros = (at - _EPOCH) // timedelta(microseconds=1)
    return f"{micros}_{item_id.hex}"


def decode(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    """The key a cursor names; InvalidInput (field `cursor`) if it is not of that shape."""
    if cursor is None:
        return None
    if not re.fullmatch(PATTERN, cursor):
        raise InvalidInput("cursor is not a cursor this API gave out", field="cursor")
    micros, hex_id = cursor.split("_")
    return _EPOCH + timedelta(microseconds=int(micros)), uuid.UUID(hex_id)
