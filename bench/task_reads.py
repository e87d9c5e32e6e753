"""Memory and /healthz latency of one daemon while clients read one task with a large
payload (GET /api/v1/tasks/{id}) at once.

Creates one task (in a queue no worker consumes) whose payload is --payload-bytes of the
--shape chosen: `e308`, an array of 1e308 (the issue 15 case: jsonb printed each as 309
digits), `floats`, an array of 1.5, or `string`, one long string. Then --readers
concurrent clients each GET it --reads times, while /healthz is asked every
HEALTH_EVERY_S on a connection of its own and the daemon's RSS is sampled. The /healthz
latency is the event loop's stall as a client sees it. `--ref` runs the daemon of a
commit (before/after).

Usage: .venv/bin/python bench/task_reads.py [--ref GIT_REF] [--shape e308] [--readers 10]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

import httpx
import trio
from heavy_reads import HEALTH_EVERY_S, RSS_EVERY_S, idle_daemon, rss_mb
from throughput import (
    latency_summary_ms,
)

# Asks /healthz every argv[2] seconds until terminated; prints each latency in seconds.
HEALTH_PROBE = """
import http.client, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
host, port = sys.argv[1].removeprefix("http://").split(":")
while True:
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    started = time.perf_counter()
    conn.request("GET", "/healthz")
    conn.getresponse().read()
    print(time.perf_counter() - started, flush=True)
    conn.close()
    time.sleep(float(sys.argv[2]))
"""
# The queue the task goes to; the daemon works another, so it stays as created.
QUEUE = "reads"
# Longest the whole measurement may take.
RUN_TIMEOUT_S = 600.0


def payload_of(shape: str, size: int) -> Any:
    """A payload whose compact JSON is about `size` bytes."""
    if shape == "e308":
        return {"a": [1e308] * ((size - 8) // 7)}
    if shape == "floats":
        return {"a": [1.5] * ((size - 8) // 4)}
    return {"a": "x" * (size - 10)}


async def measure(url: str, pid: int, opts: argparse.Namespace) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=300) as client:
        body = json.dumps({"name": "big", "queue_name": QUEUE,
                           "payload": payload_of(opts.shape, opts.payload_bytes)},
                          separators=(",", ":"))
        r = await client.post("/api/v1/tasks", content=body,
                              headers={"content-type": "application/json"})
        r.raise_for_status()
        task_id = r.json()["task_id"]
    await trio.sleep(1)  # let the create's garbage settle
    before = rss_mb(pid)
    samples: list[float] = []
    health_s: list[float] = []
    read_s: list[float] = []
    sizes: set[int] = set()
    done = trio.Event()

    async def sample_rss() -> None:
        while not done.is_set():
            samples.append(rss_mb(pid))
            await trio.sleep(RSS_EVERY_S)

    async def ask_health() -> None:
        # From a process of its own: the readers' decoding of their responses here must
        # not count as the daemon's delay.
        probe = await trio.lowlevel.open_process(
            [sys.executable, "-c", HEALTH_PROBE, url, str(HEALTH_EVERY_S)],
            stdout=subprocess.PIPE)
        try:
            await done.wait()
        finally:
            probe.terminate()
            assert probe.stdout is not None
            out = b""
            while chunk := await probe.stdout.receive_some():
                out += chunk
            await probe.wait()
        health_s.extend(float(line) for line in out.split())

    async def reader() -> None:
        async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=300) as client:
            for _ in range(opts.reads):
                started = time.perf_counter()
                r = await client.get(f"/api/v1/tasks/{task_id}")
                r.raise_for_status()
                read_s.append(time.perf_counter() - started)
                sizes.add(len(r.content))

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample_rss)
        nursery.start_soon(ask_health)
        async with trio.open_nursery() as readers:
            for _ in range(opts.readers):
                readers.start_soon(reader)
        reads_s = time.perf_counter() - started
        done.set()
    return {"sent_bytes": len(body), "response_bytes": sorted(sizes),
            "rss_before_mb": round(before, 1), "rss_peak_mb": round(max(samples), 1),
            "rss_after_mb": round(rss_mb(pid), 1), "reads_s": round(reads_s, 2),
            "read": latency_summary_ms(read_s),
            "healthz": {**latency_summary_ms(health_s), "count": len(health_s)}}


async def main_async(opts: argparse.Namespace) -> dict[str, Any]:
    workload = (f"one task, {opts.shape} payload of {opts.payload_bytes} B; {opts.readers} "
                f"concurrent readers x {opts.reads} GETs")
    with trio.fail_after(RUN_TIMEOUT_S):
        async with idle_daemon("reads", opts, workload) as daemon:
            return await measure(daemon.base_url, daemon.process.pid, opts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ref", help="run the daemon of this commit (default: working tree)")
    p.add_argument("--shape", choices=("e308", "floats", "string"), default="e308")
    p.add_argument("--payload-bytes", type=int, default=1_000_000)
    p.add_argument("--readers", type=int, default=10)
    p.add_argument("--reads", type=int, default=3)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a daemon setting, e.g. DISTASKS_HTTP_MAX_PAYLOAD_BYTES=65536")
    p.add_argument("--json", action="store_true")
    opts = p.parse_args()
    r = trio.run(main_async, opts)
    h, g = r["healthz"], r["read"]
    print(f"sent {r['sent_bytes']} B; each response {r['response_bytes']} B")
    print(f"RSS: {r['rss_before_mb']} MiB before, {r['rss_peak_mb']} MiB peak, "
          f"{r['rss_after_mb']} MiB after")
    print(f"/healthz during the reads ({h['count']} asked): p50 {h['p50_ms']} ms, "
          f"p99 {h['p99_ms']} ms, max {h['max_ms']} ms")
    print(f"reads: all done in {r['reads_s']} s; each p50 {g['p50_ms']} ms, "
          f"max {g['max_ms']} ms")
    if opts.json:
        json.dump(r, sys.stdout)
        print()


if __name__ == "__main__":
    main()
