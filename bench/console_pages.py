"""Server time of each console page with a million tasks and five million runs.

Fills a fresh database with generate_series (--tasks tasks over ten queues, --runs-per-task
attempts each, created one every --spacing-ms so that the last hour holds a realistic
share of finished tasks; 90 % completed, 5 % failed and in the DLQ, 4 % cancelled, 1 %
queued in queues no worker serves), plus audit rows and one schedule, then asks each
console page --samples times, one request at a time, and reports the daemon's own time
per page (the Server-Timing header the console sets: routing, queries and rendering) as
p50/p99/max, with the client's wall time beside it. Workflows for the workflow pages (one
of 300 nodes, one of 10,000, 48 small) are submitted through the API before measuring. The daemon serves the `default` queue
only, so the filled tasks stay as they are.

Usage: .venv/bin/python bench/console_pages.py [--tasks 1000000] [--runs-per-task 5]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psycopg
import trio
from throughput import (
    DEFAULT_ADMIN_DSN,
    DEFAULT_REDIS_URL,
    latency_summary_ms,
    provisioned,
    running_daemon,
)
from throughput import daemon_env as bench_env

REPO = Path(__file__).resolve().parents[1]
# Queues the filled tasks go to (q0 … q9); the daemon works `default` only.
QUEUES = 10
# Longest the fill and the measurement may take.
RUN_TIMEOUT_S = 3600.0

FILL_TASKS = """
INSERT INTO tasks (id, name, handler, type, queue_name, priority, payload, max_retries,
                   status, failures, created_at, updated_at, finished_at, dedup_key)
SELECT gen_random_uuid(), 'report-' || mod(i, 1000), CASE WHEN mod(i, 3) = 0 THEN 'http' ELSE 'noop' END,
       'immediate', 'q' || mod(i, %(queues)s), mod(i, 5),
       json_build_object('customer', 'c' || mod(i, 50000), 'i', i, 'note', repeat('x', 200)),
       4,
       CASE WHEN mod(i, 100) < 90 THEN 'completed' WHEN mod(i, 100) < 95 THEN 'failed'
            WHEN mod(i, 100) < 99 THEN 'cancelled' ELSE 'queued' END,
       CASE WHEN mod(i, 100) BETWEEN 90 AND 94 THEN 5 ELSE 4 END,
       now() - (i * %(spacing_ms)s) * interval '1 millisecond',
       now() - (i * %(spacing_ms)s) * interval '1 millisecond' + interval '1 second',
       CASE WHEN mod(i, 100) < 99
            THEN now() - (i * %(spacing_ms)s) * interval '1 millisecond' + interval '1 second' END,
       CASE WHEN mod(i, 10) = 0 THEN 'dedup-' || i END
  FROM generate_series(1, %(tasks)s) AS i
"""

# Attempts 1 … n-1 retried with an error; the last one ended as its task did.
FILL_RUNS = """
INSERT INTO task_runs (id, task_id, bucket, attempt, status, worker_id, available_at, error,
                       result, created_at, started_at, finished_at, dispatched_at)
SELECT distasks_run_id(t.id), t.id, distasks_bucket(t.id), a,
       CASE WHEN a < %(runs)s THEN 'retrying'
            WHEN t.status = 'completed' THEN 'succeeded'
            WHEN t.status = 'failed' THEN 'failed'
            WHEN t.status = 'cancelled' THEN 'cancelled' ELSE 'queued' END,
       CASE WHEN a < %(runs)s OR t.status <> 'queued' THEN 'bench-worker' END,
       t.created_at, CASE WHEN a < %(runs)s OR t.status = 'failed'
                          THEN 'RuntimeError: attempt ' || a || ' failed' END,
       CASE WHEN a = %(runs)s AND t.status = 'completed' THEN '{"ok": true}'::jsonb END,
       t.created_at, CASE WHEN a < %(runs)s OR t.status <> 'queued' THEN t.created_at END,
       CASE WHEN a < %(runs)s OR t.status NOT IN ('queued') THEN t.created_at END,
       t.created_at
  FROM tasks t CROSS JOIN generate_series(1, %(runs)s) AS a
"""

FILL_AUDIT = """
INSERT INTO audit_log (at, actor, tenant, address, request_id, action, queue_name, detail)
SELECT now() - i * interval '1 second', 'key:bench', 'default', '127.0.0.1', 'r' || i,
       CASE WHEN mod(i, 2) = 0 THEN 'pause' ELSE 'resume' END, 'q' || mod(i, 10), '{}'::jsonb
  FROM generate_series(1, %(rows)s) AS i
"""


def fill(dsn: str, *, tasks: int, runs: int, spacing_ms: float, audit_rows: int) -> dict:
    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(FILL_TASKS, {"tasks": tasks, "queues": QUEUES, "spacing_ms": spacing_ms})
        tasks_s = time.perf_counter() - started
        conn.execute(FILL_RUNS, {"runs": runs})
        runs_s = time.perf_counter() - started - tasks_s
        conn.execute(FILL_AUDIT, {"rows": audit_rows})
        conn.execute("VACUUM ANALYZE")
        counts = conn.execute("SELECT (SELECT count(*) FROM tasks), "
                              "(SELECT count(*) FROM task_runs)").fetchone()
    assert counts is not None
    return {"tasks": counts[0], "runs": counts[1], "fill_tasks_s": round(tasks_s, 1),
            "fill_runs_s": round(runs_s, 1),
            "fill_total_s": round(time.perf_counter() - started, 1)}


def sample_ids(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT id FROM tasks WHERE status = 'failed' "
                           "ORDER BY created_at DESC LIMIT 1").fetchone()
        old = conn.execute("SELECT id FROM tasks ORDER BY created_at LIMIT 1").fetchone()
        at = conn.execute("SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY created_at) "
                          "FROM tasks").fetchone()
    assert row and old and at
    return {"failed": str(row[0]), "oldest": str(old[0]),
            "midpoint": at[0].strftime("%Y-%m-%dT%H:%M")}


def pages(ids: dict[str, str]) -> dict[str, str]:
    """Each measured view: its label and its path."""
    return {
        "overview": "/console/",
        "tasks (first page, count capped)": "/console/tasks",
        "tasks status=failed": "/console/tasks?status=failed",
        "tasks queue+status": "/console/tasks?queue=q3&status=completed",
        "tasks name (no index)": "/console/tasks?name=report-7",
        "tasks handler+created range": (f"/console/tasks?handler=http&created_before="
                                        f"{ids['midpoint']}"),
        "tasks dedup_key": "/console/tasks?dedup_key=dedup-10000",
        "tasks payload search": "/console/tasks?payload=%7B%22customer%22%3A%22c7%22%7D",
        "task (5 attempts)": f"/console/tasks/{ids['failed']}",
        "task with payload": f"/console/tasks/{ids['oldest']}?payload=1",
        "queues": "/console/queues",
        "dlq q1": "/console/dlq?queue=q1",
        "schedules": "/console/schedules",
        "schedule": "/console/schedules/nightly",
        "workers": "/console/workers",
        "audit": "/console/audit",
        "audit action=pause": "/console/audit?action=pause",
    }


async def submit_workflows(client: httpx.AsyncClient) -> dict[str, str]:
    """Workflows through the API, in q0 (no worker serves it, so they hold still): one of
    300 nodes (drawn), one of 10,000 (limits.max_workflow_tasks: counted per depth, not
    drawn) and 48 small ones for the list; the views of their pages."""

    def fan(name: str, parts: int) -> dict:
        return {"name": name, "tasks": [
            {"key": "root", "name": "root", "handler": "noop", "queue_name": "q0"},
            *({"key": f"part-{i:05}", "name": "part", "handler": "noop", "queue_name": "q0",
               "depends_on": ["root"]} for i in range(parts - 2)),
            {"key": "last", "name": "last", "handler": "noop", "queue_name": "q0",
             "depends_on": ["root"]}]}

    ids = {}
    for label, body in (("300", fan("drawn", 300)), ("10000", fan("counted", 10_000)),
                        *((str(i), fan(f"small-{i}", 5)) for i in range(48))):
        r = await client.post("/api/v1/workflows", json=body)
        assert r.status_code == 201, r.text[:500]
        ids[label] = r.json()["workflow_id"]
    return {"workflows": "/console/workflows",
            "workflows state=running": "/console/workflows?state=running&name=small-7",
            "workflow (300 nodes, drawn)": f"/console/workflows/{ids['300']}",
            "workflow (10,000 nodes, counted)": f"/console/workflows/{ids['10000']}",
            "workflow (10,000, nodes 9,901+)":
                f"/console/workflows/{ids['10000']}?start=9900"}


SERVER_TIMING = re.compile(r"app;dur=([0-9.]+)")


async def measure(url: str, views: dict[str, str], samples: int) -> dict[str, dict]:
    out: dict[str, dict] = {}
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=60) as client:
        assert (await client.post("/api/v1/schedules", json={
            "name": "nightly", "cron": "30 2 * * *", "task": {"handler": "noop"}})
                ).status_code == 201
        views = {**views, **await submit_workflows(client)}
        for label, path in views.items():
            server, wall = [], []
            for i in range(samples + 2):
                started = time.perf_counter()
                r = await client.get(path)
                elapsed = time.perf_counter() - started
                assert r.status_code == 200, (path, r.status_code, r.text[:500])
                if i >= 2:  # two to warm caches and the plan
                    m = SERVER_TIMING.search(r.headers.get("server-timing", ""))
                    assert m, "no Server-Timing header"
                    server.append(float(m.group(1)) / 1000)
                    wall.append(elapsed)
            out[label] = {"server": latency_summary_ms(server),
                          "wall": latency_summary_ms(wall), "bytes": len(r.content)}
            print(f"{label:34} server p50 {out[label]['server']['p50_ms']:8.1f} ms  "
                  f"p99 {out[label]['server']['p99_ms']:8.1f} ms", file=sys.stderr)
    return out


async def main(opts: argparse.Namespace) -> None:
    # The daemon's output stays after the run (a failed page names its error there).
    out_dir = Path(tempfile.mkdtemp(prefix="console-bench-"))
    print(f"daemon output in {out_dir}", file=sys.stderr)
    with provisioned(DEFAULT_ADMIN_DSN, DEFAULT_REDIS_URL) as res:
        env = bench_env(res, queues="default", concurrency=1)
        with trio.fail_after(RUN_TIMEOUT_S):
            async with running_daemon("console", env, out_dir, REPO) as daemon:
                filled = await trio.to_thread.run_sync(lambda: fill(
                    res.dsn, tasks=opts.tasks, runs=opts.runs_per_task,
                    spacing_ms=opts.spacing_ms, audit_rows=opts.audit_rows))
                print(f"filled: {filled}", file=sys.stderr)
                ids = await trio.to_thread.run_sync(sample_ids, res.dsn)
                figures = await measure(daemon.proc.url, pages(ids), opts.samples)
    print(json.dumps({"config": vars(opts), "filled": filled, "pages": figures}, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--runs-per-task", type=int, default=5)
    parser.add_argument("--spacing-ms", type=float, default=100.0,
                        help="time between two filled tasks' creation (100 ms: 27.8 h)")
    parser.add_argument("--audit-rows", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=50)
    trio.run(main, parser.parse_args())
