"""Operating the daemon, against `distasks serve` as a subprocess and the real tools:

- /metrics: counters by queue and handler, histograms, HTTP and worker gauges, and the
  scrape passes `promtool check metrics`;
- the log: JSON lines, one access line per request with the client's X-Request-Id, and
  never a payload;
- SIGHUP: concurrency and queues retuned live without losing or interrupting a task,
  restart-only keys named, an invalid file refused;
- systemd's notify protocol on a real unix datagram socket: READY, STATUS, WATCHDOG,
  RELOADING, STOPPING, in that order;
- /readyz: every component loop and the progress verdict.

One daemon per test. Waits poll the log file or an endpoint in loops bounded by
`trio.fail_after`; handlers sleep only where a test needs runs to overlap. Defects found
were strict xfails naming where the daemon went wrong; they pass now.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from .conftest import REPO, DaemonProcess

CONFIG = REPO / "config" / "distasks.toml"
# Debian's promtool is in /usr/bin; the sbin directories are where install-tools.sh's
# other tools land, searched the same way as tests/system/test_deploy.py does.
TOOL_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
# How often a bounded loop looks again at the log file or an endpoint.
POLL_S = 0.05
# The reporter refreshes gauges (and the component list) every GAUGE_INTERVAL_S (5 s):
# a wait for the next refresh is bounded by this.
REPORT_WAIT_S = 12.0
# Components every daemon serving only the default queue runs (distasks.daemon.health names).
COMPONENTS = {"fetch:default", "completer", "mover", "reaper", "reconciler", "heartbeat",
              "control", "waiters", "scheduler", "cleaner", "partitioner"}
FINAL = {"completed", "failed", "cancelled"}


# --- helpers --------------------------------------------------------------------------


def log_records(d: DaemonProcess) -> list[dict[str, Any]]:
    """Every complete line of the daemon's log, parsed; a line that is not a JSON object
    fails the test, naming it. A last line still being written is left for later."""
    complete = d.log().split("\n")[:-1]
    records = []
    for line in complete:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"log line is not JSON: {line!r}") from None
        assert isinstance(record, dict), line
        records.append(record)
    return records


async def wait_event(d: DaemonProcess, event: str, *, count: int = 1) -> dict[str, Any]:
    """The `count`-th log record with this event, once it is written; the caller bounds
    the wait."""
    while True:
        found = [r for r in log_records(d) if r.get("event") == event]
        if len(found) >= count:
            return found[count - 1]
        assert d.process.returncode is None, f"daemon exited:\n{d.log()}"
        await trio.sleep(POLL_S)


async def create(client: httpx.AsyncClient, **fields: Any) -> str:
    r = await client.post("/api/v1/tasks", json={"name": "op", **fields})
    assert r.status_code == 201, r.text
    return r.json()["task_id"]


async def wait_final(client: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    """Long-poll a task until it is completed, failed or cancelled; the caller bounds it."""
    while True:
        r = await client.get(f"/api/v1/tasks/{task_id}", params={"wait": 5})
        assert r.status_code == 200, r.text
        body = r.json()
        if body["task"]["status"] in FINAL:
            return body


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: httpx.AsyncClient) -> tuple[str, Samples]:
    """GET /metrics: the text, and every sample by (name, labels)."""
    r = await client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for family in text_string_to_metric_families(r.text) for s in family.samples}
    return r.text, samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def labelled(samples: Samples, name: str, label: str) -> dict[str, float]:
    """Samples of `name` by the value of one label (the metric has only that label)."""
    return {dict(key)[label]: v for (n, key), v in samples.items() if n == name}


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def max_overlap(runs: list[dict[str, Any]]) -> int:
    """Most runs whose [started_at, finished_at] intervals overlap at one instant; a run
    that starts when another finishes does not overlap it."""
    edges = []
    for run in runs:
        edges.append((parse_time(run["started_at"]), 1))
        edges.append((parse_time(run["finished_at"]), -1))
    edges.sort()  # at equal times the finish (-1) comes first
    most = current = 0
    for _, step in edges:
        current += step
        most = max(most, current)
    return most


async def promtool_problems(promtool: str, exposition: str) -> str:
    """What `promtool check metrics` (reading stdin) says is wrong; "" when it passes."""
    check = await trio.run_process([promtool, "check", "metrics"], stdin=exposition.encode(),
                                   capture_stdout=True, capture_stderr=True, check=False)
    problems = (check.stdout + check.stderr).decode()
    assert (check.returncode == 0) == (problems == ""), (check.returncode, problems)
    return problems


@pytest.fixture(scope="module")
def promtool() -> str:
    """promtool, installed by scripts/install-tools.sh if missing (as test_deploy.py)."""
    if not shutil.which("promtool", path=TOOL_PATH):
        result = subprocess.run(["bash", str(REPO / "scripts" / "install-tools.sh")],
                                capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            reason = f"scripts/install-tools.sh failed: {result.stderr.strip()}"
            if os.environ.get("CI"):
                pytest.fail(reason)
            pytest.skip(reason)
    path = shutil.which("promtool", path=TOOL_PATH)
    assert path, "promtool not found after scripts/install-tools.sh"
    return path


# --- metrics --------------------------------------------------------------------------


async def test_metrics_count_tasks_by_queue_and_handler_and_pass_promtool(
        start_daemon, daemon_env, promtool):
    env = {**daemon_env, "QUEUE_NAMES": "default,reports", "DISTASKS_RETRY_BASE_S": "0.05",
           "DISTASKS_RETRY_JITTER": "0"}
    with trio.fail_after(40):
        async with start_daemon(env) as d, httpx.AsyncClient(base_url=d.url) as client:
            completed = [await create(client, priority=0) for _ in range(2)]
            retried = await create(client, priority=1)  # the demo fails attempt 1
            failed = await create(client, priority=0, max_retries=1,
                                  payload={"always_fail": True})
            noop = await create(client, handler="noop", queue_name="reports")
            delayed = await create(client, type="delayed", delay_seconds=3600)
            r = await client.post(f"/api/v1/tasks/{delayed}/cancel")
            assert r.json()["cancelled"] is True
            finishing = [*completed, retried, failed, noop]
            for task_id in finishing:
                await wait_final(client, task_id)
            r = await client.get(f"/api/v1/tasks/{uuid.uuid4()}")
            assert r.status_code == 404
            r = await client.get(f"/no/such/{uuid.uuid4()}")
            assert r.status_code == 404

            # The reporter's first pass may precede the worker pool; wait for the pass that
            # sees every component, and the failure in the DLQ gauge.
            with trio.fail_after(REPORT_WAIT_S):
                while True:
                    text, samples = await scrape(client)
                    up = labelled(samples, "distasks_component_up", "component")
                    dlq = value(samples, "distasks_queue_depth", queue="default", state="dlq")
                    if COMPONENTS | {"fetch:reports"} <= set(up) and dlq == 1:
                        break
                    await trio.sleep(0.2)

    by_task = {"queue": "default", "handler": "demo"}
    reports = {"queue": "reports", "handler": "noop"}
    assert value(samples, "distasks_tasks_created_total", **by_task) == 5
    assert value(samples, "distasks_tasks_created_total", **reports) == 1
    assert value(samples, "distasks_tasks_completed_total", **by_task) == 3
    assert value(samples, "distasks_tasks_completed_total", **reports) == 1
    assert value(samples, "distasks_task_retries_total", **by_task) == 2
    assert value(samples, "distasks_task_retries_total", **reports) is None
    assert value(samples, "distasks_tasks_failed_total", **by_task) == 1
    assert value(samples, "distasks_lease_takeovers_total") == 0
    # Histograms: every run of a handler (six of demo: 2 + 2 + 2), every start per queue.
    assert value(samples, "distasks_run_duration_seconds_count", **by_task) == 6
    assert value(samples, "distasks_run_duration_seconds_count", **reports) == 1
    assert value(samples, "distasks_run_duration_seconds_bucket", le="+Inf", **by_task) == 6
    assert value(samples, "distasks_enqueue_to_start_seconds_count", queue="default") == 6
    assert value(samples, "distasks_enqueue_to_start_seconds_count", queue="reports") == 1
    assert value(samples, "distasks_http_request_duration_seconds_count",
                 route="/api/v1/tasks") == 6
    # HTTP requests by route template (not by path: one series per route), method, status.
    http = "distasks_http_requests_total"
    assert value(samples, http, route="/api/v1/tasks", method="POST", status="201") == 6
    assert value(samples, http, route="/api/v1/tasks/<uuid:task_id>/cancel", method="POST",
                 status="200") == 1
    assert value(samples, http, route="/api/v1/tasks/<uuid:task_id>", method="GET",
                 status="200") >= len(finishing)
    assert value(samples, http, route="/api/v1/tasks/<uuid:task_id>", method="GET",
                 status="404") == 1
    assert value(samples, http, route="unmatched", method="GET", status="404") == 1
    assert value(samples, http, route="/readyz", method="GET", status="200") >= 1
    assert not [key for (name, key) in samples if name == http
                and any(v.startswith("/no/") for _, v in key)]
    # (Or distasks_workers, once renamed: see test_scrape_passes_promtool_as_it_is.)
    assert (value(samples, "distasks_workers_total") or value(samples, "distasks_workers")) == 4
    assert value(samples, "distasks_workers_busy") == 0
    assert up == dict.fromkeys(COMPONENTS | {"fetch:reports"}, 1.0)
    assert value(samples, "distasks_queue_depth", queue="default", state="delayed") == 0
    assert value(samples, "distasks_queue_depth", queue="reports", state="ready") == 0
    assert value(samples, "distasks_last_progress_timestamp_seconds") > time.time() - 60
    # promtool's lint, but for the gauge name test_scrape_passes_promtool_as_it_is checks.
    assert await promtool_problems(promtool, text.replace("distasks_workers_total",
                                                          "distasks_workers")) == ""


async def test_scrape_passes_promtool_as_it_is(start_daemon, daemon_env, promtool):
    with trio.fail_after(30):
        async with start_daemon(daemon_env) as d, httpx.AsyncClient(base_url=d.url) as client:
            await wait_final(client, await create(client, priority=0))
            text, _ = await scrape(client)
    assert await promtool_problems(promtool, text) == ""


async def test_cancelled_tasks_are_counted(start_daemon, daemon_env):
    with trio.fail_after(30):
        async with start_daemon(daemon_env) as d, httpx.AsyncClient(base_url=d.url) as client:
            waiting = await create(client, type="delayed", delay_seconds=3600)
            running = await create(client, payload={"sleep_seconds": 30})
            while True:
                body = (await client.get(f"/api/v1/tasks/{running}")).json()
                if body["latest_run"]["status"] == "running":
                    break
                await trio.sleep(POLL_S)
            for task_id in (waiting, running):
                r = await client.post(f"/api/v1/tasks/{task_id}/cancel")
                assert r.json()["cancelled"] is True
                assert (await wait_final(client, task_id))["task"]["status"] == "cancelled"
            _, samples = await scrape(client)
    assert value(samples, "distasks_tasks_cancelled_total", queue="default",
                 handler="demo") == 2


# --- log ------------------------------------------------------------------------------


async def test_log_is_json_lines_with_one_access_line_per_request_and_no_payload(
        start_daemon, daemon_env):
    marker = f"secret-{uuid.uuid4().hex}"
    # DEBUG: the most the daemon ever logs, and still no payload.
    env = {**daemon_env, "DISTASKS_LOG_LEVEL": "DEBUG", "DISTASKS_RETRY_BASE_S": "0.05",
           "DISTASKS_RETRY_JITTER": "0"}
    request_ids: list[str] = []

    def rid() -> dict[str, str]:
        request_ids.append(f"op-{uuid.uuid4().hex}")
        return {"X-Request-Id": request_ids[-1]}

    with trio.fail_after(30):
        async with start_daemon(env) as d, httpx.AsyncClient(base_url=d.url) as client:
            ids = []
            for fields in ({"priority": 0}, {"priority": 1},
                           {"max_retries": 0, "payload": {"always_fail": True, "m": marker}}):
                body = {"name": "op", "payload": {"m": marker, "n": [marker]}, **fields}
                r = await client.post("/api/v1/tasks", json=body, headers=rid())
                assert r.status_code == 201, r.text
                assert r.headers["X-Request-Id"] == request_ids[-1]
                ids.append(r.json()["task_id"])
            # Refused bodies carry the marker too: the error path must not log them.
            r = await client.post("/api/v1/tasks", headers=rid(),
                                  json={"name": "op", "payload": {"m": marker}, marker: 1})
            assert r.status_code == 422
            assert r.headers["X-Request-Id"] == request_ids[-1]
            r = await client.post("/api/v1/tasks",
                                  headers={**rid(), "content-type": "application/json"},
                                  content=b'{"name": "op", "payload": {"m": "' + marker.encode())
            assert r.status_code == 400
            for task_id in ids:
                while True:
                    r = await client.get(f"/api/v1/tasks/{task_id}", params={"wait": 5},
                                         headers=rid())
                    assert r.headers["X-Request-Id"] == request_ids[-1]
                    if r.json()["task"]["status"] in FINAL:
                        break
            # An id that does not look like one is replaced, not echoed into the log.
            r = await client.get("/healthz", headers={"X-Request-Id": "no spaces allowed"})
            made_up = r.headers["X-Request-Id"]
            assert re.fullmatch(r"[0-9a-f]{16}", made_up), made_up
            r = await client.get("/healthz")
            assert re.fullmatch(r"[0-9a-f]{16}", r.headers["X-Request-Id"])
            assert r.headers["X-Request-Id"] != made_up
            with trio.fail_after(5):
                while True:
                    logged = {record.get("request_id") for record in log_records(d)}
                    if logged >= {*request_ids, made_up}:
                        break
                    await trio.sleep(POLL_S)

    records = log_records(d)
    assert records and d.log().endswith("\n")
    for record in records:
        assert record["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), record
        datetime.fromisoformat(record["time"])
        # Every line of the daemon's own names its event (its libraries' DEBUG lines
        # do not; Hypercorn's: test_every_log_line_names_its_event).
        if record["logger"].startswith("distasks") and record["logger"] != "distasks.http":
            assert isinstance(record.get("event"), str), record
    access = [r for r in records if r.get("event") == "http_request"]
    for record in access:
        assert isinstance(record["status"], int) and isinstance(record["duration_ms"], float)
        assert record["duration_ms"] >= 0 and record["route"] and record["request_id"]
    by_id = {}
    for record in access:
        by_id.setdefault(record["request_id"], []).append(record)
    for request_id in request_ids:
        assert len(by_id[request_id]) == 1, request_id
    assert [r["status"] for r in by_id[request_ids[0]]] == [201]
    assert by_id[request_ids[0]][0]["route"] == "/api/v1/tasks"
    assert [r["status"] for r in by_id[request_ids[3]]] == [422]
    assert [r["status"] for r in by_id[request_ids[4]]] == [400]
    get = by_id[request_ids[-1]][0]
    assert (get["method"], get["route"], get["status"]) == (
        "GET", "/api/v1/tasks/<uuid:task_id>", 200)
    assert get["path"] == f"/api/v1/tasks/{ids[-1]}"
    assert len(by_id[made_up]) == 1 and by_id[made_up][0]["route"] == "/healthz"
    # The handlers ran and failed (one for good), so run failures were logged: by type.
    failures = [r for r in records if r.get("event") == "run_failed"]
    assert len(failures) == 2 and all(r["message"] == "run failed: DemoFailure" for r in failures)
    assert marker not in d.log()


async def test_every_log_line_names_its_event(start_daemon, daemon_env):
    with trio.fail_after(30):
        async with start_daemon(daemon_env) as d:
            pass
    records = log_records(d)
    assert [r for r in records if "event" not in r] == []


# --- SIGHUP ---------------------------------------------------------------------------


def write_config(path: Path, *, concurrency: int, queues: list[str],
                 max_batch: int = 1000) -> None:
    """config/distasks.toml with these values, replaced atomically so that a SIGHUP never
    reads half a file."""
    text = CONFIG.read_text()
    for pattern, replacement in ((r"(?m)^concurrency = \d+", f"concurrency = {concurrency}"),
                                 (r"(?m)^queues = \[[^\]]*\]", f"queues = {json.dumps(queues)}"),
                                 (r"(?m)^max_batch = \d+", f"max_batch = {max_batch}")):
        text, n = re.subn(pattern, replacement, text)
        assert n == 1, pattern
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


async def running_now(client: httpx.AsyncClient) -> set[str]:
    """Task ids whose run is running on the daemon, per GET /api/v1/workers."""
    r = await client.get("/api/v1/workers")
    assert r.status_code == 200, r.text
    workers = [w for w in r.json()["workers"] if w["alive"]]
    assert len(workers) == 1, workers
    return {run["task_id"] for run in workers[0]["running"]}


async def statuses(client: httpx.AsyncClient, task_ids: list[str]) -> set[str]:
    return {(await client.get(f"/api/v1/tasks/{t}")).json()["task"]["status"] for t in task_ids}


async def most_running_until_final(client: httpx.AsyncClient, task_ids: list[str]) -> int:
    """Poll until every task is final; the most runs seen running at once meanwhile."""
    most = 0
    while True:
        most = max(most, len(await running_now(client)))
        if await statuses(client, task_ids) <= FINAL:
            return most
        await trio.sleep(POLL_S)


async def test_sighup_retunes_concurrency_and_queues_live_and_loses_nothing(
        start_daemon, daemon_env, tmp_path):
    # WORKER_CONCURRENCY (like every environment override) wins over the file, on a reload
    # too: the file alone must say it here.
    env = {k: v for k, v in daemon_env.items() if k != "WORKER_CONCURRENCY"}
    config = tmp_path / "distasks.toml"
    write_config(config, concurrency=1, queues=["default"])
    with trio.fail_after(50):
        async with (start_daemon(env, config=str(config)) as d,
                    httpx.AsyncClient(base_url=d.url) as client):
            # Concurrency 1: one handler at a time; the extra queue is not served yet.
            extra = await create(client, queue_name="extra",
                                 payload={"sleep_seconds": 1.5})
            first = [await create(client, payload={"sleep_seconds": 0.4})
                     for _ in range(3)]
            assert await most_running_until_final(client, first) == 1
            body = (await client.get(f"/api/v1/tasks/{extra}")).json()
            assert body["task"]["status"] == "queued" and body["latest_run"]["status"] == "queued"

            # Up to 4, and the extra queue: its waiting task starts with the new fetcher.
            write_config(config, concurrency=4, queues=["default", "extra"])
            d.terminate(signal.SIGHUP)
            grown = await wait_event(d, "reloaded", count=1)
            assert grown["concurrency"] == 4 and grown["queues"] == ["default", "extra"]
            assert set(grown["changed"]) == {"queues", "concurrency"}
            assert grown["needs_restart"] == []
            second = [await create(client, payload={"sleep_seconds": 1.5})
                      for _ in range(4)]
            write_config(config, concurrency=1, queues=["default", "extra"])
            most, running = 0, set()
            while len(running) < 4:
                await trio.sleep(POLL_S)
                running = await running_now(client)
                most = max(most, len(running))
            assert most == 4 and extra in running

            # Back to 1 while 4 run: they finish; the rest start one at a time after them.
            d.terminate(signal.SIGHUP)
            shrunk = await wait_event(d, "reloaded", count=2)
            assert shrunk["concurrency"] == 1 and shrunk["changed"] == ["concurrency"]
            third = [await create(client, payload={"sleep_seconds": 0.2})
                     for _ in range(2)]
            held = sorted(running)
            while True:
                if await statuses(client, held) <= FINAL:
                    break
                await trio.sleep(POLL_S)
            assert await most_running_until_final(client, [extra, *second, *third]) == 1

            # A key that only a restart applies is named, and nothing else changes.
            write_config(config, concurrency=1, queues=["default", "extra"], max_batch=500)
            d.terminate(signal.SIGHUP)
            restart = await wait_event(d, "reload_needs_restart")
            assert restart["keys"] == ["http.max_batch"] and restart["level"] == "WARNING"
            assert (await wait_event(d, "reloaded", count=3))["changed"] == []

            # An invalid file changes nothing, and the daemon goes on working.
            config.write_text("[worker]\nconcurrency = 0\n")
            d.terminate(signal.SIGHUP)
            refused = await wait_event(d, "reload_failed")
            assert "worker.concurrency" in refused["message"] and refused["level"] == "ERROR"
            fourth = [await create(client, payload={"sleep_seconds": 0.2})
                      for _ in range(2)]
            bodies = {t: await wait_final(client, t)
                      for t in [extra, *first, *second, *third, *fourth]}
            assert d.process.returncode is None
            assert (await client.get("/readyz")).status_code == 200

    # Nothing lost, nothing interrupted or failed: one succeeded run per task.
    for body in bodies.values():
        assert body["task"]["status"] == "completed", body
        assert [r["status"] for r in body["runs"]] == ["succeeded"], body
    runs = {t: b["runs"][0] for t, b in bodies.items()}
    assert max_overlap([runs[t] for t in first]) == 1
    assert max_overlap([runs[t] for t in [extra, *second]]) == 4
    after = [t for t in [extra, *second, *third] if t not in running]
    assert len(held) == 4 and len(after) == 3
    last_held = max(parse_time(runs[t]["finished_at"]) for t in held)
    assert all(parse_time(runs[t]["started_at"]) >= last_held for t in after)
    assert max_overlap([runs[t] for t in after]) == 1
    assert max_overlap([runs[t] for t in fourth]) == 1
    assert parse_time(runs[extra]["started_at"]) > max(
        parse_time(runs[t]["finished_at"]) for t in first)


async def test_sighup_applies_retry_max_retries_or_says_it_needs_a_restart(
        start_daemon, daemon_env, tmp_path):
    config = tmp_path / "distasks.toml"
    config.write_text(CONFIG.read_text())
    with trio.fail_after(30):
        async with (start_daemon(daemon_env, config=str(config)) as d,
                    httpx.AsyncClient(base_url=d.url) as client):
            text, n = re.subn(r"(?m)^max_retries = 3", "max_retries = 7", CONFIG.read_text())
            assert n == 1
            config.write_text(text)
            d.terminate(signal.SIGHUP)
            reloaded = await wait_event(d, "reloaded")
            task_id = await create(client, type="delayed", delay_seconds=3600)
            task = (await client.get(f"/api/v1/tasks/{task_id}")).json()["task"]
    assert task["max_retries"] == 7 or "retry.max_retries" in reloaded["needs_restart"]


async def test_sighup_applies_the_queue_order_and_weights_live(start_daemon, daemon_env,
                                                                 tmp_path):
    config = tmp_path / "distasks.toml"
    config.write_text(CONFIG.read_text())
    with trio.fail_after(30):
        async with start_daemon(daemon_env, config=str(config)) as d:
            text, n = re.subn(r'(?m)^queue_order = "weighted"', 'queue_order = "strict"',
                              CONFIG.read_text())
            text, m = re.subn(r"(?m)^queue_weights = \{\}", "queue_weights = {default = 4}",
                              text)
            assert n == m == 1
            tmp = config.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(config)
            d.terminate(signal.SIGHUP)
            reloaded = await wait_event(d, "reloaded")
    assert sorted(reloaded["changed"]) == ["queue_order", "queue_weights"]
    assert reloaded["needs_restart"] == []


async def test_workers_endpoint_shows_the_reloaded_queues_and_concurrency(
        start_daemon, daemon_env, tmp_path):
    env = {k: v for k, v in daemon_env.items() if k != "WORKER_CONCURRENCY"}
    env["DISTASKS_WORKER_LEASE_S"] = "3"  # a heartbeat every second
    config = tmp_path / "distasks.toml"
    write_config(config, concurrency=1, queues=["default"])
    with trio.fail_after(30):
        async with (start_daemon(env, config=str(config)) as d,
                    httpx.AsyncClient(base_url=d.url) as client):
            write_config(config, concurrency=3, queues=["default", "extra"])
            d.terminate(signal.SIGHUP)
            await wait_event(d, "reloaded")
            # Whether reload() or the heartbeat records it: give the heartbeat two beats.
            with trio.move_on_after(2.5):
                while True:
                    worker = (await client.get("/api/v1/workers")).json()["workers"][0]
                    if worker["concurrency"] == 3:
                        break
                    await trio.sleep(0.2)
    assert (worker["concurrency"], worker["queues"]) == (3, ["default", "extra"])


async def wait_component_gauge(client: httpx.AsyncClient, component: str) -> dict[str, float]:
    """distasks_component_up by component, once a report has included `component`."""
    with trio.fail_after(REPORT_WAIT_S):
        while True:
            up = labelled((await scrape(client))[1], "distasks_component_up", "component")
            if component in up:
                return up
            await trio.sleep(0.2)


async def test_reload_drops_the_gauges_of_a_dropped_queue(start_daemon, daemon_env, tmp_path):
    env = {k: v for k, v in daemon_env.items() if k != "WORKER_CONCURRENCY"}
    config = tmp_path / "distasks.toml"
    write_config(config, concurrency=1, queues=["default", "old"])
    with trio.fail_after(40):
        async with (start_daemon(env, config=str(config)) as d,
                    httpx.AsyncClient(base_url=d.url) as client):
            await wait_component_gauge(client, "fetch:old")
            write_config(config, concurrency=1, queues=["default", "new"])
            d.terminate(signal.SIGHUP)
            await wait_event(d, "reloaded")
            # A report after the reload: the one that first lists the new fetcher.
            up = await wait_component_gauge(client, "fetch:new")
            readyz = (await client.get("/readyz")).json()
    assert "fetch:old" not in readyz["components"]
    assert "fetch:old" not in up


# --- systemd notify -------------------------------------------------------------------


@pytest.fixture
def notify_path() -> Iterator[str]:
    """Where the daemon's NOTIFY_SOCKET is bound: a short directory, since pytest's
    tmp_path can exceed the 107-byte limit of a unix socket path."""
    with tempfile.TemporaryDirectory(prefix="sdn-") as tmp:
        yield os.path.join(tmp, "notify")


class Notifications:
    """The datagrams systemd would receive, read one at a time as they arrive."""

    def __init__(self, sock: trio.socket.SocketType):
        self._sock = sock
        #: (trio time received, datagram) of every watchdog ping seen so far
        self.pings: list[tuple[float, str]] = []

    async def next(self) -> str:
        """The next datagram that is not a watchdog ping (pings are kept in `pings`)."""
        while True:
            data = (await self._sock.recv(4096)).decode()
            if data != "WATCHDOG=1":
                return data
            self.pings.append((trio.current_time(), data))

    async def wait_pings(self, count: int) -> None:
        while len(self.pings) < count:
            data = (await self._sock.recv(4096)).decode()
            assert data == "WATCHDOG=1", data
            self.pings.append((trio.current_time(), data))


async def test_systemd_hears_ready_status_watchdog_reloading_and_stopping_in_order(
        start_daemon, daemon_env, notify_path):
    env = {k: v for k, v in daemon_env.items() if k != "WATCHDOG_PID"}
    env.update({"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "2000000"})
    with trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        await sock.bind(notify_path)
        heard = Notifications(sock)
        with trio.fail_after(40):
            async with start_daemon(env) as d:
                # /readyz may answer before READY=1, which follows once the workers claim.
                # Watchdog pings may come any time the components tick (systemd accepts
                # them before READY=1 too); `next` sets them aside.
                assert await heard.next() == "READY=1"
                status = await heard.next()
                port = env["HTTP_PORT"]
                assert status.startswith(f"STATUS=serving on 127.0.0.1:{port}, queues default")
                await heard.wait_pings(len(heard.pings) + 3)

                d.terminate(signal.SIGHUP)
                reloading = await heard.next()
                now_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
                assert re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=\d+", reloading), reloading
                sent_us = int(reloading.rsplit("=", 1)[1])
                assert 0 <= now_us - sent_us < 5_000_000
                assert await heard.next() == "READY=1"
                assert (await heard.next()).startswith("STATUS=serving")  # after the reload

                d.terminate()
                assert await heard.next() == "STOPPING=1"
                assert await d.process.wait() == 0
        # After STOPPING nothing but pings; the daemon has exited, so all is queued.
        rest = []
        with trio.move_on_after(0.2):
            while True:
                rest.append((await sock.recv(4096)).decode())
    assert set(rest) <= {"WATCHDOG=1"}, rest
    times = [at for at, _ in heard.pings]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    # Half of WATCHDOG_USEC apart (1 s), never as late as WATCHDOG_USEC itself.
    assert max(gaps) < 2.0, gaps
    assert times[-1] - times[0] >= 1.0, gaps


# --- /readyz --------------------------------------------------------------------------


async def test_readyz_names_every_component_and_reports_progress(start_daemon, daemon_env):
    with trio.fail_after(30):
        async with start_daemon(daemon_env) as d, httpx.AsyncClient(base_url=d.url) as client:
            await wait_final(client, await create(client, priority=0))
            r = await client.get("/readyz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ready"] is True
    assert (body["postgres"], body["redis"]) == ("ok", "ok")
    assert COMPONENTS <= set(body["components"]), body
    assert set(body["components"].values()) == {"ok"}, body
    progress = body["progress"]
    assert set(progress) == {"stalled", "ready_runs", "last_outcome_age_seconds"}
    assert progress["stalled"] is False and progress["ready_runs"] == 0
    age = progress["last_outcome_age_seconds"]
    assert age is None or 0 <= age < 60


async def test_metric_labels_stay_bounded_whatever_clients_send(start_daemon, daemon_env):
    """A client names any queue and any HTTP method; a series per name would grow without
    end. Queues this daemon does not serve and unknown methods count as "other"."""
    with trio.fail_after(30):
        async with start_daemon(daemon_env) as d, httpx.AsyncClient(base_url=d.url) as client:
            for i in range(5):
                r = await client.post("/api/v1/tasks", json={"name": "x", "queue_name": f"q{i}"})
                assert r.status_code == 201
            await client.request("BREW", "/api/v1/tasks")
            text = (await client.get("/metrics")).text
    created = {s.labels["queue"]: s.value for f in text_string_to_metric_families(text)
               if f.name == "distasks_tasks_created" for s in f.samples
               if s.name.endswith("_total")}
    assert created == {"other": 5.0}
    methods = {s.labels["method"] for f in text_string_to_metric_families(text)
               if f.name == "distasks_http_requests" for s in f.samples}
    assert "BREW" not in methods and "other" in methods


async def test_sighup_applies_retention_from_the_cleaners_next_pass(start_daemon, daemon_env,
                                                                    pg_dsn, tmp_path):
    import psycopg  # noqa: PLC0415

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO tasks (id, name, handler, type, queue_name, payload, max_retries,"
            " status, created_at, updated_at, finished_at) SELECT gen_random_uuid(), 'old',"
            " 'demo', 'immediate', 'default', '{}', 3, 'completed', now() - interval '10 days',"
            " now() - interval '10 days', now() - interval '10 days'"
            " FROM generate_series(1, 50)")

    def old_left() -> int:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM tasks WHERE name = 'old'").fetchone()
        return int(row[0]) if row else -1

    config = tmp_path / "distasks.toml"
    text, n = re.subn(r"(?m)^completed_days = 7\.0", "completed_days = 30.0",
                      CONFIG.read_text())
    assert n == 1
    config.write_text(re.sub(r"(?m)^(\[retention\]\n(?:.*\n)*?)interval_s = 60\.0",
                             r"\1interval_s = 1.0", text))
    with trio.fail_after(30):
        async with start_daemon(daemon_env, config=str(config)) as d:
            first = await wait_event(d, "retention_pass")
            assert first["completed"] == 0 and old_left() == 50  # 30 days: kept
            config.write_text(config.read_text().replace("completed_days = 30.0",
                                                         "completed_days = 5.0"))
            d.terminate(signal.SIGHUP)
            reloaded = await wait_event(d, "reloaded")
            while old_left() > 0:  # noqa: ASYNC110 (state in PostgreSQL)
                await trio.sleep(POLL_S)
    assert reloaded["needs_restart"] == []
