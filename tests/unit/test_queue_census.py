"""The queue census: the cap per tenant at create, from a copy re-read at most once a
second, and only for a name it does not know."""

from __future__ import annotations

import pytest

from distasks.daemon.queue_census import REFRESH_S, QueueCensus
from distasks.domain.errors import TooManyQueues


class Table:
    """The queues table as `load` reads it, counting the reads."""

    def __init__(self, *names: str) -> None:
        self.names = list(names)
        self.reads = 0

    async def load(self) -> list[str]:
        self.reads += 1
        return list(self.names)


async def test_known_queues_cost_no_read_and_new_ones_fill_the_cap_per_tenant():
    now = [100.0]
    table = Table("a", "acme/a")
    census = QueueCensus(table.load, max_queues=2, clock=lambda: now[0])
    await census.admit(["a", "b"])  # b: the default tenant's second queue
    assert table.reads == 1
    await census.admit(["a", "b", "acme/a"])
    assert table.reads == 1
    with pytest.raises(TooManyQueues) as refused:
        await census.admit(["a", "c"])
    assert (refused.value.index, refused.value.field, refused.value.status) == (
        1, "queue_name", 409)
    await census.admit(["acme/b"])  # another tenant has its own room
    with pytest.raises(TooManyQueues):
        await census.admit(["acme/c"])
    assert table.reads == 1  # refusals within REFRESH_S are answered from the copy


async def test_a_deleted_queue_makes_room_here_at_once_and_elsewhere_after_a_refresh():
    now = [100.0]
    table = Table("a", "b")
    here = QueueCensus(table.load, max_queues=2, clock=lambda: now[0])
    elsewhere = QueueCensus(table.load, max_queues=2, clock=lambda: now[0])
    await here.admit(["a"])
    await elsewhere.admit(["a"])
    table.names.remove("b")
    here.forget("b")
    await here.admit(["c"])
    with pytest.raises(TooManyQueues):
        await elsewhere.admit(["c"])
    now[0] += REFRESH_S
    await elsewhere.admit(["c"])
