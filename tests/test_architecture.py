"""Rules of the layout that a grep can prove."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IO_AND_OUTER = {
    "nats", "psycopg", "psycopg_pool", "litestar", "redis", "clickhouse_connect", "chdb", "httpx", "aiohttp",
    "anthropic", "openai", "livekit", "deepgram", "langgraph", "eventsourcing", "structlog", "sqlite3", "socket",
    "asyncio", "subprocess", "streams", "gateways", "projections", "read_models", "infra", "commands", "agents",
}  # fmt: skip


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_domain_imports_no_io_library_and_no_outer_layer() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_roots(path) & IO_AND_OUTER)
        for path in (ROOT / "domain").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_nats_import_outside_streams_and_infra() -> None:
    allowed = {"streams", "infra", "tests", "bench", ".venv"}
    offenders = [
        str(path.relative_to(ROOT))
        for path in ROOT.rglob("*.py")
        if path.relative_to(ROOT).parts[0] not in allowed and "nats" in imported_roots(path)
    ]
    assert offenders == []
