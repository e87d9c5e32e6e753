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


def per_minute(rows: Iterable[tuple[datetime, str, int]], *, now: datetime,
               minutes: int) -> Chart:
    """Tasks completed and failed in each of the last `minutes` minutes (rows as
    Store.finished_by_minute gives them), as stacked bars, oldest on the left."""
    end = now.replace(second=0, microsecond=0)
    start = end - timedelta(minutes=minutes - 1)
    counts: dict[datetime, dict[str, int]] = {
        start + timedelta(minutes=i): {"completed": 0, "failed": 0} for i in range(minutes)}
    for minute, status, n in rows:
        slot = counts.get(minute)
        if slot is not None and status in slot:
            slot[status] += n
    peak = max((c["completed"] + c["failed"] for c in counts.values()), default=0)
    plot = HEIGHT - AXIS
    scale = plot / peak if peak else 0.0
    step = WIDTH / minutes
    bars = []
    for i, (minute, c) in enumerate(sorted(counts.items())):
        hc, hf = c["completed"] * scale, c["failed"] * scale
        bars.append(Bar(x=i * step + 1, width=max(step - 2, 1), y_completed=plot - hc,
                        h_completed=hc, y_failed=plot - hc - hf, h_failed=hf,
                        title=f"{minute:%H:%M} UTC: {c['completed']} completed, "
                              f"{c['failed']} failed"))
    labels = [(i * step, f"{start + timedelta(minutes=i):%H:%M}")
              for i in range(0, minutes, max(minutes // 6, 1))]
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


def latency_per_minute(rows: Iterable[tuple[datetime, float, float]], *, now: datetime,
                       minutes: int) -> LatencyChart:
    """The mean wait from ready to started in each of the last `minutes` minutes (rows
    as Store.start_latency_by_minute gives them), as bars, oldest on the left; each bar's
    title also gives the minute's longest wait."""
    end = now.replace(second=0, microsecond=0)
    start = end - timedelta(minutes=minutes - 1)
    by_minute = {minute: (avg_s, max_s) for minute, avg_s, max_s in rows}
    slots = [start + timedelta(minutes=i) for i in range(minutes)]
    peak = max((by_minute[m][0] for m in slots if m in by_minute), default=0.0)
    plot = HEIGHT - AXIS
    scale = plot / peak if peak > 0 else 0.0
    step = WIDTH / minutes
    bars = []
    for i, minute in enumerate(slots):
        if minute not in by_minute:
            continue
        avg_s, max_s = by_minute[minute]
        h = avg_s * scale
        bars.append(LatencyBar(x=i * step + 1, width=max(step - 2, 1), y=plot - h, height=h,
                               title=f"{minute:%H:%M} UTC: mean {seconds(avg_s)}, "
                                     f"longest {seconds(max_s)}"))
    labels = [(i * step, f"{start + timedelta(minutes=i):%H:%M}")
              for i in range(0, minutes, max(minutes // 6, 1))]
    longest = max((by_minute[m][1] for m in slots if m in by_minute), default=0.0)
    return LatencyChart(bars=bars, width=WIDTH, height=HEIGHT, axis_y=HEIGHT - 3,
                        peak_s=peak, longest_s=longest, labels=labels)


def seconds(s: float) -> str:
    """A duration as a person reads it: ms below a second."""
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.1f} s"
