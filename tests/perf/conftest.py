"""Marker for the benchmark harness's own tests (they run in `make test`, in seconds)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "bench_smoke: quick run of the benchmark harness")
