"""Workflows against `distasks serve` (issue 19): a 1 → 1,000 → 1 fan-out/fan-in, each
on_parent_failure policy and on_failure, cancel mid-flight, resume, the 422s, and the
faults of promise 7 (kill -9 of a daemon, Redis restarted empty) mid-workflow.

Executions are counted from the handlers' log (distasks/testing/workflow_handlers.py
appends a line when a handler starts), attempts from PostgreSQL.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import trio

from distasks.testing.faults import DAEMON_SETTINGS
from distasks.testing.servers import PrivateRedis

HANDLERS = "distasks.testing.workflow_handlers"


@pytest.fixture
def wf_env(daemon_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return {**daemon_env, **DAEMON_SETTINGS, "DISTASKS_WORKER_HANDLERS": HANDLERS,
            "DISTASKS_CHAOS_LOG": str(tmp_path / "executions.log"), "WORKER_CONCURRENCY": "16",
            "DISTASKS_RETRY_MAX_RETRIES": "0"}


def executions(env: dict[str, str]) -> Counter[str]:
    """Handler starts by workflow key."""
    path = Path(env["DISTASKS_CHAOS_LOG"])
    if not path.exists():
        return Counter()
    return Counter(line.split()[4] for line in path.read_text().splitlines() if line.strip())


def step(key: str, *deps: Any, **payload: Any) -> dict[str, Any]:
    return {"key": key, "name": key, "handler": "wf_step", "depends_on": list(deps),
            "payload": payload}


def fan(width: int, *, ms: int = 0) -> list[dict[str, Any]]:
    """1 → width → 1: `start`, `w0…`, `gather` (which sees every w's value)."""
    return [step("start", value=0),
            *(step(f"w{i}", "start", value=i, ms=ms) for i in range(width)),
            {"key": "gather", "name": "gather", "handler": "wf_gather",
             "depends_on": [f"w{i}" for i in range(width)]}]


async def submit(client: httpx.AsyncClient, tasks: list[dict[str, Any]], **more: Any) -> str:
    r = await client.post("/api/v1/workflows", json={"name": "wf", "tasks": tasks, **more})
    assert r.status_code == 201, r.text
    return str(r.json()["workflow_id"])


async def wait_workflow(client: httpx.AsyncClient, wid: str,
                        until=lambda w: w["state"] != "running",
                        headers: dict[str, str] | None = None) -> dict[str, Any]:
    while True:
        r = await client.get(f"/api/v1/workflows/{wid}", headers=headers)
        assert r.status_code == 200, r.text
        if until(body := r.json()):
            return body
        await trio.sleep(0.1)


def nodes(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["key"]: n for n in body["nodes"]}


async def test_fan_out_fan_in_of_a_thousand_runs_the_fan_in_once_with_every_output(
        start_daemon, wf_env):
    with trio.fail_after(120):
        async with start_daemon(wf_env) as d, httpx.AsyncClient(base_url=d.url) as client:
            wid = await submit(client, fan(1000))
            body = await wait_workflow(client, wid)
            assert body["state"] == "succeeded", body["counts"]
            assert body["counts"] == {"completed": 1002}
            results = (await client.get(f"/api/v1/workflows/{wid}/results")).json()["results"]
            assert results["gather"]["result"] == {
                "parents": 1000, "sum": sum(range(1000)), "states": {"completed": 1000}}
            runs = executions(wf_env)
            assert runs["gather"] == 1 and runs["start"] == 1
            assert len(runs) == 1002 and set(runs.values()) == {1}
            assert all(n["attempts"] == 1 for n in body["nodes"])


async def test_each_policy_and_on_failure(start_daemon, wf_env):
    tasks = [
        step("ok", value=1),
        step("bad", fail=True),
        step("cancelled_child", "bad", "ok"),
        step("below_cancelled", "cancelled_child"),
        step("continued", {"key": "bad", "on_parent_failure": "continue"}),
        step("skipped", {"key": "bad", "on_parent_failure": "skip"}),
        step("below_skipped", "skipped"),
        step("continues_past_skip", {"key": "skipped", "on_parent_failure": "continue"}),
        {"key": "seen", "name": "seen", "handler": "wf_gather",
         "depends_on": ["ok", {"key": "bad", "on_parent_failure": "continue"}]},
    ]
    on_failure = {"name": "cleanup", "handler": "wf_step", "payload": {"value": "cleaned"}}
    with trio.fail_after(60):
        async with start_daemon(wf_env) as d, httpx.AsyncClient(base_url=d.url) as client:
            wid = await submit(client, tasks, on_failure=on_failure)
            body = await wait_workflow(client, wid)
            # The on_failure task runs after the workflow is decided: wait for it too.
            body = await wait_workflow(
                client, wid, until=lambda w: nodes(w)["on_failure"]["status"] == "completed")
    assert body["state"] == "failed"
    n = nodes(body)
    assert n["ok"]["status"] == "completed" and n["bad"]["status"] == "failed"
    assert n["cancelled_child"]["status"] == "cancelled"
    assert n["cancelled_child"]["cancel_reason"] == "parent bad failed"
    assert n["below_cancelled"]["status"] == "cancelled"
    assert n["below_cancelled"]["cancel_reason"] == "parent cancelled_child cancelled"
    assert n["continued"]["status"] == "completed"
    assert n["skipped"]["status"] == "skipped" and n["below_skipped"]["status"] == "skipped"
    assert n["continues_past_skip"]["status"] == "completed"
    assert n["on_failure"]["on_failure"] is True
    runs = executions(wf_env)
    assert runs["on_failure"] == 1 and runs["cancelled_child"] == 0 and runs["skipped"] == 0
    assert all(count == 1 for count in runs.values())


async def test_seen_parent_outcomes_and_a_succeeded_workflow_skips_on_failure(
        start_daemon, wf_env):
    tasks = [step("a", value=2), step("b", fail=True),
             {"key": "seen", "name": "seen", "handler": "wf_gather",
              "depends_on": ["a", {"key": "b", "on_parent_failure": "continue"}]}]
    with trio.fail_after(60):
        async with start_daemon(wf_env) as d, httpx.AsyncClient(base_url=d.url) as client:
            wid = await submit(client, tasks)
            body = await wait_workflow(client, wid)
            results = (await client.get(f"/api/v1/workflows/{wid}/results")).json()["results"]
            assert results["seen"]["result"] == {
                "parents": 2, "sum": 2, "states": {"completed": 1, "failed": 1}}
            assert body["state"] == "failed"  # b failed, even though seen ran

            wid = await submit(client, [step("x", value=1)],
                               on_failure={"name": "cleanup", "handler": "wf_step"})
            body = await wait_workflow(client, wid)
            assert body["state"] == "succeeded"
            assert nodes(body)["on_failure"]["status"] == "skipped"


async def test_cancel_mid_flight_stops_running_and_cancels_pending(start_daemon, wf_env):
    tasks = [step("first", value=1), step("slow", "first", ms=30_000),
             step("after", "slow"), step("other", ms=30_000)]
    with trio.fail_after(60):
        async with start_daemon(wf_env) as d, httpx.AsyncClient(base_url=d.url) as client:
            wid = await submit(client, tasks)
            await wait_workflow(client, wid, until=lambda w: nodes(w)["slow"]["attempts"] == 1
                                and nodes(w)["slow"]["started_at"] is not None)
            r = await client.post(f"/api/v1/workflows/{wid}/cancel", json={"reason": "enough"})
            assert r.status_code == 200, r.text
            assert r.json() == {"workflow_id": wid, "state": "cancelled", "changed": True}
            body = (await client.get(f"/api/v1/workflows/{wid}")).json()
            n = nodes(body)
            assert body["state"] == "cancelled"
            assert n["first"]["status"] == "completed"
            assert {n[k]["status"] for k in ("slow", "after", "other")} == {"cancelled"}
            assert n["after"]["cancel_reason"] == "enough"
            # The running handler is stopped and its run recorded cancelled (fenced).
            slow = n["slow"]["task_id"]
            while True:
                task = (await client.get(f"/api/v1/tasks/{slow}")).json()
                if task["runs"][-1]["status"] == "cancelled":
                    break
                await trio.sleep(0.1)
            again = await client.post(f"/api/v1/workflows/{wid}/cancel")
            assert again.json()["changed"] is False
            assert executions(wf_env)["after"] == 0


async def test_resume_runs_failed_and_cancelled_nodes_and_skips_succeeded(start_daemon, wf_env):
    tasks = [step("a", value=1), step("b", "a", fail_until=2), step("c", "b", value=3),
             step("d", "a", value=4)]
    with trio.fail_after(60):
        async with start_daemon(wf_env) as d, httpx.AsyncClient(base_url=d.url) as client:
            wid = await submit(client, tasks)
            body = await wait_workflow(client, wid)
            assert body["state"] == "failed"
            assert nodes(body)["c"]["status"] == "cancelled"
            dlq = (await client.get("/api/v1/queues/default/dlq")).json()
            assert [t["workflow_id"] for t in dlq["tasks"]] == [wid]  # DLQ names it

            r = await client.post(f"/api/v1/workflows/{wid}/resume")
            assert r.json() == {"workflow_id": wid, "state": "running", "changed": True}
            body = await wait_workflow(client, wid)
            assert body["state"] == "succeeded"
            n = nodes(body)
            assert n["b"]["attempts"] == 2 and n["a"]["attempts"] == 1
            results = (await client.get(f"/api/v1/workflows/{wid}/results")).json()["results"]
            assert results["c"]["result"] == 3
            assert executions(wf_env) == Counter({"a": 1, "b": 2, "c": 1, "d": 1})
            dlq = (await client.get("/api/v1/queues/default/dlq")).json()
            assert dlq["tasks"] == []
            again = await client.post(f"/api/v1/workflows/{wid}/resume")
            assert again.json()["changed"] is False


@pytest.mark.parametrize(("tasks", "code", "field", "words"), [
    ([step("a", "b"), step("b", "c"), step("c", "a")], "cycle", "tasks", "a -> c -> b -> a"),
    ([step("a", "nobody")], "unknown_key", "tasks.0.depends_on.0", "'nobody'"),
    ([step("a"), step("a")], "duplicate_key", "tasks.1.key", "'a'"),
    ([step(f"n{i}") for i in range(6)], "workflow_too_large", "tasks", "over limits"),
])
async def test_a_bad_graph_is_a_422_naming_the_problem(start_daemon, wf_env, pg_dsn, tasks, code,
                                                       field, words):
    env = {**wf_env, "DISTASKS_LIMITS_MAX_WORKFLOW_TASKS": "5"}
    with trio.fail_after(30):
        async with start_daemon(env) as d, httpx.AsyncClient(base_url=d.url) as client:
            r = await client.post("/api/v1/workflows", json={"name": "bad", "tasks": tasks})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["field"] == field and words in error["message"]
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM workflows").fetchone() == (0,)


async def test_dedup_key_makes_a_submission_idempotent(start_daemon, wf_env):
    with trio.fail_after(30):
        async with start_daemon(wf_env) as d, httpx.AsyncClient(base_url=d.url) as client:
            body = {"name": "once", "dedup_key": "k1", "tasks": [step("a")]}
            first = await client.post("/api/v1/workflows", json=body)
            second = await client.post("/api/v1/workflows", json=body)
            assert (first.status_code, second.status_code) == (201, 200)
            assert first.json()["workflow_id"] == second.json()["workflow_id"]
            listed = (await client.get("/api/v1/workflows", params={"dedup_key": "k1"})).json()
            assert len(listed["workflows"]) == 1


def assert_no_stuck_nor_double_run(env: dict[str, str], body: dict[str, Any]) -> None:
    """Every node final, and a handler ran more than once only as an attempt on record."""
    assert body["state"] == "succeeded", body["counts"]
    assert body["counts"] == {"completed": len(body["nodes"])}
    runs = executions(env)
    for n in body["nodes"]:
        assert runs[n["key"]] <= n["attempts"], (n["key"], runs[n["key"]], n["attempts"])


async def test_kill_9_of_a_daemon_mid_workflow(start_daemon, wf_env):
    env = {**wf_env, "DISTASKS_RETRY_MAX_RETRIES": "3"}
    with trio.fail_after(120):
        async with start_daemon(env) as survivor, start_daemon(
                {**env, "HTTP_PORT": str(int(env["HTTP_PORT"]) + 1)}) as victim, \
                httpx.AsyncClient(base_url=survivor.url) as client:
            wid = await submit(client, fan(200, ms=50))
            await wait_workflow(client, wid, until=lambda w: w["counts"].get("completed", 0) > 50)
            victim.kill9()
            await victim.wait_exit()
            body = await wait_workflow(client, wid)
            assert_no_stuck_nor_double_run(env, body)
            assert executions(env)["gather"] == 1


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
        server.stop()


async def test_redis_restarted_empty_mid_workflow(start_daemon, wf_env, private_redis):
    env = {**wf_env, "REDIS_URL": private_redis.url}
    with trio.fail_after(120):
        async with start_daemon(env) as d, httpx.AsyncClient(base_url=d.url) as client:
            # Three levels, so that the restart finds pending, queued and running nodes.
            tasks = [*fan(100, ms=50), *(step(f"z{i}", "gather", ms=20) for i in range(20))]
            wid = await submit(client, tasks)
            await wait_workflow(client, wid, until=lambda w: w["counts"].get("completed", 0) > 30)
            await trio.to_thread.run_sync(private_redis.restart_empty)
            body = await wait_workflow(client, wid)
            assert_no_stuck_nor_double_run(env, body)
            assert executions(env)["gather"] == 1


async def test_client_helpers_and_cli(start_daemon, wf_env):
    import json
    import os
    import sys

    from distasks.client import AsyncClient, TaskSpec, chain, fan_out_fan_in

    from .conftest import REPO

    with trio.fail_after(60):
        async with start_daemon(wf_env) as d, AsyncClient(d.url) as c:
            steps = chain(*(TaskSpec(name=f"s{i}", handler="wf_step", payload={"value": i})
                            for i in range(3)))
            created = await c.submit_workflow("chain", steps)
            wf = await c.wait_workflow(created.workflow_id, timeout=30)
            assert wf.state == "succeeded" and [n.key for n in wf.nodes] == [
                "step0", "step1", "step2"]
            assert wf.node("step2").depends_on == [{"key": "step1", "on_parent_failure": "cancel"}]
            assert await c.workflow_results(created.workflow_id) == {
                "step0": 0, "step1": 1, "step2": 2}

            tasks = fan_out_fan_in(TaskSpec(name="f", handler="wf_step"),
                                   [TaskSpec(name="p", handler="wf_step", payload={"value": i})
                                    for i in range(5)],
                                   TaskSpec(name="l", handler="wf_gather"))
            created = await c.submit_workflow("fan", tasks)
            await c.wait_workflow(created.workflow_id, timeout=30)
            results = await c.workflow_results(created.workflow_id)
            assert results["last"]["sum"] == 10
            page = await c.workflows(state="succeeded")
            assert len(page.workflows) == 2

            env = {k: v for k, v in os.environ.items() if not k.startswith("DISTASKS_")}
            env["DISTASKS_URL"] = d.url
            p = await trio.run_process(
                [sys.executable, "-m", "distasks", "workflow", "fan", "cli-fan", "--first",
                 "wf_step", "--part", "wf_step", "--last", "wf_gather", "--count", "3",
                 "--wait", "30", "--json"], env=env, cwd=REPO, capture_stdout=True)
            body = json.loads(p.stdout)
            assert body["state"] == "succeeded" and len(body["nodes"]) == 5
            p = await trio.run_process(
                [sys.executable, "-m", "distasks", "workflow", "get", body["id"]], env=env,
                cwd=REPO, capture_stdout=True)
            assert "succeeded" in p.stdout.decode() and "part2" in p.stdout.decode()


async def test_tenants_and_scopes_keep_workflows_apart(start_daemon, wf_env):
    from .test_tenants import bearer, tenant_key

    env = {**wf_env, "DISTASKS_AUTH_ANONYMOUS": "none",
           "QUEUE_NAMES": "default,acme/default"}
    acme = await trio.to_thread.run_sync(tenant_key, env, "acme", "workflows:write",
                                         "workflows:read", "audit:read")
    beta = await trio.to_thread.run_sync(tenant_key, env, "beta", "workflows:write",
                                         "workflows:read")
    reader = await trio.to_thread.run_sync(tenant_key, env, "acme", "workflows:read")
    with trio.fail_after(60):
        async with start_daemon(env) as d, httpx.AsyncClient(base_url=d.url) as client:
            body = {"name": "mine", "dedup_key": "same", "tasks": [step("a", value=1)]}
            r = await client.post("/api/v1/workflows", json=body, headers=bearer(acme))
            assert r.status_code == 201, r.text
            wid = r.json()["workflow_id"]
            # One dedup key, two tenants: two workflows.
            other = await client.post("/api/v1/workflows", json=body, headers=bearer(beta))
            assert other.status_code == 201 and other.json()["workflow_id"] != wid
            await wait_workflow(client, wid, headers=bearer(acme))
            # Another tenant's workflow is as absent as one that never was.
            for path in (f"/api/v1/workflows/{wid}", f"/api/v1/workflows/{wid}/results"):
                assert (await client.get(path, headers=bearer(beta))).status_code == 404
            r = await client.post(f"/api/v1/workflows/{wid}/cancel", headers=bearer(beta))
            assert r.status_code == 404
            listed = (await client.get("/api/v1/workflows", headers=bearer(beta))).json()
            assert [w["id"] for w in listed["workflows"]] == [other.json()["workflow_id"]]
            # Reading is not writing.
            r = await client.post("/api/v1/workflows", json=body, headers=bearer(reader))
            assert r.status_code == 403
            audit = (await client.get("/api/v1/audit", params={"action": "workflow_create"},
                                      headers=bearer(acme))).json()
            assert [e["detail"]["workflow_id"] for e in audit["entries"]] == [wid]
