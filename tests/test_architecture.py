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


# The layers: which package may import which --------------------------------------------------
#
# domain <- streams <- commands <- read_models/projections <- agents <- gateways, as the README's
# layout has them: an arrow back up is a cycle in the design even when Python tolerates it. infra
# (local services, logging, the restart loop, tokens, chDB) is a toolbox below them all: it imports
# no layer. Nothing but gateways/ and the voice worker's process (which hosts the telephony
# gateway) imports gateways/: every other layer has it in its forbidden set.

PACKAGES = (
    "domain",
    "streams",
    "commands",
    "projections",
    "read_models",
    "gateways",
    "agents",
    "infra",
    "voice_worker",
)
FORBIDDEN: dict[str, set[str]] = {
    "streams": {"commands", "projections", "read_models", "gateways", "agents", "voice_worker"},
    "commands": {"projections", "gateways", "agents", "voice_worker"},
    "read_models": {"projections", "commands", "gateways", "agents", "voice_worker"},
    "projections": {"gateways", "agents", "voice_worker"},
    "agents": {"gateways", "voice_worker"},
    "infra": {"domain", "streams", "commands", "projections", "read_models", "gateways", "agents", "voice_worker"},
}
# What of ``domain`` the event store may know: the base types, never a context.
STREAMS_MAY_KNOW = {"domain", "domain.messages", "domain.errors", "domain.time"}


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_each_layer_imports_only_the_layers_below_it() -> None:
    offenders = {
        f"{path.relative_to(ROOT)} imports {module}"
        for package, forbidden in FORBIDDEN.items()
        for path in sources(package)
        for module in imported_modules(path)
        if module.split(".")[0] in forbidden
    }
    assert sorted(offenders) == []


def test_the_event_store_knows_no_context_module() -> None:
    offenders = {
        f"{path.relative_to(ROOT)} imports {module}"
        for path in sources("streams")
        for module in imported_modules(path)
        if module.split(".")[0] == "domain" and module not in STREAMS_MAY_KNOW
    }
    assert sorted(offenders) == []


def test_nothing_outside_gateways_imports_the_http_edge() -> None:
    offenders = {
        f"{path.relative_to(ROOT)} imports {module}"
        for package in PACKAGES
        if package != "gateways"
        for path in sources(package)
        for module in imported_modules(path)
        if module == "gateways.http" or module.startswith("gateways.http.")
    }
    assert sorted(offenders) == []


# Two packages that import each other are one package in two folders (bench and tests aside).


def package_imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {package: set() for package in PACKAGES}
    for package in PACKAGES:
        for path in sources(package):
            found[package] |= {module.split(".")[0] for module in imported_modules(path)} & set(PACKAGES) - {package}
    return found


def test_no_two_packages_import_each_other() -> None:
    imports = package_imports()
    mutual = {tuple(sorted((a, b))) for a, targets in imports.items() for b in targets if a in imports[b]}
    assert sorted(mutual) == [], "packages importing each other both ways"


def test_the_voice_worker_uses_the_gateways_and_no_gateway_uses_it() -> None:
    imports = package_imports()
    assert "voice_worker" not in imports["gateways"]
    assert "gateways" in imports["voice_worker"]
