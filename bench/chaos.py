"""Chaos bench: the fault scenarios of tests/system/test_faults.py, measured.

For each fault, N `chaos_sleep` tasks (50-200 ms) are created over HTTP while one or two
`distasks serve` daemons work them off; once a third have completed the fault is
injected; then the bench waits (bounded) until every accepted task is final in
PostgreSQL and counts, from PostgreSQL and the handlers' execution log, what was lost or
run twice. Everything runs on a private PostgreSQL and a private Redis on free loopback
ports, started here and removed at the end: the shared servers are never touched.
`redis-failover` runs on a private Redis Cluster (three masters, three replicas), started
only when that fault is asked for.

One table row per fault:

  accepted     creates answered 2xx (503s and connection errors are retried)
  completed    accepted tasks `completed`
  lost         accepted tasks missing, not final at the end, or final without a
               succeeded run (must be 0)
  executions   handler starts of accepted tasks
  duplicated   tasks whose handler started more than once, every start a recorded attempt
  unrecorded   re-executions that are not a separate attempt on record (must be 0)
  resume_s     fault -> first success of a run started after the fault
  settle_s     fault -> the last task accepted before the fault is final; it includes
               ordinary processing of that backlog: compare with the `none` row
  (both from PostgreSQL's run timestamps against the wall clock at injection; a
  repeated fault is timed from its last step)

Usage: .venv/bin/python bench/chaos.py [--tasks 500] [--faults kill9,redis-empty]
       [--cycles 10] [--keep] [--json]
Exit status: 0 when every fault kept the promises, 1 when one did not, 2 when the bench
could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import trio

from distasks.testing import faults as f
from distasks.testing import servers, workload
from distasks.testing.daemon import DaemonExited

# One scenario, everything included; far above a healthy run (about 15-40 s).
SCENARIO_TIMEOUT_S = 300.0

COLUMNS = ("fault", "accepted", "completed", "lost", "executions", "duplicated",
           "unrecorded", "resume_s", "settle_s", "ok")


def header(args: argparse.Namespace, names: list[str]) -> list[str]:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"# distasks chaos bench, commit {f.git_commit()}, {time.strftime('%Y-%m-%d %H:%M:%S')}"
        f", {os.cpu_count()} cores, load {load}",
        f"# N={args.tasks} tasks per fault, handler chaos_sleep 50-200 ms, creates at most "
        f"{workload.CREATE_CLIENTS} in flight at {f.DEFAULT_RATE_PER_S:g}/s (cancel-stress: "
        f"{f.FAULTS['cancel-stress'].rate_per_s:g}/s), dedup keys, 503/connection errors "
        f"retried for {workload.CREATE_RETRY_S:g}s",
        f"# daemons: {f.settings_line()}",
        f"# fault injected once N/3 tasks completed; cancel-stress: {args.cycles} cycles; "
        f"faults: {', '.join(names)}",
        "# resume_s: fault -> first success of a run started after it; settle_s: fault -> "
        "last task accepted before it is final (PostgreSQL timestamps)",
    ]


def row(r: f.Result) -> dict[str, object]:
    t = r.tally
    return {"fault": r.fault.name, "accepted": t.accepted, "completed": t.completed,
            "lost": t.lost, "executions": t.executions, "duplicated": t.duplicated,
            "unrecorded": t.unrecorded, "resume_s": f.fmt_s(t.resume_s),
            "settle_s": f.fmt_s(t.settle_s), "ok": "yes" if not r.problems() else "NO"}


def format_row(values: dict[str, object]) -> str:
    widths = {"fault": 14}
    return " ".join(str(values[c]).ljust(widths.get(c, 10)) for c in COLUMNS).rstrip()


async def run(args: argparse.Namespace, names: list[str], workdir: Path) -> int:
    pg = servers.PrivatePostgres()
    redis_server = servers.PrivateRedis()
    try:
        await trio.to_thread.run_sync(pg.init)
        await trio.to_thread.run_sync(pg.start)
        await trio.to_thread.run_sync(redis_server.start)
    except (OSError, RuntimeError) as e:
        print(f"chaos: cannot start the private servers: {e}", file=sys.stderr)
        await trio.to_thread.run_sync(redis_server.stop)
        await trio.to_thread.run_sync(pg.stop)
        return 2
    cluster: servers.PrivateRedisCluster | None = None
    if "redis-failover" in names:
        cluster = servers.PrivateRedisCluster()
        try:
            await trio.to_thread.run_sync(cluster.start)
        except (OSError, RuntimeError) as e:
            print(f"chaos: cannot start the private Redis Cluster: {e}", file=sys.stderr)
            await trio.to_thread.run_sync(cluster.stop)
            await trio.to_thread.run_sync(redis_server.stop)
            await trio.to_thread.run_sync(pg.stop)
            return 2
    failed = False
    rows: list[dict[str, object]] = []
    try:
        for line in header(args, names):
            print(line)
        print(format_row({c: c for c in COLUMNS}))
        for name in names:
            fault = f.FAULTS[name]
            try:
                with trio.fail_after(SCENARIO_TIMEOUT_S):
                    result = await f.run_scenario(
                        fault, pg=pg,
                        redis_server=cluster if name == "redis-failover" and cluster
                        else redis_server,
                        workdir=workdir / name, n=args.tasks, seed=args.seed,
                        stress_cycles=args.cycles)
            except (f.ScenarioFailed, DaemonExited, trio.TooSlowError) as e:
                failed = True
                print(format_row({c: "-" for c in COLUMNS} | {"fault": name, "ok": "ERROR"}))
                print(f"  {name}: {e}", flush=True)
                continue
            values = row(result)
            rows.append(values | {"problems": result.problems(),
                                  "taken_over": result.tally.taken_over,
                                  "stops": [(s.daemon, s.returncode, round(s.seconds, 2))
                                            for s in result.stops]})
            print(format_row(values), flush=True)
            if result.problems() or args.verbose:
                failed = failed or bool(result.problems())
                print("\n".join("    " + line for line in result.explain().splitlines()),
                      flush=True)
        if args.json:
            print(json.dumps({"commit": f.git_commit(), "tasks": args.tasks, "rows": rows}))
    finally:
        if cluster is not None:
            await trio.to_thread.run_sync(cluster.stop)
        await trio.to_thread.run_sync(redis_server.stop)
        await trio.to_thread.run_sync(pg.stop)
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=500, help="tasks per fault (500)")
    parser.add_argument("--faults", default=",".join(f.FAULTS),
                        help=f"comma-separated, of: {', '.join(f.FAULTS)} (all)")
    parser.add_argument("--cycles", type=int, default=f.STRESS_CYCLES,
                        help=f"SIGTERM + restart cycles of cancel-stress ({f.STRESS_CYCLES})")
    parser.add_argument("--seed", type=int, default=0, help="task durations (0)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the daemon and execution logs (printed at the end)")
    parser.add_argument("--verbose", action="store_true",
                        help="explain every row, not only those with problems")
    parser.add_argument("--json", action="store_true", help="also one JSON object at the end")
    args = parser.parse_args()
    names = [n.strip() for n in args.faults.split(",") if n.strip()]
    unknown = [n for n in names if n not in f.FAULTS]
    if unknown or args.tasks < 3 or args.cycles < 1:
        parser.error(f"unknown faults {unknown}" if unknown else "--tasks >= 3, --cycles >= 1")
    workdir = Path(tempfile.mkdtemp(prefix="distasks-chaos-"))
    try:
        return trio.run(run, args, names, workdir)
    finally:
        if args.keep:
            print(f"# logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
