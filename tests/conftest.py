"""Test fixtures: real PostgreSQL and Redis, isolated per test run and per test.

Each run gets a unique id. The schema is migrated once into a template database;
each test clones it (`CREATE DATABASE … TEMPLATE`) and gets its own Redis key prefix,
and both are removed afterwards (keys by SCAN MATCH, never FLUSHDB).

With DISTASKS_TEST_REDIS=cluster, every test that asks for `redis_url` gets a private
Redis Cluster instead of the shared Redis (three masters, three replicas, started once
per session: `make test-cluster`). Tests of the cluster itself ask for `redis_cluster`.
"""

from __future__ import annotations

# isort: off
import distasks  # noqa: F401  (the bridge must be imported before psycopg: architecture §1)

# isort: on
import dataclasses
import itertools
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest
import redis
import trio

from distasks import aio
from distasks.broker import Broker
from distasks.config import (
    Config,
    DatabaseConfig,
    MoverConfig,
    RedisConfig,
    RetryConfig,
    WorkerConfig,
)
from distasks.config import load as load_config
from distasks.daemon.supervisor import migrate_only
from distasks.store import Store
from distasks.testing.servers import PrivateRedisCluster

RUN_ID = uuid.uuid4().hex[:8]
_counter = itertools.count()


def _admin_dsn() -> str:
    return os.environ.get("DISTASKS_PG_ADMIN_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")


def _dsn_for(dbname: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(_admin_dsn())
    info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**info)


def _redis_url() -> str:
    return os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def on_cluster() -> bool:
    """Whether this run's tests use a private Redis Cluster (DISTASKS_TEST_REDIS=cluster)."""
    return os.environ.get("DISTASKS_TEST_REDIS", "single") == "cluster"


def _admin(sql: str) -> None:
    with psycopg.connect(_admin_dsn(), autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A database with the schema applied, cloned by every test."""
    name = f"distasks_test_{RUN_ID}_tpl"
    _admin(f'CREATE DATABASE "{name}"')
    try:
        cfg = dataclasses.replace(load_config(None, env={}),
                                  database=DatabaseConfig(url=_dsn_for(name)))
        trio.run(migrate_only, cfg)
        yield name
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_dsn(pg_template: str) -> Iterator[str]:
    name = f"distasks_test_{RUN_ID}_{next(_counter)}"
    _admin(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    try:
        yield _dsn_for(name)
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def app_dsn() -> Iterator[str]:
    """An empty database of its own: an application's, for the outbox (architecture §10)."""
    name = f"distasks_test_{RUN_ID}_{next(_counter)}_app"
    _admin(f'CREATE DATABASE "{name}"')
    try:
        yield _dsn_for(name)
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[PrivateRedisCluster]:
    """A private Redis Cluster for the session: started on first use, stopped (and its
    directory removed) at the end. A test that fails a master over rejoins it."""
    cluster = PrivateRedisCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_prefix(request: pytest.FixtureRequest) -> Iterator[str]:
    prefix = f"dt-{RUN_ID}-{next(_counter)}"
    yield prefix
    if on_cluster():
        request.getfixturevalue("redis_cluster").delete_prefix(prefix)
        return
    client = redis.Redis.from_url(_redis_url())
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def redis_url(request: pytest.FixtureRequest) -> str:
    if on_cluster():
        cluster = request.getfixturevalue("redis_cluster")
        cluster.ensure_running()  # whole again after a test that killed nodes
        return str(cluster.url)
    return _redis_url()


@pytest.fixture
def config(pg_dsn: str, redis_prefix: str, redis_url: str) -> Config:
    """Settings for one test: its own database and prefix, fast timings."""
    return Config(
        database=DatabaseConfig(url=pg_dsn, pool_min=1, pool_max=5),
        redis=RedisConfig(url=redis_url, prefix=redis_prefix),
        worker=WorkerConfig(concurrency=4, grace_period_s=2.0, lease_s=5.0),
        retry=RetryConfig(base_s=0.05, cap_s=0.2, jitter=0.0),
        mover=MoverConfig(interval_s=0.02),
    )


@pytest.fixture
async def aio_loop() -> AsyncIterator[None]:
    async with aio.open_loop():
        yield


@pytest.fixture
async def store(aio_loop: None, config: Config) -> AsyncIterator[Store]:
    async with Store.open(config.database.url, min_size=1, max_size=5) as s:
        yield s


@pytest.fixture
async def broker(aio_loop: None, config: Config) -> AsyncIterator[Broker]:
    async with Broker.open(config.redis.url, prefix=config.redis.prefix) as b:
        yield b
