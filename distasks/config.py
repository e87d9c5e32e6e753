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
from pathlib import Path
from typing import Any

from distasks.errors import ConfigError

# 1-64 of [A-Za-z0-9_.-], except "." and "..", which cannot stand in a URL path.
QUEUE_NAME_PATTERN = r"^(?!\.{1,2}$)[A-Za-z0-9_.-]{1,64}$"
QUEUE_NAME_RE = re.compile(QUEUE_NAME_PATTERN)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("auto", "json", "text")
ANONYMOUS_MODES = ("none", "loopback")


@dataclass(frozen=True, slots=True)
class HttpConfig:
    #: loopback unless said otherwise: put a proxy in front, or name the address
    host: str = "127.0.0.1"
    port: int = 8080
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
    url: str = "postgresql://postgres@127.0.0.1:5432/distasks"
    pool_min: int = 2
    pool_max: int = 10


@dataclass(frozen=True, slots=True)
class RedisConfig:
    url: str = "redis://127.0.0.1:6379/0"
    #: every key starts with it, so daemons of different deployments never collide
    prefix: str = "distasks"
    max_connections: int = 64


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    queues: tuple[str, ...] = ("default",)
    concurrency: int = 1
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
    #: a create for a queue this daemon serves, while it has an idle executor, starts the
    #: run at once in the same statement (no Redis push and claim); false: always via Redis
    start_at_create: bool = True
    #: threads for synchronous handlers
    sync_threads: int = 16
    #: largest handler result stored on a run (as JSON); a larger one is not kept
    max_result_bytes: int = 64 * 1024


@dataclass(frozen=True, slots=True)
class RetryConfig:
    #: used when a task does not give `max_retries`
    max_retries: int = 3
    #: delay before retry n is base_s * 2**(n-1), at most cap_s, then +/- jitter
    base_s: float = 2.0
    cap_s: float = 300.0
    #: fraction of the delay added or removed at random (0 = none)
    jitter: float = 0.2


@dataclass(frozen=True, slots=True)
class MoverConfig:
    interval_s: float = 0.5
    #: most delayed items moved by one script call
    batch: int = 1000


@dataclass(frozen=True, slots=True)
class HttpHandlerConfig:
    #: hosts the built-in `http` handler may call: names, `*.wildcards`, addresses and
    #: ranges, each with `:port` or (without) ports 80 and 443 (http_handler.AllowEntry).
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


@dataclass(frozen=True, slots=True)
class AuthConfig:
    #: who may call without a key: "none" (every request needs one) or "loopback" (a
    #: request from this machine, not through a proxy, is the anonymous principal with
    #: every scope; for development only, refused with a non-loopback http.host)
    anonymous: str = "none"
    #: proxies whose X-Forwarded-For is believed (the client address is the last hop
    #: they added); anything else that sends the header is taken at its own address
    trusted_proxies: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
    #: networks that may read /metrics without a key (a key needs metrics:read)
    metrics_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    #: requests a principal (a key, or an anonymous local address) may make per minute,
    #: shared by every daemon; a key may have its own. 0: no limit
    per_minute: int = 6000
    #: requests per minute of all the principals of one tenant together. 0: no limit
    tenant_per_minute: int = 0


@dataclass(frozen=True, slots=True)
class LogConfig:
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
    log: LogConfig = LogConfig()

    def summary(self) -> str:
        """One line with the settings in effect (no secrets: URLs lose their passwords)."""
        return (
            f"http={self.http.host}:{self.http.port} "
            f"database={redact(self.database.url)} redis={redact(self.redis.url)} "
            f"prefix={self.redis.prefix} queues=[{','.join(self.worker.queues)}] "
            f"concurrency={self.worker.concurrency} default_handler={self.worker.default_handler} "
            f"handlers=[{','.join(self.worker.handlers)}] grace={self.worker.grace_period_s}s "
            f"lease={self.worker.lease_s}s retry=base {self.retry.base_s}s cap {self.retry.cap_s}s "
            f"jitter {self.retry.jitter} max {self.retry.max_retries} "
            f"anonymous={self.auth.anonymous}"
        )


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
    sections: dict[str, Any] = {}
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
    return {f.name: type(f.default) for f in dataclasses.fields(Config)}


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
        env_names = [f"DISTASKS_{name.upper()}_{key.upper()}"]
        env_names += [k for k, v in LEGACY_ENV.items() if v == (name, key)]
        for env_name in env_names:
            if env_name in env:
                value = _parse_env(env_name, env[env_name], default)
        values[key] = _coerce(full, value, default)
    return cls(**values)


def _parse_env(name: str, text: str, default: Any) -> Any:
    """Turn an environment string into the type of the key's default."""
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


def _coerce(key: str, value: Any, default: Any) -> Any:
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
    need(c.http.max_payload_bytes > 0, "http.max_payload_bytes", "must be positive")
    need(1 <= c.http.max_batch <= 100_000, "http.max_batch", "must be between 1 and 100000")
    need(c.http.max_body_bytes >= c.http.max_payload_bytes, "http.max_body_bytes",
         "must be at least http.max_payload_bytes")
    need(1 <= c.http.max_connections <= 100_000, "http.max_connections",
         "must be between 1 and 100000")
    need(c.http.keep_alive_s > 0, "http.keep_alive_s", "must be positive")
    need(c.http.header_timeout_s > 0, "http.header_timeout_s", "must be positive")
    need(c.http.body_timeout_s > 0, "http.body_timeout_s", "must be positive")
    need(c.http.max_response_bytes >= 64 * 1024, "http.max_response_bytes",
         "must be at least 65536")
    need(c.http.heavy_reads >= 1, "http.heavy_reads", "must be at least 1")
    need(c.database.url != "", "database.url", "must not be empty")
    need(1 <= c.database.pool_min <= c.database.pool_max, "database.pool_min",
         "must be at least 1 and at most database.pool_max")
    need(c.redis.url.startswith(("redis://", "rediss://", "unix://")), "redis.url",
         "must start with redis://, rediss:// or unix://")
    need(re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", c.redis.prefix) is not None, "redis.prefix",
         "must be 1-64 of [A-Za-z0-9_.:-]")
    need(c.redis.max_connections >= 4, "redis.max_connections", "must be at least 4")
    need(len(c.worker.queues) > 0, "worker.queues", "must name at least one queue")
    for q in c.worker.queues:
        need(QUEUE_NAME_RE.fullmatch(q) is not None, "worker.queues",
             f"{q!r} is not 1-64 of [A-Za-z0-9_.-]")
    need(c.worker.concurrency >= 1, "worker.concurrency", "must be at least 1")
    need(c.worker.default_handler != "", "worker.default_handler", "must not be empty")
    need(c.worker.task_timeout_s > 0, "worker.task_timeout_s", "must be positive")
    need(c.worker.grace_period_s >= 0, "worker.grace_period_s", "must not be negative")
    need(c.worker.lease_s >= 1, "worker.lease_s", "must be at least 1 second")
    need(c.worker.claim_batch >= 1, "worker.claim_batch", "must be at least 1")
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
    from distasks.http_handler import AllowEntry  # noqa: PLC0415 (it imports the handlers)

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
    need(c.limits.per_minute >= 0, "limits.per_minute", "must not be negative")
    need(c.limits.tenant_per_minute >= 0, "limits.tenant_per_minute", "must not be negative")
    need(c.log.level.upper() in LOG_LEVELS, "log.level", f"must be one of {', '.join(LOG_LEVELS)}")
    need(c.log.format in LOG_FORMATS, "log.format", f"must be one of {', '.join(LOG_FORMATS)}")


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
