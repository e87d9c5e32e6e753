"""Every command the parser declares has a handler: its module declares it with
`set_defaults(run=…)` beside the code it runs, and a command declared without one would
parse and then fail in main (issue 16)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from distasks.cli import parser


def commands(p: argparse.ArgumentParser, path: tuple[str, ...] = ()
             ) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """(command line, parser) of every command: each subparser with no subcommands."""
    groups = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        yield " ".join(path), p
    for group in groups:
        for name, sub in group.choices.items():
            yield from commands(sub, (*path, name))


def without_handler(p: argparse.ArgumentParser) -> list[str]:
    return [line for line, sub in commands(p) if not callable(sub.get_default("run"))]


def test_every_command_has_a_handler():
    declared = dict(commands(parser()))

    assert {"serve", "check-config", "task create", "dlq replay", "worker list",
            "schedules delete", "keys rotate", "outbox install"} <= declared.keys()
    assert len(declared) == 36
    assert without_handler(parser()) == []


def test_a_command_without_a_handler_is_caught():
    """The check itself: a command declared without set_defaults fails it."""
    top = parser()
    group = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    group.add_parser("forgotten")

    assert without_handler(top) == ["forgotten"]
