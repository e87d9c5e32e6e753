"""The daemon behind PgBouncer in transaction mode (README, "Behind a connection pooler").

A private PgBouncer (distasks.testing.servers.PrivatePgBouncer, Debian's package, installed
when missing) stands between the daemons and the shared PostgreSQL, with a pool of
POOL_SIZE server connections. In transaction mode the next statement of a client may
reach another server connection: a prepared statement or any other session state left
on one would fail there, so the walkthrough and a drain by two daemons are run through
it, and PostgreSQL must never see more than the pooler's pool of connections."""

from __future__ import annotations

import json

import psycopg
import pytest
import trio
from httpx import AsyncClient

from distasks.testing.servers import PrivatePgBouncer

from .conftest import DaemonProcess, free_port, wait_task

# Server connections the pooler keeps to the test database: fewer than one daemon's
# pool (database.pool_max), so the daemons' clients must share them.
POOL_SIZE = 4
# Tasks drained by two daemons.
DRAIN = 3000
# The application_name of the test's own connections, which go around the pooler.
TEST_APP = "pooler-test"


@pytest.fixture
def pgbouncer(pg_dsn: str):
    info = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    bouncer = PrivatePgBouncer(str(info.get("host", "127.0.0.1")), int(info.get("port", 5432)),
                               pool_size=POOL_SIZE)
    bouncer.start()
    try:
        yield bouncer
    finally:
        bouncer.stop()


def pooled_env(env: dict[str, str], bouncer: PrivatePgBouncer, pg_dsn: str) -> dict[str, str]:
    dbname = psycopg.conninfo.conninfo_to_dict(pg_dsn)["dbname"]
    return {**env, "DATABASE_URL": bouncer.dsn(str(dbname)), "DISTASKS_DATABASE_POOLER": "pgbouncer",
            "DISTASKS_DATABASE_POOL_MAX": "10"}


def server_connections(pg_dsn: str) -> int:
    """Backends of PostgreSQL connected to the test database, the test's own left out."""
    dbname = psycopg.conninfo.conninfo_to_dict(pg_dsn)["dbname"]
    with psycopg.connect(pg_dsn, autocommit=True, application_name=TEST_APP) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                           " AND application_name <> %s", (dbname, TEST_APP)).fetchone()
    return int(row[0]) if row else 0


def progress(pg_dsn: str) -> tuple[int, int]:
    """(completed tasks, daemons that ran any of their runs)."""
    with psycopg.connect(pg_dsn, autocommit=True, application_name=TEST_APP) as conn:
        row = conn.execute("SELECT count(DISTINCT t.id) FILTER (WHERE t.status = 'completed'),"
                           " count(DISTINCT r.worker_id) FROM tasks t"
                           " JOIN task_runs r ON r.task_id = t.id").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def watch_connections(pg_dsn: str, seen: list[int]) -> None:
    while True:
        seen.append(await trio.to_thread.run_sync(server_connections, pg_dsn))
        await trio.sleep(0.1)


async def test_walkthrough_through_pgbouncer(start_daemon, daemon_env, pgbouncer, pg_dsn):
    seen: list[int] = []
    env = pooled_env(daemon_env, pgbouncer, pg_dsn)
    with trio.fail_after(60):
        async with trio.open_nursery() as watchers:
            watchers.start_soon(watch_connections, pg_dsn, seen)
            async with start_daemon(env) as d, AsyncClient(base_url=d.url) as client:
                # Created, run, completed; many times, so that each statement runs past
                # psycopg's prepare threshold on every connection.
                ids = []
                for i in range(30):
                    r = await client.post("/api/v1/tasks", json={
                        "name": f"even-{i}", "priority": 2, "payload": {"i": i}})
                    assert r.status_code == 201, r.text
                    ids.append(r.json()["task_id"])
                for task_id in ids:
                    body = await wait_task(client, d.url, task_id)
                    assert body["task"]["status"] == "completed"

                # A retry, then success.
                r = await client.post("/api/v1/tasks", json={"name": "flaky", "priority": 1})
                body = await wait_task(client, d.url, r.json()["task_id"])
                assert [run["status"] for run in body["runs"]] == ["retrying", "succeeded"]

                # Out of retries: the DLQ, then a replay completes it.
                r = await client.post("/api/v1/tasks", json={
                    "name": "doomed", "priority": 5, "max_retries": 0})
                doomed = r.json()["task_id"]
                body = await wait_task(client, d.url, doomed)
                assert body["task"]["status"] == "failed"
                dlq = (await client.get("/api/v1/queues/default/dlq")).json()
                assert [t["id"] for t in dlq["tasks"]] == [doomed]
                r = await client.post("/api/v1/queues/default/dlq/replay",
                                      json={"count": 10, "override_priority": 4})
                assert r.json()["replayed"] == 1
                body = await wait_task(client, d.url, doomed)
                assert body["task"]["status"] == "completed"

                # A delayed task cancelled before its time.
                r = await client.post("/api/v1/tasks", json={
                    "name": "later", "type": "delayed", "delay_seconds": 30, "priority": 2})
                later = r.json()["task_id"]
                r = await client.post(f"/api/v1/tasks/{later}/cancel", json={})
                assert r.status_code == 200, r.text
                body = await wait_task(client, d.url, later)
                assert body["task"]["status"] == "cancelled"

                # A schedule fires (every second) through the pooler too.
                r = await client.post("/api/v1/schedules", json={
                    "name": "tick", "cron": "* * * * * *",
                    "task": {"handler": "demo", "priority": 2}})
                assert r.status_code == 201, r.text
                fires: list[dict] = []
                while not fires:
                    fires = (await client.get("/api/v1/schedules/tick")).json()["fires"]
                    await trio.sleep(0.1)
                assert fires[0]["outcome"] == "created", fires
                body = await wait_task(client, d.url, fires[0]["task_id"])
                assert body["task"]["status"] == "completed"

                # A workflow: its counters and releases are written in the outcome
                # transactions, through the pooler too.
                r = await client.post("/api/v1/workflows", json={"name": "w", "tasks": [
                    {"key": "a", "name": "a", "handler": "demo", "priority": 2},
                    {"key": "b", "name": "b", "handler": "demo", "priority": 2, "depends_on": ["a"]},
                    {"key": "c", "name": "c", "handler": "demo", "priority": 2, "depends_on": ["a"]},
                    {"key": "d", "name": "d", "handler": "demo", "priority": 2,
                     "depends_on": ["b", "c"]}]})
                assert r.status_code == 201, r.text
                wid = r.json()["workflow_id"]
                while True:
                    w = (await client.get(f"/api/v1/workflows/{wid}")).json()
                    if w["state"] != "running":
                        break
                    await trio.sleep(0.1)
                assert w["state"] == "succeeded", w
                log = d.log()
            watchers.cancel_scope.cancel()
    assert "prepared statement" not in log and "no_statement_timeout" not in log
    assert seen and max(seen) <= POOL_SIZE, seen


async def test_two_daemons_drain_through_pgbouncer(start_daemon, daemon_env, pgbouncer,
                                                    pg_dsn):
    seen: list[int] = []
    env = pooled_env(daemon_env, pgbouncer, pg_dsn)
    with trio.fail_after(120):
        async with (start_daemon(env) as a, start_daemon({**env, "HTTP_PORT": str(free_port())}) as b, AsyncClient() as client):
            async with trio.open_nursery() as watchers:
                watchers.start_soon(watch_connections, pg_dsn, seen)
                created = 0
                for i in range(0, DRAIN, 500):
                    url = (a if i % 1000 == 0 else b).url
                    r = await client.post(f"{url}/api/v1/tasks/batch", json={"tasks": [
                        {"name": f"drain-{j}", "priority": 2, "payload": {"j": j}}
                        for j in range(i, i + 500)]})
                    assert r.status_code in (200, 201), r.text
                    created += len(r.json()["tasks"])
                assert created == DRAIN
                while True:
                    rows = await trio.to_thread.run_sync(progress, pg_dsn)
                    if rows[0] >= DRAIN:
                        break
                    await trio.sleep(0.2)
                watchers.cancel_scope.cancel()
            logs = a.log() + b.log()
    assert rows[1] == 2, "both daemons ran tasks"
    assert "prepared statement" not in logs
    assert seen and max(seen) <= POOL_SIZE, seen


def seed_old(pg_dsn: str, n: int) -> None:
    """`n` completed tasks, each with a run, finished ten days ago."""
    with psycopg.connect(pg_dsn, autocommit=True, application_name=TEST_APP) as conn:
        conn.execute(
            "SELECT distasks_ensure_partitions(current_date - 11, current_date - 9)")
        conn.execute(
            "WITH t AS (INSERT INTO tasks (id, name, handler, type, queue_name, payload,"
            " max_retries, status, created_at, updated_at, finished_at)"
            " SELECT distasks_task_id(now() - interval '10 days'), 'old', 'demo', 'immediate',"
            " 'default', '{}', 3, 'completed', now() - interval '10 days',"
            " now() - interval '10 days', now() - interval '10 days'"
            " FROM generate_series(1, %s) RETURNING id)"
            " INSERT INTO task_runs (id, task_id, bucket, attempt, status, finished_at)"
            " SELECT distasks_run_id(id), id, distasks_bucket(id), 1, 'succeeded',"
            " now() - interval '10 days' FROM t",
            (n,))


def passes_of(*daemons: DaemonProcess) -> list[list[dict]]:
    """The `retention_pass` log records of each daemon."""
    return [[json.loads(line) for line in d.log().splitlines() if '"retention_pass"' in line]
            for d in daemons]


def old_left(pg_dsn: str) -> int:
    with psycopg.connect(pg_dsn, autocommit=True, application_name=TEST_APP) as conn:
        row = conn.execute("SELECT count(*) FROM tasks WHERE name = 'old'").fetchone()
    return int(row[0]) if row else -1


async def test_two_daemons_clean_through_pgbouncer_one_at_a_time(start_daemon, daemon_env,
                                                                  pgbouncer, pg_dsn):
    """The cleaner's leader row and its per-batch timeouts work through the pooler: the
    old rows go, and only one of the daemons logs passes that removed anything."""
    seed_old(pg_dsn, 2000)
    env = {**pooled_env(daemon_env, pgbouncer, pg_dsn), "DISTASKS_RETENTION_INTERVAL_S": "1",
           "DISTASKS_RETENTION_BATCH": "200", "DISTASKS_RETENTION_MAX_BATCHES": "3"}
    with trio.fail_after(60):
        async with (start_daemon(env) as a,
                    start_daemon({**env, "HTTP_PORT": str(free_port())}) as b,
                    AsyncClient(base_url=a.url) as client):
            r = await client.post("/api/v1/tasks", json={"name": "new", "priority": 2})
            new = r.json()["task_id"]
            while await trio.to_thread.run_sync(old_left, pg_dsn) > 0:  # noqa: ASYNC110
                await trio.sleep(0.2)
            body = await wait_task(client, a.url, new)
            assert body["task"]["status"] == "completed"
            # The last pass logs its line just after its last batch committed.
            while True:
                logs = passes_of(a, b)
                if sum(p["completed"] for passes in logs for p in passes) >= 2000:
                    break
                await trio.sleep(0.1)
    cleaned = [sum(p["completed"] for p in passes) for passes in logs]
    assert sorted(cleaned) == [0, 2000], cleaned
    # Bounded passes: at most 3 batches of 200 tasks each.
    assert all(p["completed"] <= 600 for passes in logs for p in passes)
