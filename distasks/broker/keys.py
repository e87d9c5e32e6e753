"""Every Redis key distasks uses, and nothing else builds one (architecture §4).

All keys of a queue share the hash tag `{q:<queue>}`, so a script that touches one
queue stays in one Redis Cluster slot. The prefix keeps deployments and tests apart.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class QueueKeys:
    #: list of run ids ready to start, oldest on the left (RPUSH, claimed from the left)
    ready: str
    #: zset of run ids waiting for their time, score = due time in ms
    delayed: str
    #: list of task ids out of retries, oldest on the left
    dlq: str
    #: zset of run ids claimed by a daemon, score = lease deadline in ms
    leases: str
    #: SET NX PX lock, so that one daemon moves due items per tick
    mover_lock: str
    #: exists while the queue is paused (PostgreSQL keeps the flag; this mirrors it)
    paused: str


def queue_keys(prefix: str, queue: str) -> QueueKeys:
    base = f"{prefix}:{{q:{queue}}}"
    return QueueKeys(
        ready=f"{base}:ready",
        delayed=f"{base}:delayed",
        dlq=f"{base}:dlq",
        leases=f"{base}:leases",
        mover_lock=f"{base}:mover-lock",
        paused=f"{base}:paused",
    )


@dataclass(frozen=True, slots=True)
class GlobalKeys:
    #: set once Redis holds the index built from PostgreSQL; gone means Redis lost data
    epoch: str
    #: SET NX PX lock, so that one daemon rebuilds the index
    rebuild_lock: str
    #: pub/sub channel between daemons: "cancel <run ids>", "done <task ids>"
    control: str
    #: zset of task ids a request waits for (long polls), score = when that wait ends in
    #: ms; "done" is announced only for these
    waited: str


def global_keys(prefix: str) -> GlobalKeys:
    return GlobalKeys(epoch=f"{prefix}:epoch", rebuild_lock=f"{prefix}:rebuild-lock",
                      control=f"{prefix}:control", waited=f"{prefix}:waited")


def rate_keys(prefix: str, principal: str, tenant: str) -> tuple[str, str]:
    """The token buckets of a principal and of its tenant (hashes: tokens, at_ms). One
    hash tag for all, so that rate_take.lua touching both stays in one cluster slot."""
    return f"{prefix}:{{rl}}:p:{principal}", f"{prefix}:{{rl}}:t:{tenant}"
