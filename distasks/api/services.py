"""What the routes need, attached to the app once, so routes stay free of globals."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from quart import current_app

from distasks.broker import Broker
from distasks.config import Config
from distasks.handlers import Registry
from distasks.intake import Intake
from distasks.store import Store


@dataclass(frozen=True, slots=True)
class Services:
    config: Config
    store: Store
    broker: Broker
    intake: Intake
    registry: Registry
    #: wall clock, Unix seconds
    clock: Callable[[], float]


def services() -> Services:
    s: Services = current_app.extensions["distasks"]
    return s
