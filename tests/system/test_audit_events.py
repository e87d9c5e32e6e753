"""Audit rows the daemon writes by itself, against `distasks serve`: bad credentials (the
first of an address's window at once, a flood as one count) and config reloads, applied
or refused, with the system as the actor."""

from __future__ import annotations

import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import trio

from .conftest import REPO
from .test_access import keys_cli, new_key

# A flood of bad tokens from one address.
FLOOD = 40
# auth.trusted_proxies for a proxy on this machine (deploy/nginx); none by default.
LOOPBACK_PROXY = "127.0.0.1/32,::1/128"


async def audit_until(client: httpx.AsyncClient, token: str | None,
                      done: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
    """GET /api/v1/audit (oldest first) until `done` says so; the caller bounds the wait.
    No token: the anonymous principal of loopback."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    while True:
        r = await client.get("/api/v1/audit", params={"limit": 500}, headers=headers)
        assert r.status_code == 200, r.text
        entries = list(reversed(r.json()["entries"]))
        if done(entries):
            return entries
        await trio.sleep(0.1)


def failures(entries: list[dict[str, Any]], address: str) -> list[dict[str, Any]]:
    return [e for e in entries if e["action"] in ("login_failed", "login_failures")
            and e["address"] == address]


def counted(entries: list[dict[str, Any]]) -> int:
    """Failures the rows account for: one per first-failure row, `count` per summary."""
    return sum(1 if e["action"] == "login_failed" else e["detail"]["count"] for e in entries)


async def test_bad_credentials_are_audited_first_at_once_then_as_one_count(
        start_daemon, daemon_env):
    # No lookup throttle here (test_an_address_flooding_unknown_keys… covers it).
    env = {**daemon_env, "DISTASKS_AUTH_ANONYMOUS": "none",
           "DISTASKS_AUTH_FAILURE_WINDOW_S": "3", "DISTASKS_AUTH_MAX_FAILURES": "0",
           "DISTASKS_AUTH_TRUSTED_PROXIES": LOOPBACK_PROXY}
    auditor = await trio.to_thread.run_sync(new_key, env, "audit:read")
    revoked = await trio.to_thread.run_sync(new_key, env, "tasks:read")
    key_id = next(line.split()[0] for line in
                  (await trio.to_thread.run_sync(keys_cli, env, "list")).splitlines()
                  if line.split()[2].rstrip("…") == revoked[:12])
    await trio.to_thread.run_sync(keys_cli, env, "revoke", key_id)
    flooder, other = "203.0.113.7", "198.51.100.4"
    with trio.fail_after(60):
        async with start_daemon(env) as d, httpx.AsyncClient(base_url=d.url) as client:
            # 127.0.0.1 is a trusted proxy here: it says who the client is.
            first = await client.get("/api/v1/tasks", headers={
                "Authorization": "Bearer dtk_not-a-key", "X-Forwarded-For": flooder})
            assert first.status_code == 401
            entries = await audit_until(client, auditor,
                                        lambda es: len(failures(es, flooder)) == 1)
            [row] = failures(entries, flooder)
            assert (row["action"], row["actor"], row["detail"]["reason"]) == (
                "login_failed", "system", "unknown")
            for _ in range(FLOOD - 1):
                r = await client.get("/api/v1/tasks", headers={
                    "Authorization": "Bearer dtk_not-a-key", "X-Forwarded-For": flooder})
                assert r.status_code == 401
            r = await client.get("/api/v1/tasks", headers={
                "Authorization": f"Bearer {revoked}", "X-Forwarded-For": other})
            assert r.status_code == 401
            entries = await audit_until(
                client, auditor, lambda es: counted(failures(es, flooder)) == FLOOD)
    flood_rows = failures(entries, flooder)
    # However the flood fell across windows: a first row and at most one count per window.
    assert len(flood_rows) <= 4, flood_rows
    assert {e["action"] for e in flood_rows} == {"login_failed", "login_failures"}
    [revoked_row] = failures(entries, other)
    assert revoked_row["detail"] == {"reason": "revoked", "key_id": key_id, "window_s": 3.0}
    assert "dtk_not-a-key" not in str(entries) and revoked not in str(entries)


async def test_an_address_flooding_unknown_keys_gets_429_without_lookups(
        start_daemon, daemon_env):
    env = {**daemon_env, "DISTASKS_AUTH_ANONYMOUS": "none", "DISTASKS_AUTH_MAX_FAILURES": "3",
           "DISTASKS_AUTH_TRUSTED_PROXIES": LOOPBACK_PROXY}
    good = await trio.to_thread.run_sync(new_key, env, "tasks:read")
    flooder, neighbour = "203.0.113.7", "198.51.100.4"

    async def call(token: str, address: str) -> httpx.Response:
        return await client.get("/api/v1/tasks", headers={
            "Authorization": f"Bearer {token}", "X-Forwarded-For": address})

    with trio.fail_after(60):
        async with start_daemon(env) as d, httpx.AsyncClient(base_url=d.url) as client:
            assert (await call(good, flooder)).status_code == 200  # now in the key cache
            statuses = [(await call(f"dtk_random-{i}", flooder)).status_code
                        for i in range(6)]
            assert statuses == [401, 401, 401, 429, 429, 429], statuses
            refused = await call("dtk_random-x", flooder)
            assert refused.json()["error"]["code"] == "too_many_failures"
            assert int(refused.headers["Retry-After"]) >= 1
            # A key that works keeps working from there; other addresses are not held.
            assert (await call(good, flooder)).status_code == 200
            assert (await call("dtk_random-y", neighbour)).status_code == 401


async def test_a_local_client_rotating_x_forwarded_for_is_still_locked_out(
        start_daemon, daemon_env):
    """Under the shipped config no proxy is trusted: a process on this machine that
    names another address in X-Forwarded-For with each unknown key is still counted at
    its own address, and held (429 too_many_failures) once past auth.max_failures."""
    env = {**daemon_env, "DISTASKS_AUTH_ANONYMOUS": "none", "DISTASKS_AUTH_MAX_FAILURES": "3"}
    with trio.fail_after(60):
        async with start_daemon(env) as d, httpx.AsyncClient(base_url=d.url) as client:
            answers = [await client.get("/api/v1/tasks", headers={
                "Authorization": f"Bearer dtk_random-{i}",
                "X-Forwarded-For": f"203.0.113.{i + 1}"}) for i in range(6)]
    assert [r.status_code for r in answers] == [401, 401, 401, 429, 429, 429], [
        r.text for r in answers]
    assert answers[-1].json()["error"]["code"] == "too_many_failures"


async def test_config_reloads_applied_and_refused_are_audited(
        start_daemon, daemon_env, tmp_path: Path):
    env = {k: v for k, v in daemon_env.items() if k != "WORKER_CONCURRENCY"}
    config = tmp_path / "distasks.toml"
    text = (REPO / "config/distasks.toml").read_text()
    config.write_text(text)
    with trio.fail_after(40):
        async with (start_daemon(env, config=str(config)) as d,
                    httpx.AsyncClient(base_url=d.url) as client):
            edited = re.sub(r"(?m)^concurrency = 1\b", "concurrency = 3", text, count=1)
            edited = re.sub(r"(?m)^max_batch = 1000\b", "max_batch = 500", edited, count=1)
            assert edited.count("concurrency = 3") == 1 and "max_batch = 500" in edited
            config.write_text(edited)
            d.terminate(signal.SIGHUP)
            entries = await audit_until(client, None, lambda es: any(
                e["action"] == "config_reload" for e in es))
            config.write_text("[worker]\nconcurrency = 0\n")
            d.terminate(signal.SIGHUP)
            entries = await audit_until(client, None, lambda es: any(
                e["action"] == "config_reload_refused" for e in es))
    [applied] = [e for e in entries if e["action"] == "config_reload"]
    assert applied["actor"] == "system"
    assert applied["detail"] == {"changed": ["http.max_batch", "worker.concurrency"],
                                 "applied": ["worker.concurrency"],
                                 "needs_restart": ["http.max_batch"]}
    [refused] = [e for e in entries if e["action"] == "config_reload_refused"]
    assert refused["actor"] == "system"
    assert refused["detail"]["key"] == "worker.concurrency"
