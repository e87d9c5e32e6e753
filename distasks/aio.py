"""The one bridge between Trio and the asyncio-only redis-py.

Everything else speaks plain Trio; PostgreSQL needs no bridge (store/pg.py). Each `call`
is one crossing of the bridge, which costs about 300 µs (architecture §1), so callers pass a
whole asyncio coroutine function that does all its I/O for a batch in one go, rather
than crossing per command.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import ParamSpec, TypeVar

import trio_asyncio

P = ParamSpec("P")
T = TypeVar("T")


@asynccontextmanager
async def open_loop() -> AsyncIterator[None]:
    """Run an asyncio event loop on top of the current Trio run for the block's lifetime."""
    async with trio_asyncio.open_loop():
        yield


async def call(fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Await the asyncio coroutine function ``fn(*args, **kwargs)`` from Trio.

    Cancellation of the Trio caller cancels the asyncio task; callers that must not be
    interrupted mid-command (a claim) shield the call and bound it by other means.
    """
    result: T = await trio_asyncio.aio_as_trio(fn)(*args, **kwargs)
    return result
