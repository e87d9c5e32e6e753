"""distasks.daemon.sdnotify: the exact datagrams, received on real unix datagram sockets.

Each test binds a socket (a path under a short temporary directory, or an abstract name),
points NOTIFY_SOCKET at it as systemd would, and reads what arrived.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from distasks.daemon import sdnotify

# Receive timeout: a datagram sent before recv() is already queued, so this only bounds
# a test that would otherwise hang on a missing message.
RECV_TIMEOUT_S = 2.0


def _bind(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(RECV_TIMEOUT_S)
    return sock


@pytest.fixture
def path_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """systemd's usual form: NOTIFY_SOCKET=/run/systemd/notify."""
    # pytest's tmp_path can exceed the 107-byte limit of a unix socket path.
    with tempfile.TemporaryDirectory(prefix="sdn-") as tmp:
        path = os.path.join(tmp, "notify")
        with _bind(path) as sock:
            monkeypatch.setenv("NOTIFY_SOCKET", path)
            yield sock


@pytest.fixture
def abstract_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """The abstract-namespace form: NOTIFY_SOCKET=@name (a leading NUL on the wire)."""
    name = f"distasks-test-{uuid.uuid4().hex}"
    with _bind("\0" + name) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        yield sock


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest) -> socket.socket:
    sock: socket.socket = request.getfixturevalue(f"{request.param}_socket")
    return sock


@pytest.mark.parametrize(("send", "datagram"), [
    (sdnotify.ready, b"READY=1"),
    (sdnotify.stopping, b"STOPPING=1"),
    (sdnotify.watchdog, b"WATCHDOG=1"),
    (lambda: sdnotify.status("draining 3 runs"), b"STATUS=draining 3 runs"),
    (lambda: sdnotify.notify("READY=1\nSTATUS=up"), b"READY=1\nSTATUS=up"),
])
def test_each_message_arrives_as_one_exact_datagram(
        notify_socket: socket.socket, send: Callable[[], bool], datagram: bytes):
    assert send() is True

    assert notify_socket.recv(4096) == datagram


def test_reloading_carries_the_monotonic_clock_in_microseconds(notify_socket: socket.socket):
    before_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert sdnotify.reloading() is True
    after_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000

    first, second = notify_socket.recv(4096).decode().split("\n")
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC"
    assert before_us <= int(value) <= after_us


def test_a_multiline_status_stays_one_assignment(notify_socket: socket.socket):
    sdnotify.status("postgres down\nretrying")

    assert notify_socket.recv(4096) == b"STATUS=postgres down retrying"


def test_messages_arrive_in_order(notify_socket: socket.socket):
    sdnotify.reloading()
    sdnotify.ready()
    sdnotify.stopping()

    received = [notify_socket.recv(4096).split(b"\n")[0] for _ in range(3)]
    assert received == [b"RELOADING=1", b"READY=1", b"STOPPING=1"]


def test_without_notify_socket_every_call_is_a_no_op(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)

    assert sdnotify.ready() is False
    assert sdnotify.watchdog() is False
    assert sdnotify.reloading() is False
    assert sdnotify.stopping() is False
    assert sdnotify.status("x") is False


@pytest.mark.parametrize("address", ["", "relative/notify", "vsock:2:1234"])
def test_an_unusable_address_is_not_sent_to(monkeypatch: pytest.MonkeyPatch, address: str):
    monkeypatch.setenv("NOTIFY_SOCKET", address)

    assert sdnotify.ready() is False


def test_a_socket_nobody_listens_on_returns_false_and_warns(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    with tempfile.TemporaryDirectory(prefix="sdn-") as tmp:
        monkeypatch.setenv("NOTIFY_SOCKET", os.path.join(tmp, "gone"))

        assert sdnotify.watchdog() is False

    assert [r.event for r in caplog.records] == ["sdnotify_failed"]  # type: ignore[attr-defined]


def test_a_full_receive_queue_does_not_block_the_caller(path_socket: socket.socket):
    # Nobody reads: the sender must fail fast (MSG_DONTWAIT), not hang the Trio loop.
    deadline = time.monotonic() + 10
    while sdnotify.status("x" * 1024):
        assert time.monotonic() < deadline, "the receive queue never filled up"

    assert path_socket.recv(4096).startswith(b"STATUS=")


# --- the watchdog interval ---------------------------------------------------------------


@pytest.mark.parametrize(("env", "interval_s"), [
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "{pid}"}, 15.0),
    ({"WATCHDOG_USEC": "1000"}, 0.0005),
    ({}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "-5"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "me"}, None),
])
def test_watchdog_interval_is_half_the_period_for_this_process(
        monkeypatch: pytest.MonkeyPatch, env: dict[str, str], interval_s: float | None):
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(pid=os.getpid()))

    assert sdnotify.watchdog_interval_s() == interval_s
