"""Nothing accepted is lost, whatever single fault happens (DESIGN §5.1), and a handler
runs twice only after a fault, each time as an attempt on record (§5.2).

Each test creates 500 `chaos_sleep` tasks over HTTP against one or two daemons, injects
its fault once a third of them completed, waits until every accepted task is final in
PostgreSQL and counts from PostgreSQL and the handlers' execution log
(tests/system/faults.py). The servers are private: a PostgreSQL cluster and a Redis
started for this module on free loopback ports, so that they can be killed and
restarted. The shared ones are never touched.

Run: .venv/bin/pytest tests/system/test_faults.py   (about 1.5 minutes)
bench/chaos.py runs the same scenarios and prints one table row per fault.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from .faults import (
    EXIT_MARGIN_S,
    FAULTS,
    GRACE_S,
    STRESS_CYCLES,
    PrivatePostgres,
    PrivateRedis,
    Result,
    run_scenario,
)

pytestmark = pytest.mark.faults

# Tasks per scenario.
N = 500
# One scenario, everything included; a healthy one takes 7-40 s.
SCENARIO_TIMEOUT_S = 240.0


@pytest.fixture(scope="session")
def private_pg() -> Iterator[PrivatePostgres]:
    """One PostgreSQL cluster for the session (initdb takes seconds); each scenario
    creates and drops its own database in it."""
    try:
        pg = PrivatePostgres()
    except FileNotFoundError as e:
        pytest.skip(f"no PostgreSQL server programs: {e}")
    try:
        pg.init()
        pg.start()
        yield pg
    finally:
        pg.stop()


@pytest.fixture(scope="session")
def private_redis() -> Iterator[PrivateRedis]:
    try:
        server = PrivateRedis()
    except FileNotFoundError as e:
        pytest.skip(f"no redis-server: {e}")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def run_fault(private_pg: PrivatePostgres, private_redis: PrivateRedis, tmp_path: Path):
    async def run(name: str) -> Result:
        with trio.fail_after(SCENARIO_TIMEOUT_S):
            return await run_scenario(FAULTS[name], pg=private_pg, redis_server=private_redis,
                                      workdir=tmp_path, n=N)
    return run


def assert_nothing_lost(r: Result) -> None:
    """Every accepted task completed, no execution off the record, a second execution
    only where the fault forces a retry, no daemon died, every create accepted."""
    assert r.problems() == [], r.explain()
    assert r.tally.completed == r.tally.accepted == N, r.explain()


async def test_kill9_of_one_of_two_daemons_mid_run_loses_nothing(run_fault):
    r = await run_fault("kill9")
    assert_nothing_lost(r)
    # The killed daemon's runs were taken over as new attempts, each one on record.
    assert r.tally.duplicated <= r.tally.taken_over, r.explain()


async def test_redis_restarted_empty_mid_run_loses_nothing(run_fault):
    assert_nothing_lost(await run_fault("redis-empty"))


async def test_postgres_restarted_mid_run_loses_nothing(run_fault):
    assert_nothing_lost(await run_fault("pg-restart"))


async def test_connections_dropped_mid_run_lose_nothing(run_fault):
    assert_nothing_lost(await run_fault("conn-kill"))


async def test_sigterm_of_one_of_two_daemons_mid_run_loses_nothing_and_exits_zero(run_fault):
    r = await run_fault("sigterm")
    assert_nothing_lost(r)
    [stop] = r.stops
    assert stop.returncode == 0, r.explain()
    assert stop.seconds <= GRACE_S + EXIT_MARGIN_S, r.explain()


async def test_sigterm_and_restart_cycles_lose_nothing(run_fault):
    r = await run_fault("cancel-stress")
    assert_nothing_lost(r)
    assert len(r.stops) == STRESS_CYCLES, r.explain()
    assert all(s.returncode == 0 and s.seconds <= GRACE_S + EXIT_MARGIN_S
               for s in r.stops), r.explain()
