"""distasks.daemon.queue_order: strict takes the configured order, weighted shares by
weight among the queues that want an executor, and no queue with work starves."""

from __future__ import annotations

from collections import Counter

from distasks.config import QueueWeights
from distasks.daemon.queue_order import QueueOrder
from distasks.daemon.tunables import Tunables
from distasks.domain.retry import RetryPolicy


def tunables(order: str, queues: tuple[str, ...], **weights: int) -> Tunables:
    return Tunables(queues=queues, concurrency=1, retry=RetryPolicy(1, 1, 0), log_level="INFO",
                    queue_order=order, queue_weights=QueueWeights(sorted(weights.items())))


def test_strict_takes_the_first_configured_queue_that_wants_one():
    o = QueueOrder(tunables("strict", ("critical", "default", "low")))
    assert o.pick(["default", "low", "critical"]) == "critical"
    assert o.pick(["default", "low"]) == "default"
    assert o.pick(["low"]) == "low"


def test_weighted_shares_by_weight_and_interleaves():
    o = QueueOrder(tunables("weighted", ("critical", "default", "low"),
                            critical=6, default=3, low=1))
    picks = [o.pick(["critical", "default", "low"]) for _ in range(100)]
    assert Counter(picks) == {"critical": 60, "default": 30, "low": 10}
    # Within every window of 10 picks, each queue gets its share: none waits long.
    for start in range(0, 100, 10):
        assert Counter(picks[start:start + 10]) == {"critical": 6, "default": 3, "low": 1}


def test_weighted_shares_only_among_the_queues_that_want_one():
    o = QueueOrder(tunables("weighted", ("a", "b", "c"), a=1, b=3))
    picks = [o.pick(["a", "b"]) for _ in range(40)]
    assert Counter(picks) == {"a": 10, "b": 30}
    assert o.pick(["c"]) == "c"  # a queue not weighted has weight 1


def test_a_retune_applies_at_the_next_pick():
    t = tunables("strict", ("a", "b"))
    o = QueueOrder(t)
    assert o.pick(["a", "b"]) == "a"
    t.queues = ("b", "a")
    assert o.pick(["a", "b"]) == "b"
    t.queue_order, t.queue_weights = "weighted", QueueWeights((("a", 1), ("b", 1)))
    assert sorted(o.pick(["a", "b"]) for _ in range(2)) == ["a", "b"]
