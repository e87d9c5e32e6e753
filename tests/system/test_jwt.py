"""JWT bearer tokens against `distasks serve`: the IdP's keys served as a JWKS by a small
HTTP endpoint here, tokens signed with keys made here. Scopes allow what they name,
refused tokens answer 401 without repeating the token, a key the IdP rotates in works at
once, and the audit actor is the token's subject."""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, datetime
from functools import partial
from typing import Any

import httpx
import jwt
import trio
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from distasks.testing.http_stub import read_request

from .conftest import REPO

ISSUER = "https://idp.example"
AUDIENCE = "distasks-test"


class JwksEndpoint:
    """GET anything: the current JWKS document; counts the requests."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.requests = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            if await read_request(stream) is None:
                return
            self.requests += 1
            body = json.dumps({"keys": self.keys}).encode()
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                  b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                                  % (len(body), body))


def public_jwk(private_key: Any, kid: str) -> dict[str, Any]:
    algorithm = (jwt.algorithms.RSAAlgorithm if isinstance(private_key, rsa.RSAPrivateKey)
                 else jwt.algorithms.OKPAlgorithm)
    return {**algorithm.to_jwk(private_key.public_key(), as_dict=True), "kid": kid}


def mint(key: Any, kid: str, scope: str, **claims: Any) -> str:
    alg = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "EdDSA"
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "scope": scope,
               "exp": int(time.time()) + 300} | claims
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_jwt_principals_against_a_running_daemon(start_daemon, daemon_env):
    idp_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    endpoint = JwksEndpoint()
    endpoint.keys = [public_jwk(idp_key, "k1")]
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            [listener] = await nursery.start(partial(trio.serve_tcp, endpoint.handle, 0,
                                                       host="127.0.0.1"))
            port = listener.socket.getsockname()[1]
            env = {**daemon_env, "DISTASKS_AUTH_ANONYMOUS": "none",
                   "DISTASKS_AUTH_JWT_ENABLED": "true", "DISTASKS_AUTH_JWT_ISSUER": ISSUER,
                   "DISTASKS_AUTH_JWT_AUDIENCE": AUDIENCE, "DISTASKS_AUTH_JWT_DEFAULT_TENANT":
                   "default", "DISTASKS_AUTH_JWT_JWKS_URL": f"http://127.0.0.1:{port}/jwks",
                   # A burst of 10 requests per subject (limits.per_minute / 6).
                   "DISTASKS_LIMITS_PER_MINUTE": "60"}
            async with start_daemon(env) as d, httpx.AsyncClient(base_url=d.url) as client:
                assert endpoint.requests == 1  # read before the daemon was ready

                async def create(token: str) -> httpx.Response:
                    return await client.post("/api/v1/tasks", headers=bearer(token),
                                             json={"name": "jwt", "payload": {}})

                writer = mint(idp_key, "k1", "tasks:write tasks:read")
                made = await create(writer)
                assert made.status_code == 201, made.text
                read = await client.get(f"/api/v1/tasks/{made.json()['task_id']}",
                                        headers=bearer(writer))
                assert read.status_code == 200, read.text

                no_scope = await create(mint(idp_key, "k1", "tasks:read"))
                assert (no_scope.status_code, no_scope.json()["error"]["code"]) == (
                    403, "forbidden")

                other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
                for token, reason in (
                        (mint(idp_key, "k1", "tasks:write", aud="another-api"),
                         "another audience"),
                        (mint(idp_key, "k1", "tasks:write", iss="https://evil.example"),
                         "another issuer"),
                        (mint(idp_key, "k1", "tasks:write", exp=int(time.time()) - 120),
                         "expired"),
                        (mint(other_key, "k1", "tasks:write"), "signature does not verify")):
                    r = await create(token)
                    assert r.status_code == 401, (reason, r.text)
                    assert r.headers["WWW-Authenticate"] == (
                        'Bearer realm="distasks", error="invalid_token"')
                    message = r.json()["error"]["message"]
                    assert reason in message and token not in r.text, message

                # The IdP rotates in an EdDSA key: the first token naming it is accepted.
                rotated = ed25519.Ed25519PrivateKey.generate()
                endpoint.keys = [public_jwk(idp_key, "k1"), public_jwk(rotated, "k2")]
                r = await create(mint(rotated, "k2", "tasks:write"))
                assert r.status_code == 201, r.text
                assert endpoint.requests == 2

                # The audit actor is the token's subject, not anything the client says.
                admin = mint(rotated, "k2", "queues:admin audit:read", sub="ops-bot")
                r = await client.post("/api/v1/queues/reports/pause", headers={
                    **bearer(admin), "X-Distasks-Actor": "someone-else"})
                assert r.status_code == 200, r.text
                page = (await client.get("/api/v1/audit", params={"action": "pause"},
                                         headers=bearer(admin))).json()
                assert [e["actor"] for e in page["entries"]] == ["jwt:ops-bot"]

                # Rate limits hold per subject, as per key: one subject spends its burst,
                # another is unaffected.
                greedy = mint(idp_key, "k1", "tasks:read", sub="greedy")
                statuses = [(await client.get("/api/v1/tasks", headers=bearer(greedy)))
                            .status_code for _ in range(15)]
                assert statuses[0] == 200 and statuses[-1] == 429, statuses
                r = await client.get("/api/v1/tasks", headers=bearer(writer))
                assert r.status_code == 200, r.text

                # API keys keep working beside JWTs: a dtk_ token is never read as a JWT.
                unknown_key = await client.get("/api/v1/tasks", headers=bearer("dtk_nope"))
                assert "API key" in unknown_key.json()["error"]["message"]
                document = (await client.get("/openapi.json")).json()
                assert document["components"]["securitySchemes"]["jwt"]["bearerFormat"] == "JWT"
            nursery.cancel_scope.cancel()


async def test_check_config_shows_the_section_and_a_bad_key_file_stops_start_up(tmp_path):
    """`check-config` prints the JWT settings (a password in the JWKS URL hidden) and reads
    the key files; `serve` refuses a bad one in one line before it starts anything."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTASKS_")} | {
        "DISTASKS_AUTH_JWT_ENABLED": "true", "DISTASKS_AUTH_JWT_ISSUER": ISSUER,
        "DISTASKS_AUTH_JWT_AUDIENCE": AUDIENCE,
        "DISTASKS_AUTH_JWT_JWKS_URL": "https://jwks-reader:hunter2@idp.example/jwks"}
    (tmp_path / "jwks.json").write_text('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}')
    bad_file = env | {"DISTASKS_AUTH_JWT_JWKS_URL": "",
                      "DISTASKS_AUTH_JWT_JWKS_FILE": str(tmp_path / "jwks.json")}

    async def distasks(env: dict[str, str], command: str) -> trio.CompletedProcess[bytes]:
        return await trio.run_process(
            [sys.executable, "-m", "distasks", command, "--config", "config/distasks.toml"],
            env=env, cwd=REPO, check=False, capture_stdout=True, capture_stderr=True)

    with trio.fail_after(30):
        shown = await distasks(env, "check-config")
        checked = await distasks(bad_file, "check-config")
        served = await distasks(bad_file, "serve")
    assert shown.returncode == 0, shown.stderr
    assert (f"jwt=on(issuer={ISSUER} audience={AUDIENCE} algorithms=RS256,EdDSA "
            "jwks_url=https://jwks-reader:***@idp.example/jwks)") in shown.stdout.decode()
    assert b"hunter2" not in shown.stdout + shown.stderr
    for p in (checked, served):
        assert p.returncode == 2
        assert p.stderr.decode() == ("distasks: config: auth.jwt.jwks_file: the JWKS has no "
                                     "signing key for EdDSA, RS256\n")


async def test_a_key_minted_with_a_jwt_expires_no_later_than_the_token(start_daemon,
                                                                         daemon_env):
    """A JWT's authority ends at its exp: a key it mints without an expiry gets the
    token's (named in `capped`), a later one asked for is refused, an earlier one is kept;
    the key it made works."""
    idp_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    endpoint = JwksEndpoint()
    endpoint.keys = [public_jwk(idp_key, "k1")]
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            [listener] = await nursery.start(partial(trio.serve_tcp, endpoint.handle, 0,
                                                       host="127.0.0.1"))
            port = listener.socket.getsockname()[1]
            env = {**daemon_env, "DISTASKS_AUTH_ANONYMOUS": "none",
                   "DISTASKS_AUTH_JWT_ENABLED": "true", "DISTASKS_AUTH_JWT_ISSUER": ISSUER,
                   "DISTASKS_AUTH_JWT_AUDIENCE": AUDIENCE, "DISTASKS_AUTH_JWT_DEFAULT_TENANT":
                   "default", "DISTASKS_AUTH_JWT_JWKS_URL": f"http://127.0.0.1:{port}/jwks"}
            async with start_daemon(env) as d, httpx.AsyncClient(base_url=d.url) as client:
                exp = int(time.time()) + 300
                admin = mint(idp_key, "k1", "keys:admin tasks:read", exp=exp)

                async def new_key(**body: object) -> httpx.Response:
                    return await client.post("/api/v1/keys", headers=bearer(admin), json={
                        "name": "from-jwt", "scopes": ["tasks:read"], **body})

                r = await new_key()
                assert r.status_code == 201, r.text
                made = r.json()
                assert made["capped"] == ["expires_at"]
                assert made["key"]["expires_at"] == datetime.fromtimestamp(exp, UTC).isoformat(
                    ).replace("+00:00", "Z")
                later = await new_key(expires_in_seconds=3600)
                assert (later.status_code, later.json()["error"]["field"]) == (
                    403, "expires_in_seconds"), later.text
                sooner = await new_key(expires_in_seconds=60)
                assert (sooner.status_code, sooner.json()["capped"]) == (201, []), sooner.text
                r = await client.get("/api/v1/tasks", headers=bearer(made["token"]))
                assert r.status_code == 200, r.text
            nursery.cancel_scope.cancel()
