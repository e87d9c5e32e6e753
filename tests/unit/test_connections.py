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
