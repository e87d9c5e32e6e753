"""Charts drawn on the server as SVG: no script, no library, nothing to load, and the
numbers are in the page for a screen reader (each bar's title)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

# The drawing's size in its own units (CSS scales it to the page's width).
WIDTH = 600
HEIGHT = 120
# Room under the bars for the axis labels.
AXIS = 16
# The slots the charts are drawn in: the last hour by minute, the last day by hour.
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)


def slot_of(at: datetime, step: timedelta) -> datetime:
    """The start of the `step` (a minute or an hour) that `at` falls in."""
    at = at.replace(second=0, microsecond=0)
    return at.replace(minute=0) if step == HOUR else at


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    width: float
    #: completed: from y_completed down to the axis; failed stacked on top of it
    y_completed: float
    h_completed: float
    y_failed: float
    h_failed: float
    title: str


@dataclass(frozen=True, slots=True)
class Chart:
    bars: list[Bar]
    width: int
    height: int
    axis_y: int
    peak: int
    completed: int
    failed: int
    labels: list[tuple[float, str]]


def finished_bars(rows: Iterable[tuple[datetime, str, int]], *, now: datetime, slots: int,
                  step: timedelta = MINUTE) -> Chart:
    """Tasks completed and failed in each of the last `slots` minutes or hours (`step`;
    rows as Store.finished_by_minute or finished_by_hour give them), as stacked bars,
    oldest on the left."""
    start = slot_of(now, step) - step * (slots - 1)
    counts: dict[datetime, dict[str, int]] = {
        start + step * i: {"completed": 0, "failed": 0} for i in range(slots)}
    for at, status, n in rows:
        tally = counts.get(at)
        if tally is not None and status in tally:
            tally[status] += n
    peak = max((c["completed"] + c["failed"] for c in counts.values()), default=0)
    plot = HEIGHT - AXIS
    scale = plot / peak if peak else 0.0
    dx = WIDTH / slots
    bars = []
    for i, (at, c) in enumerate(sorted(counts.items())):
        hc, hf = c["completed"] * scale, c["failed"] * scale
        bars.append(Bar(x=i * dx + 1, width=max(dx - 2, 1), y_completed=plot - hc,
                        h_completed=hc, y_failed=plot - hc - hf, h_failed=hf,
                        title=f"{at:%H:%M} UTC: {c['completed']} completed, "
                              f"{c['failed']} failed"))
    labels = [(i * dx, f"{start + step * i:%H:%M}") for i in range(0, slots, max(slots // 6, 1))]
    return Chart(bars=bars, width=WIDTH, height=HEIGHT, axis_y=HEIGHT - 3, peak=peak,
                 completed=sum(c["completed"] for c in counts.values()),
                 failed=sum(c["failed"] for c in counts.values()), labels=labels)


@dataclass(frozen=True, slots=True)
class LatencyBar:
    x: float
    width: float
    y: float
    height: float
    title: str


@dataclass(frozen=True, slots=True)
class LatencyChart:
    bars: list[LatencyBar]
    width: int
    height: int
    axis_y: int
    #: the longest mean of a minute, seconds (the plot's top)
    peak_s: float
    #: the longest single wait of the window, seconds
    longest_s: float
    labels: list[tuple[float, str]]


def latency_bars(rows: Iterable[tuple[datetime, float, float]], *, now: datetime, slots: int,
                 step: timedelta = MINUTE) -> LatencyChart:
    """The mean wait from ready to started in each of the last `slots` minutes or hours
    (`step`; rows as Store.start_latency_by_minute or by_hour give them), as bars, oldest
    on the left; each bar's title also gives the slot's longest wait."""
    start = slot_of(now, step) - step * (slots - 1)
    by_slot = {slot: (avg_s, max_s) for slot, avg_s, max_s in rows}
    drawn = [start + step * i for i in range(slots)]
    peak = max((by_slot[m][0] for m in drawn if m in by_slot), default=0.0)
    plot = HEIGHT - AXIS
    scale = plot / peak if peak > 0 else 0.0
    dx = WIDTH / slots
    bars = []
    for i, slot in enumerate(drawn):
        if slot not in by_slot:
            continue
        avg_s, max_s = by_slot[slot]
        h = avg_s * scale
        bars.append(LatencyBar(x=i * dx + 1, width=max(dx - 2, 1), y=plot - h, height=h,
                               title=f"{slot:%H:%M} UTC: mean {seconds(avg_s)}, "
                                     f"longest {seconds(max_s)}"))
    labels = [(i * dx, f"{start + step * i:%H:%M}") for i in range(0, slots, max(slots // 6, 1))]
    longest = max((by_slot[m][1] for m in drawn if m in by_slot), default=0.0)
    return LatencyChart(bars=bars, width=WIDTH, height=HEIGHT, axis_y=HEIGHT - 3,
                        peak_s=peak, longest_s=longest, labels=labels)


def seconds(s: float) -> str:
    """A duration as a person reads it: ms below a second."""
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.1f} s"
