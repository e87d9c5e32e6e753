"""The daemon as a subprocess, driven over HTTP like a user would."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trio

REPO = Path(__file__).resolve().parents[2]
# How long a daemon may take to answer /readyz after it was started.
START_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class DaemonProcess:
    process: trio.Process
    url: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, sig: int = signal.SIGTERM) -> None:
        self.process.send_signal(sig)


@pytest.fixture
def daemon_env(pg_dsn: str, redis_prefix: str, redis_url: str) -> dict[str, str]:
    """Environment of a daemon using this test's database and prefix, fast timings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTASKS_")}
    env.update({
        "DATABASE_URL": pg_dsn,
        "REDIS_URL": redis_url,
        "DISTASKS_REDIS_PREFIX": redis_prefix,
        "HTTP_PORT": str(free_port()),
        "DISTASKS_HTTP_HOST": "127.0.0.1",
        "DISTASKS_LOG_FORMAT": "json",
        "DISTASKS_MOVER_INTERVAL_S": "0.1",
        "WORKER_CONCURRENCY": "4",
    })
    return env


@pytest.fixture
def start_daemon(tmp_path: Path):
    """`async with start_daemon(env) as d:` runs `distasks serve` until /readyz says
    ready; on exit it is stopped with SIGTERM (or killed if it does not stop)."""
    counter = iter(range(100))

    @asynccontextmanager
    async def start(env: dict[str, str], *, config: str | None = "config/distasks.toml",
                    ) -> AsyncIterator[DaemonProcess]:
        log_path = tmp_path / f"daemon-{next(counter)}.log"
        args = [sys.executable, "-m", "distasks", "serve"]
        if config:
            args += ["--config", str(REPO / config)]
        with open(log_path, "wb") as log_file:  # noqa: ASYNC230 (a local file, once)
            process = await trio.lowlevel.open_process(
                args, env=env, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT)
        d = DaemonProcess(process, f"http://127.0.0.1:{env['HTTP_PORT']}", log_path, env)
        try:
            await wait_ready(d)
            yield d
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                with trio.move_on_after(15):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()

    return start


async def wait_ready(d: DaemonProcess) -> None:
    with trio.fail_after(START_TIMEOUT_S):
        async with httpx.AsyncClient() as client:
            while True:
                if d.process.returncode is not None:
                    raise AssertionError(f"daemon exited {d.process.returncode}:\n{d.log()}")
                try:
                    r = await client.get(f"{d.url}/readyz")
                    if r.status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await trio.sleep(0.05)


async def wait_task(client: httpx.AsyncClient, url: str, task_id: str,
                    until=lambda body: body["task"]["status"] != "queued") -> dict:
    """Poll GET /api/v1/tasks/{id} until `until(body)`; the caller bounds the time."""
    while True:
        r = await client.get(f"{url}/api/v1/tasks/{task_id}")
        assert r.status_code == 200, r.text
        body = r.json()
        if until(body):
            return body
        await trio.sleep(0.05)
