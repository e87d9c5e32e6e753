"""Connections a client cannot hold for ever: Hypercorn's Trio server, with limits
(architecture §7).

Hypercorn 0.18 (pinned) serves each connection with `hypercorn.trio.tcp_server.TCPServer`
and has a keep-alive timer, but it lacks what a daemon sharing its file descriptors with
the PostgreSQL and Redis pools needs, so `serve()` runs its connections itself:

- a cap, `http.max_connections`: at it, a client arriving (waiting in the kernel's
  backlog) makes the listener close the connection idle the longest between requests;
  when every connection has a request in progress, new ones wait in the backlog until
  one closes (no descriptor is spent on them meanwhile), so idle sockets never lock
  working clients out;
- a header deadline, `http.header_timeout_s`: a new connection must send its request
  headers within it, and a kept-alive one must complete them within it once the next
  request began (a slowloris client is dropped);
- an idle connection is closed after `http.keep_alive_s` once one of its requests
  presented valid credentials (`note_authenticated`), after the shorter
  `http.unauthenticated_keep_alive_s` until then;
- the close that answers `Connection: close` or HTTP/1.0, and the keep-alive timer,
  run shielded: Quart-trio cancels a request's task as soon as its response is sent,
  and Hypercorn closes the connection (or starts that timer) in that very task, so both
  were lost and such connections stayed open;
- a request body must arrive within `http.body_timeout_s` of its headers, or the request
  is answered 408 and its connection closed (the lean create route read bodies without
  any deadline);
- a client that reads nothing of its response for SEND_TIMEOUT_S is dropped (Hypercorn
  writes shielded, without a deadline);
- HTTP/2 over cleartext (h2c) is off: an `Upgrade: h2c` is ignored (answered in
  HTTP/1.1) and the HTTP/2 preface answered with GOAWAY HTTP_1_1_REQUIRED. The limits
  above are written for one request at a time per connection, and a proxy in front
  speaks HTTP/1.1 to its upstream anyway.

The sockets are bound by `bind` before the daemon writes anything, so a port in use stops
the start with one line. It uses Hypercorn internals (TCPServer, its `idle_task` and
`_initiate_server_close`, the Closed and Updated events, and for h2c `H11Protocol._check_protocol` and
`ProtocolWrapper.handle`); tests/system/test_connections.py fails if an upgrade changes
them.
"""

from __future__ import annotations

import array
import errno
import fcntl
import json
import logging
import math
import secrets
import socket
import termios
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import hypercorn.config
import trio
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.h11 import H2ProtocolAssumedError, H11Protocol
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState
from hypercorn.utils import wrap_app
from prometheus_client import Gauge

from distasks.domain.errors import CannotListen

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
# The key of a connection's `_Peer` in its ASGI state (scope["state"]; Hypercorn gives each
# request a shallow copy of the connection's, so the `_Peer` itself is shared).
PEER = "distasks.peer"


def _h2_frame(kind: int, payload: bytes) -> bytes:
    """One HTTP/2 frame (RFC 9113 §4.1) on stream 0, without flags."""
    return len(payload).to_bytes(3, "big") + bytes([kind, 0]) + bytes(4) + payload


# What a client opening with the HTTP/2 preface gets: the server's own preface (an empty
# SETTINGS frame, 0x4), then GOAWAY (0x7) for last stream 0 with HTTP_1_1_REQUIRED (0xd)
# and a reason a human can read in the client's debug output.
HTTP2_REFUSAL = _h2_frame(0x4, b"") + _h2_frame(
    0x7, bytes(4) + (0xD).to_bytes(4, "big") + b"h2c is off here: use HTTP/1.1")


@dataclass(frozen=True, slots=True)
class Limits:
    #: most connections served at once; more wait in the listen backlog
    max_connections: int
    #: an idle kept-alive connection is closed after this long
    keep_alive_s: float
    #: ... until one of its requests presented valid credentials: after this long (the
    #: shorter of the two applies)
    unauthenticated_keep_alive_s: float
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


def note_authenticated(scope: Mapping[str, object]) -> None:
    """The connection that carried this request presented valid credentials: it keeps
    http.keep_alive_s between requests from now on. Called by access checks, once the
    principal is known; cheap (a lookup and a flag)."""
    state = scope.get("state")
    if isinstance(state, dict) and (peer := state.get(PEER)) is not None:
        peer.authenticated = True


class _Peer:
    """What a connection's requests showed of the client, for the connection, and the
    bytes of a response held back to leave in one write."""

    __slots__ = ("authenticated", "held", "write")

    def __init__(self) -> None:
        #: one of its requests presented valid credentials
        self.authenticated = False
        #: the response's bytes so far, while it is held (from its start to its body)
        self.held: list[bytes] | None = None
        #: writes bytes on the connection (set by the connection)
        self.write: Callable[[bytes], Awaitable[None]] | None = None

    async def release(self) -> None:
        """Write what was held, in one write, and hold no more."""
        held, self.held = self.held, None
        if held and self.write is not None:
            await self.write(b"".join(held))


def with_body_deadline(app: ASGIApp, body_timeout_s: float) -> ASGIApp:
    """`app` whose requests get their body within `body_timeout_s` of their headers, or
    a 408 that closes the connection (the app then reads a disconnect, and what it
    sends after is dropped). Once the body is in, waiting on `receive` (for a
    disconnect, during a long poll) has no deadline.

    A response's head is held until its body (each body message of a streamed one) is
    sent, so that Hypercorn's three writes (head, body, and an empty end) leave as one."""

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        state = scope.get("state")
        peer: _Peer | None = state.get(PEER) if isinstance(state, dict) else None
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
            starts = message["type"] == "http.response.start"
            answered = answered or starts
            if peer is None:
                await send(message)
                return
            if starts:
                peer.held = []
            await send(message)
            if message["type"] == "http.response.body":
                await peer.release()

        await app(scope, bounded_receive, guarded_send)

    return asgi


class _Stream(trio.abc.HalfCloseableStream):
    """A socket stream that knows whether a request began since it last wrote (for the
    header deadline), tells its connection of every read, and bounds each write."""

    def __init__(self, inner: trio.SocketStream) -> None:
        self._inner = inner
        self.socket = inner.socket  # read by TCPServer for the addresses
        #: bytes received since the last write: a request began when positive
        self.received_since_sent = 0
        self.sent = 0
        self.ended = False
        #: called after every read, data or not (set by the connection)
        self.on_read: Callable[[], None] = lambda: None

    def unread(self) -> bool:
        """Bytes from the peer wait in the kernel, not yet read (FIONREAD)."""
        count = array.array("i", [0])
        try:
            fcntl.ioctl(self.socket.fileno(), termios.FIONREAD, count)
        except OSError:
            return False  # closed: nothing a request could need
        return count[0] > 0

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        try:
            data = bytes(await self._inner.receive_some(max_bytes))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.ended = True
            raise
        finally:
            self.on_read()
        self.received_since_sent += len(data)
        self.ended = self.ended or not data
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if data:  # Hypercorn also writes b"" (the end of a Content-Length response)
            # Counted before the write, not after: the client may read this response and
            # send its next request's first bytes, and the reader take them, before this
            # task resumes from the write; reset after it, those bytes would be forgotten
            # and a connection receiving its headers taken for an idle one.
            self.sent += len(data)
            self.received_since_sent = 0
        view = memoryview(data)
        for start in range(0, len(view), SEND_CHUNK_BYTES):
            with trio.move_on_after(SEND_TIMEOUT_S) as scope:
                await self._inner.send_all(view[start:start + SEND_CHUNK_BYTES])
            if scope.cancelled_caught:
                raise trio.BrokenResourceError("the client read nothing for "
                                               f"{SEND_TIMEOUT_S:g}s")

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._inner.send_eof()

    async def aclose(self) -> None:
        await self._inner.aclose()


class _Room:
    """The connection slots (http.max_connections) and the connections idle between
    requests, longest idle first: what a listener closes to make room for a client."""

    def __init__(self, max_connections: int) -> None:
        self.slots = trio.Semaphore(max_connections, max_value=max_connections)
        #: connections between requests, in the order they became so (a dict keeps its
        #: insertion order, and a connection leaves it whenever a request runs)
        self.idle: dict[_Connection, None] = {}
        self._changed: trio.Event | None = None

    def became_idle(self, connection: _Connection) -> None:
        self.idle[connection] = None
        self._wake()

    def became_busy(self, connection: _Connection) -> None:
        self.idle.pop(connection, None)

    def release(self, connection: _Connection | None = None) -> None:
        """A connection closed (or, without one, was never made): its slot is free, and
        it is no longer a candidate to close."""
        if connection is not None:
            self.idle.pop(connection, None)
        self.slots.release()
        self._wake()

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def wait_changed(self) -> None:
        """Until a slot frees or a connection becomes idle."""
        if self._changed is None:
            self._changed = trio.Event()
        await self._changed.wait()

    def close_longest_idle(self) -> bool:
        """Close the connection idle the longest between requests (one receiving its
        headers is at work); False when there is none. Its slot frees once it has
        closed."""
        for connection in self.idle:
            if connection.between_requests():
                del self.idle[connection]
                connection.close_idle()
                return True
        return False


class _Connection(TCPServer):
    """Hypercorn's connection, with the header deadline, the idle timeouts, the shielded
    close and the held response head.

    Hypercorn starts a task for the idle timer after every response and cancels it when
    the next request's headers are complete: two tasks and a cancellation per request.
    Here one watcher per connection, `watch`, sleeps on `_poked` instead, woken by what
    changes its decision (a read, the connection going idle or busy, a close asked for),
    so a request costs neither a task nor an exception (bench/producer.py)."""

    def __init__(self, app: AppWrapper, config: hypercorn.config.Config,
                 context: WorkerContext, state: ConnectionState, stream: _Stream,
                 limits: Limits, room: _Room) -> None:
        super().__init__(app, config, context, state, stream)  # type: ignore[arg-type]
        self._guarded = stream
        self._limits = limits
        self._room = room
        self._peer: _Peer = state[PEER]
        self._peer.write = self._write
        self.idle_task = _IdleSwitch(self)  # type: ignore[assignment]
        #: between requests (from a response's end to the next request's headers)
        self.idle = False
        #: the watcher is running
        self.watching = False
        #: asked to close as soon as it is idle
        self._closing = False
        #: Hypercorn is closing it (a Closed event): nothing left for the watcher to do
        self._closed = False
        self._poked = trio.Event()
        stream.on_read = self.poke

    def poke(self) -> None:
        """Wake the watcher to look again."""
        self._poked.set()

    def close_idle(self) -> None:
        """Close the connection now if it is idle, else once it is (the room makes
        space, or the daemon stops)."""
        self._closing = True
        self.poke()

    def between_requests(self) -> bool:
        """Kept alive after a response, and no byte of the next request yet, not even
        one the kernel holds unread (a new connection that has sent nothing is left to
        http.header_timeout_s: it may be a client about to send its first request)."""
        stream = self._guarded
        return stream.sent > 0 and stream.received_since_sent == 0 and not stream.unread()

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, RawData) and self._peer.held is not None:
            self._peer.held.append(event.data)  # a response's head: written with its body
            return
        if self._peer.held is not None:
            await self._peer.release()  # before a close or the idle timer
        if isinstance(event, Closed):
            self._closed = True
            self.poke()
        if isinstance(event, Closed | Updated):
            with trio.move_on_after(CLOSE_TIMEOUT_S) as scope:
                scope.shield = True
                await super().protocol_send(event)
        else:
            await super().protocol_send(event)

    async def _write(self, data: bytes) -> None:
        await super().protocol_send(RawData(data=data))

    async def _wait_poked(self, deadline: float = math.inf) -> bool:
        """Until poked (True) or `deadline` (False)."""
        with trio.move_on_at(deadline):
            await self._poked.wait()
            self._poked = trio.Event()
            return True
        return False

    async def watch(self) -> None:
        """The connection's idle timer, for its whole life: runs each idle period, and
        ends once the connection is closed or its peer gone."""
        stream = self._guarded
        try:
            while True:
                while not self.idle:
                    if stream.ended or self._closing or self._closed:
                        return
                    await self._wait_poked()
                if not await self._idle_period():
                    if self._closed:
                        return  # Hypercorn closes it already
                    with trio.CancelScope(shield=True):
                        await self._initiate_server_close()
                    return
        finally:
            self.watching = False

    async def _idle_period(self) -> bool:
        """One wait between requests: True when the next request's headers completed
        in time, False when the connection is to close (a deadline passed, the peer
        went, the room or a shutdown asked for it)."""
        if self.context.terminated.is_set() or self._closing or self._closed:
            return False
        self._room.became_idle(self)
        try:
            return await self._wait_next_request()
        finally:
            self._room.became_busy(self)

    def _ending(self) -> bool:
        return self._guarded.ended or self._closing or self._closed

    async def _wait_next_request(self) -> bool:
        stream, limits = self._guarded, self._limits
        if stream.sent == 0:
            idle_s = limits.header_timeout_s
        elif self._peer.authenticated:
            idle_s = limits.keep_alive_s
        else:
            idle_s = min(limits.unauthenticated_keep_alive_s, limits.keep_alive_s)
        deadline = trio.current_time() + idle_s
        while stream.received_since_sent == 0:
            if self._ending() or not await self._wait_poked(deadline):
                return False
        # A request began: its headers must complete within the header deadline.
        deadline = trio.current_time() + limits.header_timeout_s
        while self.idle:
            if self._ending() or not await self._wait_poked(deadline):
                return False
        return True


class _IdleSwitch:
    """Stands in for Hypercorn's idle task (`TCPServer.idle_task`): `restart` marks the
    connection idle (starting its watcher the first time), `stop` marks it busy."""

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection

    async def restart(self, task_group: Any, action: object) -> None:
        c = self._connection
        c.idle = True
        c.poke()
        if not c.watching:
            c.watching = True
            task_group.spawn(c.watch)

    async def stop(self) -> None:
        self._connection.idle = False
        self._connection.poke()


class _Listener(trio.abc.Listener[trio.SocketStream]):
    """Accepts only with a slot of `room`; the connection's handler gives it back."""

    def __init__(self, inner: trio.SocketListener, room: _Room) -> None:
        self._inner = inner
        self._room = room
        self._warned_at = -math.inf

    async def accept(self) -> trio.SocketStream:
        await self._take_slot()
        try:
            return await self._inner.accept()
        except BaseException:
            self._room.release()
            raise

    async def _take_slot(self) -> None:
        """A free slot; at the cap, once a client waits in the backlog, the slot of the
        connection idle the longest (closed for it); when none is idle, the first slot
        that frees. Nothing is closed before a client actually waits."""
        room = self._room
        client_waits = False
        while True:
            try:
                room.slots.acquire_nowait()
                return
            except trio.WouldBlock:
                pass
            if not client_waits:
                await trio.lowlevel.wait_readable(self._inner.socket)
                client_waits = True  # a slot may have freed meanwhile: try again first
                continue
            if room.close_longest_idle():
                await room.slots.acquire()
                return
            if trio.current_time() >= self._warned_at + CAP_WARNING_EVERY_S:
                self._warned_at = trio.current_time()
                log.warning("every connection slot is taken by a request in progress "
                            "(http.max_connections = %d): new connections wait until one "
                            "closes or goes idle", room.slots.max_value or 0,
                            extra={"event": "http_connections_full"})
            await room.wait_changed()

    async def aclose(self) -> None:
        await self._inner.aclose()


def bind(host: str, port: int, *, reuse_port: bool = False,
         instance_port: int = 0) -> list[socket.socket]:
    """The API's sockets, bound to `host`:`port` (http.host, http.port) but not listening
    yet: until `serve` listens, clients are refused rather than queued. Raises
    CannotListen, naming the address and the setting to change; the daemon calls it
    before it writes anything, so a port in use costs one line and nothing else.

    `reuse_port` (http.reuse_port) sets SO_REUSEPORT before the bind: on Linux, sockets
    of the same user that all set it may bind one address, and the kernel spreads new
    connections across those listening (by a hash of the client's address and port). A
    port held by a socket without it is still in use (CannotListen). Where the platform
    has no SO_REUSEPORT (Windows) it is CannotListen naming http.reuse_port; the BSDs and
    macOS have the option but need not spread connections (docs/deployment.md).

    `instance_port` (http.instance_port), unless 0, adds a socket on `host` that is this
    daemon's alone (never shared)."""
    if reuse_port and not hasattr(socket, "SO_REUSEPORT"):
        raise CannotListen(_address(host, port), "SO_REUSEPORT is not available here",
                           "http.reuse_port")
    sockets = [_bind_one(host, port, reuse_port=reuse_port, key="http.port / HTTP_PORT")]
    if instance_port:
        try:
            sockets.append(_bind_one(host, instance_port, reuse_port=False,
                                     key="http.instance_port"))
        except CannotListen:
            sockets[0].close()
            raise
    return sockets


def _bind_one(host: str, port: int, *, reuse_port: bool, key: str) -> socket.socket:
    bare = host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in bare else socket.AF_INET,
                         socket.SOCK_STREAM)
    try:
        # As Hypercorn's Config.create_sockets does, which sets SO_REUSEPORT only when it
        # runs several worker processes of its own.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((bare, port))
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise _cannot_listen(host, port, e, key) from None
    return sock


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _cannot_listen(host: str, port: int, e: OSError,
                   key: str = "http.port / HTTP_PORT") -> CannotListen:
    address = _address(host, port)
    reason = (e.strerror or str(e)).rstrip(".")
    reason = reason[:1].lower() + reason[1:]
    # The host is at fault when it is not this machine's (or no name resolves it).
    wrong_host = isinstance(e, socket.gaierror) or e.errno == errno.EADDRNOTAVAIL
    return CannotListen(address, reason, "http.host" if wrong_host else key)


async def _no_h2c_upgrade(self: H11Protocol, event: Any) -> None:
    """H11Protocol._check_protocol without the h2c upgrade: an `Upgrade: h2c` header is
    ignored, as RFC 9110 §7.8 lets a server do, and the request answered in HTTP/1.1.
    The HTTP/2 preface (`PRI * HTTP/2.0`) still raises, for `_refuse_http2`."""
    if event.method == b"PRI" and event.target == b"*" and event.http_version == b"2.0":
        raise H2ProtocolAssumedError(b"")


async def _refuse_http2(self: ProtocolWrapper, event: Event) -> None:
    """ProtocolWrapper.handle without the switch to HTTP/2: a client that opens with the
    HTTP/2 preface gets HTTP2_REFUSAL and the connection closes."""
    try:
        await self.protocol.handle(event)
    except H2ProtocolAssumedError:
        await self.send(RawData(data=HTTP2_REFUSAL))
        await self.send(Closed())


def _serve_http1_only() -> None:
    """Turn h2c off in Hypercorn's protocol classes; idempotent."""
    H11Protocol._check_protocol = _no_h2c_upgrade  # type: ignore[method-assign]
    ProtocolWrapper.handle = _refuse_http2  # type: ignore[method-assign]


async def serve(app: ASGIApp, config: hypercorn.config.Config, limits: Limits, *,
                sockets: list[socket.socket], shutdown: trio.Event,
                gauge: Gauge | None = None,
                task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the ASGI `app` on `sockets` (from `bind`) until `shutdown` is set; then stop
    accepting, close idle connections and give requests in flight
    `config.graceful_timeout` before they are cancelled. `task_status.started()` with the
    addresses once listening. `gauge`, when given, reads the connections served at each
    scrape. CannotListen if a socket cannot listen (another process took the port
    between `bind` and now)."""
    _serve_http1_only()
    wrapped = wrap_app(with_body_deadline(app, limits.body_timeout_s),  # type: ignore[arg-type]
                       config.wsgi_max_body_size, "asgi")
    state: dict[str, Any] = {}  # what the app's lifespan startup shares with requests
    lifespan = Lifespan(wrapped, config, state)
    context = WorkerContext(None)
    room = _Room(limits.max_connections)
    if gauge is not None:
        gauge.set_function(lambda: limits.max_connections - room.slots.value)

    async def handle(stream: trio.SocketStream) -> None:
        connection = _Connection(wrapped, config, context,
                                 ConnectionState({**state, PEER: _Peer()}), _Stream(stream),
                                 limits, room)
        try:
            await connection.run()
        finally:
            room.release(connection)

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as connections:
            listeners = []
            for sock in sockets:
                try:
                    sock.listen(config.backlog)
                except OSError as e:
                    host, port = sock.getsockname()[:2]
                    raise _cannot_listen(host, port, e) from None
                listeners.append(_Listener(
                    trio.SocketListener(trio.socket.from_stdlib_socket(sock)), room))
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
            for connection in list(room.idle):
                connection.close_idle()
            connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
