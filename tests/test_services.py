"""infra/services.py against real servers: each test starts its own copy on free ports in a temp dir."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.services import (
    REPO_ROOT,
    NatsCluster,
    NatsServer,
    Postgres,
    Redis,
    ensure_chdb,
    free_port,
    jetstream_account_info,
    service_tmpdir,
)

NATS_BIN = str(REPO_ROOT / ".venv" / "bin" / "nats-server")


def nats_bin() -> str:
    return NATS_BIN if Path(NATS_BIN).exists() else (shutil.which("nats-server") or "nats-server")


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_nats_config_sync_always(tmp_path: Path) -> None:
    durable = NatsServer(tmp_path / "a", sync_always=True).write_config().read_text()
    assert "sync_interval: always" in durable
    assert "Jepsen" in durable and "2 minutes" in durable
    assert "max_payload: 8MB" in durable
    lazy = NatsServer(tmp_path / "b", sync_always=False).write_config().read_text()
    assert "sync_interval: always" not in lazy
    for conf in (tmp_path / "a" / "nats.conf", tmp_path / "b" / "nats.conf"):
        subprocess.run([nats_bin(), "-t", "-c", str(conf)], check=True, capture_output=True)


def test_static_cluster_configs_are_valid() -> None:
    for i in (1, 2, 3):
        conf = REPO_ROOT / "infra" / "nats-cluster" / f"node{i}.conf"
        text = conf.read_text()
        assert "sync_interval: always" in text and f'server_name: "parley-n{i}"' in text
        subprocess.run([nats_bin(), "-t", "-c", str(conf)], check=True, capture_output=True)


async def _publish_and_read(servers: list[str], stream: str, replicas: int = 1) -> tuple[int, int, str | None]:
    """Create a stream, publish one message; return (ack seq, messages in stream, stream leader)."""
    import nats

    nc = await nats.connect(servers=servers, connect_timeout=5)
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[f"{stream}.>"], num_replicas=replicas)
        ack = await js.publish(f"{stream}.x", b"hello", timeout=10)
        info = await js.stream_info(stream)
        return ack.seq, info.state.messages, info.cluster.leader if info.cluster else None
    finally:
        await nc.close()


async def _count(servers: list[str], stream: str) -> int:
    import nats

    nc = await nats.connect(servers=servers, connect_timeout=5)
    try:
        return (await nc.jetstream().stream_info(stream)).state.messages
    finally:
        await nc.close()


def test_nats_server_jetstream_survives_restart(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats")
    url = server.start()
    try:
        assert url == f"nats://127.0.0.1:{server.port}"
        assert jetstream_account_info(server.port)["streams"] == 0
        assert asyncio.run(_publish_and_read([url], "ORDERS"))[:2] == (1, 1)
        server.stop()
        assert not server.is_running()
        server.start()  # same dir and port: the stream and its message are still there
        assert asyncio.run(_count([url], "ORDERS")) == 1
    finally:
        server.stop()


def test_nats_detached_found_again_through_pid_file(tmp_path: Path) -> None:
    first = NatsServer(tmp_path / "nats", detached=True)
    first.start()
    try:
        assert first.pid_file.read_text().strip() == str(first.pid)
        other = NatsServer(tmp_path / "nats", port=first.port, detached=True)  # e.g. `down` in a new process
        assert other.is_running() and other.pid == first.pid
        other.stop()
        assert not other.is_running()
        deadline = time.monotonic() + 5  # `first` is the parent: it sees the exit once the child is reaped
        while first.is_running() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not first.is_running()
        assert not first.pid_file.exists()
    finally:
        first.stop()


@pytest.fixture
def pg_dir() -> Iterator[Path]:
    path = service_tmpdir("parley-test-pg-")  # not tmp_path: the postgres OS user cannot reach it as root
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_postgres(pg_dir: Path) -> None:
    import psycopg

    pg = Postgres(pg_dir)
    url = pg.start()
    try:
        assert url == f"postgresql://parley@127.0.0.1:{pg.port}/parley"
        with psycopg.connect(url) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
            row = conn.execute("select current_user, current_database(), current_setting('fsync')").fetchone()
            assert row == ("parley", "parley", "on")
            conn.execute("create table t (x int)")
            conn.execute("insert into t values (42)")
        pg.stop()
        assert not pg.is_running()
        pg.start()  # existing cluster: no initdb, data kept
        with psycopg.connect(url) as conn:
            assert conn.execute("select x from t").fetchone() == (42,)
    finally:
        pg.stop()


def test_redis(tmp_path: Path) -> None:
    import redis

    server = Redis(tmp_path / "redis")
    url = server.start()
    try:
        assert url == f"redis://127.0.0.1:{server.port}/0"
        client = redis.Redis.from_url(url)
        try:
            assert client.ping() is True
            assert client.config_get("appendonly") == {"appendonly": "yes"}
        finally:
            client.close()
    finally:
        server.stop()
    assert not server.is_running()


def test_ensure_chdb(tmp_path: Path) -> None:
    import clickhouse_connect

    dsn = ensure_chdb(tmp_path / "chdb")
    assert dsn == f"chdb://{(tmp_path / 'chdb').resolve()}"
    client = clickhouse_connect.get_client(dsn=dsn)
    try:
        client.command("CREATE TABLE t (x UInt8) ENGINE = MergeTree ORDER BY x")
        client.insert("t", [[7]], column_names=["x"])
    finally:
        client.close()
    dsn_db = ensure_chdb(tmp_path / "chdb", database="parley")  # reopen: data kept, database created
    assert dsn_db == f"{dsn}?database=parley"
    client = clickhouse_connect.get_client(dsn=dsn_db)
    try:
        assert client.command("SELECT currentDatabase()") == "parley"
        assert client.command("SELECT x FROM default.t") == 7
    finally:
        client.close()


def test_nats_cluster_r3_stream_survives_leader_loss(tmp_path: Path) -> None:
    cluster = NatsCluster(tmp_path / "cluster")
    urls = cluster.start()
    try:
        assert len(urls) == 3 and len(set(urls)) == 3
        assert cluster.meta_leader() in {s.server_name for s in cluster.servers}
        seq, messages, leader = asyncio.run(_publish_and_read(urls, "EVENTS", replicas=3))
        assert (seq, messages) == (1, 1)
        info = cluster.servers[0].monitor("jsz")
        assert info["meta_cluster"]["cluster_size"] == 3
        # kill the stream's leader: the two survivors elect a new one (a few seconds) and keep acknowledging
        victim = next(s for s in cluster.servers if s.server_name == leader)
        victim.kill()
        survivors = [s.url for s in cluster.servers if s is not victim]
        assert asyncio.run(_publish_more(survivors, "EVENTS")) == 2
    finally:
        cluster.stop()


async def _publish_more(servers: list[str], stream: str) -> int:
    import nats

    nc = await nats.connect(servers=servers, connect_timeout=5)
    try:
        js = nc.jetstream()
        for attempt in range(50):  # the stream may need a moment to notice the lost peer / elect a leader
            try:
                return (await js.publish(f"{stream}.y", b"again", timeout=2)).seq
            except Exception:
                if attempt == 49:
                    raise
                await asyncio.sleep(0.2)
        raise AssertionError("unreachable")
    finally:
        await nc.close()


def test_a_settled_heap_is_frozen_and_collects_its_young_less_often() -> None:
    import gc

    from infra import heap

    before = gc.get_threshold()
    try:
        kept = [[] for _ in range(10)]  # lists: objects the collector tracks
        heap.settle()
        scanned = {id(o) for o in gc.get_objects()}  # every generation the collector scans
        assert not any(id(k) in scanned for k in kept)  # what was alive is out of its reach
        fresh: list[int] = []
        assert any(o is fresh for o in gc.get_objects())  # what comes later is collected as usual
        assert gc.get_threshold()[0] == heap.YOUNG
        assert gc.get_threshold()[1:] == before[1:]
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
