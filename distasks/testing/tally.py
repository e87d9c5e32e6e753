"""The tally of a fault run: what happened to every accepted task, from the handlers'
execution log and PostgreSQL: lost, unrecorded, duplicated, and how each ended."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psycopg

from distasks.testing.workload import FINAL_STATUSES


@dataclass(frozen=True)
class Execution:
    task_id: str
    attempt: int
    run_id: str
    pid: int



def read_executions(path: Path) -> list[Execution]:
    """The chaos handler's log: one line per handler start."""
    out = []
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[1].isdigit() and parts[3].isdigit():
            out.append(Execution(parts[0], int(parts[1]), parts[2], int(parts[3])))
    return out



@dataclass
class Tally:
    """One fault run, counted.

    - completed: accepted tasks with status `completed`.
    - lost: accepted tasks missing in PostgreSQL, not final at the end of the wait, or
      final without a succeeded run.
    - executions: handler starts of accepted tasks (the chaos log).
    - duplicated: accepted tasks whose handler started more than once.
    - unrecorded: re-executions that are not a separate attempt on record: a second start
      with the same (task_id, attempt), or a start whose run is not that task's run of
      that attempt in PostgreSQL. Must be 0 (architecture §5.2).
    - taken_over: runs ended with an error containing `lease_expired`.
    - interrupted: runs handed back by a shutdown.
    - resume_s: from the fault to the first success of a run that started after it: how
      long until new work completes again.
    - settle_s: from the fault to the moment the last task accepted before it is final:
      how long until the backlog at the fault, interrupted work included, is done. It
      includes ordinary processing of that backlog; bench/chaos.py's `none` row gives the
      same figure without a fault.
    """

    accepted: int = 0
    completed: int = 0
    lost: int = 0
    not_final: int = 0
    final_without_success: int = 0
    missing: int = 0
    executions: int = 0
    duplicated: int = 0
    unrecorded: int = 0
    taken_over: int = 0
    interrupted: int = 0
    run_statuses: Counter[str] = field(default_factory=Counter)
    resume_s: float | None = None
    settle_s: float | None = None
    examples: list[str] = field(default_factory=list)



TASKS_OF = "SELECT id::text, status, finished_at FROM tasks WHERE id = ANY(%s::uuid[])"


TASKS_OF = "SELECT id::text, status, finished_at FROM tasks WHERE id = ANY(%s::uuid[])"
RUNS_OF = """
SELECT task_id::text, attempt, id::text, status, coalesce(error, ''), started_at, finished_at
FROM task_runs WHERE task_id = ANY(%s::uuid[])
"""



def tally(dsn: str, accepted: dict[str, float], chaos_log: Path,
          fault_at: float | None) -> Tally:
    """Count one run from PostgreSQL and the chaos log (blocking)."""
    ids = list(accepted)
    with psycopg.connect(dsn, autocommit=True) as conn:
        tasks = {tid: (status, finished)
                 for tid, status, finished in conn.execute(TASKS_OF, (ids,)).fetchall()}
        runs = conn.execute(RUNS_OF, (ids,)).fetchall()
    t = Tally(accepted=len(ids))
    succeeded: set[str] = set()
    run_of: dict[str, tuple[str, int]] = {}
    for task_id, attempt, run_id, status, error, _started, _finished in runs:
        run_of[run_id] = (task_id, attempt)
        t.run_statuses[status] += 1
        if status == "succeeded":
            succeeded.add(task_id)
        if "lease_expired" in error:
            t.taken_over += 1
        if status == "interrupted":
            t.interrupted += 1
    for tid in ids:
        if tid not in tasks:
            t.missing += 1
            t.examples.append(f"missing: {tid}")
            continue
        status, _ = tasks[tid]
        if status == "completed":
            t.completed += 1
        if status not in FINAL_STATUSES:
            t.not_final += 1
            if len(t.examples) < 5:
                t.examples.append(f"not final: {tid} ({status})")
        elif tid not in succeeded:
            t.final_without_success += 1
            if len(t.examples) < 5:
                t.examples.append(f"final without a succeeded run: {tid} ({status})")
    t.lost = t.missing + t.not_final + t.final_without_success

    executions = [e for e in read_executions(chaos_log) if e.task_id in accepted]
    t.executions = len(executions)
    per_task = Counter(e.task_id for e in executions)
    t.duplicated = sum(1 for n in per_task.values() if n > 1)
    per_attempt = Counter((e.task_id, e.attempt) for e in executions)
    t.unrecorded = sum(n - 1 for n in per_attempt.values() if n > 1)
    for e in executions:
        if run_of.get(e.run_id) != (e.task_id, e.attempt):
            t.unrecorded += 1
            if len(t.examples) < 10:
                t.examples.append(f"execution not on record: {e}")
    for (tid, attempt), n in per_attempt.items():
        if n > 1 and len(t.examples) < 10:
            t.examples.append(f"attempt {attempt} of {tid} executed {n} times")

    if fault_at is not None:
        resumed = [f.timestamp() for (_t, _a, _r, status, _e, s, f) in runs
                   if status == "succeeded" and s is not None and f is not None
                   and s.timestamp() >= fault_at]
        t.resume_s = min(resumed) - fault_at if resumed else None
        backlog = [tid for tid, at in accepted.items() if at < fault_at]
        ends: list[datetime | None] = [tasks.get(tid, (None, None))[1] for tid in backlog]
        if all(end is not None for end in ends):
            last = max((end.timestamp() for end in ends if end is not None), default=fault_at)
            t.settle_s = max(0.0, last - fault_at)
    return t
