"""The one place that configures logging: structlog, JSON off a TTY, readable on one.

Every module logs through `structlog.get_logger()`. A processor drops any event field whose
name looks like a secret, as a last line of defence; code must not pass secrets anyway.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

_SECRET_WORDS = ("secret", "token", "password", "credential", "session_key", "private")


def _redact(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in list(event):
        if key != "event" and any(word in key.lower() for word in _SECRET_WORDS):
            event[key] = "<redacted>"
    return event


def configure(level: str | int = "info", json: bool | None = None) -> None:
    """Configure structlog and stdlib logging for this process (idempotent)."""
    if json is None:
        fmt = os.environ.get("CLOUDBUCKET_LOG_FORMAT", "")
        json = fmt == "json" or (fmt != "text" and not sys.stderr.isatty())
    if isinstance(level, str):
        level = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries (botocore, urllib3, grpc) log through stdlib; keep them quiet but visible.
    logging.basicConfig(level=max(level, logging.WARNING), stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s", force=True)
