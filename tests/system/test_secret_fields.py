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

from .conftest import REPO, wait_task

SECRET_VALUE = "hunter2-s3cret-Qx7"
HANDLER_MODULE = '''
import hashlib

import distasks


@distasks.handler
async def digest_secret(ctx):
    """Proves it got the real value without showing it."""
    return {"sha256": hashlib.sha256(ctx.payload["api_key"].encode()).hexdigest()}
'''


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
