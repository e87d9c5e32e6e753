"""Console sessions (distasks.console.sessions), charts (distasks.console.charts) and the
same-host rule for forms (distasks.console.guard), without servers: a dictionary stands
in for Redis."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from distasks.console import charts, sessions
from distasks.console.guard import same_host


class Sessions:
    """The three broker commands sessions use, over a dictionary; `idle` records the
    idle time each call asked for."""

    def __init__(self) -> None:
        self.kept: dict[str, str] = {}
        self.idle: list[int | None] = []

    async def put_session(self, digest: str, blob: str, *, idle_ms: int) -> None:
        self.kept[digest] = blob
        self.idle.append(idle_ms)

    async def touch_session(self, digest: str, *, idle_ms: int | None) -> str | None:
        self.idle.append(idle_ms)
        return self.kept.get(digest)

    async def drop_session(self, digest: str) -> None:
        self.kept.pop(digest, None)


async def test_a_session_keeps_its_credential_encrypted_under_its_own_id() -> None:
    redis = Sessions()
    token = "dtk_" + "x" * 43
    s = await sessions.start(redis, token, now=1000.0)  # type: ignore[arg-type]
    [(digest, blob)] = redis.kept.items()
    assert token not in blob and s.session_id not in digest and s.session_id not in blob
    back = await sessions.resume(redis, s.session_id, now=1010.0)  # type: ignore[arg-type]
    assert back is not None and back.credential == token and back.started_at == 1000.0
    # Another id finds nothing; the blob under a forged digest does not decrypt.
    assert await sessions.resume(redis, sessions.new_id(), now=1010.0) is None  # type: ignore[arg-type]
    other = sessions.new_id()
    redis.kept[sessions._digest(other)] = blob
    assert await sessions.resume(redis, other, now=1010.0) is None  # type: ignore[arg-type]


async def test_a_refresh_does_not_extend_a_session_and_old_sessions_end() -> None:
    redis = Sessions()
    s = await sessions.start(redis, None, now=0.0)  # type: ignore[arg-type]
    await sessions.resume(redis, s.session_id, now=1.0, touch=False)  # type: ignore[arg-type]
    assert redis.idle == [sessions.IDLE_S * 1000, None]
    late = await sessions.resume(redis, s.session_id,  # type: ignore[arg-type]
                                 now=sessions.MAX_AGE_S + 1.0)
    assert late is None and redis.kept == {}


async def test_a_damaged_blob_is_no_session() -> None:
    redis = Sessions()
    s = await sessions.start(redis, "dtk_abc", now=0.0)  # type: ignore[arg-type]
    digest = next(iter(redis.kept))
    state = json.loads(redis.kept[digest])
    state["credential"] = state["credential"][:-4] + "AAAA"
    redis.kept[digest] = json.dumps(state)
    assert await sessions.resume(redis, s.session_id, now=1.0) is None  # type: ignore[arg-type]
    redis.kept[digest] = "not json"
    assert await sessions.resume(redis, s.session_id, now=1.0) is None  # type: ignore[arg-type]


def test_the_csrf_token_is_the_sessions_own() -> None:
    a, b = sessions.new_id(), sessions.new_id()
    assert sessions.csrf_matches(a, sessions.csrf_token(a))
    assert not sessions.csrf_matches(a, sessions.csrf_token(b))
    assert not sessions.csrf_matches(a, None) and not sessions.csrf_matches(a, "")


def test_the_chart_has_a_bar_per_minute_with_failures_stacked_on_completions() -> None:
    now = datetime(2026, 1, 1, 12, 30, 40, tzinfo=UTC)
    minute = now.replace(second=0) - timedelta(minutes=2)
    chart = charts.finished_bars([(minute, "completed", 6), (minute, "failed", 2),
                               (minute - timedelta(hours=2), "completed", 99)],
                              now=now, slots=60)
    assert len(chart.bars) == 60 and (chart.completed, chart.failed, chart.peak) == (6, 2, 8)
    bar = chart.bars[57]
    assert "12:28 UTC: 6 completed, 2 failed" == bar.title
    plot = charts.HEIGHT - charts.AXIS
    assert bar.y_completed + bar.h_completed == plot and bar.y_failed + bar.h_failed == bar.y_completed
    assert bar.h_completed + bar.h_failed == plot  # the tallest minute fills the plot
    assert all(b.h_completed == b.h_failed == 0 for b in chart.bars if b is not bar)


def test_a_form_is_from_this_host_whatever_the_scheme_and_port_a_proxy_shows() -> None:
    assert same_host("http://127.0.0.1:8080", "127.0.0.1:8080")
    # Behind TLS at nginx, which forwards Host as $host (no port).
    assert same_host("https://tasks.example.com:8443", "tasks.example.com")
    assert same_host("http://[::1]:8080", "[::1]:8080")
    assert not same_host("https://evil.example", "tasks.example.com")
    assert not same_host("null", "tasks.example.com")
    assert not same_host("https://tasks.example.com.evil.example", "tasks.example.com")


def test_the_latency_chart_scales_to_the_slowest_minutes_mean() -> None:
    now = datetime(2026, 1, 1, 12, 30, 40, tzinfo=UTC)
    minute = now.replace(second=0)
    chart = charts.latency_bars([(minute - timedelta(minutes=1), 0.25, 0.9),
                                       (minute, 2.0, 7.5)], now=now, slots=60)
    assert [b.title for b in chart.bars] == ["12:29 UTC: mean 250 ms, longest 900 ms",
                                             "12:30 UTC: mean 2.0 s, longest 7.5 s"]
    assert (chart.peak_s, chart.longest_s) == (2.0, 7.5)
    assert chart.bars[1].height == charts.HEIGHT - charts.AXIS
    assert chart.bars[0].height == chart.bars[1].height / 8
