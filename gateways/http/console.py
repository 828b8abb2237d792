"""The web console (``console/``, built by Vite into ``console/dist``) served at ``/console``, and the
development sign-in it offers on a local platform.

- ``GET /console`` and every path below it: a file of the build, or ``index.html`` for any other
  path (the app routes in the browser). Hashed assets (``/console/assets/*``) are cached for a year;
  ``index.html`` is revalidated every time, so a new build is picked up at the next load. Text
  assets are sent gzipped to a client that accepts it (compressed once per file and build).
- ``POST /api/v1/dev/token {role}``: a development JWT for tenant ``demo`` with that one role, and
  ``GET /api/v1/dev/token``: the roles on offer. Both answer 404 unless development sign-in is on
  (``PARLEY_DEV_SIGNIN=1``, which ``./parley up`` sets for the local platform): a deployed API
  never mints tokens.

The console reaches the API only through its public endpoints with the signed-in token, so it can
do nothing the API would refuse.
"""

from __future__ import annotations

import gzip
import mimetypes
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import msgspec
from litestar import Request, Response, Router, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from domain.errors import NotFoundError, UnavailableError
from gateways.http.settings import ApiSettings
from infra.tokens import make_token

CONSOLE_DIR = Path(__file__).resolve().parents[2] / "console" / "dist"
DEV_TENANT = "demo"
DevRole = Literal[
    "support_agent",
    "supervisor",
    "org_admin",
    "config_manager",
    "config_viewer",
    "analyst",
    "platform_engineer",
    "customer",
]
DEV_ROLES: tuple[str, ...] = DevRole.__args__  # type: ignore[attr-defined]
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
_COMPRESSIBLE = (".js", ".css", ".html", ".svg", ".json", ".map", ".txt")
# What the browser may load: the console's own files and its API, nothing from elsewhere.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; object-src 'none'"
)


class DevTokenRequest(msgspec.Struct, forbid_unknown_fields=True):
    role: DevRole


def console_dir() -> Path:
    """The built console: ``PARLEY_CONSOLE_DIR``, else ``console/dist`` of this checkout."""
    override = os.environ.get("PARLEY_CONSOLE_DIR")
    return Path(override).resolve() if override else CONSOLE_DIR


def dev_signin_enabled(settings: NamedDependency[ApiSettings]) -> bool:
    """On when the API's settings say so (``PARLEY_DEV_SIGNIN=1``: ``./parley up`` sets it)."""
    return settings.dev_signin


@lru_cache(maxsize=256)
def _gzipped(path: Path, mtime_ns: int, size: int) -> bytes:
    """A file's gzip, once per content (its path, modification time and size name it)."""
    return gzip.compress(path.read_bytes(), compresslevel=9, mtime=0)


def _resolve(root: Path, rest: str) -> Path | None:
    """The file under ``root`` a request path names, or None (a directory, missing, or outside it)."""
    if not rest:
        return None
    candidate = (root / rest).resolve()
    if root not in candidate.parents or not candidate.is_file():
        return None
    return candidate


def _file_response(path: Path, request: Request[Any, Any, Any], cache: str) -> Response[bytes]:
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if media_type.startswith("text/") or media_type in ("application/javascript", "application/json"):
        media_type += "; charset=utf-8"
    headers = {"Cache-Control": cache, "X-Content-Type-Options": "nosniff", "Vary": "Accept-Encoding"}
    if path.suffix == ".html":
        headers["Content-Security-Policy"] = CSP
    stat = path.stat()
    if path.suffix in _COMPRESSIBLE and "gzip" in request.headers.get("accept-encoding", ""):
        headers["Content-Encoding"] = "gzip"
        body = _gzipped(path, stat.st_mtime_ns, stat.st_size)
    else:
        body = path.read_bytes()
    return Response(body, media_type=media_type, headers=headers)


@get(["/console", "/console/{rest:path}"], exclude_from_auth=True, include_in_schema=False, sync_to_thread=False)
def serve_console(request: Request[Any, Any, Any], rest: FromPath[str] = "") -> Response[bytes]:
    """A file of the built console, or its ``index.html`` for the app's own routes."""
    root = console_dir()
    index = root / "index.html"
    if not index.is_file():
        raise UnavailableError(
            f"the console is not built ({index} is missing): run `npm ci && npm run build` in console/",
            path=str(index),
        )
    found = _resolve(root, rest.lstrip("/"))
    if found is not None and found != index:
        hashed = found.parent.name == "assets"
        return _file_response(found, request, IMMUTABLE if hashed else REVALIDATE)
    if rest.lstrip("/").startswith("assets/"):  # a missing asset is a 404, not the app
        raise NotFoundError(f"no console asset {rest}")
    return _file_response(index, request, REVALIDATE)


@get("/api/v1/dev/token", exclude_from_auth=True, summary="Development sign-in: the roles on offer")
async def dev_roles(settings: NamedDependency[ApiSettings]) -> dict[str, Any]:
    if not dev_signin_enabled(settings):
        raise NotFoundError("development sign-in is off (PARLEY_DEV_SIGNIN)")
    return {"tenant": DEV_TENANT, "roles": list(DEV_ROLES)}


@post("/api/v1/dev/token", exclude_from_auth=True, status_code=201, summary="Development sign-in: a token for a role")
async def dev_token(data: JSONBody[DevTokenRequest], settings: NamedDependency[ApiSettings]) -> dict[str, Any]:
    """A JWT for tenant ``demo`` holding ``role``, its subject ``dev-<role>`` (12 hours). Only on a
    local platform (``PARLEY_DEV_SIGNIN=1``); 404 otherwise."""
    if not dev_signin_enabled(settings):
        raise NotFoundError("development sign-in is off (PARLEY_DEV_SIGNIN)")
    subject = f"dev-{data.role.replace('_', '-')}"
    token = make_token(settings.jwt_secret, subject=subject, tenant=DEV_TENANT, roles=[data.role], hours=12)
    return {"token": token, "tenant": DEV_TENANT, "subject": subject, "roles": [data.role]}


console_router = Router(path="/", route_handlers=[serve_console, dev_roles, dev_token], tags=["console"])
