"""What the routes need, attached to the app once, so routes stay free of globals."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import trio
from quart import current_app, g

from distasks import times
from distasks.auth import KeyCache
from distasks.broker import Broker
from distasks.config import Config
from distasks.creation import CreationRules
from distasks.handlers import Registry
from distasks.health import Health
from distasks.intake import Intake
from distasks.metrics import Metrics
from distasks.model import Actor
from distasks.progress import Progress
from distasks.ratelimit import RateLimiter
from distasks.store import Store
from distasks.tunables import Tunables
from distasks.waiters import TaskWaiters


@dataclass(frozen=True, slots=True)
class Services:
    config: Config
    store: Store
    broker: Broker
    intake: Intake
    registry: Registry
    waiters: TaskWaiters
    #: wall clock, Unix seconds
    clock: Callable[[], float]
    metrics: Metrics = field(default_factory=Metrics)
    health: Health = field(default_factory=Health)
    progress: Progress = field(default_factory=Progress)
    #: set when shutdown begins: responses then close their connection
    stopping: trio.Event = field(default_factory=trio.Event)
    #: what a SIGHUP may change (the default max_retries of new tasks)
    tunables: Tunables | None = None

    #: API keys by token, cached (distasks.auth); made from the store when not given
    keys: KeyCache | None = None
    #: requests per principal and tenant (distasks.ratelimit); made when not given
    limiter: RateLimiter | None = None

    def __post_init__(self) -> None:
        if self.keys is None:
            store, clock = self.store, self.clock
            object.__setattr__(self, "keys", KeyCache(
                lambda digest: store.use_key(digest, now=times.utc(clock())), clock))
        if self.limiter is None:
            object.__setattr__(self, "limiter", RateLimiter(self.broker, self.config.limits))

    def key_cache(self) -> KeyCache:
        assert self.keys is not None
        return self.keys

    def creation_rules(self) -> CreationRules:
        """The rules new tasks obey now (a SIGHUP may change the default max_retries)."""
        return CreationRules(
            registry=self.registry, default_handler=self.config.worker.default_handler,
            default_max_retries=(self.tunables.default_max_retries if self.tunables
                                 else self.config.retry.max_retries),
            max_payload_bytes=self.config.http.max_payload_bytes)


def services() -> Services:
    s: Services = current_app.extensions["distasks"]
    return s


# A client's X-Request-Id is kept when it looks like an id; otherwise one is made up.
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def request_id_for(given: str) -> str:
    """The request's id: the client's X-Request-Id if it looks like one, else a new one."""
    return given if REQUEST_ID_RE.fullmatch(given) else secrets.token_hex(8)


def actor() -> Actor:
    """Who makes this request, for the audit log: the authenticated principal (a key id,
    or anonymous@<address> where anonymous access is allowed), from which address in which
    request; never anything the client says about itself."""
    who = g.get("principal")
    return Actor(who.id if who is not None else "unknown",
                 tenant=who.tenant if who is not None else "default",
                 address=g.get("address"), request_id=g.get("request_id"))
