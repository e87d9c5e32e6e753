"""Workflow operations: submit, cancel and resume a graph, each commit-then-copy.

The store writes a whole step in one transaction (store/workflows.py); what it released
is then pushed into Redis through the intake's copier, the path every create takes, so
a released node obeys its queue's priority and limits like any task (architecture §4,
"No side doors"). What a copy misses, the reconciler pushes (its runs stay undispatched).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from distasks.broker import Broker
from distasks.daemon import mirror
from distasks.daemon.intake import Intake, claimed_at_create
from distasks.daemon.queue_census import QueueCensus
from distasks.domain import times
from distasks.domain.graph import NewWorkflow, WorkflowCreated
from distasks.domain.model import Actor
from distasks.store import Store, WorkflowChange


class Workflows:
    """What the API (and through it the command line) does to workflows."""

    def __init__(self, store: Store, broker: Broker, intake: Intake,
                 census: QueueCensus | None = None):
        self._store = store
        self._broker = broker
        self._intake = intake
        #: the queues that exist: a workflow naming new ones counts against the cap
        self._census = census

    async def submit(self, wf: NewWorkflow, *, actor: Actor, now: datetime) -> WorkflowCreated:
        """Write the graph in one transaction; its roots start at once on this daemon's
        idle executors where a task's create would start (Intake.reserve_starts), the
        others are copied into Redis. Returns once committed (a dedup_key already used:
        the existing workflow). Raises TooManyQueues when a task names a new queue its
        tenant has no room for."""
        if self._census is not None:
            everything = [*wf.nodes, *([wf.on_failure] if wf.on_failure else [])]
            await self._census.admit([n.task.queue_name for n in everything])
        roots = {n.task.run_id: n for n in wf.nodes if not n.depends_on}
        starts = self._intake.reserve_starts([n.task for n in roots.values()])
        try:
            created, runs = await self._store.create_workflow(
                wf, actor=actor, now=now, start=starts.run_ids, worker_id=starts.worker_id,
                lease_until=starts.lease_until)
        except BaseException:
            self._intake.unreserve(starts)
            raise
        self._intake.start_created(starts, [
            claimed_at_create(roots[r.run_id].task, worker_id=starts.worker_id, now=now,
                              workflow_id=wf.id, workflow_key=roots[r.run_id].key)
            for r in runs if r.started])
        self._intake.copy_committed([r for r in runs if not r.started])
        return created

    async def cancel(self, workflow_id: uuid.UUID, *, tenant: str, actor: Actor,
                     reason: str | None, now: datetime) -> WorkflowChange | None:
        """Cancel every unfinished node: waiting ones leave Redis, running ones are told
        to stop (their daemon records the run cancelled, fenced). None: no such workflow."""
        change = await self._store.cancel_workflow(workflow_id, tenant=tenant, actor=actor,
                                                   reason=reason, now=now)
        if change is None or not change.changed:
            return change
        await mirror.copy("workflow cancel", lambda: self._broker.cancelled_many(
            waiting=[(q, str(r)) for q, r in change.waiting],
            running=[str(r) for r in change.running], task_ids=[],
            now_ms=times.ms_of(now)), count=len(change.waiting) + len(change.running))
        self._intake.copy_committed(change.runs)
        return change

    async def resume(self, workflow_id: uuid.UUID, *, tenant: str, actor: Actor,
                     now: datetime) -> WorkflowChange | None:
        """Run a failed workflow's failed nodes (and those cancelled or skipped because
        of them) again; completed ones keep their results. None: no such workflow."""
        change = await self._store.resume_workflow(workflow_id, tenant=tenant, actor=actor,
                                                   now=now)
        if change is None or not change.changed:
            return change
        by_queue: dict[str, list[str]] = {}
        for queue, task_id in change.undead:
            by_queue.setdefault(queue, []).append(str(task_id))
        for queue, task_ids in by_queue.items():
            await mirror.copy("workflow resume", lambda q=queue, ids=task_ids:  # type: ignore[misc]
                              self._broker.leave_dlq(q, removed=ids, ready=[]),
                              count=len(task_ids))
        self._intake.copy_committed(change.runs)
        return change
