"""The http handler's allow-list: ports, addresses, IPv6, no caller Host, and the call
going to the address that was checked (against a local TCP server, not a mock)."""

from __future__ import annotations

import gzip
import tracemalloc
import types

import pytest
import trio

from distasks.domain.errors import InvalidInput
from distasks.handlers.http import AllowEntry, HttpHandler, HttpTaskFailed
from distasks.testing.daemon import free_port
from distasks.testing.http_stub import read_request


def task_context(payload: dict, secret_fields: tuple[str, ...] = ()) -> types.SimpleNamespace:
    """What the handler reads of a TaskContext: the payload, and the task's secrets."""
    task = types.SimpleNamespace(payload=payload, secret_fields=secret_fields)
    return types.SimpleNamespace(payload=payload, task=task)


@pytest.mark.parametrize(("entries", "url", "allowed"), [
    (("api.example.com",), "https://api.example.com/hook", True),
    (("api.example.com",), "http://api.example.com:80/", True),
    # An entry without a port allows 80 and 443 only.
    (("api.example.com",), "http://api.example.com:8080/", False),
    (("api.example.com:8080",), "http://api.example.com:8080/", True),
    (("*.svc",), "https://a.b.svc/", True),
    (("203.0.113.7",), "http://203.0.113.7/", True),
    (("10.0.0.0/8",), "http://10.9.8.7/", True),
    (("10.0.0.0/8",), "http://11.0.0.1/", False),
    (("[::1]:8080",), "http://[::1]:8080/x", True),
    (("::1",), "http://[::1]/x", True),
    (("::1",), "http://[::2]/x", False),
])
def test_an_entry_allows_its_hosts_and_ports(entries, url, allowed):
    handler = HttpHandler(entries, 1000)
    if allowed:
        handler.check({"url": url})
    else:
        with pytest.raises(InvalidInput):
            handler.check({"url": url})


def test_the_caller_cannot_set_host():
    with pytest.raises(InvalidInput) as e:
        HttpHandler(("api.example.com",), 1000).check(
            {"url": "https://api.example.com/", "headers": {"HOST": "internal"}})
    assert e.value.field == "payload.headers"


@pytest.mark.parametrize("entry", ["a:b", "a:0", "[::1]:x", ":80"])
def test_a_malformed_entry_is_refused(entry):
    with pytest.raises(ValueError):
        AllowEntry.parse(entry)


async def test_a_name_that_resolves_to_a_private_address_is_called_only_if_allowed():
    """`localhost` names a loopback address: allowing the name is not enough (a public
    name can be pointed at an internal address); the address must be allowed too. The
    call then goes to the checked address, with the name as Host."""
    port = free_port()
    seen: list[bytes] = []

    async def serve(stream: trio.SocketStream) -> None:
        request = await read_request(stream)
        if request is None:
            return
        seen.append(request[0])
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                              b"Connection: close\r\n\r\nok")
        await stream.aclose()

    ctx = task_context({"url": f"http://localhost:{port}/hook?token=t", "method": "GET"})
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_tcp, serve, port)
            with pytest.raises(HttpTaskFailed, match="not public"):
                await HttpHandler((f"localhost:{port}",), 1000)(ctx)  # type: ignore[arg-type]
            allowed = (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}")
            result = await HttpHandler(allowed, 1000)(ctx)  # type: ignore[arg-type]
            nursery.cancel_scope.cancel()
    assert result["status"] == 200
    [request] = seen
    assert request.startswith(b"GET /hook?token=t HTTP/1.1")
    assert f"host: localhost:{port}".encode() in request.lower()


# A gzip bomb: 50 MB of zeros, about 49 KB on the wire.
BOMB_INFLATED_BYTES = 50_000_000
# Most memory (Python's allocations, traced) one call may take while reading it: a few
# times the kept slice and a network chunk, nowhere near the inflated size.
BOMB_PEAK_BYTES = 8_000_000


async def serve_gzip(port: int, body: bytes, seen: list[bytes], *,
                     task_status=trio.TASK_STATUS_IGNORED) -> None:
    """An endpoint that answers every request with `body`, gzip-compressed."""
    async def serve(stream: trio.SocketStream) -> None:
        request = await read_request(stream)
        if request is None:
            return
        seen.append(request[0])
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n"
                              b"Content-Type: application/json\r\nContent-Length: %d\r\n"
                              b"Connection: close\r\n\r\n%s" % (len(body), body))
        await stream.aclose()

    await trio.serve_tcp(serve, port, host="127.0.0.1", task_status=task_status)


async def test_a_gzip_bomb_fails_the_run_without_being_inflated():
    port = free_port()
    seen: list[bytes] = []
    bomb = gzip.compress(b"\0" * BOMB_INFLATED_BYTES)
    small = gzip.compress(b'{"ok": true}')
    ctx = task_context({"url": f"http://127.0.0.1:{port}/hook", "method": "GET"})
    handler = HttpHandler((f"127.0.0.1:{port}",), 16384)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_gzip, port, small, seen)
            result = await handler(ctx)  # type: ignore[arg-type]
            nursery.cancel_scope.cancel()
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_gzip, port, bomb, seen)
            tracemalloc.start()
            try:
                with pytest.raises(HttpTaskFailed, match="inflates past") as failed:
                    await handler(ctx)  # type: ignore[arg-type]
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            nursery.cancel_scope.cancel()
    # A compressed body within the bound is read as before.
    assert (result["body"], result["truncated"]) == ('{"ok": true}', False)
    assert "16384 bytes" in str(failed.value)
    assert peak < BOMB_PEAK_BYTES, peak
    # Compression is not asked for: only the kept slice of a body is read anyway.
    assert all(b"accept-encoding: identity" in request.lower() for request in seen)


async def serve_once(port: int, status: bytes, body: bytes, *,
                     task_status=trio.TASK_STATUS_IGNORED) -> None:
    """An endpoint that answers every request with `status` and `body`."""
    async def serve(stream: trio.SocketStream) -> None:
        if await read_request(stream) is None:
            return
        await stream.send_all(b"HTTP/1.1 %s\r\nContent-Length: %d\r\nConnection: close"
                              b"\r\n\r\n%s" % (status, len(body), body))
        await stream.aclose()

    await trio.serve_tcp(serve, port, host="127.0.0.1", task_status=task_status)




async def test_a_secret_the_reply_echoes_is_not_left_in_part_by_a_cut():
    """The error quotes 200 characters of the reply and the result keeps
    max_response_bytes of it: a secret across either cut leaves none of itself (the
    reply is scrubbed before the cut, and a truncated reply's last characters are
    checked for a secret's start)."""
    port = free_port()
    token = "tok3n-" + "s" * 30
    url = f"http://127.0.0.1:{port}/hook"
    ctx = task_context({"url": url, "method": "POST", "body": {"t": 1}, "token": token},
                       secret_fields=("token",))
    handler = HttpHandler((f"127.0.0.1:{port}",), 1000)
    across_200 = b"x" * 190 + token.encode() + b" tail"
    across_1000 = b"y" * 990 + token.encode()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_once, port, b"500 Internal Server Error", across_200)
            with pytest.raises(HttpTaskFailed) as failed:
                await handler(ctx)  # type: ignore[arg-type]
            nursery.cancel_scope.cancel()
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_once, port, b"200 OK", across_1000)
            result = await handler(ctx)  # type: ignore[arg-type]
            nursery.cancel_scope.cancel()
    assert "tok3n" not in str(failed.value) and "[secret]" in str(failed.value)
    assert result["truncated"] and result["body"].endswith("[secret]")
    assert "tok3n" not in result["body"]
