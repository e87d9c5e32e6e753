"""The outbox against real PostgreSQL and Redis (architecture §10): an application's
database of its own (`app_dsn`), the relay in this process over the test's distasks
database. A rolled-back transaction leaves no task, a committed one exactly one, also when
a relay is cut off between creating the task and deleting the row; relays racing on one
source never make a second task; a bad row is moved aside with its reason; a
notification wakes the relay, and without notifications polling finds the rows."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any
from unittest import mock

import psycopg
import pytest
import trio

from distasks.access.quotas import TenantQuotas
from distasks.broker import Broker
from distasks.config import Config, TenantConfig
from distasks.daemon.creation import CreationRules
from distasks.daemon.health import Health
from distasks.daemon.intake import Intake
from distasks.daemon.metrics import Metrics
from distasks.daemon.relay import Relay, RelaySettings, dedup_key_of
from distasks.daemon.workflows import Workflows
from distasks.handlers import builtin_registry
from distasks.outbox import enqueue, enqueue_async, enqueue_workflow, enqueue_workflow_async
from distasks.store import Store
from distasks.store import outbox as outbox_store
from distasks.store.outbox import OutboxSource
from distasks.store.pg import TrioConnection
from tests.integration.helpers import wait_until

RULES = CreationRules(registry=builtin_registry(), default_handler="demo",
                      default_max_retries=3, max_payload_bytes=1 << 20)
# An advisory lock key the tests hold to stop a relay inside its DELETE.
HOLD_DELETE_LOCK = 4242


def rows(dsn: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def tasks_named(dsn: str, prefix: str) -> list[tuple[Any, ...]]:
    return rows(dsn, "SELECT name, dedup_key, handler, payload, tenant, queue_name FROM tasks "
                "WHERE name LIKE %s ORDER BY name", prefix + "%")


def make_relay(app_dsn: str, store: Store, broker: Broker, intake: Intake, *, name: str = "app", batch: int = 100,
               poll_interval_s: float = 60.0, metrics: Metrics | None = None,
               quotas: TenantQuotas | None = None, tenant: str = "default") -> Relay:
    return Relay(OutboxSource(app_dsn), RelaySettings(name=name, tenant=tenant, batch=batch,
                                                      poll_interval_s=poll_interval_s),
                 intake=intake, workflows=Workflows(store, broker, intake),
                 quotas=quotas, rules=lambda _tenant: RULES, metrics=metrics or Metrics(),
                 health=Health())


@pytest.fixture
async def installed(app_dsn: str) -> str:
    await outbox_store.install(app_dsn)
    rows(app_dsn, "CREATE TABLE orders (id int PRIMARY KEY)")
    return app_dsn


async def test_install_is_idempotent_and_keeps_the_rows(app_dsn: str) -> None:
    with trio.fail_after(20):
        await outbox_store.install(app_dsn)
        with psycopg.connect(app_dsn) as conn:
            row_id = enqueue(conn, "kept", handler="noop", payload={"a": None})
        await outbox_store.install(app_dsn)
    assert rows(app_dsn, "SELECT id, kind, request FROM distasks.outbox") == [
        (row_id, "task", {"name": "kept", "handler": "noop", "payload": {"a": None},
                          "priority": 0, "queue_name": "default"})]
    triggers = rows(app_dsn, "SELECT count(*) FROM pg_trigger WHERE tgname = 'outbox_notify'")
    assert triggers == [(1,)]


async def test_a_rollback_creates_no_task_and_a_commit_exactly_one(
        installed: str, store: Store, broker: Broker, pg_dsn: str) -> None:
    app = installed
    with psycopg.connect(app) as conn:
        with conn.transaction(force_rollback=True):
            conn.execute("INSERT INTO orders VALUES (1)")
            enqueue(conn, "ob-rolled-back", handler="noop")
        with conn.transaction():
            conn.execute("INSERT INTO orders VALUES (2)")
            row_id = enqueue(conn, "ob-committed", handler="noop", payload={"order": 2},
                             queue_name="emails", priority=5)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            intake = Intake(store, broker)
            await nursery.start(intake.run)
            relay = make_relay(app, store, broker, intake)
            done = await relay.relay_once()
            assert (done.taken, done.relayed, done.rejected) == (1, 1, 0)
            assert (await relay.relay_once()).taken == 0
            # The same row handed over again (as after a relay that died before its
            # delete committed) finds its task: still one.
            rows(app, "INSERT INTO distasks.outbox (id, request) VALUES (%s, %s)", row_id,
                 json.dumps({"name": "ob-committed", "handler": "noop",
                             "payload": {"order": 2}, "queue_name": "emails", "priority": 5}))
            again = await relay.relay_once()
            assert (again.taken, again.relayed) == (1, 1)
            nursery.cancel_scope.cancel()
    assert tasks_named(pg_dsn, "ob-") == [
        ("ob-committed", dedup_key_of("app", str(row_id)), "noop", {"order": 2}, "default",
         "emails")]
    assert rows(app, "SELECT count(*) FROM distasks.outbox") == [(0,)]
    assert rows(app, "SELECT id FROM orders") == [(2,)]
    # Through the commit-then-copy path: the run was copied into Redis.
    dispatched = rows(pg_dsn, "SELECT count(*) FROM task_runs WHERE dispatched_at IS NOT NULL")
    assert dispatched == [(1,)]


async def test_a_relay_cut_off_between_create_and_delete_makes_no_second_task(
        installed: str, store: Store, broker: Broker, pg_dsn: str) -> None:
    app = installed
    # The relay's DELETE waits for a lock this test holds: the task is created, the row
    # is not deleted yet.
    rows(app, f"""
        CREATE FUNCTION hold_delete() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_advisory_xact_lock_shared({HOLD_DELETE_LOCK}); RETURN NULL; END $$;
        CREATE TRIGGER hold_delete BEFORE DELETE ON distasks.outbox
            FOR EACH STATEMENT EXECUTE FUNCTION hold_delete();""")
    with psycopg.connect(app) as conn:
        row_id = enqueue(conn, "ob-once", handler="noop")
    with trio.fail_after(30), psycopg.connect(app, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (HOLD_DELETE_LOCK,))
        async with trio.open_nursery() as nursery:
            intake = Intake(store, broker)
            await nursery.start(intake.run)
            async with trio.open_nursery() as first:
                first.start_soon(make_relay(app, store, broker, intake).relay_once)
                await wait_until(lambda: trio.to_thread.run_sync(
                    lambda: tasks_named(pg_dsn, "ob-once")))
                await wait_until(lambda: trio.to_thread.run_sync(lambda: rows(
                    app, "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND application_name = 'distasks-relay' AND datname = current_database()")))
                first.cancel_scope.cancel()
            nursery.cancel_scope.cancel()
        # The first relay is gone (its connection closed); its server process too.
        rows(app, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
             "WHERE application_name = 'distasks-relay' AND datname = current_database()")
        holder.execute("SELECT pg_advisory_unlock(%s)", (HOLD_DELETE_LOCK,))
    assert rows(app, "SELECT id FROM distasks.outbox") == [(row_id,)]
    rows(app, "DROP TRIGGER hold_delete ON distasks.outbox")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            intake = Intake(store, broker)
            await nursery.start(intake.run)
            done = await make_relay(app, store, broker, intake).relay_once()
            nursery.cancel_scope.cancel()
    assert (done.taken, done.relayed) == (1, 1)
    assert len(tasks_named(pg_dsn, "ob-once")) == 1
    assert rows(app, "SELECT count(*) FROM distasks.outbox") == [(0,)]


async def test_relays_racing_on_one_source_never_make_a_task_twice(
        installed: str, store: Store, broker: Broker, pg_dsn: str) -> None:
    app = installed
    count = 400
    with psycopg.connect(app) as conn:
        for i in range(count):
            enqueue(conn, f"ob-race-{i:04}", handler="noop", payload={"i": i})
            if i % 50 == 49:
                conn.commit()
    metrics = Metrics()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            intakes = [Intake(store, broker) for _ in range(3)]
            for intake in intakes:
                await nursery.start(intake.run)

            async def drain(relay: Relay) -> None:
                while (await relay.relay_once()).taken:
                    await trio.lowlevel.checkpoint()

            async with trio.open_nursery() as racers:
                for intake in intakes:
                    racers.start_soon(drain, make_relay(app, store, broker, intake, name="app", batch=7,
                                                        metrics=metrics))
                    racers.start_soon(drain, make_relay(app, store, broker, intake, name="app", batch=13,
                                                        metrics=metrics))
            nursery.cancel_scope.cancel()
    made = tasks_named(pg_dsn, "ob-race-")
    assert len(made) == count
    assert len({dedup for _, dedup, *_ in made}) == count
    assert rows(app, "SELECT count(*) FROM distasks.outbox") == [(0,)]
    assert metrics.outbox_relayed.labels("app")._value.get() == count


async def test_bad_rows_are_moved_aside_with_their_reason_and_hold_up_nothing(
        installed: str, store: Store, broker: Broker, pg_dsn: str) -> None:
    app = installed
    with psycopg.connect(app) as conn:
        enqueue(conn, "ob-good-1", handler="noop")
        unknown = enqueue(conn, "ob-unknown", handler="no-such-handler")
        enqueue(conn, "ob-dedup-a", handler="noop", dedup_key="k1", payload={"v": 1})
        conflict = enqueue(conn, "ob-dedup-b", handler="noop", dedup_key="k1", payload={"v": 2})
        late = enqueue(conn, "ob-late", handler="noop", delay_seconds=-1.0)
        enqueue(conn, "ob-good-2", handler="noop")
    bad_priority = rows(app, "INSERT INTO distasks.outbox (request) VALUES (%s) RETURNING id",
                        json.dumps({"name": "ob-typed", "priority": "high"}))[0][0]
    nameless = rows(app, "INSERT INTO distasks.outbox (request) VALUES ('{}') RETURNING id")[0][0]
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            intake = Intake(store, broker)
            await nursery.start(intake.run)
            done = await make_relay(app, store, broker, intake, batch=4).relay_once()
            assert done.taken == 4
            relay = make_relay(app, store, broker, intake, batch=4)
            while (await relay.relay_once()).taken:
                pass
            nursery.cancel_scope.cancel()
    assert [name for name, *_ in tasks_named(pg_dsn, "ob-")] == [
        "ob-dedup-a", "ob-good-1", "ob-good-2"]
    rejected = dict(rows(app, "SELECT id, reason FROM distasks.outbox_rejected"))
    assert set(rejected) == {unknown, conflict, late, bad_priority, nameless}
    assert "no-such-handler" in rejected[unknown]
    assert "k1" in rejected[conflict] and "different request" in rejected[conflict]
    assert "delay_seconds" in rejected[late]
    assert "priority" in rejected[bad_priority]
    assert "name" in rejected[nameless]
    assert rows(app, "SELECT count(*) FROM distasks.outbox") == [(0,)]


def listening(app_dsn: str) -> bool:
    return bool(rows(app_dsn, "SELECT 1 FROM pg_stat_activity WHERE query = "
                     "'LISTEN distasks_outbox' AND application_name = 'distasks-relay' "
                     "AND datname = current_database()"))


async def test_a_commit_wakes_the_relay_through_listen(
        installed: str, store: Store, broker: Broker, pg_dsn: str) -> None:
    app = installed
    metrics = Metrics()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            intake = Intake(store, broker)
            await nursery.start(intake.run)
            # Polling once a minute: only the notification can wake it in time.
            await nursery.start(make_relay(app, store, broker, intake, poll_interval_s=60.0,
                                           metrics=metrics).run)
            await wait_until(lambda: trio.to_thread.run_sync(listening, app))
            await wait_until(lambda: trio.to_thread.run_sync(
                lambda: metrics.outbox_up.labels("app")._value.get() == 1))
            # A psycopg AsyncConnection driven by Trio (an asyncio one needs asyncio).
            async with await TrioConnection.connect_trio(app) as conn:
                await enqueue_async(conn, "ob-woken", handler="noop")
            with trio.fail_after(5):
                await wait_until(lambda: trio.to_thread.run_sync(
                    lambda: metrics.outbox_relayed.labels("app")._value.get() == 1))
            nursery.cancel_scope.cancel()
    assert [name for name, *_ in tasks_named(pg_dsn, "ob-woken")] == ["ob-woken"]


async def test_without_notifications_polling_finds_the_rows(
        installed: str, store: Store, broker: Broker, pg_dsn: str) -> None:
    app = installed
    rows(app, "DROP TRIGGER outbox_notify ON distasks.outbox")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            intake = Intake(store, broker)
            await nursery.start(intake.run)
            await nursery.start(make_relay(app, store, broker, intake, poll_interval_s=0.2).run)
            await wait_until(lambda: trio.to_thread.run_sync(listening, app))
            with psycopg.connect(app) as conn:
                enqueue(conn, "ob-polled", handler="noop")
            await wait_until(lambda: trio.to_thread.run_sync(
                lambda: tasks_named(pg_dsn, "ob-polled")))
            nursery.cancel_scope.cancel()


async def test_an_unreachable_source_is_retried_until_it_answers(
        store: Store, broker: Broker, app_dsn: str, pg_dsn: str) -> None:
    # The schema is not installed yet: every pass fails, the relay keeps trying.
    metrics = Metrics()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            intake = Intake(store, broker)
            await nursery.start(intake.run)
            await nursery.start(make_relay(app_dsn, store, broker, intake, poll_interval_s=0.2,
                                           metrics=metrics).run)
            await trio.sleep(0.5)  # a few passes fail meanwhile, none ends the relay
            assert metrics.outbox_up.labels("app")._value.get() == 0
            await outbox_store.install(app_dsn)
            with psycopg.connect(app_dsn) as conn:
                enqueue(conn, "ob-later", handler="noop")
            await wait_until(lambda: trio.to_thread.run_sync(
                lambda: tasks_named(pg_dsn, "ob-later")))
            nursery.cancel_scope.cancel()


def readme_example(language: str, n: int = 1) -> str:
    """The `n`th `language` example of the README's outbox section (1: a task's, 2: a
    workflow's)."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text.split("## Enqueue in your own transaction (outbox)")[1].split("\n## ")[0]
    return section.split(f"```{language}\n")[n].split("```")[0]


@pytest.mark.parametrize("language", ["sql", "python"])
async def test_the_readme_examples_hand_over_one_task(
        app_dsn: str, store: Store, broker: Broker, pg_dsn: str, language: str) -> None:
    await outbox_store.install(app_dsn)
    rows(app_dsn, "CREATE TABLE orders (id int PRIMARY KEY, customer text)")
    if language == "sql":
        with psycopg.connect(app_dsn, autocommit=True) as conn:
            conn.execute(readme_example("sql"))
    else:
        code = readme_example("python").replace('"postgresql://app@db/orders"', repr(app_dsn))
        exec(compile(code, "README.md", "exec"), {})  # noqa: S102 (the README's own example)
    rules = CreationRules(registry=builtin_registry(), default_handler="noop",
                          default_max_retries=3, max_payload_bytes=1 << 20)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            intake = Intake(store, broker)
            await nursery.start(intake.run)
            relay = Relay(OutboxSource(app_dsn), RelaySettings("orders", "default", 10, 60.0),
                          intake=intake, workflows=Workflows(store, broker, intake),
                          quotas=None, rules=lambda _tenant: rules,
                          metrics=Metrics(), health=Health())
            done = await relay.relay_once()
            nursery.cancel_scope.cancel()
    # No handler "ship" in this process: refused, with the reason, and nothing else lost.
    assert (done.taken, done.rejected) == (1, 1)
    reason = rows(app_dsn, "SELECT reason, request->>'queue_name' FROM distasks.outbox_rejected")
    assert reason and "ship" in reason[0][0] and reason[0][1] == "shipping"
    assert rows(app_dsn, "SELECT customer FROM orders") == [("ada",)]


async def test_rows_over_the_tenants_quota_wait_in_the_outbox(
        installed: str, store: Store, broker: Broker, pg_dsn: str, config: Config) -> None:
    app = installed
    with psycopg.connect(app) as conn:
        for i in range(5):
            enqueue(conn, f"ob-quota-{i}", handler="noop", queue_name="mail")
    quotas = TenantQuotas(broker, store, dataclasses.replace(
        config, tenants={"acme": TenantConfig(max_queued=3)}), time.time)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            intake = Intake(store, broker)
            await nursery.start(intake.run)
            relay = Relay(OutboxSource(app), RelaySettings("app", "acme", 10, 60.0),
                          intake=intake, workflows=Workflows(store, broker, intake),
                          quotas=quotas, rules=lambda _tenant: RULES,
                          metrics=Metrics(), health=Health())
            done = await relay.relay_once()
            nursery.cancel_scope.cancel()
    assert (done.taken, done.relayed, done.rejected) == (5, 3, 0) and done.held_s > 0
    made = tasks_named(pg_dsn, "ob-quota-")
    assert [(name, tenant, queue) for name, _, _, _, tenant, queue in made] == [
        (f"ob-quota-{i}", "acme", "acme/mail") for i in range(3)]
    left = rows(app, "SELECT request->>'name' FROM distasks.outbox ORDER BY seq")
    assert left == [("ob-quota-3",), ("ob-quota-4",)]


# -- workflows through the outbox ---------------------------------------------------------

# A fan-out and fan-in: a -> (b, c) -> d, on the noop handler.
DIAMOND = [{"key": "a", "name": "a", "handler": "noop"},
           {"key": "b", "name": "b", "handler": "noop", "depends_on": ["a"], "payload": {"x": None}},
           {"key": "c", "name": "c", "handler": "noop", "depends_on": ["a"]},
           {"key": "d", "name": "d", "handler": "noop",
            "depends_on": ["b", {"key": "c", "on_parent_failure": "continue"}]}]


def workflows_named(dsn: str, prefix: str) -> list[tuple[Any, ...]]:
    return rows(dsn, "SELECT w.name, w.dedup_key, w.tenant, w.open_nodes, "
                "(SELECT count(*) FROM tasks t WHERE t.workflow_id = w.id) "
                "FROM workflows w WHERE w.name LIKE %s ORDER BY w.name", prefix + "%")


async def test_a_rolled_back_workflow_leaves_none_and_a_committed_one_exactly_one(
        installed: str, store: Store, broker: Broker, pg_dsn: str) -> None:
    app = installed
    with psycopg.connect(app) as conn:
        with conn.transaction(force_rollback=True):
            conn.execute("INSERT INTO orders VALUES (1)")
            enqueue_workflow(conn, "wf-rolled-back", DIAMOND)
        with conn.transaction():
            conn.execute("INSERT INTO orders VALUES (2)")
            row_id = enqueue_workflow(conn, "wf-committed", DIAMOND,
                                      on_failure={"name": "alert", "handler": "noop"})
    request = rows(app, "SELECT kind, request FROM distasks.outbox")
    assert request == [("workflow", {"name": "wf-committed", "tasks": DIAMOND,
                                     "on_failure": {"name": "alert", "handler": "noop"}})]
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            intake = Intake(store, broker)
            await nursery.start(intake.run)
            relay = make_relay(app, store, broker, intake)
            done = await relay.relay_once()
            assert (done.taken, done.relayed, done.rejected) == (1, 1, 0)
            # The same row handed over again (a relay that died before its delete
            # committed) finds its workflow: still one.
            rows(app, "INSERT INTO distasks.outbox (id, kind, request) VALUES (%s, %s, %s)",
                 row_id, "workflow", json.dumps(request[0][1]))
            again = await relay.relay_once()
            assert (again.taken, again.relayed, again.rejected) == (1, 1, 0)
            nursery.cancel_scope.cancel()
    # Four nodes and the on_failure task, of the source's tenant, keyed by the row.
    assert workflows_named(pg_dsn, "wf-") == [
        ("wf-committed", dedup_key_of("app", str(row_id)), "default", 4, 5)]
    assert rows(app, "SELECT count(*) FROM distasks.outbox") == [(0,)]
    assert rows(app, "SELECT id FROM orders") == [(2,)]
    # The root was created queued and copied into Redis (commit, then copy); the others wait.
    statuses = rows(pg_dsn, "SELECT t.workflow_key, t.status, r.dispatched_at IS NOT NULL "
                    "FROM tasks t LEFT JOIN task_runs r ON r.task_id = t.id "
                    "WHERE t.workflow_id IS NOT NULL ORDER BY t.workflow_key")
    assert statuses == [("a", "queued", True), ("b", "pending", False),
                        ("c", "pending", False), ("d", "pending", False),
                        ("on_failure", "pending", False)]


async def test_a_cyclic_workflow_is_moved_aside_and_the_rows_behind_it_are_relayed(
        installed: str, store: Store, broker: Broker, pg_dsn: str) -> None:
    app = installed
    with psycopg.connect(app) as conn:
        enqueue(conn, "wf-task-before", handler="noop")
        cycle = enqueue_workflow(conn, "wf-cycle", [
            {"key": "a", "name": "a", "handler": "noop", "depends_on": ["c"]},
            {"key": "b", "name": "b", "handler": "noop", "depends_on": ["a"]},
            {"key": "c", "name": "c", "handler": "noop", "depends_on": ["b"]}])
        bad_task = enqueue_workflow(conn, "wf-bad-task", [
            {"key": "a", "name": "a", "handler": "noop"},
            {"key": "b", "name": "b", "handler": "no-such-handler", "depends_on": ["a"]}])
        enqueue_workflow(conn, "wf-good", DIAMOND, dedup_key="order-7")
        enqueue(conn, "wf-task-after", handler="noop")
    nodeless = rows(app, "INSERT INTO distasks.outbox (kind, request) VALUES "
                    "('workflow', %s) RETURNING id", json.dumps({"name": "wf-empty"}))[0][0]
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            intake = Intake(store, broker)
            await nursery.start(intake.run)
            done = await make_relay(app, store, broker, intake).relay_once()
            nursery.cancel_scope.cancel()
    assert (done.taken, done.relayed, done.rejected) == (6, 3, 3)
    assert workflows_named(pg_dsn, "wf-") == [("wf-good", "order-7", "default", 4, 4)]
    assert [name for name, *_ in tasks_named(pg_dsn, "wf-task-")] == [
        "wf-task-after", "wf-task-before"]
    rejected = dict(rows(app, "SELECT id, reason FROM distasks.outbox_rejected"))
    assert set(rejected) == {cycle, bad_task, nodeless}
    assert rejected[cycle] == "cycle: a -> b -> c -> a"
    assert rejected[bad_task].startswith("tasks.1: ") and "no-such-handler" in rejected[bad_task]
    assert "tasks" in rejected[nodeless]
    assert rows(app, "SELECT kind FROM distasks.outbox_rejected WHERE id = %s", cycle) == [
        ("workflow",)]
    assert rows(app, "SELECT count(*) FROM distasks.outbox") == [(0,)]


async def test_a_workflow_over_the_tenants_quota_waits_and_one_it_can_never_admit_is_refused(
        installed: str, store: Store, broker: Broker, pg_dsn: str, config: Config) -> None:
    app = installed
    with psycopg.connect(app) as conn:
        never = enqueue_workflow(conn, "wf-q-huge", [
            {"key": f"n{i}", "name": "n", "handler": "noop"} for i in range(6)])
        enqueue_workflow(conn, "wf-q-1", DIAMOND)
        enqueue(conn, "wf-q-task", handler="noop")
        enqueue_workflow(conn, "wf-q-2", DIAMOND)
    quotas = TenantQuotas(broker, store, dataclasses.replace(
        config, tenants={"acme": TenantConfig(max_queued=5)}), time.time)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            intake = Intake(store, broker)
            await nursery.start(intake.run)
            done = await make_relay(app, store, broker, intake, quotas=quotas,
                                    tenant="acme").relay_once()
            nursery.cancel_scope.cancel()
    # 6 nodes can never fit under 5; 4 + 1 fit; the next 4 wait for room.
    assert (done.taken, done.relayed, done.rejected) == (4, 2, 1) and done.held_s > 0
    assert workflows_named(pg_dsn, "wf-q-") == [("wf-q-1", mock.ANY, "acme", 4, 4)]
    assert [name for name, *_ in tasks_named(pg_dsn, "wf-q-task")] == ["wf-q-task"]
    assert "at most 5 tasks queued" in rows(
        app, "SELECT reason FROM distasks.outbox_rejected WHERE id = %s", never)[0][0]
    assert rows(app, "SELECT request->>'name' FROM distasks.outbox") == [("wf-q-2",)]


async def test_install_upgrades_an_outbox_made_before_workflows_and_keeps_its_rows(
        app_dsn: str) -> None:
    # The outbox table as the first release made it: kind 'task' only.
    rows(app_dsn, """
        CREATE SCHEMA distasks;
        CREATE TABLE distasks.outbox (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            seq bigint GENERATED ALWAYS AS IDENTITY,
            kind text NOT NULL DEFAULT 'task' CONSTRAINT outbox_kind CHECK (kind IN ('task')),
            request jsonb NOT NULL,
            created_at timestamptz NOT NULL DEFAULT clock_timestamp())""")
    kept = rows(app_dsn, "INSERT INTO distasks.outbox (request) VALUES (%s) RETURNING id",
                json.dumps({"name": "from before", "handler": "noop"}))[0][0]
    with pytest.raises(psycopg.errors.CheckViolation):
        rows(app_dsn, "INSERT INTO distasks.outbox (kind, request) VALUES ('workflow', '{}')")
    with trio.fail_after(20):
        await outbox_store.install(app_dsn)
        await outbox_store.install(app_dsn)  # and again: nothing left to change
    with psycopg.connect(app_dsn) as conn:
        added = enqueue_workflow(conn, "after", [{"key": "a", "name": "a"}])
    assert rows(app_dsn, "SELECT id, kind FROM distasks.outbox ORDER BY seq") == [
        (kept, "task"), (added, "workflow")]
    with psycopg.connect(app_dsn) as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("INSERT INTO distasks.outbox (kind, request) VALUES ('job', '{}')")


@pytest.mark.parametrize("language", ["sql", "python"])
async def test_the_readme_examples_hand_over_one_workflow(
        app_dsn: str, store: Store, broker: Broker, pg_dsn: str, language: str) -> None:
    await outbox_store.install(app_dsn)
    rows(app_dsn, "CREATE TABLE orders (id int PRIMARY KEY, customer text)")
    if language == "sql":
        with psycopg.connect(app_dsn, autocommit=True) as conn:
            conn.execute(readme_example("sql", 2))
    else:
        code = readme_example("python", 2).replace('"postgresql://app@db/orders"',
                                                   repr(app_dsn))
        exec(compile(code, "README.md", "exec"), {})  # noqa: S102 (the README's own example)
    # The README's handlers (charge, ship) made into noop's, so that the graph is accepted.
    rows(app_dsn, "UPDATE distasks.outbox SET request = jsonb_set(jsonb_set(request, "
         "'{tasks,0,handler}', '\"noop\"'), '{tasks,1,handler}', '\"noop\"')")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            intake = Intake(store, broker)
            await nursery.start(intake.run)
            done = await make_relay(app_dsn, store, broker, intake).relay_once()
            nursery.cancel_scope.cancel()
    assert (done.taken, done.relayed) == (1, 1)
    assert workflows_named(pg_dsn, "order 43") == [("order 43", mock.ANY, "default", 2, 2)]
    assert rows(pg_dsn, "SELECT workflow_key, payload FROM tasks ORDER BY workflow_key") == [
        ("charge", {"order": 43}), ("ship", {})]
    assert rows(app_dsn, "SELECT customer FROM orders") == [("grace",)]


async def test_a_batch_is_handed_over_in_seq_order(
        installed: str, store: Store, broker: Broker, pg_dsn: str) -> None:
    app = installed
    handed: list[list[str]] = []

    class RecordingIntake(Intake):
        async def create_many(self, tasks: Any) -> Any:
            handed.append([t.name for t in tasks])
            return await super().create_many(tasks)

    class RecordingWorkflows(Workflows):
        async def submit(self, wf: Any, **kw: Any) -> Any:
            handed.append([wf.name])
            return await super().submit(wf, **kw)

    with psycopg.connect(app) as conn:
        enqueue(conn, "t1", handler="noop")
        enqueue(conn, "t2", handler="noop")
        enqueue_workflow(conn, "w1", DIAMOND)
        enqueue_workflow(conn, "w2", DIAMOND)
        enqueue(conn, "t3", handler="noop")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            intake = RecordingIntake(store, broker)
            await nursery.start(intake.run)
            relay = Relay(OutboxSource(app), RelaySettings("app", "default", 10, 60.0),
                          intake=intake, workflows=RecordingWorkflows(store, broker, intake),
                          quotas=None, rules=lambda _tenant: RULES, metrics=Metrics(),
                          health=Health())
            done = await relay.relay_once()
            nursery.cancel_scope.cancel()
    assert (done.taken, done.relayed) == (5, 5)
    assert handed == [["t1", "t2"], ["w1"], ["w2"], ["t3"]]


async def test_the_async_helper_writes_the_row_the_sync_one_does(installed: str) -> None:
    app = installed
    with trio.fail_after(20):
        with psycopg.connect(app) as conn:
            enqueue_workflow(conn, "wf-twin", DIAMOND, dedup_key="k",
                             on_failure={"name": "alert"})
        # A psycopg AsyncConnection driven by Trio (an asyncio one needs asyncio).
        async with await TrioConnection.connect_trio(app) as aconn:
            await enqueue_workflow_async(aconn, "wf-twin", DIAMOND, dedup_key="k",
                                         on_failure={"name": "alert"})
    made = rows(app, "SELECT kind, request FROM distasks.outbox ORDER BY seq")
    assert len(made) == 2 and made[0] == made[1]
    assert made[0][1]["tasks"][1]["payload"] == {"x": None}  # a null in a payload stays
