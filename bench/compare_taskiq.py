"""distasks beside Taskiq on one box, the same job for both (one Redis write): the table
of issue 17, medians of --repeats rounds.

Three systems, each as a user runs it, measured back to back in every round:

  Taskiq       `taskiq worker taskiq_app:broker` with Taskiq's defaults (2 worker
               processes, 100 async tasks each; sync tasks in its thread pool), a
               ListQueueBroker (a Redis list: BRPOP, nothing recorded, no ack)
  distasks x1  one `distasks serve` (bench/redis_write_handler.py), every task and
               attempt in PostgreSQL
  distasks x2  two `distasks serve` behind one port (`http.reuse_port`), same settings

Rows, each system with a fresh database and Redis prefix:

  enqueue   --enqueue single calls from one Python loop: `await task.kiq()` for Taskiq,
            the stock `Client.create` for distasks (and `Client.producer()`, which
            batches, as a second figure); jobs/s and the client's CPU per job. Taskiq's
            enqueue is the --tasks jobs of its drain backlog; distasks's go to a queue
            nobody works.
  drain     --tasks jobs queued before any worker takes one (distasks: created by batch
            into a paused queue, then resumed), each doing one Redis INCR with the
            --handler chosen. The handlers' counter is read every 10 ms; the rate and
            the workers' CPU (from /proc/<pid>/stat, summed over every worker process)
            run from the first poll that sees a completion to the one that sees the
            last (for distasks: the last run recorded succeeded in PostgreSQL), so
            start-up does not count.
  latency   `stamp` jobs sent on a fixed schedule (open loop) at --rate for --duration:
            the client takes time.time() right before it sends each, the handler's first
            line takes time.time() and writes it to Redis. enqueue -> start is the
            difference (one machine, one clock). Every job sent must be stamped.

The exit status is 1 when a check fails (a job lost or run twice, a create refused, a
daemon not exiting 0, a job not stamped), 2 when the bench could not measure.

Usage: .venv/bin/python bench/compare_taskiq.py [--handler async|sync] [--repeats 3]
       [--tasks 20000] [--enqueue 2000] [--rate 200] [--duration 10] [--json]
Needs the `bench` extra (`make bench-compare` installs it and runs this).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import redis
import trio
from producer import blocking_producer_loop, client_loop, measure
from reuse_port import daemons
from throughput import (
    DEFAULT_ADMIN_DSN,
    DEFAULT_REDIS_URL,
    DRAIN_PROGRESS,
    TASK_STATES,
    Database,
    Resources,
    connections,
    git,
    latency_summary_ms,
    percentile,
    process_cpu_s,
    provisioned,
    send_at_rate,
    system_cpu_s,
)

BENCH_DIR = Path(__file__).resolve().parent
QUEUE = "cmp"
# Tasks per batch request when queueing the distasks side's backlog.
CREATE_BATCH = 500
# How often the handlers' counter is read during a drain.
COUNTER_POLL_S = 0.01
# How often PostgreSQL is asked whether the last outcomes of a drain are written down.
RECORDED_POLL_S = 0.05
# Longest a drain may take.
DRAIN_TIMEOUT_S = 300.0
# Longest the last stamps may take to arrive after the last send.
STAMP_TIMEOUT_S = 30.0
# Longest the Taskiq producer subprocess may run.
SUBPROCESS_TIMEOUT_S = 600.0
# The producer helper's bounds in the enqueue row (its documented defaults in producer.py).
PRODUCER_MAX_BATCH = 100
PRODUCER_MAX_DELAY_S = 0.005
SYSTEMS = ("taskiq", "distasks x1", "distasks x2")
HANDLERS = {"async": "redis_write", "sync": "redis_write_sync"}


@dataclass(frozen=True)
class Options:
    handler: str  # "async" or "sync"
    tasks: int
    enqueue: int
    concurrency: int
    clients: int
    rate_per_s: float
    duration_s: float
    repeats: int
    json: bool


class Meter:
    """One phase: wall time, the CPU of the processes `cpu` adds up, the bench's own CPU,
    and how busy the whole machine was (other people's work shows there)."""

    def __init__(self, cpu: Callable[[], float] = lambda: 0.0) -> None:
        self._cpu = cpu
        self._wall_s = time.perf_counter()
        self._cpu_s = cpu()
        self._bench_s = time.process_time()
        self._machine = system_cpu_s()

    def read(self) -> dict[str, float]:
        busy_s, total_s = system_cpu_s()
        return {"wall_s": time.perf_counter() - self._wall_s,
                "cpu_s": self._cpu() - self._cpu_s,
                "bench_cpu_s": time.process_time() - self._bench_s,
                "machine_busy_pct": round(100 * (busy_s - self._machine[0])
                                          / max(total_s - self._machine[1], 1e-9), 1)}


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # the parent pid is the field after the state
            found.append(int(stat.parent.name))
    return found


def busy(meter: Meter) -> dict[str, float]:
    """The workers' CPU (% of one core) and the machine's over a phase."""
    use = meter.read()
    return {"workers_pct_of_core": round(100 * use["cpu_s"] / use["wall_s"], 1),
            "machine_busy_pct": use["machine_busy_pct"]}


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of `pid` and its children: `taskiq worker` runs its workers in children."""
    return process_cpu_s(pid) + sum(process_cpu_s(child) for child in children(pid))


# -- the rows, the same for both systems -------------------------------------------------------


async def drain_by_counter(res: Resources, *, tasks: int, cpu: Callable[[], float],
                           recorded: Callable[[], Awaitable[int]] | None = None,
                           ) -> dict[str, Any]:
    """Until the handlers' counter reaches `tasks`, and then until `recorded()` (the
    outcomes a system writes down after the handler) does too (bounded). Rate and CPU
    are taken from the first poll that sees a completion to the last poll."""
    counter = redis.Redis.from_url(res.redis_url)
    key = f"{res.name}:done"
    meter: Meter | None = None
    done = first_done = 0
    with trio.move_on_after(DRAIN_TIMEOUT_S) as scope:
        while done < tasks:
            await trio.sleep(COUNTER_POLL_S)
            done = int(counter.get(key) or 0)
            if done and meter is None:
                meter, first_done = Meter(cpu), done
        while recorded is not None:  # polled: the outcomes are written by other processes
            if await recorded() >= tasks:
                break
            await trio.sleep(RECORDED_POLL_S)
    result: dict[str, Any] = {"completed": done, "expected": tasks,
                              "timed_out": scope.cancelled_caught}
    if meter is not None and done > first_done:
        use = meter.read()
        jobs = done - first_done
        result.update(jobs_per_s=round(jobs / use["wall_s"], 1),
                      worker_cpu_ms_per_job=round(1000 * use["cpu_s"] / jobs, 3),
                      machine_busy_pct=use["machine_busy_pct"])
    return result


async def stamped(res: Resources, sent_s: dict[str, float]) -> dict[str, Any]:
    """enqueue -> start per job: the handler's stamp (HSET `<prefix>:started` id ts)
    minus the client's send time, once every sent job is stamped (bounded)."""
    client = redis.Redis.from_url(res.redis_url)
    key = f"{res.name}:started"
    with trio.move_on_after(STAMP_TIMEOUT_S):
        while True:  # another process writes them: polled
            if client.hlen(key) >= len(sent_s):
                break
            await trio.sleep(0.05)
    started_s = {k.decode(): float(v) for k, v in client.hgetall(key).items()}
    delays_s = [started_s[job] - s for job, s in sent_s.items() if job in started_s]
    return {"sent": len(sent_s), "stamped": len(delays_s), "missing": len(sent_s) - len(delays_s),
            "unexpected": len(started_s) - len(delays_s), **latency_summary_ms(delays_s)}


def counter_value(res: Resources) -> int:
    return int(redis.Redis.from_url(res.redis_url).get(f"{res.name}:done") or 0)


# -- Taskiq ----------------------------------------------------------------------------------


async def taskiq_round(res: Resources, out_dir: Path, opts: Options) -> dict[str, Any]:
    cli = shutil.which("taskiq", path=str(Path(sys.executable).parent))
    if cli is None:
        raise SystemExit("taskiq is not installed: `make bench-compare` installs the bench extra")
    env = {**os.environ, "BENCH_PREFIX": res.name, "REDIS_URL": res.redis_url}

    async def producer(*args: str) -> dict[str, Any]:
        with trio.fail_after(SUBPROCESS_TIMEOUT_S):
            done = await trio.run_process([sys.executable, "taskiq_app.py", *args], cwd=BENCH_DIR,
                                          env=env, capture_stdout=True)
        answer: dict[str, Any] = json.loads(done.stdout)
        return answer

    meter = Meter()
    sent = await producer("send", str(opts.tasks), HANDLERS[opts.handler])
    out: dict[str, Any] = {"enqueue": {
        "jobs": sent["jobs"], "jobs_per_s": round(sent["jobs"] / sent["elapsed_s"], 1),
        "client_cpu_ms_per_job": round(1000 * sent["client_cpu_s"] / sent["jobs"], 3),
        "machine_busy_pct": meter.read()["machine_busy_pct"]}}
    with (out_dir / "taskiq.out").open("wb") as output:
        # As a user starts it: Taskiq's defaults (2 worker processes, INFO logs).
        worker = await trio.lowlevel.open_process([cli, "worker", "taskiq_app:broker"],
                                                  cwd=BENCH_DIR, env=env, stdout=output,
                                                  stderr=subprocess.STDOUT)
    try:
        out["drain"] = await drain_by_counter(res, tasks=opts.tasks,
                                              cpu=lambda: tree_cpu_s(worker.pid))
        out["worker_processes"] = len(children(worker.pid))
        meter = Meter(lambda: tree_cpu_s(worker.pid))
        stamps = await producer("stamp", str(opts.rate_per_s), str(opts.duration_s))
        latency = await stamped(res, {str(k): v for k, v in stamps["sent"].items()})
        lag_s = stamps["lag_s"]
        out["latency"] = {**latency, "errors": stamps["errors"],
                          "send_lag_p99_ms": round(percentile(lag_s, 99) * 1000, 2),
                          **busy(meter)}
    finally:
        worker.terminate()
        with trio.move_on_after(10):
            await worker.wait()
        if worker.returncode is None:
            worker.kill()
    out["counter"] = counter_value(res)
    return out


# -- distasks --------------------------------------------------------------------------------


def handler_env(res: Resources) -> dict[str, str]:
    return {"DISTASKS_WORKER_HANDLERS": "redis_write_handler",
            "PYTHONPATH": f"{BENCH_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "BENCH_PREFIX": res.name, "REDIS_URL": res.redis_url}


async def distasks_round(res: Resources, out_dir: Path, opts: Options,
                         n: int) -> dict[str, Any]:
    """`n` full daemons behind one port, all working QUEUE."""
    settings = {"QUEUE_NAMES": QUEUE, **handler_env(res)}
    db = Database(res.dsn)
    try:
        async with daemons(n, res.dsn, res.redis_url, res.name, out_dir, opts.concurrency,
                           settings) as (url, started):
            pids = [d.process.pid for d, _ in started if d.process is not None]
            out: dict[str, Any] = {"daemons": n}
            async with httpx.AsyncClient(base_url=url, timeout=60, trust_env=False) as client:
                (await client.post(f"/api/v1/queues/{QUEUE}/pause")).raise_for_status()
                # The enqueue row first, while the daemons have nothing else to do.
                out["enqueue"] = await distasks_enqueue(url, pids, opts)
                await create_backlog(client, opts)
                out["ran_while_paused"] = counter_value(res)
                (await client.post(f"/api/v1/queues/{QUEUE}/resume")).raise_for_status()

            async def recorded() -> int:
                [(succeeded, _, _)] = await db.rows(DRAIN_PROGRESS, (QUEUE,))
                return int(succeeded)

            # A job is done when its run is recorded succeeded in PostgreSQL.
            out["drain"] = await drain_by_counter(
                res, tasks=opts.tasks, cpu=lambda: sum(process_cpu_s(pid) for pid in pids),
                recorded=recorded)
            out["latency"], created = await distasks_latency(
                res, url, opts, cpu=lambda: sum(process_cpu_s(pid) for pid in pids))
            # Every job of QUEUE, drained or stamped, must end completed in PostgreSQL.
            out["task_states_expected"] = {"completed": opts.tasks + created}
            with trio.move_on_after(DRAIN_TIMEOUT_S):
                while True:
                    out["task_states"] = dict(await db.rows(TASK_STATES, (QUEUE,)))
                    if out["task_states"] == out["task_states_expected"]:
                        break
                    await trio.sleep(RECORDED_POLL_S)
    finally:
        db.close()
    out["counter"] = counter_value(res)
    out["exit_codes"] = [d.returncode for d, _ in started]
    return out


async def distasks_enqueue(url: str, pids: list[int], opts: Options) -> dict[str, Any]:
    """Single creates with the stock client, then the same count through its producer,
    into a queue nobody works (producer.py's loops)."""
    meter = Meter()
    return {"create": await measure("Client.create", pids, url, opts.enqueue, client_loop,
                                    blocking=True),
            "producer": await measure("Client.producer", pids, url, opts.enqueue,
                                      blocking_producer_loop(PRODUCER_MAX_BATCH,
                                                             PRODUCER_MAX_DELAY_S),
                                      blocking=True),
            "machine_busy_pct": meter.read()["machine_busy_pct"]}


async def create_backlog(client: httpx.AsyncClient, opts: Options) -> None:
    body = {"tasks": [{"name": "cmp", "handler": HANDLERS[opts.handler],
                       "queue_name": QUEUE}] * CREATE_BATCH}
    for start in range(0, opts.tasks, CREATE_BATCH):
        body["tasks"] = body["tasks"][:min(CREATE_BATCH, opts.tasks - start)]
        (await client.post("/api/v1/tasks/batch", json=body)).raise_for_status()


async def distasks_latency(res: Resources, url: str, opts: Options,
                           cpu: Callable[[], float]) -> tuple[dict[str, Any], int]:
    """Open-loop `stamp` creates (throughput.py's sender); the figures, and how many
    were created."""
    meter = Meter(cpu)
    async with connections(url, opts.clients) as conns:
        sent_at_s, sending = await send_at_rate(conns, queue=QUEUE, handler="stamp",
                                                rate_per_s=opts.rate_per_s,
                                                duration_s=opts.duration_s)
    latency = await stamped(res, {str(k): v for k, v in sent_at_s.items()})
    # A create that failed was sent but can never be stamped: it counts as missing.
    latency["missing"] += sending["requests"] - len(sent_at_s)
    latency["sent"] = sending["requests"]
    return ({**latency, "errors": sending["errors"],
             "send_lag_p99_ms": sending["send_lag_p99_ms"], **busy(meter)}, len(sent_at_s))


# -- checks and the table --------------------------------------------------------------------


def failures(system: str, r: dict[str, Any], opts: Options) -> list[str]:
    """What went wrong in one round: anything here makes the exit status 1."""
    bad = []
    if r["drain"]["completed"] != opts.tasks or r["counter"] != opts.tasks:
        bad.append(f"{system}: drain: {r['drain']['completed']} of {opts.tasks} done, "
                   f"counter {r['counter']} (each job must run once)")
    lat = r["latency"]
    if lat["missing"] or lat["unexpected"] or lat["errors"]:
        bad.append(f"{system}: latency: {lat['missing']} of {lat['sent']} sent not stamped, "
                   f"{lat['unexpected']} unexpected stamps, errors {lat['errors']}")
    if system != "taskiq":
        if r["task_states"] != r["task_states_expected"]:
            bad.append(f"{system}: tasks of {QUEUE!r}: {r['task_states']}, expected "
                       f"{r['task_states_expected']}")
        if r["ran_while_paused"]:
            bad.append(f"{system}: {r['ran_while_paused']} jobs ran in the paused queue")
        if any(code != 0 for code in r["exit_codes"]):
            bad.append(f"{system}: daemon exit codes {r['exit_codes']}")
    return bad


def figures(system: str, r: dict[str, Any]) -> dict[str, float]:
    """The table's numbers from one round."""
    enqueue = r["enqueue"]["create"] if system != "taskiq" else r["enqueue"]
    out = {"enqueue_jobs_per_s": enqueue.get("jobs_per_s", enqueue.get("creates_per_s")),
           "enqueue_client_cpu_ms": enqueue.get("client_cpu_ms_per_job",
                                                enqueue.get("client_cpu_ms_per_create")),
           "drain_jobs_per_s": r["drain"].get("jobs_per_s", float("nan")),
           "worker_cpu_ms_per_job": r["drain"].get("worker_cpu_ms_per_job", float("nan")),
           "start_p50_ms": r["latency"]["p50_ms"], "start_p99_ms": r["latency"]["p99_ms"],
           "start_max_ms": r["latency"]["max_ms"],
           "drain_machine_busy_pct": r["drain"].get("machine_busy_pct", float("nan")),
           "start_workers_pct_of_core": r["latency"]["workers_pct_of_core"],
           "start_machine_busy_pct": r["latency"]["machine_busy_pct"]}
    if system != "taskiq":
        out["producer_jobs_per_s"] = r["enqueue"]["producer"]["creates_per_s"]
        out["producer_client_cpu_ms"] = r["enqueue"]["producer"]["client_cpu_ms_per_create"]
    return out


def print_round(system: str, r: dict[str, Any]) -> None:
    e, d, lat = r["enqueue"], r["drain"], r["latency"]
    if system == "taskiq":
        print(f"  {system:<12} enqueue {e['jobs_per_s']:>8.0f}/s (kiq, client "
              f"{e['client_cpu_ms_per_job']:.3f} ms CPU/job; machine {e['machine_busy_pct']:.0f}%"
              f" busy); {r['worker_processes']} worker processes")
    else:
        c, p = e["create"], e["producer"]
        print(f"  {system:<12} enqueue {c['creates_per_s']:>8.0f}/s (Client.create, client "
              f"{c['client_cpu_ms_per_create']:.3f} ms CPU/job, daemons "
              f"{c['daemon_cpu_ms_per_create']:.3f}); producer {p['creates_per_s']:.0f}/s "
              f"(client {p['client_cpu_ms_per_create']:.3f}); machine {e['machine_busy_pct']:.0f}%"
              f" busy")
    print(f"  {'':<12} drain   {d.get('jobs_per_s', float('nan')):>8.0f}/s ({d['completed']}/"
          f"{d['expected']}{', TIMED OUT' if d['timed_out'] else ''}); workers "
          f"{d.get('worker_cpu_ms_per_job', float('nan')):.3f} ms CPU/job; machine "
          f"{d.get('machine_busy_pct', float('nan')):.0f}% busy")
    print(f"  {'':<12} enqueue->start p50 {lat['p50_ms']:.2f} p99 {lat['p99_ms']:.2f} max "
          f"{lat['max_ms']:.2f} ms ({lat['stamped']}/{lat['sent']} stamped, {lat['missing']} "
          f"missing; send lag p99 {lat['send_lag_p99_ms']:.1f} ms; workers "
          f"{lat['workers_pct_of_core']:.0f}% of a core; machine {lat['machine_busy_pct']:.0f}% busy)")


def medians(rounds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for system in SYSTEMS:
        each = [figures(system, r[system]) for r in rounds]
        out[system] = {k: round(statistics.median(f[k] for f in each), 3) for k in each[0]}
    return out


def print_table(m: dict[str, dict[str, float]], opts: Options) -> None:
    t, d1, d2 = (m[s] for s in SYSTEMS)
    rows = [
        ("enqueue, one call per job from one Python loop",
         [f"{t['enqueue_jobs_per_s']:,.0f} jobs/s"]
         + [f"{d['enqueue_jobs_per_s']:,.0f} jobs/s (producer: {d['producer_jobs_per_s']:,.0f})"
            for d in (d1, d2)]),
        ("client CPU per enqueue (producer)",
         [f"{t['enqueue_client_cpu_ms']:.2f} ms"]
         + [f"{d['enqueue_client_cpu_ms']:.2f} ms ({d['producer_client_cpu_ms']:.2f})"
            for d in (d1, d2)]),
        (f"drain {opts.tasks:,}", [f"{s['drain_jobs_per_s']:,.0f} jobs/s" for s in (t, d1, d2)]),
        ("worker CPU per job", [f"{s['worker_cpu_ms_per_job']:.2f} ms" for s in (t, d1, d2)]),
        (f"enqueue → start at {opts.rate_per_s:g}/s, p50 / p99 (max)",
         [f"{s['start_p50_ms']:.1f} / {s['start_p99_ms']:.1f} ({s['start_max_ms']:.1f}) ms"
          for s in (t, d1, d2)]),
        (f"workers' CPU at {opts.rate_per_s:g}/s (% of a core)",
         [f"{s['start_workers_pct_of_core']:.0f} %" for s in (t, d1, d2)]),
        ("machine busy: drain / latency phase",
         [f"{s['drain_machine_busy_pct']:.0f} / {s['start_machine_busy_pct']:.0f} %"
          for s in (t, d1, d2)]),
    ]
    print(f"\nmedians of {opts.repeats} (handler {opts.handler}: {HANDLERS[opts.handler]})\n")
    print("| | Taskiq (2 processes) | distasks, 1 daemon | distasks, 2 daemons |")
    print("|---|---:|---:|---:|")
    for name, cells in rows:
        print(f"| {name} | {' | '.join(cells)} |")


def configuration(opts: Options) -> dict[str, Any]:
    commit = git("rev-parse", "--short", "HEAD")
    if git("status", "--porcelain", "--", "distasks", "bench/*.py"):
        commit += "+uncommitted changes in distasks/ or bench/*.py"

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {"handler": f"{opts.handler} ({HANDLERS[opts.handler]})", "tasks": opts.tasks,
            "enqueue": opts.enqueue, "concurrency_per_daemon": opts.concurrency,
            "latency_connections": opts.clients, "rate_per_s": opts.rate_per_s,
            "duration_s": opts.duration_s, "repeats": opts.repeats,
            "taskiq_worker": "defaults: 2 processes x 100 async tasks",
            "producer": f"max_batch {PRODUCER_MAX_BATCH}, max_delay {PRODUCER_MAX_DELAY_S * 1000:g} ms",
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "versions": {p: version(p) for p in ("distasks", "taskiq", "taskiq-redis", "redis",
                                                 "httpx")},
            "commit": commit, "load_avg_1min": round(os.getloadavg()[0], 2)}


async def run(opts: Options) -> dict[str, Any]:
    admin_dsn = os.environ.get("DISTASKS_PG_ADMIN_DSN", DEFAULT_ADMIN_DSN)
    redis_url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    rounds: list[dict[str, Any]] = []
    bad: list[str] = []
    with tempfile.TemporaryDirectory(prefix="distasks-cmp-") as tmp:
        for i in range(opts.repeats):
            print(f"round {i + 1} of {opts.repeats}")
            rounds.append({})
            for system in SYSTEMS:
                out_dir = Path(tmp) / f"{i}-{system.replace(' ', '')}"
                out_dir.mkdir()
                with provisioned(admin_dsn, redis_url) as res:
                    if system == "taskiq":
                        r = await taskiq_round(res, out_dir, opts)
                    else:
                        r = await distasks_round(res, out_dir, opts, int(system[-1]))
                rounds[-1][system] = r
                print_round(system, r)
                bad += failures(system, r, opts)
    return {"rounds": rounds, "medians": medians(rounds), "failures": bad}


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--handler", choices=sorted(HANDLERS), default="async",
                   help="the drain's handler: async (redis_write) or sync (redis_write_sync, "
                        "a plain def with the blocking Redis client)")
    p.add_argument("--tasks", type=int, default=20000, help="jobs drained (20000)")
    p.add_argument("--enqueue", type=int, default=2000,
                   help="distasks single creates, and producer submits, timed (2000)")
    p.add_argument("--concurrency", type=int, default=100,
                   help="WORKER_CONCURRENCY of each distasks daemon (100)")
    p.add_argument("--clients", type=int, default=16,
                   help="HTTP connections of the distasks latency sender (16)")
    p.add_argument("--rate", type=float, default=200.0, help="latency jobs per second (200)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of latency jobs (10)")
    p.add_argument("--repeats", type=int, default=3, help="rounds; the table shows medians (3)")
    p.add_argument("--json", action="store_true", help="also print everything as one JSON object")
    a = p.parse_args(argv)
    if min(a.tasks, a.enqueue, a.concurrency, a.clients, a.repeats) < 1 or a.rate <= 0 \
            or a.duration <= 0:
        p.error("every count, the rate and the duration must be positive")
    return Options(a.handler, a.tasks, a.enqueue, a.concurrency, a.clients, a.rate, a.duration,
                   a.repeats, a.json)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    config = configuration(opts)
    print("distasks beside Taskiq: " + ", ".join(f"{k} {v}" for k, v in config.items()))
    try:
        result = trio.run(run, opts)
    except Exception as e:
        print(f"bench failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print_table(result["medians"], opts)
    for line in result["failures"]:
        print(f"FAILED {line}")
    if opts.json:
        print(json.dumps({"config": config, **result}, default=str))
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
