"""Fault injection for "nothing accepted is ever lost" (architecture §5.1, §5.2, §5.5, §5.6).

The faults and the scenario that injects them, used by tests/system/test_faults.py and bench/chaos.py alike:

- `PrivateRedis`, `PrivatePostgres` (testing/servers.py): throwaway servers on free
  loopback ports that a test may kill, restart or cut off.
- `DaemonProcess`: `python -m distasks serve` as a subprocess, configured by environment only.
- The workload (testing/workload.py): N `chaos_sleep` tasks created over HTTP (`create_tasks`), then a wait
  until every accepted task is final in PostgreSQL (`wait_final`).
- `FAULTS`: the faults, each injected once a third of the tasks have completed.
- `tally` (testing/tally.py): what happened, from the handlers' execution log and PostgreSQL.

Of distasks it imports only the daemon harness: it sees the daemon as a client and an operator do.
Every wait here is bounded, either by the caller's cancel scope or by its own limit.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import trio

from distasks.testing.daemon import DaemonProcess
from distasks.testing.daemon import daemon_env as own_daemon_env
from distasks.testing.servers import PrivatePostgres, PrivateRedis, PrivateRedisCluster
from distasks.testing.tally import Tally, tally
from distasks.testing.workload import (
    AT_THE_FAULT,
    IntakeStats,
    create_tasks,
    query,
    wait_completed,
    wait_final,
)

REPO = Path(__file__).resolve().parents[2]


# Timings of every daemon in a fault run: a short lease and short retries, so that a
# takeover happens within seconds, and a fast mover.
LEASE_S = 2.0


LEASE_S = 2.0
GRACE_S = 2.0


GRACE_S = 2.0
RETRY_BASE_S = 0.2


RETRY_BASE_S = 0.2
RETRY_CAP_S = 1.0


RETRY_CAP_S = 1.0
RETRY_MAX_RETRIES = 5


RETRY_MAX_RETRIES = 5
MOVER_INTERVAL_S = 0.1


# Handlers running at once in each daemon (WORKER_CONCURRENCY).
CONCURRENCY = 16


# The recovery loops of issue 3. A daemon that does not know a key ignores its variable.
REAPER_INTERVAL_S = 0.2


REAPER_INTERVAL_S = 0.2
RECONCILER_INTERVAL_S = 0.5


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


SERVER_START_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 30.0


# A SIGTERM'd daemon must exit 0 within its grace period plus this (architecture §5.5).
EXIT_MARGIN_S = 5.0


# How long the first third of the tasks may take to complete.
TRIGGER_TIMEOUT_S = 60.0



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
    redis: PrivateRedis | PrivateRedisCluster
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
    if not isinstance(c.redis, PrivateRedis):
        raise ScenarioFailed("redis-empty needs a single Redis (a cluster: redis-failover)")
    c.fault_at = time.time()
    await trio.to_thread.run_sync(c.redis.restart_empty)
    c.notes.append(f"redis down {time.time() - c.fault_at:.2f}s")



# The queue every fault-run task goes to (workload.py names none).
FAULT_QUEUE = "default"


async def inject_redis_failover(c: Cluster) -> None:
    """Kill -9 the Redis Cluster master serving the tasks' queue (what it acknowledged
    but had not yet copied to its replica is gone) and wait until its replica took over."""
    if not isinstance(c.redis, PrivateRedisCluster):
        raise ScenarioFailed("redis-failover needs a Redis Cluster")
    server = c.redis
    # Every key of a queue carries the hash tag {q:<queue>}, whatever the prefix.
    port = await trio.to_thread.run_sync(server.master_of, f"{{q:{FAULT_QUEUE}}}")
    c.fault_at = time.time()
    await trio.to_thread.run_sync(server.kill_master, port)
    new = await trio.to_thread.run_sync(server.wait_failover, port)
    c.notes.append(f"master :{port} killed, replica :{new} serves its slots "
                   f"{time.time() - c.fault_at:.2f}s later")


async def inject_pg_restart(c: Cluster) -> None:
    c.fault_at = time.time()
    await trio.to_thread.run_sync(c.pg.restart_fast)
    c.notes.append(f"pg_ctl restart took {time.time() - c.fault_at:.2f}s")


# Rounds of dropped connections, and the pause between them.
CONNECTION_KILL_ROUNDS = 3


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
    # The failover takes about as long as a lease (LEASE_S): heartbeats that cannot reach
    # the queue's slots meanwhile let leases lapse, and those runs are taken over.
    Fault("redis-failover", "Redis Cluster master of the queue killed, its replica promoted",
          inject_redis_failover, daemons=2, may_duplicate=True),
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



async def run_scenario(fault: Fault, *, pg: PrivatePostgres,
                       redis_server: PrivateRedis | PrivateRedisCluster,
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
