"""The connection pool, the error mapping of every query method, and row mapping shared
by the query modules."""

from __future__ import annotations

import contextlib
import functools
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Concatenate, ParamSpec, Self, TypeVar, cast

import psycopg
import psycopg.errors
import trio
from psycopg.adapt import Loader
from psycopg.types.json import Jsonb

from distasks.domain.errors import StoreRejected, StoreUnavailable
from distasks.domain.ids import bucket
from distasks.domain.model import (
    Actor,
    ClaimedRun,
    JsonText,
    RunStatus,
    Task,
    TaskRun,
    TaskStatus,
    TaskType,
)
from distasks.store.day_tables import PARENT, DayTables, on_day
from distasks.store.pg import TrioConnection, TrioPool

P = ParamSpec("P")
T = TypeVar("T")
S = TypeVar("S", bound="StoreBase")

# How long closing the pool may take at shutdown.
CLOSE_TIMEOUT_S = 2.0
# Connecting to PostgreSQL gives up after this long.
CONNECT_TIMEOUT_S = 5
# Any statement is cancelled by the server after this long (migrations lift it).
STATEMENT_TIMEOUT_MS = 30_000
# How long a caller waits for a free connection before the store counts as unavailable.
POOL_TIMEOUT_S = 5.0


class StoreBase:
    def __init__(self, pool: TrioPool):
        self._pool = pool
        self._days = DayTables()

    async def for_day(self, conn: TrioConnection, statement: str, day: int) -> str:
        """`statement`, over the runs of one `day`, aimed at the table that holds them
        (store/day_tables.py)."""
        return on_day(statement, await self._days.table(conn, day))

    async def runs_table(self, conn: TrioConnection, days: Iterable[int]) -> str:
        """The table for a statement over the runs of `days`: the day's own if there is
        one day, else the parent."""
        one = set(days)
        return await self._days.table(conn, one.pop()) if len(one) == 1 else PARENT

    @staticmethod
    async def over_every_day(cur: psycopg.AsyncCursor[Any], statement: str,
                             params: dict[str, Any]) -> None:
        """Execute `statement`, a periodic read of every day's partition (the reaper's,
        the reconciler's), on `cur`, on a generic plan its connection keeps. Its plan
        covers every partition (4.5-7 ms with 50 days of history) while its run reads a
        few index pages: left to PostgreSQL's choice it would be planned afresh on each
        connection's first five uses, which a pool of ten spreads over minutes (and
        without `prepare`, forever: psycopg prepares after five uses on a connection).
        Behind a pooler nothing is prepared: it is planned every time. In pipeline
        mode: BEGIN, the setting and the statement in one round trip, COMMIT in a
        second."""
        conn = cur.connection
        if conn.prepare_threshold is None:
            await cur.execute(statement, params)
            return
        async with conn.pipeline(), conn.transaction():
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            await cur.execute(statement, params, prepare=True)

    @classmethod
    @asynccontextmanager
    async def open(cls, dsn: str, *, min_size: int = 1, max_size: int = 10,
                   pooler: str = "none") -> AsyncIterator[Self]:
        """A store over a pool of at most `max_size` connections to `dsn`, for the block,
        `min_size` of them opened at once if PostgreSQL answers (it may be down: then
        connections are made on first use).

        `pooler` says what `dsn` reaches: "none" (PostgreSQL itself) or "pgbouncer" (a
        PgBouncer in transaction mode). Behind the pooler every statement may reach
        another server connection, so nothing may rely on session state: no prepared
        statements (PgBouncer 1.18 does not carry them), and no `options` startup
        parameter (PgBouncer refuses it), so the statement timeout is the pooler's or
        the role's (architecture, "Behind a connection pooler")."""
        kwargs: dict[str, Any] = {
            "application_name": "distasks",
            # A dead server or network is noticed in seconds, not at TCP's minutes.
            "connect_timeout": CONNECT_TIMEOUT_S, "keepalives": 1,
            "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
        }
        if pooler == "none":
            # No statement of ours runs long; one that hangs on a lock gives up.
            kwargs["options"] = f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"
        pool = TrioPool(dsn, max_size=max_size, timeout_s=POOL_TIMEOUT_S, kwargs=kwargs,
                        prepare_threshold=5 if pooler == "none" else None)
        with trio.move_on_after(CONNECT_TIMEOUT_S):
            await pool.warm(min_size)
        try:
            yield cls(pool)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
                await pool.close()


def by_bucket(items: Iterable[T], key: Callable[[T], uuid.UUID] | None = None,
              ) -> dict[int, list[T]]:
    """Run or task ids (or items with such an id, `key`) grouped by their day
    partition of task_runs (domain/ids.py). A statement over many runs runs once per
    day, on that day's table (`StoreBase.for_day`), with `bucket = %(bucket)s` where it
    may go through the parent: PostgreSQL prunes on a plain parameter before the plan
    runs, and not on an array of days."""
    groups: dict[int, list[T]] = {}
    for item in items:
        groups.setdefault(bucket(key(item) if key else cast(uuid.UUID, item)), []).append(item)
    return groups


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """Map psycopg's failures to ours: outages (the pool's timeout included) to
    StoreUnavailable, refused data to StoreRejected."""
    try:
        yield
    except (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction) as e:
        # ReadOnlySqlTransaction: a standby after a failover; new connections follow it.
        raise StoreUnavailable(str(e).strip() or type(e).__name__) from e
    except (psycopg.DataError, psycopg.IntegrityError) as e:
        raise StoreRejected(str(e).strip() or type(e).__name__) from e


def query(fn: Callable[Concatenate[S, P], Awaitable[T]]) -> Callable[Concatenate[S, P], Awaitable[T]]:
    """Mark a public Store method: psycopg's failures surface from it as StoreUnavailable
    or StoreRejected, and cancelling it closes the connection it was using."""

    @functools.wraps(fn)
    async def mapped(self: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
        with store_errors():
            return await fn(self, *args, **kwargs)

    return mapped


def dumps(value: Any) -> str:
    """JSON for jsonb columns: compact, UTF-8, and never NaN (PostgreSQL rejects it)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def without_nul(value: Any) -> Any:
    """`value` with NUL characters replaced by U+FFFD: PostgreSQL text and jsonb cannot
    hold them. For what handlers produce (results, errors), which must be stored anyway."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [without_nul(v) for v in value]
    return value


class _JsonTextLoader(Loader):
    """json columns (payloads) as JsonText, the text not decoded."""

    def load(self, data: Any) -> JsonText:
        return JsonText(str(data, "utf-8"))


def payloads_as_text(cur: psycopg.AsyncCursor[Any]) -> None:
    """Make `cur` return json columns (payloads: migration 0009) as JsonText, for a
    response to pass through; jsonb columns (results) are decoded as before."""
    cur.adapters.register_loader("json", _JsonTextLoader)


class Page(list[T]):
    """The rows of one page, and whether a byte budget ended it before its row limit
    (`cut`: the rows after the last one are still to be read, from its key)."""

    def __init__(self, rows: Iterable[T] = (), *, cut: bool = False) -> None:
        super().__init__(rows)
        self.cut = cut

    def first(self, count: int) -> Page[T]:
        """The first `count` rows, cut if any row is left out."""
        return Page(self[:count], cut=self.cut or count < len(self))


def within_payload_budget(page_sql: str, order: str) -> str:
    """`page_sql` (a page of task rows with payloads, in `order`) cut after the longest
    prefix whose payloads' JSON text stays within %(max_payload_bytes)s; the first row
    stays whatever its size, so that no row is unreachable. Rows of the prefix carry
    `page_rows`, how many the uncut page had (more than were kept: cut).

    The sizes are PostgreSQL's (detoasting each payload of the page once, on the
    server): so the daemon never receives the rows a response could not hold."""
    return f"""
        SELECT * FROM (
            SELECT page.*, count(*) OVER () AS page_rows,
                   row_number() OVER w AS page_row,
                   sum(coalesce(octet_length(page.payload::text), 0)) OVER w AS page_bytes
            FROM ({page_sql}) page
            WINDOW w AS (ORDER BY {order})
        ) sized
        WHERE page_row = 1 OR page_bytes <= %(max_payload_bytes)s
        ORDER BY {order}"""


async def fetch_yielding(cur: psycopg.AsyncCursor[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every row of `cur`, decoded one at a time with a checkpoint between: a row with a
    large payload takes milliseconds to decode, and a page of them in one go would hold
    up every other task (/healthz among them) that long."""
    rows = []
    while (row := await cur.fetchone()) is not None:
        rows.append(row)
        await trio.lowlevel.checkpoint()
    return rows


def page_of(rows: list[dict[str, Any]], item: Callable[[dict[str, Any]], T]) -> Page[T]:
    """The rows of a query made by `within_payload_budget` (or any other) as a Page."""
    return Page([item(r) for r in rows],
                cut=bool(rows) and rows[0].get("page_rows", len(rows)) > len(rows))


def task_columns(*, with_payload: bool, alias: str = "") -> str:
    """The columns task_from_row reads; the payload only when asked for (lists leave it
    out: a page of large payloads would cost the daemon memory no caller asked for)."""
    a = f"{alias}." if alias else ""
    columns = ("id", "name", "handler", "type", "queue_name", "priority", "dedup_key",
               "max_retries", "timeout_s", "status", "failures", "run_at", "created_at",
               "updated_at", "finished_at", "cancelled_at", "cancelled_by", "cancel_reason",
               "tenant", "secret_fields", "concurrency_key", "workflow_id", "workflow_key")
    payload = f"{a}payload" if with_payload else "NULL::json AS payload"
    return ", ".join([*(a + c for c in columns), payload])


def task_from_row(r: dict[str, Any]) -> Task:
    return Task(
        id=r["id"], name=r["name"], handler=r["handler"], type=TaskType(r["type"]),
        queue_name=r["queue_name"], priority=r["priority"], payload=r["payload"],
        dedup_key=r["dedup_key"], max_retries=r["max_retries"], timeout_s=r["timeout_s"],
        status=TaskStatus(r["status"]), failures=r["failures"], run_at=r["run_at"],
        created_at=r["created_at"], updated_at=r["updated_at"], finished_at=r["finished_at"],
        cancelled_at=r.get("cancelled_at"), cancelled_by=r.get("cancelled_by"),
        cancel_reason=r.get("cancel_reason"), tenant=r.get("tenant", "default"),
        secret_fields=tuple(r.get("secret_fields") or ()),
        concurrency_key=r.get("concurrency_key"),
        workflow_id=r.get("workflow_id"), workflow_key=r.get("workflow_key"),
    )


def run_from_row(r: dict[str, Any]) -> TaskRun:
    return TaskRun(
        id=r["id"], task_id=r["task_id"], attempt=r["attempt"], status=RunStatus(r["status"]),
        worker_id=r["worker_id"], lease_expires_at=r["lease_expires_at"],
        available_at=r["available_at"], next_retry_at=r["next_retry_at"], error=r["error"],
        result=r["result"], created_at=r["created_at"], started_at=r["started_at"],
        finished_at=r["finished_at"],
    )


def claimed_from_row(r: dict[str, Any]) -> ClaimedRun:
    """A row of a run (as run_id, attempt, available_at, worker_id) joined with its task."""
    return ClaimedRun(run_id=r["run_id"], task=task_from_row(r), attempt=r["attempt"],
                      queue_name=r["queue_name"], message=str(r["run_id"]),
                      enqueued_at=r["available_at"], worker_id=r["worker_id"],
                      parents=r.get("parents"))


AUDIT = ("INSERT INTO audit_log (at, actor, tenant, address, request_id, action, queue_name,"
         " detail) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)")


async def record_audit(conn: Any, *, at: datetime, actor: Actor, action: str,
                       queue_name: str | None = None, detail: dict[str, Any]) -> None:
    """One audit_log row, in the caller's transaction."""
    await conn.execute(AUDIT, (at, actor.id, actor.tenant, actor.address, actor.request_id,
                               action, queue_name, Jsonb(detail)))
