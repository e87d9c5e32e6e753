"""Schedules against `distasks serve` (issue 11): CRUD over the API with keys of two
tenants (another tenant's schedule is a 404), bad expressions and time zones refused
naming the field, a schedule that fires into tasks that run, and the config file's
schedules upserted at start."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import trio

from distasks.client import AsyncClient, Conflict, InvalidRequest, NotFound

from .conftest import REPO, free_port, wait_task
from .test_access import keys_cli

SCOPES = ("schedules:read", "schedules:write", "tasks:read", "audit:read")


def key(env: dict[str, str], tenant: str, *scopes: str) -> str:
    args = ["create", "--name", f"{tenant}-schedules", "--tenant", tenant]
    for s in scopes:
        args += ["--scope", s]
    return keys_cli(env, *args)


def client(url: str, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"})


NIGHTLY = {"name": "nightly", "cron": "30 2 * * *", "timezone": "Europe/Berlin",
           "task": {"handler": "noop", "queue_name": "reports", "payload": {"kind": "nightly"}},
           "catch_up": "latest"}


async def test_schedules_are_managed_per_tenant_and_bad_ones_refused(start_daemon, daemon_env):
    env = {**daemon_env, "DISTASKS_AUTH_ANONYMOUS": "none"}
    own, other, reader = await trio.to_thread.run_sync(lambda: (
        key(env, "default", *SCOPES), key(env, "acme", *SCOPES),
        key(env, "default", "schedules:read")))
    with trio.fail_after(60):
        async with start_daemon(env) as d, client(d.url, own) as c, \
                client(d.url, other) as acme, client(d.url, reader) as ro:
            r = await c.post("/api/v1/schedules", json=NIGHTLY)
            assert r.status_code == 201, r.text
            body = r.json()
            assert body["owner"] == "api" and body["enabled"] is True
            assert body["task"]["name"] == "nightly" and body["catch_up"] == "latest"
            nxt = datetime.fromisoformat(body["next_fire_at"])
            assert nxt > datetime.now(UTC) and (nxt.hour, nxt.minute) in ((0, 30), (1, 30))

            r = await c.post("/api/v1/schedules", json=NIGHTLY)
            assert r.status_code == 409 and r.json()["error"]["code"] == "schedule_exists"

            for change, field in (({"cron": "61 * * * *"}, "cron"),
                                  ({"cron": "0 0 30 2 *"}, "cron"),
                                  ({"cron": "* * *"}, "cron"),
                                  ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
                                  ({"task": {"handler": "nope"}}, "task.handler"),
                                  ({"catch_up": "sometimes"}, "catch_up"),
                                  ({"jitter": 5}, "jitter")):
                r = await c.post("/api/v1/schedules", json={**NIGHTLY, "name": "bad", **change})
                assert r.status_code == 422, (change, r.text)
                assert r.json()["error"]["field"] == field, (change, r.text)
                r = await c.patch("/api/v1/schedules/nightly", json=change)
                assert r.status_code == 422 and r.json()["error"]["field"] == field, r.text
            assert (await c.get("/api/v1/schedules/bad")).status_code == 404

            r = await c.get("/api/v1/schedules/nightly", params={"upcoming": 3})
            detail = r.json()
            assert len(detail["upcoming"]) == 3 and detail["fires"] == []
            assert detail["upcoming"][0] == body["next_fire_at"]
            gaps = {datetime.fromisoformat(b) - datetime.fromisoformat(a)
                    for a, b in zip(detail["upcoming"], detail["upcoming"][1:], strict=False)}
            assert gaps <= {timedelta(hours=23), timedelta(hours=24), timedelta(hours=25)}

            # Pause, change, resume.
            r = await c.patch("/api/v1/schedules/nightly", json={"enabled": False})
            assert r.status_code == 200 and r.json()["enabled"] is False
            assert (await c.get("/api/v1/schedules/nightly")).json()["upcoming"] == []
            r = await c.patch("/api/v1/schedules/nightly",
                              json={"cron": "0 9 * * MON", "timezone": "UTC", "enabled": True,
                                    "task": {"priority": 5}})
            changed = r.json()
            assert changed["cron"] == "0 9 * * MON" and changed["task"]["priority"] == 5
            assert changed["task"]["queue_name"] == "reports"
            monday = datetime.fromisoformat(changed["next_fire_at"])
            assert (monday.weekday(), monday.hour, monday.minute) == (0, 9, 0)

            # Another tenant sees none of it, and may use the same name.
            assert (await acme.get("/api/v1/schedules")).json() == {"schedules": [],
                                                                    "next_cursor": None}
            for method in ("GET", "PATCH", "DELETE"):
                r = await acme.request(method, "/api/v1/schedules/nightly",
                                       json={"enabled": False} if method == "PATCH" else None)
                assert r.status_code == 404, (method, r.text)
            assert (await acme.post("/api/v1/schedules", json=NIGHTLY)).status_code == 201
            names = [s["name"] for s in (await c.get("/api/v1/schedules")).json()["schedules"]]
            assert names == ["nightly"]

            # Reading needs schedules:read; writing schedules:write.
            assert (await ro.get("/api/v1/schedules/nightly")).status_code == 200
            r = await ro.post("/api/v1/schedules", json={**NIGHTLY, "name": "other"})
            assert r.status_code == 403

            assert (await c.delete("/api/v1/schedules/nightly")).status_code == 204
            assert (await c.get("/api/v1/schedules/nightly")).status_code == 404
            assert (await acme.get("/api/v1/schedules/nightly")).status_code == 200
            # Each tenant's audit log holds its own changes only.
            actions = [e["action"] for e in (await c.get("/api/v1/audit")).json()["entries"]]
            assert actions[:4] == ["schedule_delete", "schedule_update", "schedule_update",
                               "schedule_create"]
            acme_log = (await acme.get("/api/v1/audit")).json()["entries"]
            assert [e["action"] for e in acme_log] == ["schedule_create"]


async def test_a_schedule_fires_tasks_that_run_and_shows_its_fires(start_daemon, daemon_env):
    env = {**daemon_env, "QUEUE_NAMES": "default", "DISTASKS_SCHEDULER_INTERVAL_S": "0.2"}
    with trio.fail_after(60):
        async with start_daemon(env) as d, httpx.AsyncClient(base_url=d.url) as c:
            r = await c.post("/api/v1/schedules", json={
                "name": "every-second", "cron": "* * * * * *",
                "task": {"handler": "noop", "payload": {"n": 1, "token": "s3cret"},
                         "secret_fields": ["token"]}})
            assert r.status_code == 201, r.text
            # A secret of the template is shown neither in the schedule nor its tasks.
            assert r.json()["task"]["payload"] == {"n": 1, "token": "[secret]"}
            listed = await c.get("/api/v1/schedules", params={"include_payload": "true"})
            assert listed.json()["schedules"][0]["task"]["payload"]["token"] == "[secret]"
            assert "s3cret" not in listed.text
            fires: list[dict] = []
            while len(fires) < 3:
                fires = (await c.get("/api/v1/schedules/every-second")).json()["fires"]
                await trio.sleep(0.2)
            assert {f["outcome"] for f in fires} == {"created"}
            slots = [f["fire_at"] for f in fires]
            assert slots == sorted(set(slots), reverse=True)
            for f in fires:
                done = await wait_task(c, d.url, f["task_id"])
                assert done["task"]["status"] == "completed"
                assert done["task"]["name"] == "every-second"
                assert done["task"]["payload"] == {"n": 1, "token": "[secret]"}
                assert done["task"]["secret_fields"] == ["token"]
            r = await c.patch("/api/v1/schedules/every-second", json={"enabled": False})
            assert r.status_code == 200
            metrics = (await c.get("/metrics")).text
            assert 'distasks_schedule_fires_total{outcome="created",schedule="every-second"}' \
                in metrics


CONFIGURED = """
[auth]
anonymous = "loopback"

[[schedules]]
name = "deployment-report"
cron = "0 6 * * *"
timezone = "America/New_York"
catch_up = "all"
catch_up_max = 3
[schedules.task]
handler = "noop"
queue_name = "reports"
payload = { source = "config" }
"""


async def test_the_config_files_schedules_are_upserted_at_start(start_daemon, daemon_env,
                                                                 tmp_path):
    path = tmp_path / "distasks.toml"
    path.write_text(CONFIGURED)
    with trio.fail_after(60):
        for start in range(2):  # a restart with the same file changes nothing
            async with start_daemon(daemon_env, config=str(path)) as d, \
                    httpx.AsyncClient(base_url=d.url) as c:
                listed = await c.get("/api/v1/schedules", params={"include_payload": "true"})
                [s] = listed.json()["schedules"]
                assert (s["name"], s["owner"], s["catch_up_max"]) == (
                    "deployment-report", "config", 3)
                assert s["task"]["payload"] == {"source": "config"}
                # A pause made through the API outlives a restart.
                assert s["enabled"] is (start == 0)
                # Only pausing is the API's to do; the rest belongs to the file.
                r = await c.patch("/api/v1/schedules/deployment-report", json={"cron": "* * * * *"})
                assert r.status_code == 409 and r.json()["error"]["code"] == "owned_by_config"
                assert (await c.delete("/api/v1/schedules/deployment-report")).status_code == 409
                r = await c.patch("/api/v1/schedules/deployment-report", json={"enabled": False})
                assert r.status_code == 200


async def run_cli(url: str, *argv: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTASKS_")}
    p = await trio.run_process([sys.executable, "-m", "distasks", *argv],
                               env={**env, "DISTASKS_URL": url}, cwd=REPO, check=False,
                               capture_stdout=True, capture_stderr=True)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


async def test_the_cli_and_the_python_client_manage_schedules(start_daemon, daemon_env):
    with trio.fail_after(90):
        async with start_daemon(daemon_env) as d, AsyncClient(d.url) as c:
            code, out, err = await run_cli(
                d.url, "schedules", "create", "nightly", "30 2 * * *", "--timezone",
                "Europe/Berlin", "--handler", "noop", "--queue", "reports", "--payload",
                '{"kind": "nightly"}', "--catch-up", "all", "--catch-up-max", "3")
            assert code == 0, err
            assert out.startswith("schedule nightly created; next fire ")
            code, out, err = await run_cli(d.url, "schedules", "create", "bad", "61 * * * *")
            assert code == 1 and err.startswith("distasks: 422 invalid_input (cron): "), err
            code, out, _ = await run_cli(d.url, "schedules", "list")
            assert code == 0 and "nightly" in out and "Europe/Berlin" in out
            code, out, _ = await run_cli(d.url, "schedules", "get", "nightly", "--upcoming", "2",
                                         "--json")
            shown = json.loads(out)
            assert len(shown["upcoming"]) == 2 and shown["schedule"]["catch_up_max"] == 3
            code, out, _ = await run_cli(d.url, "schedules", "update", "nightly", "--cron",
                                         "0 3 * * *", "--no-skip-if-running", "--priority", "4")
            assert code == 0, out
            code, out, _ = await run_cli(d.url, "schedules", "pause", "nightly")
            assert (code, out.strip()) == (0, "schedule nightly paused")

            # The same through the Python client.
            x = await c.schedule("nightly")
            assert (x.schedule.cron, x.schedule.enabled, x.schedule.task["priority"]) == (
                "0 3 * * *", False, 4)
            assert x.upcoming == [] and x.fires == []
            resumed = await c.resume_schedule("nightly")
            assert resumed.enabled and resumed.next_fire_at is not None
            made = await c.create_schedule("weekly", "0 9 * * MON",
                                           task={"handler": "noop"}, jitter_seconds=60)
            assert made.owner == "api" and made.jitter_seconds == 60
            assert [s.name for s in await c.schedules()] == ["nightly", "weekly"]
            try:
                await c.create_schedule("weekly", "0 9 * * MON")
            except Conflict as e:
                assert e.code == "schedule_exists"
            else:
                raise AssertionError("a second schedule of one name was accepted")
            try:
                await c.update_schedule("weekly", timezone="Nowhere/Special")
            except InvalidRequest as e:
                assert e.field == "timezone"
            else:
                raise AssertionError("an unknown time zone was accepted")
            await c.delete_schedule("weekly")
            try:
                await c.schedule("weekly")
            except NotFound:
                pass
            else:
                raise AssertionError("a deleted schedule is still shown")
            code, out, _ = await run_cli(d.url, "schedules", "delete", "nightly")
            assert (code, out.strip()) == (0, "schedule nightly deleted")


async def test_three_daemons_fire_every_second_of_a_schedule_exactly_once(
        start_daemon, daemon_env, pg_dsn):
    # Three daemons on one database and Redis, each running the scheduler every 100 ms,
    # over schedules due every second: each slot from the first fire to the last has
    # exactly one fire and one task, whichever daemon made it.
    envs = [{**daemon_env, "HTTP_PORT": str(free_port()), "QUEUE_NAMES": "default",
             "DISTASKS_SCHEDULER_INTERVAL_S": "0.1"} for _ in range(3)]
    with trio.fail_after(120):
        async with start_daemon(envs[0]) as a, start_daemon(envs[1]) as b, \
                start_daemon(envs[2]) as c, httpx.AsyncClient(base_url=a.url) as api:
            for name in ("race-all", "race-skip"):
                r = await api.post("/api/v1/schedules", json={
                    "name": name, "cron": "* * * * * *", "catch_up": name.split("-")[1],
                    "task": {"handler": "noop"}})
                assert r.status_code == 201, r.text
            # No event to wait on in a database: poll it (fail_after bounds the wait).
            while len(await trio.to_thread.run_sync(fired_slots, pg_dsn, "race-skip")) < 12:  # noqa: ASYNC110
                await trio.sleep(0.5)
            for name in ("race-all", "race-skip"):
                r = await api.patch(f"/api/v1/schedules/{name}", json={"enabled": False})
                assert r.status_code == 200
            logs = [d.log() for d in (a, b, c)]
    firing = [log.count('"event": "schedule_fired"') for log in logs]
    assert sum(firing) >= 24 and sum(1 for n in firing if n) >= 2, firing
    for name in ("race-all", "race-skip"):
        slots = await trio.to_thread.run_sync(fired_slots, pg_dsn, name)
        assert len(slots) >= 12
        assert slots == [slots[0] + timedelta(seconds=i) for i in range(len(slots))], name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        [(fires, tasks, distinct)] = conn.execute(
            "SELECT count(*), (SELECT count(*) FROM tasks), count(DISTINCT task_id)"
            " FROM schedule_fires WHERE outcome = 'created'").fetchall()
    assert fires == tasks == distinct


def fired_slots(dsn: str, name: str) -> list[datetime]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [r[0] for r in conn.execute(
            "SELECT f.fire_at FROM schedule_fires f JOIN schedules s ON s.id = f.schedule_id"
            " WHERE s.name = %s ORDER BY f.fire_at", (name,)).fetchall()]


async def test_a_tenant_cannot_pass_its_queue_and_schedule_caps_through_schedules(
        start_daemon, daemon_env):
    env = {**daemon_env, "DISTASKS_AUTH_ANONYMOUS": "none", "DISTASKS_LIMITS_MAX_QUEUES": "1",
           "DISTASKS_LIMITS_MAX_SCHEDULES": "2"}
    token = await trio.to_thread.run_sync(lambda: key(env, "acme", *SCOPES))

    def every(name: str, queue: str) -> dict:
        return {"name": name, "cron": "* * * * *", "task": {"handler": "noop",
                                                            "queue_name": queue}}

    with trio.fail_after(60):
        async with start_daemon(env) as d, client(d.url, token) as c:
            assert (await c.post("/api/v1/schedules", json=every("a", "a"))).status_code == 201
            r = await c.post("/api/v1/schedules", json=every("b", "b"))
            assert r.status_code == 409, r.text
            assert r.json()["error"]["code"] == "too_many_queues"
            assert r.json()["error"]["field"] == "task.queue_name"
            r = await c.patch("/api/v1/schedules/a", json={"task": {"queue_name": "b"}})
            assert r.status_code == 409 and r.json()["error"]["field"] == "task.queue_name"
            assert (await c.post("/api/v1/schedules", json=every("b", "a"))).status_code == 201
            r = await c.post("/api/v1/schedules", json=every("c", "a"))
            assert r.status_code == 409 and r.json()["error"]["code"] == "too_many_schedules"


async def test_the_schedule_list_comes_in_pages_without_payloads_unless_asked(
        start_daemon, daemon_env):
    with trio.fail_after(60):
        async with start_daemon(daemon_env) as d, httpx.AsyncClient(base_url=d.url) as c:
            for name in ("a", "b", "c"):
                r = await c.post("/api/v1/schedules", json={
                    "name": name, "cron": "0 3 * * *",
                    "task": {"handler": "noop", "payload": {"big": name * 1000}}})
                assert r.status_code == 201, r.text
            first = (await c.get("/api/v1/schedules", params={"limit": 2})).json()
            assert [s["name"] for s in first["schedules"]] == ["a", "b"]
            assert all("payload" not in s["task"] for s in first["schedules"])
            rest = (await c.get("/api/v1/schedules", params={
                "limit": 2, "cursor": first["next_cursor"], "include_payload": "true"})).json()
            assert [s["name"] for s in rest["schedules"]] == ["c"]
            assert rest["next_cursor"] is None
            assert rest["schedules"][0]["task"]["payload"] == {"big": "c" * 1000}
            async with AsyncClient(d.url) as client:
                assert [s.name for s in await client.schedules()] == ["a", "b", "c"]
