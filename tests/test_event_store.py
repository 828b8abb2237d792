"""The event store against a real nats-server: concurrency, atomicity, idempotency, reads."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import msgspec
import pytest

from domain.errors import ConcurrencyError, UnavailableError
from streams.errors import EventDecodeError
from streams.factory import OpenStore, StoreSettings, open_store
from streams.feed import Feed
from streams.jetstream import OutMessage, connect
from streams.repository import Repository
from streams.store import EventMeta, EventStore, StoredItem, encode_commit
from streams.subjects import ALL_EVENTS, StreamId
from tests.conftest import drop, unique_stream
from tests.support import COUNTER, EmailNoted, Incremented


def new_stream(tenant: str = "acme") -> StreamId:
    return StreamId(tenant, "counter", uuid.uuid4().hex)


async def test_appended_events_read_back_in_order_with_their_metadata(open_test_store: OpenStore) -> None:
    store, sid = open_test_store.store, new_stream()
    meta = EventMeta(command_id="c1", command="Increment", actor="user:42", correlation_id="req-1")
    result = await store.append(sid, [Incremented(amount=1), Incremented(amount=2)], expected_version=0, meta=meta)
    assert (result.version, result.count, result.duplicate) == (2, 2, False)

    events = await store.read(sid)
    assert [e.event for e in events] == [Incremented(amount=1), Incremented(amount=2)]
    assert [e.version for e in events] == [1, 2]
    assert [e.seq for e in events] == [result.seq, result.seq]  # one commit holds both
    assert all(e.meta == meta for e in events)
    assert all(e.recorded_at.tzinfo is not None for e in events)


async def test_append_with_stale_expected_version_raises_conflict_and_writes_nothing(
    open_test_store: OpenStore,
) -> None:
    store, sid = open_test_store.store, new_stream()
    await store.append(sid, [Incremented(amount=1)], expected_version=0)
    with pytest.raises(ConcurrencyError) as caught:
        await store.append(sid, [Incremented(amount=9), Incremented(amount=9)], expected_version=0)
    assert caught.value.status == 409
    with pytest.raises(ConcurrencyError):
        await store.append(sid, [Incremented(amount=9)], expected_version=5)
    assert [e.event for e in await store.read(sid)] == [Incremented(amount=1)]


async def test_a_stale_writer_in_another_process_is_rejected_by_the_server(
    open_test_store: OpenStore, nats_url: str, tmp_path: Path
) -> None:
    # Two stores sharing one stream, as two processes would: the second one's cached position is stale.
    other = await open_store(
        StoreSettings(nats_url=nats_url, data_dir=tmp_path, stream=open_test_store.settings.stream)
    )
    try:
        sid = new_stream()
        await open_test_store.store.append(sid, [Incremented(amount=1)], expected_version=0)
        await other.store.read(sid)  # other now believes version 1 is at this sequence
        await open_test_store.store.append(sid, [Incremented(amount=2)], expected_version=1)
        with pytest.raises(ConcurrencyError):
            await other.store.append(sid, [Incremented(amount=3)], expected_version=1)
        assert [e.version for e in await other.store.read(sid)] == [1, 2]
    finally:
        await other.close()


async def test_a_group_of_commits_is_all_or_nothing(open_test_store: OpenStore) -> None:
    store, log = open_test_store.store, open_test_store.log
    a, b = new_stream(), new_stream()
    await store.append(b, [Incremented(amount=1)], expected_version=0)
    before = await log.last_seq()
    # One commit per aggregate in one atomic batch; b's expectation is wrong, so a's must not land either.
    messages = [
        OutMessage(f"{a.subject}.c-1", {}, encode_commit(1, [StoredItem("x", b"{}")])),
        OutMessage(f"{b.subject}.c-2", {}, encode_commit(2, [StoredItem("x", b"{}")])),
    ]
    with pytest.raises(ConcurrencyError):
        await log.publish(messages, expect={f"{a.subject}.c-1": 0, f"{b.subject}.c-2": 999})
    assert await log.last_seq() == before
    assert await store.read(a) == []


async def test_readers_never_see_part_of_a_commands_events(open_test_store: OpenStore) -> None:
    store = open_test_store.store
    sid = new_stream()
    seen_sizes: set[int] = set()
    stop = asyncio.Event()

    async def reader() -> None:
        while not stop.is_set():
            seen_sizes.add(len(await store.read(sid)) % 50)

    task = asyncio.create_task(reader())
    version = 0
    for _ in range(10):
        await store.append(sid, [Incremented(amount=1)] * 50, expected_version=version)
        version += 50
        await asyncio.sleep(0)
    stop.set()
    await task
    assert seen_sizes == {0}


async def test_a_retried_command_returns_its_first_outcome_and_appends_nothing(open_test_store: OpenStore) -> None:
    store, log, sid = open_test_store.store, open_test_store.log, new_stream()
    meta = EventMeta(command_id="cmd-" + uuid.uuid4().hex)
    first = await store.append(sid, [Incremented(amount=1)], expected_version=0, meta=meta)
    last_seq = await log.last_seq()
    # Same command id, even with a different (stale or fresh) expected version: the first outcome.
    again = await store.append(sid, [Incremented(amount=1)], expected_version=1, meta=meta)
    assert again.duplicate and (again.seq, again.version) == (first.seq, first.version)
    assert await log.last_seq() == last_seq


async def test_a_command_is_remembered_beyond_the_duplicate_window(nats_url: str, tmp_path: Path) -> None:
    opened = await open_store(
        StoreSettings(nats_url=nats_url, data_dir=tmp_path, stream=unique_stream(), duplicate_window=0.5)
    )
    try:
        sid, meta = new_stream(), EventMeta(command_id="late-retry")
        first = await opened.store.append(sid, [Incremented(amount=1)], expected_version=0, meta=meta)
        await asyncio.sleep(1.0)  # the server has forgotten the message id by now
        again = await opened.store.append(sid, [Incremented(amount=1)], expected_version=1, meta=meta)
        assert again.duplicate and again.seq == first.seq
        assert len(await opened.store.read(sid)) == 1
    finally:
        await drop(opened)


async def test_a_command_that_conflicted_leaves_no_record_so_its_retry_goes_through(open_test_store: OpenStore) -> None:
    store, sid = open_test_store.store, new_stream()
    await store.append(sid, [Incremented(amount=1)], expected_version=0)
    meta = EventMeta(command_id="retry-me")
    with pytest.raises(ConcurrencyError):
        await store.append(sid, [Incremented(amount=2)], expected_version=0, meta=meta)
    assert await store.outcome(sid, "retry-me") is None
    result = await store.append(sid, [Incremented(amount=2)], expected_version=1, meta=meta)
    assert not result.duplicate and result.version == 2
    first = await store.outcome(sid, "retry-me")
    assert first is not None and first.meta is not None and first.meta.command_id == "retry-me"
    assert msgspec.structs.replace(first, meta=None) == msgspec.structs.replace(result, duplicate=True)


async def test_concurrent_appends_are_committed_together_and_one_conflict_fails_only_its_own(
    open_test_store: OpenStore,
) -> None:
    store, log = open_test_store.store, open_test_store.log
    streams = [new_stream() for _ in range(40)]
    contested = streams[0]
    await store.append(contested, [Incremented(amount=0)], expected_version=0)
    before = await log.last_seq()

    async def one(i: int, sid: StreamId) -> object:
        try:  # version 0 is stale for the contested stream only
            return await store.append(
                sid, [Incremented(amount=i)] * 2, expected_version=0, meta=EventMeta(command_id=f"g-{i}")
            )
        except ConcurrencyError as e:
            return e

    outcomes = await asyncio.gather(*(one(i, sid) for i, sid in enumerate(streams)))
    assert isinstance(outcomes[0], ConcurrencyError)
    assert all(not isinstance(o, Exception) for o in outcomes[1:])
    for i, sid in enumerate(streams[1:], 1):
        assert [e.event for e in await store.read(sid)] == [Incremented(amount=i)] * 2
    assert await log.last_seq() == before + 39  # one commit each
    assert len({o.seq for o in outcomes[1:]}) == 39  # type: ignore[union-attr]


async def test_command_ids_are_scoped_to_their_tenant(open_test_store: OpenStore) -> None:
    store = open_test_store.store
    meta = EventMeta(command_id="same-id")
    a = await store.append(new_stream("tenant-a"), [Incremented(amount=1)], expected_version=0, meta=meta)
    b = await store.append(new_stream("tenant-b"), [Incremented(amount=1)], expected_version=0, meta=meta)
    assert not a.duplicate and not b.duplicate and a.seq != b.seq


async def test_personal_data_is_encrypted_in_the_log_and_readable_with_the_key(open_test_store: OpenStore) -> None:
    store, log, sid = open_test_store.store, open_test_store.log, new_stream()
    event = EmailNoted(customer_id="cust-1", email="ann@example.com", phone="+15551234567", note="vip")
    await store.append(sid, [event], expected_version=0)
    raw = (await log.read_subject(sid.subjects))[0]
    assert b"ann@example.com" not in raw.data and b"5551234567" not in raw.data
    assert b"vip" in raw.data  # only the personal fields are sealed
    assert (await store.read(sid))[0].event == event


async def test_destroying_a_customers_key_erases_them_without_rewriting_the_log(open_test_store: OpenStore) -> None:
    store, log, keys = open_test_store.store, open_test_store.log, open_test_store.keys
    sid = new_stream()
    await store.append(
        sid,
        [
            EmailNoted(customer_id="gone", email="gone@example.com"),
            EmailNoted(customer_id="stays", email="stays@example.com"),
        ],
        expected_version=0,
    )
    before = [r.data for r in await log.read_subject(sid.subjects)]
    keys.shred("acme", "gone")
    events = [e.event for e in await store.read(sid)]
    assert events == [
        EmailNoted(customer_id="gone", email=None),
        EmailNoted(customer_id="stays", email="stays@example.com"),
    ]
    assert [r.data for r in await log.read_subject(sid.subjects)] == before
    # New data about the same person is sealed under a new key and stays readable.
    await store.append(sid, [EmailNoted(customer_id="gone", email="new@example.com")], expected_version=2)
    assert (await store.read(sid))[-1].event.email == "new@example.com"  # type: ignore[attr-defined]


async def test_one_tenants_ciphertext_never_decrypts_under_anothers_key(open_test_store: OpenStore) -> None:
    store, log = open_test_store.store, open_test_store.log
    keys = open_test_store.keys
    keys.current("tenant-b", "cust-1")  # tenant b has a key for a customer of the same id, same epoch
    a = new_stream("tenant-a")
    await store.append(a, [EmailNoted(customer_id="cust-1", email="secret@example.com")], expected_version=0)
    raw = (await log.read_subject(a.subjects))[0]
    b = new_stream("tenant-b")
    published = await log.publish([OutMessage(f"{b.subject}.c-copied", {}, raw.data)])
    with pytest.raises(EventDecodeError) as caught:
        await store.read(b)
    assert caught.value.seq == published.last_seq
    assert str(published.last_seq) in str(caught.value)


async def test_an_event_of_unknown_type_raises_an_error_naming_its_sequence(open_test_store: OpenStore) -> None:
    store, log, sid = open_test_store.store, open_test_store.log, new_stream()
    commit = encode_commit(1, [StoredItem("nowhere:Missing", b"{}")])
    published = await log.publish([OutMessage(f"{sid.subject}.c-odd", {}, commit)])
    with pytest.raises(EventDecodeError) as caught:
        await store.read(sid)
    assert caught.value.seq == published.last_seq
    assert f"sequence {published.last_seq}" in caught.value.message


async def test_loading_from_a_snapshot_folds_only_the_events_after_it(open_test_store: OpenStore) -> None:
    repo = Repository(
        open_test_store.store,
        COUNTER,
        snapshots=open_test_store.snapshots,
        keys=open_test_store.keys,
        snapshot_every=10,
    )
    store, sid = open_test_store.store, repo.stream("acme", uuid.uuid4().hex)
    for version in range(25):
        await store.append(sid, [Incremented(amount=1)], expected_version=version)
    first = await repo.load("acme", sid.aggregate_id)
    assert (first.state.total, first.version, first.events_folded, first.from_snapshot) == (25, 25, 25, False)
    await store.append(
        sid, [Incremented(amount=2), EmailNoted(customer_id="c9", email="c9@example.com")], expected_version=25
    )
    repo.forget(sid)  # as another process would: nothing in memory, the snapshot in the bucket
    second = await repo.load("acme", sid.aggregate_id)
    assert second.from_snapshot and second.events_folded == 2
    assert second.state == (await repo.load("acme", sid.aggregate_id, use_snapshot=False)).state
    assert second.state.total == 27 and second.state.email == "c9@example.com"
    # The snapshot's position lets the next append go through without another read.
    await store.append(sid, [Incremented(amount=1)], expected_version=second.version)


async def test_destroyed_keys_void_snapshots_too(open_test_store: OpenStore) -> None:
    repo = Repository(
        open_test_store.store, COUNTER, snapshots=open_test_store.snapshots, keys=open_test_store.keys, snapshot_every=1
    )
    sid = repo.stream("acme", uuid.uuid4().hex)
    await open_test_store.store.append(sid, [EmailNoted(customer_id="c7", email="c7@example.com")], expected_version=0)
    await repo.load("acme", sid.aggregate_id)  # writes a snapshot holding the email
    open_test_store.keys.shred("acme", "c7")
    repo.forget(sid)
    loaded = await repo.load("acme", sid.aggregate_id)
    assert not loaded.from_snapshot and loaded.state.email is None


async def test_a_durable_feed_follows_all_events_in_order_and_resumes_after_its_ack(open_test_store: OpenStore) -> None:
    store, log = open_test_store.store, open_test_store.log
    streams = [new_stream() for _ in range(3)]
    for i in range(4):
        for sid in streams:
            await store.append(
                sid, [Incremented(amount=i)], expected_version=i, meta=EventMeta(command_id=uuid.uuid4().hex)
            )
    feed = Feed(log, "proj-test", subject=ALL_EVENTS, batch=5, idle_wait=0.2)
    batch = await feed.fetch()
    assert [m.seq for m in batch.messages] == [1, 2, 3, 4, 5]
    await batch.ack()
    await feed.close()

    resumed = Feed(log, "proj-test", subject=ALL_EVENTS, batch=100, idle_wait=0.2)
    rest = await resumed.fetch()
    assert [m.seq for m in rest.messages] == list(range(6, 13))
    assert [e.event for e in store.decode(rest.messages[0])] == [Incremented(amount=1)]
    await rest.ack()
    await resumed.close()

    from_position = Feed(log, "proj-from-10", subject=ALL_EVENTS, start_seq=10, idle_wait=0.2)
    assert [m.seq for m in (await from_position.fetch()).messages] == [10, 11, 12]
    await from_position.delete()


async def test_a_replay_reads_a_subjects_commits_up_to_the_end_in_pages_and_leaves_no_consumer(
    open_test_store: OpenStore,
) -> None:
    store, log = open_test_store.store, open_test_store.log
    acme, other = new_stream("acme"), new_stream("other")
    for i in range(7):
        for sid in (acme, other):
            await store.append(
                sid, [Incremented(amount=i)], expected_version=i, meta=EventMeta(command_id=uuid.uuid4().hex)
            )
    last = await store.last_seq()

    pages = [page async for page in store.replay(subject="parley.ev.acme.>", page=4)]

    assert all(len(page) <= 4 for page in pages) and len(pages) >= 2
    seqs = [m.seq for page in pages for m in page]
    assert seqs == sorted(seqs) and len(seqs) == 7 and seqs[-1] < last  # acme's 7 commits, the other's skipped
    assert [e.event.amount for page in pages for m in page for e in store.decode(m)] == list(range(7))
    everything = [m.seq for page in [p async for p in store.replay(page=5)] for m in page]
    assert everything == list(range(1, last + 1))
    assert await log.js.consumers_info(log.stream) == []  # each replay's consumer was deleted after it


async def test_nats_unreachable_at_start_up_gives_one_clear_error_naming_the_variable() -> None:
    with pytest.raises(UnavailableError) as caught:
        await connect("nats://127.0.0.1:1", name="test", retry_for=0.5)
    assert "NATS_URL" in caught.value.message and "nats://127.0.0.1:1" in caught.value.message


async def test_the_store_runs_on_a_three_node_cluster_with_replicated_streams(tmp_path: Path) -> None:
    from infra.services import NatsCluster, service_tmpdir

    root = service_tmpdir("parley-cluster-")
    cluster = NatsCluster(root, size=3)
    urls = cluster.start()
    try:
        opened = await open_store(
            StoreSettings(nats_url=",".join(urls), data_dir=tmp_path, stream="CLUSTERED", replicas=3)
        )
        try:
            info = await opened.log.js.stream_info("CLUSTERED")
            assert info.config.num_replicas == 3 and info.cluster is not None and len(info.cluster.replicas or []) == 2
            sid = new_stream()
            await opened.store.append(sid, [Incremented(amount=1), Incremented(amount=2)], expected_version=0)
            with pytest.raises(ConcurrencyError):
                await opened.store.append(sid, [Incremented(amount=3)], expected_version=0)
            assert [e.version for e in await opened.store.read(sid)] == [1, 2]
        finally:
            await opened.close()
    finally:
        cluster.stop()
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def test_settings_come_from_the_environment_with_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for variable in ("NATS_URL", "PARLEY_STREAM", "PARLEY_STREAM_REPLICAS", "PARLEY_SNAPSHOT_EVERY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("PARLEY_DATA", str(tmp_path))
    assert StoreSettings.from_env() == StoreSettings(data_dir=tmp_path)
    monkeypatch.setenv("NATS_URL", "nats://elsewhere:4222")
    monkeypatch.setenv("PARLEY_STREAM_REPLICAS", "3")
    settings = StoreSettings.from_env(snapshot_every=7)
    assert (settings.nats_url, settings.replicas, settings.snapshot_every) == ("nats://elsewhere:4222", 3, 7)


async def test_a_cached_aggregate_still_sees_what_another_process_appended(open_test_store: OpenStore) -> None:
    repo = Repository(open_test_store.store, COUNTER)
    sid = repo.stream("acme", uuid.uuid4().hex)
    await open_test_store.store.append(sid, [Incremented(amount=1)], expected_version=0)
    first = await repo.load("acme", sid.aggregate_id)
    again = await repo.load("acme", sid.aggregate_id)
    assert again.from_cache and again.events_folded == 0 and again.state == first.state
    other = EventStore(open_test_store.log, open_test_store.store.mapper)  # another writer
    await other.append(sid, [Incremented(amount=5)], expected_version=1)
    fresh = await repo.load("acme", sid.aggregate_id)
    assert fresh.from_cache and fresh.events_folded == 1 and (fresh.state.total, fresh.version) == (6, 2)


def test_an_event_keeps_its_stored_topic_when_its_module_is_renamed() -> None:
    """Topics name events in the log: a renamed domain module's events keep the topic they were first
    stored under, and that topic resolves to the class in its new module."""
    from domain import config, escalation, permissions
    from domain import conversation as c
    from streams.codec import resolve_event, topic_of

    assert topic_of(escalation.HumanAgentRegistered) == "domain.agent_pool:HumanAgentRegistered"
    assert topic_of(config.ConfigVersionCreated) == "domain.agent_config:ConfigVersionCreated"
    assert topic_of(permissions.MemberPermissionsSet) == "domain.config_members:MemberPermissionsSet"
    assert resolve_event("domain.agent_pool:EscalationQueued") is escalation.EscalationQueued
    assert resolve_event("domain.config_members:MemberPermissionsSet") is permissions.MemberPermissionsSet
    assert topic_of(c.UserMessageReceived) == "domain.conversation:UserMessageReceived"  # not moved: as it was


async def test_a_commit_larger_than_the_bound_is_refused_and_nothing_is_written(open_test_store: OpenStore) -> None:
    from domain.errors import ValidationError
    from streams.store import MAX_COMMIT_BYTES

    store, sid = open_test_store.store, new_stream()
    huge = EmailNoted(customer_id="c-1", email="x" * (MAX_COMMIT_BYTES + 1))
    with pytest.raises(ValidationError, match="KiB at most"):
        await store.append(sid, [huge], expected_version=0)
    assert await store.read(sid) == []
