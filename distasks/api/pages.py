"""List pages within a byte budget, and the limiter that reads with payloads share
(architecture §7).

A page of a list (tasks, DLQ) with `include_payload=true` could hold its row limit of
the largest payloads: hundreds of megabytes, held two or three times over (rows, JSON,
body) and per concurrent request. A page here stops before the item that would take its
JSON past `http.max_response_bytes` and answers the usual `next_cursor` for the rest; an
item larger than the budget goes alone, so that every item stays reachable. The store
cuts the page first by its own measure of the payloads (store.base.within_payload_budget),
so the rows a response cannot hold never reach the daemon. Reads with payloads also wait
for one of `http.heavy_reads` slots, so that many of them queue instead of each holding
its page in memory at once.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

import trio
from quart import Quart, current_app
from quart.json.provider import DefaultJSONProvider

from distasks.domain.errors import Refused
from distasks.domain.model import JsonText

# Room in the budget for what a page holds besides its items (cursor, queue, count).
ENVELOPE_BYTES = 1024
# Longest a read with payloads waits for a slot before it is refused (503, try again).
HEAVY_READ_WAIT_S = 30.0
# What a refused read is told to wait before it tries again.
RETRY_AFTER_S = 1
# Encoded bytes between two chances for other tasks (/healthz, creates) to run.
CHECKPOINT_BYTES = 256 * 1024
# Where the app keeps the heavy reads' CapacityLimiter.
SLOTS_KEY = "distasks.heavy_reads"


class Encoded(list[str]):
    """Items already encoded as JSON, spliced into a response by PageJSON."""


class PageJSON(DefaultJSONProvider):
    """Quart's JSON (compact, keys in their order), with `Encoded` values of a top-level
    document spliced in as arrays, and JsonText values as they are, instead of encoded
    again."""

    sort_keys = False

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        encode = super().dumps
        if not (isinstance(obj, dict)
                and any(isinstance(v, Encoded | JsonText) for v in obj.values())):
            return encode(obj, **kwargs)
        return "{" + ",".join(
            encode(key, **kwargs) + ":"
            + ("[" + ",".join(value) + "]" if isinstance(value, Encoded)
               else value if isinstance(value, JsonText)
               else encode(value, **kwargs))
            for key, value in obj.items()) + "}"


def install(app: Quart, *, heavy_reads: int) -> None:
    """The JSON provider, and the slots reads with payloads share (`http.heavy_reads`)."""
    app.json = PageJSON(app)
    app.extensions[SLOTS_KEY] = trio.CapacityLimiter(heavy_reads)


def dumps(value: Any) -> str:
    """Compact JSON, as jsonify writes it; the JsonText values of an object (a task's
    payload as stored) are spliced in as they are, not decoded and encoded again."""
    if isinstance(value, dict) and any(isinstance(v, JsonText) for v in value.values()):
        return "{" + ",".join(
            _compact(key) + ":" + (v if isinstance(v, JsonText) else _compact(v))
            for key, v in value.items()) + "}"
    return _compact(value)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


async def fit(items: Iterable[Any], max_response_bytes: int) -> Encoded:
    """The leading `items`, encoded, whose JSON (with the commas between them and room
    for the page's other fields) stays within `max_response_bytes`; the first always.
    Items after the first left out are not encoded. Lets other tasks run every
    CHECKPOINT_BYTES encoded (a page of large payloads is milliseconds of encoding)."""
    budget = max_response_bytes - ENVELOPE_BYTES
    out, size, unyielded = Encoded(), 0, 0
    for item in items:
        text = dumps(item)
        size += len(text) + 1
        if out and size > budget:
            break
        out.append(text)
        unyielded += len(text)
        if unyielded >= CHECKPOINT_BYTES:
            await trio.lowlevel.checkpoint()
            unyielded = 0
    return out


@contextlib.asynccontextmanager
async def heavy_read(heavy: bool) -> AsyncIterator[None]:
    """Holds one of the `http.heavy_reads` slots for the block when `heavy` (a read with
    payloads); Refused (503) after HEAVY_READ_WAIT_S without one."""
    if not heavy:
        yield
        return
    limiter: trio.CapacityLimiter = current_app.extensions[SLOTS_KEY]
    with trio.move_on_after(HEAVY_READ_WAIT_S) as waiting:
        await limiter.acquire()
    if waiting.cancelled_caught:
        raise Refused(503, "busy", "too many reads with payloads at once; try again",
                      {"Retry-After": str(RETRY_AFTER_S)})
    try:
        yield
    finally:
        limiter.release()
