"""Workflow resources: submit a graph, read it (nodes with state, attempts, timing) and
its results, list, cancel, resume. Parse, authorize, call distasks.daemon.workflows,
render."""

from __future__ import annotations

import uuid
from typing import Any

from quart import Blueprint, Response, jsonify

from distasks.api import cursor, schemas
from distasks.api.openapi import operation
from distasks.api.parse import parse_body, parse_query, read_body
from distasks.api.render import iso
from distasks.api.services import Services, actor, services, tenant
from distasks.daemon import creation
from distasks.domain import times
from distasks.domain.errors import NotFound, TooManyQueues
from distasks.domain.graph import NewWorkflow, Workflow
from distasks.domain.tenancy import shown
from distasks.store import WorkflowFilter

bp = Blueprint("workflows", __name__)


@operation(bp, "POST", "/api/v1/workflows", scope="workflows:write", tag="workflows",
           summary="Submit a workflow: a graph of tasks written in one transaction",
           body=schemas.CreateWorkflow,
           responses={201: schemas.WorkflowCreatedOut, 200: schemas.WorkflowCreatedOut},
           errors={422: "A cycle, an unknown or duplicate key, or more tasks than "
                        "limits.max_workflow_tasks (the message names it)",
                   409: "A queue_name names a new queue beyond limits.max_queues",
                   429: "Over the rate limit or a quota of the tenant"})
async def create_workflow() -> tuple[Response, int]:
    s = services()
    wf = parse_workflow(parse_body(schemas.CreateWorkflow, await read_body()), s, tenant())
    await s.admit(wf.tenant, len(wf.nodes))
    try:
        created = await s.workflows.submit(wf, actor=actor(), now=times.utc(s.clock()))
    except TooManyQueues as e:
        e.field = f"tasks.{e.index}.queue_name" if e.index < len(wf.nodes) else (
            "on_failure.queue_name")
        raise
    return jsonify({"workflow_id": str(created.workflow_id), "created": created.created,
                    "tasks": {k: str(v) for k, v in created.task_ids.items()}}), (
        201 if created.created else 200)


def parse_workflow(req: schemas.CreateWorkflow, s: Services, tenant: str) -> NewWorkflow:
    """The workflow a validated body asks for (daemon/creation.py's rules, which the
    outbox relay applies too); InvalidInput (422) naming the field of a bad task, a
    cycle, an unknown or duplicate key, or a graph over the size limit."""
    return creation.new_workflow(req, s.creation_rules(tenant), tenant=tenant,
                                 now=times.utc(s.clock()))


@operation(bp, "GET", "/api/v1/workflows", scope="workflows:read", tag="workflows",
           summary="List workflows, newest first, with filters and keyset pagination",
           query=schemas.WorkflowQuery, responses={200: schemas.WorkflowPage})
async def list_workflows() -> Response:
    q = parse_query(schemas.WorkflowQuery)
    f = WorkflowFilter(tenant=tenant(), state=q.state, name=q.name, dedup_key=q.dedup_key,
                       created_after=q.created_after, created_before=q.created_before)
    page = await services().store.list_workflows(f, limit=q.limit, after=cursor.decode(q.cursor))
    next_cursor = (cursor.encode(page[-1].created_at, page[-1].id)
                   if len(page) == q.limit else None)
    return jsonify({"workflows": [workflow_json(w) for w in page], "next_cursor": next_cursor})


@operation(bp, "GET", "/api/v1/workflows/<uuid:workflow_id>", scope="workflows:read",
           tag="workflows", summary="A workflow with every node: state, attempts, timing",
           responses={200: schemas.WorkflowDetail}, errors={404: "No such workflow"})
async def get_workflow(workflow_id: uuid.UUID) -> Response:
    wf = await services().store.get_workflow(workflow_id, tenant=tenant())
    if wf is None:
        raise NotFound(f"no workflow with id {workflow_id}")
    return jsonify({**workflow_json(wf), "nodes": [
        {"key": n.key, "task_id": str(n.task_id), "status": n.status, "handler": n.handler,
         "queue_name": shown(n.queue_name),
         "depends_on": [{"key": d.parent, "on_parent_failure": d.on_parent_failure.value}
                        for d in n.depends_on],
         "deps_remaining": n.deps_remaining, "attempts": n.attempts,
         "created_at": iso(n.created_at), "started_at": iso(n.started_at),
         "finished_at": iso(n.finished_at), "error": n.error,
         "cancel_reason": n.cancel_reason, "on_failure": n.task_id == wf.on_failure_task_id}
        for n in wf.nodes]})


@operation(bp, "GET", "/api/v1/workflows/<uuid:workflow_id>/results", scope="workflows:read",
           tag="workflows", summary="Each task's status, result and error, by key",
           responses={200: schemas.WorkflowResults}, errors={404: "No such workflow"})
async def get_results(workflow_id: uuid.UUID) -> Response:
    results = await services().store.workflow_results(workflow_id, tenant=tenant())
    if results is None:
        raise NotFound(f"no workflow with id {workflow_id}")
    return jsonify({"results": results})


@operation(bp, "POST", "/api/v1/workflows/<uuid:workflow_id>/cancel", scope="workflows:write",
           tag="workflows", summary="Cancel a workflow: pending and waiting tasks at once, "
                                    "running ones within a heartbeat",
           body_required=False, body=schemas.CancelWorkflow,
           responses={200: schemas.WorkflowChanged}, errors={404: "No such workflow"})
async def cancel_workflow(workflow_id: uuid.UUID) -> Response:
    req = parse_body(schemas.CancelWorkflow, await read_body() or b"{}")
    s = services()
    change = await s.workflows.cancel(workflow_id, tenant=tenant(), actor=actor(),
                                      reason=req.reason, now=times.utc(s.clock()))
    if change is None:
        raise NotFound(f"no workflow with id {workflow_id}")
    return jsonify({"workflow_id": str(workflow_id), "state": change.state.value,
                    "changed": change.changed})


@operation(bp, "POST", "/api/v1/workflows/<uuid:workflow_id>/resume", scope="workflows:write",
           tag="workflows", summary="Resume a failed workflow: failed tasks and those cancelled "
                                    "or skipped because of them run again",
           body_required=False, responses={200: schemas.WorkflowChanged},
           errors={404: "No such workflow"})
async def resume_workflow(workflow_id: uuid.UUID) -> Response:
    s = services()
    change = await s.workflows.resume(workflow_id, tenant=tenant(), actor=actor(),
                                      now=times.utc(s.clock()))
    if change is None:
        raise NotFound(f"no workflow with id {workflow_id}")
    return jsonify({"workflow_id": str(workflow_id), "state": change.state.value,
                    "changed": change.changed})


def workflow_json(w: Workflow) -> dict[str, Any]:
    return {"id": str(w.id), "name": w.name, "state": w.state.value, "dedup_key": w.dedup_key,
            "open_nodes": w.open_nodes, "counts": w.counts, "created_at": iso(w.created_at),
            "updated_at": iso(w.updated_at), "finished_at": iso(w.finished_at),
            "cancelled_at": iso(w.cancelled_at), "cancelled_by": w.cancelled_by}
