"""The console's edge (``gateways/http/console.py``): the built app served at /console, and the
development sign-in that exists only when ``PARLEY_DEV_SIGNIN=1``. Also runs the console's own
checks (TypeScript strict, ESLint, the Vitest component tests) so that the suite covers them."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from litestar.testing import AsyncTestClient

from tests.api_support import api_client, settings_for
from tests.conftest import delete_stream, fresh_database, unique_stream

CONSOLE = Path(__file__).resolve().parents[1] / "console"
INDEX = '<!doctype html><html><head><script type="module" src="/console/assets/index-abc123.js"></script></head></html>'
SCRIPT = "export const hello = 'parley';\n" * 200


@pytest.fixture
def built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A console build (as Vite lays it out) in a directory of its own."""
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text(INDEX)
    (dist / "assets" / "index-abc123.js").write_text(SCRIPT)
    (tmp_path / "secret.txt").write_text("not for the browser")
    monkeypatch.setenv("PARLEY_CONSOLE_DIR", str(dist))
    return dist


@pytest_asyncio.fixture
async def client(
    nats_url: str, pg_url: str, redis_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[AsyncTestClient[Any]]:
    stream = unique_stream()
    settings = settings_for(
        nats_url,
        fresh_database(pg_url),
        redis_url,
        tmp_path,
        stream,
        run_agents=False,
        auto_rollback=None,
        dev_signin="dev_signin" in request.keywords,
    )
    try:
        async with api_client(settings) as c:
            yield c
    finally:
        await delete_stream(nats_url, stream)


async def test_the_console_is_served_with_its_routes_falling_back_to_the_app(
    built: Path, client: AsyncTestClient[Any]
) -> None:
    for path in ("/console", "/console/", "/console/inbox", "/console/configs/support-bot/versions"):
        page = await client.get(path)
        assert page.status_code == 200, path
        assert page.text == INDEX
        assert page.headers["cache-control"] == "no-cache"
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["content-type"].startswith("text/html")


async def test_hashed_assets_are_cached_for_a_year_and_sent_gzipped_to_who_accepts_it(
    built: Path, client: AsyncTestClient[Any]
) -> None:
    zipped = await client.get("/console/assets/index-abc123.js", headers={"Accept-Encoding": "gzip"})
    assert zipped.status_code == 200
    assert zipped.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert zipped.headers["content-encoding"] == "gzip"
    assert "javascript" in zipped.headers["content-type"]
    assert zipped.text == SCRIPT  # the client undoes the gzip
    assert int(zipped.headers["content-length"]) < len(SCRIPT) // 10
    plain = await client.get("/console/assets/index-abc123.js", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert plain.content == SCRIPT.encode()
    assert gzip.decompress(gzip.compress(plain.content)) == plain.content


async def test_a_missing_asset_is_a_404_and_nothing_outside_the_build_is_served(
    built: Path, client: AsyncTestClient[Any]
) -> None:
    missing = await client.get("/console/assets/gone-000.js")
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"
    outside = await client.get("/console/..%2Fsecret.txt")
    assert "not for the browser" not in outside.text


async def test_without_a_build_the_console_says_how_to_make_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, client: AsyncTestClient[Any]
) -> None:
    monkeypatch.setenv("PARLEY_CONSOLE_DIR", str(tmp_path / "nowhere"))
    answer = await client.get("/console/")
    assert answer.status_code == 503
    assert "npm run build" in answer.json()["message"]


async def test_development_sign_in_is_off_unless_the_platform_says_so(client: AsyncTestClient[Any]) -> None:
    assert (await client.get("/api/v1/dev/token")).status_code == 404
    refused = await client.post("/api/v1/dev/token", json={"role": "org_admin"})
    assert refused.status_code == 404
    assert "token" not in refused.json()


@pytest.mark.dev_signin
async def test_development_sign_in_mints_a_token_for_one_role_of_the_demo_tenant(client: AsyncTestClient[Any]) -> None:
    """On a platform whose settings turn it on (``PARLEY_DEV_SIGNIN=1``: ``./parley up`` sets it)."""
    offered = (await client.get("/api/v1/dev/token")).json()
    assert offered["tenant"] == "demo"
    assert "config_manager" in offered["roles"]
    minted = await client.post("/api/v1/dev/token", json={"role": "config_manager"})
    assert minted.status_code == 201, minted.text
    body = minted.json()
    assert body["roles"] == ["config_manager"]
    assert body["subject"] == "dev-config-manager"
    mine = await client.get("/api/v1/client-config/permissions", headers={"Authorization": f"Bearer {body['token']}"})
    assert mine.status_code == 200, mine.text
    you = mine.json()["you"]
    assert you["user_id"] == "dev-config-manager"
    assert you["config_permissions"]["change_voice_params"] is True
    assert you["config_permissions"]["deploy_to_production"] is False
    bad = await client.post("/api/v1/dev/token", json={"role": "root"})
    assert bad.status_code == 400
    assert "role" in bad.json()["fields"]


def _npm(*args: str) -> subprocess.CompletedProcess[str]:
    npm = shutil.which("npm") or str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "npm")
    env = {**os.environ, "CI": "1", "NO_COLOR": "1"}
    return subprocess.run([npm, *args], cwd=CONSOLE, env=env, capture_output=True, text=True, timeout=240)


def test_the_console_typechecks_lints_and_passes_its_component_tests() -> None:
    if not (CONSOLE / "node_modules" / ".bin" / "vitest").exists():
        pytest.fail("the console's node modules are missing: run ./parley test (it runs npm ci)")
    for script in ("typecheck", "lint", "test"):
        done = _npm("run", "--silent", script)
        assert done.returncode == 0, f"npm run {script} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    assert "passed" in done.stdout
