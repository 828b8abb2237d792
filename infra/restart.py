"""Keep a worker going: a step at a time until stopped, starting again after a failure, with backoff.

The projector runner (every projection, PostgreSQL or ClickHouse) and the agent runtime's
partitions run this one loop. A step that fails is logged (a failure the caller expects, such as a
lost connection, as a warning; anything else with its traceback), the worker's ``restart`` is
awaited (close what it holds; the next step opens it again), and the loop waits 0.5 s, doubling
up to 10 s while failures follow one another, before the next step; a step that succeeds resets
the wait. Setting ``stop`` ends the loop after the step in hand, and cuts a wait short.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

FIRST_DELAY = 0.5
MAX_DELAY = 10.0


async def keep_running(
    step: Callable[[], Awaitable[object]],
    stop: asyncio.Event,
    *,
    restart: Callable[[], Awaitable[None]],
    log: Any,
    what: str,
    expected: tuple[type[BaseException], ...] = (),
    done: tuple[type[BaseException], ...] = (),
) -> None:
    """Run ``step`` until ``stop`` is set or it raises one of ``done``; after any other failure,
    ``restart``, back off, and go on (see the module's docstring).

    ``what`` names the worker in the log (``"projector"``); ``expected`` are the failures logged
    without a traceback.
    """
    delay = FIRST_DELAY
    while not stop.is_set():
        try:
            await step()
        except done:
            return
        except Exception as e:
            if isinstance(e, expected):
                log.warning(f"{what} interrupted; starting again", error=f"{type(e).__name__}: {e}", retry_in=delay)
            else:  # a bug, or an error nobody translated: logged in full, retried all the same
                log.error(f"{what} failed; starting again", exc_info=True, retry_in=delay)
            await restart()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, MAX_DELAY)
        else:
            delay = FIRST_DELAY
