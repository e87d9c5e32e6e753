"""What several commands share: the parent parsers (`--config`; `--url`, `--json` and
`--api-key` for the remote commands), the argument types, and where the config file is."""

from __future__ import annotations

import argparse
import json
import os
import uuid
from pathlib import Path

# Where the config is looked for when neither --config nor DISTASKS_CONFIG says.
SYSTEM_CONFIG = Path("/etc/distasks/distasks.toml")
# The remote options as argparse stores them; each is in the namespace only if given.
REMOTE_DESTS = ("url", "json", "api_key")


def config_options() -> argparse.ArgumentParser:
    """The parent parser of `--config`, which is accepted before or after the subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                        help="TOML config file (default: $DISTASKS_CONFIG, then "
                             f"{SYSTEM_CONFIG} if it exists, else built-in defaults)")
    return common


def remote_options() -> argparse.ArgumentParser:
    """The parent parser of `--url`, `--json` and `--api-key`, for the commands that talk
    to a daemon (before or after the subcommand)."""
    remote = argparse.ArgumentParser(add_help=False)
    remote.add_argument("--url", default=argparse.SUPPRESS,
                        help="the API's base URL (default: $DISTASKS_URL, then "
                             "http://127.0.0.1:8080)")
    remote.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the API's JSON instead of a table")
    remote.add_argument("--api-key", default=argparse.SUPPRESS,
                        help="the API key to call with (default: $DISTASKS_API_KEY; none: "
                             "anonymous, where the daemon allows it)")
    return remote


def remote_given(args: argparse.Namespace) -> list[str]:
    """The remote options given, as flags (`--api-key`)."""
    return [f"--{k.replace('_', '-')}" for k in REMOTE_DESTS if k in vars(args)]


def config_path(args: argparse.Namespace) -> Path | None:
    """The config file: --config, else $DISTASKS_CONFIG, else SYSTEM_CONFIG if it exists;
    None means the built-in defaults."""
    if flag := getattr(args, "config", None):
        return Path(flag)
    if env := os.environ.get("DISTASKS_CONFIG"):
        return Path(env)
    return SYSTEM_CONFIG if SYSTEM_CONFIG.exists() else None


def duration(text: str) -> float:
    """Seconds of "90d", "12h", "30m", "45s"."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    try:
        value = float(text[:-1]) * units[text[-1]]
    except (KeyError, ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90d, 12h, 30m") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("a duration must be positive")
    return value


def task_id(text: str) -> str:
    """A task id in its canonical form (lower case, with dashes)."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a task id (a UUID): {text!r}") from None


def json_value(text: str) -> object:
    """Any JSON value."""
    try:
        return json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
