"""What the supervisor does with an exception no component handles: one ERROR record and
a non-zero exit, never a bare traceback (architecture §5.6)."""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
from pathlib import Path

import pytest

from distasks import cli
from distasks.daemon import reporter
from distasks.daemon.supervisor import _leaves
from distasks.testing.daemon import free_port

REPO = Path(__file__).resolve().parents[2]
# Longest serve may take to start and crash.
GUARD_S = 60


def test_an_unexpected_error_in_a_component_ends_serve_with_one_error_record_and_exit_1(
        pg_dsn, redis_url, redis_prefix, monkeypatch, capsys):
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in a pass")

    # The reporter's first pass runs as soon as it starts; it stands for any component.
    monkeypatch.setattr(reporter, "report_once", broken)
    for name in [n for n in os.environ if n.startswith("DISTASKS_")]:
        monkeypatch.delenv(name)
    for name, value in {"DATABASE_URL": pg_dsn, "REDIS_URL": redis_url,
                        "DISTASKS_REDIS_PREFIX": redis_prefix, "HTTP_PORT": str(free_port()),
                        "DISTASKS_HTTP_HOST": "127.0.0.1", "DISTASKS_LOG_FORMAT": "json"}.items():
        monkeypatch.setenv(name, value)
    root = logging.getLogger()
    handlers, level, threshold = root.handlers[:], root.level, gc.get_threshold()

    def too_slow(*_: object) -> None:
        raise TimeoutError(f"serve still running after {GUARD_S}s")

    # The I/O guard of a sync test: serve that does not crash would run forever.
    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(GUARD_S)
    try:
        code = cli.main(["serve", "--config", str(REPO / "config" / "distasks.toml")])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        root.handlers[:], root.level = handlers, level
        gc.unfreeze()
        gc.set_threshold(*threshold)
    out, err = capsys.readouterr()
    assert code == 1
    assert err == ""
    records = [json.loads(line) for line in out.splitlines()]  # every line one JSON record
    [crashed] = [r for r in records if r.get("event") == "crashed"]
    assert crashed["level"] == "ERROR"
    assert crashed["error_type"] == "RuntimeError"
    assert crashed["error"] == "a bug in a pass"
    assert "a bug in a pass" in crashed["exc_info"]  # the traceback, inside the record


@pytest.mark.parametrize("wrapped", [False, True])
def test_crash_leaves_are_found_inside_nested_groups(wrapped):
    error = RuntimeError("x")
    e: BaseException = ExceptionGroup("outer", [ExceptionGroup("inner", [error])]) \
        if wrapped else error
    assert _leaves(e) == [error]
