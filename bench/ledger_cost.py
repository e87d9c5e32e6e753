"""What one task costs PostgreSQL: WAL bytes, commits and server CPU per task, batched and
unbatched. The figures behind docs/architecture.md's "Past one PostgreSQL": they say
which of PostgreSQL's limits a deployment meets first as it adds daemons.

A private PostgreSQL cluster (initdb in /tmp, as the fault tests make one) so that nothing
else writes WAL or commits meanwhile: `fsync` and `synchronous_commit` off as in the
tests, but `full_page_writes` on as in production (WAL volume includes the page images
written after each checkpoint). One daemon works queue `ledger` with the built-in `noop`
handler; the shared Redis is used under a prefix of its own.

Phases, each measured from `pg_current_wal_lsn()`, `pg_stat_database.xact_commit` and the
CPU of every PostgreSQL process (/proc) between its start and the moment every task of
the phase is `completed`:
  batched:    `--tasks` tasks created by `POST /api/v1/tasks/batch` (500 per request);
  sequential: `--sequential` single creates, each sent when the previous one answered.

Usage: .venv/bin/python bench/ledger_cost.py [--tasks 20000] [--sequential 1000] [--json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import trio
from throughput import DEFAULT_REDIS_URL, REPO_ROOT, delete_redis_keys

from distasks.testing.daemon import DaemonProcess, running
from distasks.testing.daemon import daemon_env as own_daemon_env
from distasks.testing.servers import PrivatePostgres

QUEUE = "ledger"
BATCH = 500
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
PHASE_TIMEOUT_S = 900.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def postgres_cpu_s(pg: PrivatePostgres) -> float:
    """User + system CPU of the postmaster and its live children (backends, WAL writer,
    checkpointer, ...). A backend that exits takes its CPU with it: the daemon's
    connections live through a phase."""
    postmaster = int((pg.data / "postmaster.pid").read_text().split()[0])
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry.name), int(fields[1])
        if pid == postmaster or ppid == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def production_page_writes(pg: PrivatePostgres) -> None:
    """Turn full_page_writes back on (the private cluster turns it off for the tests)."""
    with open(pg.data / "postgresql.conf", "a") as conf:
        conf.write("full_page_writes = on\n")


class Counters:
    def __init__(self, pg: PrivatePostgres, dbname: str):
        self.pg, self.dbname = pg, dbname

    def read(self) -> dict[str, float]:
        with psycopg.connect(self.pg.dsn(self.dbname), autocommit=True) as conn:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            lsn, commits = conn.execute(
                "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn, xact_commit FROM pg_stat_database"
                " WHERE datname = current_database()").fetchone()  # type: ignore[misc]
        return {"wal": float(lsn), "commits": float(commits), "cpu": postgres_cpu_s(self.pg),
                "t": time.monotonic()}


def completed(pg: PrivatePostgres, dbname: str) -> int:
    with psycopg.connect(pg.dsn(dbname)) as conn:
        return int(conn.execute("SELECT count(*) FROM tasks WHERE status = 'completed'")
                   .fetchone()[0])  # type: ignore[index]


def post(conn: http.client.HTTPConnection, path: str, body: Any) -> Any:
    data = json.dumps(body).encode()
    conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    text = r.read()
    if r.status not in (200, 201):
        raise RuntimeError(f"POST {path}: {r.status} {text[:300]!r}")
    return json.loads(text)


def create_batched(url: str, n: int) -> None:
    conn = http.client.HTTPConnection(urlsplit(url).netloc, timeout=60)
    task = {"name": "ledger", "handler": "noop", "queue_name": QUEUE}
    for start in range(0, n, BATCH):
        post(conn, "/api/v1/tasks/batch", {"tasks": [task] * min(BATCH, n - start)})
    conn.close()


def create_sequential(url: str, n: int) -> None:
    conn = http.client.HTTPConnection(urlsplit(url).netloc, timeout=60)
    for _ in range(n):
        post(conn, "/api/v1/tasks", {"name": "ledger", "handler": "noop", "queue_name": QUEUE})
    conn.close()


async def phase(name: str, counters: Counters, pg: PrivatePostgres, dbname: str, url: str,
                n: int, create: Any) -> dict[str, Any]:
    done_before = await trio.to_thread.run_sync(completed, pg, dbname)
    before = await trio.to_thread.run_sync(counters.read)
    with trio.fail_after(PHASE_TIMEOUT_S):
        await trio.to_thread.run_sync(create, url, n)
        while await trio.to_thread.run_sync(completed, pg, dbname) < done_before + n:  # noqa: ASYNC110 (rows in PostgreSQL)
            await trio.sleep(0.05)
    after = await trio.to_thread.run_sync(counters.read)
    elapsed = after["t"] - before["t"]
    return {"phase": name, "tasks": n, "seconds": round(elapsed, 2),
            "tasks_per_s": round(n / elapsed),
            "wal_bytes_per_task": round((after["wal"] - before["wal"]) / n),
            "commits_per_task": round((after["commits"] - before["commits"]) / n, 3),
            "postgres_cpu_ms_per_task": round((after["cpu"] - before["cpu"]) * 1000 / n, 3)}


async def bench(opts: argparse.Namespace) -> dict[str, Any]:
    pg = PrivatePostgres()
    prefix = f"distasks_ledger_{os.getpid()}"
    try:
        await trio.to_thread.run_sync(pg.init)
        await trio.to_thread.run_sync(production_page_writes, pg)
        await trio.to_thread.run_sync(pg.start)
        await trio.to_thread.run_sync(pg.create_database, "ledger")
        env = own_daemon_env(database_url=pg.dsn("ledger"), redis_url=opts.redis_url,
                             prefix=prefix,
                             settings={"DISTASKS_LOG_LEVEL": "WARNING",
                                       "DISTASKS_LOG_ACCESS": "false",
                                       "DISTASKS_AUTH_ANONYMOUS": "loopback",
                                       "DISTASKS_LIMITS_PER_MINUTE": "0",
                                       "QUEUE_NAMES": QUEUE,
                                       "WORKER_CONCURRENCY": str(opts.concurrency)})
        daemon = DaemonProcess("ledger", env, REPO_ROOT / ".local" / "bench-ledger.log",
                               config=REPO_ROOT / "config/distasks.toml", cwd=REPO_ROOT)
        counters = Counters(pg, "ledger")
        async with running(daemon, ready_timeout_s=READY_TIMEOUT_S,
                           stop_timeout_s=STOP_TIMEOUT_S) as d:
            await phase("warm-up", counters, pg, "ledger", d.url, 500, create_batched)
            phases = [await phase("batched", counters, pg, "ledger", d.url, opts.tasks,
                                  create_batched)]
            if opts.sequential:
                phases.append(await phase("sequential", counters, pg, "ledger", d.url,
                                          opts.sequential, create_sequential))
    finally:
        await trio.to_thread.run_sync(pg.stop)
        deleted = await trio.to_thread.run_sync(delete_redis_keys, opts.redis_url, prefix)
        print(f"cleanup: private PostgreSQL removed, {deleted} Redis keys under {prefix}:*"
              " deleted", file=sys.stderr)
    return {"config": {"tasks": opts.tasks, "sequential": opts.sequential,
                       "batch_request": BATCH, "concurrency": opts.concurrency,
                       "handler": "noop", "cpus": os.cpu_count(),
                       "load": os.getloadavg(), "python": platform.python_version(),
                       "postgres": "private, fsync off, synchronous_commit off, "
                                   "full_page_writes on"},
            "phases": phases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--sequential", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", DEFAULT_REDIS_URL))
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()
    result = trio.run(bench, opts)
    c = result["config"]
    print(f"config: {json.dumps(c)}")
    print(f"{'phase':<11} {'tasks':>6} {'tasks/s':>8} {'WAL B/task':>11} {'commits/task':>13}"
          f" {'PG CPU ms/task':>15}")
    for p in result["phases"]:
        print(f"{p['phase']:<11} {p['tasks']:>6} {p['tasks_per_s']:>8} "
              f"{p['wal_bytes_per_task']:>11} {p['commits_per_task']:>13} "
              f"{p['postgres_cpu_ms_per_task']:>15}")
    if opts.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
