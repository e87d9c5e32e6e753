"""Instructions the daemon executes per single create, counted by valgrind (callgrind),
beside the same count for bare Hypercorn answering a trivial ASGI app: the floor of any
route served by Hypercorn on Trio.

CPU time per create moves by a factor of two on a shared 2-core box (a busy sibling
thread, caches); an instruction count does not, so two commits compare from one run each.
The daemon runs under `valgrind --tool=callgrind` (about fifty times slower), one
raw http.client connection sends `--creates` sequential creates into a queue the daemon
does not serve (as producer.py's raw phase does), and only the instructions between
`callgrind_control --zero` and `--dump` around that loop count; its idle loops in that
window are included (a second or so of heartbeats and blocking claims: a few thousand
instructions per create at the default).

Needs valgrind (Debian: `apt-get install valgrind`). Database and Redis as throughput.py.

Usage: .venv/bin/python bench/create_cost.py [--creates 400] [--no-bare] [--json]
"""

from __future__ import annotations

import argparse
import glob
import http.client
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
from producer import raw_loop
from throughput import DEFAULT_ADMIN_DSN, DEFAULT_REDIS_URL, REPO_ROOT, provisioned

from distasks.testing.daemon import DaemonProcess, free_port, running
from distasks.testing.daemon import daemon_env as own_daemon_env

# Creates before the counted window: connections open, statements prepared, code warm.
WARMUP = 50
# Starting under valgrind takes minutes: imports run fifty times slower.
READY_TIMEOUT_S = 900.0
STOP_TIMEOUT_S = 120.0

# The floor: Hypercorn on Trio, an ASGI app that reads the body and answers 201 with a
# fixed JSON body of a create's size. No distasks code.
BARE_APP = '''
import sys, trio, hypercorn.config, hypercorn.trio
BODY = b'{"id":"00000000-0000-0000-0000-000000000000","status":"queued","created":true}'
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            m = await receive()
            if m["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 201, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]})
    await send({"type": "http.response.body", "body": BODY})
config = hypercorn.config.Config()
config.bind = [f"127.0.0.1:{sys.argv[1]}"]
config.accesslog = None
trio.run(hypercorn.trio.serve, app, config)
'''


def callgrind(out: Path) -> list[str]:
    """The valgrind command line in front of an interpreter's."""
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p",
            "--dump-instr=no"]


def counted(pid: int, out: Path) -> int:
    """Instructions of the last dump of `pid`."""
    dumps = sorted(glob.glob(f"{out}.{pid}.*"), key=os.path.getmtime)
    for line in Path(dumps[-1]).read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {dumps[-1]}")


def control(flag: str, pid: int) -> None:
    subprocess.run(["callgrind_control", flag, str(pid)], check=True, capture_output=True)


def window(pid: int, out: Path, loop: Any) -> int:
    """Instructions of `pid` while `loop()` runs (zeroed before, dumped after)."""
    control("--zero", pid)
    loop()
    control("--dump", pid)
    time.sleep(1)  # the dump is written by the process itself
    return counted(pid, out)


async def daemon_cost(work: Path, creates: int) -> int:
    out = work / "daemon"
    with provisioned(DEFAULT_ADMIN_DSN, os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)) as res:
        env = own_daemon_env(database_url=res.dsn,
                             redis_url=os.environ.get("REDIS_URL", DEFAULT_REDIS_URL),
                             prefix=res.name,
                             settings={"DISTASKS_LOG_LEVEL": "WARNING",
                                       "DISTASKS_LOG_ACCESS": "false",
                                       "DISTASKS_AUTH_ANONYMOUS": "loopback",
                                       "DISTASKS_LIMITS_PER_MINUTE": "0"})
        daemon = DaemonProcess("create-cost", env, work / "daemon.log",
                               config=REPO_ROOT / "config/distasks.toml", cwd=REPO_ROOT,
                               launcher=tuple(callgrind(out)))
        async with running(daemon, ready_timeout_s=READY_TIMEOUT_S,
                           stop_timeout_s=STOP_TIMEOUT_S) as d:
            assert d.process is not None
            await trio.to_thread.run_sync(raw_loop, d.url, WARMUP)
            return await trio.to_thread.run_sync(
                window, d.process.pid, out, lambda: raw_loop(d.url, creates))


def bare_cost(work: Path, requests: int) -> int:
    out = work / "bare"
    script = work / "bare_app.py"
    script.write_text(BARE_APP)
    with tempfile.TemporaryFile() as log:
        port = free_port()
        server = subprocess.Popen([*callgrind(out), sys.executable, str(script), str(port)],
                                  stdout=log, stderr=log)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + READY_TIMEOUT_S
            while True:
                try:
                    raw_loop(url, WARMUP)
                    break
                except (OSError, http.client.HTTPException):
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise
                    time.sleep(0.5)
            return window(server.pid, out, lambda: raw_loop(url, requests))
        finally:
            server.terminate()
            server.wait(STOP_TIMEOUT_S)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--creates", type=int, default=400)
    parser.add_argument("--no-bare", action="store_true", help="skip the Hypercorn floor")
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()
    commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    print(f"config: creates={opts.creates}, warmup={WARMUP}, tree={REPO_ROOT} ({commit}), "
          f"python={platform.python_version()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="create-cost-") as tmp:
        work = Path(tmp)
        result: dict[str, Any] = {"creates": opts.creates, "commit": commit}
        result["daemon_instructions_per_create"] = round(
            trio.run(daemon_cost, work, opts.creates) / opts.creates)
        print(f"distasks create: {result['daemon_instructions_per_create']:,} "
              "instructions per create", flush=True)
        if not opts.no_bare:
            result["bare_instructions_per_request"] = round(
                bare_cost(work, opts.creates) / opts.creates)
            print(f"bare Hypercorn:  {result['bare_instructions_per_request']:,} "
                  "instructions per request", flush=True)
    if opts.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
