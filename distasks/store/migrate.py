"""Applies the schema: versioned, forward-only SQL files shipped as package data.

Each migration runs in its own transaction under an advisory lock, so several daemons
starting at once apply each file exactly once.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

import psycopg

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same for every daemon.
MIGRATION_LOCK_KEY = 0x64697374  # "dist"

_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

CREATE_VERSIONS = """
CREATE TABLE IF NOT EXISTS distasks_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """The shipped migrations in version order."""
    found = []
    for entry in resources.files("distasks.store").joinpath("migrations").iterdir():
        m = _FILE_RE.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text()))
    return sorted(found, key=lambda m: m.version)


async def apply(conn: psycopg.AsyncConnection, *, until: int | None = None) -> list[int]:
    """Apply the migrations not yet recorded (up to version `until`, if given: a test
    of an upgrade starts from an older schema); returns the versions applied now."""
    applied_now = []
    for migration in migrations():
        if until is not None and migration.version > until:
            break
        async with conn.transaction():
            # A migration may rewrite a large table: no statement timeout for it.
            await conn.execute("SET LOCAL statement_timeout = 0")
            # Transaction-scoped: released at commit, even if this process dies.
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            await conn.execute(CREATE_VERSIONS)
            cur = await conn.execute(
                "SELECT 1 FROM distasks_migrations WHERE version = %s", (migration.version,))
            if await cur.fetchone():
                continue
            await conn.execute(migration.sql)
            await conn.execute("INSERT INTO distasks_migrations (version, name) VALUES (%s, %s)",
                               (migration.version, migration.name))
            applied_now.append(migration.version)
            log.info("applied migration %04d_%s", migration.version, migration.name,
                     extra={"event": "migration_applied", "version": migration.version})
    return applied_now
