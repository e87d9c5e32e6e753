"""The README's examples as a newcomer runs them, in the README's order, against one
`distasks serve`: the walkthrough's creates, then the Python client example. Each is read
from README.md itself, so an example that stops working (a dedup_key reused between two
sections, say) fails here rather than in a reader's terminal."""

from __future__ import annotations

import re
import sys

import httpx
import trio

from .conftest import REPO

README = (REPO / "README.md").read_text()
# The address every README example calls.
README_URL = "http://127.0.0.1:8080"


def section(title: str) -> str:
    """The text of the `## title` section, up to the next one."""
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else None]


def walkthrough_creates() -> list[str]:
    """The bodies of the walkthrough's `curl … /api/v1/tasks --json '…'`, in order."""
    return re.findall(r"curl -s localhost:8080/api/v1/tasks --json '([^']*)'",
                      section("Walkthrough"))


def python_client_example() -> str:
    """The Python client example (the block that starts with `import os`)."""
    [block] = re.findall(r"```python\n(import os\n.*?)```", section("Command line and Python client"),
                         re.DOTALL)
    return block


async def test_walkthrough_then_python_client_example_work_in_order(start_daemon, daemon_env):
    creates = walkthrough_creates()
    assert len(creates) >= 6  # the parse found the walkthrough, not nothing
    example = python_client_example().replace(README_URL, "{url}")
    assert "{url}" in example
    with trio.fail_after(90):
        async with start_daemon(daemon_env) as d, httpx.AsyncClient(base_url=d.url) as client:
            for body in creates:
                r = await client.post("/api/v1/tasks", content=body,
                                      headers={"Content-Type": "application/json"})
                assert r.status_code in (200, 201), (body, r.text)
            # The blocking half runs as written; then the async main() it defines, under Trio.
            script = example.replace("{url}", d.url) + "\nimport trio\ntrio.run(main)\n"
            done = await trio.run_process(
                [sys.executable, "-c", script], cwd=REPO, check=False, capture_stdout=True,
                capture_stderr=True, env={**daemon_env, "DISTASKS_URL": d.url})
            assert done.returncode == 0, done.stderr.decode()
            assert done.stdout.decode().startswith("completed ")
