"""The scheduler against real PostgreSQL and Redis with an injected clock: every slot
fired exactly once by racing schedulers, each catch-up policy after the whole fleet was
down, DST days in two time zones, skip-if-running, jitter, tenants, and the config
file's schedules upserted at start."""

from __future__ import annotations

import dataclasses
import json
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import trio

from distasks.access.quotas import TenantQuotas
from distasks.broker import Broker
from distasks.config import Config, TenantConfig
from distasks.daemon import reconciler, scheduler, schedules
from distasks.daemon.creation import CreationRules
from distasks.daemon.metrics import Metrics
from distasks.domain import times
from distasks.domain.model import Actor
from distasks.domain.schedule_definitions import CreateSchedule
from distasks.handlers import Registry, builtin_registry
from distasks.store import Schedule, Store

RULES = CreationRules(registry=builtin_registry(), default_handler="demo",
                      default_max_retries=3, max_payload_bytes=1 << 20)
ACTOR = Actor("test")
T0 = datetime(2030, 1, 1, 0, 0, tzinfo=UTC)
SETTINGS = scheduler.Settings(batch=100, misfire_grace_s=20.0)


def definition(name: str, cron: str, *, tenant: str = "default", now: datetime = T0,
               **fields: Any) -> Schedule:
    fields.setdefault("task", {"handler": "noop", "queue_name": "sched"})
    req = CreateSchedule.model_validate_json(json.dumps({"name": name, "cron": cron, **fields}))
    s = schedules.from_request(req, tenant=tenant, owner="api", actor=ACTOR, now=now)
    schedules.check_definition(s, RULES, now=now)
    return s


async def add(store: Store, *args: Any, **kwargs: Any) -> Schedule:
    created = await store.create_schedule(definition(*args, **kwargs), actor=ACTOR, now=T0)
    assert created is not None
    return created


async def fire(store: Store, broker: Broker, at: datetime, **kwargs: Any) -> int:
    kwargs.setdefault("rules", lambda _tenant: RULES)
    return await scheduler.fire_once(store, broker, now_s=times.unix_s(at), settings=SETTINGS,
                                     **kwargs)


def rows(dsn: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def fires_of(dsn: str, name: str) -> list[tuple[datetime, str, Any]]:
    return rows(dsn, "SELECT f.fire_at, f.outcome, f.task_id FROM schedule_fires f"
                     " JOIN schedules s ON s.id = f.schedule_id WHERE s.name = %s"
                     " ORDER BY f.fire_at", name)


def seconds(*ss: float) -> list[datetime]:
    return [T0 + timedelta(seconds=s) for s in ss]


async def test_racing_schedulers_fire_every_slot_exactly_once(store, broker, config):
    # Three scheduler instances, each with its own connection pool (as three daemons
    # would be), step one minute of injected time, at slightly different instants and
    # all at once, over schedules of every policy.
    await add(store, "every-second-all", "* * * * * *", catch_up="all", catch_up_max=5)
    await add(store, "every-second-skip", "* * * * * *", catch_up="skip")
    await add(store, "every-second-latest", "* * * * * *", catch_up="latest")
    await add(store, "every-five", "*/5 * * * * *")
    await add(store, "every-minute", "* * * * *", task={"handler": "noop", "queue_name": "m"})
    with trio.fail_after(120):
        async with Store.open(config.database.url, max_size=2) as a, \
                Store.open(config.database.url, max_size=2) as b, \
                Store.open(config.database.url, max_size=2) as c:
            rng = random.Random(11)
            for step in range(121):
                async with trio.open_nursery() as nursery:
                    for instance in (a, b, c):
                        at = T0 + timedelta(seconds=step * 0.5 + rng.uniform(0, 0.7))
                        nursery.start_soon(fire, instance, broker, at)
            # Everyone's final pass, at the same instant.
            async with trio.open_nursery() as nursery:
                for instance in (a, b, c):
                    nursery.start_soon(fire, instance, broker, T0 + timedelta(seconds=60.7))
    every_second = seconds(*range(1, 61))
    for name in ("every-second-all", "every-second-skip", "every-second-latest"):
        fired = fires_of(config.database.url, name)
        assert [f[0] for f in fired] == every_second, name
        assert {f[1] for f in fired} == {"created"}
    assert [f[0] for f in fires_of(config.database.url, "every-five")] == seconds(
        *range(5, 61, 5))
    assert [f[0] for f in fires_of(config.database.url, "every-minute")] == seconds(60)
    # One task per fire, each with one run, every run copied into Redis.
    [(tasks, runs, undispatched)] = rows(
        config.database.url,
        "SELECT (SELECT count(*) FROM tasks), (SELECT count(*) FROM task_runs),"
        " (SELECT count(*) FROM task_runs WHERE dispatched_at IS NULL)")
    assert (tasks, runs, undispatched) == (3 * 60 + 12 + 1, 3 * 60 + 12 + 1, 0)
    assert rows(config.database.url, "SELECT count(DISTINCT task_id) FROM schedule_fires") == [
        (tasks,)]
    assert (await broker.depths("sched"))["ready"] == 3 * 60 + 12
    assert (await broker.depths("m"))["ready"] == 1


async def test_after_the_fleet_was_down_each_catch_up_policy_does_what_it_says(
        store, broker, config):
    # Every minute from 00:01; nobody fires until 00:10:30.
    for policy, extra in (("skip", {}), ("latest", {}), ("all", {"catch_up_max": 3}),
                          ("all-unbounded", {"catch_up_max": 100})):
        await add(store, policy, "* * * * *", catch_up=policy.split("-")[0], **extra)
    metrics = Metrics()
    with trio.fail_after(30):
        created = await fire(store, broker, T0 + timedelta(minutes=10, seconds=30),
                             metrics=metrics)
    minute = [T0 + timedelta(minutes=m) for m in range(11)]
    fired = {name: [f[0] for f in fires_of(config.database.url, name)]
             for name in ("skip", "latest", "all", "all-unbounded")}
    assert fired == {"skip": [], "latest": [minute[10]], "all": minute[8:11],
                     "all-unbounded": minute[1:11]}
    assert created == 0 + 1 + 3 + 10
    for name in fired:
        s = await store.get_schedule("default", name)
        assert s is not None and s.next_fire_at == T0 + timedelta(minutes=11)
    misfires = {name: metrics.schedule_misfires.labels(name)._value.get()
                for name in ("skip", "latest", "all")}
    assert misfires == {"skip": 10, "latest": 9, "all": 7}
    # Back on time: the next slot fires under every policy.
    with trio.fail_after(30):
        assert await fire(store, broker, T0 + timedelta(minutes=11, seconds=1)) == 4


async def test_a_fixed_time_fires_once_a_day_across_dst_in_two_time_zones(store, broker, config):
    # Berlin falls back on 2026-10-25, New York on 2026-11-01; both spring forward in
    # March. Each schedule lives four days around one change; the scheduler steps through
    # them every ten minutes.
    windows = {"new-york-spring": ("30 2 * * *", "America/New_York", datetime(2026, 3, 6)),
               "berlin-spring": ("30 2 * * *", "Europe/Berlin", datetime(2026, 3, 27)),
               "berlin": ("30 2 * * *", "Europe/Berlin", datetime(2026, 10, 23)),
               "new-york": ("30 1 * * *", "America/New_York", datetime(2026, 10, 30))}
    for name, (expression, tz, start) in windows.items():
        start = start.replace(tzinfo=UTC)
        await add(store, name, expression, timezone=tz, now=start,
                  end_at=(start + timedelta(days=4)).isoformat())
    with trio.fail_after(120):
        for _, _, start in windows.values():
            at = start.replace(tzinfo=UTC)
            for _ in range(4 * 24 * 6):
                at += timedelta(minutes=10)
                await fire(store, broker, at)

    def local(name: str) -> list[str]:
        tz = ZoneInfo(windows[name][1])
        return [f[0].astimezone(tz).strftime("%m-%d %H:%M %Z")
                for f in fires_of(config.database.url, name)]

    assert local("berlin") == [
        "10-23 02:30 CEST", "10-24 02:30 CEST", "10-25 02:30 CEST", "10-26 02:30 CET"]
    assert local("new-york") == [
        "10-30 01:30 EDT", "10-31 01:30 EDT", "11-01 01:30 EDT", "11-02 01:30 EST"]
    assert local("berlin-spring") == [
        "03-27 02:30 CET", "03-28 02:30 CET", "03-29 03:00 CEST", "03-30 02:30 CEST"]
    assert local("new-york-spring") == [
        "03-06 02:30 EST", "03-07 02:30 EST", "03-08 03:00 EDT", "03-09 02:30 EDT"]


async def test_a_slot_is_skipped_while_the_previous_task_is_unfinished(store, broker, config):
    await add(store, "exclusive", "* * * * *", skip_if_running=True)
    with trio.fail_after(30):
        await fire(store, broker, T0 + timedelta(minutes=1))
        await fire(store, broker, T0 + timedelta(minutes=2))
        [(first_task,)] = rows(config.database.url, "SELECT id FROM tasks")
        rows(config.database.url,
             "UPDATE tasks SET status = 'completed', finished_at = now() WHERE id = %s "
             "RETURNING id", first_task)
        await fire(store, broker, T0 + timedelta(minutes=3))
    fired = fires_of(config.database.url, "exclusive")
    assert [(f[0], f[1]) for f in fired] == [
        (T0 + timedelta(minutes=1), "created"), (T0 + timedelta(minutes=2), "skipped_running"),
        (T0 + timedelta(minutes=3), "created")]
    assert fired[0][2] == first_task and fired[1][2] is None


async def test_jitter_delays_each_task_within_its_bound(store, broker, config):
    await add(store, "jittery", "* * * * *", jitter_seconds=30)
    with trio.fail_after(30):
        for m in range(1, 6):
            await fire(store, broker, T0 + timedelta(minutes=m))
    got = rows(config.database.url,
               "SELECT f.fire_at, t.type, t.run_at FROM schedule_fires f"
               " JOIN tasks t ON t.id = f.task_id ORDER BY f.fire_at")
    assert len(got) == 5
    for fire_at, kind, run_at in got:
        assert kind == "delayed"
        assert fire_at <= run_at <= fire_at + timedelta(seconds=30)
    assert (await broker.depths("sched"))["delayed"] == 5


async def test_a_tenants_schedule_creates_tasks_in_its_qualified_queue(store, broker, config):
    await add(store, "report", "* * * * *", tenant="acme",
              task={"handler": "noop", "queue_name": "reports"})
    await add(store, "report", "* * * * *", task={"handler": "noop", "queue_name": "reports"})
    with trio.fail_after(30):
        await fire(store, broker, T0 + timedelta(minutes=1))
    assert sorted(rows(config.database.url, "SELECT queue_name, tenant FROM tasks")) == [
        ("acme/reports", "acme"), ("reports", "default")]
    assert (await broker.depths("acme/reports"))["ready"] == 1


async def test_paused_and_ended_schedules_do_not_fire(store, broker, config):
    await add(store, "paused", "* * * * *", enabled=False)
    await add(store, "ended", "* * * * *", end_at=(T0 + timedelta(minutes=2)).isoformat())
    with trio.fail_after(30):
        await fire(store, broker, T0 + timedelta(minutes=5))
    assert fires_of(config.database.url, "paused") == []
    assert [f[0] for f in fires_of(config.database.url, "ended")] == []  # skip: too late
    ended = await store.get_schedule("default", "ended")
    assert ended is not None and ended.next_fire_at is None


async def test_the_config_files_schedules_are_upserted_keeping_their_progress(store, config):
    nightly = dataclasses.replace(definition("nightly", "0 3 * * *"), owner="config")
    hourly = dataclasses.replace(definition("hourly", "0 * * * *"), owner="config")
    with trio.fail_after(30):
        await scheduler.upsert_configured(store, [nightly, hourly], now_s=times.unix_s(T0))
        first = await store.get_schedule("default", "nightly")
        assert first is not None and first.owner == "config"
        assert first.next_fire_at == T0 + timedelta(hours=3)
        # An operator pauses it; a restart a day later with the same file keeps the
        # pause and the slot it waits for (nothing is lost to a restart).
        await store.update_schedule("default", "nightly",
                                    lambda s: dataclasses.replace(s, enabled=False),
                                    actor=ACTOR, now=T0)
        later = times.unix_s(T0 + timedelta(days=1))
        await scheduler.upsert_configured(store, [nightly, hourly], now_s=later)
        again = await store.get_schedule("default", "nightly")
        assert again is not None and (again.enabled, again.next_fire_at) == (
            False, first.next_fire_at)
        # The file changes the expression and drops `hourly`.
        changed = dataclasses.replace(nightly, cron="0 4 * * *")
        await scheduler.upsert_configured(store, [changed], now_s=later)
        after = await store.get_schedule("default", "nightly")
        assert after is not None and after.next_fire_at == T0 + timedelta(days=1, hours=4)
        assert await store.get_schedule("default", "hourly") is None
        actions = [e.action for e in await store.audit_entries(tenant="default", limit=10)]
    assert actions == ["schedule_delete", "schedule_update", "schedule_update",
                       "schedule_create", "schedule_create"]


async def test_a_fire_committed_while_redis_is_down_is_pushed_by_the_reconciler(
        store, broker, config):
    await add(store, "while-down", "* * * * *")
    with trio.fail_after(30):
        await reconciler.reconcile_once(store, broker, now_s=time.time(), grace_s=0)  # epoch
        async with Broker.open("redis://127.0.0.1:1/0", prefix=config.redis.prefix) as down:
            # The slot is committed (its task accepted) even though the copy failed.
            assert await fire(store, down, T0 + timedelta(minutes=1)) == 1
        [(run_id, dispatched)] = rows(config.database.url,
                                      "SELECT id, dispatched_at FROM task_runs")
        assert dispatched is None and (await broker.depths("sched"))["ready"] == 0
        pushed = await reconciler.reconcile_once(store, broker, now_s=time.time() + 120,
                                                 grace_s=60)
        ready = await broker.raw("lrange", broker.keys("sched").ready, 0, -1)
    assert pushed == 1 and ready == [str(run_id)]
    assert [f[1] for f in fires_of(config.database.url, "while-down")] == ["created"]


async def test_a_daemon_without_the_handler_leaves_the_slot_to_one_that_has_it(
        store, broker, config):
    # A fleet whose daemons have different handlers: one that cannot make the task
    # neither fires nor refuses the slot; one that can fires it.
    await add(store, "needs-noop", "* * * * *", task={"handler": "noop", "queue_name": "q"})
    builtin = builtin_registry()
    without = Registry()
    for name in builtin:
        if name != "noop":
            handler = builtin.get(name)
            assert handler is not None
            without.add(name, handler.fn)
    lacking = dataclasses.replace(RULES, registry=without)
    with trio.fail_after(30):
        assert await fire(store, broker, T0 + timedelta(minutes=1),
                          rules=lambda _tenant: lacking) == 0
        assert fires_of(config.database.url, "needs-noop") == []
        assert await fire(store, broker, T0 + timedelta(minutes=1)) == 1
    assert [f[1] for f in fires_of(config.database.url, "needs-noop")] == ["created"]


async def test_a_schedule_without_a_handler_fires_with_the_default_handler(
        store, broker, config):
    # A template that names no handler runs the daemon's default_handler; a daemon whose
    # registry lacks that default leaves the slot to one that has it.
    await add(store, "no-handler", "* * * * *", task={"queue_name": "q"})
    noop_default = dataclasses.replace(RULES, default_handler="noop")
    unknown_default = dataclasses.replace(RULES, default_handler="nowhere")
    with trio.fail_after(30):
        assert await fire(store, broker, T0 + timedelta(minutes=1),
                          rules=lambda _tenant: unknown_default) == 0
        assert fires_of(config.database.url, "no-handler") == []
        assert await fire(store, broker, T0 + timedelta(minutes=1),
                          rules=lambda _tenant: noop_default) == 1
    assert [f[1] for f in fires_of(config.database.url, "no-handler")] == ["created"]
    assert rows(config.database.url, "SELECT handler FROM tasks") == [("noop",)]


async def test_a_tenant_over_its_quota_has_its_slots_refused(store, broker, config):
    await add(store, "often", "* * * * * *", tenant="acme", catch_up="all",
              task={"handler": "noop", "queue_name": "q", "payload": {"token": "s3cret"}})
    await add(store, "often", "* * * * * *", catch_up="all",
              task={"handler": "noop", "queue_name": "q"})
    quotas = TenantQuotas(broker, store, Config(tenants={"acme": TenantConfig(max_queued=1)}),
                          clock=time.monotonic)
    with trio.fail_after(30):
        for second in (1, 2, 3):
            await fire(store, broker, T0 + timedelta(seconds=second), quotas=quotas)
    outcomes = rows(config.database.url,
                    "SELECT s.tenant, f.outcome, f.error FROM schedule_fires f"
                    " JOIN schedules s ON s.id = f.schedule_id ORDER BY s.tenant, f.fire_at")
    acme = [(o, e) for t, o, e in outcomes if t == "acme"]
    assert [o for o, _ in acme] == ["created", "refused", "refused"]
    assert "1 tasks queued, at most 1" in acme[1][1]
    # Other tenants fire on; the audit rows of the schedules hold no payload.
    assert [o for t, o, _ in outcomes if t == "default"] == ["created"] * 3
    details = [e.detail for e in await store.audit_entries(tenant="default", limit=10)]
    assert details and all("payload" not in d for d in details)
    assert "s3cret" not in json.dumps(details)
