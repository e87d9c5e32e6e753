"""Logging, set up once: JSON lines for journald, or plain text on a terminal.

Every record carries a stable `event` name (pass it in `extra`) and the ids that apply;
payloads are never logged, only their size.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

# Fields of a LogRecord that are plumbing, not context worth printing in text mode.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class TextFormatter(logging.Formatter):
    """`time level event message key=value…` for a human at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        extra = {k: v for k, v in vars(record).items() if k not in _STANDARD and k != "event"}
        fields = " ".join(f"{k}={v}" for k, v in extra.items())
        line = (f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} "
                f"{getattr(record, 'event', record.name)}: {record.getMessage()}")
        if fields:
            line += f"  {fields}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class DefaultEvent(logging.Filter):
    """Records from libraries (hypercorn, redis, asyncio) get an `event` too: their
    logger's name, so every line can be filtered by event."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "event"):
            record.event = record.name
        return True


def setup(level: str = "INFO", fmt: str = "auto") -> None:
    """Route every logger to stdout in the chosen format; idempotent."""
    if fmt == "auto":
        fmt = "text" if sys.stdout.isatty() else "json"
    handler = logging.StreamHandler(sys.stdout)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(
            "{levelname}{name}{message}", style="{",
            rename_fields={"levelname": "level", "name": "logger", "timestamp": "time"},
            timestamp=True,
        ))
    else:
        handler.setFormatter(TextFormatter())
    handler.addFilter(DefaultEvent())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Hypercorn's own loggers are replaced by our access/error logging.
    for name in ("hypercorn.error", "hypercorn.access"):
        logging.getLogger(name).handlers[:] = []
    # httpx logs every request of the http handler at INFO with its whole URL, query
    # string included (which may hold a token), and httpcore at DEBUG every request
    # and response header (Authorization, a Location quoting the path): their warnings
    # only, whatever log.level says.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
