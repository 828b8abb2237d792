"""The OpenAPI schema is the contract: schemathesis against the real API, sized for CI.

The API runs as ``python -m gateways.http`` on a free port, on the suite's nats-server, PostgreSQL
and Redis (a fresh database and stream), with its projectors and the offline agent inside, as
``./parley up`` runs it. Schemathesis reads its ``/schema/openapi.json`` and runs every phase
(the schema's boundaries, random valid and invalid requests, chains of calls along the links it
infers) with a token of every role (``bench.fuzz``, which ``./parley fuzz`` runs longer). No
answer may be a server error, and every answer must be one the schema documents, in a body
the schema describes; what the schema forbids must be refused, what it allows accepted.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.fuzz import QUICK_EXAMPLES, ROLES, api_env, api_process, read_report, run_schemathesis
from infra.services import free_port, service_tmpdir
from infra.tokens import make_token
from tests.conftest import delete_stream, fresh_database, unique_stream

SECRET = "fuzz-secret-" + "x" * 32
TENANT = "acme"


@pytest.fixture
def api_url(nats_url: str, pg_url: str, redis_url: str) -> Iterator[str]:
    root = service_tmpdir("parley-schemathesis-")
    stream = unique_stream()
    env = api_env(
        nats_url=nats_url,
        database_url=fresh_database(pg_url),
        redis_url=redis_url,
        data_dir=root / "data",
        secret=SECRET,
        port=free_port(),
        tenant=TENANT,
        stream=stream,
    )
    try:
        with api_process(env, root / "api.log") as url:
            yield url
    finally:
        asyncio.run(delete_stream(nats_url, stream))
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.timeout(900)
def test_the_api_keeps_to_its_openapi_schema(api_url: str, tmp_path: Path) -> None:
    token = make_token(SECRET, subject="fuzz", tenant=TENANT, roles=ROLES)
    report = run_schemathesis(
        api_url, token, tmp_path / "report", max_examples=QUICK_EXAMPLES, seed=20251206, timeout=800
    )
    failures = "\n".join(report.lines()) + "\n" + report.output[-8000:]
    assert report.operations >= 60 and report.cases >= 1000, failures  # the run reached the API
    assert report.server_errors == 0, failures
    assert report.violations == 0, failures
    assert report.errors == 0, failures


def test_the_report_counts_server_errors_apart_from_violations() -> None:
    """The counts come from schemathesis's JSON report: a failure of ``not_a_server_error`` is a
    server error, any other check's failure a schema violation."""
    document = {
        "operations": {"tested": 3},
        "test_cases": {"generated": 120},
        "failures": [
            {"type": "not_a_server_error", "title": "Server error", "count": 2, "operations": ["GET /a"]},
            {
                "type": "response_schema_conformance",
                "title": "Response violates schema",
                "count": 3,
                "operations": ["GET /a", "POST /b"],
            },
            {
                "type": "status_code_conformance",
                "title": "Undocumented status code",
                "count": 1,
                "operations": ["POST /b"],
            },
        ],
        "errors": [],
    }
    report = read_report(document, exit_code=1)
    assert (report.cases, report.operations, report.server_errors, report.violations) == (120, 3, 2, 4)
    assert not report.clean
    assert read_report({**document, "failures": []}, exit_code=0).clean


def test_the_schema_states_what_the_api_checks() -> None:
    """Built without serving: nested bounds and patterns, the unknown-field rule, path ids' patterns,
    the routes no token guards and the documented error body, as the API enforces them."""
    from gateways.http.app import create_app
    from gateways.http.settings import ApiSettings
    from streams.factory import StoreSettings

    settings = ApiSettings(
        jwt_secret=SECRET, database_url="postgresql://unused/db", redis_url="redis://unused", store=StoreSettings()
    )
    schema = create_app(settings).openapi_schema.to_schema()
    components = schema["components"]["schemas"]
    scopes = components["CreateKeyRequest"]["properties"]["scopes"]
    assert scopes["items"]["minLength"] == 1 and "conversations" in scopes["items"]["enum"]
    assert components["CreateKeyRequest"]["additionalProperties"] is False
    attachments = components["ContinueConversationRequest"]["properties"]["attachments"]
    assert attachments["items"]["pattern"] and attachments["maxItems"] == 10
    messages = schema["paths"]["/api/v1/orchestration/conversations/{conversation_id}/messages"]["post"]
    (conversation_id,) = [p for p in messages["parameters"] if p["name"] == "conversation_id"]
    assert conversation_id["schema"]["pattern"] == "^[A-Za-z0-9_-]{1,128}$"
    assert {"202", "400", "404", "409", "422", "429", "503"} <= set(messages["responses"])
    assert messages["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert schema["paths"]["/health"]["get"]["security"] == [{}]
    assert "security" not in messages  # the document's bearer token
