"""The examples as a newcomer runs them, in the order the docs give them, against one
`distasks serve`: the README's first task, the walkthrough's creates (docs/index.md), then
the Python client example (docs/client.md). Each is read from the page itself, so an
example that stops working (a dedup_key reused between two pages, say) fails here rather
than in a reader's terminal."""

from __future__ import annotations

import re
import sys

import httpx
import trio

from .conftest import REPO

# The address every example calls.
README_URL = "http://127.0.0.1:8080"


def page(path: str) -> str:
    return (REPO / path).read_text()


def section(text: str, title: str) -> str:
    """The text of the `## title` section, up to the next one."""
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def creates_in(text: str) -> list[str]:
    """The bodies of `curl … /api/v1/tasks --json '…'` in `text`, in order."""
    return re.findall(r"curl -s localhost:8080/api/v1/tasks --json '([^']*)'", text)


def walkthrough_creates() -> list[str]:
    """The README's first task, then the walkthrough's creates."""
    return (creates_in(section(page("README.md"), "A first task"))
            + creates_in(section(page("docs/index.md"), "Walkthrough")))


def python_client_example() -> str:
    """The Python client example (the block that starts with `import os`)."""
    [block] = re.findall(r"```python\n(import os\n.*?)```", page("docs/client.md"), re.DOTALL)
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
