"""What every command that talks to a daemon over HTTP shares: declaring a command group
with the remote options, running a handler with a distasks.client Client, printing its
table or the API's JSON (--json), and tables and cells.

An API error is one line on stderr, `distasks: 422 invalid_input (priority): …`, and exit
code 1; usage errors are argparse's (exit code 2, before anything is sent).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from distasks.client import Client, DistasksError

# Longest text shown in a table cell (errors, names); --json has it all.
MAX_CELL_CHARS = 60


@dataclass(frozen=True, slots=True)
class Output:
    #: what --json prints: the API's JSON
    json: Any
    #: what is printed otherwise
    text: str


#: one remote command: calls the API through the client, says what to print
Handler = Callable[[Client, argparse.Namespace], Output]
#: declares one command of a group: (name, help, handler) → its parser, for its arguments
Command = Callable[[str, str, Handler], argparse.ArgumentParser]


def group(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help: str,
          remote_options: argparse.ArgumentParser) -> Command:
    """Add the command group `name` (`distasks task …`); the function it returns adds one
    of its commands, which takes `remote_options` (--url, --json, --api-key) and runs
    `handler`."""
    actions = sub.add_parser(name, help=help).add_subparsers(
        dest="action", required=True, metavar="ACTION")

    def command(name: str, help: str, handler: Handler) -> argparse.ArgumentParser:
        p = actions.add_parser(name, parents=[remote_options], help=help, description=help)
        p.set_defaults(run=functools.partial(run, handler))
        return p

    return command


def run(handler: Handler, args: argparse.Namespace) -> int:
    """Run one remote command; the exit code: 0, or 1 after an API or connection error."""
    try:
        with Client(getattr(args, "url", None), api_key=getattr(args, "api_key", None)) as client:
            out = handler(client, args)
        if getattr(args, "json", False):
            print(json.dumps(out.json, indent=2, ensure_ascii=False))
        elif out.text:
            print(out.text)
    except DistasksError as e:
        hint = "; is the daemon running there? (--url, $DISTASKS_URL)"
        print(f"distasks: {e}{hint if e.code == 'unreachable' else ''}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `distasks task list --all | head`: the reader left; say nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def fields_text(fields: Iterable[tuple[str, Any]]) -> str:
    """`name  value` lines, values aligned, for the fields that are not None."""
    shown = [(k, v) for k, v in fields if v is not None]
    width = max(len(k) for k, _ in shown)
    return "\n".join(f"{k.ljust(width)}  {cell(v, limit=200)}" for k, v in shown)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, empty: str) -> str:
    """Aligned columns under a header, or `empty` when there are no rows."""
    cells = [[cell(v) for v in row] for row in rows]
    if not cells:
        return f"({empty})"
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = [headers, *cells]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def cell(value: Any, *, limit: int = MAX_CELL_CHARS) -> str:
    """One value as table text: instants in UTC to the second, JSON compact, one line."""
    if value is None:
        text = "-"
    elif isinstance(value, datetime):
        text = value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"
