"""The systemd notify protocol, spoken directly: one datagram to `$NOTIFY_SOCKET` per message.

Why not a library: the protocol is "send `KEY=VALUE` lines as one datagram to a unix socket
whose path (or abstract name, written `@name`) systemd puts in the environment", a few
lines of code; python-systemd needs libsystemd headers to build, and sdnotify-style
packages add nothing over this. Outside systemd (no `NOTIFY_SOCKET`) every call is a
no-op returning False, so the daemon runs the same under a terminal or a test.

The supervisor sends READY=1 once the API listens and the workers claim, WATCHDOG=1 from
the reporter while the components make progress (every `watchdog_interval_s()`),
RELOADING=1 then READY=1 around a SIGHUP reload, and STOPPING=1 when shutdown begins.
Every call is synchronous and never blocks (MSG_DONTWAIT), so it is safe on the Trio loop.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


def notify(state: str) -> bool:
    """Send `state` (newline-separated `KEY=VALUE` assignments) to systemd.

    Returns:
        True if the datagram was sent; False when `NOTIFY_SOCKET` is unset (not run by
        systemd, or by a unit without Type=notify) or the send failed, which is logged as
        a warning: systemd then sees a missing READY or watchdog ping and acts on that.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        # Abstract namespace: the leading "@" stands for a NUL byte.
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        # systemd only ever hands out absolute paths or abstract names (sd_notify(3)).
        log.warning("NOTIFY_SOCKET %r is neither a path nor an abstract name", address,
                    extra={"event": "sdnotify_failed"})
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.send(state.encode(), socket.MSG_DONTWAIT)
    except OSError as e:
        log.warning("cannot notify systemd (%s): %s", state.split("\n", 1)[0], e,
                    extra={"event": "sdnotify_failed"})
        return False
    return True


def ready() -> bool:
    """READY=1: start-up is complete (systemd then runs units ordered after ours)."""
    return notify("READY=1")


def stopping() -> bool:
    """STOPPING=1: shutdown has begun (systemctl status shows "deactivating")."""
    return notify("STOPPING=1")


def reloading() -> bool:
    """RELOADING=1 with the CLOCK_MONOTONIC timestamp that systemd >= 253 requires for
    Type=notify-reload (older versions and Type=notify ignore it); send `ready()` when the
    reload is done."""
    now_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={now_us}")


def watchdog() -> bool:
    """WATCHDOG=1: the daemon is alive and progressing; systemd kills and restarts it
    (WatchdogSec=, Restart=on-failure) if no ping arrives within the period."""
    return notify("WATCHDOG=1")


def status(text: str) -> bool:
    """STATUS=<text>: one line shown by `systemctl status`; newlines become spaces."""
    return notify("STATUS=" + " ".join(text.splitlines()))


def watchdog_interval_s() -> float | None:
    """How often to call `watchdog()`: half of systemd's `WATCHDOG_USEC`, so that one late
    ping does not get the daemon killed (sd_watchdog_enabled(3); sidekiq does the same).

    Returns:
        The interval in seconds, or None when the watchdog is off: `WATCHDOG_USEC` unset
        or not a positive integer, or `WATCHDOG_PID` set to another process (the variables
        were inherited from a parent that systemd watches, not meant for us).
    """
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    if (pid := os.environ.get("WATCHDOG_PID")) is not None:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 2 / 1_000_000
