"""Secret payload fields against `distasks serve`: the handler gets the real value; the
API (task, lists, DLQ) and the CLI show "[secret]"; dedup compares the real values; the
value is in no log line, audit row or error message."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import httpx
import psycopg
import trio

from distasks.testing.daemon import free_port
from distasks.testing.http_stub import read_request

from .conftest import REPO, wait_task

SECRET_VALUE = "hunter2-s3cret-Qx7"
HANDLER_MODULE = '''
import hashlib

import distasks


@distasks.handler
async def digest_secret(ctx):
    """Proves it got the real value without showing it."""
    return {"sha256": hashlib.sha256(ctx.payload["api_key"].encode()).hexdigest()}


@distasks.handler
async def echo_secret(ctx):
    """A careless handler: its error (or result) quotes the secret value."""
    if ctx.payload.get("fail"):
        raise ValueError(f"the server refused key {ctx.payload['api_key']!r}")
    return {"used": ctx.payload["api_key"], "nested": [{"again": ctx.payload["api_key"]}]}
'''
# A webhook token in the URL's path (as Slack's are), and one in its query.
PATH_TOKEN = "SECRETPATHTOKEN-9f3a"
QUERY_TOKEN = "SECRETQUERY-77b1"


async def cli(env: dict[str, str], *argv: str) -> str:
    done = await trio.run_process([sys.executable, "-m", "distasks", *argv], env=env, cwd=REPO,
                                  check=False, capture_stdout=True, capture_stderr=True)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


async def test_secret_fields_reach_the_handler_and_are_shown_redacted_everywhere(
        start_daemon, daemon_env, tmp_path: Path):
    (tmp_path / "secret_handlers.py").write_text(HANDLER_MODULE)
    env = {**daemon_env, "PYTHONPATH": str(tmp_path),
           "DISTASKS_WORKER_HANDLERS": "secret_handlers"}
    payload = {"to": "a@example.com", "api_key": SECRET_VALUE}
    with trio.fail_after(60):
        async with start_daemon(env) as d, httpx.AsyncClient(base_url=d.url) as client:
            body = {"name": "mail", "handler": "digest_secret", "payload": payload,
                    "secret_fields": ["api_key"], "dedup_key": "mail-1"}
            r = await client.post("/api/v1/tasks", json=body)
            assert r.status_code == 201, r.text
            task_id = r.json()["task_id"]
            done = await wait_task(client, d.url, task_id)
            assert done["task"]["status"] == "completed", done
            assert done["latest_run"]["result"] == {
                "sha256": hashlib.sha256(SECRET_VALUE.encode()).hexdigest()}
            assert done["task"]["payload"] == {"to": "a@example.com", "api_key": "[secret]"}
            assert done["task"]["secret_fields"] == ["api_key"]

            listed = (await client.get("/api/v1/tasks", params={"include_payload": "true"})
                      ).json()["tasks"]
            assert [t["payload"]["api_key"] for t in listed] == ["[secret]"]

            # Dedup compares real values: the same request is the same task, another
            # secret value or other marks are a different request.
            assert (await client.post("/api/v1/tasks", json=body)).status_code == 200
            other_value = {**body, "payload": {**payload, "api_key": "another"}}
            conflict = await client.post("/api/v1/tasks", json=other_value)
            assert conflict.status_code == 409, conflict.text
            unmarked = await client.post("/api/v1/tasks", json={**body, "secret_fields": []})
            assert unmarked.status_code == 409, unmarked.text

            # Dead-lettered (the demo handler fails an odd priority) and made in a batch.
            batch = await client.post("/api/v1/tasks/batch", json={"tasks": [
                {"name": "doomed", "priority": 1, "max_retries": 0,
                 "payload": {"password": SECRET_VALUE}, "secret_fields": ["password"]}]})
            assert batch.status_code == 200, batch.text
            assert SECRET_VALUE not in batch.text
            doomed = batch.json()["tasks"][0]["task_id"]
            await wait_task(client, d.url, doomed)
            dlq = (await client.get("/api/v1/queues/default/dlq",
                                    params={"include_payload": "true"})).json()["tasks"]
            assert [t["payload"] for t in dlq] == [{"password": "[secret]"}]

            # A secret field needs an object payload to be a key of.
            bad = await client.post("/api/v1/tasks", json={
                "name": "x", "payload": [SECRET_VALUE], "secret_fields": ["0"]})
            assert (bad.status_code, bad.json()["error"]["field"]) == (422, "payload")
            assert SECRET_VALUE not in bad.text

            cli_env = {"PATH": env.get("PATH", ""), "DISTASKS_URL": d.url}
            made = await cli(cli_env, "task", "create", "viacli", "--payload",
                             json.dumps({"token": SECRET_VALUE, "skip_fail": True}),
                             "--secret", "token", "--json")
            shown = await cli(cli_env, "task", "get", json.loads(made)["task_id"])
            assert "[secret]" in shown and SECRET_VALUE not in shown
            shown = await cli(cli_env, "task", "get", task_id)
            assert "[secret]" in shown and SECRET_VALUE not in shown
            everything = [await client.get(f"/api/v1/tasks/{t}") for t in (task_id, doomed)]
            assert all(SECRET_VALUE not in r.text for r in everything)

    assert SECRET_VALUE not in d.log()
    with psycopg.connect(env["DATABASE_URL"]) as conn:
        audit = conn.execute("SELECT coalesce(string_agg(detail::text, ' '), '') FROM audit_log"
                             ).fetchone()[0]
        stored = conn.execute("SELECT payload->>'api_key' FROM tasks WHERE id = %s",
                              (task_id,)).fetchone()[0]
    assert SECRET_VALUE not in audit
    assert stored == SECRET_VALUE  # kept whole for the handler (and its retries)


async def echo_path(stream) -> None:
    """A webhook endpoint that quotes the path it was called on: a 302 (with Location)
    for /fail/…, a 500 for /boom/…, else 200; each body repeats the request line."""
    request = await read_request(stream)
    if request is None:
        return
    line = request[0].split(b"\r\n")[0]
    path = line.split(b" ")[1]
    status = (b"302 Found" if path.startswith(b"/fail/") else
              b"500 Oops" if path.startswith(b"/boom/") else b"200 OK")
    body = b"you called " + line
    await stream.send_all(b"HTTP/1.1 " + status + b"\r\nLocation: " + path
                          + b"\r\nContent-Type: text/plain\r\nContent-Length: "
                          + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
                          + body)
    await stream.aclose()


async def test_secret_values_reach_no_error_result_log_or_audit_row(
        start_daemon, daemon_env, tmp_path: Path):
    """A secret URL's path (a webhook token) and a careless handler's echo of a secret:
    the runs' errors and results, the DLQ's last_error, the audit rows and the daemon's
    log (at DEBUG, tracebacks included) show "[secret]" or the host, never the value."""
    (tmp_path / "secret_handlers.py").write_text(HANDLER_MODULE)
    port = free_port()
    env = {**daemon_env, "PYTHONPATH": str(tmp_path),
           "DISTASKS_WORKER_HANDLERS": "secret_handlers", "DISTASKS_LOG_LEVEL": "DEBUG",
           "DISTASKS_HTTP_HANDLER_ALLOWED_HOSTS": f"127.0.0.1:{port}"}
    base = f"http://127.0.0.1:{port}"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_tcp, echo_path, port)
            async with start_daemon(env) as d, httpx.AsyncClient(base_url=d.url) as client:
                async def run(handler: str, payload: dict, fields: list[str]) -> dict:
                    r = await client.post("/api/v1/tasks", json={
                        "name": "leaky", "handler": handler, "payload": payload,
                        "secret_fields": fields, "max_retries": 0})
                    assert r.status_code == 201, r.text
                    return await wait_task(client, d.url, r.json()["task_id"])

                shown = [await run("http", {"url": f"{base}/{kind}/T000/B000/{PATH_TOKEN}"
                                            f"?token={QUERY_TOKEN}", "method": "GET"}, ["url"])
                         for kind in ("fail", "boom", "ok")]
                shown.append(await run("echo_secret", {"api_key": SECRET_VALUE, "fail": True},
                                       ["api_key"]))
                shown.append(await run("echo_secret", {"api_key": SECRET_VALUE}, ["api_key"]))
                assert [t["task"]["status"] for t in shown] == [
                    "failed", "failed", "completed", "failed", "completed"], shown
                redirect, boom, ok, refused, echoed = shown
                assert f"HttpTaskFailed: HTTP 302 from {base}:" in redirect["latest_run"]["error"]
                assert f"HttpTaskFailed: HTTP 500 from {base}:" in boom["latest_run"]["error"]
                assert ok["latest_run"]["result"]["status"] == 200
                assert "[secret]" in ok["latest_run"]["result"]["body"]
                assert "'[secret]'" in refused["latest_run"]["error"]
                assert echoed["latest_run"]["result"] == {
                    "used": "[secret]", "nested": [{"again": "[secret]"}]}
                dlq = (await client.get("/api/v1/queues/default/dlq")).text
                audit = (await client.get("/api/v1/audit", params={"limit": 500})).text
            nursery.cancel_scope.cancel()
    with psycopg.connect(env["DATABASE_URL"]) as conn:
        stored = conn.execute("SELECT coalesce(string_agg(coalesce(error, '') || ' '"
                              " || coalesce(result::text, ''), ' '), '') FROM task_runs"
                              ).fetchone()[0]
        audit_rows = conn.execute("SELECT coalesce(string_agg(detail::text, ' '), '')"
                                  " FROM audit_log").fetchone()[0]
    seen = {"runs": json.dumps(shown), "dlq": dlq, "audit": audit, "stored": stored,
            "audit_rows": audit_rows, "log": d.log()}
    assert "last_error" in dlq and "HTTP 302" in dlq
    for secret in (PATH_TOKEN, QUERY_TOKEN, SECRET_VALUE):
        assert [where for where, text in seen.items() if secret in text] == [], secret
