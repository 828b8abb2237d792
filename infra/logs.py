"""Logging for every Parley process: structlog, JSON lines in production, readable in a terminal."""

from __future__ import annotations

import logging
import os
import sys

import structlog


def configure_logging(*, level: str | None = None, json: bool | None = None) -> None:
    """Configure structlog once per process (``PARLEY_LOG_LEVEL``, ``PARLEY_LOG_JSON``)."""
    level_name = (level or os.environ.get("PARLEY_LOG_LEVEL", "INFO")).upper()
    if json is None:
        json = os.environ.get("PARLEY_LOG_JSON", "" if sys.stderr.isatty() else "1") not in ("", "0", "false")
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level_name]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
