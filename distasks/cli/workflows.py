"""`distasks workflow submit|chain|fan|get|results|list|cancel|resume`: workflows through
the daemon's API."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from distasks.cli import options, remote
from distasks.cli.remote import Output, fields_text, table
from distasks.client import Client, TaskSpec, Workflow, chain, fan_out_fan_in

COMMAND = "workflow"
WORKFLOW_STATES = ("running", "succeeded", "failed", "cancelled")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                 remote_options: argparse.ArgumentParser) -> None:
    command = remote.group(sub, COMMAND, "submit, inspect, cancel and resume workflows",
                           remote_options)
    p = command("submit", "submit a workflow from a JSON file (the API's body)", wf_submit)
    p.add_argument("file", help="path, or - for standard input")
    p.add_argument("--wait", type=float, metavar="S",
                   help="then wait up to S seconds for it to finish and show it")
    p = command("chain", "submit tasks that run one after the other", wf_chain)
    p.add_argument("name")
    p.add_argument("handlers", nargs="+", metavar="HANDLER", help="one task per handler, in order")
    p.add_argument("--payload", type=options.json_value, metavar="JSON",
                   help="the payload of every task")
    p.add_argument("--queue")
    p.add_argument("--dedup-key", metavar="KEY")
    p.add_argument("--wait", type=float, metavar="S")
    p = command("fan", "submit first, COUNT parts at once, then last (fan-out/fan-in)", wf_fan)
    p.add_argument("name")
    p.add_argument("--first", required=True, metavar="HANDLER")
    p.add_argument("--part", required=True, metavar="HANDLER")
    p.add_argument("--last", required=True, metavar="HANDLER")
    p.add_argument("--count", type=int, required=True, metavar="N",
                   help="parts; part i gets the payload {\"part\": i}")
    p.add_argument("--queue")
    p.add_argument("--on-parent-failure", choices=("cancel", "continue", "skip"),
                   help="what last does if a part fails (default: cancel)")
    p.add_argument("--dedup-key", metavar="KEY")
    p.add_argument("--wait", type=float, metavar="S")
    p = command("get", "show a workflow and its tasks", wf_get)
    p.add_argument("id", type=options.task_id)
    p.add_argument("--wait", type=float, metavar="S",
                   help="wait up to S seconds for it to finish first")
    p = command("results", "each task's result, by key", wf_results)
    p.add_argument("id", type=options.task_id)
    p = command("list", "list workflows, newest first", wf_list)
    p.add_argument("--state", choices=WORKFLOW_STATES)
    p.add_argument("--name")
    p.add_argument("--limit", type=int, default=50, metavar="N")
    p.add_argument("--cursor", help="continue after a previous page")
    p = command("cancel", "cancel every unfinished task of a workflow", wf_cancel)
    p.add_argument("id", type=options.task_id)
    p.add_argument("--reason")
    p = command("resume", "run a failed workflow's failed tasks again", wf_resume)
    p.add_argument("id", type=options.task_id)


def wf_submit(c: Client, a: argparse.Namespace) -> Output:
    text = sys.stdin.read() if a.file == "-" else open(a.file, encoding="utf-8").read()
    try:
        body: Any = json.loads(text)
    except ValueError as e:
        raise SystemExit(f"distasks: {a.file}: not JSON: {e}") from None
    if not isinstance(body, dict):
        raise SystemExit(f"distasks: {a.file}: not a JSON object")
    on_failure = body.get("on_failure")
    created = c.submit_workflow(body.get("name", ""), body.get("tasks", []),
                                dedup_key=body.get("dedup_key"),
                                on_failure=TaskSpec(**_spec_args(on_failure))
                                if isinstance(on_failure, dict) else None)
    return _created(c, created.workflow_id, created.created, created.raw, a.wait)


def _spec_args(body: dict[str, Any]) -> dict[str, Any]:
    """TaskSpec's arguments from an API task body."""
    args = {k: v for k, v in body.items() if k not in ("key", "queue_name")}
    if "queue_name" in body:
        args["queue"] = body["queue_name"]
    return args


def wf_chain(c: Client, a: argparse.Namespace) -> Output:
    specs = [TaskSpec(name=f"{a.name}-{i}", handler=h, payload=a.payload, queue=a.queue)
             for i, h in enumerate(a.handlers)]
    created = c.submit_workflow(a.name, chain(*specs), dedup_key=a.dedup_key)
    return _created(c, created.workflow_id, created.created, created.raw, a.wait)


def wf_fan(c: Client, a: argparse.Namespace) -> Output:
    tasks = fan_out_fan_in(
        TaskSpec(name=f"{a.name}-first", handler=a.first, queue=a.queue),
        [TaskSpec(name=f"{a.name}-part{i}", handler=a.part, payload={"part": i}, queue=a.queue)
         for i in range(a.count)],
        TaskSpec(name=f"{a.name}-last", handler=a.last, queue=a.queue),
        on_parent_failure=a.on_parent_failure)
    created = c.submit_workflow(a.name, tasks, dedup_key=a.dedup_key)
    return _created(c, created.workflow_id, created.created, created.raw, a.wait)


def _created(c: Client, workflow_id: str, created: bool, raw: Any, wait: float | None) -> Output:
    if wait is not None:
        return _detail(_waited(c, workflow_id, wait))
    how = "created" if created else "the existing workflow with this dedup key"
    return Output(raw, f"{workflow_id} ({how})")


def _waited(c: Client, workflow_id: str, timeout: float) -> Workflow:
    try:
        return c.wait_workflow(workflow_id, timeout=timeout)
    except TimeoutError:
        return c.workflow(workflow_id)


def wf_get(c: Client, a: argparse.Namespace) -> Output:
    return _detail(_waited(c, a.id, a.wait) if a.wait is not None else c.workflow(a.id))


def wf_results(c: Client, a: argparse.Namespace) -> Output:
    results = c.workflow_results(a.id)
    return Output({"results": results},
                  table(("KEY", "RESULT"), sorted(results.items()), empty="no tasks"))


def wf_list(c: Client, a: argparse.Namespace) -> Output:
    page = c.workflows(state=a.state, name=a.name, limit=a.limit, cursor=a.cursor)
    text = table(("ID", "NAME", "STATE", "OPEN", "CREATED", "FINISHED"),
                 [(w.id, w.name, w.state, w.open_nodes, w.created_at, w.finished_at)
                  for w in page.workflows], empty="no workflows")
    if page.next_cursor:
        text += f"\n(more: --cursor {page.next_cursor})"
    return Output(page.raw, text)


def wf_cancel(c: Client, a: argparse.Namespace) -> Output:
    done = c.cancel_workflow(a.id, reason=a.reason)
    text = (f"{done.workflow_id} cancelled" if done.changed
            else f"{done.workflow_id} not cancelled: already {done.state}")
    return Output(done.raw, text)


def wf_resume(c: Client, a: argparse.Namespace) -> Output:
    done = c.resume_workflow(a.id)
    text = (f"{done.workflow_id} resumed" if done.changed
            else f"{done.workflow_id} not resumed: it is {done.state}, not failed")
    return Output(done.raw, text)


def _detail(w: Workflow) -> Output:
    text = fields_text([
        ("id", w.id), ("name", w.name), ("state", w.state), ("dedup_key", w.dedup_key),
        ("tasks", ", ".join(f"{n} {s}" for s, n in sorted(w.counts.items()))),
        ("created", w.created_at), ("finished", w.finished_at),
        ("cancelled", w.cancelled_at and f"by {w.cancelled_by}"),
    ])
    nodes = table(("KEY", "STATUS", "ATTEMPTS", "WAITS FOR", "STARTED", "FINISHED",
                   "ERROR/REASON"),
                  [(n.key + (" (on_failure)" if n.on_failure else ""), n.status, n.attempts,
                    ",".join(d["key"] for d in n.depends_on) or None, n.started_at,
                    n.finished_at, n.error or n.cancel_reason) for n in w.nodes],
                  empty="no tasks")
    return Output(w.raw, text + "\n\n" + nodes)
