"""The event loop of Parley's own processes: uvloop, the loop uvicorn already gives the API.

A projector, the agent runtime and the analytics projector spend much of their CPU in the loop
itself (a wake-up per NATS frame and per PostgreSQL result, a future per request); uvloop does
that work in C. It is one of Parley's dependencies (and comes with ``litestar[standard]``); where it
cannot be installed the standard loop runs the same code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a platform without a uvloop wheel
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
