"""`python -m distasks task|queue|dlq|worker …` as subprocesses against `distasks serve`:
tables, --json, exit codes and one-line errors.

Commands that do not depend on each other run concurrently: each costs an interpreter
start (~0.4 s)."""

from __future__ import annotations

import json
import os
import re
import sys
import uuid
from dataclasses import dataclass

import trio

from distasks.access.principals import SCOPES

from .conftest import REPO, free_port


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> dict:
        assert self.code == 0, self.err
        return json.loads(self.out)


def cli_env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTASKS_")}
    env.update({"DISTASKS_URL": url})
    return env


async def cli(env: dict[str, str], *argvs: str) -> list[Result]:
    """Run each argv (one string, split on spaces; JSON arguments have none) at once."""
    results: list[Result | None] = [None] * len(argvs)

    async def one(i: int, argv: str) -> None:
        p = await trio.run_process([sys.executable, "-m", "distasks", *argv.split(" ")],
                                   env=env, cwd=REPO, check=False,
                                   capture_stdout=True, capture_stderr=True)
        results[i] = Result(p.returncode, p.stdout.decode(), p.stderr.decode())

    async with trio.open_nursery() as nursery:
        for i, argv in enumerate(argvs):
            nursery.start_soon(one, i, argv)
    return [r for r in results if r is not None]


def columns(table: str) -> list[dict[str, str]]:
    """Rows of an aligned table as dicts, cut at the header's column starts."""
    header, *rows = table.rstrip("\n").splitlines()
    starts = [m.start() for m in re.finditer(r"\S+(?: \S+)*", header)]
    names = [header[s:e].strip() for s, e in zip(starts, [*starts[1:], None], strict=True)]
    return [{n: row[s:e].strip() for n, s, e in zip(names, starts, [*starts[1:], None],
                                                     strict=True)}
            for row in rows if not row.startswith("(")]


async def test_task_queue_dlq_and_worker_commands(start_daemon, daemon_env):
    with trio.fail_after(40):
        async with start_daemon(daemon_env) as d:
            env = cli_env(d.url)
            missing = uuid.uuid4()
            ok, later, doomed, bad_priority, not_found, not_an_id = await cli(
                env,
                "task create email --payload {\"to\":\"a@example.com\"} --priority 2 --wait 10 --json",
                "task create later --delay 3600 --dedup-key later-1",
                "task create doomed --payload {\"always_fail\":true} --max-retries 0 --wait 10 --json",
                "task create x --priority 99999999999",
                f"task get {missing}",
                "task get not-an-id",
            )
            ok_id = ok.json()["task"]["id"]
            assert ok.json()["task"]["status"] == "completed"
            assert ok.json()["task"]["payload"] == {"to": "a@example.com"}
            assert later.code == 0 and later.err == ""
            later_id, status, created = later.out.split(" ", 2)
            assert (status, created) == ("queued", "(created)\n")
            doomed_id = doomed.json()["task"]["id"]
            assert doomed.json()["task"]["status"] == "failed"

            # Errors: one line on stderr, exit 1; usage errors exit 2 before any request.
            assert bad_priority.code == 1 and bad_priority.out == ""
            assert bad_priority.err.startswith("distasks: 422 invalid_input (priority): ")
            assert bad_priority.err.count("\n") == 1
            assert (not_found.code, not_found.err) == (
                1, f"distasks: 404 not_found: no task with id {missing}\n")
            assert not_an_id.code == 2 and "not a task id" in not_an_id.err

            detail, cancel, dedup, dlq_table, dry_run, all_json, page = await cli(
                env,
                f"task get {ok_id}",
                f"task cancel {later_id} --reason not-needed",
                "task create later --delay 3600 --dedup-key later-1",
                "dlq list default",
                "dlq replay default --dry-run",
                "task list --all --limit 1 --json",
                "task list --limit 2",
            )
            # The detail: key/value lines, then the runs table.
            head, runs = detail.out.split("\n\n")
            fields = dict(line.split(None, 1) for line in head.splitlines())
            assert (fields["id"], fields["status"], fields["payload"]) == (
                ok_id, "completed", '{"to":"a@example.com"}')
            assert [(r["ATTEMPT"], r["STATUS"]) for r in columns(runs)] == [("1", "succeeded")]
            assert cancel.out == f"{later_id} cancelled\n"
            assert dedup.out.startswith(f"{later_id} ")
            assert "(the existing task with this dedup key)" in dedup.out
            assert [(r["ID"], r["ATTEMPTS"]) for r in columns(dlq_table.out)] == [(doomed_id, "1")]
            assert "always_fail" in columns(dlq_table.out)[0]["LAST ERROR"]
            assert dry_run.out.splitlines() == [
                "would replay 1 task(s) from the DLQ of default", f"  {doomed_id}"]
            # --all follows the cursors: three tasks in pages of one.
            assert sorted(t["id"] for t in all_json.json()["tasks"]) == sorted(
                [ok_id, later_id, doomed_id])
            assert all_json.json()["next_cursor"] is None
            assert len(columns(page.out)) == 2 and "(more: --all, or --cursor " in page.out

            cancelled, cancel_again, paused, deleted, workers = await cli(
                env,
                "task list --status cancelled",
                f"task cancel {later_id}",
                "queue pause default",
                f"dlq delete default --ids {doomed_id} --json",
                "worker list",
            )
            assert [(r["ID"], r["NAME"], r["STATUS"]) for r in columns(cancelled.out)] == [
                (later_id, "later", "cancelled")]
            assert cancel_again.out == f"{later_id} not cancelled: already cancelled\n"
            assert paused.out == "queue default paused\n"
            assert deleted.json() == {"queue": "default", "deleted": 1, "task_ids": [doomed_id],
                                      "dry_run": False}
            # Every task is final by now: nothing runs.
            assert [(r["STATE"], r["QUEUES"], r["RUNNING"]) for r in columns(workers.out)] == [
                ("alive", "default", "0/4")]

            queues_json, queues_table, empty_dlq = await cli(
                env, "queue list --json", "queue list", "--json dlq list default")
            default = [q for q in queues_json.json()["queues"] if q["name"] == "default"]
            assert default[0]["paused"] is True and default[0]["paused_by"] == (
                "anonymous@127.0.0.1")
            assert [r["PAUSED"] for r in columns(queues_table.out) if r["QUEUE"] == "default"] \
                == ["yes"]
            assert empty_dlq.json()["tasks"] == []

            [resumed] = await cli(env, "queue resume default --json")
            assert resumed.json() == {"name": "default", "paused": False}

            # One after another: cli() runs the commands it is given at once.
            [limited] = await cli(env, "queue limit default --max-running 2")
            [listed] = await cli(env, "queue list --json")
            lifted, bad_limit = await cli(env, "queue limit default --max-running none --json",
                                          "queue limit default --max-running lots")
            assert limited.out == "queue default: max_running 2\n"
            assert [q["max_running"] for q in listed.json()["queues"]
                    if q["name"] == "default"] == [2]
            assert lifted.json() == {"name": "default", "max_running": None,
                                     "max_running_per_key": None,
                                     "max_starts_per_second": None, "burst": None}
            assert bad_limit.code == 2 and "a number or none" in bad_limit.err
            [keyed] = await cli(env, "queue limit default --max-running-per-key 1")
            [rated] = await cli(env, "queue limit default --max-starts-per-second 20 "
                                     "--burst 4")
            [created] = await cli(env, "task create keyed --concurrency-key customer-7 --json")
            assert keyed.out == "queue default: max_running_per_key 1\n"
            assert rated.out == ("queue default: max_running_per_key 1, "
                                 "max_starts_per_second 20.0, burst 4\n")
            assert created.code == 0


async def test_errors_without_a_daemon_and_the_daemon_commands_still_parse():
    url = f"http://127.0.0.1:{free_port()}"
    env = cli_env(url)
    with trio.fail_after(20):
        refused, refused_flag, usage, json_serve, check = await cli(
            env,
            "queue list",
            "--url http://127.0.0.1:1 task list",
            "task create x --payload {not-json",
            "--json serve",
            "check-config --config config/distasks.toml",
        )
    assert refused.code == 1 and refused.out == ""
    assert refused.err == (f"distasks: cannot reach the distasks API at {url}: connection "
                           "refused; is the daemon running there? (--url, $DISTASKS_URL)\n")
    assert refused_flag.code == 1 and "at http://127.0.0.1:1: connection refused" in refused_flag.err
    assert usage.code == 2 and "argument --payload: not JSON" in usage.err
    assert json_serve.code == 2 and "--json applies to the task, queue" in json_serve.err
    assert check.code == 0, check.err


async def test_keys_create_scope_all_grants_every_scope_its_help_offers(daemon_env):
    """`keys create --help` offers `--scope all`; argparse must take it, and the key gets
    each scope that exists when it is made, listed one by one."""
    env = {k: v for k, v in daemon_env.items() if not k.startswith("DISTASKS_")}
    config = "--config config/distasks.toml"
    with trio.fail_after(40):
        [help_text] = await cli(env, "keys create --help")
        assert help_text.code == 0, help_text.err
        assert ",all}" in "".join(help_text.out.split())  # among the choices argparse lists
        every, mixed, unknown = await cli(
            env,
            f"keys create --name ops --scope all {config}",
            f"keys create --name mixed --scope tasks:read --scope all {config}",
            f"keys create --name bad --scope tasks:everything {config}",
        )
        assert every.code == 0, every.err
        assert every.out.startswith("dtk_")
        assert f"scopes {' '.join(sorted(SCOPES))}" in every.err
        assert mixed.code == 0 and f"scopes {' '.join(sorted(SCOPES))}" in mixed.err
        assert unknown.code == 2 and "invalid choice: 'tasks:everything'" in unknown.err
        [listed] = await cli(env, f"keys list {config}")
    assert listed.code == 0, listed.err
    ops = next(line for line in listed.out.splitlines() if " ops " in f" {line} ")
    assert f"scopes={','.join(sorted(SCOPES))} " in ops


async def test_migrate_without_postgresql_says_so_in_one_line():
    """Not the exception group the bridge's loop wraps the failure in: one line, exit 1."""
    env = {**cli_env("http://127.0.0.1:1"),
           "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"}
    with trio.fail_after(30):
        [migrate] = await cli(env, "migrate --config config/distasks.toml")
    assert migrate.code == 1 and migrate.out == ""
    assert migrate.err.startswith("distasks: PostgreSQL is unavailable: ")
    assert migrate.err.count("\n") == 1, migrate.err
