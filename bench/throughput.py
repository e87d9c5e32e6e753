"""Throughput and latency of one distasks daemon, measured from outside.

The daemon runs as a subprocess configured only by environment variables, in a
database and under a Redis key prefix of its own, both removed at the end. The bench
speaks HTTP to it and reads the outcome from PostgreSQL; of distasks it imports only the
harness that runs the daemon (distasks.testing), so it measures what a client sees. Six
phases:

  a. create   N concurrent POSTs into a queue no worker consumes (requests/s, latency)
  b. drain    a second daemon subscribed to that queue works the N tasks off (tasks/s,
              from the runs' finished_at in PostgreSQL, so the start-up does not count)
  c. latency  creates at a fixed rate (open loop) into the worked queue; for each task,
              run.started_at minus the client's send time (same host, same wall clock)
  d. sequential  single creates one after another into the worked queue (creates/s, and
              the daemon's CPU per whole unbatched cycle)
  e. batch    batch creates of --batch-size tasks into a queue no worker consumes
  f. keyed    phase d again with an API key and a rate limit on: their cost per create

Usage: .venv/bin/python bench/throughput.py [--tasks N] [--clients C] [--json] ...
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
import trio
from psycopg import sql

from distasks.testing.daemon import DaemonProcess
from distasks.testing.daemon import daemon_env as own_daemon_env

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"

DEFAULT_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

# The queue the tasks of phases a-c go to, and the one the first daemon works on
# instead (any other name: its workers must not compete with the creates).
BENCH_QUEUE = "bench"
IDLE_QUEUE = "bench-idle"
# Phase e's batch creates go here: no daemon works it.
BATCH_QUEUE = "bench-batch"

# How long a fresh daemon may take to answer /readyz 200 (it migrates the schema first).
READY_TIMEOUT_S = 60.0
# SIGTERM to exit: the daemon's grace period (10 s) + its hard-stop margin (4 s) + slack.
STOP_TIMEOUT_S = 30.0
# Any single HTTP request; far above any healthy latency, so it only catches hangs.
HTTP_TIMEOUT_S = 30.0
# How often PostgreSQL is asked whether the tasks are done.
POLL_INTERVAL_S = 0.2
# A phase's time limit is BASE + count / SLOWEST_RATE: generous, but bounded.
PHASE_TIMEOUT_BASE_S = 60.0
SLOWEST_ACCEPTABLE_RATE_PER_S = 25.0
# The open-loop sender starts its schedule this far in the future, so the first
# sends are not late because of set-up work.
SCHEDULE_LEAD_S = 0.2
# Lines of a daemon's output shown when it printed something unexpected, and when it
# died (a whole traceback).
OUTPUT_TAIL_LINES = 10
CRASH_TAIL_LINES = 60


# -- numbers ---------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: always one of the measured values, never interpolated."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def latency_summary_ms(values_s: Sequence[float]) -> dict[str, float]:
    return {"p50_ms": round(percentile(values_s, 50) * 1000, 2),
            "p99_ms": round(percentile(values_s, 99) * 1000, 2),
            "max_ms": round(max(values_s, default=math.nan) * 1000, 2)}


# -- CPU accounting (Linux /proc; zeros elsewhere) ---------------------------------------


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of `pid` (all its threads) so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After the ")" that ends the command name, utime and stime are fields 12 and 13.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_s() -> list[float]:
    """The machine's CPU seconds since boot, all cores, by kind: /proc/stat's first line
    (user, nice, system, idle, iowait, irq, softirq, steal, ...); empty if unreadable."""
    try:
        ticks = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return []
    hz = os.sysconf("SC_CLK_TCK")
    return [int(x) / hz for x in ticks]


def system_cpu_s(kinds: list[float] | None = None) -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, all cores, since boot (of
    `kinds`, a machine_cpu_s() reading, if given)."""
    s = machine_cpu_s() if kinds is None else kinds
    if not s:
        return 0.0, 0.0
    return sum(s) - s[3] - s[4], sum(s)  # less idle and iowait


@dataclass
class CpuMeter:
    """CPU used during one phase, so a figure can be read as daemon-, bench- or
    machine-bound: on a small box the bench, the daemon, PostgreSQL and Redis share
    the same cores."""

    daemon_pid: int
    wall_start_s: float = field(default_factory=time.perf_counter)
    daemon_start_s: float = 0.0
    bench_start_s: float = field(default_factory=time.process_time)
    system_start: tuple[float, float] = field(default_factory=system_cpu_s)

    def __post_init__(self) -> None:
        self.daemon_start_s = process_cpu_s(self.daemon_pid)

    def read(self) -> dict[str, float]:
        """Percent of one core for the daemon, the bench and everything else (PostgreSQL,
        Redis, other people's work); percent of all cores busy."""
        wall_s = max(time.perf_counter() - self.wall_start_s, 1e-9)
        busy_s, total_s = system_cpu_s()
        busy_delta_s = busy_s - self.system_start[0]
        total_delta_s = max(total_s - self.system_start[1], 1e-9)
        daemon_s = process_cpu_s(self.daemon_pid) - self.daemon_start_s
        bench_s = time.process_time() - self.bench_start_s
        return {
            "daemon_pct_of_core": round(100 * daemon_s / wall_s, 1),
            "bench_pct_of_core": round(100 * bench_s / wall_s, 1),
            "rest_pct_of_core": round(100 * max(busy_delta_s - daemon_s - bench_s, 0) / wall_s, 1),
            "machine_busy_pct": round(100 * busy_delta_s / total_delta_s, 1),
        }


# -- resources: database and Redis prefix -------------------------------------------------


@dataclass(frozen=True)
class Resources:
    """Where this run's data lives; unique per run, removed by `provisioned`."""

    admin_dsn: str
    redis_url: str
    name: str  # database name and Redis prefix alike

    @property
    def dsn(self) -> str:
        info = psycopg.conninfo.conninfo_to_dict(self.admin_dsn)
        info["dbname"] = self.name
        return psycopg.conninfo.make_conninfo("", **info)


@contextmanager
def provisioned(admin_dsn: str, redis_url: str) -> Iterator[Resources]:
    """Create an empty database for the run; drop it and the run's Redis keys after.

    The daemon applies its own schema at start, as in production.
    """
    res = Resources(admin_dsn, redis_url, f"distasks_bench_{secrets.token_hex(4)}")
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(res.name)))
    try:
        yield res
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                         .format(sql.Identifier(res.name)))
        try:
            deleted = delete_redis_keys(redis_url, res.name)
        except redis.RedisError as e:
            print(f"cleanup: dropped database {res.name}; Redis keys under {res.name}:* "
                  f"NOT deleted: {e}", file=sys.stderr)
        else:
            print(f"cleanup: dropped database {res.name}, deleted {deleted} Redis keys "
                  f"under {res.name}:*", file=sys.stderr)


def delete_redis_keys(redis_url: str, prefix: str) -> int:
    """Delete the keys under `prefix:` by SCAN, never FLUSHDB: the DB may be shared."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.unlink(*keys[start:start + 1000])
        return len(keys)
    finally:
        client.close()


class Database:
    """One autocommit connection for the bench's reads, used from a worker thread so
    that the (blocking) psycopg calls never stall the Trio loop that sends requests."""

    def __init__(self, dsn: str):
        self._conn = psycopg.connect(dsn, autocommit=True)

    def close(self) -> None:
        self._conn.close()

    async def rows(self, query: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[tuple[Any, ...]]:
        def run() -> list[tuple[Any, ...]]:
            return self._conn.execute(query, params).fetchall()

        return await trio.to_thread.run_sync(run)


# -- the daemon under test ----------------------------------------------------------------


def daemon_env(res: Resources, *, queues: str, concurrency: int) -> dict[str, str]:
    """The daemon's whole configuration: built-in defaults plus these variables (none
    inherited: a DISTASKS_* setting left in the caller's shell cannot skew the figures)."""
    return own_daemon_env(database_url=res.dsn, redis_url=res.redis_url, prefix=res.name,
                          settings={"QUEUE_NAMES": queues,
                                    "WORKER_CONCURRENCY": str(concurrency),
                                    "DISTASKS_LOG_LEVEL": "WARNING",
                                    "DISTASKS_WORKER_DEFAULT_HANDLER": "noop",
                                    # the bench is a local client without a key, at
                                    # rates far over the default per-principal limit
                                    "DISTASKS_AUTH_ANONYMOUS": "loopback",
                                    "DISTASKS_LIMITS_PER_MINUTE": "0"})


@dataclass
class Daemon:
    """A daemon under measurement: the harness's process (distasks.testing), plus when it
    was spawned and how it stopped, for the report."""

    proc: DaemonProcess
    spawned_at_s: float  # wall clock
    exit_code: int | None = None
    stop_s: float | None = None

    @property
    def label(self) -> str:
        return self.proc.name

    @property
    def base_url(self) -> str:
        return self.proc.url

    @property
    def process(self) -> trio.Process:
        assert self.proc.process is not None
        return self.proc.process

    def report(self) -> dict[str, Any]:
        """Exit status and anything it printed: at log level WARNING a healthy run
        prints nothing."""
        out = self.proc.log().splitlines()
        assert self.proc.stderr_path is not None
        err = self.proc.stderr_path.read_text(errors="replace").splitlines()
        return {"exit_code": self.exit_code, "stop_s": self.stop_s,
                "log_lines": len(out), "stderr_lines": len(err),
                "log_tail": out[-OUTPUT_TAIL_LINES:], "stderr_tail": err[-OUTPUT_TAIL_LINES:]}


@asynccontextmanager
async def running_daemon(label: str, env: dict[str, str], out_dir: Path,
                         code_dir: Path) -> AsyncIterator[Daemon]:
    """`distasks serve` of `code_dir` for the block, ready when it yields; SIGTERM and
    wait after.

    If the daemon exits while in use, the block is cancelled with BenchError at once,
    rather than measuring thousands of refused connections. Its output goes to files,
    not pipes: a pipe nobody reads would block it.
    """
    proc = DaemonProcess(label, env, out_dir / f"{label}.out", cwd=code_dir,
                         stderr_path=out_dir / f"{label}.err")
    await proc.start()
    daemon = Daemon(proc, time.time())
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail_on_exit, daemon)
            await wait_ready(daemon)
            yield daemon
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await stop(daemon)


class BenchError(Exception):
    """The bench could not measure: a daemon did not start or died, or a phase ran out
    of time."""


async def fail_on_exit(daemon: Daemon) -> None:
    """Raise BenchError when the daemon exits; the bench cancels this before its SIGTERM."""
    await daemon.proc.wait_exit()
    raise BenchError(
        f"{daemon.label} exited with {daemon.proc.returncode} "
        f"{time.time() - daemon.spawned_at_s:.1f}s after start, before the bench sent "
        f"SIGTERM\n{daemon.proc.tail(CRASH_TAIL_LINES)}")


async def wait_ready(daemon: Daemon) -> None:
    """Until /readyz answers 200; BenchError after READY_TIMEOUT_S (`fail_on_exit` watches
    for an early exit)."""
    with trio.move_on_after(READY_TIMEOUT_S):
        await daemon.proc.wait_ready()
        return
    raise BenchError(f"{daemon.label} not ready after {READY_TIMEOUT_S:g}s\n"
                     f"{daemon.proc.tail(OUTPUT_TAIL_LINES)}")


async def stop(daemon: Daemon) -> None:
    """SIGTERM, then wait up to STOP_TIMEOUT_S; kill it if it does not exit by then."""
    started_s = time.perf_counter()
    if await daemon.proc.stop(STOP_TIMEOUT_S) is None and daemon.proc.returncode is not None:
        print(f"{daemon.label}: no exit {STOP_TIMEOUT_S:g}s after SIGTERM, killed it",
              file=sys.stderr)
    daemon.exit_code = daemon.proc.returncode
    daemon.stop_s = round(time.perf_counter() - started_s, 2)


class Connections:
    """`count` keep-alive HTTP connections to the daemon, each used by one request at
    a time, loopback only (no proxies from the environment).

    One httpx client per connection, not one client with a pool of `count`: httpcore's
    pool scans every connection for every queued request (is_idle, a poll() per socket),
    so with 64 connections the bench itself became the bottleneck (py-spy: 40% of its
    CPU in AsyncConnectionPool._assign_requests_to_connections) and capped creates at
    about 150/s while the daemon sat half idle.
    """

    def __init__(self, base_url: str, count: int):
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        self.clients = [httpx.AsyncClient(base_url=base_url, limits=limits,
                                          timeout=HTTP_TIMEOUT_S, trust_env=False)
                        for _ in range(count)]
        self._idle_send, self._idle = trio.open_memory_channel[httpx.AsyncClient](count)
        for client in self.clients:
            self._idle_send.send_nowait(client)

    @asynccontextmanager
    async def borrow(self) -> AsyncIterator[httpx.AsyncClient]:
        """An idle connection for one request; waits while all are busy."""
        client = await self._idle.receive()
        try:
            yield client
        finally:
            self._idle_send.send_nowait(client)

    async def warm_up(self) -> None:
        """Open every connection before timing, with a request that writes nothing."""
        async with trio.open_nursery() as nursery:
            for client in self.clients:
                nursery.start_soon(client.get, "/healthz")

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


@asynccontextmanager
async def connections(base_url: str, count: int) -> AsyncIterator[Connections]:
    conns = Connections(base_url, count)
    try:
        await conns.warm_up()
        yield conns
    finally:
        with trio.CancelScope(shield=True):
            await conns.aclose()


def phase_timeout_s(count: int) -> float:
    return PHASE_TIMEOUT_BASE_S + count / SLOWEST_ACCEPTABLE_RATE_PER_S


def create_body(queue: str, handler: str = "noop") -> dict[str, str]:
    return {"name": "bench", "handler": handler, "queue_name": queue}


# -- batching, read from timestamps ---------------------------------------------------------

# Rows that share a timestamp were written together: tasks.created_at is now() of the
# transaction that created them (the API's group commit), and a run's started_at is one
# value per claim (one Redis claim + one UPDATE). So these counts tell how well the
# daemon batches (architecture §1) without looking inside it.
BATCHES_IN_QUEUE = """
SELECT count(*), count(DISTINCT t.created_at), count(DISTINCT r.started_at)
FROM tasks t JOIN task_runs r ON r.task_id = t.id AND r.attempt = 1
WHERE t.queue_name = %s
"""
BATCHES_AMONG = """
SELECT count(*), count(DISTINCT t.created_at), count(DISTINCT r.started_at)
FROM tasks t JOIN task_runs r ON r.task_id = t.id AND r.attempt = 1
WHERE t.id = ANY(%s)
"""


def batching(row: tuple[int, int, int]) -> dict[str, float]:
    """Transactions and claims, and how many tasks each carried on average."""
    tasks, create_txs, claims = row
    return {"create_transactions": create_txs,
            "tasks_per_create_transaction": round(tasks / create_txs, 1) if create_txs else 0,
            "claims": claims, "runs_per_claim": round(tasks / claims, 1) if claims else 0}


# -- phase a: create ----------------------------------------------------------------------


async def measure_creates(db: Database, conns: Connections, *, queue: str, tasks: int,
                          daemon_pid: int) -> dict[str, Any]:
    """`tasks` creates from one closed-loop sender per connection (each sends its next
    request when the previous one is answered), so the rate is what the daemon sustains."""
    latencies_s: list[float] = []
    errors: Counter[str] = Counter()
    indexes = iter(range(tasks))  # shared: each index is taken by exactly one sender

    async def sender(client: httpx.AsyncClient) -> None:
        for _ in indexes:
            sent_s = time.perf_counter()
            try:
                response = await client.post("/api/v1/tasks", json=create_body(queue))
                if response.status_code != 201:
                    errors[f"HTTP {response.status_code}"] += 1
            except httpx.HTTPError as e:
                errors[type(e).__name__] += 1
            latencies_s.append(time.perf_counter() - sent_s)

    cpu = CpuMeter(daemon_pid)
    started_s = time.perf_counter()
    with trio.fail_after(phase_timeout_s(tasks)):
        async with trio.open_nursery() as nursery:
            for client in conns.clients:
                nursery.start_soon(sender, client)
    elapsed_s = time.perf_counter() - started_s
    cpu_use = cpu.read()
    [row] = await db.rows(BATCHES_IN_QUEUE, (queue,))
    return {"requests": tasks, "elapsed_s": round(elapsed_s, 3),
            "requests_per_s": round(tasks / elapsed_s, 1), **latency_summary_ms(latencies_s),
            "errors": dict(errors), "cpu": cpu_use, "batching": batching(row)}


# -- phase b: drain -----------------------------------------------------------------------

# Progress of a queue's drain: succeeded runs and the span of their finish times.
DRAIN_PROGRESS = """
SELECT count(*), min(r.finished_at), max(r.finished_at)
FROM task_runs r JOIN tasks t ON t.id = r.task_id
WHERE t.queue_name = %s AND r.status = 'succeeded'
"""

# Final states of a queue's tasks and runs; anything but completed / succeeded is a defect.
TASK_STATES = "SELECT status, count(*) FROM tasks WHERE queue_name = %s GROUP BY 1"
RUN_STATES = """
SELECT r.status, count(*) FROM task_runs r JOIN tasks t ON t.id = r.task_id
WHERE t.queue_name = %s GROUP BY 1
"""


async def measure_drain(db: Database, daemon: Daemon, *, queue: str,
                        tasks: int) -> dict[str, Any]:
    """Wait until `tasks` runs of `queue` succeeded; the rate comes from their
    finished_at, so the daemon's start-up and the polling period do not count."""
    cpu = CpuMeter(daemon.process.pid)
    done, first, last = 0, None, None
    with trio.move_on_after(phase_timeout_s(tasks)) as scope:
        while done < tasks:
            await trio.sleep(POLL_INTERVAL_S)
            [(done, first, last)] = await db.rows(DRAIN_PROGRESS, (queue,))
    result: dict[str, Any] = {"completed": done, "expected": tasks,
                              "timed_out": scope.cancelled_caught, "cpu": cpu.read()}
    if first is not None and last is not None and done > 1:
        span_s = (last - first).total_seconds()
        result["span_s"] = round(span_s, 3)
        result["tasks_per_s"] = round((done - 1) / span_s, 1) if span_s > 0 else math.inf
        # From spawning the daemon to its first finished run: start-up plus first claim.
        result["first_finish_after_spawn_s"] = round(first.timestamp() - daemon.spawned_at_s, 3)
    result["states"] = await final_states(db, queue)
    [row] = await db.rows(BATCHES_IN_QUEUE, (queue,))
    result["batching"] = batching(row)
    return result


async def final_states(db: Database, queue: str) -> dict[str, dict[str, int]]:
    return {"tasks": dict(await db.rows(TASK_STATES, (queue,))),
            "runs": dict(await db.rows(RUN_STATES, (queue,)))}


# -- phase c: enqueue -> start latency -------------------------------------------------------

# For each task: when its create transaction began (tasks.created_at is now() of that
# transaction), and when its first attempt started and finished.
FIRST_RUNS = """
SELECT t.id, t.created_at, r.started_at, r.finished_at, r.status
FROM tasks t JOIN task_runs r ON r.task_id = t.id AND r.attempt = 1
WHERE t.id = ANY(%s)
"""
SUCCEEDED_AMONG = "SELECT count(*) FROM task_runs WHERE task_id = ANY(%s) AND status = 'succeeded'"


async def send_at_rate(conns: Connections, *, queue: str, rate_per_s: float, duration_s: float,
                       handler: str = "noop") -> tuple[dict[uuid.UUID, float], dict[str, Any]]:
    """Open loop: request i leaves at start + i / rate whether or not earlier ones were
    answered, so a slow daemon cannot slow the arrivals down and hide its queueing.

    Returns each created task's client-side send time (wall clock) by task id.
    """
    count = int(rate_per_s * duration_s)
    sent_at_s: dict[uuid.UUID, float] = {}
    latencies_s: list[float] = []
    lag_s: list[float] = []  # how late each send left: the bench's own delay
    errors: Counter[str] = Counter()

    async def send_one() -> None:
        # Stamped before waiting for a free connection: waiting is part of the latency.
        sent_s, mono_s = time.time(), time.perf_counter()
        try:
            async with conns.borrow() as client:
                response = await client.post("/api/v1/tasks", json=create_body(queue, handler))
        except httpx.HTTPError as e:
            errors[type(e).__name__] += 1
            return
        latencies_s.append(time.perf_counter() - mono_s)
        if response.status_code == 201:
            sent_at_s[uuid.UUID(response.json()["task_id"])] = sent_s
        else:
            errors[f"HTTP {response.status_code}"] += 1

    start = trio.current_time() + SCHEDULE_LEAD_S
    with trio.fail_after(duration_s + phase_timeout_s(count)):
        async with trio.open_nursery() as nursery:
            for i in range(count):
                due = start + i / rate_per_s
                await trio.sleep_until(due)
                lag_s.append(trio.current_time() - due)
                nursery.start_soon(send_one)
    sending = {"requests": count, "create": latency_summary_ms(latencies_s),
               "send_lag_p99_ms": round(percentile(lag_s, 99) * 1000, 2),
               "send_lag_max_ms": round(max(lag_s, default=0.0) * 1000, 2),
               "send_lag_max_at": lag_s.index(max(lag_s)) if lag_s else None,
               "errors": dict(errors)}
    return sent_at_s, sending


async def wait_succeeded(db: Database, task_ids: list[uuid.UUID]) -> bool:
    """Poll until every task in `task_ids` has a succeeded run; False on timeout."""
    with trio.move_on_after(phase_timeout_s(len(task_ids))):
        while True:
            [(done,)] = await db.rows(SUCCEEDED_AMONG, (task_ids,))
            if done >= len(task_ids):
                return True
            await trio.sleep(POLL_INTERVAL_S)
    return False


async def enqueue_to_start_histogram(daemon: Daemon, queue: str) -> tuple[float, float]:
    """(sum in seconds, count) of the daemon's distasks_enqueue_to_start_seconds for
    `queue`, from /metrics."""
    found = {"sum": 0.0, "count": 0.0}
    async with httpx.AsyncClient(base_url=daemon.base_url, timeout=10) as client:
        text = (await client.get("/metrics")).raise_for_status().text
    for line in text.splitlines():
        for part in found:
            if line.startswith(f'distasks_enqueue_to_start_seconds_{part}{{queue="{queue}"}}'):
                found[part] = float(line.rsplit(" ", 1)[1])
    return found["sum"], found["count"]


async def measure_start_latency(db: Database, conns: Connections, daemon: Daemon, *,
                                queue: str, rate_per_s: float,
                                duration_s: float) -> dict[str, Any]:
    """Enqueue -> start (and -> finish) per task: run times from PostgreSQL minus the
    client's send time. Both clocks are this machine's wall clock. A run's `started_at`
    is when it was marked running: by its claim, or, for a run started at create, by
    the create statement itself; the daemon's own enqueue_to_start histogram (read from
    /metrics before and after) adds what that leaves out, the wait from the create's
    commit to the handler's start."""
    cpu = CpuMeter(daemon.process.pid)
    sum_before_s, count_before = await enqueue_to_start_histogram(daemon, queue)
    sent_at_s, sending = await send_at_rate(conns, queue=queue, rate_per_s=rate_per_s,
                                            duration_s=duration_s)
    ids = list(sent_at_s)
    all_done = await wait_succeeded(db, ids)
    cpu_use = cpu.read()
    rows = await db.rows(FIRST_RUNS, (ids,))
    sent = [(sent_at_s[tid], created, started, finished) for tid, created, started, finished, _
            in rows if started and finished]
    not_succeeded = Counter(status for *_, status in rows if status != "succeeded")
    [batch_row] = await db.rows(BATCHES_AMONG, (ids,))
    sum_after_s, count_after = await enqueue_to_start_histogram(daemon, queue)
    observed = count_after - count_before
    return {**sending, "rate_per_s": rate_per_s, "duration_s": duration_s,
            "daemon_enqueue_to_start": {
                "runs": int(observed),
                "mean_ms": round((sum_after_s - sum_before_s) / observed * 1000, 3)
                if observed else None},
            "created": len(ids), "all_succeeded": all_done,
            "first_runs_not_succeeded": dict(not_succeeded),
            "enqueue_to_start": latency_summary_ms([st.timestamp() - s for s, _, st, _ in sent]),
            "enqueue_to_finish": latency_summary_ms([f.timestamp() - s for s, _, _, f in sent]),
            # Where enqueue -> start goes: until the create transaction begins (HTTP, and
            # waiting for the previous batch to commit), then from there to the start
            # (insert, commit, Redis push, claim).
            "send_to_create_tx": latency_summary_ms([c.timestamp() - s for s, c, _, _ in sent]),
            "create_tx_to_running": latency_summary_ms([(st - c).total_seconds()
                                                        for _, c, st, _ in sent]),
            "cpu": cpu_use,
            "batching": batching(batch_row)}


# -- phase d: sequential single creates --------------------------------------------------------


async def measure_sequential(db: Database, daemon: Daemon, *, queue: str, tasks: int,
                             headers: dict[str, str] | None = None) -> dict[str, Any]:
    """One client creates `tasks` tasks one after another into a worked queue, each sent
    when the previous one was answered: nothing batches, so the daemon's CPU per task
    is the cost of one whole unbatched cycle (HTTP create, commit, push, claim, start,
    run, record)."""
    cpu = CpuMeter(daemon.process.pid)
    latencies_s: list[float] = []
    ids: list[uuid.UUID] = []
    errors: Counter[str] = Counter()
    started_s = time.perf_counter()
    async with connections(daemon.base_url, 1) as conns:
        [client] = conns.clients
        with trio.fail_after(phase_timeout_s(tasks)):
            for _ in range(tasks):
                sent_s = time.perf_counter()
                try:
                    response = await client.post("/api/v1/tasks", json=create_body(queue),
                                                 headers=headers)
                except httpx.HTTPError as e:
                    errors[type(e).__name__] += 1
                    continue
                latencies_s.append(time.perf_counter() - sent_s)
                if response.status_code == 201:
                    ids.append(uuid.UUID(response.json()["task_id"]))
                else:
                    errors[f"HTTP {response.status_code}"] += 1
    elapsed_s = time.perf_counter() - started_s
    all_done = await wait_succeeded(db, ids)
    cpu_use = cpu.read()
    daemon_cpu_s = cpu_use["daemon_pct_of_core"] / 100 * (time.perf_counter() - started_s)
    [batch_row] = await db.rows(BATCHES_AMONG, (ids,))
    return {"requests": tasks, "elapsed_s": round(elapsed_s, 3),
            "requests_per_s": round(tasks / elapsed_s, 1), "create": latency_summary_ms(latencies_s),
            "all_succeeded": all_done, "errors": dict(errors),
            "daemon_cpu_ms_per_task": round(1000 * daemon_cpu_s / max(len(ids), 1), 2),
            "cpu": cpu_use, "batching": batching(batch_row)}


# -- phase f: sequential creates with an API key ---------------------------------------------

# Creates sent to phase f's fresh daemon before it is measured.
WARMUP_CREATES = 300


async def measure_keyed(db: Database, res: Resources, opts: Options, out_dir: Path,
                        code_dir: Path) -> dict[str, Any] | None:
    """Phase d again on a daemon that needs a key for every call and counts every request
    against a rate limit set too high to refuse any: what authentication and rate
    limiting cost per create (None for code without `distasks keys`)."""
    env = daemon_env(res, queues=BENCH_QUEUE, concurrency=opts.concurrency)
    env.update({"DISTASKS_AUTH_ANONYMOUS": "none", "DISTASKS_LIMITS_PER_MINUTE": "6000000"})
    made = await trio.run_process(
        [sys.executable, "-m", "distasks", "keys", "create", "--name", "bench",
         "--scope", "tasks:write"], env=env, cwd=code_dir, capture_stdout=True,
        capture_stderr=True, check=False)
    if made.returncode != 0:
        return None
    token = made.stdout.decode().strip()
    headers = {"Authorization": f"Bearer {token}"}
    async with running_daemon("daemon3", env, out_dir, code_dir) as d3:
        # As warm as daemon 2 was for phase d: connections open, statements prepared.
        await measure_sequential(db, d3, queue=BENCH_QUEUE, tasks=WARMUP_CREATES,
                                 headers=headers)
        result = await measure_sequential(db, d3, queue=BENCH_QUEUE, tasks=opts.sequential,
                                          headers=headers)
    result["daemon3"] = d3.report()
    return result


def print_keyed(keyed: dict[str, Any] | None, plain: dict[str, Any] | None) -> None:
    if keyed is None:
        print("f. keyed: skipped (this code has no `distasks keys`)")
        return
    cost = ""
    if plain:
        extra = keyed["daemon_cpu_ms_per_task"] - plain["daemon_cpu_ms_per_task"]
        cost = (f"; authentication + rate limit cost {extra:+.2f} ms CPU per create "
                f"({100 * extra / plain['daemon_cpu_ms_per_task']:+.1f} %)")
    print(f"f. keyed: phase d with an API key and a rate limit: "
          f"{keyed['requests_per_s']} creates/s; create p50 {keyed['create']['p50_ms']} ms; "
          f"daemon CPU per whole cycle {keyed['daemon_cpu_ms_per_task']} ms{cost}; "
          f"errors {keyed['errors'] or 'none'}")


# -- phase e: batch creates ----------------------------------------------------------------------


async def measure_batch_creates(db: Database, daemon: Daemon, *, queue: str, batches: int,
                                batch_size: int, clients: int) -> dict[str, Any]:
    """`batches` POST /api/v1/tasks/batch requests of `batch_size` tasks each, from
    `clients` closed-loop senders, into a queue no daemon works."""
    cpu = CpuMeter(daemon.process.pid)
    latencies_s: list[float] = []
    errors: Counter[str] = Counter()
    indexes = iter(range(batches))
    body = {"tasks": [create_body(queue) for _ in range(batch_size)]}

    async def sender(client: httpx.AsyncClient) -> None:
        for _ in indexes:
            sent_s = time.perf_counter()
            try:
                response = await client.post("/api/v1/tasks/batch", json=body)
                if response.status_code != 200:
                    errors[f"HTTP {response.status_code}"] += 1
            except httpx.HTTPError as e:
                errors[type(e).__name__] += 1
            latencies_s.append(time.perf_counter() - sent_s)

    started_s = time.perf_counter()
    async with connections(daemon.base_url, clients) as conns:
        with trio.fail_after(phase_timeout_s(batches * batch_size)):
            async with trio.open_nursery() as nursery:
                for client in conns.clients:
                    nursery.start_soon(sender, client)
    elapsed_s = time.perf_counter() - started_s
    cpu_use = cpu.read()
    [(created,)] = await db.rows("SELECT count(*) FROM tasks WHERE queue_name = %s", (queue,))
    return {"requests": batches, "batch_size": batch_size, "clients": clients,
            "elapsed_s": round(elapsed_s, 3), "tasks_created": created,
            "tasks_per_s": round(created / elapsed_s, 1), "request": latency_summary_ms(latencies_s),
            "errors": dict(errors), "cpu": cpu_use}


# -- the run --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    tasks: int
    clients: int
    concurrency: int
    rate_per_s: float
    duration_s: float
    json: bool
    ref: str | None
    sequential: int
    batches: int
    batch_size: int


async def run_phases(res: Resources, opts: Options, out_dir: Path,
                     code_dir: Path) -> dict[str, Any]:
    """Daemon 1 (works another queue) takes the creates; daemon 2 (works BENCH_QUEUE)
    drains them, then serves the steady-rate phase."""
    results: dict[str, Any] = {}
    db = Database(res.dsn)
    try:
        idle_env = daemon_env(res, queues=IDLE_QUEUE,
                              concurrency=opts.concurrency)
        async with running_daemon("daemon1", idle_env, out_dir, code_dir) as d1:
            async with connections(d1.base_url, opts.clients) as conns:
                results["create"] = await measure_creates(
                    db, conns, queue=BENCH_QUEUE, tasks=opts.tasks, daemon_pid=d1.process.pid)
        print_create(results["create"])
        results["daemon1"] = d1.report()

        work_env = daemon_env(res, queues=BENCH_QUEUE,
                              concurrency=opts.concurrency)
        async with running_daemon("daemon2", work_env, out_dir, code_dir) as d2:
            created = results["create"]["requests"] - sum(results["create"]["errors"].values())
            results["drain"] = await measure_drain(db, d2, queue=BENCH_QUEUE, tasks=created)
            print_drain(results["drain"])
            async with connections(d2.base_url, opts.clients) as conns:
                results["latency"] = await measure_start_latency(
                    db, conns, d2, queue=BENCH_QUEUE, rate_per_s=opts.rate_per_s,
                    duration_s=opts.duration_s)
            print_latency(results["latency"])
            if opts.sequential:
                results["sequential"] = await measure_sequential(
                    db, d2, queue=BENCH_QUEUE, tasks=opts.sequential)
                print_sequential(results["sequential"])
            if opts.batches:
                results["batch"] = await measure_batch_creates(
                    db, d2, queue=BATCH_QUEUE, batches=opts.batches,
                    batch_size=opts.batch_size, clients=min(opts.clients, 4))
                print_batch(results["batch"])
        results["daemon2"] = d2.report()
        if opts.sequential:
            results["keyed"] = await measure_keyed(db, res, opts, out_dir, code_dir)
            print_keyed(results["keyed"], results.get("sequential"))
        results["final_states"] = await final_states(db, BENCH_QUEUE)
    finally:
        db.close()
    return results


# -- output ---------------------------------------------------------------------------------


def header(opts: Options, res: Resources, code_dir: Path) -> dict[str, Any]:
    """What the figures depend on: sizes, code version, interpreter, machine."""
    commit = git("rev-parse", "--short", opts.ref or "HEAD")
    if opts.ref is None and git("status", "--porcelain", "--", "distasks"):
        commit += "+uncommitted changes in distasks/"
    return {"tasks": opts.tasks, "clients": opts.clients, "concurrency": opts.concurrency,
            "rate_per_s": opts.rate_per_s, "duration_s": opts.duration_s,
            "sequential": opts.sequential, "batches": opts.batches,
            "batch_size": opts.batch_size, "commit": commit,
            "code": str(imported_from(code_dir)),
            "python": platform.python_version(), "cpus": os.cpu_count(),
            # Other work on the machine skews every figure: note how busy it was.
            "load_avg_1min": round(os.getloadavg()[0], 2),
            "daemon_config": daemon_summary(res, opts, code_dir)}


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60, check=True).stdout.strip()


@contextmanager
def code_tree(ref: str | None) -> Iterator[Path]:
    """Where the daemon runs from: the working tree, or `ref` exported to a temporary
    directory, so that a run measures one commit while others edit distasks/.

    `python -m` puts the current directory first on sys.path, ahead of the editable
    install's finder, so the daemon imports the exported copy.
    """
    if ref is None:
        yield REPO_ROOT
        return
    with tempfile.TemporaryDirectory(prefix="distasks-code-") as tmp:
        archive = subprocess.run(["git", "archive", ref, "distasks"], cwd=REPO_ROOT,
                                 capture_output=True, timeout=60, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, timeout=60, check=True)
        yield Path(tmp)


def imported_from(code_dir: Path) -> Path:
    """The distasks package a daemon started in `code_dir` imports (checks `code_tree`)."""
    done = subprocess.run([sys.executable, "-c", "import distasks; print(distasks.__file__)"],
                          cwd=code_dir, capture_output=True, text=True, timeout=60, check=True)
    return Path(done.stdout.strip()).parent


def daemon_summary(res: Resources, opts: Options, code_dir: Path) -> str:
    """The daemon's own one-line summary of its settings (`distasks check-config`)."""
    env = daemon_env(res, queues=BENCH_QUEUE, concurrency=opts.concurrency)
    done = subprocess.run([sys.executable, "-m", "distasks", "check-config"], env=env,
                          cwd=code_dir, capture_output=True, text=True, timeout=60)
    lines = (done.stdout or done.stderr).splitlines()
    return lines[0] if lines else f"(check-config exited {done.returncode})"


def print_header(h: dict[str, Any]) -> None:
    print(f"distasks throughput bench  commit {h['commit']}  python {h['python']}  "
          f"cpus {h['cpus']}  load {h['load_avg_1min']}")
    print(f"  code: {h['code']}")
    print(f"  tasks={h['tasks']} clients={h['clients']} concurrency={h['concurrency']} "
          f"rate={h['rate_per_s']:g}/s duration={h['duration_s']:g}s "
          f"sequential={h['sequential']} batches={h['batches']}x{h['batch_size']}")
    print(f"  daemon: {h['daemon_config']}")


def cpu_text(cpu: dict[str, float]) -> str:
    return (f"cpu (% of a core): daemon {cpu['daemon_pct_of_core']:.0f}, bench "
            f"{cpu['bench_pct_of_core']:.0f}, rest {cpu['rest_pct_of_core']:.0f}; "
            f"machine {cpu['machine_busy_pct']:.0f}% busy")


def print_create(r: dict[str, Any]) -> None:
    print(f"a. create   {r['requests_per_s']:>9.1f} requests/s  ({r['requests']} in "
          f"{r['elapsed_s']:.2f}s)  p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms  "
          f"max {r['max_ms']:.1f} ms")
    print(f"            errors: {r['errors'] or 'none'}  {cpu_text(r['cpu'])}")
    print(f"            {batching_text(r['batching'], claims=False)}")


def batching_text(b: dict[str, float], *, claims: bool = True, creates: bool = True) -> str:
    parts = []
    if creates:
        parts.append(f"{b['create_transactions']} create transactions "
                     f"({b['tasks_per_create_transaction']:g} tasks each)")
    if claims:
        parts.append(f"{b['claims']} claims ({b['runs_per_claim']:g} runs each)")
    return "batching: " + ", ".join(parts)


def print_drain(r: dict[str, Any]) -> None:
    rate = f"{r['tasks_per_s']:>9.1f} tasks/s" if "tasks_per_s" in r else "      n/a"
    print(f"b. drain    {rate}     ({r['completed']}/{r['expected']} succeeded over "
          f"{r.get('span_s', 0):.2f}s; first finish {r.get('first_finish_after_spawn_s', 0):.2f}s "
          f"after spawn{'; TIMED OUT' if r['timed_out'] else ''})")
    print(f"            states: {r['states']}  {cpu_text(r['cpu'])}")
    print(f"            {batching_text(r['batching'], creates=False)}")


def print_latency(r: dict[str, Any]) -> None:
    s, f, c = r["enqueue_to_start"], r["enqueue_to_finish"], r["create"]
    print(f"c. latency  enqueue->start  p50 {s['p50_ms']:.1f} ms  p99 {s['p99_ms']:.1f} ms  "
          f"max {s['max_ms']:.1f} ms  ({r['created']} tasks at {r['rate_per_s']:g}/s for "
          f"{r['duration_s']:g}s)")
    print(f"            enqueue->finish p50 {f['p50_ms']:.1f} ms  p99 {f['p99_ms']:.1f} ms  "
          f"max {f['max_ms']:.1f} ms;  create p50 {c['p50_ms']:.1f} ms  p99 {c['p99_ms']:.1f} ms")
    a, b = r["send_to_create_tx"], r["create_tx_to_running"]
    d = r["daemon_enqueue_to_start"]
    print(f"            of which send->create tx p50 {a['p50_ms']:.1f} p99 {a['p99_ms']:.1f} "
          f"max {a['max_ms']:.1f} ms, create tx->running p50 {b['p50_ms']:.1f} "
          f"p99 {b['p99_ms']:.1f} max {b['max_ms']:.1f} ms (0 for runs started at create)")
    mean = "-" if d["mean_ms"] is None else f"{d['mean_ms']:.2f} ms"
    print(f"            daemon's enqueue->start histogram (claims: available->started; "
          f"started at create: commit->handler): mean {mean} over {d['runs']} runs")
    print(f"            all succeeded: {r['all_succeeded']}  errors: {r['errors'] or 'none'}  "
          f"send lag p99 {r['send_lag_p99_ms']:.1f} ms max {r['send_lag_max_ms']:.1f} ms")
    print(f"            {cpu_text(r['cpu'])}")
    print(f"            {batching_text(r['batching'])}")


def print_sequential(r: dict[str, Any]) -> None:
    print(f"d. sequential: {r['requests']} single creates, one client, one at a time: "
          f"{r['requests_per_s']} creates/s; create p50 {r['create']['p50_ms']} ms, "
          f"p99 {r['create']['p99_ms']} ms; daemon CPU per whole cycle "
          f"{r['daemon_cpu_ms_per_task']} ms; all succeeded: {r['all_succeeded']}; "
          f"errors {r['errors'] or 'none'}")
    print(f"   cpu: {cpu_text(r['cpu'])}")


def print_batch(r: dict[str, Any]) -> None:
    print(f"e. batch create: {r['requests']} requests of {r['batch_size']} tasks from "
          f"{r['clients']} clients: {r['tasks_per_s']} tasks/s ({r['tasks_created']} "
          f"created); request p50 {r['request']['p50_ms']} ms, p99 {r['request']['p99_ms']} "
          f"ms; errors {r['errors'] or 'none'}")
    print(f"   cpu: {cpu_text(r['cpu'])}")


def print_daemons(results: dict[str, Any]) -> None:
    """Exit codes and unexpected output: a healthy daemon exits 0 and, at WARNING,
    prints nothing."""
    for label in ("daemon1", "daemon2"):
        d = results.get(label)
        if d is None:
            continue
        print(f"{label}: exit {d['exit_code']} after SIGTERM in {d['stop_s']}s, "
              f"{d['log_lines']} log lines, {d['stderr_lines']} stderr lines")
        for line in d["log_tail"] + d["stderr_tail"]:
            print(f"    | {line[:300]}")


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=5000, help="creates in phase a (default 5000)")
    p.add_argument("--clients", type=int, default=64,
                   help="concurrent HTTP senders/connections (default 64)")
    p.add_argument("--concurrency", type=int, default=100,
                   help="WORKER_CONCURRENCY of the daemons (default 100)")
    p.add_argument("--rate", type=float, default=200.0,
                   help="creates per second in phase c (default 200)")
    p.add_argument("--duration", type=float, default=10.0,
                   help="seconds of phase c (default 10)")
    p.add_argument("--json", action="store_true", help="also print all results as one JSON object")
    p.add_argument("--ref", metavar="GIT_REF",
                   help="run the daemon from this commit (exported to a temporary directory) "
                        "instead of the working tree")
    p.add_argument("--sequential", type=int, default=1000,
                   help="single creates sent one at a time in phase d (default 1000; 0 skips)")
    p.add_argument("--batches", type=int, default=40,
                   help="batch create requests in phase e (default 40; 0 skips)")
    p.add_argument("--batch-size", type=int, default=500,
                   help="tasks per batch request in phase e (default 500)")
    a = p.parse_args(argv)
    if min(a.tasks, a.clients, a.concurrency, a.batch_size) < 1 or a.rate <= 0 or a.duration <= 0:
        p.error("every size, the rate and the duration must be positive")
    if min(a.sequential, a.batches) < 0:
        p.error("--sequential and --batches must not be negative")
    return Options(a.tasks, a.clients, a.concurrency, a.rate, a.duration, a.json, a.ref,
                   a.sequential, a.batches, a.batch_size)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    admin_dsn = os.environ.get("DISTASKS_PG_ADMIN_DSN", DEFAULT_ADMIN_DSN)
    redis_url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    with provisioned(admin_dsn, redis_url) as res, code_tree(opts.ref) as code_dir, \
            tempfile.TemporaryDirectory(prefix="distasks-bench-") as out_dir:
        h = header(opts, res, code_dir)
        print_header(h)
        results = run_or_report(res, opts, Path(out_dir), code_dir)
        if results is None:
            return 2
        print_daemons(results)
    if opts.json:
        print(json.dumps({"config": h, **results}, default=str))
    return 0 if healthy(results) else 1


def run_or_report(res: Resources, opts: Options, out_dir: Path,
                  code_dir: Path) -> dict[str, Any] | None:
    """The results, or None after printing why the bench could not measure."""
    try:
        return trio.run(run_phases, res, opts, out_dir, code_dir)
    except* (BenchError, trio.TooSlowError) as group:
        for e in leaves(group):
            print(f"bench failed: {str(e) or 'a phase ran out of time'}", file=sys.stderr)
    return None


def leaves(group: BaseExceptionGroup[Any]) -> Iterator[BaseException]:
    for e in group.exceptions:
        if isinstance(e, BaseExceptionGroup):
            yield from leaves(e)
        else:
            yield e


def healthy(results: dict[str, Any]) -> bool:
    """Every request answered 201, every task completed, both daemons exited 0 quietly."""
    states = results["final_states"]
    extra = [results[p] for p in ("sequential", "batch") if p in results]
    return (not results["create"]["errors"] and not results["latency"]["errors"]
            and not any(r["errors"] for r in extra)
            and all(results[p]["all_succeeded"] for p in ("sequential",) if p in results)
            and set(states["tasks"]) == {"completed"} and set(states["runs"]) == {"succeeded"}
            and all(results[d]["exit_code"] == 0 and not results[d]["stderr_lines"]
                    for d in ("daemon1", "daemon2")))


if __name__ == "__main__":
    sys.exit(main())
