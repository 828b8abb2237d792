"""Real services for the suite: each is started once per session on a free port, in a temp dir."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import hypothesis  # noqa: F401  (imported early: its plugin imports it late, deep in the stack, which trips a CPython 3.11 parser bug)
import pytest
import pytest_asyncio

from infra.services import NatsServer
from streams.factory import OpenStore, StoreSettings, open_store


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if url := os.environ.get("PARLEY_TEST_NATS_URL"):  # run against a server you started yourself
        yield url
        return

    server = NatsServer(tmp_path_factory.mktemp("nats"), port=0, sync_always=True)
    url = server.start()
    yield url
    server.stop()


def unique_stream() -> str:
    return "T_" + uuid.uuid4().hex[:12].upper()


@pytest_asyncio.fixture
async def open_test_store(nats_url: str, tmp_path: Path) -> AsyncIterator[OpenStore]:
    opened = await open_store(StoreSettings(nats_url=nats_url, data_dir=tmp_path, stream=unique_stream()))
    yield opened
    await drop(opened)


async def drop(opened: OpenStore) -> None:
    """Delete a test store's streams (the agent work stream too, if a runtime made one) and buckets, then close it."""
    from streams.work import work_stream_name

    prefix = opened.settings.stream.lower()
    try:
        await opened.log.js.delete_stream(work_stream_name(opened.settings.stream))
    except Exception:
        pass
    await opened.log.delete()
    try:
        await opened.log.js.delete_key_value(f"{prefix}_snapshots")
    except Exception:
        pass
    await opened.close()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL server for the session (``DATABASE_URL`` style), in a dir the postgres user can reach."""
    if url := os.environ.get("PARLEY_TEST_DATABASE_URL"):
        yield url
        return
    import shutil

    from infra.services import Postgres, service_tmpdir

    root = service_tmpdir("parley-test-pg-")
    server = Postgres(root)
    url = server.start()
    yield url
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if url := os.environ.get("PARLEY_TEST_REDIS_URL"):
        yield url
        return
    from infra.services import Redis

    server = Redis(tmp_path_factory.mktemp("redis"))
    url = server.start()
    yield url
    server.stop()


def fresh_database(pg_url: str) -> str:
    """A new empty database on the session's server; returns its URL."""
    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return pg_url.rsplit("/", 1)[0] + "/" + name


async def delete_stream(nats_url: str, name: str) -> None:
    """Remove a test stream, its agent work stream and its snapshot bucket (streams of one server may
    not share subjects)."""
    from streams.jetstream import connect
    from streams.work import work_stream_name

    nc = await connect(nats_url, name="test-cleanup", retry_for=5)
    try:
        js = nc.jetstream()
        for stream in (work_stream_name(name), name, f"KV_{name.lower()}_snapshots"):
            try:
                await js.delete_stream(stream)
            except Exception:
                pass
    finally:
        await nc.close()


@pytest.fixture(scope="session", autouse=True)
def _quiet_logs() -> None:
    """Warnings and errors only: test output stays readable (PARLEY_LOG_LEVEL=DEBUG to trace)."""
    from infra.logs import configure_logging

    configure_logging(level=os.environ.get("PARLEY_LOG_LEVEL", "WARNING"), json=False)
