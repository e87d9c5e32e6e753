"""Several daemons of one host behind one port (`http.reuse_port`, issue 17): the kernel
spreads new connections across them, each serves requests and runs tasks as a full
daemon, and a daemon without the option still stops at a port in use with one line."""

from __future__ import annotations

import sys

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from .conftest import REPO, free_port, wait_task

# Requests, each on a new connection, that must reach both daemons: the kernel picks a
# listener by a hash of the client's address and port, so all of them landing on one
# daemon has odds of 2**-199.
SCRAPES = 200
# Tasks created (on new connections, so both daemons take creates) that both must run.
TASKS = 40


def one_connection_per_request() -> httpx.AsyncClient:
    """A client that opens a new connection for every request (the kernel chooses a
    listener per connection, not per request)."""
    return httpx.AsyncClient(timeout=10.0, trust_env=False,
                             limits=httpx.Limits(max_keepalive_connections=0))


async def answering_daemon(client: httpx.AsyncClient, url: str) -> str:
    """The worker id of the daemon that answered a scrape of /metrics."""
    r = await client.get(f"{url}/metrics")
    assert r.status_code == 200, r.text
    (worker_id,) = [s.labels["worker_id"] for family in text_string_to_metric_families(r.text)
                    for s in family.samples if s.name == "distasks_daemon_info"]
    return worker_id


async def test_two_daemons_with_reuse_port_share_one_port_and_both_work(start_daemon,
                                                                      daemon_env):
    env = {**daemon_env, "DISTASKS_HTTP_REUSE_PORT": "true"}
    own_ports = [free_port(), free_port()]
    first_env, second_env = ({**env, "DISTASKS_HTTP_INSTANCE_PORT": str(p)} for p in own_ports)
    with trio.fail_after(90):
        async with start_daemon(first_env) as first, start_daemon(second_env) as second:
            assert first.url == second.url
            url = first.url
            async with one_connection_per_request() as client:
                # The harness's readiness check of the second daemon may have been
                # answered by the first: wait until both daemons have their row.
                while True:
                    workers = (await client.get(f"{url}/api/v1/workers")).json()["workers"]
                    ids = {w["id"] for w in workers if w["alive"]}
                    if len(ids) == 2:
                        break
                    await trio.sleep(0.05)
                assert {w["pid"] for w in workers} == {first.process.pid,  # type: ignore[union-attr]
                                                        second.process.pid}  # type: ignore[union-attr]

                answered = [await answering_daemon(client, url) for _ in range(SCRAPES)]
                assert set(answered) == ids
                # Each daemon's instance port reaches that daemon alone.
                own = [await answering_daemon(client, f"http://127.0.0.1:{p}")
                       for p in own_ports for _ in range(5)]
                assert len(set(own[:5])) == len(set(own[5:])) == 1
                assert set(own) == ids

                task_ids = []
                for n in range(TASKS):
                    r = await client.post(f"{url}/api/v1/tasks", json={
                        "name": f"spread-{n}", "type": "immediate", "queue_name": "default",
                        "priority": 2, "payload": {"n": n}, "max_retries": 0})
                    assert r.status_code == 201, r.text
                    task_ids.append(r.json()["task_id"])
                ran_on = set()
                for task_id in task_ids:
                    body = await wait_task(client, url, task_id)
                    assert body["task"]["status"] == "completed", body
                    ran_on.add(body["latest_run"]["worker_id"])
                assert ran_on == ids


async def test_a_daemon_without_reuse_port_still_finds_the_port_in_use(start_daemon,
                                                                       daemon_env):
    """The first daemon set SO_REUSEPORT; a second that did not is refused by the kernel:
    one line naming the address and the setting, exit 1."""
    with trio.fail_after(60):
        async with start_daemon({**daemon_env, "DISTASKS_HTTP_REUSE_PORT": "true"}) as first:
            done = await trio.run_process(
                [sys.executable, "-m", "distasks", "serve", "--config",
                 str(REPO / "config/distasks.toml")], env=daemon_env, cwd=REPO,
                capture_stdout=True, capture_stderr=True, check=False)
            assert first.is_running()
    port = daemon_env["HTTP_PORT"]
    assert done.stderr.decode() == (f"distasks: cannot listen on 127.0.0.1:{port}: address "
                                    "already in use (http.port / HTTP_PORT)\n")
    assert done.returncode == 1
