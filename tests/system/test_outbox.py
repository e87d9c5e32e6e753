"""The outbox with running daemons (architecture §10): a daemon killed with kill -9
between creating a row's task and deleting the row leaves exactly one task once another
relays the source, and two daemons relaying one source while rows keep coming never
create a task twice. Each test's application database is its own (`app_dsn`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import trio

from distasks.daemon.creation import CreationRules
from distasks.daemon.health import Health
from distasks.daemon.intake import Intake
from distasks.daemon.metrics import Metrics
from distasks.daemon.relay import Relay, RelaySettings
from distasks.daemon.workflows import Workflows
from distasks.handlers import builtin_registry
from distasks.outbox import enqueue, enqueue_workflow
from distasks.store import outbox as outbox_store
from distasks.store.outbox import OutboxSource
from distasks.testing.daemon import free_port
from distasks.testing.servers import PrivatePostgres
from tests.integration.helpers import wait_until

RULES = CreationRules(registry=builtin_registry(), default_handler="demo",
                      default_max_retries=3, max_payload_bytes=1 << 20)
# The advisory lock key the test holds to stop the relay inside its DELETE.
HOLD_DELETE_LOCK = 4243


def rows(dsn: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


async def query(dsn: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    return await trio.to_thread.run_sync(lambda: rows(dsn, sql, *params))


async def relayed(url: str) -> int:
    """The daemon's distasks_outbox_relayed_total for source "app" (/metrics answers
    loopback without a key: auth.metrics_networks)."""
    async with httpx.AsyncClient(trust_env=False) as client:
        text = (await client.get(f"{url}/metrics")).text
    line = next((x for x in text.splitlines()
                 if x.startswith('distasks_outbox_relayed_total{source="app"}')), None)
    return int(float(line.split()[-1])) if line else 0


def config_file(tmp_path: Path, app_dsn: str) -> str:
    path = tmp_path / "outbox.toml"
    path.write_text(f'[[outbox]]\nname = "app"\ndatabase_url = "{app_dsn}"\n'
                    "batch = 50\npoll_interval_s = 0.5\n")
    return str(path)


async def test_a_daemon_killed_between_create_and_delete_leaves_exactly_one_task(
        start_daemon, daemon_env, app_dsn: str, pg_dsn: str, tmp_path: Path) -> None:
    await outbox_store.install(app_dsn)
    rows(app_dsn, f"""
        CREATE FUNCTION hold_delete() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_advisory_xact_lock_shared({HOLD_DELETE_LOCK}); RETURN NULL; END $$;
        CREATE TRIGGER hold_delete BEFORE DELETE ON distasks.outbox
            FOR EACH STATEMENT EXECUTE FUNCTION hold_delete();""")
    config = config_file(tmp_path, app_dsn)
    with trio.fail_after(90), psycopg.connect(app_dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (HOLD_DELETE_LOCK,))
        async with start_daemon(daemon_env, config=config) as d:
            with psycopg.connect(app_dsn) as conn:
                row_id = enqueue(conn, "ob-killed", handler="noop", payload={"n": 1})
            # The task is committed in distasks, the relay waits inside its DELETE.
            await wait_until(lambda: query(pg_dsn, "SELECT 1 FROM tasks WHERE name = 'ob-killed'"))
            await wait_until(lambda: query(
                app_dsn, "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND application_name = 'distasks-relay' AND datname = current_database()"))
            d.kill9()
            await d.wait_exit()
        # The server notices the dead client only once its wait ends: end it now.
        rows(app_dsn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
             "WHERE application_name = 'distasks-relay' AND datname = current_database()")
        holder.execute("SELECT pg_advisory_unlock(%s)", (HOLD_DELETE_LOCK,))
        assert rows(app_dsn, "SELECT id FROM distasks.outbox") == [(row_id,)]
        rows(app_dsn, "DROP TRIGGER hold_delete ON distasks.outbox")
        async with start_daemon(daemon_env, config=config) as d:
            await wait_until(lambda: query(app_dsn, "SELECT 1 WHERE NOT EXISTS "
                                                    "(SELECT 1 FROM distasks.outbox)"))
            await wait_until(lambda: query(pg_dsn, "SELECT 1 FROM tasks WHERE name = "
                                                   "'ob-killed' AND status = 'completed'"))
            # A relaying daemon stops cleanly too.
            assert await d.stop() == 0, d.tail()
            assert '"crashed"' not in d.log()
    assert rows(pg_dsn, "SELECT count(*) FROM tasks WHERE name = 'ob-killed'") == [(1,)]
    # One success. The killed daemon may have been running the task when it died (on a
    # busy box the window is wide enough): the next daemon's takeover is then a second
    # attempt of the same task, which is at-least-once, not a second task.
    assert rows(pg_dsn, "SELECT count(*) FROM task_runs r JOIN tasks t ON t.id = r.task_id "
                        "WHERE t.name = 'ob-killed' AND r.status = 'succeeded'") == [(1,)]


async def test_a_daemon_killed_between_submit_and_delete_leaves_one_workflow_that_completes(
        start_daemon, daemon_env, app_dsn: str, pg_dsn: str, tmp_path: Path) -> None:
    """The same crash for a row of kind 'workflow': the workflow is committed in distasks,
    the daemon dies before the row's delete commits, and the next daemon finds the
    workflow by the row's dedup key instead of submitting a second; the graph (a fan-out
    and fan-in on the noop handler) then runs to the end."""
    await outbox_store.install(app_dsn)
    rows(app_dsn, f"""
        CREATE FUNCTION hold_delete() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_advisory_xact_lock_shared({HOLD_DELETE_LOCK}); RETURN NULL; END $$;
        CREATE TRIGGER hold_delete BEFORE DELETE ON distasks.outbox
            FOR EACH STATEMENT EXECUTE FUNCTION hold_delete();""")
    config = config_file(tmp_path, app_dsn)
    graph = [{"key": "split", "name": "split", "handler": "noop"},
             *({"key": f"part-{i}", "name": "part", "handler": "noop", "payload": {"i": i},
                "depends_on": ["split"]} for i in range(3)),
             {"key": "join", "name": "join", "handler": "noop",
              "depends_on": [f"part-{i}" for i in range(3)]}]
    with trio.fail_after(90), psycopg.connect(app_dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (HOLD_DELETE_LOCK,))
        async with start_daemon(daemon_env, config=config) as d:
            with psycopg.connect(app_dsn) as conn:
                row_id = enqueue_workflow(conn, "wf-killed", graph)
            await wait_until(lambda: query(pg_dsn, "SELECT 1 FROM workflows "
                                                   "WHERE name = 'wf-killed'"))
            await wait_until(lambda: query(
                app_dsn, "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND application_name = 'distasks-relay' AND datname = current_database()"))
            d.kill9()
            await d.wait_exit()
        rows(app_dsn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
             "WHERE application_name = 'distasks-relay' AND datname = current_database()")
        holder.execute("SELECT pg_advisory_unlock(%s)", (HOLD_DELETE_LOCK,))
        assert rows(app_dsn, "SELECT id FROM distasks.outbox") == [(row_id,)]
        rows(app_dsn, "DROP TRIGGER hold_delete ON distasks.outbox")
        async with start_daemon(daemon_env, config=config) as d:
            await wait_until(lambda: query(app_dsn, "SELECT 1 WHERE NOT EXISTS "
                                                    "(SELECT 1 FROM distasks.outbox)"))
            await wait_until(lambda: query(pg_dsn, "SELECT 1 FROM workflows WHERE name = "
                                                   "'wf-killed' AND state = 'succeeded'"))
            assert await d.stop() == 0, d.tail()
    assert rows(pg_dsn, "SELECT count(*), min(dedup_key) FROM workflows") == [
        (1, f"outbox:app:{row_id}")]
    # One task per node (the root may have run twice: the first daemon may have been
    # killed while running it, and a lease taken over is an ordinary retry).
    assert rows(pg_dsn, "SELECT workflow_key, status FROM tasks ORDER BY workflow_key") == [
        ("join", "completed"), ("part-0", "completed"), ("part-1", "completed"),
        ("part-2", "completed"), ("split", "completed")]
    assert rows(app_dsn, "SELECT count(*) FROM distasks.outbox_rejected") == [(0,)]


async def test_two_daemons_relaying_one_source_never_create_a_task_twice(
        start_daemon, daemon_env, app_dsn: str, pg_dsn: str, tmp_path: Path) -> None:
    await outbox_store.install(app_dsn)
    config = config_file(tmp_path, app_dsn)
    count, per_commit = 1000, 20

    def produce() -> None:
        with psycopg.connect(app_dsn) as conn:
            for i in range(count):
                enqueue(conn, f"ob-two-{i:05}", handler="noop", payload={"i": i})
                if i % per_commit == per_commit - 1:
                    conn.commit()

    with trio.fail_after(120):
        async with start_daemon(daemon_env, config=config) as first, \
                start_daemon(dict(daemon_env, HTTP_PORT=str(free_port())),
                             config=config) as second:
            await trio.to_thread.run_sync(produce)
            await wait_until(lambda: query(
                pg_dsn, "SELECT 1 FROM tasks WHERE name LIKE 'ob-two-%%' "
                "HAVING count(*) >= %s", count), interval_s=0.2)
            await wait_until(lambda: query(app_dsn, "SELECT 1 WHERE NOT EXISTS "
                                                    "(SELECT 1 FROM distasks.outbox)"))
            # Each row deleted by exactly one of them (the split between them varies).
            split = [await relayed(d.url) for d in (first, second)]
            assert sum(split) == count, split
    made = rows(pg_dsn, "SELECT count(*), count(DISTINCT dedup_key) FROM tasks "
                        "WHERE name LIKE 'ob-two-%%'")
    assert made == [(count, count)]
    assert rows(app_dsn, "SELECT count(*) FROM distasks.outbox_rejected") == [(0,)]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "distasks", "outbox", "install", *args],
                          capture_output=True, text=True, timeout=60)


def test_outbox_install_from_the_command_line_is_idempotent(app_dsn: str) -> None:
    for _ in range(2):
        done = cli("--database-url", app_dsn)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("outbox schema installed in ")
    with psycopg.connect(app_dsn) as conn:
        enqueue(conn, "after two installs")
    assert rows(app_dsn, "SELECT request->>'name' FROM distasks.outbox") == [
        ("after two installs",)]
    printed = cli("--print-sql")
    assert printed.returncode == 0 and "FUNCTION DISTASKS.ENQUEUE(" in printed.stdout.upper()
    unreachable = cli("--database-url", "postgresql://postgres@127.0.0.1:1/none?connect_timeout=2")
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith("distasks: PostgreSQL is unavailable: ")
    assert len(unreachable.stderr.strip().splitlines()) == 1


async def test_the_relay_outlives_its_source_going_away_and_resumes_by_itself(
        store, broker, pg_dsn: str) -> None:
    """Architecture §5.6: the application's PostgreSQL stops (a private server), the
    relay keeps failing passes without ending, and once the server is back it listens
    again and relays what is committed there."""
    try:
        pg = PrivatePostgres()
    except FileNotFoundError as e:
        pytest.skip(f"no PostgreSQL server programs: {e}")
    metrics = Metrics()
    try:
        await trio.to_thread.run_sync(pg.init)
        await trio.to_thread.run_sync(pg.start)
        app = pg.dsn()
        await outbox_store.install(app)
        with trio.fail_after(90):
            async with trio.open_nursery() as nursery:
                intake = Intake(store, broker)
                await nursery.start(intake.run)
                relay = Relay(OutboxSource(app), RelaySettings("app", "default", 100, 0.5),
                              intake=intake, workflows=Workflows(store, broker, intake),
                              quotas=None, rules=lambda _tenant: RULES,
                              metrics=metrics, health=Health())
                await nursery.start(relay.run)
                up = metrics.outbox_up.labels("app")
                with psycopg.connect(app) as conn:
                    enqueue(conn, "ob-before", handler="noop")
                await wait_until(lambda: query(pg_dsn, "SELECT 1 FROM tasks "
                                                       "WHERE name = 'ob-before'"))
                await trio.to_thread.run_sync(pg.halt)
                await wait_until(lambda: trio.to_thread.run_sync(lambda: up._value.get() == 0))
                await trio.to_thread.run_sync(pg.start)
                with psycopg.connect(app) as conn:
                    enqueue(conn, "ob-after", handler="noop")
                relayed = metrics.outbox_relayed.labels("app")
                await wait_until(lambda: trio.to_thread.run_sync(
                    lambda: relayed._value.get() == 2))
                assert up._value.get() == 1
                nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(pg.stop)
    assert rows(pg_dsn, "SELECT name FROM tasks WHERE name LIKE 'ob-%%' ORDER BY name") == [
        ("ob-after",), ("ob-before",)]


async def test_kill9_of_one_of_two_relaying_daemons_mid_stream_makes_each_task_once(
        start_daemon, daemon_env, app_dsn: str, pg_dsn: str, tmp_path: Path) -> None:
    """Crash points by chance rather than by a lock: rows keep coming while one of two
    daemons is killed mid-stream; every row still ends as exactly one task."""
    await outbox_store.install(app_dsn)
    config = config_file(tmp_path, app_dsn)
    count = 1500

    def produce() -> None:
        with psycopg.connect(app_dsn) as conn:
            for i in range(count):
                enqueue(conn, f"ob-k-{i:05}", handler="noop")
                if i % 10 == 9:
                    conn.commit()

    with trio.fail_after(120):
        async with start_daemon(daemon_env, config=config), \
                start_daemon(dict(daemon_env, HTTP_PORT=str(free_port())),
                             config=config) as victim:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.to_thread.run_sync, produce)
                await wait_until(lambda: query(
                    pg_dsn, "SELECT 1 FROM tasks WHERE name LIKE 'ob-k-%%' "
                    "HAVING count(*) >= %s", count // 3), interval_s=0.05)
                victim.kill9()
                await victim.wait_exit()
            await wait_until(lambda: query(
                pg_dsn, "SELECT 1 FROM tasks WHERE name LIKE 'ob-k-%%' "
                "HAVING count(*) >= %s", count), interval_s=0.2)
            await wait_until(lambda: query(app_dsn, "SELECT 1 WHERE NOT EXISTS "
                                                    "(SELECT 1 FROM distasks.outbox)"))
    assert rows(pg_dsn, "SELECT count(*), count(DISTINCT dedup_key) FROM tasks "
                        "WHERE name LIKE 'ob-k-%%'") == [(count, count)]
    assert rows(app_dsn, "SELECT count(*) FROM distasks.outbox_rejected") == [(0,)]
