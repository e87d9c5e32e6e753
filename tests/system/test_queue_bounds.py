"""Queues are bounded against `distasks serve`: a tenant has at most limits.max_queues
(a pause or a create naming a new one beyond it is refused, nothing written), and a
queue with nothing left in it can be deleted, with its Redis keys."""

from __future__ import annotations

import os
import sys
import uuid

import httpx
import psycopg
import pytest
import redis
import trio

from distasks.broker.keys import queue_keys
from distasks.client import AsyncClient, NotFound

from .conftest import REPO, wait_task


def queue_rows(env: dict[str, str]) -> list[str]:
    with psycopg.connect(env["DATABASE_URL"]) as conn:
        return [n for (n,) in conn.execute("SELECT name FROM queues ORDER BY name")]


async def test_a_new_queue_beyond_the_cap_is_refused_at_pause_and_at_create(
        start_daemon, daemon_env):
    env = {**daemon_env, "DISTASKS_LIMITS_MAX_QUEUES": "3"}
    with trio.fail_after(40):
        async with start_daemon(env) as d, httpx.AsyncClient(base_url=d.url) as client:
            for name in ("q1", "q2", "q3"):
                r = await client.post(f"/api/v1/queues/{name}/pause")
                assert r.status_code == 200, r.text
            over = await client.post("/api/v1/queues/q4/pause")
            assert over.status_code == 409, over.text
            error = over.json()["error"]
            assert (error["code"], error["field"]) == ("too_many_queues", "queue")
            assert "'q4'" in error["message"] and "3 queues" in error["message"]
            # An existing queue is no new one.
            assert (await client.post("/api/v1/queues/q1/resume")).status_code == 200

            create = await client.post("/api/v1/tasks", json={"name": "x", "queue_name": "q5"})
            assert create.status_code == 409, create.text
            assert create.json()["error"]["field"] == "queue_name"
            ok = await client.post("/api/v1/tasks", json={"name": "x", "queue_name": "q1"})
            assert ok.status_code == 201, ok.text
            batch = await client.post("/api/v1/tasks/batch", json={"tasks": [
                {"name": "a", "queue_name": "q1"}, {"name": "b", "queue_name": "q9"}]})
            assert batch.status_code == 409, batch.text
            assert batch.json()["error"]["field"] == "tasks.1.queue_name"

            # Deleting one (here with the CLI) makes room for one.
            done = await trio.run_process(
                [sys.executable, "-m", "distasks", "queue", "delete", "q2"], cwd=REPO,
                env={"PATH": os.environ.get("PATH", ""), "DISTASKS_URL": d.url},
                capture_stdout=True, capture_stderr=True, check=False)
            assert (done.returncode, done.stdout) == (0, b"queue q2 deleted\n"), done.stderr
            again = await client.post("/api/v1/tasks", json={"name": "x", "queue_name": "q5"})
            assert again.status_code == 201, again.text
            full = await client.post("/api/v1/queues/q6/pause")
            assert full.status_code == 409, full.text
    assert queue_rows(env) == ["q1", "q3", "q5"]
    with psycopg.connect(env["DATABASE_URL"]) as conn:
        assert conn.execute("SELECT queue_name, count(*) FROM tasks GROUP BY 1 ORDER BY 1"
                            ).fetchall() == [("q1", 1), ("q5", 1)]


async def test_a_queue_is_deleted_only_once_nothing_is_left_in_it(
        start_daemon, daemon_env, redis_url, redis_prefix):
    env = {**daemon_env, "QUEUE_NAMES": "default,work"}
    with trio.fail_after(40):
        async with start_daemon(env) as d, httpx.AsyncClient(base_url=d.url) as client:
            missing = await client.delete("/api/v1/queues/nowhere")
            assert missing.status_code == 404, missing.text
            async with AsyncClient(d.url) as api:
                with pytest.raises(NotFound):
                    await api.delete_queue("nowhere")

            # Unfinished: a task waiting for its time.
            r = await client.post("/api/v1/tasks", json={
                "name": "later", "queue_name": "work", "type": "delayed",
                "delay_seconds": 3600})
            assert r.status_code == 201, r.text
            waiting = r.json()["task_id"]
            busy = await client.delete("/api/v1/queues/work")
            assert busy.status_code == 409, busy.text
            error = busy.json()["error"]
            assert (error["code"], error["field"]) == ("queue_not_empty", "queue")
            assert "1 unfinished" in error["message"]
            assert (await client.post(f"/api/v1/tasks/{waiting}/cancel")).status_code == 200

            # Dead-lettered: the demo handler fails an odd priority, with no retry left.
            r = await client.post("/api/v1/tasks", json={
                "name": "doomed", "queue_name": "work", "priority": 1, "max_retries": 0})
            assert r.status_code == 201, r.text
            await wait_task(client, d.url, r.json()["task_id"])
            dead = await client.delete("/api/v1/queues/work")
            assert dead.status_code == 409, dead.text
            assert "1 dead-lettered" in dead.json()["error"]["message"]
            assert (await client.post("/api/v1/queues/work/dlq/delete", json={})
                    ).json()["deleted"] == 1

            assert (await client.post("/api/v1/queues/work/pause")).status_code == 200
            keys = queue_keys(redis_prefix, "work")
            r_client = redis.Redis.from_url(redis_url)
            try:
                assert r_client.exists(keys.paused) == 1
                # Leftovers of copies that never happened: ids PostgreSQL has finished with.
                r_client.rpush(keys.ready, waiting, "not-a-run-id")
                r_client.zadd(keys.delayed, {str(uuid.uuid4()): 1})
                r_client.rpush(keys.dlq, str(uuid.uuid4()))
                gone = await client.delete("/api/v1/queues/work")
                assert gone.status_code == 200, gone.text
                assert gone.json() == {"name": "work", "deleted": True}
                assert [k for k in (keys.paused, keys.ready, keys.delayed, keys.dlq,
                                    keys.leases) if r_client.exists(k)] == []
            finally:
                r_client.close()
            audit = (await client.get("/api/v1/audit",
                                      params={"action": "queue_delete"})).json()["entries"]
    assert [(e["queue_name"], e["actor"]) for e in audit] == [("work", "anonymous@127.0.0.1")]
    assert "work" not in queue_rows(env)
