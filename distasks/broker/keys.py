"""Every Redis key distasks uses, and nothing else builds one (architecture §4).

All keys of a queue share the hash tag `{q:<queue>}`, so a script that touches one
queue stays in one Redis Cluster slot. The prefix keeps deployments and tests apart.
"""

from __future__ import annotations

from dataclasses import dataclass

#: How a run is filed in its queue's index: its priority, or '<priority>/<key>' for a run
#: with a concurrency key (push.lua and the other scripts read it so; a priority never
#: holds '/'). Kept in the queue's `priorities` hash for every rank but priority 0.
Rank = int | str


def rank(priority: int, concurrency_key: str | None) -> Rank:
    """The rank of a run of this priority and concurrency key (see Rank)."""
    return priority if concurrency_key is None else f"{priority}/{concurrency_key}"


@dataclass(frozen=True, slots=True)
class QueueKeys:
    #: list of run ids of priority 0 ready to start, oldest on the left (RPUSH, claimed
    #: from the left); a run of another priority p waits in the list `band(p)`
    ready: str
    #: zset of the priorities other than 0 whose ready list may hold runs, score = the
    #: priority (the claim drops a priority whose list it found empty)
    bands: str
    #: list holding one entry while any ready list may hold runs, so that an idle fetcher
    #: blocks on one key (BLMOVE onto itself) whatever the priority pushed
    bell: str
    #: hash run id -> priority, for the runs in this queue's index (ready, delayed or
    #: leased) whose priority is not 0: how a retry, a due run or a run handed back finds
    #: its list again inside a script
    priorities: str
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
    #: the queue's global concurrency limit, while it has one: claims keep the lease set
    #: at most this big (PostgreSQL keeps it; this mirrors it)
    max_running: str
    #: list holding one entry while a limited queue may have room for another lease,
    #: taken down by a claim that finds it full, so that its fetchers block (wait_ready)
    #: until an ended lease rings it
    room: str
    #: list of the concurrency keys whose ready list `keyed(key)` holds runs, each once:
    #: the claim serves them round robin (it takes from the head and moves it to the tail)
    key_turns: str
    #: hash concurrency key -> how many of its runs are leased now (by any daemon)
    key_running: str
    #: the queue's per-key concurrency limit, while it has one: a claim skips a key with
    #: this many runs leased (PostgreSQL keeps it; this mirrors it)
    max_per_key: str
    #: hash of a queue's start rate, while it has one: per_s and burst (PostgreSQL keeps
    #: them; these mirror them) and the claim's token bucket, tokens and at_ms (Redis TIME)
    rate: str

    def keyed(self, key: str) -> str:
        """The FIFO ready list of the runs with concurrency key `key` (claim.lua builds
        the same name; ':key:' never looks like a priority's list)."""
        return f"{self.ready}:key:{key}"

    def band(self, priority: int | str) -> str:
        """The ready list of `priority`: `ready` itself for 0, so that entries of the
        layout before priorities are claimed as priority 0 (claim.lua builds the same
        names)."""
        return self.ready if str(priority) == "0" else f"{self.ready}:{priority}"


def queue_keys(prefix: str, queue: str) -> QueueKeys:
    base = f"{prefix}:{{q:{queue}}}"
    return QueueKeys(
        ready=f"{base}:ready",
        bands=f"{base}:bands",
        bell=f"{base}:bell",
        priorities=f"{base}:priorities",
        delayed=f"{base}:delayed",
        dlq=f"{base}:dlq",
        leases=f"{base}:leases",
        mover_lock=f"{base}:mover-lock",
        paused=f"{base}:paused",
        max_running=f"{base}:max-running",
        room=f"{base}:room",
        key_turns=f"{base}:key-turns",
        key_running=f"{base}:key-running",
        max_per_key=f"{base}:max-per-key",
        rate=f"{base}:rate",
    )


@dataclass(frozen=True, slots=True)
class GlobalKeys:
    #: set once Redis holds the index built from PostgreSQL; gone means Redis lost data.
    #: On a cluster, one such marker per master (`epoch_marker`), since each master may
    #: lose its data, or fail over, on its own
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


def epoch_marker(prefix: str, n: int) -> str:
    """The n-th candidate key for a master's epoch marker on a cluster: the rebuild
    takes, for each master, the first n whose slot that master serves."""
    return f"{prefix}:{{epoch:{n}}}"


def rate_keys(prefix: str, principal: str, tenant: str) -> tuple[str, str]:
    """The token buckets of a principal and of its tenant (hashes: tokens, at_ms). One
    hash tag per tenant, so that rate_take.lua touching both stays in one cluster slot,
    and the tenants' buckets spread over the slots (and masters) of a cluster."""
    return f"{prefix}:{{rl:{tenant}}}:p:{principal}", f"{prefix}:{{rl:{tenant}}}:t:{tenant}"


def console_session_key(prefix: str, session_digest: str) -> str:
    """A console session (string, expires after the session's idle time): its state as
    the console encrypted it, under a digest of the cookie's id (never the id itself)."""
    return f"{prefix}:console-session:{session_digest}"
