"""Property-based fuzzing of the live daemon from its own OpenAPI document, with every
check schemathesis has: no 500s, every response matches the documented schema and status
codes, unsupported methods answer 405 with Allow, requests that break the schema are
refused, and requests that keep to it are accepted (the document says exactly what the
server takes: registered handlers, each handler's payloads, the run_at/delay_seconds
rules of each task type, no NUL characters). The daemon needs a key for every call, as in
production, so that the authentication checks run too: schemathesis calls with a key
that has every scope, and without one or with a bad one where it checks that they fail."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import trio

from distasks.access.principals import SCOPES

from .test_access import keys_cli

# Integers spelled as integers in generated bodies: why, in the module.
HOOKS = Path(__file__).with_name("schemathesis_hooks.py")
# Fixed, so that a failure in CI reproduces; `make fuzz` sets a new one each time.
SEED = os.environ.get("DISTASKS_FUZZ_SEED", "40696411300829867729892084821608982224")
MAX_EXAMPLES = os.environ.get("DISTASKS_FUZZ_EXAMPLES", "30")
# Only the operations whose id matches this regular expression (all by default), to look
# at one resource closely: `DISTASKS_FUZZ_OPERATIONS=schedules`.
OPERATIONS = os.environ.get("DISTASKS_FUZZ_OPERATIONS")
# The longest long poll GET /api/v1/tasks/{id}?wait= allows.
MAX_WAIT_S = 60


async def test_the_live_daemon_keeps_to_its_openapi_document_under_every_check(start_daemon, daemon_env):
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert cli, "schemathesis is part of the test extra"
    env = {**daemon_env, "DISTASKS_AUTH_ANONYMOUS": "none", "DISTASKS_AUTH_METRICS_NETWORKS": ""}
    token = await trio.to_thread.run_sync(
        lambda: keys_cli(env, "create", "--name", "fuzz",
                         *(arg for scope in SCOPES for arg in ("--scope", scope))))
    with trio.fail_after(240):
        async with start_daemon(env) as d:
            result = await trio.run_process(
                [cli, "run", f"{d.url}/openapi.json", "--checks", "all",
                 "--header", f"Authorization: Bearer {token}",
                 # A long poll (?wait=, up to 60 s) may take that long, by design.
                 "--max-response-time", str(MAX_WAIT_S + 5), "--max-examples", MAX_EXAMPLES,
                 "--workers", "1", "--request-timeout", "70", "--seed", SEED,
                 "--phases", "examples,coverage,fuzzing",
                 *(["--include-operation-id-regex", OPERATIONS] if OPERATIONS else [])],
                capture_stdout=True, stderr=subprocess.STDOUT, check=False,
                env={**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS)})
    output = result.stdout.decode(errors="replace")
    if os.environ.get("DISTASKS_FUZZ_SHOW"):  # the whole report, warnings too (with -s)
        print(output)
    assert result.returncode == 0, output[-6000:]
    assert "No issues found" in output, output[-3000:]
