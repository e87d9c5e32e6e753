"""Tunables: the settings a SIGHUP may change while the daemon runs.

The supervisor owns one instance and replaces its fields on reload; the components
that use them read them at each pass instead of copying them at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass

from distasks.config import Config, QueueWeights
from distasks.domain.retry import RetryPolicy


@dataclass(slots=True)
class Tunables:
    queues: tuple[str, ...]
    concurrency: int
    retry: RetryPolicy
    log_level: str
    #: given to tasks created without max_retries
    default_max_retries: int = 3
    #: "strict" or "weighted": how executors are shared between queues with work
    queue_order: str = "weighted"
    #: the weights of "weighted"
    queue_weights: QueueWeights = QueueWeights()

    @classmethod
    def from_config(cls, c: Config) -> Tunables:
        return cls(queues=c.worker.queues, concurrency=c.worker.concurrency,
                   retry=RetryPolicy(c.retry.base_s, c.retry.cap_s, c.retry.jitter),
                   log_level=c.log.level.upper(), default_max_retries=c.retry.max_retries,
                   queue_order=c.worker.queue_order, queue_weights=c.worker.queue_weights)
