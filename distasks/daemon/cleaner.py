"""Cleaner: removes history past its retention (architecture, "Retention"; DESIGN §5.10).

Every `interval_s`, a pass removes finished tasks by state and age, then old audit rows
and schedule fire records of the legacy partitions, in batches of `batch` rows, then
drops whole day partitions past their retention (store/partitions.py: a day of runs
once no task of that day is left), each step its own short transaction with a lock and a statement timeout, and a pause between them:
creates, claims and outcomes never wait behind it. At most `max_batches` per kind and
pass; the next pass goes on. Any number of daemons run it; PostgreSQL decides which one cleans (a
leader row each batch takes or renews: distasks.store.retention), so two never clean at
once. Dead-lettered tasks that go also leave the DLQ index in Redis (after the commit;
if Redis does not answer, the reconciler's rebuild drops them). With an archive
directory, every row is written there as gzip-compressed JSON lines before its batch
commits. A log line per pass and the `distasks_retention_removed` counter say what went.
"""

from __future__ import annotations

import gzip
import itertools
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import trio

from distasks.broker import Broker
from distasks.config import Config
from distasks.daemon import mirror, periodic
from distasks.daemon.health import Health
from distasks.daemon.metrics import Metrics
from distasks.domain import times
from distasks.domain.errors import StoreUnavailable
from distasks.store import Store
from distasks.store.partitions import Partition
from distasks.store.retention import (
    FINISHED,
    WORKFLOW_RETENTION,
    Archive,
    Gentle,
    Leadership,
    NotLeader,
    RemovedTask,
    TaskRetention,
)

log = logging.getLogger(__name__)

DAY_S = 86_400.0
# How long a daemon keeps the lead after its last batch, in passes: long enough that
# the leader keeps it from one pass to the next, short enough that another daemon takes
# over soon after it dies.
LEASE_PASSES = 3
# How long giving the lead back may take at shutdown.
RELEASE_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class Settings:
    """The cleaner's rules, from [retention] and the overrides of [queues.<name>] and
    [tenants.<name>] (distasks.config.RetentionConfig says what each means)."""

    tasks: tuple[TaskRetention, ...]
    audit_s: float = 365 * DAY_S
    schedule_fires_s: float = 30 * DAY_S
    batch: int = 500
    max_batches: int = 200
    pause_s: float = 0.05
    gentle: Gentle = Gentle()
    archive_dir: str = ""
    #: every task retention is finite, so every day's tasks leave in the end: their runs
    #: stay until their day's partition of task_runs is dropped whole. Otherwise (some
    #: task kept forever would keep its day) runs are deleted with their tasks.
    runs_leave_by_partition: bool = True

    @classmethod
    def from_config(cls, c: Config) -> Settings:
        r = c.retention
        tasks = []
        for status in FINISHED:
            key = f"retention_{status}_days"
            queues = {q: v * DAY_S for q, limits in c.queues.items()
                      if (v := getattr(limits, key)) is not None}
            tenants = {t: v * DAY_S for t, quotas in c.tenants.items()
                       if (v := getattr(quotas, key)) is not None}
            tasks.append(TaskRetention(status, getattr(r, f"{status}_days") * DAY_S,
                                       queues=queues, tenants=tenants))
        finite = all(s > 0 for t in tasks
                     for s in (t.keep_s, *t.queues.values(), *t.tenants.values()))
        return cls(tasks=tuple(tasks), audit_s=r.audit_days * DAY_S,
                   schedule_fires_s=r.schedule_fires_days * DAY_S, batch=r.batch,
                   max_batches=r.max_batches, pause_s=r.pause_s,
                   gentle=Gentle(r.lock_timeout_ms, r.statement_timeout_ms),
                   archive_dir=r.archive_dir, runs_leave_by_partition=finite)


@dataclass(slots=True)
class Removed:
    """What one pass removed: tasks by state, their runs, audit rows, schedule fires,
    and ids taken out of the DLQ index; `batches` run."""

    tasks: Counter[str] = field(default_factory=Counter)
    #: finished workflows removed whole, and their nodes (not in `tasks`)
    workflows: int = 0
    workflow_tasks: int = 0
    runs: int = 0
    audit: int = 0
    schedule_fires: int = 0
    dlq: int = 0
    #: day partitions dropped whole (their audit rows and fires are counted above too)
    partitions: int = 0
    batches: int = 0

    def total(self) -> int:
        return (sum(self.tasks.values()) + self.workflow_tasks + self.audit
                + self.schedule_fires)


class ArchiveDir:
    """Writes each batch as one gzip file of JSON lines, `<kind>-<time>-<holder>-<n>.jsonl.gz`
    in `path`, complete and synced before the batch commits (a crash between the two
    leaves rows archived and not removed: the next pass archives them again)."""

    def __init__(self, path: str, holder: str) -> None:
        self.path = Path(path)
        self._holder = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in holder)
        self._seq = itertools.count(1)

    async def __call__(self, kind: str, docs: Sequence[str]) -> None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        name = f"{kind}-{stamp}-{self._holder}-{next(self._seq):06d}.jsonl.gz"
        await trio.to_thread.run_sync(self._write, self.path / name, docs)

    @staticmethod
    def _write(path: Path, docs: Sequence[str]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        with open(partial, "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
                for doc in docs:
                    gz.write(doc.encode("utf-8"))
                    gz.write(b"\n")
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(partial, path)


async def clean_once(store: Store, broker: Broker, settings: Settings, *, now_s: float,
                     lead: Leadership, metrics: Metrics | None = None,
                     archive: Archive | None = None,
                     beat: Callable[[], None] = lambda: None) -> Removed | None:
    """One pass at `now_s`: what it removed, or None when another daemon leads. Each kind
    (tasks of each finished state, audit rows, schedule fires) gets at most
    `settings.max_batches` batches (the next pass goes on); a batch that would wait for a
    lock raises StoreUnavailable from the store, which ends the pass. `beat()` is called
    after each batch (a long pass is alive, for the health check)."""
    now = times.utc(now_s)
    removed = Removed()
    s = settings

    async def pause() -> None:
        removed.batches += 1
        beat()
        await trio.sleep(s.pause_s)

    try:
        for rule in s.tasks:
            for _ in range(s.max_batches):
                gone = await store.remove_tasks(rule, now=now, limit=s.batch, lead=lead,
                                                gentle=s.gentle, archive=archive,
                                                delete_runs=not s.runs_leave_by_partition)
                removed.tasks[rule.status] += len(gone)
                removed.runs += sum(t.runs for t in gone)
                removed.dlq += await _leave_dlq(broker, [t for t in gone if t.in_dlq])
                if metrics is not None and gone:
                    metrics.retention_removed.labels(rule.status).inc(len(gone))
                    metrics.retention_removed.labels("runs").inc(sum(t.runs for t in gone))
                await pause()
                if len(gone) < s.batch:
                    break
        by_status = {rule.status: rule for rule in s.tasks}
        for state, status in WORKFLOW_RETENTION.items():
            # A workflow has many nodes: a tenth as many per batch.
            limit = max(1, s.batch // 10)
            for _ in range(s.max_batches):
                got = await store.remove_workflows(by_status[status], state=state, now=now,
                                                   limit=limit, lead=lead, gentle=s.gentle,
                                                   archive=archive,
                                                   delete_runs=not s.runs_leave_by_partition)
                removed.workflows += got.workflows
                removed.workflow_tasks += len(got.tasks)
                removed.runs += sum(t.runs for t in got.tasks)
                removed.dlq += await _leave_dlq(broker, [t for t in got.tasks if t.in_dlq])
                if metrics is not None and got.workflows:
                    metrics.retention_removed.labels("workflows").inc(got.workflows)
                    metrics.retention_removed.labels("workflow_tasks").inc(len(got.tasks))
                    metrics.retention_removed.labels("runs").inc(sum(t.runs for t in got.tasks))
                await pause()
                if got.workflows < limit:
                    break
        for kind, keep_s, remove in (
                ("audit", s.audit_s, store.remove_audit),
                ("schedule_fires", s.schedule_fires_s, store.remove_schedule_fires)):
            for _ in range(s.max_batches if keep_s > 0 else 0):
                count = await remove(cutoff=now - timedelta(seconds=keep_s), limit=s.batch,
                                     lead=lead, gentle=s.gentle, archive=archive)
                setattr(removed, kind, getattr(removed, kind) + count)
                if metrics is not None and count:
                    metrics.retention_removed.labels(kind).inc(count)
                await pause()
                if count < s.batch:
                    break
        for p in await store.dated_partitions():
            if not _may_drop(p, s, now):
                continue
            rows = await store.drop_partition(p, lead=lead, gentle=s.gentle, archive=archive,
                                              archive_batch=s.batch)
            if rows is None:
                continue  # a task of its day is still kept
            removed.partitions += 1
            if p.parent in ("audit_log", "schedule_fires"):
                kind = "audit" if p.parent == "audit_log" else "schedule_fires"
                setattr(removed, kind, getattr(removed, kind) + rows)
                if metrics is not None and rows:
                    metrics.retention_removed.labels(kind).inc(rows)
            if metrics is not None:
                metrics.retention_removed.labels("partitions").inc()
            log.info("dropped partition %s (%d rows)", p.name, rows,
                     extra={"event": "partition_dropped", "partition": p.name, "rows": rows})
            await pause()
    except NotLeader:
        if removed.batches == 0:
            return None
        # Lost the lead mid-pass (a lease that ran out while this daemon stalled): what
        # was removed stays removed; the new leader goes on.
    return removed


def _may_drop(p: Partition, s: Settings, now: datetime) -> bool:
    """Whether all of `p`'s day is past what keeps it: the audit or fires retention; for
    task_runs, the shortest task retention (no task of a younger day could have gone)
    and never today or yesterday (creates may still be landing there). One a drop
    detached and did not finish (its daemon died) is finished."""
    if not p.attached:
        return True
    if p.parent == "audit_log":
        return s.audit_s > 0 and p.ends_at <= now - timedelta(seconds=s.audit_s)
    if p.parent == "schedule_fires":
        return s.schedule_fires_s > 0 and p.ends_at <= now - timedelta(seconds=s.schedule_fires_s)
    shortest = [k for k in (t.shortest_s() for t in s.tasks) if k is not None]
    if not shortest:
        return False
    return p.ends_at <= min(now - timedelta(seconds=min(shortest)), now - timedelta(days=1))


async def _leave_dlq(broker: Broker, dead: list[RemovedTask]) -> int:
    """Take removed dead tasks out of their queues' DLQ index (after the commit)."""
    by_queue: dict[str, list[str]] = {}
    for t in dead:
        by_queue.setdefault(t.queue_name, []).append(str(t.id))
    for queue, ids in by_queue.items():
        async def leave(queue: str = queue, ids: list[str] = ids) -> None:
            await broker.leave_dlq(queue, ids, ready=[])

        await mirror.copy("retention", leave, count=len(ids))
    return sum(len(ids) for ids in by_queue.values())


async def run(store: Store, broker: Broker, settings: Callable[[], Settings], *,
              interval_s: float, worker_id: str, health: Health, metrics: Metrics,
              clock: Callable[[], float] = time.time,
              task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """A pass every `interval_s` until cancelled, under the rules `settings()` gives at
    its start (a reload changes them); the lead is given back at the end."""
    lead = Leadership(holder=worker_id, lease_s=LEASE_PASSES * interval_s)
    archive: ArchiveDir | None = None

    async def one_pass() -> None:
        nonlocal archive
        s = settings()
        if not s.archive_dir:
            archive = None
        elif archive is None or str(archive.path) != s.archive_dir:
            archive = ArchiveDir(s.archive_dir, worker_id)
        started = trio.current_time()
        removed = await clean_once(store, broker, s, now_s=clock(), lead=lead,
                                   metrics=metrics, archive=archive,
                                   beat=lambda: health.beat("cleaner"))
        if removed is None:
            return  # another daemon cleans
        t = removed.tasks
        log.info("retention pass: removed %d tasks (%d completed, %d cancelled, %d failed),"
                 " %d workflows with %d tasks, %d runs, %d audit rows, %d schedule fires,"
                 " %d day partitions in %d batches, %.2fs",
                 sum(t.values()), t["completed"], t["cancelled"], t["failed"],
                 removed.workflows, removed.workflow_tasks, removed.runs,
                 removed.audit, removed.schedule_fires, removed.partitions, removed.batches,
                 trio.current_time() - started,
                 extra={"event": "retention_pass", "completed": t["completed"],
                        "cancelled": t["cancelled"], "failed": t["failed"],
                        "workflows": removed.workflows,
                        "workflow_tasks": removed.workflow_tasks,
                        "runs": removed.runs, "audit": removed.audit,
                        "schedule_fires": removed.schedule_fires, "dlq": removed.dlq,
                        "partitions": removed.partitions,
                        "batches": removed.batches, "worker_id": worker_id})

    try:
        await periodic.every("cleaner", interval_s, one_pass, health=health,
                             allowance_s=max(120.0, 3 * interval_s), task_status=task_status)
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(RELEASE_TIMEOUT_S):
            try:
                await store.release_lead(worker_id)
            except StoreUnavailable:
                pass  # the lease runs out by itself

