"""Scheduler: cron schedules -> tasks, once per slot across every daemon (architecture §9).

Every tick, one transaction locks the due schedules no other daemon holds (FOR UPDATE
SKIP LOCKED), decides which of their due slots fire under each catch-up policy
(distasks.domain.cron.plan), records each slot under its unique (schedule, slot) key with its
task and first run, and moves `next_fire_at` past them. Then the new runs are copied
into Redis like an API create (distasks.daemon.mirror); a run committed but not copied is
pushed by the reconciler. Any number of daemons may run it: the lock decides who fires
a slot, the key makes a second task for it impossible.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import trio

from distasks.access.quotas import TenantQuotas
from distasks.broker import Broker, rank
from distasks.daemon import mirror, periodic, schedules
from distasks.daemon.creation import CreationRules
from distasks.daemon.health import Health
from distasks.daemon.metrics import Metrics
from distasks.domain import cron, tenancy, times
from distasks.domain.errors import InvalidInput, StoreUnavailable
from distasks.domain.model import Actor, TaskType
from distasks.store import Fired, Firing, Schedule, Slot, Store

log = logging.getLogger(__name__)

# How often the per-schedule gauges are refreshed (one read of every schedule's next slot).
REPORT_EVERY_S = 10.0
#: Who the audit log names for the config file's schedules.
CONFIG_ACTOR = Actor("config")


@dataclass(frozen=True, slots=True)
class Settings:
    #: most schedules fired by one transaction; a pass repeats while it finds that many
    batch: int = 100
    #: how late a slot may be and still fire under catch-up "skip" (a tick is never
    #: exactly on time; a daemon may pause for a GC or a slow commit)
    misfire_grace_s: float = 60.0


async def fire_once(store: Store, broker: Broker, rules: Callable[[str], CreationRules], *,
                    now_s: float, settings: Settings = Settings(),
                    metrics: Metrics | None = None, quotas: TenantQuotas | None = None,
                    rng: random.Random | None = None) -> int:
    """Fire every due slot once; returns how many tasks were created. Fires in batches of
    `settings.batch` schedules until a batch comes back short.

    `rules(tenant)` are a tenant's creation rules. Only schedules whose handler this
    daemon has (its default handler, for a template naming none) are claimed: in a fleet whose daemons have different handlers, a slot is
    fired by one that can make its task, never refused for good by one that cannot. A
    tenant over a quota (`quotas`) has its slots refused, as its API creates are."""
    now = times.utc(now_s)
    rng = rng or random.Random()
    deployment = rules(tenancy.DEFAULT_TENANT)
    handlers = list(deployment.registry)
    blocked = {}
    if quotas is not None and quotas.any_limited():
        for tenant in await store.due_schedule_tenants(now=now):
            if (reason := await quotas.blocked(tenant)) is not None:
                blocked[tenant] = reason
    created = 0
    while True:
        fired = await store.fire_due(now=now, limit=settings.batch, handlers=handlers,
                                     default_handler=deployment.default_handler,
                                     decide=lambda s, running: decide(
                                         s, running, rules(s.tenant), now=now,
                                         settings=settings, rng=rng,
                                         over_quota=blocked.get(s.tenant)))
        created += await _dispatch(store, broker, fired, now=now)
        if quotas is not None:
            for f in fired:
                quotas.charge(f.schedule.tenant, sum(1 for x in f.slots if x.task))
        if metrics is not None:
            _count(metrics, fired, now=now)
        if len(fired) < settings.batch:
            return created


def decide(s: Schedule, running: bool, rules: CreationRules, *, now: datetime,
           settings: Settings, rng: random.Random, over_quota: str | None = None) -> Firing:
    """Which of `s`'s due slots fire at `now`, and the task of each. `running`: the task
    of its previous slot is not finished (for skip_if_running); `over_quota`: why its
    tenant may create no task now (its slots are refused, on record)."""
    assert s.next_fire_at is not None
    try:
        p = cron.plan(s.cron, s.timezone, next_fire_at=s.next_fire_at, now=now,
                      catch_up=cron.CatchUp(s.catch_up), catch_up_max=s.catch_up_max,
                      grace=timedelta(seconds=settings.misfire_grace_s), ends_at=s.ends_at)
    except cron.CronError as e:
        # Checked when saved, so only a time zone gone from this machine's tzdata gets
        # here (or one saved before cron.NOT_ZONES were refused, such as localtime): the
        # schedule stops (no next slot) until a PATCH gives it one again.
        log.error("schedule %s stopped: %s", s.name, e.problem,
                  extra={"event": "schedule_refused", "schedule": s.name, "tenant": s.tenant})
        return Firing(slots=[], missed=0, next_fire_at=None)
    slots = []
    for i, fire_at in enumerate(p.fire):
        # Only the first slot of a pass can find the previous task unfinished: the ones
        # after it follow a task made in this very pass.
        if s.skip_if_running and (running or i > 0):
            slots.append(Slot(fire_at, None, "skipped_running"))
            continue
        if over_quota is not None:
            slots.append(Slot(fire_at, None, "refused", over_quota))
            continue
        jitter_s = rng.uniform(0, s.jitter_s) if s.jitter_s > 0 else 0.0
        try:
            task = schedules.template_task(s, rules, fire_at=fire_at, jitter_s=jitter_s)
        except InvalidInput as e:
            log.error("schedule %s: slot %s not fired: %s", s.name, fire_at.isoformat(), e,
                      extra={"event": "schedule_refused", "schedule": s.name,
                             "tenant": s.tenant})
            slots.append(Slot(fire_at, None, "refused", str(e)))
            continue
        slots.append(Slot(fire_at, task, "created"))
    return Firing(slots=slots, missed=p.missed, next_fire_at=p.next_fire_at)


async def _dispatch(store: Store, broker: Broker, fired: list[Fired], *, now: datetime) -> int:
    """Copy the committed runs into Redis, as an API create does (distasks.daemon.mirror)."""
    ready, delayed, pushed = [], [], []
    for f in fired:
        for slot in f.slots:
            t = slot.task
            if t is None:
                continue
            if t.type is TaskType.DELAYED and t.run_at is not None:
                delayed.append((t.queue_name, str(t.run_id), times.ms_of(t.run_at),
                                rank(t.priority, t.concurrency_key)))
            else:
                ready.append((t.queue_name, str(t.run_id), rank(t.priority, t.concurrency_key)))
            pushed.append(t.run_id)
            log.info("schedule %s fired slot %s: task %s", f.schedule.name,
                     slot.fire_at.isoformat(), t.id,
                     extra={"event": "schedule_fired", "schedule": f.schedule.name,
                            "tenant": f.schedule.tenant, "task_id": str(t.id),
                            "queue": t.queue_name})
        if f.missed:
            log.warning("schedule %s: %d due slots not fired (catch_up %s)", f.schedule.name,
                        f.missed, f.schedule.catch_up,
                        extra={"event": "schedule_missed", "schedule": f.schedule.name,
                               "tenant": f.schedule.tenant, "count": f.missed})
    if pushed:
        await mirror.copy("scheduled tasks", lambda: broker.dispatch(ready=ready, delayed=delayed),
                          count=len(pushed), store=store, pushed=pushed, now=now)
    return len(pushed)


def _count(metrics: Metrics, fired: list[Fired], *, now: datetime) -> None:
    for f in fired:
        label = metrics.schedule_label(f.schedule.tenant, f.schedule.name)
        for slot in f.slots:
            metrics.schedule_fires.labels(label, slot.outcome).inc()
            metrics.schedule_lag.observe((now - slot.fire_at).total_seconds())
        if f.missed:
            metrics.schedule_misfires.labels(label).inc(f.missed)


async def report_once(store: Store, metrics: Metrics, *, now_s: float) -> None:
    """Set the per-schedule gauges (next slot, seconds overdue) for the first schedules by
    tenant and name, up to the metrics cap; the others share one series (the most
    overdue of them)."""
    rows = await store.schedule_times()
    metrics.label_schedules([name if tenant == tenancy.DEFAULT_TENANT else f"{tenant}/{name}"
                             for tenant, name, _ in rows])
    metrics.schedule_next_fire.clear()
    metrics.schedule_overdue.clear()
    overdue_other = 0.0
    for tenant, name, next_fire_at in rows:
        label = metrics.schedule_label(tenant, name)
        overdue = max(0.0, now_s - times.unix_s(next_fire_at))
        if label == metrics.OTHER_SCHEDULE:
            overdue_other = max(overdue_other, overdue)
            continue
        metrics.schedule_next_fire.labels(label).set(times.unix_s(next_fire_at))
        metrics.schedule_overdue.labels(label).set(overdue)
    metrics.schedule_overdue.labels(metrics.OTHER_SCHEDULE).set(overdue_other)


async def run(store: Store, broker: Broker, rules: Callable[[str], CreationRules], *,
              interval_s: float, settings: Settings, health: Health, metrics: Metrics,
              quotas: TenantQuotas | None = None, clock: Callable[[], float] = time.time,
              task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Fire due slots every `interval_s` (and refresh the gauges), until cancelled."""

    reported_at = -REPORT_EVERY_S

    async def one_pass() -> None:
        nonlocal reported_at
        now_s = clock()
        await fire_once(store, broker, rules, now_s=now_s, settings=settings, metrics=metrics,
                        quotas=quotas)
        if trio.current_time() - reported_at >= REPORT_EVERY_S:
            try:
                await report_once(store, metrics, now_s=clock())
                reported_at = trio.current_time()
            except StoreUnavailable:
                pass  # the next pass reports; firing is what matters

    await periodic.every("scheduler", interval_s, one_pass, health=health,
                         allowance_s=max(30.0, 10 * interval_s), task_status=task_status)


async def upsert_configured(store: Store, wanted: list[Schedule], *, now_s: float) -> None:
    """Make the config file's schedules (already checked) those in PostgreSQL."""
    now = times.utc(now_s)
    created, updated, deleted = await store.upsert_configured(
        wanted, lambda s: schedules.rearm(s, now=now), actor=CONFIG_ACTOR, now=now)
    log.info("config schedules: %d created, %d updated, %d deleted", created, updated, deleted,
             extra={"event": "schedules_configured", "added": created, "changed": updated,
                    "removed": deleted, "count": len(wanted)})
