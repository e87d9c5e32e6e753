"""distasks.client without a daemon: how answers map to exceptions and results, and
what the requests look like, through httpx.MockTransport (no sockets)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest

from distasks.client import (
    AsyncClient,
    Client,
    DistasksError,
    InvalidRequest,
    NotFound,
    ServerError,
    TaskSpec,
    Unavailable,
    WaitTimeout,
)
from distasks.domain import errors

TASK_ID = "6f0c5e1a-1b2c-4d3e-8f90-123456789abc"


def task_json(status: str = "queued", **extra: object) -> dict[str, object]:
    return {
        "id": TASK_ID, "name": "n", "handler": "demo", "type": "immediate",
        "queue_name": "default", "priority": 0, "payload": {}, "dedup_key": None,
        "max_retries": 3, "timeout_seconds": None, "status": status, "failures": 0,
        "run_at": None, "created_at": "2030-01-01T00:00:00Z",
        "updated_at": "2030-01-01T00:00:01.5Z", "finished_at": None, "cancelled_at": None,
        "cancelled_by": None, "cancel_reason": None, **extra,
    }


def detail_json(status: str = "queued") -> dict[str, object]:
    return {"task": task_json(status), "latest_run": None, "runs": []}


def error_body(code: str, message: str, field: str | None = None) -> dict[str, object]:
    return {"error": {"code": code, "message": message, "field": field}}


# (status, body, headers) -> (exception class, code, field, retry_after_s)
ERRORS = [
    (422, error_body("invalid_input", "priority: too big", "priority"), {},
     InvalidRequest, "invalid_input", "priority", None),
    (422, error_body("unknown_handler", "no handler named 'x'", "handler"), {},
     InvalidRequest, "unknown_handler", "handler", None),
    (400, error_body("malformed_json", "malformed JSON"), {},
     InvalidRequest, "malformed_json", None, None),
    (413, error_body("payload_too_large", "too big", "payload"), {},
     InvalidRequest, "payload_too_large", "payload", None),
    (404, error_body("not_found", "no task with id x"), {}, NotFound, "not_found", None, None),
    (503, error_body("postgres_unavailable", "postgres is unavailable"), {"Retry-After": "2"},
     Unavailable, "postgres_unavailable", None, 2.0),
    (503, "<html>Service Unavailable</html>", {}, Unavailable, "http_503", None, None),
    (500, error_body("internal", "internal error"), {}, ServerError, "internal", None, None),
    (502, "Bad Gateway", {}, ServerError, "http_502", None, None),
    (405, error_body("method_not_allowed", "not here"), {}, DistasksError,
     "method_not_allowed", None, None),
]


def respond(status: int, body: object, headers: dict[str, str]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(status, text=body, headers=headers)
        return httpx.Response(status, json=body, headers=headers)
    return httpx.MockTransport(handler)


@pytest.mark.parametrize(("status", "body", "headers", "cls", "code", "field", "retry_after"),
                         ERRORS)
def test_error_answers_map_to_exceptions(status, body, headers, cls, code, field, retry_after):
    with Client("http://api", transport=respond(status, body, headers)) as c:
        with pytest.raises(DistasksError) as caught:
            c.get(TASK_ID)
    e = caught.value
    assert type(e) is cls
    assert (e.status, e.code, e.field) == (status, code, field)
    assert e.message
    assert getattr(e, "retry_after_s", None) == retry_after
    assert isinstance(e, errors.DistasksError)  # one base for everything distasks raises


async def test_async_client_maps_errors_the_same_way():
    for status, body, headers, cls, code, field, _ in ERRORS:
        async with AsyncClient("http://api", transport=respond(status, body, headers)) as c:
            with pytest.raises(cls) as caught:
                await c.create("x")
        assert (type(caught.value), caught.value.code, caught.value.field) == (cls, code, field)


def test_error_text_is_one_line_with_status_code_and_field():
    e = InvalidRequest("priority: too big", status=422, code="invalid_input", field="priority")
    assert str(e) == "422 invalid_input (priority): priority: too big"
    e = Unavailable("postgres is unavailable", status=503, code="postgres_unavailable",
                    retry_after_s=2)
    assert str(e) == "503 postgres_unavailable: postgres is unavailable (retry after 2 s)"


def test_connection_failure_is_unavailable_naming_the_url():
    def refuse(request: httpx.Request) -> httpx.Response:
        # As anyio reports it: the refusal is inside a group, behind a generic message.
        group = ExceptionGroup("all attempts failed", [ConnectionRefusedError(111, "refused")])
        raise httpx.ConnectError("all attempts to connect failed", request=request) from group

    def unknown_host(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno -2] Name or service not known", request=request)

    with Client("http://api:1/", transport=httpx.MockTransport(refuse)) as c:
        with pytest.raises(Unavailable) as caught:
            c.queues()
    assert caught.value.status is None and caught.value.code == "unreachable"
    assert str(caught.value) == "cannot reach the distasks API at http://api:1: connection refused"
    with Client("http://nowhere", transport=httpx.MockTransport(unknown_host)) as c:
        with pytest.raises(Unavailable, match="at http://nowhere: .*Name or service not known"):
            c.queues()


async def test_async_connection_failure_is_unavailable():
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    async with AsyncClient("http://api", transport=httpx.MockTransport(timeout)) as c:
        with pytest.raises(Unavailable, match="http://api: timed out"):
            await c.workers()


def test_wait_timeout_is_a_timeout_error_with_the_last_state():
    with Client("http://api", transport=respond(200, detail_json("queued"), {})) as c:
        with pytest.raises(TimeoutError) as caught:
            c.wait(TASK_ID, timeout=0)
    e = caught.value
    assert isinstance(e, WaitTimeout) and isinstance(e, DistasksError)
    assert e.last is not None and e.last.task.status == "queued"
    assert TASK_ID in str(e)


def test_wait_long_polls_at_most_60_s_per_request_until_final():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=detail_json("completed" if len(seen) == 3 else "queued"))

    with Client("http://api", transport=httpx.MockTransport(handler)) as c:
        detail = c.wait(TASK_ID, timeout=600)
    assert detail.task.status == "completed" and detail.task.is_final
    assert [r.url.path for r in seen] == [f"/api/v1/tasks/{TASK_ID}"] * 3
    assert all(float(r.url.params["wait"]) == 60 for r in seen)
    # The read timeout outlasts the long poll.
    assert all(r.extensions["timeout"]["read"] > 60 for r in seen)


def test_ready_returns_the_503_readiness_body_instead_of_raising():
    body = {"ready": False, "postgres": "down: refused", "redis": "ok"}
    with Client("http://api", transport=respond(503, body, {"Retry-After": "2"})) as c:
        readiness = c.ready()
    assert readiness.ready is False
    assert readiness.checks == {"postgres": "down: refused", "redis": "ok"}


def test_unknown_fields_are_kept_in_raw_and_missing_ones_are_an_unexpected_response():
    body = {"task": task_json(new_field=1), "latest_run": None, "runs": [], "extra": True}
    with Client("http://api", transport=respond(200, body, {})) as c:
        detail = c.get(TASK_ID)
    assert detail.task.raw["new_field"] == 1 and detail.raw["extra"] is True
    assert detail.task.updated_at == datetime(2030, 1, 1, 0, 0, 1, 500000, tzinfo=UTC)

    broken = {"task": {"id": TASK_ID}, "latest_run": None, "runs": []}
    with Client("http://api", transport=respond(200, broken, {})) as c:
        with pytest.raises(ServerError) as caught:
            c.get(TASK_ID)
    assert caught.value.code == "unexpected_response"


def test_requests_carry_base_url_api_key_and_api_field_names(monkeypatch):
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/batch"):
            return httpx.Response(200, json={"tasks": [
                {"task_id": TASK_ID, "status": "queued", "created": True}] * 2})
        if request.url.path.endswith("/replay"):
            return httpx.Response(200, json={"queue": "q", "replayed": 0, "task_ids": [],
                                             "dry_run": True})
        return httpx.Response(201, json={"task_id": TASK_ID, "status": "queued"})

    monkeypatch.setenv("DISTASKS_URL", "http://from-env:9000/")
    with Client(api_key="dtk_k", transport=httpx.MockTransport(handler)) as c:
        assert c.url == "http://from-env:9000"
        created = c.create("later", queue="q", delay_seconds=5, payload={"a": 1})
        results = c.create_many([{"name": "a", "queue": "q"},
                                 TaskSpec(name="b", run_at=datetime(2030, 1, 1, tzinfo=UTC))])
        c.replay("q", task_ids=[TASK_ID] * 12, dry_run=True)
    assert created.created is True and [r.created for r in results] == [True, True]
    assert all(r.headers["Authorization"] == "Bearer dtk_k" for r in seen)
    assert str(seen[0].url) == "http://from-env:9000/api/v1/tasks"
    assert json.loads(seen[0].content) == {
        "name": "later", "payload": {"a": 1}, "queue_name": "q", "type": "delayed",
        "delay_seconds": 5}
    assert json.loads(seen[1].content) == {"tasks": [
        {"name": "a", "queue_name": "q"},
        {"name": "b", "type": "delayed", "run_at": "2030-01-01T00:00:00+00:00"}]}
    # task_ids without a count: all of them, not the API's default of 10.
    assert json.loads(seen[2].content) == {"count": 12, "task_ids": [TASK_ID] * 12,
                                           "dry_run": True}


def test_path_segments_are_quoted():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"name": "a/b", "paused": True})

    with Client("http://api", transport=httpx.MockTransport(handler)) as c:
        c.pause("a/b")
    assert seen[0].url.raw_path == b"/api/v1/queues/a%2Fb/pause"


@pytest.mark.parametrize(("status", "cls"), [(401, "AccessDenied"), (403, "AccessDenied"),
                                             (409, "Conflict"), (429, "RateLimited")])
def test_access_conflict_and_rate_limit_answers_have_their_own_errors(status, cls):
    import distasks.client as client_module

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers={"Retry-After": "3"},
                              json={"error": {"code": "x", "message": "m", "field": None}})

    with Client("http://d", transport=httpx.MockTransport(handler)) as c, \
            pytest.raises(getattr(client_module, cls)) as e:
        c.create("x")
    assert e.value.status == status
    if status == 429:
        assert e.value.retry_after_s == 3
