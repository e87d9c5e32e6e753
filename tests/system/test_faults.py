"""Nothing accepted is lost, whatever single fault happens (architecture §5.1), and a handler
runs twice only after a fault, each time as an attempt on record (§5.2).

Each test creates 500 `chaos_sleep` tasks over HTTP against one or two daemons, injects
its fault once a third of them completed, waits until every accepted task is final in
PostgreSQL and counts from PostgreSQL and the handlers' execution log
(distasks/testing/faults.py). The servers are private: a PostgreSQL cluster and a Redis
started for this module on free loopback ports, so that they can be killed and
restarted. The shared ones are never touched.

Run: .venv/bin/pytest tests/system/test_faults.py   (about 1.5 minutes)
bench/chaos.py runs the same scenarios and prints one table row per fault.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import trio

from distasks.broker.keys import queue_keys
from distasks.testing.faults import (
    EXIT_MARGIN_S,
    FAULTS,
    GRACE_S,
    STRESS_CYCLES,
    Result,
    daemon_env,
    fault_daemon,
    run_scenario,
    wait_final,
)
from distasks.testing.servers import PrivatePostgres, PrivateRedis, PrivateRedisCluster
from distasks.testing.workload import query
from tests.conftest import on_cluster

pytestmark = pytest.mark.faults

# Tasks per scenario.
N = 500
# One scenario, everything included; a healthy one takes 7-40 s.
SCENARIO_TIMEOUT_S = 240.0


@pytest.fixture(scope="session")
def private_pg() -> Iterator[PrivatePostgres]:
    """One PostgreSQL cluster for the session (initdb takes seconds); each scenario
    creates and drops its own database in it."""
    try:
        pg = PrivatePostgres()
    except FileNotFoundError as e:
        pytest.skip(f"no PostgreSQL server programs: {e}")
    try:
        pg.init()
        pg.start()
        yield pg
    finally:
        pg.stop()


@pytest.fixture(scope="session")
def private_redis(request: pytest.FixtureRequest) -> Iterator[PrivateRedis | PrivateRedisCluster]:
    """A Redis of the session's own, or with DISTASKS_TEST_REDIS=cluster the session's
    private Redis Cluster (conftest.py)."""
    if on_cluster():
        yield request.getfixturevalue("redis_cluster")
        return
    try:
        server = PrivateRedis()
    except FileNotFoundError as e:
        pytest.skip(f"no redis-server: {e}")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def run_fault(private_pg: PrivatePostgres, private_redis: PrivateRedis, tmp_path: Path):
    async def run(name: str) -> Result:
        with trio.fail_after(SCENARIO_TIMEOUT_S):
            return await run_scenario(FAULTS[name], pg=private_pg, redis_server=private_redis,
                                      workdir=tmp_path, n=N)
    return run


@pytest.fixture
def single_redis_only() -> None:
    """For a fault a Redis Cluster cannot suffer as such (one server restarted empty)."""
    if on_cluster():
        pytest.skip("a fault of a single Redis server")


def assert_nothing_lost(r: Result) -> None:
    """Every accepted task completed, no execution off the record, a second execution
    only where the fault forces a retry, no daemon died, every create accepted."""
    assert r.problems() == [], r.explain()
    assert r.tally.completed == r.tally.accepted == N, r.explain()


async def test_kill9_of_one_of_two_daemons_mid_run_loses_nothing(run_fault):
    r = await run_fault("kill9")
    assert_nothing_lost(r)
    # The killed daemon's runs were taken over as new attempts, each one on record.
    assert r.tally.duplicated <= r.tally.taken_over, r.explain()


async def test_redis_restarted_empty_mid_run_loses_nothing(run_fault, single_redis_only):
    assert_nothing_lost(await run_fault("redis-empty"))


async def test_a_cluster_master_failover_mid_drain_loses_nothing(
        private_pg, redis_cluster, tmp_path):
    """Two daemons on a Redis Cluster; the master serving the queue is killed -9 a third
    of the way through and its replica promoted: every accepted task completes, as
    PostgreSQL records it, and the node rejoins as a replica after."""
    try:
        with trio.fail_after(SCENARIO_TIMEOUT_S):
            r = await run_scenario(FAULTS["redis-failover"], pg=private_pg,
                                   redis_server=redis_cluster, workdir=tmp_path, n=N)
    finally:
        await trio.to_thread.run_sync(redis_cluster.ensure_running)
    assert_nothing_lost(r)
    # A run runs twice only when its lease lapsed during the failover and it was taken
    # over, each attempt on record.
    assert r.tally.duplicated <= r.tally.taken_over, r.explain()


async def test_postgres_restarted_mid_run_loses_nothing(run_fault):
    assert_nothing_lost(await run_fault("pg-restart"))


async def test_connections_dropped_mid_run_lose_nothing(run_fault):
    assert_nothing_lost(await run_fault("conn-kill"))


async def test_sigterm_of_one_of_two_daemons_mid_run_loses_nothing_and_exits_zero(run_fault):
    r = await run_fault("sigterm")
    assert_nothing_lost(r)
    [stop] = r.stops
    assert stop.returncode == 0, r.explain()
    assert stop.seconds <= GRACE_S + EXIT_MARGIN_S, r.explain()


async def test_sigterm_and_restart_cycles_lose_nothing(run_fault):
    r = await run_fault("cancel-stress")
    assert_nothing_lost(r)
    assert len(r.stops) == STRESS_CYCLES, r.explain()
    assert all(s.returncode == 0 and s.seconds <= GRACE_S + EXIT_MARGIN_S
               for s in r.stops), r.explain()


async def test_outages_degrade_and_the_daemon_resumes_by_itself(private_pg, private_redis,
                                                                tmp_path):
    """architecture §5.6: with Redis gone, /readyz says 503 naming it, creates are still accepted
    and run once it is back (empty); with PostgreSQL gone, /readyz says so and creates
    answer 503 with Retry-After; the process keeps running throughout."""
    dbname = f"outage_{tmp_path.name[-12:].replace('-', '_')}".lower()
    await trio.to_thread.run_sync(private_pg.create_database, dbname)
    dsn = private_pg.dsn(dbname)
    env = daemon_env(database_url=dsn, redis_url=private_redis.url, prefix="outage",
                     chaos_log=tmp_path / "executions.log")
    daemon = fault_daemon("outage", env, tmp_path / "daemon.log")
    body = {"name": "outage", "handler": "chaos_sleep", "payload": {"ms": 10}}

    async def readiness(client):
        r = await client.get("/readyz")
        return r.status_code, r.json()

    async def wait_readiness(client, status, down):
        while True:
            code, ready = await readiness(client)
            if code == status and (down is None or ready[down].startswith("down")):
                return ready
            await trio.sleep(0.1)

    try:
        with trio.fail_after(120):
            await daemon.start()
            await daemon.wait_ready()
            async with httpx.AsyncClient(base_url=daemon.url, timeout=15) as client:
                # Redis down: not ready, creates still accepted (committed in PostgreSQL).
                await trio.to_thread.run_sync(private_redis.kill)
                ready = await wait_readiness(client, 503, "redis")
                assert ready["postgres"] == "ok"
                r = await client.post("/api/v1/tasks", json=body)
                assert r.status_code == 201, r.text
                during_redis_outage = r.json()["task_id"]
                # Redis back, empty: the task runs without anyone creating it again.
                await trio.to_thread.run_sync(private_redis.start)
                await wait_readiness(client, 200, None)
                assert await wait_final(dsn, [during_redis_outage])

                # PostgreSQL down: not ready, creates refused with Retry-After.
                await trio.to_thread.run_sync(private_pg.halt)
                try:
                    ready = await wait_readiness(client, 503, "postgres")
                    assert ready["redis"] == "ok"
                    r = await client.post("/api/v1/tasks", json=body)
                    assert r.status_code == 503, r.text
                    assert r.json()["error"]["code"] == "postgres_unavailable"
                    assert int(r.headers["Retry-After"]) > 0
                    assert daemon.is_running()
                finally:
                    await trio.to_thread.run_sync(private_pg.start)
                await wait_readiness(client, 200, None)
                r = await client.post("/api/v1/tasks", json=body)
                assert r.status_code == 201, r.text
                assert await wait_final(dsn, [r.json()["task_id"]])
            assert daemon.is_running()
    finally:
        await daemon.stop()
        await trio.to_thread.run_sync(private_redis.ensure_running)
        await trio.to_thread.run_sync(private_pg.ensure_running)
        await trio.to_thread.run_sync(private_pg.drop_database, dbname)


async def test_changes_committed_while_redis_is_unreachable_are_accepted_and_reach_it_later(
        private_pg, private_redis, tmp_path):
    """Committed in PostgreSQL = accepted (distasks.daemon.mirror): with Redis not answering, a
    cancel, a pause and a DLQ replay answer 200 like a create; once Redis answers again
    (with its data, so no rebuild runs) the reconciler copies the pause flag, the
    replayed attempt runs, and the cancelled attempt has stopped."""
    dbname = f"seams_{tmp_path.name[-12:].replace('-', '_')}".lower()
    await trio.to_thread.run_sync(private_pg.create_database, dbname)
    dsn = private_pg.dsn(dbname)
    env = daemon_env(database_url=dsn, redis_url=private_redis.url, prefix="seams",
                     chaos_log=tmp_path / "executions.log",
                     extra={"DISTASKS_LIMITS_PER_MINUTE": "600"})
    daemon = fault_daemon("seams", env, tmp_path / "daemon.log")
    paused_flag = queue_keys("seams", "held").paused

    async def runs_become(task_id: str, want: list[str]) -> None:
        while True:
            rows = await query(dsn, "SELECT status FROM task_runs WHERE task_id = %s"
                                    " ORDER BY attempt", (task_id,))
            if [r[0] for r in rows or []] == want:
                return
            await trio.sleep(0.1)

    def paused_in_redis() -> bool:
        try:
            with private_redis.client() as c:
                return bool(c.exists(paused_flag))
        except redis.RedisError:  # a cluster thawed may say "down" for a moment
            return False

    try:
        with trio.fail_after(120):
            await daemon.start()
            await daemon.wait_ready()
            async with httpx.AsyncClient(base_url=daemon.url, timeout=30) as client:
                r = await client.post("/api/v1/tasks", json={
                    "name": "dead", "handler": "demo",
                    "max_retries": 0, "payload": {"always_fail": True}})
                dead = r.json()["task_id"]
                r = await client.post("/api/v1/tasks", json={
                    "name": "long", "handler": "chaos_sleep", "payload": {"ms": 60_000}})
                long_running = r.json()["task_id"]
                await runs_become(dead, ["failed"])
                await runs_become(long_running, ["running"])

                await trio.to_thread.run_sync(private_redis.freeze)
                try:
                    # The rate limit's Redis bucket does not answer either: creates pass,
                    # and only one per lease waits for it (briefly).
                    before = trio.current_time()
                    for _ in range(5):
                        r = await client.post("/api/v1/tasks", json={
                            "name": "during", "handler": "chaos_sleep", "payload": {"ms": 1}})
                        assert r.status_code == 201, r.text
                    assert trio.current_time() - before < 4, "each create waited for Redis"
                    # A long poll on the task: its "done" message cannot pass Redis, the
                    # daemon's shared poll of waited tasks wakes it instead.
                    polled: list[tuple[float, str]] = []

                    async def long_poll() -> None:
                        async with httpx.AsyncClient(base_url=daemon.url, timeout=30) as c:
                            r = await c.get(f"/api/v1/tasks/{long_running}",
                                            params={"wait": 20})
                            polled.append((trio.current_time(), r.json()["task"]["status"]))

                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(long_poll)
                        await trio.sleep(1.0)  # either way: it sees the cancel, or is woken
                        cancelled_at = trio.current_time()
                        r = await client.post(f"/api/v1/tasks/{long_running}/cancel")
                        assert r.status_code == 200 and r.json()["cancelled"], r.text
                    [(woke_at, status)] = polled
                    assert status == "cancelled" and woke_at - cancelled_at < 4
                    r = await client.post("/api/v1/queues/held/pause")
                    assert r.status_code == 200 and r.json()["paused"], r.text
                    r = await client.post("/api/v1/queues/default/dlq/replay", json={})
                    assert r.status_code == 200 and r.json()["replayed"] == 1, r.text
                finally:
                    await trio.to_thread.run_sync(private_redis.thaw)

                while not await trio.to_thread.run_sync(paused_in_redis):  # noqa: ASYNC110
                    await trio.sleep(0.1)
                await runs_become(dead, ["failed", "failed"])
                await runs_become(long_running, ["cancelled"])
            assert daemon.is_running()
    finally:
        await daemon.stop()
        await trio.to_thread.run_sync(private_redis.thaw)
        await trio.to_thread.run_sync(private_pg.drop_database, dbname)

