"""`distasks worker list`: the daemons and what they run, through the daemon's API."""

from __future__ import annotations

import argparse

from distasks.cli import remote
from distasks.cli.remote import Output, table
from distasks.client import Client

COMMAND = "worker"


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                 remote_options: argparse.ArgumentParser) -> None:
    command = remote.group(sub, COMMAND, "daemons and what they run", remote_options)
    command("list", "daemons, alive and recently stopped", worker_list)


def worker_list(c: Client, a: argparse.Namespace) -> Output:
    workers = c.workers()
    rows = [(w.id, "alive" if w.alive else "stopped" if w.stopped_at else "silent",
             ",".join(w.queues), f"{len(w.running)}/{w.concurrency}", w.version, w.started_at,
             w.heartbeat_at) for w in workers]
    return Output({"workers": [w.raw for w in workers]},
                  table(("ID", "STATE", "QUEUES", "RUNNING", "VERSION", "STARTED",
                         "HEARTBEAT"), rows, empty="no workers"))
