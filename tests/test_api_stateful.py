"""A Hypothesis state machine drives random valid and invalid commands through the HTTP API.

After every step: the read model equals a fold of the aggregate's events, which equals the
model the machine keeps; an invalid command changed nothing (no new events anywhere).
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule
from litestar.testing import TestClient

from domain import conversation as c
from gateways.http.app import create_app
from streams.factory import StoreSettings, open_store
from streams.subjects import StreamId
from tests.api_support import bearer, settings_for
from tests.conftest import delete_stream, fresh_database, unique_stream

BASE = "/api/v1/orchestration"
TENANT = bearer(tenant="acme", roles=("customer", "support_agent"))
STRANGER = bearer(tenant="globex", roles=("customer",))
texts = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1, max_size=40)


class Model:
    def __init__(self) -> None:
        self.status = "active"
        self.messages: list[str] = []
        self.escalation: str | None = None


def fold(nats_url: str, data_dir: Path, stream: str, cid: str) -> tuple[c.Conversation, int]:
    async def go() -> tuple[c.Conversation, int]:
        opened = await open_store(StoreSettings(nats_url=nats_url, data_dir=data_dir, stream=stream))
        try:
            events = await opened.store.read(StreamId("acme", "conversation", cid))
            state = c.initial()
            for e in events:
                state = c.evolve(state, e.event)
            return state, await opened.log.last_seq()
        finally:
            await opened.close()

    return asyncio.run(go())


@pytest.fixture
def machine_env(nats_url: str, pg_url: str, redis_url: str) -> dict[str, Any]:
    return {"nats_url": nats_url, "pg_url": pg_url, "redis_url": redis_url}


def test_random_commands_through_http_keep_the_read_model_equal_to_the_events(machine_env: dict[str, Any]) -> None:
    env = machine_env

    class ConversationMachine(RuleBasedStateMachine):
        conversations = Bundle("conversations")

        def __init__(self) -> None:
            super().__init__()
            self.data_dir = Path(tempfile.mkdtemp())
            self.stream = unique_stream()
            # The machine checks the CQRS loop: only its own commands append (no agent replies).
            api = settings_for(
                env["nats_url"],
                fresh_database(env["pg_url"]),
                env["redis_url"],
                self.data_dir,
                self.stream,
                run_agents=False,
            )
            self.client = TestClient(app=create_app(api), timeout=30)
            self.client.__enter__()
            self.models: dict[str, Model] = {}
            self.position = 0

        def teardown(self) -> None:
            self.client.__exit__(None, None, None)
            asyncio.run(delete_stream(env["nats_url"], self.stream))

        def _ok(self, response: Any, status: int = 200) -> dict[str, Any]:
            assert response.status_code == status, response.text
            body = response.json()
            self.position = max(self.position, body.get("position", 0))
            return body

        def _refused(self, response: Any, status: int) -> None:
            assert response.status_code == status, response.text
            assert fold_last_seq(env["nats_url"], self.data_dir, self.stream) == self.position

        @rule(target=conversations, first=texts)
        def start(self, first: str) -> str:
            body = {"config_id": "support-bot", "channel": "webchat", "user_id": "u-1", "initial_message": first}
            cid = self._ok(self.client.post(f"{BASE}/conversations", json=body, headers=TENANT), 201)["conversation_id"]
            self.models[cid] = Model()
            self.models[cid].messages.append(first)
            return cid

        @rule(cid=conversations, text=texts)
        def say(self, cid: str, text: str) -> None:
            response = self.client.post(f"{BASE}/conversations/{cid}/messages", json={"message": text}, headers=TENANT)
            if self.models[cid].status == "closed":
                self._refused(response, 409)
            else:
                self._ok(response)
                self.models[cid].messages.append(text)

        @rule(cid=conversations)
        def escalate(self, cid: str) -> None:
            model = self.models[cid]
            response = self.client.post(
                f"{BASE}/conversations/{cid}/escalate",
                json={"trigger": "user_requested", "reason": "help"},
                headers=TENANT,
            )
            if model.status != "active":
                self._refused(response, 409)
            else:
                model.escalation = self._ok(response)["escalation_id"]
                model.status = "escalated"

        @rule(cid=conversations)
        def close(self, cid: str) -> None:
            response = self.client.post(f"{BASE}/conversations/{cid}/close", json={}, headers=TENANT)
            if self.models[cid].status == "closed":
                self._refused(response, 409)
            else:
                self._ok(response)
                self.models[cid].status = "closed"

        @rule(cid=conversations, body=st.sampled_from([{}, {"message": ""}, {"message": 3}, {"text": "hi"}]))
        def malformed(self, cid: str, body: dict[str, Any]) -> None:
            response = self.client.post(f"{BASE}/conversations/{cid}/messages", json=body, headers=TENANT)
            self._refused(response, 400)

        @rule(cid=conversations, text=texts)
        def stranger(self, cid: str, text: str) -> None:
            response = self.client.post(
                f"{BASE}/conversations/{cid}/messages", json={"message": text}, headers=STRANGER
            )
            self._refused(response, 404)

        @invariant()
        def read_model_equals_the_fold_of_the_events(self) -> None:
            for cid, model in self.models.items():
                response = self.client.get(
                    f"{BASE}/conversations/{cid}", params={"min_position": self.position}, headers=TENANT
                )
                assert response.status_code == 200 and response.headers["X-Parley-Position-Reached"] == "true"
                view = response.json()
                state, _ = fold(env["nats_url"], self.data_dir, self.stream, cid)
                assert (
                    (view["status"], view["turn_count"])
                    == (state.status, state.turn_count)
                    == (
                        model.status,
                        len(model.messages),
                    )
                )
                assert [m["content"] for m in view["messages"] if m["role"] == "user"] == model.messages

    ConversationMachine.TestCase.settings = settings(
        max_examples=8, stateful_step_count=12, deadline=None, suppress_health_check=list(HealthCheck)
    )
    ConversationMachine.TestCase().runTest()


def fold_last_seq(nats_url: str, data_dir: Path, stream: str) -> int:
    """The stream's last sequence: an invalid command must not have moved it."""

    async def go() -> int:
        opened = await open_store(StoreSettings(nats_url=nats_url, data_dir=data_dir, stream=stream))
        try:
            return await opened.log.last_seq()
        finally:
            await opened.close()

    return asyncio.run(go())
