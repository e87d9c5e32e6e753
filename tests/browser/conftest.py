"""Browser tests of the console: Playwright driving the system's Chromium against a real
`distasks serve`, one database and Redis prefix per test.

Chromium is Debian's `chromium` package at CHROMIUM, installed here when missing the way
scripts/services.sh installs PostgreSQL and Redis (apt-get); Playwright never downloads a
browser. The tests are plain (sync) functions: pytest-playwright's sync API runs its own
asyncio loop, which the trio-asyncio policy the rest of the suite installs would refuse,
so the `playwright` fixture starts it under asyncio's default policy and puts the suite's
back at once (and `playwright_loop_only_in_browser_tests` keeps its loop out of the other
tests)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Playwright, sync_playwright

from distasks.testing.daemon import daemon_env as own_daemon_env

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("DISTASKS_CHROMIUM", "/usr/bin/chromium")
# How long a daemon may take to answer /readyz, and to exit after SIGTERM.
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
# What a page action or expectation may take before the test fails (Playwright's unit: ms).
ACTION_TIMEOUT_MS = 15_000

pytestmark = pytest.mark.browser


def ensure_chromium() -> str:
    """The system Chromium's path, installed with apt-get when it is missing."""
    if not Path(CHROMIUM).exists():
        as_root = [] if os.geteuid() == 0 else ["sudo", "-n"]
        subprocess.run([*as_root, "apt-get", "update", "-qq"], check=True)
        subprocess.run([*as_root, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get",
                        "install", "-y", "-qq", "--no-install-recommends", "chromium"],
                       check=True, stdin=subprocess.DEVNULL)
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    return CHROMIUM


@contextmanager
def playwright_running(pw: Playwright) -> Iterator[None]:
    """Playwright's loop as this thread's running loop for the block, none after it.

    Playwright's sync API leaves its asyncio loop set as the thread's running loop after
    every call; left there, the Trio tests that follow in the same session would find it
    instead of trio-asyncio's. So it is set only while Playwright is used: each browser
    test, and the session's start and end of the browser."""
    asyncio._set_running_loop(pw._loop)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        asyncio._set_running_loop(None)


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    suite_policy = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
    try:
        pw = sync_playwright().start()
    finally:
        asyncio.set_event_loop_policy(suite_policy)
        asyncio._set_running_loop(None)
    yield pw
    asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
    try:
        with playwright_running(pw):
            pw.stop()
    finally:
        asyncio.set_event_loop_policy(suite_policy)


@pytest.fixture(scope="session")
def browser(playwright: Playwright, browser_type_launch_args: dict) -> Iterator[Browser]:
    """pytest-playwright's, with Playwright's loop set only while it launches and closes."""
    with playwright_running(playwright):
        launched = playwright.chromium.launch(**browser_type_launch_args)
    yield launched
    with playwright_running(playwright):
        launched.close()


@pytest.fixture(autouse=True)
def playwright_loop_only_in_browser_tests(playwright: Playwright) -> Iterator[None]:
    """Set up before `page` and torn down after it: see playwright_running."""
    with playwright_running(playwright):
        yield


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict) -> dict:
    return {**browser_type_launch_args, "executable_path": ensure_chromium(),
            "args": ["--no-sandbox"] if os.geteuid() == 0 else []}


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where each test saves its pages' screenshots (the run's artifacts)."""
    return tmp_path_factory.mktemp("console-screenshots")


@pytest.fixture
def console_env(pg_dsn: str, redis_prefix: str, redis_url: str) -> dict[str, str]:
    """A daemon's environment for this test: every request needs a key (no anonymous
    loopback), schedules looked at every 100 ms."""
    return own_daemon_env(database_url=pg_dsn, redis_url=redis_url, prefix=redis_prefix,
                          settings={"DISTASKS_MOVER_INTERVAL_S": "0.1",
                                    "DISTASKS_SCHEDULER_INTERVAL_S": "0.1",
                                    "DISTASKS_AUTH_ANONYMOUS": "none",
                                    "QUEUE_NAMES": "default,reports",
                                    "WORKER_CONCURRENCY": "2"})


@pytest.fixture
def start_daemon(tmp_path: Path) -> Callable[[dict[str, str]], object]:
    """`with start_daemon(env) as url:` runs `distasks serve` until it is ready."""

    @contextmanager
    def start(env: dict[str, str]) -> Iterator[str]:
        url = f"http://127.0.0.1:{env['HTTP_PORT']}"
        with open(tmp_path / "daemon.log", "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "distasks", "serve", "--config",
                 str(REPO / "config/distasks.toml")], env=env, cwd=REPO,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                assert process.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the daemon did not get ready"
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            yield url
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    return start


def new_key(env: dict[str, str], *scopes: str, tenant: str = "default") -> str:
    """A key made with `distasks keys create` in the test's database: its token."""
    args = [sys.executable, "-m", "distasks", "keys", "create", "--name",
            "-".join(scopes)[:60] or "none", "--tenant", tenant,
            "--config", str(REPO / "config/distasks.toml")]
    for s in scopes:
        args += ["--scope", s]
    done = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()
