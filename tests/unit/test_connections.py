"""api/connections.py's stream: a client that reads nothing of a response is dropped, a
slow reader is not (on Trio's mock clock); `bind` names the address and the setting."""

from __future__ import annotations

import errno
import socket

import pytest
import trio
import trio.testing

from distasks.api import connections
from distasks.domain.errors import CannotListen

RESPONSE = b"x" * (3 * connections.SEND_CHUNK_BYTES + 10)


def guarded() -> tuple[connections._Stream, trio.StapledStream]:
    ours, theirs = trio.testing.lockstep_stream_pair()  # a write waits for the reader
    ours.socket = None  # type: ignore[attr-defined]
    return connections._Stream(ours), theirs  # type: ignore[arg-type]


async def test_a_client_reading_nothing_of_a_response_is_dropped(autojump_clock):
    stream, _ = guarded()
    with pytest.raises(trio.BrokenResourceError):
        await stream.send_all(RESPONSE)
    assert trio.current_time() == pytest.approx(connections.SEND_TIMEOUT_S)


async def test_a_slow_reader_gets_the_whole_response(autojump_clock):
    stream, theirs = guarded()
    received = bytearray()

    async def read_slowly() -> None:
        while len(received) < len(RESPONSE):
            await trio.sleep(connections.SEND_TIMEOUT_S * 0.9)
            received.extend(await theirs.receive_some(connections.SEND_CHUNK_BYTES))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_slowly)
        await stream.send_all(RESPONSE)
    assert bytes(received) == RESPONSE
    assert trio.current_time() > 2 * connections.SEND_TIMEOUT_S


def test_bind_names_the_address_and_the_setting_to_change():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(CannotListen) as in_use:
            connections.bind("127.0.0.1", port)
    assert str(in_use.value) == (f"cannot listen on 127.0.0.1:{port}: address already in "
                                 "use (http.port / HTTP_PORT)")
    foreign = connections._cannot_listen("::1", 8080, OSError(
        errno.EADDRNOTAVAIL, "Cannot assign requested address"))
    assert str(foreign) == ("cannot listen on [::1]:8080: cannot assign requested address "
                            "(http.host)")


def test_bind_with_reuse_port_shares_the_port_with_others_that_set_it():
    first = connections.bind("127.0.0.1", 0, reuse_port=True)
    port = first[0].getsockname()[1]
    try:
        first[0].listen()
        second = connections.bind("127.0.0.1", port, reuse_port=True)
        for sock in second:
            sock.close()
        # A daemon without it still finds the port in use, in one line.
        with pytest.raises(CannotListen) as in_use:
            connections.bind("127.0.0.1", port)
    finally:
        for sock in first:
            sock.close()
    assert str(in_use.value) == (f"cannot listen on 127.0.0.1:{port}: address already in "
                                 "use (http.port / HTTP_PORT)")


def test_reuse_port_does_not_share_a_port_held_by_a_socket_without_it():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(CannotListen) as in_use:
            connections.bind("127.0.0.1", port, reuse_port=True)
    assert str(in_use.value) == (f"cannot listen on 127.0.0.1:{port}: address already in "
                                 "use (http.port / HTTP_PORT)")


def test_an_instance_port_in_use_is_named_and_leaves_the_shared_port_free():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        instance_port = taken.getsockname()[1]
        with pytest.raises(CannotListen) as in_use:
            connections.bind("127.0.0.1", 0, reuse_port=True, instance_port=instance_port)
    assert str(in_use.value) == (f"cannot listen on 127.0.0.1:{instance_port}: address "
                                 "already in use (http.instance_port)")

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        instance_port = free.getsockname()[1]
    shared, own = connections.bind("127.0.0.1", 0, reuse_port=True,
                                   instance_port=instance_port)
    with shared, own:
        assert own.getsockname() == ("127.0.0.1", instance_port)
        assert own.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
        assert shared.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0
