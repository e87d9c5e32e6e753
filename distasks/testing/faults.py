"""Fault injection for "nothing accepted is ever lost" (architecture §5.1, §5.2, §5.5, §5.6).

What is here, used by tests/system/test_faults.py and bench/chaos.py alike:

- `PrivateRedis`, `PrivatePostgres`: throwaway servers on free loopback ports that a
  test may kill, restart or cut off. The shared servers on 6379 and 5432 are never
  touched.
- `DaemonProcess`: `python -m distasks serve` as a subprocess, configured by environment only.
- The workload: N `chaos_sleep` tasks created over HTTP (`create_tasks`), then a wait
  until every accepted task is final in PostgreSQL (`wait_final`).
- `FAULTS`: the faults, each injected once a third of the tasks have completed.
- `tally`: what happened, from the handlers' execution log and PostgreSQL.

Of distasks it imports only the daemon harness: it sees the daemon as a client and an operator do.
Every wait here is bounded, either by the caller's cancel scope or by its own limit.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
import trio

from distasks.testing.daemon import DaemonProcess, free_port
from distasks.testing.daemon import daemon_env as own_daemon_env

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"

# -- daemon settings ------------------------------------------------------------------

# Timings of every daemon in a fault run: a short lease and short retries, so that a
# takeover happens within seconds, and a fast mover.
LEASE_S = 2.0
GRACE_S = 2.0
RETRY_BASE_S = 0.2
RETRY_CAP_S = 1.0
RETRY_MAX_RETRIES = 5
MOVER_INTERVAL_S = 0.1
# Handlers running at once in each daemon (WORKER_CONCURRENCY).
CONCURRENCY = 16
# The recovery loops of issue 3. A daemon that does not know a key ignores its variable.
REAPER_INTERVAL_S = 0.2
RECONCILER_INTERVAL_S = 0.5
DISPATCH_GRACE_S = 1.0

DAEMON_SETTINGS = {
    # The harness creates and polls as fast as it can, as one anonymous local client.
    "DISTASKS_LIMITS_PER_MINUTE": "0",
    "DISTASKS_WORKER_LEASE_S": str(LEASE_S),
    "DISTASKS_WORKER_GRACE_PERIOD_S": str(GRACE_S),
    "DISTASKS_MOVER_INTERVAL_S": str(MOVER_INTERVAL_S),
    "DISTASKS_RETRY_BASE_S": str(RETRY_BASE_S),
    "DISTASKS_RETRY_CAP_S": str(RETRY_CAP_S),
    "DISTASKS_RETRY_MAX_RETRIES": str(RETRY_MAX_RETRIES),
    "DISTASKS_RECOVERY_REAPER_INTERVAL_S": str(REAPER_INTERVAL_S),
    "DISTASKS_RECOVERY_RECONCILER_INTERVAL_S": str(RECONCILER_INTERVAL_S),
    "DISTASKS_RECOVERY_DISPATCH_GRACE_S": str(DISPATCH_GRACE_S),
}

# -- limits ---------------------------------------------------------------------------

# How long a server or a daemon may take to start answering.
SERVER_START_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 30.0
# A SIGTERM'd daemon must exit 0 within its grace period plus this (architecture §5.5).
EXIT_MARGIN_S = 5.0
# How long the first third of the tasks may take to complete.
TRIGGER_TIMEOUT_S = 60.0
# Waiting for every accepted task to be final ends after this long without a single
# task becoming final (a takeover needs lease + reaper tick + retry delay, about 4 s),
# or after FINAL_TIMEOUT_S in all.
STALL_TIMEOUT_S = 12.0
FINAL_TIMEOUT_S = 90.0
# How often PostgreSQL is asked for progress.
POLL_INTERVAL_S = 0.1
# One HTTP request; far above a healthy answer, so it only catches hangs.
HTTP_TIMEOUT_S = 10.0
# Concurrent create requests, and how long one create is retried (503, connection error).
CREATE_CLIENTS = 32
CREATE_RETRY_S = 30.0
# Retry delay of a create: doubles from the first, at most the cap, with jitter.
CREATE_BACKOFF_FIRST_S = 0.05
CREATE_BACKOFF_CAP_S = 0.5
# A psycopg connection attempt of the harness (PostgreSQL may be restarting).
PG_CONNECT_TIMEOUT_S = 3

FINAL_STATUSES = ("completed", "failed", "cancelled")



def _wait_until(ok: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `ok` (blocking) until it is true; RuntimeError naming `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not ok():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout_s:g}s")
        time.sleep(0.05)


# -- Redis ----------------------------------------------------------------------------


class PrivateRedis:
    """A redis-server of its own on a free loopback port, without any persistence, so
    that a restart comes back empty.

    Blocking methods: call them from Trio with `trio.to_thread.run_sync`.
    """

    def __init__(self) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise FileNotFoundError("redis-server is not installed")
        self.dir = Path(tempfile.mkdtemp(prefix="distasks-faults-redis-"))
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, socket_timeout=5,
                           socket_connect_timeout=5)

    def start(self) -> None:
        """Start the server (empty) and wait until it answers PING."""
        self._process = subprocess.Popen(
            [self.binary or "redis-server", "--port", str(self.port), "--bind", HOST,
             "--save", "", "--appendonly", "no", "--dir", str(self.dir),
             "--logfile", str(self.dir / "redis.log"), "--daemonize", "no"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_until(self._answers, SERVER_START_TIMEOUT_S, f"redis-server on port {self.port}")

    def _answers(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise RuntimeError(f"redis-server exited {self._process.returncode}; see "
                               f"{self.dir / 'redis.log'}")
        try:
            with self.client() as c:
                return bool(c.ping())
        except redis.RedisError:
            return False

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def ensure_running(self) -> None:
        if not self.is_running():
            self.start()

    def kill(self) -> None:
        """SIGKILL: whatever it held is gone."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=10)

    def freeze(self) -> None:
        """SIGSTOP: connections stay open and nothing answers, as in a network partition;
        `thaw()` brings it back with its data."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def restart_empty(self) -> None:
        """Kill the server and start a new, empty one on the same port."""
        self.kill()
        self.start()

    def client_kill(self) -> int:
        """Drop every normal client connection (the daemons'), keeping this one; returns
        how many were dropped."""
        with self.client() as c:
            return int(c.client_kill_filter(_type="normal", skipme=True))

    def stop(self) -> None:
        """Stop the server and delete its directory."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


# -- PostgreSQL -----------------------------------------------------------------------


def _pg_bindir() -> Path:
    """The directory of initdb and pg_ctl: initdb's on PATH, else the newest Debian one."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if not candidates:
        raise FileNotFoundError("initdb is not installed")
    return candidates[-1].parent


class PrivatePostgres:
    """A PostgreSQL cluster of its own: trust auth, listening only on 127.0.0.1 at a free
    port, its socket in its own directory under /tmp.

    Run as root, the server programs run as the `postgres` system user (`runuser`), and
    the directory is theirs. Durability settings are off (fsync, synchronous_commit):
    a fast shutdown still writes everything, and no test crashes the machine.
    Blocking methods: call them from Trio with `trio.to_thread.run_sync`.
    """

    def __init__(self) -> None:
        self.bindir = _pg_bindir()
        self.port = free_port()
        # Not under pytest's tmp_path: that is private to root, and the server runs as
        # the postgres user.
        self.root = Path(tempfile.mkdtemp(prefix="distasks-faults-pg-", dir="/tmp"))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")

    def _run(self, program: str, *args: str) -> None:
        cmd = [str(self.bindir / program), *args]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args)} exited {done.returncode}:\n"
                               f"{done.stdout}{done.stderr}")

    def init(self) -> None:
        """initdb and configure; does not start the server."""
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--encoding=UTF8", "--no-sync", "--no-instructions")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                "\n# distasks fault tests\n"
                f"listen_addresses = '{HOST}'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.root}'\n"
                "max_connections = 200\n"
                "shared_buffers = 32MB\n"
                "fsync = off\n"
                "synchronous_commit = off\n"
                "full_page_writes = off\n")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-w", "-t", "60",
                  "start")

    def restart_fast(self) -> None:
        """`pg_ctl restart -m fast`: every connection is dropped, transactions in flight
        are rolled back, the server is back when this returns."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-m", "fast",
                  "-w", "-t", "60", "restart")

    def halt(self) -> None:
        """Stop the server, keeping its data: `start()` brings it back as it was."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def is_running(self) -> bool:
        cmd = [str(self.bindir / "pg_ctl"), "-D", str(self.data), "status"]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0

    def ensure_running(self) -> None:
        if not self.is_running():
            self.start()

    def stop(self) -> None:
        """Stop the server (if running) and delete its directory."""
        if self.data.exists() and self.is_running():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, dbname: str = "postgres") -> str:
        return (f"host={HOST} port={self.port} user=postgres dbname={dbname} "
                f"connect_timeout={PG_CONNECT_TIMEOUT_S}")

    def _admin(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def create_database(self, name: str) -> None:
        self._admin(f'CREATE DATABASE "{name}"')

    def drop_database(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def terminate_backends(self, dbname: str) -> int:
        """pg_terminate_backend on every other backend connected to `dbname`; returns
        how many were terminated."""
        rows = self._admin(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,))
        return int(rows[0][0])


# -- the daemon -----------------------------------------------------------------------


class ScenarioFailed(RuntimeError):
    """A fault run could not get to the end; the message says at which step and why."""


# The repository's documented defaults; DAEMON_SETTINGS and daemon_env() override them.
DAEMON_CONFIG = REPO / "config" / "distasks.toml"


def daemon_env(*, database_url: str, redis_url: str, prefix: str, chaos_log: Path,
               concurrency: int = CONCURRENCY, extra: dict[str, str] | None = None,
               ) -> dict[str, str]:
    """Environment of a fault-run daemon on a free port. Inherited DISTASKS_* variables are
    dropped, so it runs on DAEMON_CONFIG plus DAEMON_SETTINGS."""
    return own_daemon_env(database_url=database_url, redis_url=redis_url, prefix=prefix,
                          settings={
                              "DISTASKS_WORKER_HANDLERS": "distasks.testing.chaos_handlers",
                              "WORKER_CONCURRENCY": str(concurrency),
                              "DISTASKS_CHAOS_LOG": str(chaos_log),
                              **DAEMON_SETTINGS,
                              **(extra or {}),
                          })


def fault_daemon(name: str, env: dict[str, str], log_path: Path) -> DaemonProcess:
    """A fault-run daemon on the repository's config, stopped within its grace period
    plus the hard-stop margin when the harness ends it."""
    return DaemonProcess(name, env, log_path, config=DAEMON_CONFIG, cwd=REPO)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} does not exist)"


def summarize_log(path: Path, limit: int = 12) -> list[str]:
    """The WARNING and ERROR events of a JSON daemon log, counted, with the first message
    of each, plus lines that are not JSON (tracebacks, crashes)."""
    counts: Counter[tuple[str, str]] = Counter()
    first: dict[tuple[str, str], str] = {}
    other: list[str] = []
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            if line.strip() and len(other) < limit:
                other.append(f"  | {line[:300]}")
            continue
        if not isinstance(record, dict):
            continue
        level = str(record.get("level", ""))
        if level not in ("WARNING", "ERROR", "CRITICAL"):
            continue
        key = (level, str(record.get("event", record.get("logger", "?"))))
        counts[key] += 1
        first.setdefault(key, str(record.get("message", ""))[:300])
    out = [f"  {n:5d} x {level} {event}: {first[(level, event)]}"
           for (level, event), n in counts.most_common(limit)]
    return out + other


# -- the workload ---------------------------------------------------------------------


@dataclass
class IntakeStats:
    """What the creates got back."""

    #: task id -> wall-clock time of its first 2xx answer
    accepted: dict[str, float] = field(default_factory=dict)
    #: HTTP status -> answers
    answers: Counter[int] = field(default_factory=Counter)
    #: transport error type -> count
    errors: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    #: creates answered with something other than 2xx or 503 (not retried)
    refused: list[str] = field(default_factory=list)
    #: creates that were still not answered 2xx after CREATE_RETRY_S
    gave_up: int = 0
    done: trio.Event = field(default_factory=trio.Event)


def task_body(tag: str, i: int, ms: int) -> dict[str, Any]:
    # The dedup key makes a retried create idempotent: when the first try committed
    # but its answer was lost, the retry gets the same task (200) instead of a twin.
    return {"name": "chaos", "handler": "chaos_sleep", "payload": {"ms": ms}, "priority": 0,
            "dedup_key": f"{tag}-{i}"}


async def create_tasks(urls: Sequence[str], n: int, stats: IntakeStats, *, tag: str,
                       rate_per_s: float, seed: int = 0) -> None:
    """Create `n` chaos_sleep tasks (50-200 ms) over HTTP, `rate_per_s` at most, at most
    CREATE_CLIENTS in flight, spread over `urls`.

    A create answered 503 or lost to a connection error is retried (on the next URL,
    with backoff, for up to CREATE_RETRY_S); one answered 2xx never is. Only tasks
    answered 2xx are in `stats.accepted`. Sets `stats.done` at the end.
    """
    rng = random.Random(seed)
    durations = [rng.randint(50, 200) for _ in range(n)]
    slots = trio.Semaphore(CREATE_CLIENTS)
    limits = httpx.Limits(max_connections=CREATE_CLIENTS,
                          max_keepalive_connections=CREATE_CLIENTS)

    async def create_one(client: httpx.AsyncClient, i: int) -> None:
        try:
            give_up_at = trio.current_time() + CREATE_RETRY_S
            attempt = 0
            while True:
                url = urls[(i + attempt) % len(urls)]
                try:
                    r = await client.post(f"{url}/api/v1/tasks",
                                          json=task_body(tag, i, durations[i]))
                    stats.answers[r.status_code] += 1
                    if r.status_code in (200, 201):
                        stats.accepted.setdefault(r.json()["task_id"], time.time())
                        return
                    if r.status_code != 503:
                        stats.refused.append(f"{r.status_code} {r.text[:200]}")
                        return
                except httpx.TransportError as e:
                    stats.errors[type(e).__name__] += 1
                attempt += 1
                if trio.current_time() > give_up_at:
                    stats.gave_up += 1
                    return
                stats.retries += 1
                delay = min(CREATE_BACKOFF_CAP_S, CREATE_BACKOFF_FIRST_S * 2 ** min(attempt, 8))
                await trio.sleep(delay * random.uniform(0.5, 1.0))
        finally:
            slots.release()

    try:
        async with (httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, limits=limits) as client,
                    trio.open_nursery() as nursery):
            started = trio.current_time()
            for i in range(n):
                await trio.sleep_until(started + i / rate_per_s)
                await slots.acquire()
                nursery.start_soon(create_one, client, i)
    finally:
        stats.done.set()


def _query(dsn: str, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


async def query(dsn: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]] | None:
    """Run one read in a thread; None when PostgreSQL cannot answer now (restarting)."""
    try:
        return await trio.to_thread.run_sync(_query, dsn, sql, params, abandon_on_cancel=True)
    except psycopg.Error:
        return None


PROGRESS = """
SELECT count(*) FILTER (WHERE status = 'completed'),
       count(*) FILTER (WHERE status IN ('completed', 'failed', 'cancelled'))
FROM tasks
"""


async def wait_completed(dsn: str, at_least: int) -> None:
    """Until at least `at_least` tasks are completed; the caller bounds the time."""
    while True:
        rows = await query(dsn, PROGRESS)
        if rows and rows[0][0] >= at_least:
            return
        await trio.sleep(POLL_INTERVAL_S)


# Runs by status when the fault is injected: how much it can hit.
AT_THE_FAULT = """
SELECT status, count(*) FROM task_runs WHERE status IN ('queued', 'running')
GROUP BY status ORDER BY status
"""

FINAL_AMONG = """
SELECT count(*) FROM tasks
WHERE id = ANY(%s::uuid[]) AND status IN ('completed', 'failed', 'cancelled')
"""


async def wait_final(dsn: str, task_ids: Sequence[str]) -> bool:
    """Until every one of `task_ids` is final: True; False once none became final for
    STALL_TIMEOUT_S, or after FINAL_TIMEOUT_S."""
    ids = list(task_ids)
    best, progressed_at = -1, trio.current_time()
    with trio.move_on_after(FINAL_TIMEOUT_S):
        while True:
            rows = await query(dsn, FINAL_AMONG, (ids,))
            if rows:
                final = int(rows[0][0])
                if final >= len(ids):
                    return True
                if final > best:
                    best, progressed_at = final, trio.current_time()
            if trio.current_time() - progressed_at > STALL_TIMEOUT_S:
                return False
            await trio.sleep(POLL_INTERVAL_S)
    return False


# -- counting -------------------------------------------------------------------------


@dataclass(frozen=True)
class Execution:
    task_id: str
    attempt: int
    run_id: str
    pid: int


def read_executions(path: Path) -> list[Execution]:
    """The chaos handler's log: one line per handler start."""
    out = []
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[1].isdigit() and parts[3].isdigit():
            out.append(Execution(parts[0], int(parts[1]), parts[2], int(parts[3])))
    return out


@dataclass
class Tally:
    """One fault run, counted.

    - completed: accepted tasks with status `completed`.
    - lost: accepted tasks missing in PostgreSQL, not final at the end of the wait, or
      final without a succeeded run.
    - executions: handler starts of accepted tasks (the chaos log).
    - duplicated: accepted tasks whose handler started more than once.
    - unrecorded: re-executions that are not a separate attempt on record: a second start
      with the same (task_id, attempt), or a start whose run is not that task's run of
      that attempt in PostgreSQL. Must be 0 (architecture §5.2).
    - taken_over: runs ended with an error containing `lease_expired`.
    - interrupted: runs handed back by a shutdown.
    - resume_s: from the fault to the first success of a run that started after it: how
      long until new work completes again.
    - settle_s: from the fault to the moment the last task accepted before it is final:
      how long until the backlog at the fault, interrupted work included, is done. It
      includes ordinary processing of that backlog; bench/chaos.py's `none` row gives the
      same figure without a fault.
    """

    accepted: int = 0
    completed: int = 0
    lost: int = 0
    not_final: int = 0
    final_without_success: int = 0
    missing: int = 0
    executions: int = 0
    duplicated: int = 0
    unrecorded: int = 0
    taken_over: int = 0
    interrupted: int = 0
    run_statuses: Counter[str] = field(default_factory=Counter)
    resume_s: float | None = None
    settle_s: float | None = None
    examples: list[str] = field(default_factory=list)


TASKS_OF = "SELECT id::text, status, finished_at FROM tasks WHERE id = ANY(%s::uuid[])"
RUNS_OF = """
SELECT task_id::text, attempt, id::text, status, coalesce(error, ''), started_at, finished_at
FROM task_runs WHERE task_id = ANY(%s::uuid[])
"""


def tally(dsn: str, accepted: dict[str, float], chaos_log: Path,
          fault_at: float | None) -> Tally:
    """Count one run from PostgreSQL and the chaos log (blocking)."""
    ids = list(accepted)
    with psycopg.connect(dsn, autocommit=True) as conn:
        tasks = {tid: (status, finished)
                 for tid, status, finished in conn.execute(TASKS_OF, (ids,)).fetchall()}
        runs = conn.execute(RUNS_OF, (ids,)).fetchall()
    t = Tally(accepted=len(ids))
    succeeded: set[str] = set()
    run_of: dict[str, tuple[str, int]] = {}
    for task_id, attempt, run_id, status, error, _started, _finished in runs:
        run_of[run_id] = (task_id, attempt)
        t.run_statuses[status] += 1
        if status == "succeeded":
            succeeded.add(task_id)
        if "lease_expired" in error:
            t.taken_over += 1
        if status == "interrupted":
            t.interrupted += 1
    for tid in ids:
        if tid not in tasks:
            t.missing += 1
            t.examples.append(f"missing: {tid}")
            continue
        status, _ = tasks[tid]
        if status == "completed":
            t.completed += 1
        if status not in FINAL_STATUSES:
            t.not_final += 1
            if len(t.examples) < 5:
                t.examples.append(f"not final: {tid} ({status})")
        elif tid not in succeeded:
            t.final_without_success += 1
            if len(t.examples) < 5:
                t.examples.append(f"final without a succeeded run: {tid} ({status})")
    t.lost = t.missing + t.not_final + t.final_without_success

    executions = [e for e in read_executions(chaos_log) if e.task_id in accepted]
    t.executions = len(executions)
    per_task = Counter(e.task_id for e in executions)
    t.duplicated = sum(1 for n in per_task.values() if n > 1)
    per_attempt = Counter((e.task_id, e.attempt) for e in executions)
    t.unrecorded = sum(n - 1 for n in per_attempt.values() if n > 1)
    for e in executions:
        if run_of.get(e.run_id) != (e.task_id, e.attempt):
            t.unrecorded += 1
            if len(t.examples) < 10:
                t.examples.append(f"execution not on record: {e}")
    for (tid, attempt), n in per_attempt.items():
        if n > 1 and len(t.examples) < 10:
            t.examples.append(f"attempt {attempt} of {tid} executed {n} times")

    if fault_at is not None:
        resumed = [f.timestamp() for (_t, _a, _r, status, _e, s, f) in runs
                   if status == "succeeded" and s is not None and f is not None
                   and s.timestamp() >= fault_at]
        t.resume_s = min(resumed) - fault_at if resumed else None
        backlog = [tid for tid, at in accepted.items() if at < fault_at]
        ends: list[datetime | None] = [tasks.get(tid, (None, None))[1] for tid in backlog]
        if all(end is not None for end in ends):
            last = max((end.timestamp() for end in ends if end is not None), default=fault_at)
            t.settle_s = max(0.0, last - fault_at)
    return t


# -- faults ---------------------------------------------------------------------------


@dataclass
class Stop:
    """A deliberate SIGTERM: the daemon's exit code (None: it had to be killed) and how
    long it took to exit."""

    daemon: str
    returncode: int | None
    seconds: float

    def ok(self) -> bool:
        return self.returncode == 0 and self.seconds <= GRACE_S + EXIT_MARGIN_S


@dataclass
class Cluster:
    """What a fault acts on."""

    pg: PrivatePostgres
    redis: PrivateRedis
    dbname: str
    daemons: list[DaemonProcess]
    rng: random.Random
    #: wall-clock time the fault was injected (the last step of a repeated fault)
    fault_at: float | None = None
    stops: list[Stop] = field(default_factory=list)
    #: SIGTERM + restart cycles of the cancellation stress
    stress_cycles: int = 10
    #: a few words per step, for the report
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Fault:
    name: str
    title: str
    inject: Callable[[Cluster], Awaitable[None]]
    #: daemons the scenario runs
    daemons: int = 1
    #: True when the fault may legitimately run a handler twice (as two attempts on
    #: record): the lease of a killed daemon always expires, and an outage of
    #: PostgreSQL close to the lease may let leases lapse before heartbeats get through.
    #: Everywhere else a second execution is a bug.
    may_duplicate: bool = False
    #: creates per second; None: DEFAULT_RATE_PER_S
    rate_per_s: float | None = None
    #: WORKER_CONCURRENCY per daemon; None: CONCURRENCY
    concurrency: tuple[int, ...] | None = None
    #: the fault is injected once this fraction of the tasks completed ("mid-run")
    trigger_fraction: float = 1 / 3


async def sigterm_and_wait(c: Cluster, d: DaemonProcess) -> Stop:
    """SIGTERM `d` and wait for it to exit (killed after grace + margin + 5 s)."""
    started = trio.current_time()
    d.sigterm()
    rc: int | None = None
    with trio.move_on_after(GRACE_S + EXIT_MARGIN_S + 5.0):
        rc = await d.wait_exit()
    seconds = trio.current_time() - started
    if rc is None:
        d.kill9()
        with trio.move_on_after(5):
            await d.wait_exit()
    stop = Stop(d.name, rc, seconds)
    c.stops.append(stop)
    return stop


async def inject_nothing(c: Cluster) -> None:
    c.fault_at = time.time()


async def inject_kill9(c: Cluster) -> None:
    victim = c.daemons[1]
    c.fault_at = time.time()
    victim.kill9()
    with trio.move_on_after(5):
        await victim.wait_exit()


async def inject_redis_restart_empty(c: Cluster) -> None:
    c.fault_at = time.time()
    await trio.to_thread.run_sync(c.redis.restart_empty)
    c.notes.append(f"redis down {time.time() - c.fault_at:.2f}s")


async def inject_pg_restart(c: Cluster) -> None:
    c.fault_at = time.time()
    await trio.to_thread.run_sync(c.pg.restart_fast)
    c.notes.append(f"pg_ctl restart took {time.time() - c.fault_at:.2f}s")


# Rounds of dropped connections, and the pause between them.
CONNECTION_KILL_ROUNDS = 3
CONNECTION_KILL_PAUSE_S = 0.3


async def inject_connections_killed(c: Cluster) -> None:
    c.fault_at = time.time()
    for _ in range(CONNECTION_KILL_ROUNDS):
        n_redis = await trio.to_thread.run_sync(c.redis.client_kill)
        n_pg = await trio.to_thread.run_sync(c.pg.terminate_backends, c.dbname)
        c.notes.append(f"killed {n_redis} redis + {n_pg} pg connections")
        await trio.sleep(CONNECTION_KILL_PAUSE_S)


async def inject_sigterm(c: Cluster) -> None:
    c.fault_at = time.time()
    await sigterm_and_wait(c, c.daemons[1])


RUNNING = "SELECT count(*) FROM task_runs WHERE status = 'running'"

# SIGTERM + restart cycles of the cancellation stress, and the pause after each restart.
STRESS_CYCLES = 10
STRESS_PAUSE_S = (0.2, 0.5)


async def inject_cancel_stress(c: Cluster) -> None:
    d = c.daemons[1]
    running_at_sigterm: list[int] = []
    c.notes.append("")
    note = len(c.notes) - 1
    for _ in range(c.stress_cycles):
        rows = await query(c.pg.dsn(c.dbname), RUNNING)
        running_at_sigterm.append(rows[0][0] if rows else -1)
        c.fault_at = time.time()
        stop = await sigterm_and_wait(c, d)
        c.notes[note] = f"runs running at each SIGTERM (both daemons): {running_at_sigterm}"
        if not stop.ok():
            return
        await d.start()
        with trio.fail_after(READY_TIMEOUT_S):
            await d.wait_ready()
        await trio.sleep(c.rng.uniform(*STRESS_PAUSE_S))


# Creates per second: about what two daemons work off, so a backlog stays.
DEFAULT_RATE_PER_S = 250.0

FAULTS = {f.name: f for f in (
    Fault("none", "no fault (baseline)", inject_nothing, daemons=2),
    Fault("kill9", "kill -9 of one of two daemons", inject_kill9, daemons=2,
          may_duplicate=True),
    Fault("redis-empty", "Redis killed, restarted empty", inject_redis_restart_empty),
    Fault("pg-restart", "pg_ctl restart -m fast", inject_pg_restart, may_duplicate=True),
    Fault("conn-kill", "Redis CLIENT KILL + pg_terminate_backend, x3",
          inject_connections_killed),
    Fault("sigterm", "SIGTERM of one of two daemons", inject_sigterm, daemons=2),
    # The steady daemon (one executor) answers creates while the other one cycles; the
    # cycled one (16 executors) takes most of the work whenever it is up. The creates are
    # paced so that tasks keep arriving during the cycles (about 35 s), which start early,
    # so that each SIGTERM lands on a claim blocked while work arrives, or on handlers
    # in flight.
    Fault("cancel-stress", f"SIGTERM + restart x{STRESS_CYCLES}, one of two daemons",
          inject_cancel_stress, daemons=2, rate_per_s=14.0, concurrency=(1, CONCURRENCY),
          trigger_fraction=0.1),
)}


# -- a scenario -----------------------------------------------------------------------


@dataclass
class Result:
    fault: Fault
    n: int
    intake: IntakeStats
    tally: Tally
    fault_at: float | None
    stops: list[Stop]
    #: daemons that were not stopped on purpose but are not running at the end
    crashed: list[str]
    notes: list[str]
    logs: dict[str, list[str]]
    elapsed_s: float
    #: False when not every accepted task was final within the wait
    all_final: bool

    def problems(self) -> list[str]:
        """Each broken promise, in words; empty when the run kept them all."""
        t, out = self.tally, []
        if t.lost:
            out.append(f"{t.lost} accepted tasks lost ({t.missing} missing, {t.not_final} "
                       f"not final, {t.final_without_success} final without success)")
        if t.unrecorded:
            out.append(f"{t.unrecorded} executions not on record as separate attempts")
        if t.duplicated and not self.fault.may_duplicate:
            out.append(f"{t.duplicated} tasks executed more than once, but this fault "
                       "forces no retry")
        if len(self.intake.accepted) < self.n:
            out.append(f"only {len(self.intake.accepted)} of {self.n} creates accepted "
                       f"({self.intake.gave_up} gave up, {len(self.intake.refused)} refused)")
        for s in self.stops:
            if not s.ok():
                out.append(f"daemon {s.daemon} after SIGTERM: exit {s.returncode} in "
                           f"{s.seconds:.1f}s (want 0 within {GRACE_S + EXIT_MARGIN_S:g}s)")
        for name in self.crashed:
            out.append(f"daemon {name} died without being stopped")
        return out

    def explain(self) -> str:
        t, i = self.tally, self.intake
        lines = [
            f"fault {self.fault.name} ({self.fault.title}), N={self.n}, "
            f"{self.elapsed_s:.1f}s",
            f"problems: {'; '.join(self.problems()) or 'none'}",
            f"accepted {t.accepted} completed {t.completed} lost {t.lost} executions "
            f"{t.executions} duplicated {t.duplicated} unrecorded {t.unrecorded} taken over "
            f"{t.taken_over} interrupted {t.interrupted} resume {fmt_s(t.resume_s)} settle "
            f"{fmt_s(t.settle_s)}",
            f"runs by status: {dict(t.run_statuses)}",
            f"creates: answers {dict(i.answers)} errors {dict(i.errors)} retries "
            f"{i.retries} gave up {i.gave_up} refused {i.refused[:3]}",
            f"stops: {[(s.daemon, s.returncode, round(s.seconds, 2)) for s in self.stops]}",
            f"notes: {self.notes}",
        ]
        lines += [f"example: {e}" for e in t.examples]
        for name, summary in self.logs.items():
            lines.append(f"daemon {name} log, warnings and errors:")
            lines += summary or ["  (none)"]
        return "\n".join(lines)


def fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


async def run_scenario(fault: Fault, *, pg: PrivatePostgres, redis_server: PrivateRedis,
                       workdir: Path, n: int = 500, tag: str | None = None,
                       seed: int = 0, stress_cycles: int = STRESS_CYCLES) -> Result:
    """Run N tasks through `fault.daemons` daemons, inject `fault` once a third of them
    completed, wait until every accepted task is final (bounded), and count.

    Uses its own database (dropped at the end) and Redis prefix on the private servers;
    daemon logs and the chaos log go to `workdir`. Raises TooSlowError or DaemonExited
    when the run cannot get to the fault at all; the caller bounds the whole.
    """
    tag = tag or f"{fault.name.replace('-', '_')}_{os.urandom(3).hex()}"
    dbname = f"chaos_{tag}"
    await trio.Path(workdir).mkdir(parents=True, exist_ok=True)
    chaos_log = workdir / f"executions-{tag}.log"
    await trio.to_thread.run_sync(redis_server.ensure_running)
    await trio.to_thread.run_sync(pg.ensure_running)
    await trio.to_thread.run_sync(pg.create_database, dbname)
    dsn = pg.dsn(dbname)
    concurrency = fault.concurrency or (CONCURRENCY,) * fault.daemons
    daemons = [
        fault_daemon(name, daemon_env(database_url=pg.dsn(dbname), redis_url=redis_server.url,
                                prefix=f"chaos-{tag}", chaos_log=chaos_log,
                                concurrency=concurrency[k]),
               workdir / f"daemon-{tag}-{name}.log")
        for k, name in enumerate("ab"[:fault.daemons])]
    cluster = Cluster(pg, redis_server, dbname, daemons, random.Random(seed),
                      stress_cycles=stress_cycles)
    stats = IntakeStats()
    started = time.monotonic()
    step = "starting the daemons"
    try:
        async with trio.open_nursery() as nursery:
            for d in daemons:
                await d.start()
            for d in daemons:
                with trio.fail_after(READY_TIMEOUT_S):
                    await d.wait_ready()
            nursery.start_soon(lambda: create_tasks(
                [d.url for d in daemons], n, stats, tag=tag,
                rate_per_s=fault.rate_per_s or DEFAULT_RATE_PER_S, seed=seed))
            trigger = max(1, int(n * fault.trigger_fraction))
            step = f"waiting for {trigger} completed tasks"
            with trio.fail_after(TRIGGER_TIMEOUT_S):
                await wait_completed(dsn, trigger)
            if (rows := await query(dsn, AT_THE_FAULT)) is not None:
                cluster.notes.append("at the fault: " + ", ".join(
                    f"{count} {status}" for status, count in rows))
            step = "injecting the fault"
            await fault.inject(cluster)
            # The creates end by themselves: each one is retried for CREATE_RETRY_S at most.
            step = "creating tasks"
        step = "waiting for every accepted task to be final"
        all_final = await wait_final(dsn, list(stats.accepted))
        crashed = [f"{d.name} (exit {d.returncode})" for d in daemons
                   if not d.is_running() and not d.stopped_on_purpose]
        step = "counting"
        counted = await trio.to_thread.run_sync(tally, dsn, stats.accepted, chaos_log,
                                                cluster.fault_at)
    except Exception as e:  # TooSlowError, DaemonExited, grouped by the nursery, ...
        logs = "\n".join(f"daemon {d.name}:\n" + "\n".join(summarize_log(d.log_path))
                         for d in daemons)
        raise ScenarioFailed(f"{fault.name}: {step} failed: {e!r}; accepted "
                             f"{len(stats.accepted)}, answers {dict(stats.answers)}, errors "
                             f"{dict(stats.errors)}\n{logs}") from e
    finally:
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                for d in daemons:
                    nursery.start_soon(d.stop)
            try:
                await trio.to_thread.run_sync(pg.drop_database, dbname)
            except psycopg.Error:
                pass  # PostgreSQL down after a failed run: the cluster is thrown away anyway
    return Result(fault=fault, n=n, intake=stats, tally=counted, fault_at=cluster.fault_at,
                  stops=cluster.stops, crashed=crashed, notes=cluster.notes,
                  logs={d.name: summarize_log(d.log_path) for d in daemons},
                  elapsed_s=time.monotonic() - started, all_final=all_final)


def git_commit() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, capture_output=True, text=True, timeout=10).stdout
        return (rev or "unknown") + ("+dirty" if rev and dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def settings_line() -> str:
    return (f"lease {LEASE_S:g}s, grace {GRACE_S:g}s, concurrency {CONCURRENCY}/daemon, "
            f"retry base {RETRY_BASE_S:g}s cap {RETRY_CAP_S:g}s max {RETRY_MAX_RETRIES}, "
            f"mover {MOVER_INTERVAL_S:g}s, reaper {REAPER_INTERVAL_S:g}s, reconciler "
            f"{RECONCILER_INTERVAL_S:g}s, dispatch grace {DISPATCH_GRACE_S:g}s")
