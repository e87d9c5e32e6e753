"""A `distasks serve` subprocess, driven from Trio: started, waited on until ready,
signalled, stopped. One harness for the test suite, the fault injection and the
benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

HOST = "127.0.0.1"
# How often /readyz is asked while waiting for a daemon to serve.
READY_POLL_S = 0.05
# Starts of a daemon whose port another process took between `free_port` and its bind
# (other test runs and benchmarks share the box and the kernel's port choices).
PORT_ATTEMPTS = 3
# SIGTERM to exit, by default: the daemon's grace period (10 s), its hard-stop margin
# (4 s), and some slack.
STOP_TIMEOUT_S = 20.0


def free_port(host: str = HOST) -> int:
    """A TCP port nothing listens on now (the kernel's choice)."""
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def daemon_env(*, database_url: str, redis_url: str, prefix: str,
               settings: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a daemon of its own: this process's environment without any
    DISTASKS_* variable (a setting left in a shell must not change what is measured or
    tested), the servers and key prefix given, a free loopback port, JSON logs, and
    `settings` on top."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTASKS_")}
    env.update({
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "DISTASKS_REDIS_PREFIX": prefix,
        "HTTP_PORT": str(free_port()),
        "DISTASKS_HTTP_HOST": HOST,
        "DISTASKS_LOG_FORMAT": "json",
        **(settings or {}),
    })
    return env


def _listening_inodes(port: int) -> list[str]:
    """Socket inodes of every TCP socket listening on `port` (/proc/net/tcp and tcp6)."""
    inodes = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            next(rows)  # the header
            for row in rows:
                fields = row.split()
                # local address hex "ADDR:PORT", state 0A is LISTEN, inode in column 10
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.append(fields[9])
    return inodes


class DaemonExited(Exception):
    """The daemon exited while it was expected to start or serve."""


@dataclass
class DaemonProcess:
    """One `distasks serve`, configured by `env` (HTTP_PORT is required) and `config` (an
    explicit file: without one the daemon would read /etc/distasks/distasks.toml where a
    machine has one). `start()` again after it exited restarts it on the same port. Its
    output is appended to `log_path`, stderr to `stderr_path` when given. `cwd` chooses
    the code when it is not the installed package (the benchmark of an older commit)."""

    name: str
    env: dict[str, str]
    log_path: Path
    config: Path | None = None
    cwd: Path | None = None
    stderr_path: Path | None = None
    #: a command that runs the interpreter for it (valgrind, say: bench/create_cost.py)
    launcher: tuple[str, ...] = ()
    process: trio.Process | None = None
    #: set when the harness stopped or killed it on purpose
    stopped_on_purpose: bool = False

    @property
    def url(self) -> str:
        return f"http://{self.env.get('DISTASKS_HTTP_HOST', HOST)}:{self.env['HTTP_PORT']}"

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    def is_running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 30) -> str:
        """The last lines of its output (and of its stderr, when kept apart)."""
        out = self.log().splitlines()[-lines:]
        if self.stderr_path is not None and self.stderr_path.exists():
            out += self.stderr_path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(out) or f"(no output in {self.log_path})"

    async def start(self) -> None:
        """Spawn the process; `wait_ready()` tells when it serves."""
        args = [*self.launcher, sys.executable, "-m", "distasks", "serve"]
        if self.config is not None:
            args += ["--config", str(self.config)]
        with open(self.log_path, "ab") as out:  # noqa: ASYNC230 (a local file, once)
            err = open(self.stderr_path, "ab") if self.stderr_path else None  # noqa: ASYNC230, SIM115
            try:
                self.process = await trio.lowlevel.open_process(
                    args, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=err if err is not None else subprocess.STDOUT)
            finally:
                if err is not None:
                    err.close()
        self.stopped_on_purpose = False

    async def wait_ready(self) -> None:
        """Until /readyz answers 200 from this process (not from another one that took
        the port: the box is shared); DaemonExited if the process exits first. The
        caller bounds the time."""
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
            while True:
                if not self.is_running():
                    raise DaemonExited(f"daemon {self.name} exited {self.returncode}:\n"
                                       + self.tail())
                try:
                    if ((await client.get(f"{self.url}/readyz")).status_code == 200
                            and self._listens()):
                        return
                except httpx.TransportError:
                    pass
                await trio.sleep(READY_POLL_S)

    def _listens(self) -> bool:
        """This process holds a socket listening on its port (Linux's /proc tells;
        elsewhere assumed)."""
        assert self.process is not None
        port = int(self.env["HTTP_PORT"])
        try:
            listening = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
            fds = Path(f"/proc/{self.process.pid}/fd")
            return any(os.readlink(fd) in listening for fd in fds.iterdir())
        except FileNotFoundError:
            return not Path("/proc/net/tcp").exists()  # no /proc: cannot tell
        except OSError:
            return False  # an fd closed meanwhile: ask again

    def lost_its_port(self) -> bool:
        """It exited because another process holds its port."""
        return not self.is_running() and "cannot listen on" in self.tail() and (
            "in use" in self.tail())

    def terminate(self, sig: int = signal.SIGTERM) -> None:
        """Send `sig` (SIGTERM by default) if it runs."""
        if self.is_running():
            assert self.process is not None
            self.process.send_signal(sig)

    def sigterm(self) -> None:
        """SIGTERM on purpose (a fault or the end of a run)."""
        if self.is_running():
            self.stopped_on_purpose = True
            self.terminate(signal.SIGTERM)

    def kill9(self) -> None:
        if self.is_running():
            assert self.process is not None
            self.stopped_on_purpose = True
            self.process.kill()

    async def wait_exit(self) -> int:
        """Until the process exits; its exit code. The caller bounds the time."""
        assert self.process is not None
        return await self.process.wait()

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout_s`; the exit code
        (None when it had to be killed)."""
        if self.process is None:
            return None
        if self.process.returncode is None:
            self.sigterm()
            with trio.move_on_after(timeout_s):
                return await self.process.wait()
            self.process.kill()
            with trio.move_on_after(5):
                await self.process.wait()
            return None
        return self.process.returncode


@asynccontextmanager
async def running(daemon: DaemonProcess, *, ready_timeout_s: float = 30.0,
                  stop_timeout_s: float = STOP_TIMEOUT_S) -> AsyncIterator[DaemonProcess]:
    """`daemon` started and ready for the block, stopped (SIGTERM, then SIGKILL) after.
    A daemon whose port was taken meanwhile is started again on another."""
    try:
        for attempt in range(1, PORT_ATTEMPTS + 1):
            await daemon.start()
            try:
                with trio.fail_after(ready_timeout_s):
                    await daemon.wait_ready()
                break
            except DaemonExited:
                if attempt == PORT_ATTEMPTS or not daemon.lost_its_port():
                    raise
                daemon.env["HTTP_PORT"] = str(free_port())
        yield daemon
    finally:
        with trio.CancelScope(shield=True):
            await daemon.stop(stop_timeout_s)
