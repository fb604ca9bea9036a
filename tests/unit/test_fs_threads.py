"""driver.fs.threads.run_sync: results, errors, the limiter, no renaming, cancellation."""

from __future__ import annotations

import threading

import pytest
import trio
import trio.testing

from driver.fs.threads import run_sync


def test_returns_results_and_raises_errors_on_worker_threads() -> None:
    async def main() -> None:
        limiter = trio.CapacityLimiter(2)
        assert await run_sync(lambda: threading.get_ident(), limiter) \
            != threading.get_ident()
        with pytest.raises(KeyError, match="boom"):
            await run_sync(lambda: {}["boom"], limiter)

    trio.run(main)


def test_threads_keep_their_names() -> None:
    names: list[str] = []

    async def main() -> None:
        await run_sync(lambda: names.append(threading.current_thread().name),
                       trio.CapacityLimiter(1))

    trio.run(main)
    assert names[0].startswith("Trio thread")  # to_thread.run_sync would have renamed it


def test_limiter_bounds_concurrency() -> None:
    lock = threading.Lock()
    running = peak = 0
    gate = threading.Event()

    def work() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        gate.wait(10)
        with lock:
            running -= 1

    async def main() -> None:
        limiter = trio.CapacityLimiter(3)
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(run_sync, work, limiter)
            with trio.fail_after(10):  # until three calls run at once (the limit)
                while running < 3:
                    await trio.sleep(0.01)
            assert limiter.borrowed_tokens == 3 and limiter.statistics().tasks_waiting == 5
            gate.set()

    trio.run(main)
    assert peak == 3


def test_a_cancelled_caller_waits_for_the_call_to_finish() -> None:
    started, release = threading.Event(), threading.Event()
    finished: list[bool] = []

    def work() -> str:
        started.set()
        release.wait(10)
        finished.append(True)
        return "done"

    scope = trio.CancelScope()
    outcome: list[str] = []

    async def caller() -> None:
        with scope:
            outcome.append(await run_sync(work, trio.CapacityLimiter(1)))
            await trio.lowlevel.checkpoint()
        outcome.append("cancelled" if scope.cancelled_caught else "not cancelled")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller)
            await trio.to_thread.run_sync(started.wait, 10)
            scope.cancel()
            # Every task runs until it blocks: a wrongful abort would have resumed the caller.
            await trio.testing.wait_all_tasks_blocked()
            assert not finished and outcome == []  # still waiting for the thread
            release.set()
        assert finished == [True]
        assert outcome == ["done", "cancelled"]  # the result arrived, then the cancel

    trio.run(main)
