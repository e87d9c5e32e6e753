"""Connections a client cannot hold for ever (api/connections.py), probed with raw
sockets against `distasks serve`: answered `Connection: close` and HTTP/1.0 requests
close, idle keep-alive connections and stalled headers are dropped, and connections
beyond http.max_connections wait until others close."""

from __future__ import annotations

import json

import httpx
import trio

# Generous bounds that prove "closed at all" (the settings under test are 1 s).
CLOSED_WITHIN_S = 15.0
# How long a connection beyond the cap is watched for an answer that must not come.
UNSERVED_FOR_S = 1.0

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


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


async def test_connections_beyond_max_connections_wait_until_others_close(start_daemon,
                                                                          daemon_env):
    env = {**daemon_env, "DISTASKS_HTTP_MAX_CONNECTIONS": "2",
           "DISTASKS_HTTP_KEEP_ALIVE_S": "300", "DISTASKS_HTTP_HEADER_TIMEOUT_S": "300"}
    with trio.fail_after(60):
        async with start_daemon(env) as d:
            held = [await connect(d.url) for _ in range(2)]
            for stream in held:
                await stream.send_all(HEALTHZ)
                assert (await read_response(stream)).startswith(b"HTTP/1.1 200")
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
