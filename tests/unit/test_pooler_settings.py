"""What `Store.open` asks of its connections directly and behind PgBouncer in transaction
mode (architecture, "Behind a connection pooler"): no prepared statements and no
`options` startup parameter behind the pooler. Nothing answers on the port: only the
settings are looked at."""

from __future__ import annotations

from distasks.store import Store
from distasks.store.base import STATEMENT_TIMEOUT_MS

# Nothing listens there: warming the pool fails at once, which Store.open allows.
NOWHERE = "host=127.0.0.1 port=1 user=postgres dbname=distasks connect_timeout=1"


async def test_direct_connections_prepare_and_set_the_statement_timeout() -> None:
    async with Store.open(NOWHERE, min_size=1, max_size=1) as store:
        pool = store._pool
        assert pool._prepare_threshold == 5
        assert pool._kwargs["options"] == f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"


async def test_behind_pgbouncer_nothing_is_prepared_and_no_options_are_sent() -> None:
    async with Store.open(NOWHERE, min_size=1, max_size=1, pooler="pgbouncer") as store:
        pool = store._pool
        assert pool._prepare_threshold is None
        assert "options" not in pool._kwargs
        assert pool._kwargs["application_name"] == "distasks"
