"""The console's last-day charts against real PostgreSQL: each view reads the hour under
way and at most FILL_HOURS_PER_VIEW past hours it has not read yet, so the day fills in
over a few views, and once filled it gives what counting the whole day directly gives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg

from distasks.console.charts import HOUR, slot_of
from distasks.console.day import DAY_HOURS, FILL_HOURS_PER_VIEW, DayCache

from .helpers import new_task

NOW = datetime(2030, 1, 2, 12, 20, tzinfo=UTC)


def finish(dsn: str, spread: list[tuple[datetime, str]]) -> None:
    """Give the tasks, in creation order, these (finished_at, status), and their runs
    a start 1.5 s after they were ready."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM tasks ORDER BY created_at, id")]
        for task_id, (at, status) in zip(ids, spread, strict=True):
            conn.execute("UPDATE tasks SET status = %s, finished_at = %s WHERE id = %s",
                         (status, at, task_id))
            conn.execute("UPDATE task_runs SET status = %s, available_at = %s,"
                         " started_at = %s, finished_at = %s WHERE task_id = %s",
                         ("succeeded" if status == "completed" else "failed",
                          at - timedelta(seconds=2), at - timedelta(seconds=0.5), at, task_id))


async def test_the_day_fills_in_a_few_hours_a_view_and_then_matches_a_direct_count(
        store, config):
    current = slot_of(NOW, HOUR)
    # One task an hour over the last 30 hours (six of them before the window), every
    # third failed, plus three in the hour under way.
    spread = [(current - HOUR * h + timedelta(minutes=5), "failed" if h % 3 == 0 else "completed")
              for h in range(1, 31)]
    spread += [(current + timedelta(minutes=m), "completed") for m in (1, 2, 3)]
    await store.create_tasks([new_task(queue="day") for _ in spread])
    finish(config.database.url, spread)

    cache = DayCache()
    first = await cache.day(store, "default", now=NOW)
    assert first.uncounted == DAY_HOURS - 1 - FILL_HOURS_PER_VIEW
    # The newest past hours come first, and the hour under way is always read.
    assert sorted({at for at, _s, _n in first.finished}) == [
        current - HOUR * h for h in (3, 2, 1, 0)]
    views = 1
    while (day := await cache.day(store, "default", now=NOW)).uncounted:
        views += 1
    assert views == -(-(DAY_HOURS - 1) // FILL_HOURS_PER_VIEW) - 1

    in_window = [(at, s) for at, s in spread if at >= current - HOUR * (DAY_HOURS - 1)]
    assert sum(n for _at, _s, n in day.finished) == len(in_window)
    assert sum(n for _at, s, n in day.finished if s == "failed") == sum(
        1 for _at, s in in_window if s == "failed")
    assert len(day.waits) == DAY_HOURS and all(avg == 1.5 for _at, avg, _mx in day.waits)

    # An hour later the oldest hour leaves the window and only the hour just over is new.
    later = await cache.day(store, "default", now=NOW + HOUR)
    assert later.uncounted == 0
    assert min(at for at, _s, _n in later.finished) == current - HOUR * (DAY_HOURS - 2)
