"""Lists with payloads against `distasks serve` (api/pages.py): pages stay within
http.max_response_bytes and lose nothing, an item over the budget goes alone, and many
concurrent heavy lists all complete while /healthz answers."""

from __future__ import annotations

import httpx
import trio

BUDGET = 256 * 1024
# Payloads of about a quarter of the budget, and one larger than the whole budget.
PAYLOAD_BYTES = 60_000
OVERSIZED_BYTES = 300_000


def budget_env(daemon_env: dict[str, str], **more: str) -> dict[str, str]:
    return {**daemon_env, "DISTASKS_HTTP_MAX_RESPONSE_BYTES": str(BUDGET), **more}


async def create(client: httpx.AsyncClient, sizes: list[int], **fields) -> dict[str, str]:
    """Tasks with payloads of these sizes; their blobs by id."""
    blobs = {}
    for i, size in enumerate(sizes):
        blob = f"{i:06d}" + "x" * size
        r = await client.post("/api/v1/tasks", json={"name": f"big-{i}",
                                                     "payload": {"blob": blob}, **fields})
        assert r.status_code == 201, r.text
        blobs[r.json()["task_id"]] = blob
    return blobs


async def read_pages(client: httpx.AsyncClient, path: str) -> list[httpx.Response]:
    """Every page of a list with include_payload=true, following next_cursor."""
    pages, params = [], {"include_payload": "true", "limit": 500}
    while True:
        r = await client.get(path, params=params)
        assert r.status_code == 200, r.text
        pages.append(r)
        if r.json()["next_cursor"] is None:
            return pages
        params["cursor"] = r.json()["next_cursor"]


def check_pages(pages: list[httpx.Response], blobs: dict[str, str]) -> None:
    """Each page within the budget (or a single item), every task once with its payload."""
    seen: dict[str, str] = {}
    for page in pages:
        tasks = page.json()["tasks"]
        assert len(page.content) <= BUDGET or len(tasks) == 1, (len(page.content), len(tasks))
        for t in tasks:
            assert t["id"] not in seen
            seen[t["id"]] = t["payload"]["blob"]
    assert seen == blobs
    assert len(pages) > 2


async def test_a_task_list_with_payloads_comes_in_pages_within_the_budget(start_daemon,
                                                                         daemon_env):
    sizes = [PAYLOAD_BYTES] * 12 + [OVERSIZED_BYTES] + [PAYLOAD_BYTES] * 3
    with trio.fail_after(60):
        async with (start_daemon(budget_env(daemon_env)) as d,
                    httpx.AsyncClient(base_url=d.url, trust_env=False, timeout=30) as client):
            blobs = await create(client, sizes)
            pages = await read_pages(client, "/api/v1/tasks")
    check_pages(pages, blobs)
    assert any(len(p.json()["tasks"]) == 1 and len(p.content) > BUDGET for p in pages)


async def test_a_dlq_list_with_payloads_comes_in_pages_within_the_budget(start_daemon,
                                                                        daemon_env):
    """The demo handler fails an odd priority's first attempt; no retries: the DLQ."""
    sizes = [PAYLOAD_BYTES] * 10 + [OVERSIZED_BYTES]
    with trio.fail_after(60):
        async with (start_daemon(budget_env(daemon_env)) as d,
                    httpx.AsyncClient(base_url=d.url, trust_env=False, timeout=30) as client):
            blobs = await create(client, sizes, priority=1, max_retries=0)
            while True:
                r = await client.get("/api/v1/queues/default/dlq", params={"limit": 500})
                if len(r.json()["tasks"]) == len(blobs):
                    break
                await trio.sleep(0.05)
            pages = await read_pages(client, "/api/v1/queues/default/dlq")
    check_pages(pages, blobs)
    assert all(p.json()["count"] == len(p.json()["tasks"]) for p in pages)


async def test_concurrent_heavy_lists_all_complete_while_healthz_answers(start_daemon,
                                                                        daemon_env):
    """Eight lists of 1 MB payloads at once, one heavy read at a time: each gets every
    task, and /healthz answers while they wait and run."""
    env = budget_env(daemon_env, DISTASKS_HTTP_HEAVY_READS="1",
                     DISTASKS_HTTP_MAX_RESPONSE_BYTES=str(2 * 1024 * 1024))
    with trio.fail_after(120):
        async with (start_daemon(env) as d,
                    httpx.AsyncClient(base_url=d.url, trust_env=False, timeout=60) as client):
            blobs = await create(client, [1_000_000] * 6)
            results: list[set[str]] = []
            health: list[int] = []
            lists_done = trio.Event()

            async def read_all() -> None:
                async with httpx.AsyncClient(base_url=d.url, trust_env=False,
                                             timeout=60) as own:
                    pages = await read_pages(own, "/api/v1/tasks")
                results.append({t["id"] for p in pages for t in p.json()["tasks"]})

            async def watch_health() -> None:
                async with httpx.AsyncClient(base_url=d.url, trust_env=False,
                                             timeout=30) as own:
                    while not lists_done.is_set() or not health:
                        health.append((await own.get("/healthz")).status_code)
                        await trio.sleep(0.05)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_health)
                async with trio.open_nursery() as lists:
                    for _ in range(8):
                        lists.start_soon(read_all)
                lists_done.set()
    assert results == [set(blobs)] * 8
    assert health and set(health) == {200}
