"""An entry no daemon wrote, with bytes that are not UTF-8, wherever a daemon reads Redis:
the claim, the reaper and the queue state drop or skip it with a log line that shows its
bytes escaped, and go on serving real work."""

from __future__ import annotations

import logging
import time

import trio

from distasks.daemon import reaper
from distasks.daemon.queue_state import queue_states
from distasks.domain.model import TaskStatus
from distasks.domain.retry import RetryPolicy
from distasks.handlers import builtin_registry

from .helpers import new_task, now, wait_until
from .test_worker import final, running

# What `printf '\x80\x04x' | redis-cli -x rpush …` leaves: invalid UTF-8 (and a newline).
POISON = b"\x80\x04x\n"


async def test_claim_drops_an_undecodable_ready_entry_and_keeps_serving(
        config, store, broker, caplog):
    caplog.set_level(logging.WARNING, logger="distasks")
    keys = broker.keys("q")
    with trio.fail_after(10):
        await broker.raw("rpush", keys.ready, POISON)
        async with running(config, store, broker, builtin_registry()) as (_, intake):
            result = await intake.create(new_task(queue="q", payload={"skip_fail": True}))
            status, _ = await wait_until(lambda: final(store, result.task_id))
            ready = await broker.raw("llen", keys.ready)
            leased = await broker.raw("zcard", keys.leases)
    assert status is TaskStatus.COMPLETED
    assert ready == 0 and leased == 0  # dropped from the list and from the lease set
    assert any(r.__dict__.get("event") == "claim_dropped" and "\\x80\\x04x\\n" in r.getMessage()
               for r in caplog.records)


async def test_reaper_drops_an_undecodable_lease(store, broker, caplog):
    caplog.set_level(logging.WARNING, logger="distasks")
    keys = broker.keys("q")
    with trio.fail_after(5):
        await broker.raw("zadd", keys.leases, {POISON: 1})
        await reaper.reap_once(store, broker, ["q"], now_s=time.time(),
                               policy=RetryPolicy(base_s=0.05, cap_s=0.1, jitter=0.0))
        leased = await broker.raw("zcard", keys.leases)
    assert leased == 0
    assert any(r.__dict__.get("event") == "lease_dropped" and "\\x80" in r.getMessage()
               for r in caplog.records)


async def test_queue_state_skips_an_undecodable_head(store, broker):
    with trio.fail_after(5):
        await broker.raw("rpush", broker.keys("q").ready, POISON)
        states = await queue_states(store, broker, ["q"], now=now())
    assert states["q"].ready == 1 and states["q"].oldest_ready_age_s is None
