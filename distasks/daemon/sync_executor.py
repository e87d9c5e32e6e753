"""Handler threads for sync (plain `def`) handlers: long-lived threads fed from one
queue, their results handed back to the Trio loop in batches.

`trio.to_thread.run_sync` pays per call for a capacity-limiter token, a thread taken
from (and given back to) its cache, the thread renamed twice, and one wake-up of the
Trio loop per result. With a handler as short as one Redis round trip, that hand-off
cost the daemon more than the handler (bench/sync_handlers.py). Here a call is one
queue put, and every result that finished while the loop was busy comes back with one
wake-up.

What the pool relies on, as with `to_thread.run_sync(..., abandon_on_cancel=True)`:
at most `threads` handlers run at once; a call cancelled (timeout, cancel, shutdown)
returns at once, its handler left to run on in its thread and its result dropped; a
call cancelled before a thread took it never runs.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import outcome
import trio

T = TypeVar("T")
A = TypeVar("A")

# A thread takes this from the queue when the executor stops.
_STOP = None


class _Call(Generic[A, T]):
    """One handler call, from `call()` to its result (or abandonment)."""

    __slots__ = ("fn", "arg", "task", "abandoned")

    def __init__(self, fn: Callable[[A], T], arg: A, task: trio.lowlevel.Task):
        self.fn = fn
        self.arg = arg
        self.task = task
        #: set on the Trio thread when the caller was cancelled; read by the handler thread
        self.abandoned = False


class SyncExecutor:
    """`threads` handler threads, started by `run()` and told to stop when it ends."""

    def __init__(self, threads: int, *, name: str = "distasks-sync"):
        self.threads = threads
        self._name = name
        self._calls: queue.SimpleQueue[_Call[Any, Any] | None] = queue.SimpleQueue()
        self._token: trio.lowlevel.TrioToken | None = None
        # Results waiting for the Trio loop, and whether a wake-up for them is pending:
        # only the first result of a batch asks the loop to run `_deliver`.
        self._lock = threading.Lock()
        self._done: list[tuple[_Call[Any, Any], outcome.Outcome[Any]]] = []
        self._wake_pending = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the threads and serve calls until cancelled. On the way out each idle
        thread exits; a thread still inside an (abandoned) handler exits when the handler
        returns. The threads are daemon threads: a handler that never returns does not
        keep the process alive."""
        self._token = trio.lowlevel.current_trio_token()
        with self._lock:  # nothing left over from an earlier run() can block the wake-up
            self._done, self._wake_pending = [], False
        for i in range(self.threads):
            threading.Thread(target=self._work, name=f"{self._name}-{i}", daemon=True).start()
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            for _ in range(self.threads):
                self._calls.put(_STOP)

    async def call(self, fn: Callable[[A], T], arg: A) -> T:
        """`fn(arg)` on a handler thread; returns its result or raises its exception.

        On cancellation it raises trio.Cancelled at once: the call is dropped if no
        thread has taken it yet, else abandoned (its thread runs on until `fn` returns;
        the result is discarded)."""
        if self._token is None:
            raise RuntimeError("SyncExecutor.call before run() started it")
        await trio.lowlevel.checkpoint_if_cancelled()
        call = _Call(fn, arg, trio.lowlevel.current_task())
        self._calls.put(call)

        def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            call.abandoned = True
            return trio.lowlevel.Abort.SUCCEEDED

        result: T = await trio.lowlevel.wait_task_rescheduled(abort)
        return result

    # -- on the handler threads ---------------------------------------------------------

    def _work(self) -> None:
        while (call := self._calls.get()) is not _STOP:
            if call.abandoned:
                continue  # cancelled while it waited for a thread
            result = outcome.capture(call.fn, call.arg)
            del call.fn, call.arg  # nothing of the handler outlives it while results wait
            with self._lock:
                self._done.append((call, result))
                wake, self._wake_pending = not self._wake_pending, True
            if wake:
                assert self._token is not None
                try:
                    self._token.run_sync_soon(self._deliver)
                except trio.RunFinishedError:
                    return  # the loop is gone: nobody waits for this result

    # -- on the Trio thread ---------------------------------------------------------------

    def _deliver(self) -> None:
        """Resume every caller whose handler finished since the last batch."""
        with self._lock:
            done, self._done = self._done, []
            self._wake_pending = False
        for call, result in done:
            if not call.abandoned:
                trio.lowlevel.reschedule(call.task, result)
