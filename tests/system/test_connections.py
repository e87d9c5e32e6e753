"""Connections a client cannot hold for ever (api/connections.py), probed with raw
sockets against `distasks serve`: answered `Connection: close` and HTTP/1.0 requests
close, idle keep-alive connections and stalled headers are dropped (unauthenticated ones
sooner), a client at http.max_connections closes the longest-idle connection or, when
every one is busy, waits until one closes; h2c is off; a port in use stops the start."""

from __future__ import annotations

import json
import os
import secrets
import socket
import struct
import sys

import httpx
import psycopg
import trio

from distasks.testing.daemon import daemon_env as own_daemon_env

from .conftest import REPO
from .test_access import new_key

# Generous bounds that prove "closed at all" (the settings under test are 1 s).
CLOSED_WITHIN_S = 15.0
# How long a connection beyond the cap is watched for an answer that must not come.
UNSERVED_FOR_S = 1.0
# A client arriving at the cap is answered well within this (keep_alive_s is 75 s).
ANSWERED_WITHIN_S = 10.0

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

# HTTP/2 (RFC 9113): the client's connection preface, the frame types and the error
# code the tests read.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_SETTINGS = 0x4
H2_GOAWAY = 0x7
H2_HTTP_1_1_REQUIRED = 0xD


def h2_frame(kind: int, payload: bytes) -> bytes:
    """One HTTP/2 frame on stream 0, no flags."""
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, 0, 0) + payload


def h2_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(type, payload) of each whole frame in `data`."""
    frames = []
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        frames.append((data[3], data[9:9 + length]))
        data = data[9 + length:]
    return frames


async def connect(url: str) -> trio.SocketStream:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return await trio.open_tcp_stream(host, int(port))


async def read_response(stream: trio.SocketStream) -> bytes:
    """One response with a Content-Length body, head and body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some()
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += await stream.receive_some()
    return data


async def wait_closed_by_server(stream: trio.SocketStream) -> bytes:
    """What the server sent until it closed the connection (EOF or reset)."""
    data = b""
    try:
        while chunk := await stream.receive_some():
            data += chunk
    except trio.BrokenResourceError:
        pass  # reset: closed with our bytes unread
    return data


async def test_an_answered_connection_close_request_closes_the_connection(start_daemon,
                                                                          daemon_env):
    with trio.fail_after(30):
        async with start_daemon(daemon_env) as d:
            async with await connect(d.url) as stream:
                await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                      b"Connection: close\r\n\r\n")
                with trio.fail_after(CLOSED_WITHIN_S):
                    answer = await wait_closed_by_server(stream)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


async def test_an_http_1_0_request_closes_the_connection_once_answered(start_daemon,
                                                                      daemon_env):
    with trio.fail_after(30):
        async with start_daemon(daemon_env) as d:
            async with await connect(d.url) as stream:
                await stream.send_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                with trio.fail_after(CLOSED_WITHIN_S):
                    answer = await wait_closed_by_server(stream)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


async def test_an_idle_keep_alive_connection_is_closed_after_keep_alive_s(start_daemon,
                                                                         daemon_env):
    """Two requests on one connection (keep-alive works), then silence: closed."""
    env = {**daemon_env, "DISTASKS_HTTP_KEEP_ALIVE_S": "1"}
    with trio.fail_after(40):
        async with start_daemon(env) as d:
            async with await connect(d.url) as stream:
                for _ in range(2):
                    await stream.send_all(HEALTHZ)
                    assert (await read_response(stream)).startswith(b"HTTP/1.1 200")
                with trio.fail_after(CLOSED_WITHIN_S):
                    assert await wait_closed_by_server(stream) == b""


async def test_a_client_stalling_in_its_request_headers_is_dropped(start_daemon, daemon_env):
    """Half a header line, then nothing, on a new connection and on a kept-alive one;
    keep_alive_s stays long, so only the header deadline can close them."""
    env = {**daemon_env, "DISTASKS_HTTP_HEADER_TIMEOUT_S": "1",
           "DISTASKS_HTTP_KEEP_ALIVE_S": "300"}
    with trio.fail_after(40):
        async with start_daemon(env) as d:
            async with await connect(d.url) as fresh, await connect(d.url) as reused:
                await fresh.send_all(b"GET /healthz HTTP/1.1\r\nHo")
                await reused.send_all(HEALTHZ)
                assert (await read_response(reused)).startswith(b"HTTP/1.1 200")
                await reused.send_all(b"GET /healthz HTTP/1.1\r\nHo")
                with trio.fail_after(CLOSED_WITHIN_S):
                    assert await wait_closed_by_server(fresh) == b""
                    assert await wait_closed_by_server(reused) == b""


async def test_connections_beyond_max_connections_wait_while_every_one_is_busy(
        start_daemon, daemon_env):
    """Both slots hold a request in progress (half its headers; nothing idle to close):
    a third connection is not served until one of them closes."""
    env = {**daemon_env, "DISTASKS_HTTP_MAX_CONNECTIONS": "2",
           "DISTASKS_HTTP_KEEP_ALIVE_S": "300", "DISTASKS_HTTP_HEADER_TIMEOUT_S": "300"}
    with trio.fail_after(60):
        async with start_daemon(env) as d:
            held = [await connect(d.url) for _ in range(2)]
            for stream in held:
                await stream.send_all(HEALTHZ)
                assert (await read_response(stream)).startswith(b"HTTP/1.1 200")
                await stream.send_all(b"GET /healthz HTTP/1.1\r\nHo")
            async with await connect(d.url) as extra:
                await extra.send_all(HEALTHZ)
                with trio.move_on_after(UNSERVED_FOR_S):
                    served = await extra.receive_some()
                    raise AssertionError(f"served beyond the cap: {served[:100]!r}")
                await held.pop().aclose()
                with trio.fail_after(CLOSED_WITHIN_S):
                    assert (await read_response(extra)).startswith(b"HTTP/1.1 200")
            await held.pop().aclose()
            async with httpx.AsyncClient(base_url=d.url, trust_env=False) as client:
                assert (await client.get("/healthz")).status_code == 200
                scrape = (await client.get("/metrics")).text
            [served] = [float(line.split()[1]) for line in scrape.splitlines()
                        if line.startswith("distasks_http_connections ")]
            assert 1 <= served <= 2  # the scrape's own; a closed one may not be noticed yet
            events = [json.loads(line).get("event") for line in d.log().splitlines()
                      if line.startswith("{")]
            assert "http_connections_full" in events


async def test_a_new_client_at_the_cap_closes_the_longest_idle_connection(start_daemon,
                                                                          daemon_env):
    """Eight keep-alive connections left idle after one unauthenticated /healthz each
    fill http.max_connections; a ninth client is answered at once (not after
    keep_alive_s), and the connection idle the longest is the one closed for it."""
    env = {**daemon_env, "DISTASKS_AUTH_ANONYMOUS": "none",
           "DISTASKS_HTTP_MAX_CONNECTIONS": "8", "DISTASKS_HTTP_KEEP_ALIVE_S": "75",
           "DISTASKS_HTTP_UNAUTHENTICATED_KEEP_ALIVE_S": "75"}
    with trio.fail_after(60):
        async with start_daemon(env) as d:
            held = [await connect(d.url) for _ in range(8)]
            for stream in held:
                await stream.send_all(HEALTHZ)
                assert (await read_response(stream)).startswith(b"HTTP/1.1 200")
            async with await connect(d.url) as newcomer:
                await newcomer.send_all(HEALTHZ)
                with trio.fail_after(ANSWERED_WITHIN_S):
                    assert (await read_response(newcomer)).startswith(b"HTTP/1.1 200")
            with trio.fail_after(CLOSED_WITHIN_S):
                assert await wait_closed_by_server(held[0]) == b""
            await held[1].send_all(HEALTHZ)  # the others were left alone
            assert (await read_response(held[1])).startswith(b"HTTP/1.1 200")
            for stream in held:
                await stream.aclose()


async def test_an_unauthenticated_idle_connection_is_closed_sooner_than_an_authenticated_one(
        start_daemon, daemon_env):
    """keep_alive_s is long; a connection whose requests had no valid key gets
    unauthenticated_keep_alive_s (1 s) between requests, one that presented a key (to a
    Quart route, or to the lean create route) keeps keep_alive_s: idle for longer, it
    still serves."""
    env = {**daemon_env, "DISTASKS_AUTH_ANONYMOUS": "none",
           "DISTASKS_HTTP_KEEP_ALIVE_S": "300",
           "DISTASKS_HTTP_UNAUTHENTICATED_KEEP_ALIVE_S": "1"}
    token = await trio.to_thread.run_sync(new_key, env, "queues:read", "tasks:write")
    body = b'{"name": "x", "payload": {}}'
    keyed_requests = [
        (b"GET /api/v1/queues HTTP/1.1\r\nHost: 127.0.0.1\r\n"
         b"Authorization: Bearer " + token.encode() + b"\r\n\r\n", b"HTTP/1.1 200"),
        (b"POST /api/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\n"
         b"Authorization: Bearer " + token.encode() + b"\r\n"
         b"Content-Type: application/json\r\nContent-Length: "
         + str(len(body)).encode() + b"\r\n\r\n" + body, b"HTTP/1.1 201"),
    ]
    with trio.fail_after(60):
        async with start_daemon(env) as d:
            keyed = [await connect(d.url) for _ in keyed_requests]
            async with await connect(d.url) as keyless:
                for stream, (request, status) in zip(keyed, keyed_requests, strict=True):
                    await stream.send_all(request)
                    assert (await read_response(stream)).startswith(status)
                await keyless.send_all(HEALTHZ)
                assert (await read_response(keyless)).startswith(b"HTTP/1.1 200")
                with trio.fail_after(CLOSED_WITHIN_S):
                    assert await wait_closed_by_server(keyless) == b""
            for stream in keyed:
                await stream.send_all(keyed_requests[0][0])  # still open: served
                assert (await read_response(stream)).startswith(b"HTTP/1.1 200")
                await stream.aclose()


async def test_h2c_is_off(start_daemon, daemon_env):
    """An `Upgrade: h2c` request is answered in HTTP/1.1 (no 101), and the HTTP/2
    preface (prior knowledge) gets the server's SETTINGS and a GOAWAY with
    HTTP_1_1_REQUIRED, then the connection closes."""
    with trio.fail_after(40):
        async with start_daemon(daemon_env) as d:
            async with await connect(d.url) as upgrading:
                await upgrading.send_all(
                    b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                    b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n")
                assert (await read_response(upgrading)).startswith(b"HTTP/1.1 200")
            async with await connect(d.url) as prior:
                await prior.send_all(H2_PREFACE + h2_frame(H2_SETTINGS, b""))
                with trio.fail_after(CLOSED_WITHIN_S):
                    answer = await wait_closed_by_server(prior)
    frames = h2_frames(answer)
    assert [kind for kind, _ in frames] == [H2_SETTINGS, H2_GOAWAY], answer
    goaway = frames[-1][1]
    assert int.from_bytes(goaway[4:8], "big") == H2_HTTP_1_1_REQUIRED, goaway


async def test_a_port_in_use_is_one_line_before_anything_is_written(tmp_path):
    """`distasks serve` on a port another socket listens on: one line naming the address
    and the setting, exit 1, and its database untouched (no schema, no worker row)."""
    database = f"distasks_test_port_{secrets.token_hex(4)}"
    admin = os.environ.get("DISTASKS_PG_ADMIN_DSN",
                           "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
    info = psycopg.conninfo.conninfo_to_dict(admin)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    try:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            env = own_daemon_env(database_url=psycopg.conninfo.make_conninfo(
                **{**info, "dbname": database}), redis_url=os.environ.get(
                    "REDIS_URL", "redis://127.0.0.1:6379/0"), prefix=f"dt-port-{port}",
                settings={"HTTP_PORT": str(port)})
            with trio.fail_after(60):
                done = await trio.run_process(
                    [sys.executable, "-m", "distasks", "serve", "--config",
                     str(REPO / "config/distasks.toml")], env=env, cwd=REPO,
                    capture_stdout=True, capture_stderr=True, check=False)
        with psycopg.connect(psycopg.conninfo.make_conninfo(
                **{**info, "dbname": database})) as conn:
            tables = conn.execute("SELECT count(*) FROM information_schema.tables "
                                  "WHERE table_schema = 'public'").fetchone()
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    assert done.stderr.decode() == (f"distasks: cannot listen on 127.0.0.1:{port}: address "
                                    "already in use (http.port / HTTP_PORT)\n")
    assert done.returncode == 1
    assert tables == (0,)


async def test_a_client_stalling_in_its_request_body_gets_408_and_is_dropped(start_daemon,
                                                                            daemon_env):
    """On the lean create route and on a Quart route alike."""
    env = {**daemon_env, "DISTASKS_HTTP_BODY_TIMEOUT_S": "1"}
    with trio.fail_after(40):
        async with start_daemon(env) as d:
            answers = []
            for path in (b"/api/v1/tasks", b"/api/v1/tasks/batch"):
                async with await connect(d.url) as stream:
                    await stream.send_all(b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                          b"Content-Type: application/json\r\n"
                                          b"Content-Length: 100\r\n\r\n{")
                    with trio.fail_after(CLOSED_WITHIN_S):
                        answers.append(await wait_closed_by_server(stream))
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b'"code":"request_timeout"' in answer


async def test_a_small_response_leaves_in_one_write(start_daemon, daemon_env):
    """Head, body and end of a response are written together (api/connections.py holds
    the head until the body): the first read of the client has all of it, for the lean
    create route and for a Quart route alike."""
    create = json.dumps({"name": "one", "handler": "noop", "queue_name": "idle"}).encode()
    requests = [HEALTHZ, b"POST /api/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: "
                + str(len(create)).encode() + b"\r\n\r\n" + create]
    with trio.fail_after(30):
        async with start_daemon(daemon_env) as d:
            async with await connect(d.url) as stream:
                for request in requests * 3:
                    await stream.send_all(request)
                    first = await stream.receive_some()
                    head, _, body = first.partition(b"\r\n\r\n")
                    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length:"))
                    assert len(body) == length, first
