"""Tenants against `distasks serve`: two tenants' `default` queues, tasks, dedup keys,
pauses, DLQs, audit rows and keys never mix; another tenant's task is a 404; quotas on
creates, queued tasks and payload size; tenant metrics labels bounded by the config."""

from __future__ import annotations

from pathlib import Path

import httpx
import psycopg
import redis
import trio

from .conftest import REPO
from .test_access import keys_cli

ALL_SCOPES = ("tasks:write", "tasks:read", "tasks:cancel", "queues:read", "queues:admin",
              "dlq:admin", "keys:admin", "audit:read", "metrics:read")


def tenant_key(env: dict[str, str], tenant: str, *scopes: str) -> str:
    args = ["create", "--name", f"{tenant}-key", "--tenant", tenant]
    for s in scopes or ALL_SCOPES:
        args += ["--scope", s]
    return keys_cli(env, *args)


def config_with(tmp_path: Path, extra: str) -> str:
    path = tmp_path / "distasks.toml"
    path.write_text((REPO / "config/distasks.toml").read_text() + "\n" + extra)
    return str(path)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def final(client: httpx.AsyncClient, token: str, task_id: str) -> dict:
    """The task once it is no longer queued (a long poll); the caller bounds the time."""
    while True:
        r = await client.get(f"/api/v1/tasks/{task_id}?wait=5", headers=bearer(token))
        assert r.status_code == 200, r.text
        if r.json()["task"]["status"] != "queued":
            return r.json()


async def test_two_tenants_never_see_or_touch_each_other(start_daemon, daemon_env,
                                                         redis_prefix, redis_url):
    env = {**daemon_env, "DISTASKS_AUTH_ANONYMOUS": "none",
           "QUEUE_NAMES": "default,acme/default"}
    ops = await trio.to_thread.run_sync(tenant_key, env, "default")
    acme = await trio.to_thread.run_sync(tenant_key, env, "acme")
    beta = await trio.to_thread.run_sync(tenant_key, env, "beta")
    with trio.fail_after(60):
        async with start_daemon(env) as d, httpx.AsyncClient(base_url=d.url) as client:
            async def create(token: str, **body: object) -> httpx.Response:
                return await client.post("/api/v1/tasks", headers=bearer(token),
                                         json={"name": "t", "handler": "noop", **body})

            # One dedup key, two tenants: two tasks.
            mine = await create(acme, dedup_key="k")
            theirs = await create(ops, dedup_key="k")
            assert mine.status_code == theirs.status_code == 201, (mine.text, theirs.text)
            mine_id = mine.json()["task_id"]
            assert mine_id != theirs.json()["task_id"]
            assert (await create(acme, dedup_key="k")).json()["task_id"] == mine_id

            # acme's task runs on acme/default and reads as queue "default".
            done = await final(client, acme, mine_id)
            assert done["task"]["status"] == "completed"
            assert done["task"]["queue_name"] == "default"

            # Another tenant: as if the task never was.
            for method, path in (("GET", f"/api/v1/tasks/{mine_id}"),
                                 ("GET", f"/api/v1/tasks/{mine_id}/runs"),
                                 ("POST", f"/api/v1/tasks/{mine_id}/cancel")):
                r = await client.request(method, path, headers=bearer(beta))
                assert r.status_code == 404, (method, path, r.text)
            listed = await client.get("/api/v1/tasks", headers=bearer(beta))
            assert listed.json()["tasks"] == []
            acme_list = await client.get("/api/v1/tasks", headers=bearer(acme))
            assert [t["id"] for t in acme_list.json()["tasks"]] == [mine_id]
            ops_list = await client.get("/api/v1/tasks", headers=bearer(ops))
            assert mine_id not in [t["id"] for t in ops_list.json()["tasks"]]

            # acme pauses its "default": the default tenant's "default" goes on.
            r = await client.post("/api/v1/queues/default/pause", headers=bearer(acme))
            assert r.json() == {"name": "default", "paused": True}
            queues = (await client.get("/api/v1/queues", headers=bearer(ops))).json()["queues"]
            assert {q["name"]: q["paused"] for q in queues}["default"] is False
            acme_queues = (await client.get("/api/v1/queues",
                                            headers=bearer(acme))).json()["queues"]
            assert [(q["name"], q["paused"]) for q in acme_queues] == [("default", True)]
            ops_task = (await create(ops)).json()["task_id"]
            assert (await final(client, ops, ops_task))["task"]["status"] == "completed"
            r = redis.Redis.from_url(redis_url)
            assert r.exists(f"{redis_prefix}:{{q:acme/default}}:paused")
            assert not r.exists(f"{redis_prefix}:{{q:default}}:paused")

            # The audit log and the workers list are each tenant's own.
            audit = (await client.get("/api/v1/audit", headers=bearer(ops))).json()["entries"]
            assert all(e["tenant"] == "default" for e in audit)
            acme_audit = (await client.get("/api/v1/audit",
                                           headers=bearer(acme))).json()["entries"]
            assert [(e["action"], e["queue_name"]) for e in acme_audit] == [("pause", "default")]
            workers = (await client.get("/api/v1/workers", headers=bearer(beta))).json()
            assert all(w["queues"] == [] for w in workers["workers"])

            # Keys: a tenant's admin manages its own keys only, and gives no scope it lacks.
            acme_keys = (await client.get("/api/v1/keys", headers=bearer(acme))).json()["keys"]
            assert {k["tenant"] for k in acme_keys} == {"acme"}
            ops_keys = (await client.get("/api/v1/keys", headers=bearer(ops))).json()["keys"]
            assert {k["tenant"] for k in ops_keys} == {"default", "acme", "beta"}
            r = await client.post("/api/v1/keys", headers=bearer(acme),
                                  json={"name": "x", "scopes": ["tasks:read"], "tenant": "beta"})
            assert r.status_code == 403, r.text
            beta_key = next(k for k in ops_keys if k["tenant"] == "beta")
            r = await client.post(f"/api/v1/keys/{beta_key['id']}/revoke", headers=bearer(acme))
            assert r.status_code == 404, r.text
            reader = await trio.to_thread.run_sync(tenant_key, env, "acme", "keys:admin")
            r = await client.post("/api/v1/keys", headers=bearer(reader),
                                  json={"name": "x", "scopes": ["dlq:admin"]})
            assert r.status_code == 403 and "dlq:admin" in r.json()["error"]["message"]
            r = await client.post("/api/v1/keys", headers=bearer(acme),
                                  json={"name": "x", "scopes": ["tasks:read"]})
            assert r.status_code == 201 and r.json()["key"]["tenant"] == "acme"
            # Nor rotates a stronger key into its own hands.
            full = next(k for k in acme_keys if "dlq:admin" in k["scopes"])
            r = await client.post(f"/api/v1/keys/{full['id']}/rotate", headers=bearer(reader))
            assert r.status_code == 403 and "dlq:admin" in r.json()["error"]["message"]


async def test_tenant_quotas_refuse_what_is_over_them(start_daemon, daemon_env, tmp_path):
    # No daemon serves acme's queues: its tasks stay queued.
    config = config_with(tmp_path, """
[tenants.acme]
max_queued = 5
max_payload_bytes = 100

[tenants.bravo]
tasks_per_minute = 60
""")
    env = {**daemon_env, "DISTASKS_AUTH_ANONYMOUS": "none"}
    acme = await trio.to_thread.run_sync(tenant_key, env, "acme")
    bravo = await trio.to_thread.run_sync(tenant_key, env, "bravo")
    zeta = await trio.to_thread.run_sync(tenant_key, env, "zeta")
    ops = await trio.to_thread.run_sync(tenant_key, env, "default", "metrics:read")
    with trio.fail_after(60):
        async with start_daemon(env, config=config) as d, httpx.AsyncClient(
                base_url=d.url) as client:
            async def create(token: str, payload: object = None) -> httpx.Response:
                return await client.post("/api/v1/tasks", headers=bearer(token),
                                         json={"name": "t", "handler": "noop",
                                               "payload": payload})

            big = await create(acme, {"blob": "x" * 200})
            assert big.status_code == 413, big.text
            assert big.json()["error"]["field"] == "payload"
            assert "100" in big.json()["error"]["message"]
            for _ in range(5):
                assert (await create(acme)).status_code == 201
            over = await create(acme)
            assert over.status_code == 429, over.text
            assert over.json()["error"]["code"] == "quota_exceeded"
            assert "5 tasks queued" in over.json()["error"]["message"]
            assert int(over.headers["Retry-After"]) >= 1
            batch = await client.post("/api/v1/tasks/batch", headers=bearer(acme),
                                      json={"tasks": [{"name": "t", "handler": "noop"}]})
            assert batch.status_code == 429, batch.text

            # 60 per minute: a burst of 10, then refusals until tokens come back.
            statuses = [(await create(bravo)).status_code for _ in range(12)]
            assert statuses[:10] == [201] * 10 and statuses[-1] == 429, statuses
            # Other tenants are not held back by acme's or bravo's quotas.
            assert (await create(zeta)).status_code == 201

            # The metrics show every tenant: the operator's (default tenant's) only.
            r = await client.get("/metrics", headers=bearer(acme))
            assert r.status_code == 403 and "whole deployment" in r.text
            metrics = (await client.get("/metrics", headers=bearer(ops))).text
            assert 'distasks_tenant_requests_refused_total{reason="quota",tenant="acme"}' in metrics
            assert 'distasks_tenant_tasks_created_total{tenant="bravo"} 10.0' in metrics
            # zeta is named nowhere in the config: counted as "other".
            assert 'distasks_tenant_tasks_created_total{tenant="other"} 1.0' in metrics
            assert 'tenant="zeta"' not in metrics


async def test_a_key_gets_no_more_rate_or_time_than_its_maker_has(start_daemon, daemon_env):
    """acme's keys:admin is under limits.per_minute (60 here, a burst of 10): it cannot
    mint an unlimited or faster key (403 naming the field), a key it mints without a rate
    is held to 60 like acme's others, one its maker is slower than gets its maker's rate
    (said in `capped`), and so does a key it rotates; a maker that expires gives no key
    a later expiry. The audit rows record each key's rate and expiry."""
    env = {**daemon_env, "DISTASKS_AUTH_ANONYMOUS": "none", "DISTASKS_LIMITS_PER_MINUTE": "60"}
    admin = await trio.to_thread.run_sync(tenant_key, env, "acme", "keys:admin", "tasks:read")
    slow_admin = await trio.to_thread.run_sync(
        keys_cli, env, "create", "--name", "slow-admin", "--tenant", "acme", "--scope",
        "keys:admin", "--scope", "tasks:read", "--rate-per-minute", "30")
    brief_admin = await trio.to_thread.run_sync(
        keys_cli, env, "create", "--name", "brief-admin", "--tenant", "acme", "--scope",
        "keys:admin", "--scope", "tasks:read", "--expires-in", "1h")
    # The operator may give an acme key no limit with the command line.
    await trio.to_thread.run_sync(keys_cli, env, "create", "--name", "unlimited", "--tenant",
                                  "acme", "--scope", "tasks:read", "--rate-per-minute", "0")
    with trio.fail_after(60):
        async with start_daemon(env) as d, httpx.AsyncClient(base_url=d.url) as client:
            async def mint(token: str, **body: object) -> httpx.Response:
                return await client.post("/api/v1/keys", headers=bearer(token), json={
                    "name": "fast", "scopes": ["tasks:read"], **body})

            for rate in (0, 61):
                r = await mint(admin, rate_per_minute=rate)
                assert (r.status_code, r.json()["error"]["field"]) == (
                    403, "rate_per_minute"), r.text
            r = await mint(admin, rate_per_minute=60)
            assert r.status_code == 201 and r.json()["capped"] == [], r.text
            r = await mint(admin)
            assert r.status_code == 201 and r.json()["capped"] == [], r.text
            plain = r.json()["token"]
            statuses = [(await client.get("/api/v1/tasks", headers=bearer(plain))).status_code
                        for _ in range(15)]
            assert statuses[0] == 200 and statuses[-1] == 429, statuses

            r = await mint(slow_admin)
            assert (r.status_code, r.json()["key"]["rate_per_minute"], r.json()["capped"]) == (
                201, 30, ["rate_per_minute"]), r.text

            listed = (await client.get("/api/v1/keys", headers=bearer(admin))).json()["keys"]
            unlimited = next(k for k in listed if k["name"] == "unlimited")
            r = await client.post(f"/api/v1/keys/{unlimited['id']}/rotate", headers=bearer(admin))
            assert (r.status_code, r.json()["key"]["rate_per_minute"], r.json()["capped"]) == (
                201, 60, ["rate_per_minute"]), r.text
            rotated_id = r.json()["key"]["id"]

            maker_expiry = next(k for k in listed if k["name"] == "brief-admin")["expires_at"]
            r = await mint(brief_admin, expires_in_seconds=7200)
            assert (r.status_code, r.json()["error"]["field"]) == (
                403, "expires_in_seconds"), r.text
            r = await mint(brief_admin)
            assert (r.status_code, r.json()["key"]["expires_at"], r.json()["capped"]) == (
                201, maker_expiry, ["expires_at"]), r.text
            assert (await mint(brief_admin, expires_in_seconds=600)).status_code == 201
    with psycopg.connect(env["DATABASE_URL"]) as conn:
        rows = {d["key_id"]: d for (d,) in conn.execute(
            "SELECT detail FROM audit_log WHERE action = 'key_create'")}
    assert rows[rotated_id]["rate_per_minute"] == 60
    assert {"rate_per_minute", "expires_at"} <= set(rows[unlimited["id"]])
    assert rows[unlimited["id"]]["rate_per_minute"] == 0
