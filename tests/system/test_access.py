"""Access control against `distasks serve`: API keys made with `distasks keys` before the
daemon runs, each scope allowing what it names and nothing else, revoked, expired and
rotated keys, an audit actor that cannot be forged, and the browser protections."""

from __future__ import annotations

import subprocess
import sys

import httpx
import psycopg
import trio

from .conftest import REPO, free_port

# One operation per scope, and the status it answers when allowed with an empty store.
BY_SCOPE = {
    "tasks:write": ("POST", "/api/v1/tasks", {"name": "x", "payload": {}}, 201),
    "tasks:read": ("GET", "/api/v1/tasks", None, 200),
    "tasks:cancel": ("POST", "/api/v1/tasks/00000000-0000-0000-0000-000000000000/cancel",
                     None, 404),
    "queues:read": ("GET", "/api/v1/queues", None, 200),
    "queues:admin": ("POST", "/api/v1/queues/default/resume", None, 200),
    "dlq:admin": ("POST", "/api/v1/queues/default/dlq/replay", {"dry_run": True}, 200),
    "keys:admin": ("GET", "/api/v1/keys", None, 200),
    "audit:read": ("GET", "/api/v1/audit", None, 200),
    "metrics:read": ("GET", "/metrics", None, 200),
    "schedules:read": ("GET", "/api/v1/schedules", None, 200),
    "schedules:write": ("POST", "/api/v1/schedules", {"name": "s", "cron": "0 * * * *"}, 201),
    "workflows:read": ("GET", "/api/v1/workflows", None, 200),
    "workflows:write": ("POST", "/api/v1/workflows/00000000-0000-0000-0000-000000000000/cancel",
                        None, 404),
}
# How long a revoked key may still be accepted (distasks.access.principals.CACHE_TTL_S), with slack.
REVOCATION_S = 8.0


def keys_cli(env: dict[str, str], *args: str) -> str:
    """`distasks keys …` against the test's database; its stdout."""
    done = subprocess.run([sys.executable, "-m", "distasks", "keys", *args, "--config",
                           str(REPO / "config/distasks.toml")], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def new_key(env: dict[str, str], *scopes: str, expires_in: str | None = None) -> str:
    args = ["create", "--name", "-".join(scopes) or "none"]
    for s in scopes:
        args += ["--scope", s]
    if expires_in:
        args += ["--expires-in", expires_in]
    return keys_cli(env, *args)


async def call(client: httpx.AsyncClient, scope: str, token: str | None) -> httpx.Response:
    method, path, body, _ = BY_SCOPE[scope]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await client.request(method, path, json=body, headers=headers)


async def test_each_scope_allows_what_it_names_and_nothing_else(start_daemon, daemon_env):
    env = {**daemon_env, "DISTASKS_AUTH_ANONYMOUS": "none",
           "DISTASKS_AUTH_METRICS_NETWORKS": "192.0.2.0/24"}
    tokens = {scope: await trio.to_thread.run_sync(new_key, env, scope) for scope in BY_SCOPE}
    with trio.fail_after(60):
        async with start_daemon(env) as d, httpx.AsyncClient(base_url=d.url) as client:
            for scope in BY_SCOPE:
                anonymous = await call(client, scope, None)
                assert anonymous.status_code == 401, (scope, anonymous.text)
                assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
                assert (await call(client, scope, "dtk_not-a-key")).status_code == 401
                for holder, token in tokens.items():
                    r = await call(client, scope, token)
                    want = BY_SCOPE[scope][3] if holder == scope else 403
                    assert r.status_code == want, (scope, holder, r.text)
                    assert r.headers["X-Content-Type-Options"] == "nosniff"
            # Open to anyone: liveness, readiness, the document.
            for path in ("/healthz", "/readyz", "/openapi.json"):
                assert (await client.get(path)).status_code == 200, path


async def test_revoked_expired_and_rotated_keys(start_daemon, daemon_env):
    env = {**daemon_env, "DISTASKS_AUTH_ANONYMOUS": "none"}
    revoked = await trio.to_thread.run_sync(new_key, env, "tasks:read")
    short = await trio.to_thread.run_sync(lambda: new_key(env, "tasks:read", expires_in="2s"))
    old = await trio.to_thread.run_sync(new_key, env, "tasks:read")
    listing = await trio.to_thread.run_sync(keys_cli, env, "list")
    ids = {line.split()[2].rstrip("…"): line.split()[0] for line in listing.splitlines()}
    with trio.fail_after(60):
        async with start_daemon(env) as d, httpx.AsyncClient(base_url=d.url) as client:
            assert (await call(client, "tasks:read", revoked)).status_code == 200
            await trio.to_thread.run_sync(keys_cli, env, "revoke", ids[revoked[:12]])
            with trio.fail_after(REVOCATION_S):
                while (await call(client, "tasks:read", revoked)).status_code != 401:  # noqa: ASYNC110
                    await trio.sleep(0.2)
            with trio.fail_after(REVOCATION_S):
                while (await call(client, "tasks:read", short)).status_code != 401:  # noqa: ASYNC110
                    await trio.sleep(0.2)
            new = await trio.to_thread.run_sync(
                keys_cli, env, "rotate", ids[old[:12]], "--overlap", "1h")
            assert new != old
            assert (await call(client, "tasks:read", old)).status_code == 200
            assert (await call(client, "tasks:read", new)).status_code == 200


async def test_the_audit_actor_is_the_key_never_a_header(start_daemon, daemon_env):
    env = {**daemon_env, "DISTASKS_AUTH_ANONYMOUS": "none"}
    token = await trio.to_thread.run_sync(new_key, env, "queues:admin")
    auditor = await trio.to_thread.run_sync(new_key, env, "audit:read")
    key_id = (await trio.to_thread.run_sync(keys_cli, env, "list")).split()[0]
    with trio.fail_after(30):
        async with start_daemon(env) as d, httpx.AsyncClient(base_url=d.url) as client:
            r = await client.post("/api/v1/queues/reports/pause", headers={
                "Authorization": f"Bearer {token}", "X-Distasks-Actor": "admin\x1b[31m",
                "X-Request-Id": "req-pause-1"})
            assert r.status_code == 200, r.text
            page = (await client.get("/api/v1/audit", params={"action": "pause"},
                                     headers={"Authorization": f"Bearer {auditor}"})).json()
    [entry] = page["entries"]
    assert (entry["actor"], entry["address"], entry["request_id"], entry["queue_name"]) == (
        f"key:{key_id}", "127.0.0.1", "req-pause-1", "reports")
    with psycopg.connect(env["DATABASE_URL"]) as conn:
        actions = [a for (a,) in conn.execute("SELECT action FROM audit_log ORDER BY id")]
    assert actions == ["key_create", "key_create", "pause"]


async def test_anonymous_access_is_for_this_machine_only(start_daemon, daemon_env):
    """The shipped config lets loopback in without a key, but not a client a trusted
    proxy (nginx on this host) forwards, whatever that client claims about itself."""
    with trio.fail_after(30):
        async with start_daemon(daemon_env) as d, httpx.AsyncClient(base_url=d.url) as client:
            assert (await client.get("/api/v1/queues")).status_code == 200
            proxied = await client.get("/api/v1/queues",
                                       headers={"X-Forwarded-For": "203.0.113.9"})
            assert proxied.status_code == 401, proxied.text
            forged = await client.get("/api/v1/queues",
                                      headers={"X-Forwarded-For": "127.0.0.1, 203.0.113.9"})
            assert forged.status_code == 401, forged.text
            # Readiness: the verdict for anyone, what is down and why only for callers.
            local = (await client.get("/readyz")).json()
            assert local["postgres"] == "ok" and "components" in local
            remote = await client.get("/readyz", headers={"X-Forwarded-For": "203.0.113.9"})
            assert remote.json() == {"ready": True}
            metrics = await client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
            assert metrics.status_code == 401


async def test_a_web_page_cannot_make_a_browser_write(start_daemon, daemon_env):
    """Form and text/plain posts, cross-site origins and a rebinding Host are refused
    before any effect, on the lean create route and the Quart routes alike."""
    with trio.fail_after(30):
        async with start_daemon(daemon_env) as d, httpx.AsyncClient(base_url=d.url) as client:
            for path in ("/api/v1/tasks", "/api/v1/queues/default/pause"):
                form = await client.post(path, data={"name": "x"})
                assert (form.status_code, form.json()["error"]["code"]) == (
                    415, "unsupported_media_type"), path
                text = await client.post(path, content=b'{"name": "x"}',
                                         headers={"content-type": "text/plain"})
                assert text.status_code == 415, path
                # No Content-Type at all: what fetch() sends with a Blob or ArrayBuffer body.
                bare = await client.post(path, content=b'{"name": "x"}')
                assert "content-type" not in bare.request.headers
                assert bare.status_code == 415, path
                cross = await client.post(path, json={"name": "x"},
                                          headers={"Origin": "https://evil.example"})
                assert (cross.status_code, cross.json()["error"]["code"]) == (
                    403, "cross_origin"), path
                rebound = await client.post(path, json={"name": "x"},
                                            headers={"Host": "evil.example:8080"})
                assert (rebound.status_code, rebound.json()["error"]["code"]) == (
                    400, "bad_host"), path
                assert rebound.headers["Content-Security-Policy"].startswith("default-src")
            # A write without a body needs no Content-Type (the README's curl -X POST).
            assert (await client.post("/api/v1/queues/default/resume")).status_code == 200
            queues = (await client.get("/api/v1/queues")).json()["queues"]
    assert queues == [] or not any(q["paused"] for q in queues)
    with psycopg.connect(daemon_env["DATABASE_URL"]) as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 0


async def test_an_http_1_0_request_without_host_is_served(start_daemon, daemon_env):
    """HTTP/1.0 lets a client leave Host out (a load balancer's health check, an old
    tool); no browser does, so there is no rebinding to refuse. The lean create route
    and a Quart route answer it; a wrong Host is still refused."""
    body = b'{"name": "x", "payload": {}}'
    requests = {
        b"POST /api/v1/tasks HTTP/1.0\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body: b"201",
        b"GET /api/v1/queues HTTP/1.0\r\n\r\n": b"200",
        b"GET /api/v1/queues HTTP/1.0\r\nHost: evil.example\r\n\r\n": b"400",
    }
    with trio.fail_after(30):
        async with start_daemon(daemon_env) as d:
            host, port = d.url.removeprefix("http://").rsplit(":", 1)
            for request, status in requests.items():
                async with await trio.open_tcp_stream(host, int(port)) as stream:
                    await stream.send_all(request)
                    answer = b""
                    while chunk := await stream.receive_some():  # HTTP/1.0: closed after
                        answer += chunk
                assert answer.startswith(b"HTTP/1.1 " + status), (request, answer[:300])
    assert b'"code":"bad_host"' in answer


async def test_keys_are_managed_over_the_api_with_keys_admin(start_daemon, daemon_env):
    env = {**daemon_env, "DISTASKS_AUTH_ANONYMOUS": "none"}
    # A key gives no scope its maker lacks (test_tenants.py): the admin reads tasks too.
    admin = await trio.to_thread.run_sync(new_key, env, "keys:admin", "tasks:read")
    auth = {"Authorization": f"Bearer {admin}"}
    with trio.fail_after(60):
        async with start_daemon(env) as d, httpx.AsyncClient(base_url=d.url) as client:
            r = await client.post("/api/v1/keys", headers=auth, json={
                "name": "reader", "scopes": ["tasks:read"], "expires_in_seconds": 3600})
            assert r.status_code == 201, r.text
            made = r.json()
            assert made["token"].startswith("dtk_") and made["key"]["expires_at"]
            assert (await call(client, "tasks:read", made["token"])).status_code == 200
            listed = (await client.get("/api/v1/keys", headers=auth)).json()["keys"]
            assert [k["name"] for k in listed] == ["keys:admin-tasks:read", "reader"]
            assert all("token" not in k for k in listed)
            key_id = made["key"]["id"]
            rotated = await client.post(f"/api/v1/keys/{key_id}/rotate", headers=auth,
                                        json={"overlap_seconds": 0})
            assert rotated.status_code == 201, rotated.text
            assert (await call(client, "tasks:read", rotated.json()["token"])).status_code == 200
            revoked = await client.post(f"/api/v1/keys/{rotated.json()['key']['id']}/revoke",
                                        headers=auth)
            assert revoked.json()["revoked_at"] is not None
            with trio.fail_after(REVOCATION_S):
                while (await call(client, "tasks:read", rotated.json()["token"])  # noqa: ASYNC110
                       ).status_code != 401:
                    await trio.sleep(0.2)
            bad = await client.post("/api/v1/keys", headers=auth,
                                    json={"name": "x", "scopes": ["everything"]})
            assert (bad.status_code, bad.json()["error"]["field"]) == (422, "scopes.0")
            missing = await client.post(
                "/api/v1/keys/00000000-0000-0000-0000-000000000000/revoke", headers=auth)
            assert missing.status_code == 404


async def test_a_rate_limit_holds_across_two_daemons(start_daemon, daemon_env):
    """A key limited to 60 requests a minute (a burst of 10) gets about 10 through two
    daemons sharing one Redis, then 429 with Retry-After and RateLimit-* headers."""
    token = await trio.to_thread.run_sync(
        keys_cli, daemon_env, "create", "--name", "slow", "--scope", "tasks:read",
        "--rate-per-minute", "60")
    second_env = {**daemon_env, "HTTP_PORT": str(free_port())}
    headers = {"Authorization": f"Bearer {token}"}
    answers = []
    with trio.fail_after(60):
        async with (start_daemon(daemon_env) as d1, start_daemon(second_env) as d2,
                    httpx.AsyncClient() as client):
            started = trio.current_time()
            for i in range(30):
                url = (d1 if i % 2 else d2).url
                answers.append(await client.get(f"{url}/api/v1/tasks", headers=headers))
            elapsed = trio.current_time() - started
    passed = [r for r in answers if r.status_code == 200]
    limited = [r for r in answers if r.status_code == 429]
    assert len(passed) + len(limited) == 30
    # The burst, what refilled meanwhile (1/s), and a token each daemon may hold unspent.
    assert 10 <= len(passed) <= 10 + int(elapsed) + 1 + 2, (len(passed), elapsed)
    assert int(limited[0].headers["Retry-After"]) >= 1
    assert limited[0].headers["RateLimit-Limit"] == "60"
    assert limited[0].json()["error"]["code"] == "rate_limited"
