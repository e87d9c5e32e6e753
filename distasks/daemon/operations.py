"""Operations: what an operator does to tasks, queues and dead letters (cancel, pause,
resume, delete a queue, replay and delete DLQ entries).

Each one commits in PostgreSQL, then copies the change into Redis through `mirror.copy`
(architecture §2), so a Redis that does not answer never undoes an accepted change. The
API, the command line and the console call these; they parse, authorize and render, and
none of them repeats a step. Who asks and when come in as arguments (`actor`, `now`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from distasks.broker import Broker, QueueEntries, rank
from distasks.daemon import mirror
from distasks.daemon.metrics import Metrics
from distasks.daemon.queue_census import QueueCensus
from distasks.domain import times
from distasks.domain.errors import OperatorLimit
from distasks.domain.model import Actor
from distasks.store import Cancellation, DlqFilter, Store


@dataclass(frozen=True, slots=True)
class Operations:
    store: Store
    broker: Broker
    metrics: Metrics
    #: the queues that exist (the intake holds the same one); told of deletes
    census: QueueCensus | None = None
    #: limits the operator set in the config (`[queues.<name>]`) by queue: a tenant may
    #: tighten them, never loosen them (set at start and on SIGHUP)
    operator_limits: dict[str, dict[str, float]] = field(default_factory=dict)

    def check_tenant_limits(self, queue: str, limits: Mapping[str, float | None]) -> None:
        """Raise OperatorLimit if a tenant's `limits` for `queue` would lift or raise a
        limit its operator set (burst aside: it only shapes the rate)."""
        for name, value in limits.items():
            set_by_operator = self.operator_limits.get(queue, {}).get(name)
            if name != "burst" and set_by_operator is not None and (
                    value is None or value > set_by_operator):
                raise OperatorLimit(name, set_by_operator)

    async def apply_configured_limits(self, configured: Mapping[str, Mapping[str, float | None]],
                                      *, actor: Actor, now: datetime) -> int:
        """Set each queue's limits the config names where PostgreSQL has others (so a
        restart writes no audit row for nothing); returns how many queues changed."""
        self.operator_limits.clear()
        self.operator_limits.update({q: {k: v for k, v in limits.items() if v is not None}
                                     for q, limits in configured.items()})
        current = {r.name: r for r in await self.store.queues(now=now)}
        changed = 0
        for queue, limits in configured.items():
            record = current.get(queue)
            differ = {k: v for k, v in limits.items()
                      if record is None or getattr(record, k) != v}
            if differ:
                await self.set_queue_limits(queue, differ, actor=actor, now=now,
                                            max_queues=None)
                changed += 1
        return changed

    async def cancel_task(self, task_id: uuid.UUID, *, tenant: str, actor: Actor,
                          reason: str | None, now: datetime) -> Cancellation | None:
        """Cancel `tenant`'s task: at once while it waits, within a heartbeat while it
        runs. None if the tenant has no such task; `cancelled` False if it had finished."""
        done = await self.store.cancel_task(task_id, tenant=tenant, actor=actor,
                                            reason=reason, now=now)
        if done is None or not done.cancelled:
            return done
        self.metrics.cancelled.labels(self.metrics.queue_label(done.queue_name or ""),
                                      done.handler).inc()
        # If Redis does not answer: waiting ids are dropped when claimed, the running
        # attempt learns of the cancel from its next heartbeat, waiters from their poll.
        await mirror.copy("cancel", lambda: self.broker.cancelled(
            waiting=[(q, str(r)) for q, r in done.waiting],
            running=str(done.running) if done.running else None,
            task_id=str(task_id), now_ms=times.ms_of(now)))
        if done.released.runs:
            # A workflow node's dependents the cancel released (those that `continue`),
            # pushed as a create pushes them.
            runs = done.released.runs
            await mirror.copy("released by cancel", lambda: self.broker.dispatch(
                ready=[(r.queue_name, str(r.run_id), rank(r.priority, r.concurrency_key))
                       for r in runs]), count=len(runs), store=self.store,
                pushed=[r.run_id for r in runs], now=now)
        return done

    async def set_paused(self, queue: str, paused: bool, *, actor: Actor, now: datetime,
                         max_queues: int | None) -> None:
        """Pause or resume `queue` (a new name counts against `max_queues`)."""
        # PostgreSQL first (the truth), then the flag claims see; if Redis does not answer,
        # the reconciler copies the flag on its next pass.
        await self.store.set_paused(queue, paused, actor=actor, now=now, max_queues=max_queues)
        await mirror.copy("pause" if paused else "resume",
                          lambda: self.broker.set_paused(queue, paused))

    async def set_max_running(self, queue: str, max_running: int | None, *, actor: Actor,
                              now: datetime, max_queues: int | None) -> None:
        """Set (None: lift) `queue`'s global concurrency limit (a new name counts against
        `max_queues`). If Redis does not answer, the reconciler copies it on its next
        pass; until then the claims keep the limit they had."""
        await self.set_queue_limits(queue, {"max_running": max_running}, actor=actor, now=now,
                                    max_queues=max_queues)

    async def set_queue_limits(self, queue: str, limits: Mapping[str, float | None], *,
                               actor: Actor, now: datetime,
                               max_queues: int | None) -> dict[str, Any]:
        """Set (None: lift) some of `queue`'s limits (max_running, max_running_per_key,
        max_starts_per_second, burst); returns all of them as they are now. Mirrored to
        Redis as set_max_running says."""
        now_set = await self.store.set_queue_limits(queue, limits, actor=actor, now=now,
                                                    max_queues=max_queues)
        changed = {name: now_set[name] for name in limits}
        if "max_starts_per_second" in changed or "burst" in changed:
            # The rate and its burst go to Redis together.
            changed.update(max_starts_per_second=now_set["max_starts_per_second"],
                           burst=now_set["burst"])
        await mirror.copy("queue limits", lambda: self.broker.mirror_limits({queue: changed}))
        return now_set

    async def delete_queue(self, queue: str, *, actor: Actor, now: datetime) -> None:
        """Delete a queue that holds no unfinished or dead-lettered task (NotFound,
        QueueNotEmpty otherwise), then its Redis keys."""
        await self.store.delete_queue(queue, actor=actor, now=now)
        if self.census is not None:
            self.census.forget(queue)
        # Committed: its Redis keys go next. If Redis does not answer, a stale flag is
        # cleared by the reconciler's copy once the queue exists again (until then it pauses
        # nothing anyone runs), and stale ids are dropped by the claim that meets them.
        await mirror.copy("queue delete", lambda: self._forget(queue))

    async def _forget(self, queue: str) -> None:
        """Drop a deleted queue's keys and leftover ids from Redis, except ids of runs and
        dead tasks that PostgreSQL still has (a create that raced the delete). Ids are read
        from Redis before PostgreSQL is asked: an id is pushed only once committed, so one
        read is never taken for stale."""
        entries = await self.broker.queue_entries(queue)
        live_runs, live_dead = await self.store.live_entries(entries.runs, entries.dead)
        await self.broker.forget_queue(queue, QueueEntries(runs=entries.runs - live_runs,
                                                           dead=entries.dead - live_dead))

    async def replay_dlq(self, queue: str, selection: DlqFilter, *, limit: int,
                         override_priority: int | None, actor: Actor, now: datetime,
                         dry_run: bool) -> list[tuple[uuid.UUID, uuid.UUID | None]]:
        """Give the oldest `limit` dead tasks matching `selection` a new attempt; returns
        (task id, new run id), oldest first (run id None on a dry run)."""
        replayed = await self.store.replay(queue, selection, limit=limit,
                                           override_priority=override_priority, now=now,
                                           actor=actor, dry_run=dry_run)
        ready = [(run_id, rank(priority, key))
                 for _, run_id, priority, key in replayed if run_id is not None]
        run_ids = [run_id for run_id, _ in ready]
        if run_ids:
            await mirror.copy("DLQ replay", lambda: self.broker.leave_dlq(
                queue, removed=[str(t) for t, *_ in replayed],
                ready=[(str(r), p) for r, p in ready]),
                count=len(run_ids), store=self.store, pushed=run_ids, now=now)
        return [(task_id, run_id) for task_id, run_id, *_ in replayed]

    async def delete_dlq(self, queue: str, selection: DlqFilter, *, limit: int, actor: Actor,
                         now: datetime, dry_run: bool) -> list[uuid.UUID]:
        """Take the oldest `limit` dead tasks matching `selection` out of the DLQ (they
        stay `failed` on record); returns their ids."""
        deleted = await self.store.delete_dead(queue, selection, limit=limit, now=now,
                                               actor=actor, dry_run=dry_run)
        if deleted and not dry_run:
            await mirror.copy("DLQ delete", lambda: self.broker.leave_dlq(
                queue, removed=[str(t) for t in deleted], ready=[]), count=len(deleted))
        return deleted
