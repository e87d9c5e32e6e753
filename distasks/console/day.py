"""The overview's last-day charts, kept cheap: an hour that is over does not change, so each
daemon keeps the past hours it has read, per tenant, and a page view reads only the hour
under way plus at most FILL_HOURS_PER_VIEW past hours it does not have yet (newest first).
A view stays a bounded number of queries, each over at most a few hours of the finished_at
index, however busy the day was; after a start the day fills in over the first views, and
the page says how many hours it has not counted yet."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from distasks.console.charts import HOUR, slot_of
from distasks.store import Store

# The app's extension that holds its DayCache.
DAY_CACHE = "distasks.console.day"
# Hours drawn: the hour under way and the 23 before it.
DAY_HOURS = 24
# Past hours read by one page view, at most.
FILL_HOURS_PER_VIEW = 3
# Waits are sampled from this many of the latest tasks finished in each hour.
LATENCY_SAMPLE_PER_HOUR = 200


@dataclass(slots=True)
class _Hours:
    #: hour -> [(status, count)] of the tasks finished in it
    finished: dict[datetime, list[tuple[str, int]]] = field(default_factory=dict)
    #: hour -> (mean, longest) seconds from ready to started, or None: no run sampled
    waits: dict[datetime, tuple[float, float] | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Day:
    #: (hour, status, count), as Store.finished_by_hour gives them
    finished: list[tuple[datetime, str, int]]
    #: (hour, mean, longest), as Store.start_latency_by_hour gives them
    waits: list[tuple[datetime, float, float]]
    #: past hours of the window not read yet (drawn empty until a later view reads them)
    uncounted: int


class DayCache:
    """The past hours read so far, per tenant; one per app (console.install)."""

    def __init__(self) -> None:
        self._tenants: dict[str, _Hours] = {}

    async def day(self, store: Store, tenant: str, *, now: datetime) -> Day:
        current = slot_of(now, HOUR)
        first = current - HOUR * (DAY_HOURS - 1)
        hours = self._tenants.setdefault(tenant, _Hours())
        for kept in (hours.finished, hours.waits):
            for gone in [h for h in kept if h < first]:
                del kept[gone]
        past = [first + HOUR * i for i in range(DAY_HOURS - 1)]
        missing = [h for h in reversed(past) if h not in hours.finished]
        if missing:
            fill = missing[:FILL_HOURS_PER_VIEW]
            since, until = min(fill), max(fill) + HOUR
            await self._read(store, tenant, hours, since=since, until=until)
        now_finished = await store.finished_by_hour(tenant, since=current, until=current + HOUR)
        now_waits = await store.start_latency_by_hour(tenant, since=current,
                                                      until=current + HOUR,
                                                      per_hour=LATENCY_SAMPLE_PER_HOUR)
        finished = [(h, status, n) for h in past if h in hours.finished
                    for status, n in hours.finished[h]] + now_finished
        waits = [(h, *w) for h in past if (w := hours.waits.get(h)) is not None] + now_waits
        return Day(finished=finished, waits=waits,
                   uncounted=sum(1 for h in past if h not in hours.finished))

    @staticmethod
    async def _read(store: Store, tenant: str, hours: _Hours, *, since: datetime,
                    until: datetime) -> None:
        finished = await store.finished_by_hour(tenant, since=since, until=until)
        waits = await store.start_latency_by_hour(tenant, since=since, until=until,
                                                  per_hour=LATENCY_SAMPLE_PER_HOUR)
        h = since
        while h < until:
            hours.finished[h] = [(status, n) for at, status, n in finished if at == h]
            hours.waits[h] = None
            h += HOUR
        for at, avg_s, max_s in waits:
            hours.waits[at] = (avg_s, max_s)
