"""Worker pool: claims runs from Redis in batches, runs their handlers, hands outcomes on.

    fetchers (one per queue) --runs--> executors (N = concurrency) --outcomes--> completer

A fetcher claims as many runs as there are idle executors in one Redis step, marks them
running in one PostgreSQL statement, and passes them on; each executor runs one handler
at a time in a cancel scope with the task's timeout. `stop(grace_s)` is the shutdown:
fetchers stop claiming at once, running handlers get `grace_s`, and whatever is still
running then is cancelled and handed back as a new attempt.
"""

from __future__ import annotations

import logging
import math
import time
import traceback
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import trio

from distasks import backoff, completer
from distasks.broker import Broker
from distasks.config import WorkerConfig
from distasks.errors import BrokerUnavailable, StoreUnavailable
from distasks.handlers import Registry, TaskContext
from distasks.model import ClaimedRun
from distasks.outcome import Outcome, OutcomeKind, failure
from distasks.retry import RetryPolicy
from distasks.store import Store, dumps

log = logging.getLogger(__name__)

# How often a fetcher looks again at a paused queue.
PAUSED_POLL_S = 0.5
# Longest error text kept on a run.
MAX_ERROR_CHARS = 4000


class WorkerPool:
    def __init__(self, *, store: Store, broker: Broker, registry: Registry, config: WorkerConfig,
                 retry: RetryPolicy, worker_id: str, clock: Callable[[], float] = time.time):
        self._store = store
        self._broker = broker
        self._registry = registry
        self._config = config
        self._retry = retry
        self.worker_id = worker_id
        self._clock = clock
        self._fetch_scope = trio.CancelScope()
        self._exec_scope = trio.CancelScope()
        # One unit per idle executor: a fetcher claims one run per unit it holds.
        self._idle = trio.Semaphore(config.concurrency)
        self._sync_limiter = trio.CapacityLimiter(config.sync_threads)
        #: runs whose handler is running now, by run id
        self.in_flight: dict[uuid.UUID, ClaimedRun] = {}
        self._run_scopes: dict[uuid.UUID, trio.CancelScope] = {}
        self._cancel_requested: set[uuid.UUID] = set()

    def abandon(self, run_ids: set[uuid.UUID]) -> None:
        """Cancel the handlers of runs this daemon no longer holds (taken over after its
        lease expired); their outcome would be fenced off anyway."""
        for run_id in run_ids:
            if scope := self._run_scopes.get(run_id):
                log.warning("lease lost: abandoning the run", extra={
                    "event": "lease_lost", "run_id": str(run_id)})
                scope.cancel()

    def cancel_runs(self, run_ids: set[uuid.UUID]) -> None:
        """Stop the handlers of these runs because their task was cancelled; each is
        recorded `cancelled`. Runs not running here are ignored."""
        for run_id in run_ids:
            if scope := self._run_scopes.get(run_id):
                self._cancel_requested.add(run_id)
                scope.cancel()

    def stop(self, grace_s: float) -> None:
        """Stop claiming now; cancel handlers still running after `grace_s` seconds."""
        self._fetch_scope.cancel()
        deadline = trio.current_time() + grace_s
        self._exec_scope.deadline = min(self._exec_scope.deadline, deadline)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until `stop()` has drained the pool, or until cancelled."""
        runs_send, runs_recv = trio.open_memory_channel[ClaimedRun](math.inf)
        outcomes_send, outcomes_recv = trio.open_memory_channel[Outcome](math.inf)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: completer.run(
                outcomes_recv, store=self._store, broker=self._broker))
            async with outcomes_send:
                with self._exec_scope:
                    async with trio.open_nursery() as executors:
                        for _ in range(self._config.concurrency):
                            executors.start_soon(self._execute, runs_recv.clone(),
                                                 outcomes_send.clone())
                        with self._fetch_scope:
                            async with runs_send, trio.open_nursery() as fetchers:
                                for queue in self._config.queues:
                                    fetchers.start_soon(self._fetch, queue, runs_send.clone())
                                task_status.started()
                # Claimed but never started (the grace period ended first): hand back.
                while True:
                    try:
                        claimed = runs_recv.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    outcomes_send.send_nowait(self._interrupted(claimed, "stopped before start"))

    # -- fetch -----------------------------------------------------------------------

    async def _fetch(self, queue: str, runs: trio.MemorySendChannel[ClaimedRun]) -> None:
        """Claim runs of `queue` for idle executors until cancelled."""
        # With one queue the claim itself blocks on Redis while idle. With several, a
        # fetcher must not sit on idle executors while its queue is empty: it waits
        # without holding any, so the other queues' fetchers can use them.
        block = len(self._config.queues) == 1
        failures = 0
        async with runs:
            while True:
                await self._idle.acquire()
                held = 1
                while held < self._config.claim_batch:
                    try:
                        self._idle.acquire_nowait()
                    except trio.WouldBlock:
                        break
                    held += 1
                paused = False
                try:
                    # Never cancelled in flight (DESIGN §1): it ends by itself within about
                    # a second, and everything it claimed is passed on below.
                    with trio.CancelScope(shield=True):
                        result = await self._claim(queue, held, block=block)
                    failures = 0
                    paused = result is None
                    claimed = result or []
                except (StoreUnavailable, BrokerUnavailable) as e:
                    claimed, failures = [], failures + 1
                    log.warning("claim from %s failed, backing off: %s", queue, e,
                                extra={"event": "claim_failed", "queue": queue})
                for run in claimed:
                    runs.send_nowait(run)
                for _ in range(held - len(claimed)):
                    self._idle.release()
                if failures:
                    await trio.sleep(backoff.delay_s(failures))
                elif paused:
                    await trio.sleep(PAUSED_POLL_S)
                elif not claimed and not block:
                    with trio.CancelScope(shield=True):
                        await self._broker.wait_ready(queue)

    async def _claim(self, queue: str, count: int, *, block: bool) -> list[ClaimedRun] | None:
        """Lease up to `count` runs in Redis, then mark them running in PostgreSQL;
        None if the queue is paused."""
        now_s = self._clock()
        lease_until_s = now_s + self._config.lease_s
        messages = await self._broker.claim(queue, count=count, block=block,
                                            lease_until_ms=int(lease_until_s * 1000))
        if messages is None:
            return None
        if messages and self._fetch_scope.cancel_called:
            # Stopped while the claim blocked: nothing has started, so it all goes back.
            await self._broker.requeue(queue, messages)
            return []
        if not messages:
            return []
        run_ids, garbage = [], []
        for m in messages:
            try:
                run_ids.append(uuid.UUID(m))
            except ValueError:
                garbage.append(m)
        try:
            started = await self._store.start_runs(
                run_ids, worker_id=self.worker_id, now=_dt(self._clock()),
                lease_until=_dt(lease_until_s))
        except StoreUnavailable:
            # Not started anywhere: put them back for the next claim.
            await self._broker.requeue(queue, [str(r) for r in run_ids])
            raise
        stale = set(messages) - {c.message for c in started}
        if stale:
            # Undecodable, unknown, or no longer queued (finished, or started elsewhere
            # after a fault): nothing to run, so only the lease goes.
            log.warning("dropped %d claimed messages with nothing to run", len(stale),
                        extra={"event": "claim_dropped", "queue": queue,
                               "undecodable": len(garbage)})
            await self._broker.release(queue, list(stale))
        return started

    # -- execute ---------------------------------------------------------------------

    async def _execute(self, runs: trio.MemoryReceiveChannel[ClaimedRun],
                       outcomes: trio.MemorySendChannel[Outcome]) -> None:
        """Run claimed runs one at a time until the fetchers are done."""
        async with runs, outcomes:
            async for claimed in runs:
                self.in_flight[claimed.run_id] = claimed
                outcome: Outcome | None = None
                try:
                    with trio.CancelScope() as scope:
                        self._run_scopes[claimed.run_id] = scope
                        outcome = await self._run_handler(claimed)
                except BaseException as exc:
                    if not _is_cancelled(exc):
                        raise
                    # The grace period is over: hand the run back, not as a failure.
                    outcomes.send_nowait(self._interrupted(claimed, "interrupted by shutdown"))
                    raise
                finally:
                    del self.in_flight[claimed.run_id]
                    del self._run_scopes[claimed.run_id]
                    self._idle.release()
                if claimed.run_id in self._cancel_requested:
                    self._cancel_requested.discard(claimed.run_id)
                    outcome = Outcome(claimed, OutcomeKind.CANCELLED, _dt(self._clock()),
                                      error="cancelled while running")
                if outcome is not None:  # None: abandoned after the lease was lost
                    outcomes.send_nowait(outcome)

    async def _run_handler(self, claimed: ClaimedRun) -> Outcome:
        """Run the handler of `claimed` with its timeout; a failure becomes an Outcome.

        Raises trio.Cancelled (only) when the pool itself is being cancelled.
        """
        task = claimed.task
        ids = {"task_id": str(task.id), "run_id": str(claimed.run_id),
               "attempt": claimed.attempt, "queue": claimed.queue_name}
        handler = self._registry.get(task.handler)
        if handler is None:
            return self._failure(claimed, f"no handler named {task.handler!r} on this daemon")
        timeout_s = task.timeout_s or self._config.task_timeout_s
        ctx = TaskContext(task=task, payload=task.payload, attempt=claimed.attempt,
                          run_id=claimed.run_id)
        log.debug("run started", extra={"event": "run_started", **ids})
        try:
            with trio.fail_after(timeout_s):
                if handler.is_async:
                    result = await handler.fn(ctx)
                else:
                    result = await trio.to_thread.run_sync(
                        handler.fn, ctx, limiter=self._sync_limiter, abandon_on_cancel=True)
            result_json = dumps(result)
            if len(result_json.encode()) > self._config.max_result_bytes:
                # Succeeded all the same; the run says what was dropped instead.
                result_json = dumps({"result_dropped": {
                    "bytes": len(result_json.encode()), "limit": self._config.max_result_bytes}})
        except trio.TooSlowError:
            return self._failure(claimed, f"timed out after {timeout_s:g}s")
        except Exception as exc:  # a handler failure is data, not a crash
            log.info("run failed: %s", type(exc).__name__, extra={"event": "run_failed", **ids},
                     exc_info=log.isEnabledFor(logging.DEBUG))
            return self._failure(claimed, _describe(exc))
        log.debug("run succeeded", extra={"event": "run_succeeded", **ids})
        return Outcome(claimed, OutcomeKind.SUCCEEDED, _dt(self._clock()), result_json=result_json)

    def _failure(self, claimed: ClaimedRun, error: str) -> Outcome:
        return failure(claimed, error, now_s=self._clock(), policy=self._retry)

    def _interrupted(self, claimed: ClaimedRun, reason: str) -> Outcome:
        return Outcome(claimed, OutcomeKind.INTERRUPTED, _dt(self._clock()), error=reason,
                       new_run_id=uuid.uuid4())


def _dt(unix_s: float) -> datetime:
    return datetime.fromtimestamp(unix_s, UTC)


def _describe(exc: BaseException) -> str:
    """`Type: message`, as users read it; the traceback goes to the DEBUG log."""
    text = "".join(traceback.format_exception_only(exc)).strip()
    return text[:MAX_ERROR_CHARS]


def _is_cancelled(exc: BaseException) -> bool:
    """True for trio.Cancelled, bare or grouped by a handler's nursery."""
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(trio.Cancelled)
        return rest is None
    return False
