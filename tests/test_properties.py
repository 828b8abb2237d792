"""Property tests: the mapper round-trips any event, and concurrent writers never share a version."""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from pathlib import Path

import msgspec
from eventsourcing.cipher import AESCipher
from eventsourcing.compressor import ZlibCompressor
from eventsourcing.utils import Environment
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.errors import ConcurrencyError
from streams.codec import EventMapper, Pending
from streams.factory import StoreSettings, open_store
from streams.keys import LocalKeyStore
from streams.store import EventMeta
from streams.subjects import StreamId
from tests.conftest import drop, unique_stream
from tests.support import EmailNoted, Incremented

KEYS = LocalKeyStore(Path(tempfile.mkdtemp()) / "keys")
ids = st.from_regex(r"\A[a-z0-9][a-z0-9_-]{0,19}\Z")
events = st.one_of(
    st.builds(Incremented, amount=st.integers(min_value=-(2**63), max_value=2**63 - 1)),
    st.builds(
        EmailNoted,
        customer_id=ids,
        email=st.none() | st.text(),
        phone=st.none() | st.text(max_size=30),
        note=st.text(),
    ),
)
mappers = st.sampled_from(
    [
        EventMapper(keys=KEYS),
        EventMapper(keys=KEYS, compressor=ZlibCompressor()),
        EventMapper(
            keys=KEYS,
            compressor=ZlibCompressor(),
            cipher=AESCipher(Environment(env={"CIPHER_KEY": AESCipher.create_key(32)})),
        ),
    ]
)


@given(mapper=mappers, tenant=ids, version=st.integers(1, 10**9), event=events)
@settings(max_examples=300)
def test_any_event_survives_the_mapper_round_trip(
    mapper: EventMapper, tenant: str, version: int, event: object
) -> None:
    stream = StreamId(tenant, "counter", uuid.uuid4().hex)
    stored = mapper.to_stored_event(Pending(stream.key, version, event))  # type: ignore[arg-type]
    assert isinstance(stored.state, bytes)
    back = mapper.to_domain_event(stored)
    assert back == Pending(stream.key, version, event)  # type: ignore[arg-type]
    if isinstance(event, EmailNoted) and mapper.cipher is None and mapper.compressor is None:
        plain = msgspec.json.decode(stored.state)
        assert plain["email"] is None and plain["phone"] is None and "__pii__" in plain


@given(
    writers=st.integers(min_value=2, max_value=6),
    attempts=st.integers(min_value=1, max_value=8),
    batch=st.integers(min_value=1, max_value=3),
)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_concurrent_writers_to_one_aggregate_get_exactly_one_winner_per_version(
    nats_url: str, writers: int, attempts: int, batch: int
) -> None:
    asyncio.run(_race(nats_url, writers, attempts, batch))


async def _race(nats_url: str, writers: int, attempts: int, batch: int) -> None:
    stream_name = unique_stream()
    with tempfile.TemporaryDirectory() as tmp:
        # Two connections, as two processes: writers alternate between them.
        stores = [
            await open_store(StoreSettings(nats_url=nats_url, data_dir=Path(tmp), stream=stream_name)) for _ in range(2)
        ]
        try:
            sid = StreamId("acme", "counter", uuid.uuid4().hex)
            wins: list[tuple[int, int]] = []  # (writer, first version written)
            conflicts = 0

            async def writer(n: int) -> None:
                nonlocal conflicts
                store = stores[n % 2].store
                for attempt in range(attempts):
                    current = await store.read(sid)
                    version = current[-1].version if current else 0
                    await asyncio.sleep(0)
                    try:
                        await store.append(
                            sid,
                            [Incremented(amount=n * 1000 + attempt)] * batch,
                            expected_version=version,
                            meta=EventMeta(command_id=f"w{n}-a{attempt}"),
                        )
                    except ConcurrencyError:
                        conflicts += 1
                    else:
                        wins.append((n, version + 1))

            await asyncio.gather(*(writer(n) for n in range(writers)))
            recorded = await stores[0].store.read(sid)
            assert [e.version for e in recorded] == list(range(1, len(recorded) + 1))  # contiguous
            assert len(recorded) == len(wins) * batch  # every win landed, nothing else did
            assert len(wins) + conflicts == writers * attempts
            starts = sorted(v for _, v in wins)
            assert starts == list(range(1, len(recorded) + 1, batch))  # exactly one winner per version
            # Each winning batch is contiguous and written by one writer only.
            for i in range(0, len(recorded), batch):
                assert len({e.event for e in recorded[i : i + batch]}) == 1  # type: ignore[misc]
        finally:
            await drop(stores[0])
            await stores[1].close()
