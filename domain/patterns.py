"""Patterns a tenant writes (intents, tool arguments, JSON-schema ``pattern``s) run in a linear-time
engine, RE2: however a pattern is written and whatever text it meets, matching takes time in
proportion to the text, so no config can stall the process that answers every tenant's customers
(Python's ``re`` backtracks: ``(a+)+$`` doubles its time with each character).

RE2 has no backreferences or lookaround; a pattern that needs them is refused when the config is
validated, with the engine's reason. Pure: a regular-expression engine, no I/O.
"""

from __future__ import annotations

import functools
from typing import Any

import re2

PatternError = re2.error
# Enough for any pattern a config reasonably holds; a larger program is refused, not run slowly.
MAX_PROGRAM_BYTES = 8 << 20


@functools.lru_cache(maxsize=4096)
def compile_pattern(pattern: str, *, ignore_case: bool = False) -> Any:
    """``pattern`` compiled by RE2 (``search``, ``match``, ``groups``, ``groupindex`` as ``re``'s);
    ``PatternError`` names what RE2 cannot run."""
    options = re2.Options()
    options.log_errors = False
    options.case_sensitive = not ignore_case
    options.max_mem = MAX_PROGRAM_BYTES
    return re2.compile(pattern, options)


def pattern_problem(pattern: object) -> str | None:
    """Why ``pattern`` cannot be a config's pattern, or None when it can."""
    if not isinstance(pattern, str):
        return "must be a string"
    try:
        compile_pattern(pattern)
    except PatternError as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        return f"not a pattern the linear-time engine (RE2) can run: {reason}"
    return None
