"""scripts/services.sh's .local/services.env, as `make` sources it: it supplies defaults
for the servers it found, and a variable the user set wins (two checkouts must not share
one database and Redis DB behind their owners' backs).

The file is written by the script's own write_env into a temporary directory, then sourced
by bash the way the Makefile does; no server is needed."""

from __future__ import annotations

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "services.sh"
VARIABLES = ("DISTASKS_PG_ADMIN_DSN", "DATABASE_URL", "REDIS_URL")


def write_env(local: Path) -> Path:
    """services.env as services.sh writes it for servers on ports 5432 and 6379."""
    subprocess.run(
        # $0 is not the script, so sourcing it defines its functions and runs nothing.
        ["bash", "-c", '. "$1" && LOCAL=$2 ENV_FILE=$2/services.env PG_PORT=5432 '
         'REDIS_PORT=6379 write_env', "bash", str(SCRIPT), str(local)],
        check=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
    return local / "services.env"


def sourced(env_file: Path, preset: dict[str, str]) -> dict[str, str]:
    """The three variables after `. env_file`, in a shell whose environment is `preset`."""
    done = subprocess.run(
        ["bash", "-c", '. "$0" && for v in "$@"; do printf "%s=%s\\n" "$v" "${!v-}"; done',
         str(env_file), *VARIABLES],
        check=True, timeout=30, capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", **preset})
    return dict(line.split("=", 1) for line in done.stdout.splitlines())


def test_the_env_file_gives_the_found_servers_when_nothing_is_set(tmp_path):
    assert sourced(write_env(tmp_path), {}) == {
        "DISTASKS_PG_ADMIN_DSN": "host=127.0.0.1 port=5432 user=postgres dbname=postgres",
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/distasks",
        "REDIS_URL": "redis://127.0.0.1:6379/0",
    }


def test_a_variable_the_user_set_wins_over_the_env_file(tmp_path):
    env_file = write_env(tmp_path)
    mine = {"DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/distasks_b",
            "REDIS_URL": "redis://127.0.0.1:6379/3"}
    got = sourced(env_file, mine)
    assert got["DATABASE_URL"] == mine["DATABASE_URL"]
    assert got["REDIS_URL"] == mine["REDIS_URL"]
    assert got["DISTASKS_PG_ADMIN_DSN"] == "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
    admin = "host=db.example port=5432 user=postgres dbname=postgres"
    assert sourced(env_file, {"DISTASKS_PG_ADMIN_DSN": admin})["DISTASKS_PG_ADMIN_DSN"] == admin


def test_the_defaults_are_exported_to_the_commands_make_runs(tmp_path):
    """`make run` execs the daemon after sourcing: the values must be in its environment,
    not only shell variables."""
    done = subprocess.run(
        ["bash", "-c", '. "$0" && exec env', str(write_env(tmp_path))],
        check=True, timeout=30, capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "REDIS_URL": "redis://127.0.0.1:6379/3"})
    exported = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    assert exported["DATABASE_URL"] == "postgresql://postgres@127.0.0.1:5432/distasks"
    assert exported["REDIS_URL"] == "redis://127.0.0.1:6379/3"
    assert "DISTASKS_PG_ADMIN_DSN" in exported
