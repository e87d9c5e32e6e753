"""Console sessions: opaque blobs under a digest of the session id, kept while in use.

Redis holds them (not one daemon's memory) so that every daemon behind one port serves
the same signed-in browser; losing them only signs people out."""

from __future__ import annotations

from distasks.broker.base import BrokerBase, crossing
from distasks.broker.keys import console_session_key


class SessionCommands(BrokerBase):
    """Put, touch and drop console sessions."""

    @crossing
    async def put_session(self, session_digest: str, blob: str, *, idle_ms: int) -> None:
        """Keep `blob` for `idle_ms` (each touch starts that time again)."""
        await self._redis.set(console_session_key(self._prefix, session_digest), blob,
                              px=idle_ms)

    @crossing
    async def touch_session(self, session_digest: str, *, idle_ms: int | None) -> str | None:
        """The session's blob, its idle time started again (`idle_ms` None: left as it
        is); None once it expired or was dropped."""
        key = console_session_key(self._prefix, session_digest)
        found = await (self._redis.getex(key, px=idle_ms) if idle_ms is not None
                       else self._redis.get(key))
        return found if isinstance(found, str) or found is None else found.decode()

    @crossing
    async def drop_session(self, session_digest: str) -> None:
        await self._redis.delete(console_session_key(self._prefix, session_digest))
