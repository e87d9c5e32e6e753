"""Degrade, don't die (architecture §5.6) for a daemon serving several queues: Redis
killed for longer than every socket timeout, then started again (empty) on the same port.

The Redis server is the test's own (distasks.testing.faults.PrivateRedis), so that it can
be killed; PostgreSQL is the shared one, in the test's own database.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import trio

from distasks.testing.daemon import daemon_env as own_daemon_env
from distasks.testing.servers import PrivateRedis
from distasks.testing.workload import query

pytestmark = pytest.mark.faults

QUEUES = ("default", "other", "third")
# How long Redis stays dead: longer than the broker's crossing timeout (5 s) and the
# connect timeout, so that every kind of call has failed at least once meanwhile.
OUTAGE_S = 8.0
# Short leases and recovery ticks, so that runs the dead Redis held come back quickly.
SETTINGS = {
    "QUEUE_NAMES": ",".join(QUEUES),
    "WORKER_CONCURRENCY": "4",
    "DISTASKS_LIMITS_PER_MINUTE": "0",
    "DISTASKS_WORKER_LEASE_S": "2",
    "DISTASKS_MOVER_INTERVAL_S": "0.1",
    "DISTASKS_RECOVERY_REAPER_INTERVAL_S": "0.2",
    "DISTASKS_RECOVERY_RECONCILER_INTERVAL_S": "0.5",
    "DISTASKS_RECOVERY_DISPATCH_GRACE_S": "1",
}


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    try:
        server = PrivateRedis()
    except FileNotFoundError as e:
        pytest.skip(f"no redis-server: {e}")
    try:
        server.start()
        yield server
    finally:
        server.thaw()  # a frozen server does not stop
        server.stop()


async def create(client: httpx.AsyncClient, tag: str, **fields: object) -> list[str]:
    """One task per queue (the demo handler, an even priority: it succeeds); their ids."""
    ids = []
    for queue in QUEUES:
        r = await client.post("/api/v1/tasks", json={
            "name": f"{tag}-{queue}", "queue_name": queue, "priority": 0, **fields})
        assert r.status_code == 201, r.text
        ids.append(r.json()["task_id"])
    return ids


async def wait_completed(dsn: str, task_ids: list[str]) -> None:
    """Until every task is completed in PostgreSQL; the caller bounds the time."""
    while True:
        rows = await query(dsn, "SELECT count(*) FROM tasks WHERE id = ANY(%s::uuid[])"
                                " AND status = 'completed'", (task_ids,))
        if rows and rows[0][0] == len(task_ids):
            return
        await trio.sleep(0.1)


@pytest.mark.parametrize("fault", ["kill", "freeze"])
async def test_a_daemon_of_three_queues_outlives_redis_gone_for_seconds(
        start_daemon, pg_dsn, redis_prefix, private_redis, fault):
    """kill: SIGKILL, every call refused, and Redis comes back empty (rebuilt from
    PostgreSQL). freeze: SIGSTOP, every call hangs until its timeout (as when the event
    loop is held up), and Redis comes back with its data."""
    stop, resume = ((private_redis.kill, private_redis.start) if fault == "kill"
                    else (private_redis.freeze, private_redis.thaw))
    env = own_daemon_env(database_url=pg_dsn, redis_url=private_redis.url,
                         prefix=redis_prefix, settings=SETTINGS)
    with trio.fail_after(120):
        async with (start_daemon(env) as d,
                    httpx.AsyncClient(base_url=d.url, trust_env=False, timeout=30) as client):

            async def wait_readiness(status: int) -> None:
                """Until /readyz answers `status`, the daemon running all along."""
                while True:
                    assert d.is_running(), d.tail()
                    if (await client.get("/readyz")).status_code == status:
                        return
                    await trio.sleep(0.1)

            # Before: some to run at once, some delayed past the outage (the dead Redis
            # holds them), some running while Redis dies.
            before = await create(client, "now")
            before += await create(client, "later", type="delayed", delay_seconds=3)
            before += await create(client, "running", payload={"sleep_seconds": 2})

            await trio.to_thread.run_sync(stop)
            await wait_readiness(503)
            # Creates are still accepted: committed in PostgreSQL, indexed later.
            during = await create(client, "during")
            await trio.sleep(OUTAGE_S)  # the fault itself lasts this long
            assert d.is_running(), d.tail()

            await trio.to_thread.run_sync(resume)
            await wait_readiness(200)
            after = await create(client, "after")

            await wait_completed(pg_dsn, before + during + after)
            assert d.is_running(), d.tail()
    # Stopped by SIGTERM, not by an exception: a clean exit, no traceback anywhere.
    assert d.returncode == 0, d.tail()
    assert "Traceback" not in d.log(), d.tail()
