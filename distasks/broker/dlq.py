"""The DLQ index: a list of dead task ids per queue, indexing what PostgreSQL keeps."""

from __future__ import annotations

from collections.abc import Sequence

from distasks.broker.base import BrokerBase, crossing
from distasks.broker.keys import Rank


class DlqCommands(BrokerBase):
    """Entries leave the index on replay or delete; a rebuild replaces it."""

    @crossing
    async def leave_dlq(self, queue: str, removed: Sequence[str],
                        ready: Sequence[tuple[str, Rank]]) -> None:
        """Take `removed` task ids out of the DLQ index and push the `ready` (run id,
        rank) of those replayed (none for a deletion)."""
        keys = self.keys(queue)
        async with self._redis.pipeline(transaction=True) as pipe:
            for task_id in removed:
                pipe.lrem(keys.dlq, 1, task_id)
            if ready:
                self._push(pipe, queue, ready)
            await self._execute(pipe)

    @crossing
    async def restore_dlq(self, queue: str, task_ids: Sequence[str]) -> None:
        """Replace the DLQ index of a queue with `task_ids` (oldest first)."""
        dlq = self.keys(queue).dlq
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(dlq)
            if task_ids:
                pipe.rpush(dlq, *task_ids)
            await pipe.execute()
