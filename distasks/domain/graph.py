"""Workflows: a graph of tasks that wait for each other (architecture §11).

What a workflow, a node and an edge are, the states they move through, and the checks a
submitted graph must pass before anything is written (unique keys, known parents, no
cycle, a bounded size). Pure: the store writes the graph, the completer releases it.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from distasks.domain.errors import InvalidInput
from distasks.domain.model import Json, NewTask


class OnParentFailure(enum.StrEnum):
    """What a child does when one of its parents ends `failed` or `cancelled`."""

    #: the child, and everything below it, ends cancelled, its reason naming the parent
    CANCEL = "cancel"
    #: the child runs anyway once its parents are final, and sees the failure in ctx.parents
    CONTINUE = "continue"
    #: the child ends skipped (its own children then skip too, unless they `continue`)
    SKIP = "skip"


class WorkflowState(enum.StrEnum):
    #: some node is not final yet; the transaction that closes the last one moves it on
    RUNNING = "running"
    #: every node ended completed or skipped
    SUCCEEDED = "succeeded"
    #: a node ended failed or cancelled (its on_failure task, if any, runs once); a
    #: resume puts it back to running
    FAILED = "failed"
    #: cancelled through the API: pending nodes cancelled, running ones stopped
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Dependency:
    """An edge: the child waits for the parent named by its key."""

    parent: str
    on_parent_failure: OnParentFailure = OnParentFailure.CANCEL


@dataclass(frozen=True, slots=True)
class NewNode:
    """One node of a submitted workflow: a validated task with its local key."""

    key: str
    task: NewTask
    depends_on: tuple[Dependency, ...] = ()


@dataclass(frozen=True, slots=True)
class NewWorkflow:
    """A validated workflow submission, before it is stored."""

    id: uuid.UUID
    name: str
    tenant: str
    nodes: tuple[NewNode, ...]
    dedup_key: str | None = None
    #: the task that runs once if the workflow fails; not a node (nothing waits for it)
    on_failure: NewNode | None = None


@dataclass(frozen=True, slots=True)
class WorkflowCreated:
    """What a submission did: `created` False when its dedup_key named an existing one."""

    workflow_id: uuid.UUID
    created: bool
    #: node key -> task id
    task_ids: dict[str, uuid.UUID] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Node:
    """A node as stored: its task's state and its attempts' timing."""

    key: str
    task_id: uuid.UUID
    status: str
    handler: str
    queue_name: str
    depends_on: tuple[Dependency, ...]
    attempts: int
    deps_remaining: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result: Json = None
    error: str | None = None
    cancel_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Workflow:
    id: uuid.UUID
    name: str
    tenant: str
    state: WorkflowState
    dedup_key: str | None
    open_nodes: int
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    on_failure_task_id: uuid.UUID | None = None
    cancelled_at: datetime | None = None
    cancelled_by: str | None = None
    #: every node, by key (the on_failure task last); empty in lists
    nodes: tuple[Node, ...] = ()
    #: how many nodes in each task status (lists and reads)
    counts: dict[str, int] = field(default_factory=dict)


def check_graph(nodes: Sequence[NewNode], *, max_tasks: int, field_prefix: str = "tasks",
                ) -> None:
    """Raise InvalidInput naming the first problem: too many nodes, a duplicate key, a
    dependency on an unknown key (or on itself), or a cycle (naming its keys in order).
    """
    if not nodes:
        raise InvalidInput("a workflow needs at least one task", field=field_prefix)
    if len(nodes) > max_tasks:
        raise InvalidInput(f"{len(nodes)} tasks, over limits.max_workflow_tasks ({max_tasks})",
                           field=field_prefix, code="workflow_too_large")
    index: dict[str, int] = {}
    for i, n in enumerate(nodes):
        if n.key in index:
            raise InvalidInput(f"duplicate key {n.key!r} (tasks[{index[n.key]}] and tasks[{i}])",
                               field=f"{field_prefix}.{i}.key", code="duplicate_key")
        index[n.key] = i
    for i, n in enumerate(nodes):
        seen: set[str] = set()
        for j, d in enumerate(n.depends_on):
            where = f"{field_prefix}.{i}.depends_on.{j}"
            if d.parent not in index:
                raise InvalidInput(f"tasks[{i}] ({n.key!r}) depends on unknown key {d.parent!r}",
                                   field=where, code="unknown_key")
            if d.parent == n.key:
                raise InvalidInput(f"tasks[{i}] ({n.key!r}) depends on itself",
                                   field=where, code="cycle")
            if d.parent in seen:
                raise InvalidInput(f"tasks[{i}] ({n.key!r}) names {d.parent!r} twice",
                                   field=where, code="duplicate_key")
            seen.add(d.parent)
    cycle = find_cycle(nodes)
    if cycle:
        raise InvalidInput("cycle: " + " -> ".join(cycle), field=field_prefix, code="cycle")


def find_cycle(nodes: Sequence[NewNode]) -> list[str]:
    """The keys of one cycle (first key repeated at the end), or [] if the graph is a DAG.

    Iterative depth-first search (a 10,000-node chain must not hit the recursion limit)."""
    children: dict[str, list[str]] = {n.key: [] for n in nodes}
    for n in nodes:
        for d in n.depends_on:
            children[d.parent].append(n.key)
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(children, WHITE)
    for root in children:
        if colour[root] != WHITE:
            continue
        path = [root]
        stack = [iter(children[root])]
        colour[root] = GREY
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                colour[path.pop()] = BLACK
                stack.pop()
            elif colour[nxt] == GREY:
                return [*path[path.index(nxt):], nxt]
            elif colour[nxt] == WHITE:
                colour[nxt] = GREY
                path.append(nxt)
                stack.append(iter(children[nxt]))
    return []


def roots(nodes: Sequence[NewNode]) -> list[NewNode]:
    """The nodes with no parent: queued (and dispatched) at submission."""
    return [n for n in nodes if not n.depends_on]
