"""What the voice tests share: the call stack on the real services, and a phone on a media stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import psycopg

from agents.config import VersionedConfigs
from agents.demo_data import setup_demo_data
from agents.tools import connect_url, demo_registry
from commands.call import CALL, VOICE_LINE, CallService
from commands.config import AGENT_CONFIG, CONFIG_MEMBERS, SYSTEM, ConfigService, ensure_demo_configs
from commands.runner import CommandContext, CommandRunner
from domain import call as v
from domain import escalation as p
from domain.escalation import DECIDER as AGENT_POOL
from gateways.telephony.phone import CallRecord, Phone, Turn
from gateways.telephony.recordings import RecordingStore
from gateways.telephony.session import VoiceStack, answer_stream
from gateways.telephony.twilio import MediaStreamBridge
from streams.factory import OpenStore
from streams.subjects import StreamId
from tests.conftest import fresh_database

TENANT = "acme"


@dataclass
class VoiceRig:
    opened: OpenStore
    runner: CommandRunner
    configs: ConfigService
    calls: CallService
    stack: VoiceStack
    database_url: str
    live: list[tuple[str, str, dict[str, Any]]]

    async def events(self, call_id: str) -> list[Any]:
        return [e.event for e in await self.opened.store.read(StreamId(TENANT, v.AGGREGATE_TYPE, call_id))]

    async def register_agent(self, agent_id: str, name: str) -> None:
        for command in (
            p.RegisterHumanAgent(agent_id=agent_id, name=name, at=_now()),
            p.SetHumanAgentAvailability(agent_id=agent_id, available=True, at=_now()),
        ):
            ctx = CommandContext(tenant=TENANT, actor="test", command_id=f"{type(command).__name__}-{agent_id}")
            await self.runner.handle(AGENT_POOL, p.POOL_ID, command, ctx)

    async def add_config(self, config_id: str, yaml_text: str) -> None:
        await self.configs.create_version(TENANT, config_id, yaml_text, SYSTEM, commit_message="test", first=True)


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


@asynccontextmanager
async def voice_rig(
    opened: OpenStore, pg_url: str, tmp_path: Path, env: Mapping[str, str] | None = None
) -> AsyncIterator[VoiceRig]:
    url = fresh_database(pg_url)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await setup_demo_data(conn, tenants=(TENANT,))
    runner = CommandRunner.for_aggregates(opened.store, [AGENT_CONFIG, CONFIG_MEMBERS, AGENT_POOL, CALL, VOICE_LINE])
    service = ConfigService(runner)
    await ensure_demo_configs(service, TENANT)
    calls = CallService(runner, service.catalog)
    live: list[tuple[str, str, dict[str, Any]]] = []

    async def publish(tenant: str, call_id: str, event: str, body: dict[str, Any]) -> None:
        live.append((call_id, event, body))

    stack = VoiceStack(
        calls,
        demo_registry(connect_url(url)),
        VersionedConfigs(service.catalog.state),
        dict(env or {}),
        recordings=RecordingStore(tmp_path / "recordings", opened.keys),
        publish=publish,
    )
    try:
        yield VoiceRig(opened, runner, service, calls, stack, url, live)
    finally:
        await stack.aclose()


async def phone_call(
    rig: VoiceRig, script: list[Turn], *, config_id: str = "voice-bot", speed: float = 1.0, **phone: Any
) -> tuple[CallRecord, Phone]:
    """A caller on a Twilio media stream, in memory: the phone and the bridge joined by two queues."""
    to_bridge: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    to_phone: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    async def on_start(start: dict[str, Any], audio_in: Any, audio_out: Any) -> Any:
        return await answer_stream(rig.stack, TENANT, config_id, start, audio_in, audio_out)

    async def to_bridge_put(message: dict[str, Any]) -> None:
        await to_bridge.put(message)

    async def to_phone_put(message: dict[str, Any]) -> None:
        await to_phone.put(message)

    bridge = MediaStreamBridge(to_bridge.get, to_phone_put, on_start)
    device = Phone(to_bridge_put, to_phone.get, speed=speed, **phone)
    served = asyncio.create_task(bridge.run())
    try:
        record = await device.call(script)
    finally:
        await to_bridge.put(None)
        await asyncio.wait_for(served, 60)
        await to_phone.put(None)
    return record, device


class RigLine:
    """Voice scenarios' phone line into the rig: a media stream in memory to the platform's Twilio
    bridge and voice session, the call's events from the stream, its status from the calls read
    model (the projector caught up on the stream, as the platform's would be)."""

    def __init__(self, rig: VoiceRig, speed: float = 1.5) -> None:
        self.rig, self.speed = rig, speed
        self._pool: Any = None

    async def prepare(self, name: str, config: Path, agents: Mapping[str, str]) -> str:
        config_id = f"scenario-{name}".replace("_", "-")
        await self.rig.add_config(config_id, config.read_text())  # noqa: ASYNC240 (a small file, once)
        for agent_id, agent_name in agents.items():
            await self.rig.register_agent(agent_id, agent_name)
        return config_id

    @asynccontextmanager
    async def media(self, config_id: str, call_sid: str) -> AsyncIterator[tuple[Any, Any, dict[str, str]]]:
        to_bridge: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        to_phone: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        async def on_start(start: dict[str, Any], audio_in: Any, audio_out: Any) -> Any:
            return await answer_stream(self.rig.stack, TENANT, config_id, start, audio_in, audio_out)

        async def send(message: dict[str, Any]) -> None:
            await to_bridge.put(message)

        async def to_phone_put(message: dict[str, Any]) -> None:
            await to_phone.put(message)

        served = asyncio.create_task(MediaStreamBridge(to_bridge.get, to_phone_put, on_start).run())
        try:
            yield send, to_phone.get, {}
        finally:
            await to_bridge.put(None)
            await asyncio.wait_for(served, 60)
            await to_phone.put(None)

    async def events(self, call_sid: str) -> list[Any]:
        from gateways.telephony.twilio import call_id_for

        return await self.rig.events(call_id_for(TENANT, call_sid))

    async def outcome(self, call_sid: str) -> Any:
        from gateways.http.call import RECORDING_URL
        from gateways.telephony.scenarios import CallOutcome
        from gateways.telephony.twilio import call_id_for
        from projections import registry
        from projections.call import CallsProjector
        from read_models.call import CallQueries

        call_id = call_id_for(TENANT, call_sid)
        for _ in range(100):  # the session ends the call (and stores its recordings) once the stream stops
            if any(isinstance(e, v.CallEnded) for e in await self.rig.events(call_id)):
                break
            await asyncio.sleep(0.1)
        if self._pool is None:
            from psycopg_pool import AsyncConnectionPool

            self._pool = AsyncConnectionPool(self.rig.database_url, open=False, kwargs={"autocommit": True})
            await self._pool.open()
            await registry.migrate(self._pool, [CallsProjector()])
        runner = registry.runner(CallsProjector(), self.rig.opened.store, self._pool, idle_wait=0.2)
        try:
            await runner.catch_up()
        finally:
            await runner.close()
        view = await CallQueries(self._pool).get(TENANT, call_id, recording_url=RECORDING_URL)
        if view is None:
            raise AssertionError(f"call {call_id} is not in the read model")
        return CallOutcome.from_status(msgspec.to_builtins(view))

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.close()
