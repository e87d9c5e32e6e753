"""distasks.handlers: the `demo` handler and the registry of handlers by name."""

from __future__ import annotations

import itertools
import sys
import textwrap
import uuid
from datetime import UTC, datetime

import pytest
import trio

from distasks.domain.model import Json, Task, TaskStatus, TaskType
from distasks.handlers import DemoFailure, Registry, TaskContext, builtin_registry, demo

NOW = datetime(2024, 1, 1, tzinfo=UTC)


def context(priority: int = 0, payload: Json = None, attempt: int = 1) -> TaskContext:
    payload = {} if payload is None else payload
    task = Task(
        id=uuid.uuid4(), name="t", handler="demo", type=TaskType.IMMEDIATE,
        queue_name="default", priority=priority, payload=payload, dedup_key=None,
        max_retries=3, timeout_s=None, status=TaskStatus.QUEUED, failures=attempt - 1,
        run_at=None, created_at=NOW, updated_at=NOW, finished_at=None,
    )
    return TaskContext(task=task, payload=payload, attempt=attempt, run_id=uuid.uuid4())


# --- demo --------------------------------------------------------------------------------


@pytest.mark.parametrize("priority", [1, 3, -1, 2**31 - 1])
async def test_demo_odd_priority_fails_on_the_first_attempt(priority):
    with pytest.raises(DemoFailure, match="odd priority"):
        await demo(context(priority=priority, attempt=1))


@pytest.mark.parametrize("priority", [0, 2, -2])
async def test_demo_even_priority_succeeds_on_the_first_attempt(priority):
    assert await demo(context(priority=priority)) == {"ok": True, "attempt": 1}


async def test_demo_odd_priority_succeeds_on_the_second_attempt():
    assert await demo(context(priority=1, attempt=2)) == {"ok": True, "attempt": 2}


async def test_demo_skip_fail_true_lets_odd_priority_succeed_on_the_first_attempt():
    assert await demo(context(priority=1, payload={"skip_fail": True})) == {
        "ok": True, "attempt": 1}


@pytest.mark.parametrize("skip_fail", [False, "true", 1, None])
async def test_demo_skip_fail_must_be_exactly_true(skip_fail):
    with pytest.raises(DemoFailure):
        await demo(context(priority=1, payload={"skip_fail": skip_fail}))


@pytest.mark.parametrize("payload", [[1, 2], "text", 7, None])
async def test_demo_ignores_a_payload_that_is_not_an_object(payload):
    ctx = context(priority=2)
    ctx = TaskContext(task=ctx.task, payload=payload, attempt=1, run_id=ctx.run_id)

    assert await demo(ctx) == {"ok": True, "attempt": 1}


@pytest.mark.parametrize(("priority", "attempt"), [(0, 1), (1, 2), (2, 5)])
async def test_demo_always_fail_fails_every_attempt(priority, attempt):
    ctx = context(priority=priority, attempt=attempt,
                  payload={"always_fail": True, "skip_fail": True})

    with pytest.raises(DemoFailure, match=f"always_fail \\(attempt {attempt}\\)"):
        await demo(ctx)


async def test_demo_sleep_seconds_sleeps_before_answering(autojump_clock):
    start = trio.current_time()

    result = await demo(context(priority=2, payload={"sleep_seconds": 30}))

    assert trio.current_time() - start == pytest.approx(30)
    assert result == {"ok": True, "attempt": 1}


async def test_demo_sleep_seconds_sleeps_before_failing(autojump_clock):
    start = trio.current_time()

    with pytest.raises(DemoFailure):
        await demo(context(priority=1, payload={"sleep_seconds": 2.5}))

    assert trio.current_time() - start == pytest.approx(2.5)


@pytest.mark.parametrize("sleep_seconds", [0, -5, "10"])
async def test_demo_ignores_a_sleep_that_is_not_a_positive_number(autojump_clock, sleep_seconds):
    start = trio.current_time()

    await demo(context(priority=2, payload={"sleep_seconds": sleep_seconds}))

    assert trio.current_time() == start


async def test_demo_sleep_is_cancellable(autojump_clock):
    with trio.move_on_after(1) as scope:
        await demo(context(priority=2, payload={"sleep_seconds": 3600}))

    assert scope.cancelled_caught


# --- the registry ------------------------------------------------------------------------


def test_builtin_registry_has_demo_and_noop_as_async_handlers():
    registry = builtin_registry()

    assert list(registry) == ["demo", "noop"]
    assert registry.get("demo").fn is demo
    assert registry.get("demo").is_async
    assert "noop" in registry
    assert registry.get("missing") is None
    assert "missing" not in registry


def test_registry_records_whether_a_handler_is_async():
    registry = Registry()

    async def async_fn(ctx):
        return None

    def sync_fn(ctx):
        return None

    registry.add("a", async_fn)
    registry.add("s", sync_fn)

    assert registry.get("a").is_async
    assert not registry.get("s").is_async


def test_adding_a_name_twice_raises_value_error():
    registry = builtin_registry()

    with pytest.raises(ValueError, match="'demo'"):
        registry.add("demo", lambda ctx: None)


_module_numbers = itertools.count()


@pytest.fixture
def write_module(tmp_path, monkeypatch):
    """Write a uniquely named module on a temporary sys.path entry; returns its name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written: list[str] = []

    def write(source: str) -> str:
        name = f"distasks_test_handlers_{next(_module_numbers)}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)


USER_MODULE = """
    import distasks
    from distasks import handler

    @distasks.handler()
    async def resize(ctx):
        return {"resized": ctx.payload}

    @handler("send-email")
    def send(ctx):
        return "sent"

    def not_a_handler(ctx):
        return None

    HELPER_CONSTANT = 3
"""


def test_add_module_registers_every_marked_function_and_nothing_else(write_module):
    name = write_module(USER_MODULE)
    registry = Registry()

    assert registry.add_module(name) == 2

    assert list(registry) == ["resize", "send-email"]
    assert registry.get("resize").is_async
    assert not registry.get("send-email").is_async
    assert registry.get("send-email").fn.__name__ == "send"


def test_builtin_registry_adds_the_configured_modules(write_module):
    name = write_module(USER_MODULE)

    assert list(builtin_registry((name,))) == ["demo", "noop", "resize", "send-email"]


async def test_a_registered_module_handler_runs_with_its_context(write_module):
    registry = Registry()
    registry.add_module(write_module(USER_MODULE))

    assert await registry.get("resize").fn(context(payload={"w": 10})) == {"resized": {"w": 10}}


def test_module_handler_clashing_with_a_builtin_raises_value_error(write_module):
    name = write_module("""
        import distasks

        @distasks.handler("demo")
        async def my_demo(ctx):
            return None
    """)

    with pytest.raises(ValueError, match="'demo'"):
        builtin_registry((name,))


def test_two_functions_marked_with_one_name_raise_value_error(write_module):
    name = write_module("""
        import distasks

        @distasks.handler("same")
        async def one(ctx):
            return None

        @distasks.handler("same")
        async def two(ctx):
            return None
    """)

    with pytest.raises(ValueError, match="'same'"):
        Registry().add_module(name)


def test_add_module_of_an_unknown_module_raises_import_error():
    with pytest.raises(ImportError):
        Registry().add_module("distasks_test_no_such_module")


def test_bare_handler_decorator_registers_the_function_under_its_name(write_module):
    name = write_module("""
        import distasks

        @distasks.handler
        async def resize(ctx):
            return "resized"
    """)
    registry = Registry()

    assert registry.add_module(name) == 1
    assert list(registry) == ["resize"]


@pytest.mark.parametrize("url", ["http://api.example.com:99999/", "http://api.example.com:x/",
                                 "http://[::1/"])
def test_an_http_url_urlsplit_cannot_read_is_refused_naming_the_field(url):
    """A port out of range or an unclosed bracket made urlsplit raise ValueError (a 500)."""
    from distasks.domain.errors import InvalidInput
    from distasks.handlers.http import HttpHandler
    with pytest.raises(InvalidInput) as e:
        HttpHandler(("api.example.com",), 1000).check({"url": url})
    assert e.value.field == "payload.url"
