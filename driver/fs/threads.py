"""Blocking store and cache calls on worker threads, with less per-call overhead than
trio.to_thread.

`trio.to_thread.run_sync` names the worker thread for every call (a string built from the
task's name, then two `pthread_setname_np` calls through ctypes), copies the context and
sets up `trio.from_thread` support; with thousands of small GETs a second that showed as ~5%
of the FUSE server's GIL time. Store and cache calls need none of it, so `run_sync` hands
the call to trio's own thread cache (`trio.lowlevel.start_thread_soon`, unnamed) and parks
the task until the thread delivers. As with `to_thread.run_sync`'s default, a cancelled
caller waits for the call to finish: the thread cannot be stopped, and its result must not
be lost silently.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import trio

if TYPE_CHECKING:
    import outcome  # trio's own result type (a dependency of trio)

T = TypeVar("T")


def _refuse_abort(_: Any) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED


async def run_sync(fn: Callable[[], T], limiter: trio.CapacityLimiter) -> T:
    """fn() on a worker thread, at most `limiter.total_tokens` at a time."""
    async with limiter:
        token = trio.lowlevel.current_trio_token()
        task = trio.lowlevel.current_task()

        def deliver(result: outcome.Outcome[T]) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)

        trio.lowlevel.start_thread_soon(fn, deliver)
        return await trio.lowlevel.wait_task_rescheduled(_refuse_abort)  # type: ignore[no-any-return]
