"""Bounded retries shared by the stores: one deadline per operation, jittered backoff.

Every store call runs through `Retrier.call`: each attempt has connect and read timeouts
(so a stalled request is abandoned), failed attempts that the store calls retryable are
repeated with full-jitter exponential backoff, at most `max_attempts` in all, and a new
attempt starts only while it can still time out before the operation's deadline (`total`
seconds from its start). So one
operation takes at most about `total` seconds, whatever the store does.

The stores' clients do no retrying of their own (botocore `total_max_attempts=1`,
google-cloud-storage `retry=None`): a retry of a call that is not idempotent must be
reconciled with what the first attempt may already have done, and only the store knows
how. `Attempts.count` tells it whether a retry happened.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Timeouts:
    """What one store operation may take: `total` for all attempts together."""

    total: float = 60.0
    max_attempts: int = 5  # the first and four retries, as botocore's standard mode
    base_delay: float = 0.05
    max_delay: float = 4.0

    @property
    def connect(self) -> float:
        return max(0.5, min(5.0, self.total / 12))

    @property
    def read(self) -> float:
        # Longest silence on an open connection before the attempt is abandoned; a third
        # of the budget leaves room for at least two more attempts.
        return max(1.0, min(20.0, self.total / 3))


@dataclass
class Attempts:
    """How many attempts an operation made (1 = no retry)."""

    count: int = 0


_current = threading.local()


def current_attempt() -> int:
    """The attempt number of the store call running on this thread (1 = first): how the
    metrics hooks (observe.py) tell a retry from a first request."""
    return getattr(_current, "attempt", 1)


class Retrier:
    def __init__(self, timeouts: Timeouts, retryable: Callable[[BaseException], bool],
                 *, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.timeouts = timeouts
        self.retryable = retryable
        self._sleep = sleep
        self._clock = clock

    def call(self, fn: Callable[[], T], attempts: Attempts | None = None) -> T:
        """Run `fn` until it succeeds, fails for good, or the deadline leaves no room."""
        attempts = attempts if attempts is not None else Attempts()
        limits = self.timeouts
        deadline = self._clock() + limits.total
        one_attempt = limits.connect + limits.read
        outer = current_attempt()  # a store call made inside another keeps its own count
        try:
            while True:
                attempts.count += 1
                _current.attempt = attempts.count
                try:
                    return fn()
                except Exception as exc:  # noqa: BLE001 - classified below, else re-raised
                    if not self.retryable(exc):
                        raise
                    delay = random.uniform(0, min(limits.max_delay,  # noqa: S311 - jitter
                                                  limits.base_delay * 2 ** attempts.count))
                    if attempts.count >= limits.max_attempts or \
                            self._clock() + delay + one_attempt > deadline:
                        raise
                    self._sleep(delay)
        finally:
            _current.attempt = outer


# A marker's or upload's creation time is the store's clock; ours may differ by this much.
CLOCK_SKEW = 30.0


class SuspectUploads:
    """Keys whose upload-create may have taken effect unseen (a retried or failed create),
    and the one rule for them: when that key's write ends, its uploads created since the
    write began (less CLOCK_SKEW) are aborted. Thread-safe; shared by both stores."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since: dict[str, float] = {}  # key -> when the first suspect create began

    def mark(self, key: str, began: float) -> None:
        with self._lock:
            self._since[key] = min(began, self._since.get(key, began))

    def reconcile(self, key: str, since: float,
                  uploads: Callable[[str], list[tuple[str, str, Any]]],
                  abort: Callable[[str, str], None]) -> int:
        """Abort `key`'s uploads listed by `uploads(key)` as (key, id, created-or-None);
        nothing is listed unless a create of `key` was suspect. Returns how many."""
        with self._lock:
            suspect = self._since.pop(key, None)
        if suspect is None:
            return 0
        floor = min(since, suspect) - CLOCK_SKEW
        aborted = 0
        for upload_key, upload_id, created in uploads(key):
            if upload_key == key and (created is None or created.timestamp() >= floor):
                abort(key, upload_id)
                aborted += 1
        return aborted
