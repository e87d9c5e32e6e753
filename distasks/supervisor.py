"""Supervisor: builds every component and runs them in one nursery (DESIGN §1).

The only module that knows them all. Shutdown order is nesting order:

    everything (hard deadline: grace + HARD_STOP_MARGIN_S after the first stop request)
    └── services: intake, heartbeat,       cancelled last (the heartbeat keeps leases
        │         mover, reaper, control,  alive while handlers use their grace period)
        │         reconciler
        └── front: signal watcher
            └── work: api, worker pool     drain first: the API stops listening, the
                                           pool stops claiming and gives handlers the
                                           grace period
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import time
from datetime import UTC, datetime

import trio

import distasks
from distasks import aio, api, backoff, control, heartbeat, mover, reaper, reconciler
from distasks.api.services import Services
from distasks.broker import Broker
from distasks.config import Config
from distasks.errors import ConfigError, StoreUnavailable
from distasks.handlers import Registry, builtin_registry
from distasks.http_handler import HttpHandler
from distasks.intake import Intake
from distasks.retry import RetryPolicy
from distasks.store import Store, WorkerInfo
from distasks.worker import WorkerPool

log = logging.getLogger(__name__)

# After the grace period, how long the rest of shutdown (handing back, flushing
# outcomes, closing connections) may take before everything is cancelled.
HARD_STOP_MARGIN_S = 4.0


def load_registry(config: Config) -> Registry:
    """Built-in and configured handlers; ConfigError if they do not add up."""
    try:
        registry = builtin_registry(config.worker.handlers, http=HttpHandler(
            config.http_handler.allowed_hosts, config.http_handler.max_response_bytes))
    except (ImportError, ValueError) as e:
        raise ConfigError("worker.handlers", str(e)) from None
    if config.worker.default_handler not in registry:
        raise ConfigError("worker.default_handler",
                          f"no handler named {config.worker.default_handler!r} is registered")
    return registry


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class Daemon:
    """One distasks process: API, workers, mover, sharing one store and one broker."""

    def __init__(self, config: Config, *, registry: Registry | None = None):
        self.config = config
        self.registry = registry or load_registry(config)
        self.worker_id = new_worker_id()
        self._everything = trio.CancelScope()
        self._api_stop = trio.Event()
        self._pool: WorkerPool | None = None
        self._stop_requests = 0

    def request_stop(self) -> None:
        """Begin a graceful shutdown; a second request skips the rest of the grace period."""
        self._stop_requests += 1
        grace = self.config.worker.grace_period_s if self._stop_requests == 1 else 0.0
        log.info("stopping: grace period %gs", grace,
                 extra={"event": "stopping", "grace_s": grace})
        self._api_stop.set()
        if self._pool is not None:
            self._pool.stop(grace)
        deadline = trio.current_time() + grace + HARD_STOP_MARGIN_S
        self._everything.deadline = min(self._everything.deadline, deadline)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until stopped; `task_status.started()` once the API listens and the
        workers claim."""
        c = self.config
        log.info("distasks starting: %s", c.summary(),
                 extra={"event": "starting", "worker_id": self.worker_id})
        with self._everything:
            async with aio.open_loop():
                async with (
                    Store.open(c.database.url, min_size=c.database.pool_min,
                               max_size=c.database.pool_max) as store,
                    Broker.open(c.redis.url, prefix=c.redis.prefix,
                                max_connections=c.redis.max_connections) as broker,
                ):
                    await self._migrate(store)
                    await self._serve(store, broker, task_status)
        log.info("stopped", extra={"event": "stopped", "worker_id": self.worker_id})

    async def _migrate(self, store: Store) -> None:
        """Apply the schema, waiting for PostgreSQL if it is not up yet."""
        failures = 0
        while True:
            try:
                await store.migrate()
                return
            except StoreUnavailable as e:
                failures += 1
                log.warning("waiting for PostgreSQL: %s", e, extra={"event": "store_waiting"})
                await trio.sleep(backoff.delay_s(failures))

    async def _serve(self, store: Store, broker: Broker,
                     task_status: trio.TaskStatus[None]) -> None:
        c = self.config
        policy = RetryPolicy(c.retry.base_s, c.retry.cap_s, c.retry.jitter)
        intake = Intake(store, broker)
        self._pool = pool = WorkerPool(
            store=store, broker=broker, registry=self.registry, config=c.worker,
            retry=policy, worker_id=self.worker_id)
        waiters = control.TaskWaiters()
        app = api.create_app(Services(config=c, store=store, broker=broker, intake=intake,
                                      registry=self.registry, waiters=waiters, clock=time.time))
        info = WorkerInfo(id=self.worker_id, host=socket.gethostname(), pid=os.getpid(),
                          queues=c.worker.queues, concurrency=c.worker.concurrency,
                          version=distasks.__version__, started_at=datetime.now(UTC))
        async with trio.open_nursery() as services:
            await services.start(intake.run)
            await services.start(lambda task_status: heartbeat.run(
                store, broker, pool, info=info, lease_s=c.worker.lease_s,
                task_status=task_status))
            await services.start(lambda task_status: mover.run(
                broker, c.worker.queues, interval_s=c.mover.interval_s, batch=c.mover.batch,
                task_status=task_status))
            await services.start(lambda task_status: reaper.run(
                store, broker, c.worker.queues, interval_s=c.recovery.reaper_interval_s,
                policy=policy, task_status=task_status))
            await services.start(lambda task_status: control.run(
                broker, pool, waiters, task_status=task_status))
            await services.start(lambda task_status: reconciler.run(
                store, broker, interval_s=c.recovery.reconciler_interval_s,
                grace_s=c.recovery.dispatch_grace_s, task_status=task_status))
            async with trio.open_nursery() as front:
                await front.start(self._watch_signals)
                async with trio.open_nursery() as work:
                    await work.start(lambda task_status: api.serve(
                        app, host=c.http.host, port=c.http.port, shutdown=self._api_stop,
                        graceful_s=c.worker.grace_period_s, task_status=task_status))
                    await work.start(pool.run)
                    log.info("ready: listening on %s:%d, workers claiming",
                             c.http.host, c.http.port,
                             extra={"event": "ready", "worker_id": self.worker_id})
                    task_status.started()
                front.cancel_scope.cancel()
            services.cancel_scope.cancel()

    async def _watch_signals(self, *, task_status: trio.TaskStatus[None]) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                log.info("received %s", signal.Signals(signum).name,
                         extra={"event": "signal", "signal": signal.Signals(signum).name})
                self.request_stop()


async def migrate_only(config: Config) -> list[int]:
    """Apply the schema and return the versions applied (for `distasks migrate`)."""
    async with aio.open_loop():
        async with Store.open(config.database.url, min_size=1, max_size=1) as store:
            return await store.migrate()
