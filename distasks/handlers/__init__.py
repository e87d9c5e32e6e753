"""Handlers: the code a task runs, registered by name, and the built-in ones.

A handler is a function taking one TaskContext and returning a JSON-able result (or
raising). Async handlers run in the worker's Trio task; sync ones run in a thread
under a limiter. User modules listed in the config mark theirs with @handler.

May import `distasks.domain` only: handlers know tasks, not how they are stored or sent.
"""

from __future__ import annotations

import importlib
import inspect
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

import trio

from distasks.domain.model import Json, Task

HandlerFn = Callable[["TaskContext"], Json | Awaitable[Json]]
F = TypeVar("F", bound=Callable[..., Any])

_MARK = "__distasks_handler__"


@dataclass(frozen=True, slots=True)
class TaskContext:
    """What a handler is given: the task, its payload and which attempt this is; for a
    workflow node, its parents' outcomes."""

    task: Task
    payload: Json
    attempt: int
    run_id: uuid.UUID
    #: a workflow node's parents by key: {"status", "result", "error", "truncated"}
    #: (results past limits.max_parent_output_bytes left out, truncated true); {} else
    parents: dict[str, Json] = field(default_factory=dict)


@overload
def handler(name: F) -> F: ...


@overload
def handler(name: str | None = None) -> Callable[[F], F]: ...


def handler(name: str | F | None = None) -> F | Callable[[F], F]:
    """Mark a function as a distasks handler, registered under `name` (default: its name).

    Use as `@handler`, `@handler()` or `@handler("name")`.
    """
    if callable(name):
        fn, name = name, None
        setattr(fn, _MARK, fn.__name__)
        return fn

    def mark(fn: F) -> F:
        setattr(fn, _MARK, name or fn.__name__)
        return fn

    return mark


@dataclass(frozen=True, slots=True)
class Handler:
    name: str
    fn: HandlerFn
    is_async: bool


class Registry:
    """Handlers by name. Built once at start-up; read-only afterwards."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def add(self, name: str, fn: HandlerFn) -> None:
        if name in self._handlers:
            raise ValueError(f"handler {name!r} is registered twice")
        # A callable object (the http handler) is async when its __call__ is.
        is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            type(fn).__call__)
        self._handlers[name] = Handler(name, fn, is_async)

    def get(self, name: str) -> Handler | None:
        return self._handlers.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._handlers

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._handlers))

    def payload_schemas(self) -> dict[str, dict[str, Any] | None]:
        """Each handler's payloads as a JSON Schema: `{}` (any JSON value) unless the
        handler says otherwise with a `payload_schema()` method (the http handler)."""
        out: dict[str, dict[str, Any] | None] = {}
        for name, h in self._handlers.items():
            describe = getattr(h.fn, "payload_schema", None)
            out[name] = describe() if callable(describe) else {}
        return out

    def add_module(self, module_name: str) -> int:
        """Import `module_name` and register every function it marks; returns how many."""
        module = importlib.import_module(module_name)
        found = 0
        for value in vars(module).values():
            name = getattr(value, _MARK, None)
            if isinstance(name, str) and callable(value):
                self.add(name, value)
                found += 1
        return found


def builtin_registry(modules: tuple[str, ...] = (), *, http: HandlerFn | None = None) -> Registry:
    """The built-in handlers (`demo`, `noop`, and `http` when given) plus those of the
    user modules named in the config."""
    registry = Registry()
    registry.add("demo", demo)
    registry.add("noop", noop)
    if http is not None:
        registry.add("http", http)
    for module_name in modules:
        registry.add_module(module_name)
    return registry


class DemoFailure(Exception):
    """The failure the demo handler simulates."""


async def demo(ctx: TaskContext) -> Json:
    """The original platform's demo: an odd priority fails on attempt 1 unless
    `payload.skip_fail` is true; otherwise it succeeds.

    Test knobs (absent in the original): `sleep_seconds` sleeps first, `always_fail`
    fails every attempt.
    """
    payload = ctx.payload if isinstance(ctx.payload, dict) else {}
    sleep_s = payload.get("sleep_seconds")
    if isinstance(sleep_s, int | float) and sleep_s > 0:
        await trio.sleep(sleep_s)
    if payload.get("always_fail") is True:
        raise DemoFailure(f"demo: always_fail (attempt {ctx.attempt})")
    if ctx.task.priority % 2 == 1 and ctx.attempt == 1 and payload.get("skip_fail") is not True:
        raise DemoFailure(f"demo: odd priority {ctx.task.priority} fails on attempt 1")
    return {"ok": True, "attempt": ctx.attempt}


async def noop(ctx: TaskContext) -> Json:
    """Does nothing; for benchmarks."""
    return None
