"""Item 7 of issue 15 over HTTP, against `distasks serve`: a schedule window that runs
backwards, a host-dependent time zone, unmarking a secret, and integers spelled 3.0 are
refused with a 422 naming the field (the lean create route too), and a stored secret
stays "[secret]"; the queue list's DLQ depth and the DLQ listing agree after Redis lost
an entry."""

from __future__ import annotations

import httpx
import redis
import trio

from distasks.broker.keys import queue_keys

from .conftest import wait_task

SCHEDULE = {"name": "mail", "cron": "0 3 * * *", "timezone": "Europe/Berlin",
            "start_at": "2030-01-01T00:00:00Z", "end_at": "2031-01-01T00:00:00Z",
            "task": {"handler": "noop", "payload": {"to": "a@example.com", "password": "hunter2"},
                     "secret_fields": ["password"]}}


async def test_schedule_and_task_edges_are_refused_naming_the_field(start_daemon, daemon_env):
    with trio.fail_after(60):
        async with start_daemon(daemon_env) as d, httpx.AsyncClient(base_url=d.url) as c:
            r = await c.post("/api/v1/schedules", json=SCHEDULE)
            assert r.status_code == 201, r.text

            for body, field in (({**SCHEDULE, "name": "x", "end_at": "2029-01-01T00:00:00Z"},
                                 "end_at"),
                                ({**SCHEDULE, "name": "x", "timezone": "localtime"}, "timezone"),
                                ({**SCHEDULE, "name": "x", "catch_up_max": 3.0},
                                 "catch_up_max")):
                r = await c.post("/api/v1/schedules", json=body)
                assert (r.status_code, r.json()["error"]["field"]) == (422, field), r.text
            for change, field in (({"end_at": "2029-06-01T00:00:00Z"}, "end_at"),
                                  ({"start_at": "2032-01-01T00:00:00Z"}, "start_at"),
                                  ({"timezone": "localtime"}, "timezone"),
                                  ({"task": {"secret_fields": []}}, "task.secret_fields")):
                r = await c.patch("/api/v1/schedules/mail", json=change)
                assert (r.status_code, r.json()["error"]["field"]) == (422, field), r.text
            shown = (await c.get("/api/v1/schedules/mail", params={"upcoming": 0})).json()
            assert shown["schedule"]["task"]["payload"]["password"] == "[secret]"
            assert shown["schedule"]["task"]["secret_fields"] == ["password"]

            for route, body, field in (("/api/v1/tasks", {"name": "t", "max_retries": 3.0},
                                        "max_retries"),
                                       ("/api/v1/tasks/batch",
                                        {"tasks": [{"name": "t", "priority": 1.0}]},
                                        "tasks.0.priority")):
                r = await c.post(route, json=body)
                assert (r.status_code, r.json()["error"]["field"]) == (422, field), r.text
                assert "3.0" in r.json()["error"]["message"]


async def test_the_queue_list_and_the_dlq_listing_agree_after_redis_lost_an_entry(
        start_daemon, daemon_env, redis_url, redis_prefix):
    with trio.fail_after(60):
        async with start_daemon(daemon_env) as d, httpx.AsyncClient(base_url=d.url) as c:
            ids = []
            for _ in range(3):  # the demo handler fails an odd priority's first attempt
                r = await c.post("/api/v1/tasks", json={"name": "doomed", "priority": 1,
                                                        "max_retries": 0})
                ids.append(r.json()["task_id"])
            for task_id in ids:
                await wait_task(c, d.url, task_id)
            dlq_key = queue_keys(redis_prefix, "default").dlq

            def drop_one() -> int:
                r = redis.Redis.from_url(redis_url)
                try:
                    r.lrem(dlq_key, 1, ids[1])
                    return int(r.llen(dlq_key))
                finally:
                    r.close()

            assert await trio.to_thread.run_sync(drop_one) == 2  # Redis now holds 2 of the 3
            listed = (await c.get("/api/v1/queues/default/dlq")).json()["count"]
            queues = {q["name"]: q for q in (await c.get("/api/v1/queues")).json()["queues"]}
    assert queues["default"]["dlq"] == listed == 3
