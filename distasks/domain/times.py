"""Times: the three forms distasks keeps a point in time in, and the only conversions
between them.

- Unix seconds, a float (`now_s`, `lease_until_s`): what clocks return (`time.time`, the
  `clock` every component takes so that tests can inject one).
- Unix milliseconds, an int (`now_ms`, `due_ms`): Redis sorted-set scores (due times,
  lease deadlines) and Lua arguments.
- Aware datetimes in UTC: PostgreSQL's timestamptz columns and the API's RFC 3339.
"""

from __future__ import annotations

from datetime import UTC, datetime


def utc(unix_s: float) -> datetime:
    return datetime.fromtimestamp(unix_s, UTC)


def utc_of_ms(unix_ms: int) -> datetime:
    return datetime.fromtimestamp(unix_ms / 1000, UTC)


def ms(unix_s: float) -> int:
    return int(unix_s * 1000)


def ms_of(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def unix_s(at: datetime) -> float:
    return at.timestamp()
