"""The registry of daemons: who runs, since when, and their last heartbeat."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row

from distasks.store.base import StoreBase, query


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """What a daemon registers about itself."""

    id: str
    host: str
    pid: int
    queues: tuple[str, ...]
    concurrency: int
    version: str
    started_at: datetime


REGISTER_WORKER = """
INSERT INTO workers (id, host, pid, queues, concurrency, version, started_at, heartbeat_at)
VALUES (%(id)s, %(host)s, %(pid)s, %(queues)s, %(concurrency)s, %(version)s, %(now)s, %(now)s)
ON CONFLICT (id) DO UPDATE
SET queues = excluded.queues, concurrency = excluded.concurrency,
    heartbeat_at = excluded.heartbeat_at, stopped_at = NULL
"""

LIST_WORKERS = """
SELECT * FROM workers WHERE heartbeat_at >= %(since)s ORDER BY started_at DESC
"""

RUNNING_BY_WORKER = """
SELECT r.worker_id, r.id AS run_id, r.task_id, r.attempt, r.started_at, r.lease_expires_at,
       t.name, t.handler, t.queue_name
FROM task_runs r JOIN tasks t ON t.id = r.task_id
WHERE r.status = 'running' AND r.worker_id = ANY(%s)
ORDER BY r.started_at
"""


class WorkerQueries(StoreBase):
    @query
    async def register_worker(self, w: WorkerInfo) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(REGISTER_WORKER, {
                "id": w.id, "host": w.host, "pid": w.pid, "queues": list(w.queues),
                "concurrency": w.concurrency, "version": w.version, "now": w.started_at})

    @query
    async def list_workers(self, *, since: datetime
                           ) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
        """Daemons that heartbeat since `since`, newest first, each with its running runs."""
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(LIST_WORKERS, {"since": since})
            workers = await cur.fetchall()
            await cur.execute(RUNNING_BY_WORKER, ([w["id"] for w in workers],))
            runs = await cur.fetchall()
        by_worker: dict[str, list[dict[str, Any]]] = {}
        for r in runs:
            by_worker.setdefault(r["worker_id"], []).append(r)
        return [(w, by_worker.get(w["id"], [])) for w in workers]
