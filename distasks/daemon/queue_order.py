"""Queue order: which of the queues wanting an executor gets the next free one, as
`worker.queue_order` says: strict (the order of `worker.queues`) or weighted (each by its
`worker.queue_weights`, so that none with work starves). Read from the tunables at each
pick, so a SIGHUP applies at once."""

from __future__ import annotations

from collections.abc import Sequence

from distasks.daemon.tunables import Tunables


class QueueOrder:
    """`pick` for distasks.daemon.slots.Slots.

    Weighted is a smooth weighted round robin over the queues that want a unit now: each
    pick credits every contender its weight and takes the one with the most credit, which
    then pays the contenders' total weight. Over any run of picks each contender gets its
    share within one pick (6:3:1 gives a a b a c a b a a b, not six a in a row), and a
    queue with work is never passed over for longer than total/weight picks."""

    def __init__(self, tunables: Tunables):
        self._tunables = tunables
        self._credit: dict[str, int] = {}

    def pick(self, contenders: Sequence[str]) -> str:
        t = self._tunables
        if t.queue_order == "strict":
            rank = {queue: i for i, queue in enumerate(t.queues)}
            return min(contenders, key=lambda q: (rank.get(q, len(rank)), q))
        total, best = 0, contenders[0]
        for queue in contenders:
            weight = t.queue_weights.weight(queue)
            self._credit[queue] = self._credit.get(queue, 0) + weight
            total += weight
            if self._credit[queue] > self._credit[best]:
                best = queue
        self._credit[best] -= total
        return best
