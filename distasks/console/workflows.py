"""The console's workflow pages: the list, a workflow with its graph and nodes, and its
cancel and resume, which go through the API's operation (daemon.workflows, which audits
with the visitor's principal as the actor)."""

from __future__ import annotations

import uuid
from typing import Any

from quart import redirect, render_template, url_for

from distasks.api import cursor
from distasks.api.services import actor, services, tenant
from distasks.console import workflow_graph
from distasks.console.blueprint import page
from distasks.console.pages import PAGE_ROWS, REFRESH_S, _instant, _kept, _text
from distasks.domain import times
from distasks.domain.errors import InvalidInput, NotFound
from distasks.domain.graph import WorkflowState
from distasks.domain.tenancy import shown
from distasks.store import WorkflowFilter

# Rows of a large workflow's node table on one page (a drawn one lists all its nodes).
NODE_ROWS = 100


def workflow_filter() -> WorkflowFilter:
    """The list's filters, as GET /api/v1/workflows takes them."""
    state = _text("state")
    if state is not None and state not in {x.value for x in WorkflowState}:
        raise InvalidInput(f"state {state!r} is not a workflow state", field="state")
    return WorkflowFilter(tenant=tenant(), state=state, name=_text("name"),
                          dedup_key=_text("dedup_key"), created_after=_instant("created_after"),
                          created_before=_instant("created_before"))


@page("/workflows", "workflows:read")
async def workflow_list() -> str:
    """One keyset page of the tenant's workflows, newest first: one query (no node
    counts: each row says how many nodes are still open)."""
    s = services()
    found = await s.store.list_workflows(workflow_filter(), limit=PAGE_ROWS,
                                         after=cursor.decode(_text("cursor")),
                                         with_counts=False)
    next_cursor = (cursor.encode(found[-1].created_at, found[-1].id)
                   if len(found) == PAGE_ROWS else None)
    return await render_template("console/workflows.html", workflows=found,
                                 next_cursor=next_cursor, args=_kept(),
                                 states=[x.value for x in WorkflowState])


@page("/workflows/<uuid:workflow_id>", "workflows:read")
async def workflow(workflow_id: uuid.UUID) -> str:
    """The workflow, its graph (drawn up to workflow_graph.MAX_DRAWN_NODES nodes, else
    counted per depth) and a table of its nodes: three queries, none reading results."""
    s = services()
    found = await s.store.workflow_graph(workflow_id, tenant=tenant())
    if found is None:
        raise NotFound(f"no workflow with id {workflow_id}")
    wf, rows = found
    nodes = [workflow_graph.GraphNode(key=key, status=status, task_id=str(tid),
                                      parents=tuple(parents),
                                      on_failure=tid == wf.on_failure_task_id)
             for tid, key, status, parents in rows]
    depth = workflow_graph.depths(nodes)
    drawing = workflow_graph.draw(nodes, depth)
    order = workflow_graph.ordered(nodes, depth)
    start = 0
    if drawing is None:
        given = _text("start") or "0"
        if not given.isdigit():
            raise InvalidInput("start is not one this page gave out", field="start")
        start = min(int(given), max(len(order) - 1, 0))
        shown_nodes = order[start:start + NODE_ROWS]
    else:
        shown_nodes = order
    details = {n.task_id: n for n in await s.store.workflow_nodes(
        workflow_id, [uuid.UUID(n.task_id) for n in shown_nodes])}
    table = [(n, depth[n.key], details.get(uuid.UUID(n.task_id))) for n in shown_nodes]
    final = wf.state != WorkflowState.RUNNING
    return await render_template(
        "console/workflow.html", workflow=wf, drawing=drawing, table=table,
        per_depth=workflow_graph.counts_by_depth(nodes, depth), node_count=len(nodes),
        max_drawn=workflow_graph.MAX_DRAWN_NODES, start=start, node_rows=NODE_ROWS,
        next_start=start + NODE_ROWS if drawing is None and start + NODE_ROWS < len(order)
        else None, prev_start=max(start - NODE_ROWS, 0) if start else None,
        shown=shown, refresh_s=None if final else REFRESH_S)


@page("/workflows/<uuid:workflow_id>/cancel", "workflows:write", methods=("POST",))
async def cancel_workflow(workflow_id: uuid.UUID) -> Any:
    """As POST /api/v1/workflows/<id>/cancel: pending and waiting nodes at once, running
    ones within a heartbeat. A finished workflow is left as it is."""
    s = services()
    change = await s.workflows.cancel(workflow_id, tenant=tenant(), actor=actor(),
                                      reason="cancelled from the console",
                                      now=times.utc(s.clock()))
    if change is None:
        raise NotFound(f"no workflow with id {workflow_id}")
    return redirect(url_for("console.workflow", workflow_id=workflow_id), 303)


@page("/workflows/<uuid:workflow_id>/resume", "workflows:write", methods=("POST",))
async def resume_workflow(workflow_id: uuid.UUID) -> Any:
    """As POST /api/v1/workflows/<id>/resume: a failed workflow's failed nodes, and those
    cancelled or skipped because of them, run again. Any other state is left as it is."""
    s = services()
    change = await s.workflows.resume(workflow_id, tenant=tenant(), actor=actor(),
                                      now=times.utc(s.clock()))
    if change is None:
        raise NotFound(f"no workflow with id {workflow_id}")
    return redirect(url_for("console.workflow", workflow_id=workflow_id), 303)
