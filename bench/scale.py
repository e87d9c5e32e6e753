"""Scale: 1, 2 and 4 daemons on one PostgreSQL (direct, or through PgBouncer) and one
Redis (a single server, or a local Redis Cluster), a handler doing one Redis write; and
the same drain with millions of rows already in the history tables.

For each cell of the matrix (Redis mode x PostgreSQL mode x daemon count):

  backlog  the daemons start on queue `scale-<cell>`, paused; --tasks `redis_write`
           tasks are created through the batch route; the queue is resumed
  drain    drain rate = tasks / (last run's finished_at - first run's started_at), both
           from PostgreSQL, so the daemons' start-up and the polling do not count; CPU
           per task: the daemons' (sum, /proc), PostgreSQL's (the backends of this
           run's database, /proc), PgBouncer's, Redis's (INFO cpu: the whole server,
           other people's work on a shared Redis included), over the drain
  latency  `stamp` creates at --rate for --duration (open loop, throughput.py's
           sender); enqueue -> start = the handler's first line minus the client's send
           time (compare_taskiq.py's method); p99

History (--history-rows, 0 skips): two databases of their own on the one server, one
daemon, direct PostgreSQL. The history tables of one are filled with --history-rows
rows (half tasks, half their runs, all finished weeks ago, in the drained queue and
nine others) by a few large INSERT ... generate_series; the other stays empty. Then
the same drain runs on each, alternating empty, full, empty, ... --history-repeats
times a side; the sides' medians are compared, and each full drain with the empty
one before it.

    .venv/bin/python bench/scale.py                           # quick: 2000 tasks a cell
    .venv/bin/python bench/scale.py --daemons '' --tasks 30000 --history-rows 10000000 \
        --history-repeats 6
    .venv/bin/python bench/scale.py --redis cluster           # needs PrivateRedisCluster

Environment: DISTASKS_PG_ADMIN_DSN and REDIS_URL, as bench/throughput.py. Each run
creates the databases `distasks_bench_<random>` and drops them at the end, deletes its
Redis keys by SCAN (never FLUSHDB) and stops the PgBouncer and cluster it started. The
cleaner (retention) is off in every daemon: it would start deleting the history rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
import trio
from reuse_port import daemons
from throughput import (
    DEFAULT_ADMIN_DSN,
    DEFAULT_REDIS_URL,
    Database,
    Resources,
    connections,
    git,
    latency_summary_ms,
    machine_cpu_s,
    process_cpu_s,
    provisioned,
    send_at_rate,
    system_cpu_s,
)

from distasks.domain.ids import MS_PER_DAY
from distasks.store import Store
from distasks.store.partitions import day_id_range
from distasks.testing import servers

BENCH_DIR = Path(__file__).resolve().parent
# Tasks per batch request when creating a backlog.
CREATE_BATCH = 500
# PgBouncer's server connections per database: the daemons' pools share them.
PGBOUNCER_POOL = 20
DRAIN_TIMEOUT_S = 600.0
STAMP_TIMEOUT_S = 60.0
POLL_S = 0.2
# The history's tasks, in the drained queue and in these others.
HISTORY_OTHER_QUEUES = 9
# Rows per INSERT when filling the history.
FILL_CHUNK = 1_000_000

# Whether a cell's drain is over: its tasks completed so far. Polled five times a second
# on the bench's own connection, whose CPU no column counts, so it reads only the cell's
# tasks (ids from its start on: UUIDv7, a primary-key range). Over the whole queue,
# joined with the runs, it cost a core's 70 % with the history's 500,000 tasks in the
# queue, taken from the drain it measured.
DRAINED = """
SELECT count(*) FROM tasks
WHERE id >= %(first_id)s AND queue_name = %(queue)s AND created_at >= %(since)s
  AND status = 'completed'
"""
# The drain of one cell, once it is over: its runs, first start and last finish.
DRAIN = """
SELECT count(*) FILTER (WHERE r.status = 'succeeded'), min(r.started_at), max(r.finished_at)
FROM tasks t JOIN task_runs r ON r.task_id = t.id AND r.bucket >= %(day)s
WHERE t.id >= %(first_id)s AND t.queue_name = %(queue)s AND t.created_at >= %(since)s
"""
QUEUE_STATES = """
SELECT status, count(*) FROM tasks WHERE queue_name = %s AND created_at >= %s GROUP BY 1
"""
OUR_BACKENDS = """
SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()
"""


# -- the Redis under test --------------------------------------------------------------------


def redis_client(url: str) -> Any:
    """A client of the bench's Redis: a cluster client for a `redis+cluster://` URL."""
    if url.startswith("redis+cluster://"):
        return redis.RedisCluster.from_url("redis://" + url.removeprefix("redis+cluster://"))
    return redis.Redis.from_url(url)


@contextmanager
def redis_under_test(mode: str, shared_url: str) -> Iterator[tuple[str, Callable[[], float]]]:
    """(URL the daemons and handlers use, CPU seconds of that Redis so far)."""
    if mode == "single":
        client = redis.Redis.from_url(shared_url)

        def cpu() -> float:
            info = client.info("cpu")
            return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

        try:
            yield shared_url, cpu
        finally:
            client.close()
        return
    cluster_class = getattr(servers, "PrivateRedisCluster", None)
    if cluster_class is None:
        raise SystemExit("--redis cluster: this tree has no distasks.testing.servers."
                         "PrivateRedisCluster (the Redis Cluster support of issue 21, item 1, "
                         "branch `cluster`); merge it first, or run --redis single")
    cluster = cluster_class()
    cluster.start()
    try:
        nodes = [cluster.node_client(port) for port in cluster.ports]

        def cluster_cpu() -> float:
            total = 0.0
            for node in nodes:
                try:
                    info = node.info("cpu")
                except redis.RedisError:
                    continue
                total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
            return total

        yield cluster.url, cluster_cpu
    finally:
        cluster.stop()


# -- one cell ----------------------------------------------------------------------------------


def handler_env(prefix: str, redis_url: str) -> dict[str, str]:
    return {"DISTASKS_WORKER_HANDLERS": "redis_write_handler",
            "PYTHONPATH": f"{BENCH_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "BENCH_PREFIX": prefix, "BENCH_REDIS_URL": redis_url}


def steal_s(kinds: list[float]) -> float:
    """CPU seconds stolen from this machine (a VM) by its hypervisor, of a machine_cpu_s()
    reading: where it grows, every process here ran slower per task, whatever it was
    doing."""
    return kinds[7] if len(kinds) > 7 else 0.0


class Cpu:
    """CPU seconds of the daemons, of this database's PostgreSQL backends (alive at the
    end: the pools keep theirs; WAL writer, checkpointer and the like are not counted),
    of PgBouncer, and of the Redis, over one phase."""

    def __init__(self, daemon_pids: list[int], pg_pids: Callable[[], list[int]],
                 bouncer_pid: int | None, redis_cpu: Callable[[], float]) -> None:
        self.daemon_pids, self.pg_pids = daemon_pids, pg_pids
        self.bouncer_pid, self.redis_cpu = bouncer_pid, redis_cpu
        self.wall0 = time.perf_counter()
        self.daemons0 = sum(process_cpu_s(p) for p in daemon_pids)
        self.pg0 = {p: process_cpu_s(p) for p in pg_pids()}
        self.bouncer0 = process_cpu_s(bouncer_pid) if bouncer_pid else 0.0
        self.redis0 = redis_cpu()
        self.bench0 = time.process_time()
        kinds = machine_cpu_s()
        self.machine0 = system_cpu_s(kinds)
        self.steal0 = steal_s(kinds)

    def read(self) -> dict[str, float]:
        kinds = machine_cpu_s()
        busy, total = system_cpu_s(kinds)
        pg_now = {p: process_cpu_s(p) for p in self.pg_pids()}
        return {
            "wall_s": time.perf_counter() - self.wall0,
            "daemons_s": sum(process_cpu_s(p) for p in self.daemon_pids) - self.daemons0,
            # a backend opened during the phase counts whole; one closed is lost
            "postgres_s": sum(c - self.pg0.get(p, 0.0) for p, c in pg_now.items()),
            "pgbouncer_s": (process_cpu_s(self.bouncer_pid) - self.bouncer0
                            if self.bouncer_pid else 0.0),
            "redis_s": self.redis_cpu() - self.redis0,
            "bench_s": time.process_time() - self.bench0,
            # busy CPU seconds of the whole machine, all cores
            "machine_s": busy - self.machine0[0],
            "machine_busy_pct": 100 * (busy - self.machine0[0])
                                / max(total - self.machine0[1], 1e-9),
            # time the hypervisor gave this VM's cores to another guest
            "machine_steal_pct": 100 * (steal_s(kinds) - self.steal0)
                                 / max(total - self.machine0[1], 1e-9),
        }


async def backlog(client: httpx.AsyncClient, queue: str, tasks: int) -> None:
    body = {"tasks": [{"name": "scale", "handler": "redis_write", "queue_name": queue}]
            * CREATE_BATCH}
    for start in range(0, tasks, CREATE_BATCH):
        body["tasks"] = body["tasks"][:min(CREATE_BATCH, tasks - start)]
        (await client.post("/api/v1/tasks/batch", json=body)).raise_for_status()


def cell_tasks(queue: str, since: datetime) -> dict[str, Any]:
    """DRAINED's and DRAIN's parameters: a cell's tasks were created in `queue` from `since` on (a
    second of margin on the ids, for clocks)."""
    ms = int(since.timestamp() * 1000) - 1000
    return {"queue": queue, "since": since, "first_id": uuid.UUID(int=ms << 80),
            "day": ms // MS_PER_DAY}


async def drain(db: Database, queue: str, since: Any, tasks: int, cpu: Cpu) -> dict[str, Any]:
    done = 0
    with trio.move_on_after(DRAIN_TIMEOUT_S) as scope:
        while done < tasks:
            await trio.sleep(POLL_S)
            [(done,)] = await db.rows(DRAINED, cell_tasks(queue, since))
    use = cpu.read()
    [(done, first, last)] = await db.rows(DRAIN, cell_tasks(queue, since))
    out: dict[str, Any] = {"done": done, "timed_out": scope.cancelled_caught,
                           "machine_busy_pct": round(use["machine_busy_pct"], 1),
                           "machine_steal_pct": round(use["machine_steal_pct"], 2)}
    if done and first is not None and last is not None:
        span_s = (last - first).total_seconds()
        out["span_s"] = round(span_s, 3)
        out["tasks_per_s"] = round(done / span_s, 1) if span_s > 0 else float("inf")
        for part in ("daemons", "postgres", "pgbouncer", "redis", "bench", "machine"):
            out[f"{part}_cpu_ms_per_task"] = round(1000 * use[f"{part}_s"] / done, 3)
        # The drain's window is from the resume to the poll that saw the last run: the
        # rate's span plus up to one poll.
        out["meter_wall_s"] = round(use["wall_s"], 3)
    return out


async def stamped_p99(redis_url: str, prefix: str, sent_s: dict[str, float]) -> dict[str, Any]:
    """compare_taskiq.py's `stamped`, for either Redis mode: the handler's HSET
    `<prefix>:started` id ts minus the client's send time."""
    client = redis_client(redis_url)
    key = f"{prefix}:started"
    try:
        with trio.move_on_after(STAMP_TIMEOUT_S):
            while True:  # another process writes them: polled
                if client.hlen(key) >= len(sent_s):
                    break
                await trio.sleep(0.05)
        started = {k.decode(): float(v) for k, v in client.hgetall(key).items()}
        client.delete(key)
    finally:
        client.close()
    delays = [started[t] - s for t, s in sent_s.items() if t in started]
    return {"sent": len(sent_s), "stamped": len(delays), **latency_summary_ms(delays)}


async def cell(db: Database, res: Resources, out_dir: Path, opts: argparse.Namespace, *,
               n: int, queue: str, daemon_dsn: str, pooler: Any, redis_url: str,
               redis_cpu: Callable[[], float], latency: bool = True) -> dict[str, Any]:
    settings = {"QUEUE_NAMES": queue, "DISTASKS_RETENTION_ENABLED": "false",
                **handler_env(res.name, redis_url)}
    if pooler is not None:
        settings["DISTASKS_DATABASE_POOLER"] = "pgbouncer"
    [(since,)] = await db.rows("SELECT now()")
    out: dict[str, Any] = {"daemons": n, "queue": queue}
    async with daemons(n, daemon_dsn, redis_url, res.name, out_dir, opts.concurrency,
                       settings) as (url, started), \
            httpx.AsyncClient(base_url=url, timeout=60, trust_env=False) as client:
        pids = [d.process.pid for d, _ in started if d.process is not None]
        (await client.post(f"/api/v1/queues/{queue}/pause")).raise_for_status()
        await backlog(client, queue, opts.tasks)
        cpu = Cpu(pids, lambda: [p for (p,) in db.sync_rows(OUR_BACKENDS)],
                  pooler.pid if pooler is not None else None, redis_cpu)
        (await client.post(f"/api/v1/queues/{queue}/resume")).raise_for_status()
        out["drain"] = await drain(db, queue, since, opts.tasks, cpu)
        if latency:
            async with connections(url, opts.clients) as conns:
                sent_at, sending = await send_at_rate(
                    conns, queue=queue, handler="stamp", rate_per_s=opts.rate,
                    duration_s=opts.duration)
            out["latency"] = {**await stamped_p99(redis_url, res.name,
                                                  {str(k): v for k, v in sent_at.items()}),
                              "errors": sending["errors"]}
        with trio.move_on_after(DRAIN_TIMEOUT_S):
            while True:
                states = dict(await db.rows(QUEUE_STATES, (queue, since)))
                if set(states) == {"completed"}:
                    break
                await trio.sleep(POLL_S)
        out["states"] = states
    out["exit_codes"] = [d.returncode for d, _ in started]
    return out


def cell_line(label: str, r: dict[str, Any]) -> str:
    d = r["drain"]
    lat = r.get("latency")
    lat_s = (f"p99 {lat['p99_ms']:7.1f} ms ({lat['stamped']}/{lat['sent']})" if lat else "")
    return (f"{label:<28} {d.get('tasks_per_s', 0):8.1f} tasks/s  CPU ms/task: daemons "
            f"{d.get('daemons_cpu_ms_per_task', 0):6.3f} pg {d.get('postgres_cpu_ms_per_task', 0):6.3f}"
            f" bouncer {d.get('pgbouncer_cpu_ms_per_task', 0):5.3f} redis "
            f"{d.get('redis_cpu_ms_per_task', 0):5.3f} bench {d.get('bench_cpu_ms_per_task', 0):5.3f}"
            f" machine {d.get('machine_cpu_ms_per_task', 0):5.3f} ({d['machine_busy_pct']:.0f}%,"
            f" steal {d.get('machine_steal_pct', 0):.1f}%)  "
            f"{lat_s}  states {r['states']}")


# -- the history ---------------------------------------------------------------------------------


def fill_history(dsn: str, queue: str, rows: int) -> dict[str, Any]:
    """`rows` history rows: rows/2 tasks, completed 40 to about 10 days ago, each with
    one succeeded run, spread over `queue` and HISTORY_OTHER_QUEUES others. Task ids
    are time-ordered (UUIDv7 of their creation, as the daemon makes them), so each run
    lands in its day's partition of task_runs (migration 0015); the runs are written a
    day at a time, from that day's tasks."""
    tasks = rows // 2
    timings: dict[str, Any] = {"tasks": tasks, "runs": tasks}
    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT distasks_ensure_partitions(current_date - 41, current_date)")
        for lo in range(1, tasks + 1, FILL_CHUNK):
            hi = min(lo + FILL_CHUNK - 1, tasks)
            t0 = time.perf_counter()
            conn.execute(
                "INSERT INTO tasks (id, name, handler, type, queue_name, max_retries,"
                " status, created_at, updated_at, finished_at)"
                " SELECT distasks_task_id(ts),"
                " 'history', 'redis_write', 'immediate',"
                " CASE WHEN mod(i, %(k)s) = 0 THEN %(q)s ELSE 'history-' || mod(i, %(k)s) END,"
                " 3, 'completed', ts, ts, ts + interval '20 ms'"
                " FROM generate_series(%(lo)s::bigint, %(hi)s) i,"
                " LATERAL (SELECT now() - interval '40 days'"
                "          + i * (interval '30 days' / %(n)s) AS ts) t",
                {"k": HISTORY_OTHER_QUEUES + 1, "q": queue, "lo": lo, "hi": hi, "n": tasks})
            print(f"    fill tasks {lo:>9}..{hi:<9} {time.perf_counter() - t0:6.1f} s", flush=True)
        today = datetime.now(UTC).date()
        for back in range(41, -1, -1):
            t0 = time.perf_counter()
            low, high = day_id_range(today - timedelta(days=back))
            conn.execute(
                "INSERT INTO task_runs (id, task_id, bucket, attempt, status, worker_id,"
                " available_at, created_at, started_at, finished_at, dispatched_at)"
                " SELECT distasks_run_id(t.id), t.id, distasks_bucket(t.id), 1, 'succeeded',"
                " 'history', t.created_at, t.created_at, t.created_at + interval '5 ms',"
                " t.finished_at, t.created_at"
                " FROM tasks t WHERE t.id >= %s AND t.id < %s AND t.name = 'history'",
                (low, high))
            print(f"    fill task_runs of {today - timedelta(days=back)}"
                  f" {time.perf_counter() - t0:6.1f} s", flush=True)
        timings["insert_s"] = round(time.perf_counter() - started, 1)
        t0 = time.perf_counter()
        conn.execute("VACUUM ANALYZE tasks")
        conn.execute("VACUUM ANALYZE task_runs")
        timings["vacuum_analyze_s"] = round(time.perf_counter() - t0, 1)
        # The fill's gigabytes of dirty pages are written out now, not by the checkpointer
        # during the drains after it: the history is measured as it stands, not as it loads.
        t0 = time.perf_counter()
        conn.execute("CHECKPOINT")
        timings["checkpoint_s"] = round(time.perf_counter() - t0, 1)
        [(size,)] = conn.execute(
            "SELECT pg_size_pretty(pg_total_relation_size('tasks')"
            " + pg_total_relation_size('task_runs'))").fetchall()
        timings["tables_with_indexes"] = size
    return timings


# -- the run -------------------------------------------------------------------------------------


def configuration(opts: argparse.Namespace) -> dict[str, Any]:
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    def server_version(args: list[str]) -> str:
        try:
            return subprocess.run(args, capture_output=True, text=True, timeout=10,
                                  check=False).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "unknown"

    admin = os.environ.get("DISTASKS_PG_ADMIN_DSN", DEFAULT_ADMIN_DSN)
    with psycopg.connect(admin) as conn:
        [(pg,)] = conn.execute("SHOW server_version").fetchall()
    redis_info = redis.Redis.from_url(os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)).info()
    commit = git("rev-parse", "--short", "HEAD")
    if git("status", "--porcelain", "--", "distasks", "bench/*.py"):
        commit += "+uncommitted"
    return {"cpus": os.cpu_count(), "load_avg": [round(x, 2) for x in os.getloadavg()],
            "tasks_per_cell": opts.tasks, "concurrency_per_daemon": opts.concurrency,
            "latency": f"{opts.rate:g}/s for {opts.duration:g} s, {opts.clients} connections",
            "daemons": opts.daemons, "repeats": opts.repeats, "pg_modes": opts.pg, "redis": opts.redis,
            "pgbouncer_pool": PGBOUNCER_POOL, "history_rows": opts.history_rows,
            "python": platform.python_version(), "postgresql": pg,
            "redis_server": redis_info.get("redis_version"),
            "pgbouncer": server_version([servers._pgbouncer_binary(), "--version"]),
            "versions": {p: version(p) for p in ("distasks", "psycopg", "redis", "trio")},
            "commit": commit}


@contextmanager
def pooler_for(mode: str) -> Iterator[Any]:
    if mode == "direct":
        yield None
        return
    info = psycopg.conninfo.conninfo_to_dict(
        os.environ.get("DISTASKS_PG_ADMIN_DSN", DEFAULT_ADMIN_DSN))
    bouncer = servers.PrivatePgBouncer(str(info.get("host", "127.0.0.1")),
                                       int(info.get("port", 5432)), pool_size=PGBOUNCER_POOL)
    bouncer.start()
    try:
        yield bouncer
    finally:
        bouncer.stop()


class PooledDatabase(Database):
    """throughput.Database, with a blocking read for the CPU meter's backend list."""

    def sync_rows(self, query: str) -> list[tuple[Any, ...]]:
        return self._conn.execute(query).fetchall()


async def matrix(opts: argparse.Namespace, admin: str, shared_redis: str,
                 out_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Every cell `--repeats` times; a round runs the daemon counts in the other order
    than the round before, so that a drift of the other work on the box does not favour
    one count."""
    results: dict[str, list[dict[str, Any]]] = {}
    with ExitStack() as stack:
        res = stack.enter_context(provisioned(admin, shared_redis))
        db = PooledDatabase(res.dsn)
        stack.callback(db.close)
        redis_url, redis_cpu = stack.enter_context(redis_under_test(opts.redis, shared_redis))
        for pg_mode in opts.pg:
            with pooler_for(pg_mode) as bouncer:
                dsn = res.dsn if bouncer is None else bouncer.dsn(res.name)
                for round_ in range(opts.repeats):
                    counts = opts.daemons if round_ % 2 == 0 else opts.daemons[::-1]
                    for n in counts:
                        label = f"{opts.redis}/{pg_mode}/{n}"
                        queue = f"scale-{pg_mode}-{n}-{round_}"
                        r = await cell(db, res, out_dir, opts, n=n, queue=queue,
                                       daemon_dsn=dsn, pooler=bouncer and bouncer._process,
                                       redis_url=redis_url, redis_cpu=redis_cpu)
                        r["load_avg_1min"] = round(os.getloadavg()[0], 2)
                        results.setdefault(label, []).append(r)
                        print(cell_line(f"{label} #{round_ + 1}", r), flush=True)
    return results


async def history(opts: argparse.Namespace, admin: str, shared_redis: str,
                  out_dir: Path) -> dict[str, Any]:
    """The same drain on two databases of the one server, side by side: "empty" (no
    history) and "full" (--history-rows filled first), the drains alternating empty,
    full, empty, ... so that a drift of the box's speed (other work, its neighbours)
    over the minutes of the run weighs on both sides alike."""
    out: dict[str, Any] = {"empty": [], "full": []}
    with ExitStack() as stack:
        redis_url, redis_cpu = stack.enter_context(redis_under_test("single", shared_redis))
        sides: dict[str, tuple[Resources, PooledDatabase]] = {}
        for side in ("empty", "full"):
            res = stack.enter_context(provisioned(admin, shared_redis))
            db = PooledDatabase(res.dsn)
            stack.callback(db.close)
            sides[side] = (res, db)
        queue = "scale-history"
        # The daemons of the full side meet a migrated schema, as a deployment's would.
        async with Store.open(sides["full"][0].dsn, max_size=1) as store:
            await store.migrate()
        print(f"filling {opts.history_rows:,} history rows ...", flush=True)
        out["fill"] = await trio.to_thread.run_sync(fill_history, sides["full"][0].dsn, queue,
                                                    opts.history_rows)
        print(f"    {out['fill']}", flush=True)
        for _ in range(opts.history_repeats):
            for side in ("empty", "full"):
                res, db = sides[side]
                r = await cell(db, res, out_dir, opts, n=1, queue=queue, daemon_dsn=res.dsn,
                               pooler=None, redis_url=redis_url, redis_cpu=redis_cpu,
                               latency=False)
                out[side].append(r)
                print(cell_line(f"history {side}", r), flush=True)
    rates = {side: statistics.median(r["drain"].get("tasks_per_s", 0) for r in out[side])
             for side in ("empty", "full")}
    out["median_tasks_per_s"] = rates
    out["full_vs_empty"] = round(rates["full"] / rates["empty"], 3) if rates["empty"] else None
    # Each full drain against the empty one just before it: how far the pairs spread.
    out["pair_ratios"] = [round(f["drain"].get("tasks_per_s", 0) / e["drain"]["tasks_per_s"], 3)
                          for e, f in zip(out["empty"], out["full"], strict=True)
                          if e["drain"].get("tasks_per_s")]
    return out


async def run(opts: argparse.Namespace) -> dict[str, Any]:
    admin = os.environ.get("DISTASKS_PG_ADMIN_DSN", DEFAULT_ADMIN_DSN)
    shared_redis = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    config = configuration(opts)
    print(f"bench/scale.py {json.dumps(config)}", flush=True)
    out: dict[str, Any] = {"configuration": config}
    with tempfile.TemporaryDirectory(prefix="distasks-scale-") as tmp:
        if opts.daemons:
            out["matrix"] = await matrix(opts, admin, shared_redis, Path(tmp))
            print_table(out["matrix"], opts)
        if opts.history_rows:
            out["history"] = await history(opts, admin, shared_redis, Path(tmp))
            h = out["history"]
            print(f"history: empty {h['median_tasks_per_s']['empty']} tasks/s, with "
                  f"{opts.history_rows:,} rows {h['median_tasks_per_s']['full']} tasks/s: "
                  f"{h['full_vs_empty']}x; each full drain against the empty one before it: "
                  f"{h['pair_ratios']}")
    out["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    return out


STACK = ("daemons", "postgres", "pgbouncer", "redis")


def median_of(rounds: list[dict[str, Any]], phase: str, key: str) -> float:
    return statistics.median(r.get(phase, {}).get(key, 0) or 0 for r in rounds)


def print_table(results: dict[str, list[dict[str, Any]]], opts: argparse.Namespace) -> None:
    """Medians over the rounds. "stack" is the daemons + PostgreSQL's backends +
    PgBouncer + Redis: what a task costs the system under test, whatever else runs."""
    print(f"\nmedians of {opts.repeats} round(s), {opts.tasks} tasks a drain\n")
    print("| Redis / PostgreSQL / daemons | drain tasks/s | × one daemon | CPU ms/task: "
          "daemons | PostgreSQL | PgBouncer | Redis | stack | whole machine | "
          f"enqueue→start p99 at {opts.rate:g}/s | machine busy |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, rounds in results.items():
        one = median_of(results[label.rsplit("/", 1)[0] + "/1"], "drain", "tasks_per_s")
        rate = median_of(rounds, "drain", "tasks_per_s")
        cpu = {part: median_of(rounds, "drain", f"{part}_cpu_ms_per_task")
               for part in (*STACK, "machine")}
        stack = statistics.median(sum(r["drain"].get(f"{p}_cpu_ms_per_task", 0) for p in STACK)
                                  for r in rounds)
        print(f"| {label} | {rate:.0f} | {rate / one if one else 0:.2f} | "
              f"{cpu['daemons']:.2f} | {cpu['postgres']:.2f} | {cpu['pgbouncer']:.3f} | "
              f"{cpu['redis']:.3f} | {stack:.2f} | {cpu['machine']:.2f} | "
              f"{median_of(rounds, 'latency', 'p99_ms'):.0f} ms | "
              f"{median_of(rounds, 'drain', 'machine_busy_pct'):.0f} % |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=2000, help="backlog per cell (2000)")
    p.add_argument("--daemons", type=lambda s: [int(x) for x in s.split(",") if x],
                   default=[1, 2, 4], help="daemon counts, comma-separated (1,2,4); '' skips")
    p.add_argument("--pg", type=lambda s: s.split(","), default=["direct", "pgbouncer"],
                   help="direct,pgbouncer")
    p.add_argument("--repeats", type=int, default=1, help="rounds of the matrix (1)")
    p.add_argument("--redis", choices=("single", "cluster"), default="single")
    p.add_argument("--concurrency", type=int, default=50, help="WORKER_CONCURRENCY (50)")
    p.add_argument("--rate", type=float, default=200.0, help="latency phase creates/s (200)")
    p.add_argument("--duration", type=float, default=10.0, help="latency phase seconds (10)")
    p.add_argument("--clients", type=int, default=64, help="latency phase connections (64)")
    p.add_argument("--history-rows", type=int, default=0,
                   help="rows in the history case (0 skips; the issue asks 10000000)")
    p.add_argument("--history-repeats", type=int, default=1, help="drains each side (1)")
    p.add_argument("--json", action="store_true", help="also one JSON object at the end")
    opts = p.parse_args()
    out = trio.run(run, opts)
    if opts.json:
        print(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
