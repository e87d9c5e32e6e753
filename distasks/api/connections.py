"""Connections a client cannot hold for ever: Hypercorn's Trio server, with limits
(architecture §7).

Hypercorn 0.18 (pinned) serves each connection with `hypercorn.trio.tcp_server.TCPServer`
and has a keep-alive timer, but it lacks what a daemon sharing its file descriptors with
the PostgreSQL and Redis pools needs, so `serve()` runs its connections itself:

- a cap, `http.max_connections`: past it the listener stops accepting, and new
  connections wait in the kernel's backlog until one closes (no descriptor is spent on
  them meanwhile);
- a header deadline, `http.header_timeout_s`: a new connection must send its request
  headers within it, and a kept-alive one must complete them within it once the next
  request began (a slowloris client is dropped);
- the close that answers `Connection: close` or HTTP/1.0, and the keep-alive timer
  (`http.keep_alive_s`), run shielded: Quart-trio cancels a request's task as soon as
  its response is sent, and Hypercorn closes the connection (or starts that timer) in
  that very task, so both were lost and such connections stayed open;
- a request body must arrive within `http.body_timeout_s` of its headers, or the request
  is answered 408 and its connection closed (the lean create route read bodies without
  any deadline);
- a client that reads nothing of its response for SEND_TIMEOUT_S is dropped (Hypercorn
  writes shielded, without a deadline).

It uses three Hypercorn internals (TCPServer, its `_idle_timeout`, the Closed and
Updated events); tests/system/test_connections.py fails if an upgrade changes them.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import hypercorn.config
import trio
from hypercorn.events import Closed, Event, Updated
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState
from hypercorn.utils import wrap_app
from prometheus_client import Gauge

log = logging.getLogger(__name__)

# Longest a connection's close (or the start of its keep-alive timer) may take once
# shielded from the request's cancellation.
CLOSE_TIMEOUT_S = 5.0
# A client that reads nothing of a response for this long is dropped: each
# SEND_CHUNK_BYTES of a write must leave within it (a slow reader is not cut off).
SEND_TIMEOUT_S = 30.0
SEND_CHUNK_BYTES = 64 * 1024
# At most one warning this often while connections wait for a slot.
CAP_WARNING_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class Limits:
    #: most connections served at once; more wait in the listen backlog
    max_connections: int
    #: an idle kept-alive connection is closed after this long
    keep_alive_s: float
    #: request headers must be complete this long after a new connection opens, or after
    #: the first byte of a kept-alive connection's next request
    header_timeout_s: float
    #: a request's body must be complete this long after its headers
    body_timeout_s: float


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LATE_BODY = json.dumps({"error": {
    "code": "request_timeout", "field": None,
    "message": "the request body did not arrive in time"}}, separators=(",", ":")).encode()


def with_body_deadline(app: ASGIApp, body_timeout_s: float) -> ASGIApp:
    """`app` whose requests get their body within `body_timeout_s` of their headers, or
    a 408 that closes the connection (the app then reads a disconnect, and what it
    sends after is dropped). Once the body is in, waiting on `receive` (for a
    disconnect, during a long poll) has no deadline."""

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        deadline = trio.current_time() + body_timeout_s
        body_done = late = answered = False

        async def bounded_receive() -> Message:
            nonlocal body_done, late, answered
            if late:
                return {"type": "http.disconnect"}
            if body_done:
                return await receive()
            with trio.move_on_at(deadline):
                message = await receive()
                body_done = message["type"] != "http.request" or not message.get(
                    "more_body", False)
                return message
            late = True
            if not answered:
                answered = True
                await send({"type": "http.response.start", "status": 408, "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(LATE_BODY)).encode()),
                    (b"connection", b"close"),
                    (b"x-request-id", secrets.token_hex(8).encode())]})
                await send({"type": "http.response.body", "body": LATE_BODY})
            return {"type": "http.disconnect"}

        async def guarded_send(message: Message) -> None:
            nonlocal answered
            if late:
                return  # the 408 answered instead
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        await app(scope, bounded_receive, guarded_send)

    return asgi


class _Stream(trio.abc.HalfCloseableStream):
    """A socket stream that knows whether a request began since it last wrote (for the
    header deadline) and bounds each write."""

    def __init__(self, inner: trio.SocketStream) -> None:
        self._inner = inner
        self.socket = inner.socket  # read by TCPServer for the addresses
        #: bytes received since the last write: a request began when positive
        self.received_since_sent = 0
        self.sent = 0
        self.ended = False
        self._arrived = trio.Event()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        try:
            data = bytes(await self._inner.receive_some(max_bytes))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.ended = True
            raise
        finally:
            self._arrived.set()
            self._arrived = trio.Event()
        self.received_since_sent += len(data)
        self.ended = self.ended or not data
        return data

    async def wait_request_began(self) -> None:
        """Until a byte arrived since the last write, or the peer is gone."""
        while self.received_since_sent == 0 and not self.ended:
            await self._arrived.wait()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        for start in range(0, len(view), SEND_CHUNK_BYTES):
            with trio.move_on_after(SEND_TIMEOUT_S) as scope:
                await self._inner.send_all(view[start:start + SEND_CHUNK_BYTES])
            if scope.cancelled_caught:
                raise trio.BrokenResourceError("the client read nothing for "
                                               f"{SEND_TIMEOUT_S:g}s")
        if data:  # Hypercorn also writes b"" (the end of a Content-Length response)
            self.sent += len(data)
            self.received_since_sent = 0

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._inner.send_eof()

    async def aclose(self) -> None:
        await self._inner.aclose()


class _Connection(TCPServer):
    """Hypercorn's connection, with the header deadline and the shielded close."""

    def __init__(self, app: AppWrapper, config: hypercorn.config.Config,
                 context: WorkerContext, state: ConnectionState, stream: _Stream,
                 limits: Limits, idle: set[_Connection]) -> None:
        super().__init__(app, config, context, state, stream)  # type: ignore[arg-type]
        self._guarded = stream
        self._limits = limits
        self._idle = idle
        #: the idle timer's wait, cancelled to close the connection at once
        self.waiting = trio.CancelScope()

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, Closed | Updated):
            with trio.move_on_after(CLOSE_TIMEOUT_S) as scope:
                scope.shield = True
                await super().protocol_send(event)
        else:
            await super().protocol_send(event)

    async def _idle_timeout(self) -> None:
        """Runs while no request is in progress (Hypercorn starts it when a connection
        opens and after each response, and cancels it once a request's headers are
        complete): closes the connection at the deadlines, and at shutdown (`serve`
        cancels the waits of the connections in `idle`)."""
        with trio.CancelScope() as self.waiting:
            if not self.context.terminated.is_set():
                self._idle.add(self)
                try:
                    await self._wait_deadline()
                finally:
                    self._idle.discard(self)
        with trio.CancelScope(shield=True):
            await self._initiate_server_close()

    async def _wait_deadline(self) -> None:
        stream, limits = self._guarded, self._limits
        with trio.move_on_after(limits.header_timeout_s if stream.sent == 0
                                else limits.keep_alive_s):
            await stream.wait_request_began()
        if stream.received_since_sent > 0 and not stream.ended:
            await trio.sleep(limits.header_timeout_s)  # cancelled by complete headers


class _Listener(trio.abc.Listener[trio.SocketStream]):
    """Accepts only while `slots` has one; the connection's handler gives it back."""

    def __init__(self, inner: trio.SocketListener, slots: trio.Semaphore) -> None:
        self._inner = inner
        self._slots = slots
        self._warned_at = -math.inf

    async def accept(self) -> trio.SocketStream:
        if self._slots.value == 0 and trio.current_time() >= (
                self._warned_at + CAP_WARNING_EVERY_S):
            self._warned_at = trio.current_time()
            log.warning("every connection slot is taken (http.max_connections = %d): new "
                        "connections wait until one closes", self._slots.max_value or 0,
                        extra={"event": "http_connections_full"})
        await self._slots.acquire()
        try:
            return await self._inner.accept()
        except BaseException:
            self._slots.release()
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()


async def serve(app: ASGIApp, config: hypercorn.config.Config, limits: Limits, *,
                shutdown: trio.Event, gauge: Gauge | None = None,
                task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the ASGI `app` on `config.bind` until `shutdown` is set; then stop accepting,
    close idle connections and give requests in flight `config.graceful_timeout` before
    they are cancelled. `task_status.started()` with the addresses once listening.
    `gauge`, when given, reads the connections served at each scrape."""
    wrapped = wrap_app(with_body_deadline(app, limits.body_timeout_s),  # type: ignore[arg-type]
                       config.wsgi_max_body_size, "asgi")
    state: dict[str, Any] = {}  # what the app's lifespan startup shares with requests
    lifespan = Lifespan(wrapped, config, state)
    context = WorkerContext(None)
    slots = trio.Semaphore(limits.max_connections, max_value=limits.max_connections)
    idle: set[_Connection] = set()  # connections between requests, closed at shutdown
    if gauge is not None:
        gauge.set_function(lambda: limits.max_connections - slots.value)

    async def handle(stream: trio.SocketStream) -> None:
        try:
            await _Connection(wrapped, config, context, ConnectionState(state.copy()),
                              _Stream(stream), limits, idle).run()
        finally:
            slots.release()

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as connections:
            sockets = config.create_sockets().insecure_sockets
            listeners = []
            for sock in sockets:
                sock.listen(config.backlog)
                listeners.append(_Listener(
                    trio.SocketListener(trio.socket.from_stdlib_socket(sock)), slots))
            addresses = ["http://{}:{}".format(*sock.getsockname()[:2]) for sock in sockets]
            task_status.started(addresses)
            async with trio.open_nursery() as accepting:
                accepting.start_soon(partial(trio.serve_listeners, handle, listeners,
                                             handler_nursery=connections))
                await shutdown.wait()
                accepting.cancel_scope.cancel()
            for listener in listeners:
                await listener.aclose()  # refused from now on, not left in the backlog
            await context.terminated.set()
            for connection in list(idle):
                connection.waiting.cancel()
            connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
