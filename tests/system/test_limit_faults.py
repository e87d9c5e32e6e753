"""A limit survives a dead daemon (architecture §5, promise 8): runs a `kill -9` leaves
leased under `max_running` hold their slots only until their lease expires, then the
reaper of a surviving daemon takes them over, releases the slots and the work goes on,
never more runs at once than the limit, and nothing is left holding a slot at the end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import trio

from distasks.testing.workload import query

# A short lease, so that the takeover comes within seconds.
LEASE_S = 2.0
REAPER_INTERVAL_S = 0.2
LIMIT = 2
# Long enough that both limited runs are still running on the first daemon when it dies.
LONG_MS = 3_000
SHORT_TASKS = 8
# Allowance above the lease for the second daemon's start-up and its reaper's first pass
# (a loaded CI box).
TAKEOVER_MARGIN_S = 15.0


def chaos_lines(path: Path) -> list[tuple[str, int, int]]:
    """(task id, attempt, pid) of every execution started, in order."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [(t, int(a), int(p)) for t, a, _run, p in (line.split() for line in lines)]


async def started(path: Path, n: int) -> None:
    """Wait until `n` executions started (the caller bounds the time)."""
    while len(chaos_lines(path)) < n:  # noqa: ASYNC110 (another process writes the file)
        await trio.sleep(0.02)


async def test_a_killed_daemon_holding_limited_runs_releases_them_within_the_lease(
        start_daemon, daemon_env, pg_dsn: str, tmp_path: Path):
    chaos_log = tmp_path / "executions.log"
    env = {**daemon_env,
           "DISTASKS_WORKER_HANDLERS": "distasks.testing.chaos_handlers",
           "DISTASKS_CHAOS_LOG": str(chaos_log),
           "DISTASKS_LIMITS_PER_MINUTE": "0",
           "DISTASKS_WORKER_LEASE_S": str(LEASE_S),
           "DISTASKS_RECOVERY_REAPER_INTERVAL_S": str(REAPER_INTERVAL_S),
           "WORKER_CONCURRENCY": "4"}
    with trio.fail_after(120):
        async with start_daemon(env) as first, httpx.AsyncClient(
                base_url=first.url, timeout=10.0, trust_env=False) as client:
            r = await client.patch("/api/v1/queues/default", json={"max_running": LIMIT})
            assert r.status_code == 200, r.text
            long_ids = []
            for _ in range(LIMIT):
                r = await client.post("/api/v1/tasks", json={
                    "name": "long", "handler": "chaos_sleep", "payload": {"ms": LONG_MS}})
                assert r.status_code == 201, r.text
                long_ids.append(r.json()["task_id"])
            await started(chaos_log, LIMIT)
            short_ids = []
            for _ in range(SHORT_TASKS):
                r = await client.post("/api/v1/tasks", json={
                    "name": "short", "handler": "chaos_sleep", "payload": {"ms": 50}})
                assert r.status_code == 201, r.text
                short_ids.append(r.json()["task_id"])
            first_pid = first.process.pid  # type: ignore[union-attr]
            assert {pid for _t, _a, pid in chaos_lines(chaos_log)} == {first_pid}
            first.kill9()
            await first.wait_exit()
            killed_at = datetime.now(UTC)

        async with start_daemon(env) as second, httpx.AsyncClient(
                base_url=second.url, timeout=10.0, trust_env=False) as client:
            while True:
                r = await client.get("/api/v1/tasks", params={"limit": 100})
                assert r.status_code == 200, r.text
                if all(t["status"] == "completed" for t in r.json()["tasks"]):
                    break
                await trio.sleep(0.1)
            r = await client.get("/api/v1/queues")
            (queue,) = [q for q in r.json()["queues"] if q["name"] == "default"]
            assert queue["max_running"] == LIMIT
            assert (queue["leased"], queue["waiting_for_limit"], queue["ready"]) == (0, 0, 0), queue

    executions = chaos_lines(chaos_log)
    retried = [(t, a, pid) for t, a, pid in executions if t in long_ids and a == 2]
    assert sorted(t for t, _a, _pid in retried) == sorted(long_ids)
    assert all(pid != first_pid for _t, _a, pid in retried)
    assert sorted(t for t, a, _pid in executions if t in short_ids) == sorted(short_ids)

    rows = await query(pg_dsn, "SELECT task_id::text, attempt, status, started_at, finished_at,"
                               " error FROM task_runs WHERE started_at IS NOT NULL")
    assert rows is not None
    killed = [r for r in rows if r[0] in long_ids and r[1] == 1]
    assert len(killed) == LIMIT
    assert all(r[2] == "retrying" and "lease_expired" in r[5] for r in killed), killed
    # Taken over once the lease ran out, at the second daemon's first reaper passes (it
    # starts while the lease runs), not after some longer timeout. Both clocks are this
    # machine's.
    took_over = max(r[4] for r in killed)
    assert took_over - killed_at < timedelta(seconds=LEASE_S + TAKEOVER_MARGIN_S)
    taken_over_at = {r[0]: r[4] for r in killed}
    assert all(r[3] >= taken_over_at[r[0]] for r in rows if r[0] in long_ids and r[1] == 2)
    # Never more than LIMIT runs at once, the killed ones counted until their takeover.
    events = sorted([(r[3], 1) for r in rows] + [(r[4], -1) for r in rows],
                    key=lambda e: (e[0], e[1]))
    running = peak = 0
    for _at, step in events:
        running += step
        peak = max(peak, running)
    assert peak == LIMIT
