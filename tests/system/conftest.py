"""The daemon as a subprocess, driven over HTTP like a user would."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

from distasks.testing.daemon import DaemonProcess, free_port, running
from distasks.testing.daemon import daemon_env as own_daemon_env

REPO = Path(__file__).resolve().parents[2]
# How long a daemon may take to answer /readyz after it was started.
START_TIMEOUT_S = 20.0
# How long it may take to exit after SIGTERM before it is killed.
STOP_TIMEOUT_S = 15.0

__all__ = ["REPO", "DaemonProcess", "free_port", "wait_task"]


@pytest.fixture
def daemon_env(pg_dsn: str, redis_prefix: str, redis_url: str) -> dict[str, str]:
    """Environment of a daemon using this test's database and prefix, fast timings."""
    return own_daemon_env(database_url=pg_dsn, redis_url=redis_url, prefix=redis_prefix,
                          settings={"DISTASKS_MOVER_INTERVAL_S": "0.1",
                                    "WORKER_CONCURRENCY": "4"})


@pytest.fixture
def start_daemon(tmp_path: Path):
    """`async with start_daemon(env) as d:` runs `distasks serve` until /readyz says
    ready; on exit it is stopped with SIGTERM (or killed if it does not stop)."""
    counter = iter(range(100))

    @asynccontextmanager
    async def start(env: dict[str, str], *, config: str | None = "config/distasks.toml",
                    ) -> AsyncIterator[DaemonProcess]:
        n = next(counter)
        daemon = DaemonProcess(f"daemon-{n}", env, tmp_path / f"daemon-{n}.log",
                               config=REPO / config if config else None, cwd=REPO)
        async with running(daemon, ready_timeout_s=START_TIMEOUT_S,
                           stop_timeout_s=STOP_TIMEOUT_S) as d:
            yield d

    return start


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
