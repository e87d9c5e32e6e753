"""Payloads against `distasks serve` (issue 15): the size limit bounds what is stored and
returned, numbers come back as sent, and concurrent reads of a payload of the size limit
leave the daemon serving."""

from __future__ import annotations

import json

import httpx
import trio

# Reads at once of one large task, as in the issue.
READERS = 10


async def test_numbers_that_would_expand_are_returned_as_sent_at_their_sent_size(
        start_daemon, daemon_env):
    """51 KB of 1e308 under a 64 KB limit: was stored and returned as 2.6 MB of digits."""
    limit = 64 * 1024
    payload = {"a": [1e308] * 7300, "two": 2.0, "half": 1.5, "e16": 1e16,
               "big": 12345678901234567890123456789}
    body = json.dumps({"name": "numbers", "payload": payload, "queue_name": "parked"})
    assert len(body) < limit
    env = {**daemon_env, "DISTASKS_HTTP_MAX_PAYLOAD_BYTES": str(limit)}
    with trio.fail_after(60):
        async with (start_daemon(env) as d,
                    httpx.AsyncClient(base_url=d.url, trust_env=False, timeout=30) as client):
            r = await client.post("/api/v1/tasks", content=body,
                                  headers={"content-type": "application/json"})
            assert r.status_code == 201, r.text
            task_id = r.json()["task_id"]
            got = await client.get(f"/api/v1/tasks/{task_id}")
            listed = await client.get("/api/v1/tasks", params={"include_payload": "true"})
    assert got.status_code == 200 and listed.status_code == 200
    assert len(got.content) < limit + 4096, len(got.content)
    for returned in (got.json()["task"]["payload"], listed.json()["tasks"][0]["payload"]):
        assert returned == payload
        assert [type(returned[k]) for k in ("two", "half", "e16", "big")] == [
            float, float, float, int]
        assert type(returned["a"][0]) is float


async def test_concurrent_reads_of_a_payload_of_the_limit_leave_the_daemon_serving(
        start_daemon, daemon_env):
    """Ten GETs at once of one task with a 1 MB payload of 1e308 (44 MB each before the
    fix, the event loop held for seconds): every read gets the payload as sent, /healthz
    answers all along, the daemon (serving two queues) lives on. The timings are printed
    for the record, not asserted: this box is shared."""
    payload = {"a": [1e308] * 142_000}
    env = {**daemon_env, "QUEUE_NAMES": "default,other"}
    health: list[tuple[int, float]] = []
    reads: list[tuple[int, float]] = []
    with trio.fail_after(180):
        async with (start_daemon(env) as d,
                    httpx.AsyncClient(base_url=d.url, trust_env=False, timeout=120) as client):
            r = await client.post("/api/v1/tasks", json={
                "name": "big", "payload": payload, "queue_name": "parked"})
            assert r.status_code == 201, r.text
            task_id = r.json()["task_id"]
            reads_done = trio.Event()

            async def read() -> None:
                async with httpx.AsyncClient(base_url=d.url, trust_env=False,
                                             timeout=120) as own:
                    started = trio.current_time()
                    r = await own.get(f"/api/v1/tasks/{task_id}")
                    reads.append((r.status_code, trio.current_time() - started))
                    assert r.json()["task"]["payload"] == payload

            async def watch_health() -> None:
                async with httpx.AsyncClient(base_url=d.url, trust_env=False,
                                             timeout=120) as own:
                    while not reads_done.is_set() or not health:
                        started = trio.current_time()
                        r = await own.get("/healthz")
                        health.append((r.status_code, trio.current_time() - started))
                        await trio.sleep(0.05)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_health)
                async with trio.open_nursery() as readers:
                    for _ in range(READERS):
                        readers.start_soon(read)
                reads_done.set()
            assert d.is_running(), d.tail()
            assert (await client.get("/readyz")).status_code == 200
    assert [code for code, _ in reads] == [200] * READERS
    assert health and {code for code, _ in health} == {200}
    print(f"\n{READERS} reads of {len(json.dumps(payload))} B: slowest "
          f"{max(s for _, s in reads) * 1000:.0f} ms; /healthz x{len(health)}: slowest "
          f"{max(s for _, s in health) * 1000:.0f} ms")
