"""Configuration: one TOML file, every key overridable from the environment (architecture §6).

A key `section.key` is overridden by `DISTASKS_SECTION_KEY`; the original platform's
variables (`HTTP_PORT`, `DATABASE_URL`, `REDIS_URL`, `QUEUE_NAMES`, `WORKER_CONCURRENCY`)
keep working and win over the file. Every problem raises ConfigError naming the key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from distasks.access.principals import SCOPES
from distasks.domain import tenancy
from distasks.domain.errors import ConfigError
from distasks.domain.fields import QUEUE_NAME_RE
from distasks.domain.tenancy import DEFAULT_TENANT, TENANT_RE, check_tenant

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("auto", "json", "text")
ANONYMOUS_MODES = ("none", "loopback")
#: the keys of [queues.<name>] and [tenants.<name>] that override [retention]
RETENTION_KEYS = ("retention_completed_days", "retention_cancelled_days",
                  "retention_failed_days")
#: the longest retention accepted, in days (a century)
MAX_RETENTION_DAYS = 36_500.0
#: what database.url may reach: PostgreSQL itself, or PgBouncer in transaction mode
POOLERS = ("none", "pgbouncer")


@dataclass(frozen=True, slots=True)
class HttpConfig:
    #: loopback unless said otherwise: put a proxy in front, or name the address
    host: str = "127.0.0.1"
    #: the API's TCP port
    port: int = 8080
    #: let several daemons on this host listen on the same port (SO_REUSEPORT, Linux):
    #: the kernel spreads new connections across them; every one of them must set it
    reuse_port: bool = False
    #: a second port on http.host that reaches this daemon alone (0: none), serving the
    #: same API: with reuse_port, where /metrics is scraped and /readyz probed per daemon
    instance_port: int = 0
    #: largest accepted task payload, serialized as JSON
    max_payload_bytes: int = 1024 * 1024
    #: most tasks in one POST /api/v1/tasks/batch
    max_batch: int = 1000
    #: largest request body (a batch of many payloads); larger: 413
    max_body_bytes: int = 16 * 1024 * 1024
    #: Host names this daemon answers to besides loopback and http.host (a request for
    #: any other is refused: DNS rebinding); the public name when behind a proxy
    allowed_hosts: tuple[str, ...] = ()
    #: web origins (https://console.example.com) whose browser writes are accepted;
    #: none by default, so a web page elsewhere cannot make a browser write here
    trusted_origins: tuple[str, ...] = ()
    #: most client connections served at once; more wait (in the listen backlog) until
    #: one closes, so that clients cannot take the descriptors the pools need
    max_connections: int = 512
    #: an idle kept-alive connection is closed after this long (longer than a proxy's
    #: own idle timeout, so that the proxy closes first)
    keep_alive_s: float = 75.0
    #: ... but after this long while none of its requests presented valid credentials
    #: (at most keep_alive_s): idle sockets of strangers do not hold slots for long
    unauthenticated_keep_alive_s: float = 5.0
    #: a request's headers must be complete this long after its connection opened (or
    #: after its first byte on a kept-alive connection): slow clients are dropped
    header_timeout_s: float = 5.0
    #: a request's body must be complete this long after its headers, else 408
    body_timeout_s: float = 60.0
    #: a list page stops before the item that would take its JSON past this (the rest
    #: follows by next_cursor); a larger single item goes alone
    max_response_bytes: int = 4 * 1024 * 1024
    #: lists with payloads served at once; more wait for a slot
    heavy_reads: int = 2


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    #: PostgreSQL, as a libpq URL or in `key=value` form
    url: str = "postgresql://postgres@127.0.0.1:5432/distasks"
    #: connections opened at start-up
    pool_min: int = 2
    #: most connections open at once (behind a pooler: client connections to it)
    pool_max: int = 10
    #: what database.url reaches: "none" (PostgreSQL itself) or "pgbouncer" (PgBouncer
    #: in transaction mode: no prepared statements, no `options` startup parameter, so
    #: the statement timeout must be set by the pooler or the role)
    pooler: str = "none"


@dataclass(frozen=True, slots=True)
class RedisConfig:
    #: Redis; the path is the database number (redis://host:6379/5). A Redis Cluster:
    #: any node's URL with `cluster = true`, or redis+cluster://host:port
    url: str = "redis://127.0.0.1:6379/0"
    #: `url` names a node of a Redis Cluster: use redis-py's cluster client
    cluster: bool = False
    #: every key starts with it, so daemons of different deployments never collide
    prefix: str = "distasks"
    #: size of the Redis connection pool
    max_connections: int = 64


class QueueWeights(tuple[tuple[str, int], ...]):
    """`worker.queue_weights`: (queue, weight) pairs, hashable like the rest of a config,
    written in TOML as a table."""

    #: the weight of a queue the table does not name
    DEFAULT = 1

    def weight(self, queue: str) -> int:
        return dict(self).get(queue, self.DEFAULT)

    def toml(self) -> str:
        return "{" + ", ".join(f'"{q}" = {w}' for q, w in self) + "}"


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    #: the queues this daemon works; another tenant's as "<tenant>/<queue>"
    queues: tuple[str, ...] = ("default",)
    #: executors: handlers run at once
    concurrency: int = 1
    #: the handler of tasks that name none
    default_handler: str = "demo"
    #: Python modules whose @distasks.handler functions are registered at start-up
    handlers: tuple[str, ...] = ()
    #: a run's default time limit; a task's `timeout_seconds` overrides it
    task_timeout_s: float = 300.0
    #: on SIGTERM, how long running handlers may go on before they are cancelled
    grace_period_s: float = 10.0
    #: how long a claim is valid without a heartbeat
    lease_s: float = 15.0
    #: most runs claimed in one Redis round trip
    claim_batch: int = 100
    #: claims of one queue in flight at once while it has work: while one waits on Redis
    #: and PostgreSQL, the next takes the executors that came free meanwhile (an idle queue
    #: has one claim waiting on Redis, whatever this is)
    fetchers_per_queue: int = 2
    #: a create for a queue this daemon serves, while it has an idle executor, starts the
    #: run at once in the same statement (no Redis push and claim); false: always via Redis
    start_at_create: bool = True
    #: how executors are shared when several queues have work: "strict" serves them in
    #: the order of `queues` (a later queue gets an executor only while the earlier ones
    #: have nothing waiting); "weighted" shares them by `queue_weights`
    queue_order: str = "weighted"
    #: weighted order: each queue's share of the executors while several have work, as a
    #: table `{critical = 6, default = 3, low = 1}` (1-1000; a queue not named has 1), so
    #: every queue with work gets some; env `critical=6,default=3,low=1`
    queue_weights: QueueWeights = QueueWeights()
    #: threads for synchronous handlers: started with the worker pool, at most this many
    #: sync handlers run at once (an abandoned one keeps its thread until it returns)
    sync_threads: int = 16
    #: largest handler result stored on a run (as JSON); a larger one is not kept
    max_result_bytes: int = 64 * 1024


@dataclass(frozen=True, slots=True)
class RetryConfig:
    #: used when a task does not give `max_retries`
    max_retries: int = 3
    #: delay before retry n is base_s * 2**(n-1), at most cap_s, then +/- jitter
    base_s: float = 2.0
    #: the longest delay before a retry (see base_s)
    cap_s: float = 300.0
    #: fraction of the delay added or removed at random (0 = none)
    jitter: float = 0.2


@dataclass(frozen=True, slots=True)
class MoverConfig:
    #: how often due retries and delayed tasks are made ready
    interval_s: float = 0.5
    #: most delayed items moved by one script call
    batch: int = 1000


@dataclass(frozen=True, slots=True)
class HttpHandlerConfig:
    #: hosts the built-in `http` handler may call: names, `*.wildcards`, addresses and
    #: ranges, each with `:port` or (without) ports 80 and 443 (handlers.http.AllowEntry).
    #: Empty (the default): none, so the daemon is no proxy until configured.
    allowed_hosts: tuple[str, ...] = ()
    #: most bytes of a response body kept on the run
    max_response_bytes: int = 16 * 1024


@dataclass(frozen=True, slots=True)
class RecoveryConfig:
    #: how often the reaper looks for expired leases
    reaper_interval_s: float = 1.0
    #: how often the reconciler checks that Redis still indexes what PostgreSQL holds
    reconciler_interval_s: float = 2.0
    #: a queued run not in Redis this long after its creation gets pushed again
    dispatch_grace_s: float = 5.0
    #: how long a daemon without a heartbeat stays listed by GET /api/v1/workers
    workers_listed_s: float = 3600.0


# The JWT signing algorithms distasks can be told to accept (never "none").
JWT_ALGORITHMS = ("HS256", "RS256", "EdDSA")


@dataclass(frozen=True, slots=True)
class JwtConfig:
    """[auth.jwt]: bearer tokens from an external identity provider (distasks.access.jwt_tokens)."""

    #: accept JWT bearer tokens beside API keys
    enabled: bool = False
    #: the `iss` a token must carry; required when enabled
    issuer: str = ""
    #: the `aud` a token must name (this API's identifier at the IdP); required when enabled
    audience: str = ""
    #: accepted signing algorithms, among HS256, RS256 and EdDSA
    algorithms: tuple[str, ...] = ("RS256", "EdDSA")
    #: file holding the HS256 shared secret (at least 32 bytes); needs HS256 in algorithms
    hs256_secret_file: str = ""
    #: the IdP's public keys as a JWKS document, in a file or at a URL (https, or http to
    #: loopback only); one of the two for RS256 and EdDSA
    jwks_file: str = ""
    #: the JWKS at a URL instead of a file (see jwks_file)
    jwks_url: str = ""
    #: how often the JWKS URL is fetched again (a token naming an unknown `kid` makes it
    #: sooner, at most every access.jwt_tokens.EARLY_REFRESH_S, 30 s)
    jwks_refresh_s: float = 300.0
    #: how long one JWKS fetch may take
    jwks_timeout_s: float = 5.0
    #: clock skew allowed when checking `exp` and `nbf`
    leeway_s: float = 30.0
    #: the claim naming the principal (its id is `jwt:<value>`)
    subject_claim: str = "sub"
    #: the claim naming the tenant; absent: default_tenant, or refused when that is empty
    tenant_claim: str = "tenant"
    #: the tenant of a token without the tenant claim; empty: such a token is refused
    default_tenant: str = ""
    #: the tenants a token may name; empty: any but `default`, the operator's tenant
    #: (whose keys:admin manages every tenant's keys), unless default_tenant is `default`
    tenants: tuple[str, ...] = ()
    #: the claim holding scopes: a space-separated string or a list
    scopes_claim: str = "scope"
    #: IdP scope or role names mapped to distasks scopes, as "idp-name=distasks-scope"
    #: (a name may map to several); unmapped names count as themselves. Only distasks
    #: scopes are kept
    scope_map: tuple[str, ...] = ()

    def summary(self) -> str:
        """What `check-config` and the start-up line show: no secret (the HS256 secret
        stays in its file; a JWKS URL loses any password)."""
        if not self.enabled:
            return "off"
        keys = [f"hs256_secret_file={self.hs256_secret_file}"] if self.hs256_secret_file else []
        if self.jwks_file:
            keys.append(f"jwks_file={self.jwks_file}")
        if self.jwks_url:
            keys.append(f"jwks_url={redact(self.jwks_url)}")
        return (f"on(issuer={self.issuer} audience={self.audience} "
                f"algorithms={','.join(self.algorithms)} {' '.join(keys)})")


@dataclass(frozen=True, slots=True)
class AuthConfig:
    #: who may call without a key: "none" (every request needs one) or "loopback" (a
    #: request from this machine, not through a proxy, is the anonymous principal with
    #: every scope; for development only, refused with a non-loopback http.host)
    anonymous: str = "none"
    #: proxies whose X-Forwarded-For is believed (the client address is the last hop
    #: they added); anything else that sends the header is taken at its own address.
    #: None by default: any local process could otherwise name itself anyone
    trusted_proxies: tuple[str, ...] = ()
    #: networks that may read /metrics without a key (a key needs metrics:read)
    metrics_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    jwt: JwtConfig = JwtConfig()
    #: a client address's first bad credential is audited at once, the ones in the
    #: following seconds as one row with their count (distasks.access.login_failures)
    failure_window_s: float = 60.0
    #: unknown keys an address may present in one such window; past it, its tokens that
    #: are not in the key cache are refused (429) without asking PostgreSQL. 0: no limit
    max_failures: int = 100


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    #: requests a principal (a key, or an anonymous local address) may make per minute,
    #: shared by every daemon; a key may have its own. 0: no limit
    per_minute: int = 6000
    #: requests per minute of all the principals of one tenant together. 0: no limit
    tenant_per_minute: int = 0
    #: queues a tenant may have (rows of the queues table): a pause or a create that
    #: names a new queue beyond it is refused with 409 until one is deleted
    max_queues: int = 1000
    #: schedules per tenant; a create beyond it: 409 too_many_schedules
    max_schedules: int = 1000
    #: tasks in one workflow (its on_failure task aside); a bigger graph: 422
    max_workflow_tasks: int = 10_000
    #: bytes of parents' results a workflow node's handler is given in ctx.parents
    #: (in key order; the rest are left out and marked truncated)
    max_parent_output_bytes: int = 1024 * 1024


@dataclass(frozen=True, slots=True)
class TenantConfig:
    """One tenant's quotas (`[tenants.<name>]`, architecture §8); 0 means the global
    setting or no limit. A tenant named here also gets its own metrics label."""

    #: tasks this tenant may create per minute (a batch counts each task), all daemons
    tasks_per_minute: int = 0
    #: most unfinished (queued) tasks this tenant may have; checked against a count at
    #: most a second old, so a burst may pass it by one second's creates
    max_queued: int = 0
    #: largest payload of this tenant's tasks; 0: http.max_payload_bytes
    max_payload_bytes: int = 0
    #: requests per minute of the tenant's principals together; 0: limits.tenant_per_minute
    requests_per_minute: int = 0
    #: days this tenant's completed tasks are kept (0: forever); absent: [retention]'s
    retention_completed_days: float | None = None
    #: days this tenant's cancelled tasks are kept (0: forever); absent: [retention]'s
    retention_cancelled_days: float | None = None
    #: days this tenant's failed tasks are kept (0: forever); absent: [retention]'s
    retention_failed_days: float | None = None


@dataclass(frozen=True, slots=True)
class QueueLimitsConfig:
    """One queue's limits set by the operator (`[queues.<name>]`, architecture §4):
    applied at start and on SIGHUP as a PATCH of the queue would be; a key left out
    leaves that limit as it is, 0 lifts it. A tenant may tighten them, never loosen them."""

    #: most runs of the queue leased at once across every daemon
    max_running: int | None = None
    #: most runs of one concurrency_key of the queue leased at once across every daemon
    max_running_per_key: int | None = None
    #: most runs of the queue started per second across every daemon
    max_starts_per_second: float | None = None
    #: most runs started at once after a quiet spell (with max_starts_per_second)
    burst: int | None = None
    #: days the queue's completed tasks are kept (0: forever); absent: the tenant's or
    #: [retention]'s. Not a limit: the API does not show or change it
    retention_completed_days: float | None = None
    #: days the queue's cancelled tasks are kept (0: forever); absent: as above
    retention_cancelled_days: float | None = None
    #: days the queue's failed tasks are kept (0: forever); absent: as above
    retention_failed_days: float | None = None

    def given(self) -> dict[str, float | None]:
        """The limits this table sets, as a PATCH body would (None: lift)."""
        return {f.name: (None if v == 0 else v) for f in dataclasses.fields(self)
                if f.name not in RETENTION_KEYS and (v := getattr(self, f.name)) is not None}


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    #: run the scheduler on this daemon (any number of daemons may: each slot fires once)
    enabled: bool = True
    #: how often due schedules are looked for; the finest useful cron step (6-field
    #: expressions have seconds)
    interval_s: float = 1.0
    #: most schedules fired in one transaction
    batch: int = 100
    #: catch_up "skip": how late a slot may fire and still count as on time
    misfire_grace_s: float = 60.0
    #: schedules with a metrics series of their own; the others share one
    metrics_schedules: int = 100


@dataclass(frozen=True, slots=True)
class ConfiguredSchedule:
    """One `[[schedules]]` table: a schedule the deployment owns, upserted at each start
    (architecture §9). `definition` is the same model the API validates
    (domain/schedule_definitions.CreateSchedule)."""

    tenant: str
    definition: Any


@dataclass(frozen=True, slots=True)
class OutboxSourceConfig:
    """One `[[outbox]]` table: an application database whose outbox this daemon relays
    (architecture §10). Every daemon with the table relays it; they share the rows."""

    #: the source's name, unique: part of the dedup key of each task it makes, and the
    #: metrics label; renaming a source while rows wait could create their tasks twice
    name: str = ""
    #: the application's database (`distasks outbox install` creates the schema there)
    database_url: str = ""
    #: whose tasks the rows become (architecture §8)
    tenant: str = DEFAULT_TENANT
    #: most rows taken in one pass (one source transaction, one create batch)
    batch: int = 100
    #: longest wait between passes when no notification arrives (LISTEN down, say)
    poll_interval_s: float = 5.0


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    """[retention]: what the cleaner removes from PostgreSQL, and how gently
    (distasks.daemon.cleaner; architecture, "Retention"). Days may be fractions; 0 keeps
    forever. `[queues.<name>]` and `[tenants.<name>]` may override the three task ages."""

    #: run the cleaner on this daemon; of all daemons that do, one at a time cleans
    #: (a leader row in PostgreSQL decides), so any number may have it on
    enabled: bool = True
    #: days a completed task and its runs are kept after the task finished (and a
    #: succeeded workflow with all its tasks); 0: forever
    completed_days: float = 7.0
    #: days a cancelled task (or workflow) and its runs are kept after the cancel; 0: forever
    cancelled_days: float = 7.0
    #: days a failed task (dead-lettered) or workflow and its runs are kept; it leaves
    #: the DLQ then; 0: forever
    failed_days: float = 30.0
    #: days audit rows are kept; 0: forever
    audit_days: float = 365.0
    #: days the record of each schedule slot fired (or skipped) is kept; 0: forever
    schedule_fires_days: float = 30.0
    #: how often a pass runs (on the daemon that leads)
    interval_s: float = 60.0
    #: rows removed by one transaction
    batch: int = 500
    #: most batches of one pass for each kind (tasks of each state, audit rows, schedule
    #: fires); the next pass goes on where it stopped
    max_batches: int = 200
    #: pause between two batches, so that the cleaner never holds up creates and claims
    pause_s: float = 0.05
    #: a batch that would wait longer than this for a row lock gives up (and the pass
    #: with it): it never queues behind the hot path
    lock_timeout_ms: int = 200
    #: any statement of the cleaner is cancelled after this long
    statement_timeout_ms: int = 10_000
    #: a directory: every removed row is first written there, as gzip-compressed JSON
    #: lines (one file per batch); empty: no archive
    archive_dir: str = ""
    #: days of partitions of the history tables (task_runs, audit_log, schedule_fires)
    #: made ahead of today; every daemon makes them, at start and hourly, whether or not
    #: it cleans (architecture, "Partitioned history")
    partition_days_ahead: int = 7


@dataclass(frozen=True, slots=True)
class LogConfig:
    #: DEBUG, INFO, WARNING or ERROR
    level: str = "INFO"
    #: json: one object per line; text: for a terminal; auto: text on a TTY, else json
    format: str = "auto"
    #: one line per HTTP request, with its status and duration
    access: bool = True


@dataclass(frozen=True, slots=True)
class Config:
    http: HttpConfig = HttpConfig()
    database: DatabaseConfig = DatabaseConfig()
    redis: RedisConfig = RedisConfig()
    worker: WorkerConfig = WorkerConfig()
    retry: RetryConfig = RetryConfig()
    mover: MoverConfig = MoverConfig()
    recovery: RecoveryConfig = RecoveryConfig()
    http_handler: HttpHandlerConfig = HttpHandlerConfig()
    auth: AuthConfig = AuthConfig()
    limits: LimitsConfig = LimitsConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    retention: RetentionConfig = RetentionConfig()
    log: LogConfig = LogConfig()
    #: `[[schedules]]`: not a section, a list (handled apart from the sections)
    schedules: tuple[ConfiguredSchedule, ...] = ()
    #: `[[outbox]]`: the application databases this daemon relays (a list too)
    outbox: tuple[OutboxSourceConfig, ...] = ()
    #: quotas by tenant name; tenants not named here have none
    tenants: Mapping[str, TenantConfig] = dataclasses.field(default_factory=dict)
    #: operator-set limits by (qualified) queue name: `[queues.<name>]`
    queues: Mapping[str, QueueLimitsConfig] = dataclasses.field(default_factory=dict)

    def tenant(self, name: str) -> TenantConfig:
        return self.tenants.get(name, NO_QUOTAS)

    def summary(self) -> str:
        """One line with the settings in effect (no secrets: URLs lose their passwords)."""
        return (
            f"http={self.http.host}:{self.http.port}"
            f"{' (reuse_port)' if self.http.reuse_port else ''}"
            f"{f' instance_port={self.http.instance_port}' if self.http.instance_port else ''} "
            f"database={redact(self.database.url)} redis={redact(self.redis.url)} "
            f"prefix={self.redis.prefix} queues=[{','.join(self.worker.queues)}] "
            f"concurrency={self.worker.concurrency} default_handler={self.worker.default_handler} "
            f"handlers=[{','.join(self.worker.handlers)}] grace={self.worker.grace_period_s}s "
            f"lease={self.worker.lease_s}s retry=base {self.retry.base_s}s cap {self.retry.cap_s}s "
            f"jitter {self.retry.jitter} max {self.retry.max_retries} "
            f"anonymous={self.auth.anonymous} jwt={self.auth.jwt.summary()}"
        )


NO_QUOTAS = TenantConfig()

# The original platform's variables, mapped to their keys.
LEGACY_ENV = {
    "HTTP_PORT": ("http", "port"),
    "DATABASE_URL": ("database", "url"),
    "REDIS_URL": ("redis", "url"),
    "QUEUE_NAMES": ("worker", "queues"),
    "WORKER_CONCURRENCY": ("worker", "concurrency"),
}



def load(path: str | Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Read the TOML file at `path` (none: defaults only), then apply `env` overrides."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError("--config", f"file not found: {path}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError("--config", f"{path} is not valid TOML: {e}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError("--config", f"cannot read {path}: {e}") from None
    sections: dict[str, Any] = {"tenants": _tenants(raw.pop("tenants", {})),
                                "queues": _queues(raw.pop("queues", {})),
                                "schedules": _schedules(raw.pop("schedules", [])),
                                "outbox": _outbox(raw.pop("outbox", []))}
    for name, cls in _section_classes().items():
        table = raw.pop(name, {})
        if not isinstance(table, dict):
            raise ConfigError(name, "must be a table")
        sections[name] = _build_section(name, cls, table, env)
    if raw:
        raise ConfigError(sorted(raw)[0], "unknown section or key")
    config = Config(**sections)
    _validate(config)
    return config


def _section_classes() -> dict[str, type]:
    return {f.name: type(f.default) for f in dataclasses.fields(Config)
            if f.name not in ("tenants", "schedules", "queues", "outbox")}


def _queues(table: Any) -> dict[str, QueueLimitsConfig]:
    """`[queues.<name>]` tables: a queue of the operator (`reports`) or of a tenant
    (`"acme/reports"`), each key a whole number (max_starts_per_second: any number)
    of at least 1, or 0 to lift that limit."""
    if not isinstance(table, dict):
        raise ConfigError("queues", "must be a table of [queues.<name>] tables")
    out = {}
    for name, limits in table.items():
        tenant, queue = tenancy.split(name)
        if not QUEUE_NAME_RE.fullmatch(queue):
            raise ConfigError(f"queues.{name}", "is not a queue name (1-64 of A-Z, a-z, "
                                                "0-9, '_', '.' and '-'; a tenant's as "
                                                "\"<tenant>/<queue>\")")
        try:
            check_tenant(tenant)
        except ValueError as e:
            raise ConfigError(f"queues.{name}", str(e)) from None
        if not isinstance(limits, dict):
            raise ConfigError(f"queues.{name}", "must be a table")
        kinds = {f.name: f.name == "max_starts_per_second"
                 for f in dataclasses.fields(QueueLimitsConfig)}
        for key, value in limits.items():
            if key not in kinds:
                raise ConfigError(f"queues.{name}.{key}", "unknown key")
            if key in RETENTION_KEYS:
                limits = {**limits, key: _retention_days(f"queues.{name}.{key}", value)}
                continue
            number = (int, float) if kinds[key] else (int,)
            if (isinstance(value, bool) or not isinstance(value, number) or value < 0
                    or value > 1_000_000 or (not kinds[key] and 0 < value < 1)):
                raise ConfigError(f"queues.{name}.{key}",
                                  "must be a whole number from 1 to 1000000, or 0 (no limit)"
                                  if not kinds[key] else
                                  "must be a number above 0, up to 1000000, or 0 (no limit)")
        out[name] = QueueLimitsConfig(**limits)
    return out


def _tenants(table: Any) -> dict[str, TenantConfig]:
    """`[tenants.<name>]` tables (no environment overrides: names are open-ended)."""
    if not isinstance(table, dict):
        raise ConfigError("tenants", "must be a table of [tenants.<name>] tables")
    out = {}
    for name, quotas in table.items():
        try:
            check_tenant(name)
        except ValueError as e:
            raise ConfigError(f"tenants.{name}", str(e)) from None
        if not isinstance(quotas, dict):
            raise ConfigError(f"tenants.{name}", "must be a table")
        out[name] = _build_section(f"tenants.{name}", TenantConfig, quotas, {})
        for key in ("tasks_per_minute", "max_queued", "max_payload_bytes",
                    "requests_per_minute"):  # retention_*_days: checked by _coerce
            if getattr(out[name], key) < 0:
                raise ConfigError(f"tenants.{name}.{key}", "must not be negative")
    return out


def _schedules(tables: Any) -> tuple[ConfiguredSchedule, ...]:
    """`[[schedules]]` tables, checked as the API checks a create (the cron expression
    and time zone too); the handlers are checked at start, once they are registered."""
    import pydantic  # noqa: PLC0415 (only when the file has schedules)

    from distasks.domain import cron, tenancy  # noqa: PLC0415
    from distasks.domain.fields import invalid_input  # noqa: PLC0415
    from distasks.domain.schedule_definitions import CreateSchedule  # noqa: PLC0415

    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError("schedules", "must be an array of tables ([[schedules]])")
    out, seen = [], set()
    for i, table in enumerate(tables):
        key = f"schedules[{i}]"
        table = dict(table)
        tenant = table.pop("tenant", tenancy.DEFAULT_TENANT)
        try:
            tenancy.check_tenant(tenant if isinstance(tenant, str) else "")
        except ValueError as e:
            raise ConfigError(f"{key}.tenant", str(e)) from None
        try:
            definition = CreateSchedule.model_validate(table)
        except pydantic.ValidationError as e:
            problem = invalid_input(e)
            raise ConfigError(f"{key}.{problem.field}" if problem.field else key,
                              problem.message) from None
        try:
            cron.check(definition.cron, definition.timezone, now=datetime.now(UTC))
        except cron.CronError as e:
            raise ConfigError(f"{key}.{e.field}", e.problem) from None
        if (tenant, definition.name) in seen:
            raise ConfigError(f"{key}.name", f"{definition.name!r} is named twice")
        seen.add((tenant, definition.name))
        out.append(ConfiguredSchedule(tenant, definition))
    return tuple(out)


def _outbox(tables: Any) -> tuple[OutboxSourceConfig, ...]:
    """`[[outbox]]` tables (no environment overrides: a list has no names to spell)."""
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError("outbox", "must be an array of tables ([[outbox]])")
    out: list[OutboxSourceConfig] = []
    for i, table in enumerate(tables):
        key = f"outbox[{i}]"
        source: OutboxSourceConfig = _build_section(key, OutboxSourceConfig, table, {})
        if not QUEUE_NAME_RE.fullmatch(source.name):
            raise ConfigError(f"{key}.name", "must be 1-64 characters of letters, digits, "
                              "'.', '_' and '-' (not '.' or '..' alone)")
        if any(other.name == source.name for other in out):
            raise ConfigError(f"{key}.name", f"{source.name!r} is named twice")
        if not source.database_url.strip():
            raise ConfigError(f"{key}.database_url", "is required")
        # One database has one outbox: two sources on it would give its rows two
        # dedup keys, and a row retaken after a crash could then make a second task.
        twin = next((other.name for other in out
                     if other.database_url == source.database_url), None)
        if twin is not None:
            raise ConfigError(f"{key}.database_url", f"is the database of source {twin!r} "
                              "already (one outbox per database)")
        try:
            check_tenant(source.tenant)
        except ValueError as e:
            raise ConfigError(f"{key}.tenant", str(e)) from None
        if not 1 <= source.batch <= 1000:
            raise ConfigError(f"{key}.batch", "must be between 1 and 1000")
        if not 0.01 <= source.poll_interval_s <= 3600:
            raise ConfigError(f"{key}.poll_interval_s", "must be between 0.01 and 3600")
        out.append(source)
    return tuple(out)


def _build_section(name: str, cls: type, table: dict[str, Any], env: Mapping[str, str]) -> Any:
    values: dict[str, Any] = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in table:
        if key not in fields:
            raise ConfigError(f"{name}.{key}", "unknown key")
    for key, field in fields.items():
        full = f"{name}.{key}"
        default = field.default
        value: Any = table.get(key, default)
        if dataclasses.is_dataclass(default):
            # A table inside the section ([auth.jwt]); its variables DISTASKS_AUTH_JWT_*.
            if not isinstance(value, dict | type(default)):
                raise ConfigError(full, "must be a table")
            values[key] = _build_section(full, type(default), value if isinstance(
                value, dict) else {}, env)
            continue
        env_names = [f"DISTASKS_{name.upper().replace('.', '_')}_{key.upper()}"]
        env_names += [k for k, v in LEGACY_ENV.items() if v == (name, key)]
        for env_name in env_names:
            if env_name in env:
                value = _parse_env(env_name, env[env_name], default)
        values[key] = _coerce(full, value, default)
    return cls(**values)


def _parse_env(name: str, text: str, default: Any) -> Any:
    """Turn an environment string into the type of the key's default."""
    if isinstance(default, QueueWeights):  # "critical=6,default=3"
        table: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            queue, sep, weight = part.partition("=")
            if not sep:
                raise ConfigError(name, f"must be queue=weight pairs, got {part!r}")
            try:
                table[queue.strip()] = int(weight)
            except ValueError:
                raise ConfigError(name, f"the weight of {queue.strip()!r} must be an "
                                        f"integer, got {weight!r}") from None
        return table
    if isinstance(default, tuple):
        return tuple(part.strip() for part in text.split(",") if part.strip())
    if isinstance(default, bool):
        return text.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            raise ConfigError(name, f"must be an integer, got {text!r}") from None
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(name, f"must be a number, got {text!r}") from None
    return text


def _retention_days(key: str, value: Any) -> float:
    """A number of days from 0 (forever) to MAX_RETENTION_DAYS, as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            0 <= value <= MAX_RETENTION_DAYS):
        raise ConfigError(key, f"must be a number of days from 0 (keep forever) to "
                               f"{MAX_RETENTION_DAYS:g}, got {value!r}")
    return float(value)


def _coerce(key: str, value: Any, default: Any) -> Any:
    if default is None:  # an optional override ([tenants.<name>] retention_*_days)
        return None if value is None else _retention_days(key, value)
    if isinstance(default, QueueWeights):
        if isinstance(value, QueueWeights):
            return value
        if not isinstance(value, dict):
            raise ConfigError(key, "must be a table of queue = weight")
        for queue, weight in value.items():
            if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= 1000:
                raise ConfigError(f"{key}.{queue}", f"must be an integer 1-1000, got {weight!r}")
        return QueueWeights(sorted(value.items()))
    if isinstance(default, tuple):
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(key, "must be a list of strings")
        return tuple(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(key, "must be true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"must be an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a string, got {value!r}")
    return value


def _validate(c: Config) -> None:
    def need(ok: bool, key: str, problem: str) -> None:
        if not ok:
            raise ConfigError(key, problem)

    need(0 < c.http.port < 65536, "http.port", "must be between 1 and 65535")
    need(0 <= c.http.instance_port < 65536 and c.http.instance_port != c.http.port,
         "http.instance_port", "must be 0 (none) or a port between 1 and 65535 other than"
         " http.port")
    need(c.http.max_payload_bytes > 0, "http.max_payload_bytes", "must be positive")
    need(1 <= c.http.max_batch <= 100_000, "http.max_batch", "must be between 1 and 100000")
    need(c.http.max_body_bytes >= c.http.max_payload_bytes, "http.max_body_bytes",
         "must be at least http.max_payload_bytes")
    need(1 <= c.http.max_connections <= 100_000, "http.max_connections",
         "must be between 1 and 100000")
    need(c.http.keep_alive_s > 0, "http.keep_alive_s", "must be positive")
    need(c.http.unauthenticated_keep_alive_s > 0, "http.unauthenticated_keep_alive_s",
         "must be positive")
    need(c.http.header_timeout_s > 0, "http.header_timeout_s", "must be positive")
    need(c.http.body_timeout_s > 0, "http.body_timeout_s", "must be positive")
    need(c.http.max_response_bytes >= 64 * 1024, "http.max_response_bytes",
         "must be at least 65536")
    need(c.http.heavy_reads >= 1, "http.heavy_reads", "must be at least 1")
    need(c.database.url != "", "database.url", "must not be empty")
    need(1 <= c.database.pool_min <= c.database.pool_max, "database.pool_min",
         "must be at least 1 and at most database.pool_max")
    need(c.database.pooler in POOLERS, "database.pooler",
         f"must be one of {', '.join(POOLERS)}, got {c.database.pooler!r}")
    need(c.redis.url.startswith(("redis://", "rediss://", "unix://", "redis+cluster://",
                                 "rediss+cluster://")), "redis.url",
         "must start with redis://, rediss://, unix://, redis+cluster:// or rediss+cluster://")
    if c.redis.cluster or "+cluster://" in c.redis.url:
        scheme, _, rest = c.redis.url.partition("://")
        need(scheme != "unix", "redis.url",
             "a Redis Cluster is reached over TCP: redis:// or rediss://, not unix://")
        need(rest.partition("?")[0].partition("/")[2] in ("", "0"), "redis.url",
             "a Redis Cluster has only database 0")
    need(re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", c.redis.prefix) is not None, "redis.prefix",
         "must be 1-64 of [A-Za-z0-9_.:-]")
    need(c.redis.max_connections >= 4, "redis.max_connections", "must be at least 4")
    need(len(c.worker.queues) > 0, "worker.queues", "must name at least one queue")
    for q in c.worker.queues:
        tenant, sep, name = q.rpartition("/")
        need(QUEUE_NAME_RE.fullmatch(name) is not None and (not sep or (
             TENANT_RE.fullmatch(tenant) is not None and tenant != DEFAULT_TENANT)),
             "worker.queues", f"{q!r} is not a queue (1-64 of [A-Za-z0-9_.-]) or "
             "<tenant>/<queue> (the default tenant's queues are named without a tenant)")
    need(c.worker.concurrency >= 1, "worker.concurrency", "must be at least 1")
    need(c.worker.queue_order in ("strict", "weighted"), "worker.queue_order",
         f"must be \"strict\" or \"weighted\", got {c.worker.queue_order!r}")
    need(c.worker.default_handler != "", "worker.default_handler", "must not be empty")
    need(c.worker.task_timeout_s > 0, "worker.task_timeout_s", "must be positive")
    need(c.worker.grace_period_s >= 0, "worker.grace_period_s", "must not be negative")
    need(c.worker.lease_s >= 1, "worker.lease_s", "must be at least 1 second")
    need(c.worker.claim_batch >= 1, "worker.claim_batch", "must be at least 1")
    need(c.worker.fetchers_per_queue >= 1, "worker.fetchers_per_queue", "must be at least 1")
    need(c.worker.sync_threads >= 1, "worker.sync_threads", "must be at least 1")
    need(c.worker.max_result_bytes >= 16, "worker.max_result_bytes", "must be at least 16")
    need(c.retry.max_retries >= 0, "retry.max_retries", "must not be negative")
    need(c.retry.base_s > 0, "retry.base_s", "must be positive")
    need(c.retry.cap_s >= c.retry.base_s, "retry.cap_s", "must be at least retry.base_s")
    need(0 <= c.retry.jitter < 1, "retry.jitter", "must be in [0, 1)")
    need(c.mover.interval_s > 0, "mover.interval_s", "must be positive")
    need(1 <= c.mover.batch <= 5000, "mover.batch", "must be between 1 and 5000")
    need(c.http_handler.max_response_bytes >= 0, "http_handler.max_response_bytes",
         "must not be negative")
    from distasks.handlers.http import AllowEntry  # noqa: PLC0415 (it imports the handlers)

    for entry in c.http_handler.allowed_hosts:
        try:
            AllowEntry.parse(entry)
        except ValueError as e:
            raise ConfigError("http_handler.allowed_hosts", str(e)) from None
    need(c.recovery.reaper_interval_s > 0, "recovery.reaper_interval_s", "must be positive")
    need(c.recovery.reconciler_interval_s > 0, "recovery.reconciler_interval_s",
         "must be positive")
    need(c.recovery.dispatch_grace_s >= 0, "recovery.dispatch_grace_s", "must not be negative")
    need(c.recovery.workers_listed_s > 0, "recovery.workers_listed_s", "must be positive")
    need(c.auth.anonymous in ANONYMOUS_MODES, "auth.anonymous",
         f"must be one of {', '.join(ANONYMOUS_MODES)}")
    need(c.auth.anonymous != "loopback" or _is_loopback_host(c.http.host), "auth.anonymous",
         f"\"loopback\" needs http.host on loopback (127.0.0.1, ::1 or localhost), not "
         f"{c.http.host!r}: anonymous access must not be reachable from the network")
    for key, networks in (("auth.trusted_proxies", c.auth.trusted_proxies),
                          ("auth.metrics_networks", c.auth.metrics_networks)):
        for n in networks:
            try:
                ipaddress.ip_network(n, strict=False)
            except ValueError:
                raise ConfigError(key, f"{n!r} is not an address or network") from None
    _validate_jwt(c.auth.jwt)
    need(c.auth.failure_window_s > 0, "auth.failure_window_s", "must be positive")
    need(c.auth.max_failures >= 0, "auth.max_failures", "must not be negative")
    need(c.limits.per_minute >= 0, "limits.per_minute", "must not be negative")
    need(c.limits.tenant_per_minute >= 0, "limits.tenant_per_minute", "must not be negative")
    need(c.limits.max_queues >= 1, "limits.max_queues", "must be at least 1")
    need(c.limits.max_schedules >= 1, "limits.max_schedules", "must be at least 1")
    need(c.limits.max_workflow_tasks >= 1, "limits.max_workflow_tasks", "must be at least 1")
    need(c.limits.max_parent_output_bytes >= 0, "limits.max_parent_output_bytes",
         "must not be negative")
    need(c.scheduler.interval_s > 0, "scheduler.interval_s", "must be positive")
    need(1 <= c.scheduler.batch <= 10_000, "scheduler.batch", "must be between 1 and 10000")
    need(c.scheduler.misfire_grace_s >= 0, "scheduler.misfire_grace_s", "must not be negative")
    need(c.scheduler.metrics_schedules >= 0, "scheduler.metrics_schedules",
         "must not be negative")
    r = c.retention
    for key in ("completed_days", "cancelled_days", "failed_days", "audit_days",
                "schedule_fires_days"):
        _retention_days(f"retention.{key}", getattr(r, key))
    need(r.interval_s >= 1, "retention.interval_s", "must be at least 1 second")
    need(1 <= r.batch <= 10_000, "retention.batch", "must be between 1 and 10000")
    need(r.max_batches >= 1, "retention.max_batches", "must be at least 1")
    need(0 <= r.pause_s <= 60, "retention.pause_s", "must be between 0 and 60")
    need(r.lock_timeout_ms >= 1, "retention.lock_timeout_ms", "must be at least 1")
    need(r.statement_timeout_ms >= 100, "retention.statement_timeout_ms",
         "must be at least 100")
    need(r.archive_dir == "" or Path(r.archive_dir).is_absolute(), "retention.archive_dir",
         "must be an absolute path (or empty: no archive)")
    need(2 <= r.partition_days_ahead <= 366, "retention.partition_days_ahead",
         "must be between 2 and 366")
    need(c.log.level.upper() in LOG_LEVELS, "log.level", f"must be one of {', '.join(LOG_LEVELS)}")
    need(c.log.format in LOG_FORMATS, "log.format", f"must be one of {', '.join(LOG_FORMATS)}")


def _validate_jwt(j: JwtConfig) -> None:
    """[auth.jwt]: checked only as far as it can be without reading files or the network
    (distasks.access.jwt_tokens.load_keys reads them at start-up)."""
    def need(ok: bool, key: str, problem: str) -> None:
        if not ok:
            raise ConfigError(f"auth.jwt.{key}", problem)

    for alg in j.algorithms:
        need(alg in JWT_ALGORITHMS, "algorithms",
             f"{alg!r} is not one of {', '.join(JWT_ALGORITHMS)}")
    need(j.leeway_s >= 0 and j.leeway_s <= 300, "leeway_s", "must be between 0 and 300")
    need(j.jwks_refresh_s >= 1, "jwks_refresh_s", "must be at least 1 second")
    need(j.jwks_timeout_s > 0, "jwks_timeout_s", "must be positive")
    for key in ("subject_claim", "tenant_claim", "scopes_claim"):
        need(getattr(j, key) != "", key, "must not be empty")
    if j.default_tenant:
        try:
            tenancy.check_tenant(j.default_tenant)
        except ValueError as e:
            raise ConfigError("auth.jwt.default_tenant", str(e)) from None
    for t in j.tenants:
        try:
            tenancy.check_tenant(t)
        except ValueError as e:
            raise ConfigError("auth.jwt.tenants", str(e)) from None
    for entry in j.scope_map:
        idp, eq, scope = entry.partition("=")
        need(eq == "=" and idp.strip() != "", "scope_map",
             f"{entry!r} is not \"idp-name=distasks-scope\"")
        need(scope.strip() in SCOPES, "scope_map",
             f"{entry!r} maps to {scope.strip()!r}, which is not a scope ({', '.join(SCOPES)})")
    if j.jwks_url:
        need(jwks_url_problem(j.jwks_url) is None, "jwks_url", jwks_url_problem(j.jwks_url) or "")
    need(not (j.jwks_file and j.jwks_url), "jwks_url", "give jwks_file or jwks_url, not both")
    if not j.enabled:
        return
    need(j.issuer != "", "issuer", "must be set when auth.jwt.enabled is true")
    need(j.audience != "", "audience", "must be set when auth.jwt.enabled is true")
    need(len(j.algorithms) > 0, "algorithms", "must name at least one algorithm")
    need(("HS256" in j.algorithms) == bool(j.hs256_secret_file), "hs256_secret_file",
         "must be set exactly when HS256 is in auth.jwt.algorithms")
    asymmetric = [a for a in j.algorithms if a != "HS256"]
    need(not asymmetric or bool(j.jwks_file or j.jwks_url), "jwks_file",
         f"{' and '.join(asymmetric)} need the IdP's keys: set jwks_file or jwks_url")
    need(bool(j.jwks_file or j.jwks_url) <= bool(asymmetric), "algorithms",
         "a JWKS is configured but no algorithm uses it: add RS256 or EdDSA")


def jwks_url_problem(url: str) -> str | None:
    """Why a JWKS URL is refused, or None: keys fetched over plain http could be swapped by
    anyone on the path, so only https, or http to this machine."""
    scheme, sep, rest = url.partition("://")
    host = rest.split("/", 1)[0].rpartition("@")[2]
    host = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    if not sep or not host.strip("[]"):
        return f"{redact(url)!r} is not an http(s) URL"
    if scheme == "https":
        return None
    if scheme == "http":
        return None if _is_loopback_host(host) else (
            "plain http is accepted only to a loopback host; use https")
    return f"{redact(url)!r} is not an http(s) URL"


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def redact(url: str) -> str:
    """`url` with its password hidden, whole: a URL's user info up to the last "@" before
    the query (a password may hold "@", ":" and "/"), or a libpq `password=` keyword."""
    if "://" in url:
        scheme, _, rest = url.partition("://")
        before_query, question, query = rest.partition("?")
        if "@" in before_query:
            userinfo, _, host = before_query.rpartition("@")
            user, colon, _password = userinfo.partition(":")
            url = f"{scheme}://{user}{':***' if colon else ''}@{host}{question}{query}"
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", url)
