"""SIGTERM with tasks in flight (architecture §5.5): short handlers finish within the grace
period, long ones are handed back, the daemon exits 0 in time, and nothing is lost."""

from __future__ import annotations

import time

import httpx
import psycopg
import trio

from .conftest import wait_task

GRACE_S = 0.5
# How far past the grace period the daemon may take to exit.
EXIT_MARGIN_S = 5.0


async def test_sigterm_with_tasks_in_flight_loses_nothing_and_exits_zero(start_daemon, daemon_env):
    env = {**daemon_env, "DISTASKS_WORKER_GRACE_PERIOD_S": str(GRACE_S)}
    with trio.fail_after(60):
        async with start_daemon(env) as d, httpx.AsyncClient(base_url=d.url) as client:
            async def create(sleep_s):
                r = await client.post("/api/v1/tasks", json={
                    "name": f"sleep-{sleep_s}", "priority": 2,
                    "payload": {"sleep_seconds": sleep_s}})
                assert r.status_code == 201
                return r.json()["task_id"]

            long_ids = [await create(3.0) for _ in range(2)]
            short_ids = [await create(0.2) for _ in range(2)]
            waiting_ids = [await create(0.2) for _ in range(10)]
            for task_id in long_ids:
                await wait_task(client, d.url, task_id,
                                until=lambda b: b["latest_run"]["status"] == "running")
            stopped_at = time.monotonic()
            d.terminate()
            rc = await d.process.wait()
            took_s = time.monotonic() - stopped_at
        assert rc == 0, d.log()
        assert took_s <= GRACE_S + EXIT_MARGIN_S, took_s

        with psycopg.connect(env["DATABASE_URL"]) as conn:
            running = conn.execute(
                "SELECT count(*) FROM task_runs WHERE status = 'running'").fetchone()[0]
            long_runs = conn.execute(
                "SELECT status FROM task_runs WHERE task_id = ANY(%s) ORDER BY task_id, attempt",
                (long_ids,)).fetchall()
        assert running == 0
        assert [s for (s,) in long_runs] == ["interrupted", "queued"] * 2

        # A new daemon finishes everything: the handed-back runs and those never claimed.
        async with start_daemon(env) as d2, httpx.AsyncClient(base_url=d2.url) as client:
            for task_id in long_ids + short_ids + waiting_ids:
                body = await wait_task(client, d2.url, task_id)
                assert body["task"]["status"] == "completed", body
            body = (await client.get(f"/api/v1/tasks/{long_ids[0]}")).json()
            assert [r["status"] for r in body["runs"]] == ["interrupted", "succeeded"]


async def test_second_sigterm_skips_the_rest_of_the_grace_period(start_daemon, daemon_env):
    env = {**daemon_env, "DISTASKS_WORKER_GRACE_PERIOD_S": "30"}
    with trio.fail_after(60):
        async with start_daemon(env) as d, httpx.AsyncClient(base_url=d.url) as client:
            r = await client.post("/api/v1/tasks", json={
                "name": "long", "priority": 2, "payload": {"sleep_seconds": 60}})
            await wait_task(client, d.url, r.json()["task_id"],
                            until=lambda b: b["latest_run"]["status"] == "running")
            stopped_at = time.monotonic()
            d.terminate()
            while '"event": "stopping"' not in d.log():  # noqa: ASYNC110 (a file)
                await trio.sleep(0.02)  # the first SIGTERM is being handled
            d.terminate()
            rc = await d.process.wait()
        assert rc == 0, d.log()
        assert time.monotonic() - stopped_at < EXIT_MARGIN_S
        body = None
        with psycopg.connect(env["DATABASE_URL"]) as conn:
            body = conn.execute("SELECT status FROM task_runs ORDER BY attempt").fetchall()
        assert [s for (s,) in body] == ["interrupted", "queued"]
