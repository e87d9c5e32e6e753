"""The task API a production team needs (issue 4), against `distasks serve`: cancel,
pause/resume, listing and pagination, batch create, the DLQ with filters, results and
long-polls, and the built-in http handler."""

from __future__ import annotations

import json
import time

import httpx
import psycopg
import trio

from distasks.testing.http_stub import read_request

from .conftest import free_port, wait_task


async def create(client, **fields):
    r = await client.post("/api/v1/tasks", json={"name": "t", "priority": 2, **fields})
    assert r.status_code == 201, r.text
    return r.json()["task_id"]


async def test_cancel_waiting_delayed_and_running_tasks(start_daemon, daemon_env):
    env = {**daemon_env, "QUEUE_NAMES": "default"}
    with trio.fail_after(30):
        async with start_daemon(env) as d, httpx.AsyncClient(base_url=d.url) as client:
            waiting = await create(client, queue_name="nobody")
            delayed = await create(client, type="delayed", delay_seconds=3600)
            running = await create(client, payload={"sleep_seconds": 30})
            await wait_task(client, d.url, running,
                            until=lambda b: b["latest_run"]["status"] == "running")

            r = await client.post(f"/api/v1/tasks/{waiting}/cancel", json={"reason": "typo"},
                                  headers={"X-Distasks-Actor": "alice"})
            assert r.json() == {"task_id": waiting, "status": "cancelled", "cancelled": True}
            task = (await client.get(f"/api/v1/tasks/{waiting}")).json()
            # The actor is who authenticated, never what a header claims.
            assert task["task"]["cancelled_by"] == "anonymous@127.0.0.1"
            assert task["task"]["cancel_reason"] == "typo" and task["task"]["cancelled_at"]
            assert [run["status"] for run in task["runs"]] == ["cancelled"]

            r = await client.post(f"/api/v1/tasks/{delayed}/cancel")
            assert r.json()["cancelled"] is True

            started = time.monotonic()
            r = await client.post(f"/api/v1/tasks/{running}/cancel")
            assert r.json()["status"] == "cancelled"
            body = await wait_task(client, d.url, running,
                                   until=lambda b: b["runs"][-1]["status"] == "cancelled")
            assert time.monotonic() - started < 1.0
            assert body["task"]["status"] == "cancelled"

            again = await client.post(f"/api/v1/tasks/{running}/cancel")
            assert again.json() == {"task_id": running, "status": "cancelled", "cancelled": False}
            missing = await client.post("/api/v1/tasks/00000000-0000-0000-0000-000000000000/cancel")
            assert missing.status_code == 404
            queues = {q["name"]: q for q in (await client.get("/api/v1/queues")).json()["queues"]}
            assert queues["nobody"]["ready"] == 0 and queues["default"]["delayed"] == 0


async def test_paused_queue_accepts_creates_and_runs_them_after_resume(start_daemon, daemon_env):
    with trio.fail_after(30):
        async with start_daemon(daemon_env) as d, httpx.AsyncClient(base_url=d.url) as client:
            r = await client.post("/api/v1/queues/default/pause")
            assert r.json() == {"name": "default", "paused": True}
            task_id = await create(client)
            # A task created after, in a queue not paused, completes; this one waits.
            other = await create(client, queue_name="other")
            listing = {q["name"]: q for q in (await client.get("/api/v1/queues")).json()["queues"]}
            assert listing["default"]["paused"] is True and listing["default"]["ready"] == 1
            body = (await client.get(f"/api/v1/tasks/{task_id}")).json()
            assert body["task"]["status"] == "queued"
            await client.post("/api/v1/queues/default/resume")
            body = await wait_task(client, d.url, task_id)
            assert body["task"]["status"] == "completed"
            assert other


async def test_listing_filters_paginates_and_reports_queues(start_daemon, daemon_env):
    with trio.fail_after(30):
        async with start_daemon(daemon_env) as d, httpx.AsyncClient(base_url=d.url) as client:
            ids = [await create(client, name=f"job-{i % 2}", queue_name="idle") for i in range(7)]
            done = await create(client, name="quick")
            await wait_task(client, d.url, done)

            seen, cursor = [], None
            while True:
                params = {"queue": "idle", "limit": 3, **({"cursor": cursor} if cursor else {})}
                page = (await client.get("/api/v1/tasks", params=params)).json()
                seen += [t["id"] for t in page["tasks"]]
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            assert seen == list(reversed(ids))  # newest first, no gaps, no repeats

            by_name = (await client.get("/api/v1/tasks", params={"name": "job-1"})).json()
            assert {t["id"] for t in by_name["tasks"]} == {ids[i] for i in (1, 3, 5)}
            completed = (await client.get("/api/v1/tasks", params={"status": "completed"})).json()
            assert [t["id"] for t in completed["tasks"]] == [done]
            bad = await client.get("/api/v1/tasks", params={"cursor": "garbage"})
            assert bad.status_code == 422 and bad.json()["error"]["field"] == "cursor"
            unknown = await client.get("/api/v1/tasks", params={"colour": "red"})
            assert unknown.status_code == 422

            runs = (await client.get(f"/api/v1/tasks/{done}/runs")).json()["runs"]
            assert [r["status"] for r in runs] == ["succeeded"]

            queues = {q["name"]: q for q in (await client.get("/api/v1/queues")).json()["queues"]}
            assert queues["idle"]["ready"] == 7
            assert queues["idle"]["oldest_ready_age_seconds"] >= 0
            assert queues["default"]["completed_last_minute"] == 1


async def test_batch_create_is_all_or_nothing_and_keeps_order(start_daemon, daemon_env):
    with trio.fail_after(30):
        async with start_daemon(daemon_env) as d, httpx.AsyncClient(base_url=d.url) as client:
            items = [{"name": f"b{i}", "priority": 2, "dedup_key": f"k{i % 3}"} for i in range(5)]
            r = await client.post("/api/v1/tasks/batch", json={"tasks": items})
            assert r.status_code == 200, r.text
            out = r.json()["tasks"]
            assert [t["created"] for t in out] == [True, True, True, False, False]
            assert out[3]["task_id"] == out[0]["task_id"] and out[4]["task_id"] == out[1]["task_id"]

            bad = items[:2] + [{"name": "x", "priority": "high"}]
            r = await client.post("/api/v1/tasks/batch", json={"tasks": bad})
            assert r.status_code == 422
            assert r.json()["error"]["field"] == "tasks.2.priority"
            r = await client.post("/api/v1/tasks/batch",
                                  json={"tasks": [{"name": "ok"}, {"name": "x", "handler": "no"}]})
            assert r.status_code == 422 and r.json()["error"]["field"] == "tasks.1.handler"
            for t in out[:3]:
                await wait_task(client, d.url, t["task_id"])
    with psycopg.connect(daemon_env["DATABASE_URL"]) as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 3


async def test_dlq_filters_replay_by_ids_dry_run_and_delete_are_audited(start_daemon, daemon_env):
    with trio.fail_after(30):
        async with start_daemon(daemon_env) as d, httpx.AsyncClient(base_url=d.url) as client:
            dead = []
            for i in range(4):
                dead.append(await create(client, name=f"d{i}", max_retries=0,
                                         payload={"always_fail": True}))
            for task_id in dead:
                await wait_task(client, d.url, task_id)
            page = (await client.get("/api/v1/queues/default/dlq",
                                     params={"limit": 2})).json()
            assert [t["id"] for t in page["tasks"]] == dead[:2] and page["next_cursor"]
            rest = (await client.get("/api/v1/queues/default/dlq",
                                     params={"cursor": page["next_cursor"]})).json()
            assert [t["id"] for t in rest["tasks"]] == dead[2:]
            by_error = (await client.get("/api/v1/queues/default/dlq",
                                         params={"error": "ALWAYS_FAIL"})).json()
            assert by_error["count"] == 4
            none = (await client.get("/api/v1/queues/default/dlq",
                                     params={"handler": "noop"})).json()
            assert none["count"] == 0

            headers = {"X-Distasks-Actor": "bob"}
            dry = (await client.post("/api/v1/queues/default/dlq/replay", headers=headers,
                                     json={"task_ids": [dead[3]], "dry_run": True})).json()
            assert dry == {"queue": "default", "replayed": 1, "task_ids": [dead[3]],
                           "dry_run": True}
            assert (await client.get("/api/v1/queues/default/dlq")).json()["count"] == 4
            deleted = (await client.post("/api/v1/queues/default/dlq/delete", headers=headers,
                                         json={"task_ids": [dead[0]]})).json()
            assert deleted["task_ids"] == [dead[0]]
            remaining = (await client.get("/api/v1/queues/default/dlq")).json()
            assert [t["id"] for t in remaining["tasks"]] == dead[1:]
            kept = (await client.get(f"/api/v1/tasks/{dead[0]}")).json()
            assert kept["task"]["status"] == "failed"  # deleted from the DLQ, not from history
    with psycopg.connect(daemon_env["DATABASE_URL"]) as conn:
        audit = conn.execute("SELECT actor, action, detail FROM audit_log ORDER BY id").fetchall()
    assert [(a, act) for a, act, _ in audit] == [("anonymous@127.0.0.1", "dlq_delete")]
    assert audit[0][2]["task_ids"] == [dead[0]]


async def test_results_are_stored_and_long_poll_returns_when_final(start_daemon, daemon_env):
    with trio.fail_after(30):
        async with start_daemon(daemon_env) as d, httpx.AsyncClient(base_url=d.url,
                                                                     timeout=20) as client:
            task_id = await create(client, payload={"sleep_seconds": 0.5})
            started = time.monotonic()
            body = (await client.get(f"/api/v1/tasks/{task_id}", params={"wait": 10})).json()
            waited = time.monotonic() - started
            assert body["task"]["status"] == "completed"
            assert body["latest_run"]["result"] == {"ok": True, "attempt": 1}
            assert 0.3 < waited < 3
            pending = await create(client, queue_name="nobody")
            started = time.monotonic()
            body = (await client.get(f"/api/v1/tasks/{pending}", params={"wait": 0.5})).json()
            assert body["task"]["status"] == "queued"
            assert 0.4 < time.monotonic() - started < 2
            too_long = await client.get(f"/api/v1/tasks/{pending}", params={"wait": 61})
            assert too_long.status_code == 422 and too_long.json()["error"]["field"] == "wait"


async def test_http_handler_calls_only_allowed_hosts_and_retries_on_failure(
        start_daemon, daemon_env):
    port = free_port()
    calls = []

    async def serve_one(stream):
        request = await read_request(stream)
        if request is None:
            return
        head, body = request
        calls.append((head.split(b"\r\n")[0].decode(), body))
        status = b"500 Oops" if len(calls) == 1 else b"200 OK"
        text = b'{"pong": true}'
        await stream.send_all(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
                              b"Content-Length: " + str(len(text)).encode()
                              + b"\r\nConnection: close\r\n\r\n" + text)
        await stream.aclose()

    env = {**daemon_env, "DISTASKS_HTTP_HANDLER_ALLOWED_HOSTS": f"127.0.0.1:{port}",
           "DISTASKS_RETRY_BASE_S": "0.1"}
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_tcp, serve_one, port)
            async with start_daemon(env) as d, httpx.AsyncClient(base_url=d.url) as client:
                task_id = await create(client, handler="http", payload={
                    "url": f"http://127.0.0.1:{port}/hook", "method": "POST",
                    "body": {"hello": "world"}})
                body = await wait_task(client, d.url, task_id)
                assert body["task"]["status"] == "completed", body
                assert [r["status"] for r in body["runs"]] == ["retrying", "succeeded"]
                assert "HTTP 500" in body["runs"][0]["error"]
                assert body["latest_run"]["result"]["status"] == 200
                assert json.loads(body["latest_run"]["result"]["body"]) == {"pong": True}

                refused = await client.post("/api/v1/tasks", json={
                    "name": "x", "handler": "http", "payload": {"url": "http://10.0.0.1/"}})
                assert refused.status_code == 422
                assert refused.json()["error"] == {
                    "code": "host_not_allowed", "field": "payload.url",
                    "message": "host '10.0.0.1' is not in http_handler.allowed_hosts"}
            nursery.cancel_scope.cancel()
    assert calls[0] == ("POST /hook HTTP/1.1", b'{"hello":"world"}')
    assert len(calls) == 2


async def test_lists_leave_payloads_out_unless_asked(start_daemon, daemon_env):
    """A page of large payloads cost the daemon memory no caller asked for: lists name
    tasks, GET /api/v1/tasks/{id} (or include_payload=true) gives the payload."""
    with trio.fail_after(30):
        async with start_daemon(daemon_env) as d, httpx.AsyncClient(base_url=d.url) as client:
            r = await client.post("/api/v1/tasks", json={
                "name": "big", "queue_name": "nobody", "payload": {"blob": "x" * 1000}})
            task_id = r.json()["task_id"]
            plain = (await client.get("/api/v1/tasks")).json()["tasks"]
            full = (await client.get("/api/v1/tasks",
                                     params={"include_payload": "true"})).json()["tasks"]
            one = (await client.get(f"/api/v1/tasks/{task_id}")).json()["task"]
    assert [t["id"] for t in plain] == [task_id] and "payload" not in plain[0]
    assert full[0]["payload"] == {"blob": "x" * 1000} == one["payload"]
