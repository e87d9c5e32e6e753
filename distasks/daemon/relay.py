"""Relay: one application's outbox into distasks (architecture §10), one per configured
`[[outbox]]` source, in every daemon that has it.

A pass takes a batch of rows in a source transaction (`OutboxSource.batch`, SKIP
LOCKED), checks each as the API checks its body (a task's create, a workflow's submit),
admits them under the tenant's quotas, hands them over in `seq` order (consecutive task
rows through the intake in one distasks transaction, each workflow row through
`Workflows.submit` in one of its own, then the copier's commit-then-copy), and only then
deletes the rows and commits. A relay that dies in between leaves the rows, and the next
pass creates nothing new: a row's task or workflow carries the dedup key
`outbox:<source>:<row id>` (or the row's own `dedup_key`), so a row taken twice finds
what it made. At-least-once out of the outbox, exactly once in the ledger.

A row distasks refuses (unknown handler, invalid request or graph, a task dedup_key used
by another request) is moved to `distasks.outbox_rejected` with the reason and logged;
it never holds up the rows behind it. Rows over the tenant's quota stay until it allows
them.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import pydantic
import trio

from distasks.access.quotas import QuotaExceeded, TenantQuotas
from distasks.daemon import creation
from distasks.daemon.creation import CreationRules
from distasks.daemon.health import Health
from distasks.daemon.intake import Intake
from distasks.daemon.metrics import Metrics
from distasks.daemon.workflows import Workflows
from distasks.domain import backoff, times
from distasks.domain.errors import (
    BrokerUnavailable,
    InvalidInput,
    StoreRejected,
    StoreUnavailable,
    TooManyQueues,
)
from distasks.domain.fields import invalid_input
from distasks.domain.graph import NewWorkflow
from distasks.domain.model import Actor, NewTask
from distasks.domain.task_definitions import CreateTask
from distasks.domain.workflow_definitions import CreateWorkflow
from distasks.store.outbox import OutboxBatch, OutboxRow, OutboxSource

log = logging.getLogger(__name__)

# Longest one pass may take (a batch taken, created and deleted); past it the pass is
# cancelled and counts as an outage of the source.
PASS_TIMEOUT_S = 60.0
# Longest the loop may go without a beat before its health says it hangs: a whole pass,
# plus the backoff after it.
HANG_ALLOWANCE_S = PASS_TIMEOUT_S + 10.0


@dataclass(frozen=True, slots=True)
class RelaySettings:
    #: the source's name: part of every dedup key it makes, and the metrics label
    name: str
    #: whose tasks and workflows its rows become (architecture §8)
    tenant: str
    #: most rows per pass (one source transaction, one create batch)
    batch: int
    #: longest wait between passes without a notification
    poll_interval_s: float


@dataclass(frozen=True, slots=True)
class Pass:
    """What one pass did."""

    #: rows taken (locked) from the outbox
    taken: int
    #: rows whose task or workflow now exists (made now or by an earlier relay), deleted
    relayed: int
    #: rows moved to outbox_rejected
    rejected: int
    #: seconds until the tenant's quota admits the rows left, 0 if none were held back
    held_s: float = 0.0


def dedup_key_of(source: str, row_id: str) -> str:
    """The dedup key of a row's task or workflow when the row names none: one per
    (source, row)."""
    return f"outbox:{source}:{row_id}"


# What a row asks for, checked: a task or a workflow.
Request = NewTask | NewWorkflow
Item = tuple[OutboxRow, Request]


def tasks_in(request: Request) -> int:
    """How many tasks `request` counts for against the tenant's quotas, as the API counts
    them (a workflow: its nodes, its on_failure task aside)."""
    return len(request.nodes) if isinstance(request, NewWorkflow) else 1


class Relay:
    """The relay of one source; `run()` until cancelled, `relay_once()` for one batch."""

    def __init__(self, source: OutboxSource, settings: RelaySettings, *, intake: Intake,
                 workflows: Workflows, quotas: TenantQuotas | None,
                 rules: Callable[[str], CreationRules], metrics: Metrics, health: Health,
                 clock: Callable[[], float] = time.time):
        self._source = source
        self._settings = settings
        self._intake = intake
        self._workflows = workflows
        #: who submits the source's workflows, for the audit log
        self._actor = Actor(f"outbox:{settings.name}", tenant=settings.tenant)
        self._quotas = quotas
        self._rules = rules
        self._metrics = metrics
        self._health = health
        self._clock = clock
        self._wake = trio.Event()
        self._listen_failures = 0

    @property
    def component(self) -> str:
        return f"outbox:{self._settings.name}"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Relay until cancelled: a pass whenever the source notifies, at least every
        `poll_interval_s`, at once again after a full batch. An unreachable source (or
        distasks' own PostgreSQL or Redis) is retried with backoff; rows wait meanwhile."""
        s, label = self._settings, self._settings.name
        self._health.expect(self.component,
                            allowance_s=max(HANG_ALLOWANCE_S, 3 * s.poll_interval_s))
        self._metrics.outbox_up.labels(label).set(0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._listen)
            task_status.started()
            log.info("outbox relay of %s started", label,
                     extra={"event": "outbox_started", "source": label, "tenant": s.tenant})
            failures = 0
            while True:
                self._health.beat(self.component)
                # A new event before the pass: a row committed while it runs wakes the wait.
                wake = self._wake = trio.Event()
                try:
                    # A source that hangs without refusing (a frozen server still answers
                    # keepalives) must not hold the relay: cancelled, the pass changes
                    # nothing, and its connection is closed.
                    with trio.move_on_after(PASS_TIMEOUT_S) as pass_scope:
                        done = await self.relay_once()
                    if pass_scope.cancelled_caught:
                        raise StoreUnavailable(f"no pass within {PASS_TIMEOUT_S:g}s")
                    failures = 0
                except (StoreUnavailable, BrokerUnavailable) as e:
                    failures += 1
                    self._metrics.outbox_up.labels(label).set(0)
                    log.warning("outbox relay of %s failed: %s", label, e,
                                extra={"event": "outbox_failed", "source": label})
                    await trio.sleep(backoff.delay_s(failures))
                    continue
                if done.held_s > 0:
                    await trio.sleep(min(done.held_s, s.poll_interval_s))
                elif done.taken < s.batch:
                    with trio.move_on_after(s.poll_interval_s):
                        await wake.wait()
                else:
                    await trio.lowlevel.checkpoint()

    async def _listen(self) -> None:
        """Wake the relay on each notification; reconnect with backoff when the
        listening connection fails (polling covers the gap)."""
        while True:
            try:
                await self._source.listen(self._notified)
            except StoreUnavailable as e:
                self._listen_failures += 1
                if self._listen_failures == 1:
                    log.warning("outbox %s: not listening, polling every %gs: %s",
                                self._settings.name, self._settings.poll_interval_s, e,
                                extra={"event": "outbox_listen_failed",
                                       "source": self._settings.name})
                await trio.sleep(backoff.delay_s(self._listen_failures))

    def _notified(self) -> None:
        # The source calls this once when it starts listening too: rows committed while
        # nobody listened are taken at once.
        if self._listen_failures:
            log.info("outbox %s: listening again", self._settings.name,
                     extra={"event": "outbox_listening", "source": self._settings.name})
        self._listen_failures = 0
        self._wake.set()

    async def relay_once(self) -> Pass:
        """Take one batch of rows and hand it over: each row's task or workflow created
        (or found) and the row deleted, or the row rejected; rows over the tenant's quota
        stay.
        Raises StoreUnavailable (source or distasks) or BrokerUnavailable, and then the
        source is left as it was; cancelled, the same."""
        s = self._settings
        async with self._source.batch(s.batch) as batch:
            if not batch.rows:
                self._metrics.outbox_oldest_age.labels(s.name).set(0)
                self._metrics.outbox_up.labels(s.name).set(1)
                return Pass(0, 0, 0)
            taken_at = trio.current_time()
            self._metrics.outbox_oldest_age.labels(s.name).set(
                max(row.age_s for row in batch.rows))
            rules = self._rules(s.tenant)
            now = times.utc(self._clock())
            items: list[Item] = []
            for row in batch.rows:
                try:
                    items.append((row, self._request_of(row, rules, now)))
                except InvalidInput as e:
                    batch.rejected[row.id] = e.message
            admitted, held_s = await self._admit(items, batch)
            # In seq order: a run of task rows in one create, each workflow on its own.
            for is_workflow, run in itertools.groupby(
                    admitted, key=lambda item: isinstance(item[1], NewWorkflow)):
                if is_workflow:
                    for row, wf in run:
                        assert isinstance(wf, NewWorkflow)
                        await self._submit(row, wf, batch, now)
                else:
                    await self._create(
                        [(row, t) for row, t in run if isinstance(t, NewTask)], batch)
            # The rows' age when taken, by the source's clock, plus the time since.
            since_taken_s = trio.current_time() - taken_at
        # Committed: the rows are gone from the source.
        self._metrics.outbox_up.labels(s.name).set(1)
        by_id = {row.id: row for row in batch.rows}
        for row_id in batch.done:
            self._metrics.outbox_lag.labels(s.name).observe(by_id[row_id].age_s + since_taken_s)
        self._metrics.outbox_relayed.labels(s.name).inc(len(batch.done))
        for row_id, reason in batch.rejected.items():
            self._metrics.outbox_rejected.labels(s.name).inc()
            log.error("outbox %s: row %s rejected: %s", s.name, row_id, reason,
                      extra={"event": "outbox_rejected", "source": s.name, "row_id": row_id,
                             "reason": reason})
        if batch.done:
            log.debug("outbox %s: %d rows relayed", s.name, len(batch.done),
                      extra={"event": "outbox_relayed", "source": s.name,
                             "count": len(batch.done)})
        return Pass(len(batch.rows), len(batch.done), len(batch.rejected), held_s)

    def _request_of(self, row: OutboxRow, rules: CreationRules, now: datetime) -> Request:
        """The task or workflow `row` asks for, under the tenant's creation rules (those
        of the API's create and submit), with its dedup key; InvalidInput naming the
        problem when the API would refuse it."""
        tenant, own_key = self._settings.tenant, dedup_key_of(self._settings.name, row.id)
        try:
            if row.kind == "workflow":
                wf = creation.new_workflow(CreateWorkflow.model_validate_json(row.request),
                                           rules, tenant=tenant, now=now)
                return wf if wf.dedup_key else dataclasses.replace(wf, dedup_key=own_key)
            assert row.kind == "task"  # the kinds store.outbox.KINDS takes
            definition = CreateTask.model_validate_json(row.request)
        except pydantic.ValidationError as e:
            raise invalid_input(e) from None
        task = creation.new_task(creation.task_request(definition, tenant), rules, now=now)
        return task if task.dedup_key else dataclasses.replace(task, dedup_key=own_key)

    async def _admit(self, items: Sequence[Item], batch: OutboxBatch,
                     ) -> tuple[list[Item], float]:
        """The leading rows the tenant's quotas admit now, and how long until the rest
        may be tried (0: all admitted). One at a time, so a quota lets through what it
        can instead of refusing the whole batch; a row the quotas could never admit (a
        workflow larger than the tenant's burst) is rejected in `batch`."""
        if self._quotas is None or not items:
            return list(items), 0.0
        admitted: list[Item] = []
        for item in items:
            try:
                await self._quotas.admit(self._settings.tenant, tasks_in(item[1]))
            except QuotaExceeded as e:
                if not admitted:
                    log.warning("outbox %s: %s", self._settings.name, e.message,
                                extra={"event": "outbox_quota", "source": self._settings.name})
                return admitted, float(e.headers.get("Retry-After", "1"))
            except InvalidInput as e:
                batch.rejected[item[0].id] = e.message
                continue
            admitted.append(item)
        return admitted, 0.0

    async def _submit(self, row: OutboxRow, wf: NewWorkflow, batch: OutboxBatch,
                      now: datetime) -> None:
        """Submit `row`'s workflow as `POST /api/v1/workflows` does (its own transaction,
        then the roots copied), marking the row done or rejected in `batch`. A workflow
        its dedup key names already (this row's, taken again) counts as done."""
        try:
            await self._workflows.submit(wf, actor=self._actor, now=now)
        except TooManyQueues as e:
            batch.rejected[row.id] = e.message
        except StoreRejected as e:
            batch.rejected[row.id] = f"refused by PostgreSQL: {e}"
        else:
            batch.done.append(row.id)

    async def _create(self, tasks: list[tuple[OutboxRow, NewTask]], batch: OutboxBatch) -> None:
        """Create the tasks of `tasks` in one intake request, marking each row done or
        rejected in `batch`; a row refused by the ledger (a new queue beyond the tenant's
        limit, data PostgreSQL refuses) is rejected alone and the others are created."""
        pending = list(tasks)
        while pending:
            try:
                results = await self._intake.create_many([t for _, t in pending])
            except TooManyQueues as e:
                row, _ = pending.pop(e.index)
                batch.rejected[row.id] = e.message
                continue
            except StoreRejected as e:
                if len(pending) == 1:
                    batch.rejected[pending[0][0].id] = f"refused by PostgreSQL: {e}"
                    return
                for one in pending:  # find the one: each on its own
                    await self._create([one], batch)
                return
            for (row, task), result in zip(pending, results, strict=True):
                if result.conflict:
                    batch.rejected[row.id] = (
                        f"dedup_key {task.dedup_key!r} names task {result.task_id}, made "
                        "from a different request")
                else:
                    batch.done.append(row.id)
            return
