"""What the routes need, attached to the app once, so routes stay free of globals."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import trio
from quart import current_app, g

from distasks.access.jwt_tokens import Verifier
from distasks.access.login_failures import LoginFailures
from distasks.access.principals import KeyCache
from distasks.access.quotas import QuotaExceeded, TenantQuotas
from distasks.access.rate_limits import RateLimiter
from distasks.broker import Broker
from distasks.config import Config
from distasks.daemon.creation import CreationRules
from distasks.daemon.health import Health
from distasks.daemon.intake import Intake
from distasks.daemon.metrics import Metrics
from distasks.daemon.operations import Operations
from distasks.daemon.progress import Progress
from distasks.daemon.queue_census import QueueCensus
from distasks.daemon.tunables import Tunables
from distasks.daemon.waiters import TaskWaiters
from distasks.daemon.workflows import Workflows
from distasks.domain.model import Actor
from distasks.domain.tenancy import DEFAULT_TENANT, qualify
from distasks.handlers import Registry
from distasks.store import Store


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
    #: cancel, pause, resume, queue delete, DLQ replay and delete (distasks.daemon.operations)
    operations: Operations
    #: API keys by token, cached (distasks.access.principals)
    keys: KeyCache
    #: requests per principal and tenant (distasks.access.rate_limits)
    limiter: RateLimiter
    #: tenants' quotas on creates (distasks.access.quotas)
    quotas: TenantQuotas
    metrics: Metrics = field(default_factory=Metrics)
    health: Health = field(default_factory=Health)
    progress: Progress = field(default_factory=Progress)
    #: set when shutdown begins: responses then close their connection
    stopping: trio.Event = field(default_factory=trio.Event)
    #: what a SIGHUP may change (the default max_retries of new tasks)
    tunables: Tunables | None = None
    #: JWT bearer tokens (distasks.access.jwt_tokens); None: auth.jwt is off
    jwt: Verifier | None = None
    #: the queues that exist, for the cap at create (the intake holds the same one)
    census: QueueCensus | None = None
    #: bad credentials, counted for the audit log (its run() writes them)
    login_failures: LoginFailures | None = None
    #: submit, cancel and resume workflows (distasks.daemon.workflows)
    workflows: Workflows = field(default=None)  # type: ignore[assignment]

    async def admit(self, tenant: str, count: int) -> None:
        """`count` new tasks of `tenant`, within its quotas (distasks.access.quotas)."""
        try:
            await self.quotas.admit(tenant, count)
        except QuotaExceeded:
            self.metrics.tenant_refused.labels(self.metrics.tenant_label(tenant), "quota").inc()
            raise

    def creation_rules(self, tenant: str = DEFAULT_TENANT) -> CreationRules:
        """The rules `tenant`'s new tasks obey now (a SIGHUP may change the default
        max_retries)."""
        own_limit = self.config.tenant(tenant).max_payload_bytes
        return CreationRules(
            registry=self.registry, default_handler=self.config.worker.default_handler,
            default_max_retries=(self.tunables.default_max_retries if self.tunables
                                 else self.config.retry.max_retries),
            max_payload_bytes=min(own_limit or self.config.http.max_payload_bytes,
                                  self.config.http.max_payload_bytes),
            max_workflow_tasks=self.config.limits.max_workflow_tasks)


def services() -> Services:
    s: Services = current_app.extensions["distasks"]
    return s


# A client's X-Request-Id is kept when it looks like an id; otherwise one is made up.
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def request_id_for(given: str) -> str:
    """The request's id: the client's X-Request-Id if it looks like one, else a new one."""
    return given if REQUEST_ID_RE.fullmatch(given) else secrets.token_hex(8)


def tenant() -> str:
    """The tenant of this request's principal (architecture §8)."""
    who = g.get("principal")
    return who.tenant if who is not None else DEFAULT_TENANT


def tenant_queue(name: str) -> str:
    """A queue named in this request's URL or body, as the tenant's qualified name."""
    return qualify(tenant(), name)


def actor() -> Actor:
    """Who makes this request, for the audit log: the authenticated principal (a key id,
    or anonymous@<address> where anonymous access is allowed), from which address in which
    request; never anything the client says about itself."""
    who = g.get("principal")
    return Actor(who.id if who is not None else "unknown", tenant=tenant(),
                 address=g.get("address"), request_id=g.get("request_id"))
