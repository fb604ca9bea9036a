"""A store wrapper that counts requests, for mount-s3's `--log-metrics`.

Every ObjectStore method called through it is counted per method, with its failures and
its total time; `take()` returns the counts since the last call and starts afresh, so a
periodic log line shows one interval. Thread-safe: store methods run on worker threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from driver.store.base import ObjectStore


class MeteredStore:
    def __init__(self, store: ObjectStore) -> None:
        self._store = store
        self.bucket = store.bucket
        self._lock = threading.Lock()
        self._counts: dict[str, list[float]] = {}  # method -> [calls, errors, seconds]

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._store, name)
        if not callable(target) or name.startswith("_"):
            return target

        def counted(*args: Any, **kwargs: Any) -> Any:
            started = time.monotonic()
            failed = True
            try:
                result = target(*args, **kwargs)
                failed = False
                return result
            finally:
                with self._lock:
                    entry = self._counts.setdefault(name, [0, 0, 0.0])
                    entry[0] += 1
                    entry[1] += failed
                    entry[2] += time.monotonic() - started

        return counted

    def take(self) -> dict[str, dict[str, float]]:
        """{method: {requests, errors, seconds}} since the last call."""
        with self._lock:
            counts, self._counts = self._counts, {}
        return {name: {"requests": int(calls), "errors": int(errors),
                       "seconds": round(seconds, 3)}
                for name, (calls, errors, seconds) in sorted(counts.items())}


def metered(store: ObjectStore) -> tuple[ObjectStore, Callable[[], dict[str, Any]]]:
    wrapper = MeteredStore(store)
    return wrapper, wrapper.take  # type: ignore[return-value]
