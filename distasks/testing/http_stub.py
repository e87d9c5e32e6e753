"""A request read off a raw TCP stream, for the small HTTP endpoints tests stand up to
be called by the `http` handler (a real socket, not a mock of httpx)."""

from __future__ import annotations

import trio


async def read_request(stream: trio.abc.ReceiveStream) -> tuple[bytes, bytes] | None:
    """(head, body) of one HTTP/1.1 request, the body as long as its Content-Length; None
    if the peer closed first."""
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return None
        request += chunk
    head, _, body = request.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        body += await stream.receive_some(65536)
    return head, body
