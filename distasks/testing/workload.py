"""The fault runs' workload, seen as a client sees the daemon: `chaos_sleep` tasks created
over HTTP (`create_tasks`, retried idempotently by dedup key), then waits until tasks
are final in PostgreSQL (`wait_completed`, `wait_final`). Every wait is bounded."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
import trio

# Waiting for every accepted task to be final ends after this long without a single
# task becoming final (a takeover needs lease + reaper tick + retry delay, about 4 s),
# or after FINAL_TIMEOUT_S in all.
STALL_TIMEOUT_S = 12.0


STALL_TIMEOUT_S = 12.0
FINAL_TIMEOUT_S = 90.0


# How often PostgreSQL is asked for progress.
POLL_INTERVAL_S = 0.1


# One HTTP request; far above a healthy answer, so it only catches hangs.
HTTP_TIMEOUT_S = 10.0


# Concurrent create requests, and how long one create is retried (503, connection error).
CREATE_CLIENTS = 32


CREATE_CLIENTS = 32
CREATE_RETRY_S = 30.0


# Retry delay of a create: doubles from the first, at most the cap, with jitter.
CREATE_BACKOFF_FIRST_S = 0.05


CREATE_BACKOFF_FIRST_S = 0.05
CREATE_BACKOFF_CAP_S = 0.5



FINAL_STATUSES = ("completed", "failed", "cancelled")



@dataclass
class IntakeStats:
    """What the creates got back."""

    #: task id -> wall-clock time of its first 2xx answer
    accepted: dict[str, float] = field(default_factory=dict)
    #: HTTP status -> answers
    answers: Counter[int] = field(default_factory=Counter)
    #: transport error type -> count
    errors: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    #: creates answered with something other than 2xx or 503 (not retried)
    refused: list[str] = field(default_factory=list)
    #: creates that were still not answered 2xx after CREATE_RETRY_S
    gave_up: int = 0
    done: trio.Event = field(default_factory=trio.Event)



def task_body(tag: str, i: int, ms: int) -> dict[str, Any]:
    # The dedup key makes a retried create idempotent: when the first try committed
    # but its answer was lost, the retry gets the same task (200) instead of a twin.
    return {"name": "chaos", "handler": "chaos_sleep", "payload": {"ms": ms}, "priority": 0,
            "dedup_key": f"{tag}-{i}"}



async def create_tasks(urls: Sequence[str], n: int, stats: IntakeStats, *, tag: str,
                       rate_per_s: float, seed: int = 0) -> None:
    """Create `n` chaos_sleep tasks (50-200 ms) over HTTP, `rate_per_s` at most, at most
    CREATE_CLIENTS in flight, spread over `urls`.

    A create answered 503 or lost to a connection error is retried (on the next URL,
    with backoff, for up to CREATE_RETRY_S); one answered 2xx never is. Only tasks
    answered 2xx are in `stats.accepted`. Sets `stats.done` at the end.
    """
    rng = random.Random(seed)
    durations = [rng.randint(50, 200) for _ in range(n)]
    slots = trio.Semaphore(CREATE_CLIENTS)
    limits = httpx.Limits(max_connections=CREATE_CLIENTS,
                          max_keepalive_connections=CREATE_CLIENTS)

    async def create_one(client: httpx.AsyncClient, i: int) -> None:
        try:
            give_up_at = trio.current_time() + CREATE_RETRY_S
            attempt = 0
            while True:
                url = urls[(i + attempt) % len(urls)]
                try:
                    r = await client.post(f"{url}/api/v1/tasks",
                                          json=task_body(tag, i, durations[i]))
                    stats.answers[r.status_code] += 1
                    if r.status_code in (200, 201):
                        stats.accepted.setdefault(r.json()["task_id"], time.time())
                        return
                    if r.status_code != 503:
                        stats.refused.append(f"{r.status_code} {r.text[:200]}")
                        return
                except httpx.TransportError as e:
                    stats.errors[type(e).__name__] += 1
                attempt += 1
                if trio.current_time() > give_up_at:
                    stats.gave_up += 1
                    return
                stats.retries += 1
                delay = min(CREATE_BACKOFF_CAP_S, CREATE_BACKOFF_FIRST_S * 2 ** min(attempt, 8))
                await trio.sleep(delay * random.uniform(0.5, 1.0))
        finally:
            slots.release()

    try:
        async with (httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, limits=limits) as client,
                    trio.open_nursery() as nursery):
            started = trio.current_time()
            for i in range(n):
                await trio.sleep_until(started + i / rate_per_s)
                await slots.acquire()
                nursery.start_soon(create_one, client, i)
    finally:
        stats.done.set()



def _query(dsn: str, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()



async def query(dsn: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]] | None:
    """Run one read in a thread; None when PostgreSQL cannot answer now (restarting)."""
    try:
        return await trio.to_thread.run_sync(_query, dsn, sql, params, abandon_on_cancel=True)
    except psycopg.Error:
        return None



PROGRESS = """
SELECT count(*) FILTER (WHERE status = 'completed'),
       count(*) FILTER (WHERE status IN ('completed', 'failed', 'cancelled'))
FROM tasks
"""



async def wait_completed(dsn: str, at_least: int) -> None:
    """Until at least `at_least` tasks are completed; the caller bounds the time."""
    while True:
        rows = await query(dsn, PROGRESS)
        if rows and rows[0][0] >= at_least:
            return
        await trio.sleep(POLL_INTERVAL_S)


# Runs by status when the fault is injected: how much it can hit.
AT_THE_FAULT = """
SELECT status, count(*) FROM task_runs WHERE status IN ('queued', 'running')
GROUP BY status ORDER BY status
"""



FINAL_AMONG = """
SELECT count(*) FROM tasks
WHERE id = ANY(%s::uuid[]) AND status IN ('completed', 'failed', 'cancelled')
"""



async def wait_final(dsn: str, task_ids: Sequence[str]) -> bool:
    """Until every one of `task_ids` is final: True; False once none became final for
    STALL_TIMEOUT_S, or after FINAL_TIMEOUT_S."""
    ids = list(task_ids)
    best, progressed_at = -1, trio.current_time()
    with trio.move_on_after(FINAL_TIMEOUT_S):
        while True:
            rows = await query(dsn, FINAL_AMONG, (ids,))
            if rows:
                final = int(rows[0][0])
                if final >= len(ids):
                    return True
                if final > best:
                    best, progressed_at = final, trio.current_time()
            if trio.current_time() - progressed_at > STALL_TIMEOUT_S:
                return False
            await trio.sleep(POLL_INTERVAL_S)
    return False
