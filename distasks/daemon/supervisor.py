"""Supervisor: builds every component and runs them in one nursery (architecture §1).

The only module that knows them all. Shutdown order is nesting order:

    everything (hard deadline: grace + HARD_STOP_MARGIN_S after the first stop request)
    └── services: jwks, intake, login      cancelled last (the heartbeat keeps leases
        │         failures, heartbeat,     alive while handlers use their grace period)
        │         mover, reaper, control,
        │         reconciler, scheduler,
        │         partitioner, cleaner,
        │         outbox relays,
        │         reporter
        └── front: signal watcher
            └── work: api, worker pool     drain first: the API stops listening, the
                                           pool stops claiming and gives handlers the
                                           grace period
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

import distasks
from distasks import aio, api, console
from distasks.access import jwt_tokens
from distasks.access.login_failures import LoginFailures
from distasks.access.principals import KeyCache
from distasks.access.quotas import TenantQuotas
from distasks.access.rate_limits import RateLimiter
from distasks.api.services import Services
from distasks.broker import Broker
from distasks.config import Config, OutboxSourceConfig
from distasks.config import load as load_config
from distasks.daemon import (
    cleaner,
    control,
    heartbeat,
    mover,
    partitioner,
    reaper,
    reconciler,
    reporter,
    scheduler,
    schedules,
    sdnotify,
)
from distasks.daemon.creation import CreationRules
from distasks.daemon.health import Health
from distasks.daemon.intake import Intake
from distasks.daemon.metrics import Metrics
from distasks.daemon.operations import Operations
from distasks.daemon.progress import Progress
from distasks.daemon.queue_census import QueueCensus
from distasks.daemon.relay import Relay, RelaySettings
from distasks.daemon.tunables import Tunables
from distasks.daemon.waiters import TaskWaiters
from distasks.daemon.waiters import poll as waiters_poll
from distasks.daemon.worker import WorkerPool
from distasks.daemon.workflows import Workflows
from distasks.domain import backoff, times
from distasks.domain.errors import ConfigError, InvalidInput, StoreUnavailable
from distasks.domain.model import SYSTEM
from distasks.handlers import Registry, builtin_registry
from distasks.handlers.http import HttpHandler
from distasks.store import AuditEvent, Store, WorkerInfo
from distasks.store.outbox import OutboxSource

log = logging.getLogger(__name__)

# After the grace period, how long the rest of shutdown (handing back, flushing
# outcomes, closing connections) may take before everything is cancelled.
HARD_STOP_MARGIN_S = 4.0
# How often the long polls' tasks are checked in PostgreSQL, all in one query, in case a
# "done" message was lost (distasks.daemon.waiters.poll).
WAITERS_POLL_S = 1.0
# Allocations between young-generation collections (CPython's default is 700).
GC_THRESHOLD_0 = 10_000
# How long the API finishes requests in flight (and waits on idle keep-alive connections)
# once shutdown begins; long polls are cut short and clients retry elsewhere.
API_DRAIN_S = 2.0
# The [retention] keys a reload does not change (the others apply from the next pass).
RETENTION_AT_START = ("retention.enabled", "retention.interval_s",
                      "retention.partition_days_ahead")
# How long a reload waits to write its audit row before giving up on it (logged).
AUDIT_TIMEOUT_S = 5.0


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

    def __init__(self, config: Config, *, config_path: Path | None = None,
                 registry: Registry | None = None):
        self.config = config
        self.config_path = config_path
        self.registry = registry or load_registry(config)
        jwt_tokens.check_jwks_file(config.auth.jwt)
        self.jwt = jwt_tokens.from_config(config.auth.jwt)
        self.worker_id = new_worker_id()
        self.tunables = Tunables.from_config(config)
        self.metrics = Metrics(labelled_queues=lambda: self.tunables.queues,
                               labelled_tenants=config.tenants,
                               max_schedule_series=config.scheduler.metrics_schedules)
        self.metrics.identify(self.worker_id, distasks.__version__)
        self.health = Health()
        self._everything = trio.CancelScope()
        self._api_stop = trio.Event()
        self._pool: WorkerPool | None = None
        self._store: Store | None = None
        self._info: WorkerInfo | None = None
        #: the operations of the API, once serving (the config's queue limits go there)
        self._ops: Operations | None = None
        self._stop_requests = 0
        #: the file as last read (a reload's audit row names what changed since)
        self._loaded = config
        #: the cleaner's rules: a reload replaces them, the next pass follows
        self._retention = cleaner.Settings.from_config(config)

    def request_stop(self) -> None:
        """Begin a graceful shutdown; a second request skips the rest of the grace period."""
        self._stop_requests += 1
        grace = self.config.worker.grace_period_s if self._stop_requests == 1 else 0.0
        log.info("stopping: grace period %gs", grace,
                 extra={"event": "stopping", "grace_s": grace})
        sdnotify.stopping()
        self._api_stop.set()
        if self._pool is not None:
            self._pool.stop(grace)
        deadline = trio.current_time() + grace + HARD_STOP_MARGIN_S
        self._everything.deadline = min(self._everything.deadline, deadline)

    async def reload(self) -> None:
        """Re-read the config (SIGHUP) and apply what can change live: worker
        concurrency, subscribed queues and their order, retry policy, log level, retention
        (but whether the cleaner runs, how often, and the partitions made ahead). Other
        changes are logged as needing a restart; an invalid file changes nothing."""
        sdnotify.reloading()
        try:
            new = load_config(self.config_path)
        except ConfigError as e:
            log.error("reload refused, keeping the running config: %s", e,
                      extra={"event": "reload_failed"})
            await self._audit("config_reload_refused", {"key": e.key, "problem": e.problem})
            sdnotify.ready()
            return
        fresh = Tunables.from_config(new)
        names = ("queues", "concurrency", "retry", "log_level", "default_max_retries",
                 "queue_order", "queue_weights")
        changed = [name for name in names if getattr(fresh, name) != getattr(self.tunables, name)]
        for name in names:
            setattr(self.tunables, name, getattr(fresh, name))
        logging.getLogger().setLevel(fresh.log_level)
        if self._pool is not None:
            self._pool.retune()
        if self._store is not None and self._info is not None:
            # GET /api/v1/workers shows what the daemon works on now.
            self._info = dataclasses.replace(self._info, queues=fresh.queues,
                                             concurrency=fresh.concurrency)
            try:
                await self._store.register_worker(self._info)
            except StoreUnavailable:
                pass  # shown at the next start; the heartbeat goes on regardless
        await self._configure_queue_limits(new, wait=False)
        self._retention = cleaner.Settings.from_config(new)
        live = {"worker.queues", "worker.concurrency", "worker.queue_order",
                "worker.queue_weights", "log.level"}
        restart = [key for key in _differences(self.config, new)
                   if key not in live and not key.startswith(("retry.", "queues."))
                   and not (key.startswith("retention.") and key not in RETENTION_AT_START)]
        log.info("reloaded: %s", ", ".join(changed) or "nothing changed",
                 extra={"event": "reloaded", "changed": changed,
                        "needs_restart": restart, "queues": list(fresh.queues),
                        "concurrency": fresh.concurrency})
        if restart:
            log.warning("these settings change only after a restart: %s", ", ".join(restart),
                        extra={"event": "reload_needs_restart", "keys": restart})
        # Keys only, never values: a changed database.url may carry a password.
        edited = _differences(self._loaded, new)
        self._loaded = new
        await self._audit("config_reload", {
            "changed": edited, "applied": [k for k in edited if k not in restart],
            "needs_restart": restart})
        sdnotify.ready()
        sdnotify.status(self._status_line())

    async def _audit(self, action: str, detail: dict[str, Any]) -> None:
        """An audit row by the system; a reload does not wait for PostgreSQL to return."""
        if self._store is None:
            return
        try:
            with trio.fail_after(AUDIT_TIMEOUT_S):
                await self._store.record_events([AuditEvent(
                    at=datetime.now(UTC), actor=SYSTEM, action=action, detail=detail)])
        except (StoreUnavailable, trio.TooSlowError) as e:
            log.warning("%s not audited: %s", action, e or "no answer",
                        extra={"event": "audit_failed", "action": action})

    def _status_line(self) -> str:
        c, t = self.config, self.tunables
        return (f"serving on {c.http.host}:{c.http.port}, queues {','.join(t.queues)}, "
                f"concurrency {t.concurrency}")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until stopped; `task_status.started()` once the API listens and the
        workers claim.

        Raises ConfigError for a configuration found wrong only now (a config schedule),
        and Crashed for any other exception that ended the nursery: every component
        handles the outages of PostgreSQL and Redis itself (architecture §5.6), so that
        is a bug, logged here as one ERROR record (event `crashed`, the traceback inside
        it), not left to print as a bare traceback. Raises CannotListen, before anything
        is written, when the API's address is taken."""
        c = self.config
        # Before anything is written: a port in use is one line (CannotListen), not a
        # traceback after migrations and a worker row.
        sockets = api.connections.bind(c.http.host, c.http.port,
                                       reuse_port=c.http.reuse_port,
                                       instance_port=c.http.instance_port)
        try:
            await self._run(sockets, task_status)
        except Exception as e:
            leaves = _leaves(e)
            if all(isinstance(leaf, ConfigError) for leaf in leaves):
                raise leaves[0] from None
            first = next(leaf for leaf in leaves if not isinstance(leaf, ConfigError))
            log.error("stopped by an unexpected error: %s: %s", type(first).__name__, first,
                      exc_info=e, extra={"event": "crashed", "worker_id": self.worker_id,
                                         "error_type": type(first).__name__,
                                         "error": str(first)})
            raise Crashed(f"{type(first).__name__}: {first}") from None
        finally:
            for sock in sockets:
                sock.close()

    async def _run(self, sockets: list[socket.socket],
                   task_status: trio.TaskStatus[None]) -> None:
        c = self.config
        log.info("distasks starting: %s", c.summary(),
                 extra={"event": "starting", "worker_id": self.worker_id})
        if c.auth.anonymous == "loopback":
            log.warning("anonymous access from loopback is on (auth.anonymous = \"loopback\"):"
                        " any local process may call every operation; for development only",
                        extra={"event": "anonymous_access"})
        with self._everything:
            async with aio.open_loop():
                async with (
                    Store.open(c.database.url, min_size=c.database.pool_min,
                               max_size=c.database.pool_max,
                               pooler=c.database.pooler) as store,
                    Broker.open(c.redis.url, prefix=c.redis.prefix,
                                max_connections=c.redis.max_connections,
                                cluster=c.redis.cluster) as broker,
                ):
                    await self._migrate(store)
                    await self._serve(store, broker, sockets, task_status)
        log.info("stopped", extra={"event": "stopped", "worker_id": self.worker_id})

    async def _migrate(self, store: Store) -> None:
        """Apply the schema, waiting for PostgreSQL if it is not up yet."""
        failures = 0
        while True:
            try:
                await store.migrate()
                # Today's partitions before anything is written (a new day's too).
                await partitioner.ensure(store, now_s=time.time(),
                                         days_ahead=self.config.retention.partition_days_ahead)
                break
            except StoreUnavailable as e:
                failures += 1
                log.warning("waiting for PostgreSQL: %s", e, extra={"event": "store_waiting"})
                await trio.sleep(backoff.delay_s(failures))
        if self.config.database.pooler != "none":
            # Behind a pooler the daemon cannot set the timeout itself (no `options`
            # startup parameter): the pooler's connect_query or the role must.
            try:
                timeout = await store.statement_timeout()
            except StoreUnavailable:
                timeout = ""  # not worth waiting for: the warning is advice
            if timeout in ("0", "0ms"):
                log.warning("statement_timeout is off behind the pooler: set it on the role "
                            "(ALTER ROLE ... SET statement_timeout = '30s') or in the pooler's "
                            "connect_query", extra={"event": "no_statement_timeout"})

    async def _serve(self, store: Store, broker: Broker, sockets: list[socket.socket],
                     task_status: trio.TaskStatus[None]) -> None:
        c, t, m, h = self.config, self.tunables, self.metrics, self.health
        self._pool = pool = WorkerPool(
            store=store, broker=broker, registry=self.registry, config=c.worker, tunables=t,
            worker_id=self.worker_id, metrics=m, health=h,
            max_parent_output_bytes=c.limits.max_parent_output_bytes)
        census = QueueCensus(store.queue_names, max_queues=c.limits.max_queues)
        login_failures = LoginFailures(window_s=c.auth.failure_window_s)
        intake = Intake(store, broker, m, pool=pool, census=census)
        waiters = TaskWaiters()
        progress = Progress()
        clock = time.time
        quotas = TenantQuotas(broker, store, c, clock)
        services_ = Services(
            config=c, store=store, broker=broker, intake=intake, registry=self.registry,
            waiters=waiters, clock=clock,
            operations=Operations(store, broker, m, census=census),
            keys=KeyCache(lambda digest: store.use_key(digest, now=times.utc(clock())), clock),
            limiter=RateLimiter(broker, c), quotas=quotas, metrics=m, health=h,
            progress=progress, stopping=self._api_stop, tunables=t, jwt=self.jwt,
            census=census, login_failures=login_failures,
            workflows=Workflows(store, broker, intake, census))
        app = api.create_app(services_)
        console.install(app)
        await self._configure_schedules(store, services_)
        self._ops = services_.operations
        await self._configure_queue_limits(self.config)
        self._store = store
        self._info = info = WorkerInfo(
            id=self.worker_id, host=socket.gethostname(), pid=os.getpid(), queues=t.queues,
            concurrency=t.concurrency, version=distasks.__version__, started_at=datetime.now(UTC))
        async with trio.open_nursery() as services:
            if self.jwt is not None and (c.auth.jwt.jwks_url or c.auth.jwt.jwks_file):
                verifier = self.jwt
                await services.start(lambda task_status: jwt_tokens.run(
                    verifier, interval_s=c.auth.jwt.jwks_refresh_s, task_status=task_status))
            # One loop: more would let a create skip the batch ahead, but split batches
            # (on 2 cores two loops cost more CPU than they saved: bench, phase c).
            await services.start(intake.run)
            await services.start(lambda task_status: login_failures.run(
                store, task_status=task_status))
            await services.start(lambda task_status: heartbeat.run(
                store, broker, pool, info=info, lease_s=c.worker.lease_s, health=h,
                task_status=task_status))
            await services.start(lambda task_status: mover.run(
                broker, t, interval_s=c.mover.interval_s, batch=c.mover.batch, health=h,
                task_status=task_status))
            await services.start(lambda task_status: reaper.run(
                store, broker, t, interval_s=c.recovery.reaper_interval_s, metrics=m,
                health=h, task_status=task_status))
            await services.start(lambda task_status: control.run(
                broker, pool, waiters, health=h, task_status=task_status))
            await services.start(lambda task_status: waiters_poll(
                store, waiters, interval_s=WAITERS_POLL_S, health=h, task_status=task_status))
            await services.start(lambda task_status: reconciler.run(
                store, broker, interval_s=c.recovery.reconciler_interval_s,
                grace_s=c.recovery.dispatch_grace_s, health=h, task_status=task_status))
            if c.scheduler.enabled:
                await services.start(lambda task_status: scheduler.run(
                    store, broker, services_.creation_rules,
                    interval_s=c.scheduler.interval_s, settings=scheduler.Settings(
                        batch=c.scheduler.batch, misfire_grace_s=c.scheduler.misfire_grace_s),
                    health=h, metrics=m, quotas=quotas, task_status=task_status))
            await services.start(lambda task_status: partitioner.run(
                store, days_ahead=c.retention.partition_days_ahead, health=h,
                task_status=task_status))
            if c.retention.enabled:
                await services.start(lambda task_status: cleaner.run(
                    store, broker, lambda: self._retention,
                    interval_s=c.retention.interval_s, worker_id=self.worker_id, health=h,
                    metrics=m, task_status=task_status))
            for source in c.outbox:
                await services.start(self._relay, source, intake, services_.workflows,
                                     quotas, services_.creation_rules)
            await services.start(lambda task_status: reporter.run(
                store, broker, pool, t, metrics=m, health=h, progress=progress,
                task_status=task_status))
            async with trio.open_nursery() as front:
                await front.start(self._watch_signals)
                async with trio.open_nursery() as work:
                    await work.start(lambda task_status: api.serve(
                        app, sockets=sockets, shutdown=self._api_stop,
                        graceful_s=min(c.worker.grace_period_s, API_DRAIN_S),
                        limits=api.connections.Limits(
                            max_connections=c.http.max_connections,
                            keep_alive_s=c.http.keep_alive_s,
                            unauthenticated_keep_alive_s=c.http.unauthenticated_keep_alive_s,
                            header_timeout_s=c.http.header_timeout_s,
                            body_timeout_s=c.http.body_timeout_s),
                        task_status=task_status))
                    await work.start(pool.run)
                    log.info("ready: listening on %s:%d, workers claiming",
                             c.http.host, c.http.port,
                             extra={"event": "ready", "worker_id": self.worker_id})
                    # Everything built so far lives as long as the process: keep the
                    # collector off it, and collect young objects less often (fewer
                    # pauses on the hot path; measured in bench/throughput.py).
                    gc.freeze()
                    gc.set_threshold(GC_THRESHOLD_0, 20, 20)
                    sdnotify.ready()
                    sdnotify.status(self._status_line())
                    task_status.started()
                front.cancel_scope.cancel()
            services.cancel_scope.cancel()

    async def _relay(self, source: OutboxSourceConfig, intake: Intake, workflows: Workflows,
                     quotas: TenantQuotas, rules: Callable[[str], CreationRules], *,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Relay the `[[outbox]]` source until cancelled (architecture §10)."""
        outbox = OutboxSource(source.database_url)
        try:
            await Relay(outbox, RelaySettings(
                name=source.name, tenant=source.tenant, batch=source.batch,
                poll_interval_s=source.poll_interval_s), intake=intake, workflows=workflows,
                quotas=quotas,
                rules=rules, metrics=self.metrics, health=self.health,
            ).run(task_status=task_status)
        finally:
            await outbox.close()

    async def _configure_schedules(self, store: Store, s: Services) -> None:
        """Upsert the config file's schedules (architecture §9); a template this daemon
        cannot fire (an unknown handler) stops the start, naming it."""
        now = datetime.now(UTC)
        wanted = []
        for i, configured in enumerate(self.config.schedules):
            sched = schedules.from_request(configured.definition, tenant=configured.tenant,
                                           owner="config", actor=scheduler.CONFIG_ACTOR,
                                           now=now)
            try:
                schedules.check_definition(sched, s.creation_rules(), now=now)
            except InvalidInput as e:
                raise ConfigError(f"schedules[{i}].{e.field}", e.message) from None
            wanted.append(sched)
        failures = 0
        while True:
            try:
                await scheduler.upsert_configured(store, wanted, now_s=time.time())
                return
            except StoreUnavailable as e:
                failures += 1
                log.warning("waiting for PostgreSQL to store the config's schedules: %s", e,
                            extra={"event": "store_waiting"})
                await trio.sleep(backoff.delay_s(failures))

    async def _configure_queue_limits(self, config: Config, *, wait: bool = True) -> None:
        """Apply the config's `[queues.<name>]` limits (at start, waiting for PostgreSQL;
        on SIGHUP, once: a failure is logged and the next reload or restart applies them)."""
        if self._ops is None:
            return
        wanted = {q: limits.given() for q, limits in config.queues.items()}
        failures = 0
        while True:
            try:
                changed = await self._ops.apply_configured_limits(
                    wanted, actor=scheduler.CONFIG_ACTOR, now=datetime.now(UTC))
                if changed:
                    log.info("config queue limits: %d queues changed", changed,
                             extra={"event": "queue_limits_configured", "count": changed})
                return
            except StoreUnavailable as e:
                if not wait:
                    log.warning("config queue limits not applied: %s", e,
                                extra={"event": "queue_limits_not_applied"})
                    return
                failures += 1
                log.warning("waiting for PostgreSQL to apply the config's queue limits: %s", e,
                            extra={"event": "store_waiting"})
                await trio.sleep(backoff.delay_s(failures))

    async def _watch_signals(self, *, task_status: trio.TaskStatus[None]) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                log.info("received %s", name, extra={"event": "signal", "signal": name})
                if signum == signal.SIGHUP:
                    await self.reload()
                else:
                    self.request_stop()


class Crashed(Exception):
    """The daemon stopped on an exception no component handles; already logged (event
    `crashed`), so the command line only sets the exit status."""


def _leaves(e: BaseException) -> list[BaseException]:
    """The exceptions inside `e`, nested exception groups (one per nursery) flattened."""
    if isinstance(e, BaseExceptionGroup):
        return [leaf for inner in e.exceptions for leaf in _leaves(inner)]
    return [e]


def _differences(old: Config, new: Config) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    keys = []
    for section in dataclasses.fields(old):
        a, b = getattr(old, section.name), getattr(new, section.name)
        if section.name in ("schedules", "outbox"):  # a list, not a section
            if a != b:
                keys.append(section.name)
        elif section.name in ("tenants", "queues"):  # [tenants.<name>] tables
            keys += [f"{section.name}.{name}" for name in sorted(set(a) | set(b))
                     if a.get(name) != b.get(name)]
        else:
            keys += [f"{section.name}.{f.name}" for f in dataclasses.fields(a)
                     if getattr(a, f.name) != getattr(b, f.name)]
    return keys


async def migrate_only(config: Config) -> list[int]:
    """Apply the schema and return the versions applied (for `distasks migrate`).
    Raises StoreUnavailable itself when PostgreSQL does not answer, not inside the
    exception group the bridge's loop wraps it in, so the command says so in one line."""
    try:
        async with aio.open_loop():
            async with Store.open(config.database.url, min_size=1, max_size=1,
                                  pooler=config.database.pooler) as store:
                return await store.migrate()
    except BaseExceptionGroup as e:
        leaves = _leaves(e)
        if all(isinstance(leaf, StoreUnavailable) for leaf in leaves):
            raise leaves[0] from None
        raise
