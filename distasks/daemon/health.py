"""Health: which component loops are alive, as they say themselves.

Each loop calls `beat(name)` once per pass; a loop that stops beating for longer than
its allowance is reported down (by /readyz, the metrics and the systemd watchdog).
Nothing here does I/O.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Component:
    #: longest silence before the component counts as down, seconds
    allowance_s: float
    last_beat: float | None = None


class Health:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._components: dict[str, _Component] = {}

    def expect(self, name: str, *, allowance_s: float) -> None:
        """Register a component that must beat at least every `allowance_s` seconds."""
        self._components.setdefault(name, _Component(allowance_s)).allowance_s = allowance_s

    def forget(self, name: str) -> None:
        """A component that ended on purpose (a queue no longer subscribed)."""
        self._components.pop(name, None)

    def beat(self, name: str) -> None:
        component = self._components.get(name)
        if component is not None:
            component.last_beat = self._clock()

    def status(self) -> dict[str, bool]:
        """Each component: alive (beat within its allowance) or not."""
        now = self._clock()
        return {name: c.last_beat is not None and now - c.last_beat <= c.allowance_s
                for name, c in sorted(self._components.items())}

    def all_alive(self) -> bool:
        return all(self.status().values())
