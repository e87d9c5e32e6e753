"""Worker pool: claims runs from Redis in batches, runs their handlers, hands outcomes on.

    fetchers (F per queue) --runs--> executors (N = concurrency) --outcomes--> completer

A fetcher claims as many runs as there are idle executors in one Redis step, marks them
running in one PostgreSQL statement, and passes them on; F = worker.fetchers_per_queue,
so that executors freed while one claim is on its way are claimed by the next. Each
executor runs one handler at a time in a cancel scope with the task's timeout. `stop(grace_s)` is the shutdown:
fetchers stop claiming at once, running handlers get `grace_s`, and whatever is still
running then is cancelled and handed back as a new attempt. `retune()` applies a reload:
more or fewer executors, other queues, another queue order. Which fetcher an executor
that comes free goes to is the queue order's choice (distasks.daemon.queue_order).
"""

from __future__ import annotations

import logging
import math
import time
import traceback
import uuid
from collections.abc import Callable

import trio

from distasks.broker import Broker, printable
from distasks.config import WorkerConfig
from distasks.daemon import completer
from distasks.daemon.health import Health
from distasks.daemon.metrics import Metrics
from distasks.daemon.queue_order import QueueOrder
from distasks.daemon.slots import Loan, Slots
from distasks.daemon.sync_executor import SyncExecutor
from distasks.daemon.tunables import Tunables
from distasks.domain import backoff, times
from distasks.domain.errors import BrokerUnavailable, StoreUnavailable
from distasks.domain.ids import new_run_id
from distasks.domain.model import ClaimedRun
from distasks.domain.outcome import Outcome, OutcomeKind, failure
from distasks.domain.secret_fields import scrub, scrub_json, secret_values
from distasks.handlers import Registry, TaskContext
from distasks.store import Store, dumps
from distasks.store.base import without_nul

log = logging.getLogger(__name__)

# Longest a shielded claim may take (Redis blocks for 1 s of it); shutdown waits for it.
CLAIM_TIMEOUT_S = 5.0
# How often a fetcher looks again at a paused queue.
PAUSED_POLL_S = 0.5
# Longest error text kept on a run.
MAX_ERROR_CHARS = 4000
# A fetcher that has not gone round its loop for this long is reported down.
FETCH_ALLOWANCE_S = 30.0


class WorkerPool:
    def __init__(self, *, store: Store, broker: Broker, registry: Registry, config: WorkerConfig,
                 tunables: Tunables, worker_id: str, metrics: Metrics | None = None,
                 health: Health | None = None, clock: Callable[[], float] = time.time,
                 max_parent_output_bytes: int = 1024 * 1024):
        self._store = store
        self._broker = broker
        self._registry = registry
        # A workflow node's ctx.parents carries at most this many bytes of results.
        self._max_parent_output_bytes = max_parent_output_bytes
        self._config = config
        self._tunables = tunables
        self.worker_id = worker_id
        self._metrics = metrics or Metrics()
        self._health = health or Health()
        self._clock = clock
        self._fetch_scope = trio.CancelScope()
        self._exec_scope = trio.CancelScope()
        # One unit per idle executor: a fetcher claims one run per unit it holds. A freed
        # executor goes to the fetcher the queue order picks (strict or weighted).
        self._slots = Slots(tunables.concurrency, pick=QueueOrder(tunables).pick)
        # At most sync_threads sync handlers run at once, each on a thread of its own.
        self._sync = SyncExecutor(config.sync_threads)
        #: runs whose handler is running now, by run id
        self._in_flight: dict[uuid.UUID, ClaimedRun] = {}
        #: runs claimed and waiting for an executor (their leases need the heartbeat too)
        self._waiting: dict[uuid.UUID, ClaimedRun] = {}
        # Runs started by a create, by when that create committed: their delay to start
        # is observed as their handler begins.
        self._committed_s: dict[uuid.UUID, float] = {}
        self._run_scopes: dict[uuid.UUID, trio.CancelScope] = {}
        self._cancel_requested: set[uuid.UUID] = set()
        self._abandoned: set[uuid.UUID] = set()
        # Set by run(): where retune() starts executors and fetchers.
        self._executors: trio.Nursery | None = None
        self._fetchers: trio.Nursery | None = None
        self._runs_recv: trio.MemoryReceiveChannel[ClaimedRun] | None = None
        self._runs_send: trio.MemorySendChannel[ClaimedRun] | None = None
        self._outcomes_send: trio.MemorySendChannel[Outcome] | None = None
        self._executor_count = 0
        # Executors to retire after a retune shrank the pool; each surplus executor takes
        # one ticket when it is next between runs.
        self._to_retire = 0
        self._idle_scopes: list[trio.CancelScope] = []
        #: the cancel scopes of each queue's fetchers
        self._fetch_scopes: dict[str, list[trio.CancelScope]] = {}
        #: per queue, set while its last claim found work: a queue's other fetchers wait
        #: on it, so that an idle queue has one fetcher on Redis, as with one fetcher
        self._has_work: dict[str, trio.Event] = {}

    # -- control from outside ----------------------------------------------------------

    def abandon(self, run_ids: set[uuid.UUID]) -> None:
        """Cancel the handlers of runs this daemon no longer holds (taken over after its
        lease expired); their outcome would be fenced off anyway."""
        for run_id in run_ids:
            if scope := self._run_scopes.get(run_id):
                log.warning("lease lost: abandoning the run", extra={
                    "event": "lease_lost", "run_id": str(run_id)})
                scope.cancel()
            elif run_id in self._waiting:
                self._abandoned.add(run_id)  # skipped when an executor takes it

    def cancel_runs(self, run_ids: set[uuid.UUID]) -> None:
        """Stop the handlers of these runs because their task was cancelled; each is
        recorded `cancelled`. Runs not running here are ignored."""
        for run_id in run_ids:
            if scope := self._run_scopes.get(run_id):
                self._cancel_requested.add(run_id)
                scope.cancel()
            elif run_id in self._waiting:
                self._cancel_requested.add(run_id)  # recorded cancelled, never started

    def leased_runs(self) -> dict[uuid.UUID, ClaimedRun]:
        """Every run this daemon holds a lease on, by run id: running, or claimed and
        waiting for an executor (the heartbeat extends them all)."""
        return {**self._waiting, **self._in_flight}

    def busy(self) -> int:
        """Executors running a handler now."""
        return len(self._in_flight)

    @property
    def lease_s(self) -> float:
        return self._config.lease_s

    def reserve(self, queue: str, count: int) -> int:
        """Set aside up to `count` idle executors for runs of `queue` that a create is
        about to start on this daemon (no Redis round trip, no claim); returns how many.
        0 while stopping, for a queue this daemon does not serve, and for a queue whose
        last claim took all it asked for: runs may wait in Redis there, perhaps of a
        higher priority, and a run started at create would overtake them. Each one is
        then passed to `start_created` or given back with `unreserve`.

        An executor a fetcher has set aside while it blocks on an empty queue counts as
        idle: the fetcher gives back what it claims beyond what it still holds."""
        if (not self._config.start_at_create or self._executors is None
                or self._fetch_scope.cancel_called or queue not in self._tunables.queues
                or self._slots.wants(queue)):
            return 0
        taken = 0
        while taken < count and self._slots.take_nowait():
            taken += 1
        return taken

    def unreserve(self, count: int) -> None:
        for _ in range(count):
            self._slots.release()

    def start_created(self, runs: list[ClaimedRun], *, committed_s: float) -> None:
        """Run these runs, started (leased to this daemon) by the create that reserved
        executors for them and committed at `committed_s` (this pool's clock). If the
        pool stopped meanwhile, they are handed back as interrupted, like runs claimed
        but never started. Their enqueue-to-start delay is observed when an executor
        begins the handler, measured from that commit."""
        assert self._runs_send is not None and self._outcomes_send is not None
        for run in runs:
            try:
                if self._fetch_scope.cancel_called:
                    raise trio.ClosedResourceError  # stopping: new work is not started
                self._runs_send.send_nowait(run)
            except trio.ClosedResourceError:
                try:
                    self._outcomes_send.send_nowait(self._interrupted(run, "stopped before start"))
                except trio.ClosedResourceError:
                    log.warning("stopped before a run created here could start; its lease "
                                "runs out and the reaper retries it", extra={
                                    "event": "start_abandoned", "run_id": str(run.run_id)})
                self._slots.release()
                continue
            self._waiting[run.run_id] = run
            self._committed_s[run.run_id] = committed_s

    def stop(self, grace_s: float) -> None:
        """Stop claiming now; cancel handlers still running after `grace_s` seconds."""
        self._fetch_scope.cancel()
        deadline = trio.current_time() + grace_s
        self._exec_scope.deadline = min(self._exec_scope.deadline, deadline)

    def retune(self) -> None:
        """Apply the tunables' concurrency and queues: extra executors are started at
        once; surplus ones finish their current run and exit; new queues get a fetcher;
        dropped ones stop claiming (what they claimed still runs)."""
        if self._executors is None or self._fetchers is None or self._fetch_scope.cancel_called:
            return
        target = self._tunables.concurrency
        self._slots.resize(target)
        live = self._executor_count - self._to_retire
        if target > live:
            kept = min(self._to_retire, target - live)
            self._to_retire -= kept
            for _ in range(target - live - kept):
                self._start_executor()
        elif target < live:
            self._to_retire += live - target
            for scope in self._idle_scopes[:self._to_retire]:
                scope.cancel()  # idle ones go now; busy ones after their run
        wanted = set(self._tunables.queues)
        for queue in set(self._fetch_scopes) - wanted:
            for scope in self._fetch_scopes.pop(queue):
                scope.cancel()
            self._health.forget(f"fetch:{queue}")
        for queue in sorted(wanted - set(self._fetch_scopes)):
            self._start_fetcher(queue)
        self._metrics.workers_total.set(target)

    # -- the pool ----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until `stop()` has drained the pool, or until cancelled."""
        runs_send, runs_recv = trio.open_memory_channel[ClaimedRun](math.inf)
        outcomes_send, outcomes_recv = trio.open_memory_channel[Outcome](math.inf)
        self._runs_recv, self._runs_send, self._outcomes_send = runs_recv, runs_send, outcomes_send
        self._metrics.workers_total.set(self._tunables.concurrency)
        self._metrics.workers_busy.set_function(lambda: len(self._in_flight))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: completer.run(
                outcomes_recv, store=self._store, broker=self._broker, metrics=self._metrics,
                health=self._health))
            async with outcomes_send:
                # The handler threads outlive the executors that call them.
                async with trio.open_nursery() as threads:
                    await threads.start(self._sync.run)
                    with self._exec_scope:
                        async with trio.open_nursery() as executors:
                            self._executors = executors
                            for _ in range(self._tunables.concurrency):
                                self._start_executor()
                            with self._fetch_scope:
                                async with runs_send, trio.open_nursery() as fetchers:
                                    self._fetchers = fetchers
                                    for queue in self._tunables.queues:
                                        self._start_fetcher(queue)
                                    task_status.started()
                                self._fetchers = None
                    threads.cancel_scope.cancel()
                # Claimed but never started (the grace period ended first): hand back.
                while True:
                    try:
                        claimed = runs_recv.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    self._waiting.pop(claimed.run_id, None)
                    self._committed_s.pop(claimed.run_id, None)
                    outcomes_send.send_nowait(self._interrupted(claimed, "stopped before start"))

    def _start_executor(self) -> None:
        assert self._executors and self._runs_recv and self._outcomes_send
        self._executor_count += 1
        self._executors.start_soon(self._execute, self._runs_recv.clone(),
                                   self._outcomes_send.clone())

    def _start_fetcher(self, queue: str) -> None:
        """`worker.fetchers_per_queue` fetchers for `queue`: while one claim is on its
        round trip, executors that come free go to the next (one claim at a time left
        them idle for that trip: bench/README.md, sync_handlers.py)."""
        assert self._fetchers and self._runs_send
        scopes = self._fetch_scopes[queue] = []
        self._has_work[queue] = trio.Event()
        self._health.expect(f"fetch:{queue}", allowance_s=FETCH_ALLOWANCE_S)
        for i in range(self._config.fetchers_per_queue):
            scopes.append(scope := trio.CancelScope())
            self._fetchers.start_soon(self._fetch_while_served, queue, scope,
                                      self._runs_send.clone(), i == 0)

    # -- fetch -----------------------------------------------------------------------

    async def _fetch_while_served(self, queue: str, scope: trio.CancelScope,
                                  runs: trio.MemorySendChannel[ClaimedRun],
                                  first: bool) -> None:
        """`_fetch`, then, once stopped or retuned away, hand on the executors kept for
        this queue (Slots.want)."""
        try:
            await self._fetch(queue, scope, runs, first)
        finally:
            self._slots.want(queue, False)

    async def _fetch(self, queue: str, scope: trio.CancelScope,
                     runs: trio.MemorySendChannel[ClaimedRun], first: bool) -> None:
        """Claim runs of `queue` for idle executors until cancelled. Only the `first`
        fetcher of a queue claims while the queue is idle (empty or paused); the others
        wait until a claim finds work."""
        failures = 0
        with scope:
            async with runs:
                while True:
                    self._health.beat(f"fetch:{queue}")
                    if not first and not self._has_work[queue].is_set():
                        with trio.move_on_after(FETCH_ALLOWANCE_S / 3):
                            await self._has_work[queue].wait()
                        continue  # beat, and look again
                    # With one queue the claim itself blocks on Redis while idle. With
                    # several, a fetcher must not sit on idle executors while its queue is
                    # empty: it waits without holding any, so other queues can use them.
                    block = len(self._tunables.queues) == 1
                    with trio.move_on_after(FETCH_ALLOWANCE_S / 3) as wait:
                        await self._slots.acquire(queue)
                    if wait.cancelled_caught:
                        continue  # no executor came free: beat, and wait again
                    held = 1
                    while held < self._config.claim_batch:
                        try:
                            self._slots.acquire_nowait(queue)
                        except trio.WouldBlock:
                            break
                        held += 1
                    paused = False
                    # While the claim blocks, a create may start a run on one of these.
                    loan = self._slots.lend(held)
                    try:
                        # Never cancelled in flight (architecture §1): it ends by itself within
                        # about a second, and everything it claimed is passed on below.
                        result = None
                        with trio.CancelScope(shield=True), trio.move_on_after(
                                CLAIM_TIMEOUT_S) as bounded:
                            result = await self._claim(queue, loan, block=block, scope=scope)
                        if bounded.cancelled_caught:
                            # PostgreSQL or Redis hung: what Redis leased comes back through
                            # the reaper once the lease ends.
                            raise StoreUnavailable(f"claim took over {CLAIM_TIMEOUT_S}s")
                        failures = 0
                        paused = result is None
                        claimed = result or []
                    except (StoreUnavailable, BrokerUnavailable) as e:
                        claimed, failures = [], failures + 1
                        self._slots.want(queue, False)  # backing off: executors go elsewhere
                        log.warning("claim from %s failed, backing off: %s", queue, e,
                                    extra={"event": "claim_failed", "queue": queue})
                    for run in claimed:
                        self._waiting[run.run_id] = run
                        runs.send_nowait(run)
                    if claimed:
                        self._has_work[queue].set()
                    elif not failures and self._has_work[queue].is_set():
                        self._has_work[queue] = trio.Event()  # idle: the others wait on this
                    for _ in range(self._slots.end_loan(loan) - len(claimed)):
                        self._slots.release()
                    if failures:
                        await trio.sleep(backoff.delay_s(failures))
                    elif paused:
                        await trio.sleep(PAUSED_POLL_S)
                    elif not claimed and not block and first:
                        try:
                            with trio.CancelScope(shield=True):
                                await self._broker.wait_ready(queue)
                        except BrokerUnavailable as e:
                            # An idle queue meets an outage here first: back off as a
                            # failed claim does (architecture §5.6).
                            failures += 1
                            log.warning("waiting for work on %s failed, backing off: %s",
                                        queue, e, extra={"event": "claim_failed",
                                                         "queue": queue})
                            await trio.sleep(backoff.delay_s(failures))

    async def _claim(self, queue: str, loan: Loan, *, block: bool,
                     scope: trio.CancelScope) -> list[ClaimedRun] | None:
        """Lease up to `loan.units` runs in Redis (one crossing of the bridge), then mark
        them running in PostgreSQL; None if the queue is paused. Ends the loan."""
        broker = self._broker
        lease_until_s = self._clock() + self._config.lease_s
        asked = loan.units
        messages = await broker.claim(queue, count=asked, block=block,
                                      lease_until_ms=times.ms(lease_until_s))
        kept = self._slots.end_loan(loan)
        if messages is None:
            self._slots.want(queue, False)  # paused: no claim, so no claim to wait for
            return None
        # A full batch: more may wait in Redis (its fetcher wants the next free executor
        # even while it is busy passing these on); fewer: every ready list was empty.
        self._slots.want(queue, len(messages) >= asked)
        if len(messages) > kept:
            # Creates started runs on executors this claim had set aside: the rest wait.
            await broker.requeue(queue, messages[kept:])
            messages = messages[:kept]
        if not messages:
            return []
        if self._fetch_scope.cancel_called or scope.cancel_called:
            # Stopped while the claim blocked: nothing has started, so it all goes back.
            await broker.requeue(queue, messages)
            return []
        run_ids = []
        for m in messages:
            try:
                run_ids.append(uuid.UUID(m))
            except ValueError:
                log.warning("dropped an undecodable claimed message: %s", printable(m),
                            extra={"event": "claim_dropped", "queue": queue})
        start_s = self._clock()
        try:
            started = await self._store.start_runs(
                run_ids, worker_id=self.worker_id, now=times.utc(start_s),
                lease_until=times.utc(lease_until_s),
                max_parent_output_bytes=self._max_parent_output_bytes)
        except StoreUnavailable:
            # Not started anywhere: put them back for the next claim.
            await broker.requeue(queue, [str(r) for r in run_ids])
            raise
        stale = set(messages) - {c.message for c in started}
        if stale:
            # Undecodable, unknown, or no longer queued (finished, or started elsewhere
            # after a fault): nothing to run, so only the lease goes.
            log.warning("dropped %d claimed messages with nothing to run", len(stale),
                        extra={"event": "claim_dropped", "queue": queue})
            await broker.release(queue, list(stale))
        for c in started:
            self._metrics.enqueue_to_start.labels(queue).observe(
                max(0.0, start_s - times.unix_s(c.enqueued_at)))
        return started

    # -- execute ---------------------------------------------------------------------

    async def _execute(self, runs: trio.MemoryReceiveChannel[ClaimedRun],
                       outcomes: trio.MemorySendChannel[Outcome]) -> None:
        """Run claimed runs one at a time until the fetchers are done, or until a retune
        makes this executor surplus."""
        async with runs, outcomes:
            try:
                while True:
                    if self._to_retire > 0:
                        self._to_retire -= 1
                        return
                    idle = trio.CancelScope()
                    self._idle_scopes.append(idle)
                    claimed = None
                    with idle:
                        try:
                            claimed = await runs.receive()
                        except trio.EndOfChannel:
                            return
                        finally:
                            self._idle_scopes.remove(idle)
                    if claimed is None:
                        continue  # woken to retire
                    self._waiting.pop(claimed.run_id, None)
                    committed_s = self._committed_s.pop(claimed.run_id, None)
                    if claimed.run_id in self._abandoned:
                        self._abandoned.discard(claimed.run_id)
                        self._slots.release()  # taken over while it waited: not ours
                    elif claimed.run_id in self._cancel_requested:
                        self._cancel_requested.discard(claimed.run_id)
                        self._slots.release()
                        outcomes.send_nowait(Outcome(claimed, OutcomeKind.CANCELLED,
                                                     times.utc(self._clock()),
                                                     error="cancelled before it started"))
                    else:
                        if committed_s is not None:  # started by its create: from its commit
                            self._metrics.enqueue_to_start.labels(claimed.queue_name).observe(
                                max(0.0, self._clock() - committed_s))
                        await self._execute_one(claimed, outcomes)
            finally:
                self._executor_count -= 1

    async def _execute_one(self, claimed: ClaimedRun,
                           outcomes: trio.MemorySendChannel[Outcome]) -> None:
        self._in_flight[claimed.run_id] = claimed
        outcome: Outcome | None = None
        started_s = self._clock()
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
            del self._in_flight[claimed.run_id]
            del self._run_scopes[claimed.run_id]
            self._slots.release()
            self._metrics.run_duration.labels(claimed.queue_name, claimed.task.handler).observe(
                self._clock() - started_s)
        if claimed.run_id in self._cancel_requested:
            self._cancel_requested.discard(claimed.run_id)
            outcome = Outcome(claimed, OutcomeKind.CANCELLED, times.utc(self._clock()),
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
                          run_id=claimed.run_id, parents=claimed.parents or {})
        log.debug("run started", extra={"event": "run_started", **ids})
        try:
            with trio.fail_after(timeout_s):
                if handler.is_async:
                    result = await handler.fn(ctx)
                else:
                    # Past its timeout (or cancelled) it is abandoned: its thread runs on.
                    result = await self._sync.call(handler.fn, ctx)
            result_json = dumps(without_nul(result))
            if secrets := secret_values(task):
                # Before the size check: "[secret]" may be longer than what it replaces.
                result_json = scrub_json(result_json, secrets)
            if len(result_json.encode()) > self._config.max_result_bytes:
                # Succeeded all the same; the run says what was dropped instead.
                result_json = dumps({"result_dropped": {
                    "bytes": len(result_json.encode()), "limit": self._config.max_result_bytes}})
        except trio.TooSlowError:
            return self._failure(claimed, f"timed out after {timeout_s:g}s")
        except Exception as exc:  # a handler failure is data, not a crash
            # No traceback for a task with secret fields: its message may quote one.
            log.info("run failed: %s", type(exc).__name__, extra={"event": "run_failed", **ids},
                     exc_info=log.isEnabledFor(logging.DEBUG) and not task.secret_fields)
            return self._failure(claimed, _describe(exc, secret_values(task)))
        log.debug("run succeeded", extra={"event": "run_succeeded", **ids})
        return Outcome(claimed, OutcomeKind.SUCCEEDED, times.utc(self._clock()), result_json=result_json)

    def _failure(self, claimed: ClaimedRun, error: str) -> Outcome:
        return failure(claimed, error, now_s=self._clock(), policy=self._tunables.retry)

    def _interrupted(self, claimed: ClaimedRun, reason: str) -> Outcome:
        return Outcome(claimed, OutcomeKind.INTERRUPTED, times.utc(self._clock()), error=reason,
                       new_run_id=new_run_id(claimed.task.id))


def _describe(exc: BaseException, secrets: tuple[str, ...] = ()) -> str:
    """`Type: message`, as users read it, its task's secret values scrubbed before it is
    cut (so that the cut splits no secret); the traceback goes to the DEBUG log."""
    text = scrub("".join(traceback.format_exception_only(exc)).strip(), secrets)
    return str(without_nul(text[:MAX_ERROR_CHARS]))


def _is_cancelled(exc: BaseException) -> bool:
    """True for trio.Cancelled, bare or grouped by a handler's nursery."""
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(trio.Cancelled)
        return rest is None
    return False
