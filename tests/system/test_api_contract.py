"""HTTP contract against `distasks serve`: idempotent create under concurrency, and a
table of bad inputs that must each get a clean 4xx and write nothing."""

from __future__ import annotations

import json

import httpx
import psycopg
import trio


async def test_fifty_concurrent_creates_with_one_dedup_key_give_one_task(start_daemon, daemon_env):
    responses = []
    with trio.fail_after(30):
        async with start_daemon(daemon_env) as d, httpx.AsyncClient(base_url=d.url) as client:
            async def create(i):
                # The same request fifty times (another body under the key is a 409).
                responses.append(await client.post("/api/v1/tasks", json={
                    "name": "dup", "dedup_key": "order-42", "priority": 2}))

            async with trio.open_nursery() as nursery:
                for i in range(50):
                    nursery.start_soon(create, i)
    assert sorted(r.status_code for r in responses) == [200] * 49 + [201]
    assert len({r.json()["task_id"] for r in responses}) == 1
    with psycopg.connect(daemon_env["DATABASE_URL"]) as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 1


async def test_a_dedup_key_reused_with_a_different_request_is_a_conflict(start_daemon,
                                                                         daemon_env):
    """The same request again is the same task (200); another request under that key is
    a 409 naming the task, in a batch a `conflict` item, and nothing is written."""
    body = {"name": "charge", "dedup_key": "order-7", "priority": 2, "payload": {"eur": 5}}
    with trio.fail_after(30):
        async with start_daemon(daemon_env) as d, httpx.AsyncClient(base_url=d.url) as client:
            first = await client.post("/api/v1/tasks", json=body)
            again = await client.post("/api/v1/tasks", json=body)
            other = await client.post("/api/v1/tasks", json={**body, "payload": {"eur": 50}})
            batch = await client.post("/api/v1/tasks/batch", json={"tasks": [
                body, {**body, "priority": 4}]})
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["task_id"] == first.json()["task_id"]
    assert (other.status_code, other.json()["error"]["code"]) == (409, "dedup_conflict")
    assert first.json()["task_id"] in other.json()["error"]["message"]
    assert [(t["created"], t["conflict"]) for t in batch.json()["tasks"]] == [
        (False, False), (False, True)]
    with psycopg.connect(daemon_env["DATABASE_URL"]) as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 1


BIG = "x" * (1024 * 1024)

BAD_INPUTS = [
    # (raw body or JSON-able, status, code, field)
    (b"{not json", 400, "malformed_json", None),
    (b"", 400, "invalid_body", None),
    ([1, 2], 400, "invalid_body", None),
    ({}, 422, "missing_field", "name"),
    ({"name": 5}, 422, "invalid_input", "name"),
    ({"name": "x", "priority": "1"}, 422, "invalid_input", "priority"),
    ({"name": "x", "priority": 1.5}, 422, "invalid_input", "priority"),
    ({"name": "x", "max_retries": -1}, 422, "invalid_input", "max_retries"),
    ({"name": "x", "max_retries": "3"}, 422, "invalid_input", "max_retries"),
    ({"name": "x", "queue_name": ""}, 422, "invalid_input", "queue_name"),
    ({"name": "x", "queue_name": "has space"}, 422, "invalid_input", "queue_name"),
    ({"name": "x", "queue_name": "q" * 65}, 422, "invalid_input", "queue_name"),
    ({"name": "x", "queue_name": "a/b"}, 422, "invalid_input", "queue_name"),
    ({"name": "x", "handler": "nope"}, 422, "unknown_handler", "handler"),
    ({"name": "x", "type": "sometimes"}, 422, "invalid_input", "type"),
    ({"name": "x", "type": "delayed"}, 422, "invalid_input", "run_at"),
    ({"name": "x", "type": "delayed", "run_at": "2030-01-01T00:00:00"}, 422, "invalid_input",
     "run_at"),
    ({"name": "x", "delay_seconds": 5}, 422, "invalid_input", "delay_seconds"),
    ({"name": "x", "unknown": 1}, 422, "unknown_field", "unknown"),
    ({"name": "x", "payload": {"blob": BIG}}, 413, "payload_too_large", "payload"),
    (b'{"name": "x", "payload": ' + b'"' + b"y" * (3 * 1024 * 1024) + b'"}', 413,
     "payload_too_large", "payload"),
    (b'{"name": "x", "payload": ' + b'"' + b"y" * (17 * 1024 * 1024) + b'"}', 413,
     "request_entity_too_large", "body"),
]


async def test_bad_input_gets_a_clean_4xx_and_writes_nothing(start_daemon, daemon_env):
    """One daemon, the whole table; every mismatch is listed, not only the first."""
    mismatches = []
    with trio.fail_after(30):
        async with start_daemon(daemon_env) as d, httpx.AsyncClient(base_url=d.url) as client:
            for body, status, code, field in BAD_INPUTS:
                raw = body if isinstance(body, bytes) else json.dumps(body).encode()
                r = await client.post("/api/v1/tasks", content=raw,
                                      headers={"content-type": "application/json"})
                got = (r.status_code, *_error_code_field(r))
                if got != (status, code, field, True):
                    mismatches.append((raw[:60], got, (status, code, field)))
    assert mismatches == []
    with psycopg.connect(daemon_env["DATABASE_URL"]) as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM task_runs").fetchone()[0] == 0


def _error_code_field(r: httpx.Response) -> tuple[str | None, str | None, bool]:
    try:
        error = r.json()["error"]
    except (ValueError, KeyError, TypeError):
        return None, None, False
    return error.get("code"), error.get("field"), bool(error.get("message"))


async def test_other_routes_refuse_bad_input_cleanly(start_daemon, daemon_env):
    with trio.fail_after(30):
        async with start_daemon(daemon_env) as d, httpx.AsyncClient(base_url=d.url) as client:
            cases = [
                (await client.get("/api/v1/tasks/not-a-uuid"), 422, "task_id"),
                (await client.post("/api/v1/queues/a%2Fb/pause"), 422, "queue"),
                (await client.get("/api/v1/tasks/00000000-0000-0000-0000-000000000000"), 404,
                 None),
                (await client.get("/api/v1/queues/default/dlq?count=-1"), 422, "count"),
                (await client.get("/api/v1/queues/default/dlq?count=abc"), 422, "count"),
                (await client.get("/api/v1/queues/bad%20name/dlq"), 422, "queue"),
                (await client.post("/api/v1/queues/default/dlq/replay", json={"count": -1}), 422,
                 "count"),
                (await client.post("/api/v1/queues/default/dlq/replay",
                                   json={"override_priority": "high"}), 422, "override_priority"),
                (await client.post("/api/v1/queues/default/dlq/replay", content=b"{",
                                   headers={"content-type": "application/json"}), 400, None),
                (await client.post("/api/v1/queues/default/dlq/replay", content=b"{}"), 415,
                 None),
                (await client.patch("/api/v1/queues/default", json={"max_running": 0}), 422,
                 "max_running"),
                (await client.patch("/api/v1/queues/default", json={"max_running": "3"}), 422,
                 "max_running"),
                (await client.patch("/api/v1/queues/default", json={}), 422, "max_running"),
                (await client.patch("/api/v1/queues/default", json={"max_running": 2,
                                                                     "rate": 1}), 422, "rate"),
                (await client.patch("/api/v1/queues/default",
                                    json={"max_running_per_key": 0}), 422,
                 "max_running_per_key"),
                (await client.patch("/api/v1/queues/default",
                                    json={"max_starts_per_second": 0}), 422,
                 "max_starts_per_second"),
                (await client.patch("/api/v1/queues/default", json={"burst": 0}), 422, "burst"),
                (await client.post("/api/v1/tasks", json={"name": "x",
                                                          "concurrency_key": "k" * 129}),
                 422, "concurrency_key"),
                (await client.get("/no/such/route"), 404, None),
                (await client.delete("/api/v1/tasks"), 405, None),
            ]
    for response, status, field in cases:
        assert response.status_code == status, (response.request.url, response.text)
        assert response.json()["error"]["field"] == field, response.text
        assert response.headers["X-Request-Id"], response.request.url
    [no_route] = [r for r, _, _ in cases if r.request.url.path == "/no/such/route"]
    assert no_route.json()["error"]["message"] == "no route for GET /no/such/route"


# Requests Hypercorn refuses before any route sees them.
MALFORMED_REQUESTS = [
    (b"GARBAGE\r\n\r\n", 400, "malformed_request"),
    (b"POST /api/v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
     b"Content-Length: 3\r\n\r\n{}", 400, "malformed_request"),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431,
     "headers_too_large"),
]


async def test_requests_the_http_server_refuses_get_the_one_error_shape(start_daemon,
                                                                         daemon_env):
    """A malformed request line, a duplicate Content-Length and oversized headers are
    answered by Hypercorn itself (api/protocol_errors.py): same body, with a request id."""
    answers = []
    with trio.fail_after(30):
        async with start_daemon(daemon_env) as d:
            port = int(d.url.rsplit(":", 1)[1])
            for raw, _, _ in MALFORMED_REQUESTS:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                async with stream:
                    await stream.send_all(raw)
                    answer = b""
                    while chunk := await stream.receive_some():
                        answer += chunk
                answers.append(answer)
    for (_, status, code), answer in zip(MALFORMED_REQUESTS, answers, strict=True):
        head, _, body = answer.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        assert lines[0].startswith(f"HTTP/1.1 {status}"), answer[:300]
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        assert headers["content-type"] == "application/json"
        assert headers["x-request-id"]
        assert json.loads(body)["error"]["code"] == code
