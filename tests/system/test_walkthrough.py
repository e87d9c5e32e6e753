"""The original platform's walkthrough, end to end against `distasks serve`."""

from __future__ import annotations

import time
from datetime import datetime

import httpx
import trio

from .conftest import wait_task


async def test_original_walkthrough(start_daemon, daemon_env):
    with trio.fail_after(30):
        async with start_daemon(daemon_env) as d, httpx.AsyncClient(base_url=d.url) as client:
            assert (await client.get("/healthz")).status_code == 200
            ready = (await client.get("/readyz")).json()
            assert (ready["ready"], ready["postgres"], ready["redis"]) == (True, "ok", "ok")
            assert set(ready["components"].values()) == {"ok"}
            assert "fetch:default" in ready["components"]

            # An even priority succeeds on the first attempt.
            r = await client.post("/api/v1/tasks", json={
                "name": "send-email", "type": "immediate", "queue_name": "default",
                "priority": 2, "payload": {"to": "a@example.com"}, "max_retries": 3})
            assert r.status_code == 201 and r.json()["status"] == "queued"
            body = await wait_task(client, d.url, r.json()["task_id"])
            assert body["task"]["status"] == "completed"
            assert body["latest_run"]["status"] == "succeeded"
            assert [run["attempt"] for run in body["runs"]] == [1]

            # An odd priority fails on attempt 1; right after, the latest run says
            # retrying with next_retry_at set, and the retry completes 2-5 s later.
            created_at = time.time()
            r = await client.post("/api/v1/tasks", json={
                "name": "flaky", "type": "immediate", "queue_name": "default",
                "priority": 1, "payload": {}, "max_retries": 3})
            task_id = r.json()["task_id"]
            body = await wait_task(client, d.url, task_id,
                                   until=lambda b: b["latest_run"]["status"] != "queued"
                                   and b["latest_run"]["status"] != "running")
            assert body["latest_run"]["status"] == "retrying"
            assert body["latest_run"]["next_retry_at"] is not None
            assert "odd priority" in body["latest_run"]["error"]
            body = await wait_task(client, d.url, task_id)
            elapsed = time.time() - created_at
            assert body["task"]["status"] == "completed"
            assert [run["status"] for run in body["runs"]] == ["retrying", "succeeded"]
            assert 1.5 <= elapsed <= 5.0, elapsed

            # skip_fail makes an odd priority succeed at once.
            r = await client.post("/api/v1/tasks", json={
                "name": "skip", "priority": 3, "payload": {"skip_fail": True}})
            body = await wait_task(client, d.url, r.json()["task_id"])
            assert [run["status"] for run in body["runs"]] == ["succeeded"]

            # Out of retries: the DLQ lists it; replay with a new priority completes it.
            r = await client.post("/api/v1/tasks", json={
                "name": "doomed", "priority": 5, "max_retries": 0})
            doomed = r.json()["task_id"]
            body = await wait_task(client, d.url, doomed)
            assert body["task"]["status"] == "failed"
            dlq = (await client.get("/api/v1/queues/default/dlq?count=50")).json()
            assert [t["id"] for t in dlq["tasks"]] == [doomed]
            assert "odd priority" in dlq["tasks"][0]["last_error"]
            r = await client.post("/api/v1/queues/default/dlq/replay",
                                  json={"count": 10, "override_priority": 4})
            assert r.json() == {"queue": "default", "replayed": 1, "task_ids": [doomed],
                                "dry_run": False}
            body = await wait_task(client, d.url, doomed)
            assert body["task"]["status"] == "completed" and body["task"]["priority"] == 4
            assert (await client.get("/api/v1/queues/default/dlq")).json()["tasks"] == []


async def test_delayed_task_waits_for_its_time(start_daemon, daemon_env):
    with trio.fail_after(30):
        async with start_daemon(daemon_env) as d, httpx.AsyncClient(base_url=d.url) as client:
            r = await client.post("/api/v1/tasks", json={
                "name": "later", "type": "delayed", "delay_seconds": 1.0, "priority": 2})
            assert r.status_code == 201
            body = await wait_task(client, d.url, r.json()["task_id"])
            started = datetime.fromisoformat(body["latest_run"]["started_at"])
            run_at = datetime.fromisoformat(body["task"]["run_at"])
            assert body["task"]["status"] == "completed"
            assert started >= run_at


async def test_a_task_for_a_queue_nobody_works_on_is_accepted_and_waits(start_daemon, daemon_env):
    with trio.fail_after(30):
        async with start_daemon(daemon_env) as d, httpx.AsyncClient(base_url=d.url) as client:
            r = await client.post("/api/v1/tasks", json={"name": "x", "queue_name": "elsewhere"})
            assert r.status_code == 201
            # A task created after it in a served queue completes; this one still waits.
            after = await client.post("/api/v1/tasks", json={"name": "y", "priority": 2})
            await wait_task(client, d.url, after.json()["task_id"])
            body = (await client.get(f"/api/v1/tasks/{r.json()['task_id']}")).json()
            assert body["task"]["status"] == "queued"
            assert body["latest_run"]["status"] == "queued"
