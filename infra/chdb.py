"""chDB, ClickHouse embedded in the process: its store on disk, who has it open, a client for it.

Production code opens ClickHouse through here (``client``): ``chdb:///<dir>`` for the embedded
engine, ``http(s)://host:8123`` for a server. chDB allows one engine path per process and one
process per path (an exclusive ``flock`` on ``<path>/status`` while an engine is open), so a second
process gets ``ChdbBusy`` naming the one that has the store (callers in the layers above translate
it into the error tree's ``UnavailableError``: infra knows neither ``domain`` nor ``streams``). The development service
manager (``infra.services``) uses the same helpers for ``up``, ``status`` and ``wipe``.

Pure stdlib at import time; clickhouse-connect is imported where a client is made.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Any


class ChdbError(RuntimeError):
    """The chDB store cannot be created or opened."""


class ChdbBusy(ChdbError):
    """Another process has the chDB store open (chDB allows one process per store)."""

    def __init__(self, path: Path, holder: int) -> None:
        super().__init__(f"the chDB store {path} is open in process {holder}; stop it or set CLICKHOUSE_URL")
        self.path = path
        self.holder = holder


def chdb_lock_holder(data_dir: Path) -> int | None:
    """Pid of the process that has the chDB store at data_dir open, else None (-1: unknown pid)."""
    import fcntl

    status = Path(data_dir) / "status"
    try:
        fd = os.open(status, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            for line in status.read_text(errors="replace").splitlines():
                if line.startswith("PID:"):
                    with contextlib.suppress(ValueError):
                        return int(line.split(":", 1)[1])
            return -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def ensure_chdb(data_dir: Path, database: str | None = None) -> str:
    """Create/open the chDB store under data_dir and return its DSN.

    The DSN is ``chdb:///abs/path`` (clickhouse-connect's on-disk form: the whole URL path is the
    engine location), plus ``?database=name`` when a database is requested (it is created if
    missing). Opens it once with clickhouse_connect.get_client and runs SELECT 1, then closes the
    client. If another process has the store open, that is proof enough and the open is skipped.
    """
    path = Path(data_dir).absolute()
    if "?" in str(path) or "#" in str(path):
        raise ChdbError(f"chDB path must not contain '?' or '#': {path}")
    path.mkdir(parents=True, exist_ok=True)
    path = Path(os.path.realpath(path))  # clickhouse-connect normalises the same way
    dsn = f"chdb://{path}"
    if database:
        if not database.replace("_", "").isalnum():
            raise ChdbError(f"invalid chDB database name {database!r}")
        dsn_db = f"{dsn}?database={database}"
    else:
        dsn_db = dsn
    if chdb_lock_holder(path) is not None:
        return dsn_db
    import clickhouse_connect

    try:
        client = clickhouse_connect.get_client(dsn=dsn)
        try:
            if database:
                client.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
            if client.command("SELECT 1") != 1:
                raise ChdbError("chDB SELECT 1 returned an unexpected result")
        finally:
            client.close()
    except ChdbError:
        raise
    except Exception as exc:
        raise ChdbError(f"cannot open chDB store at {path}: {exc}") from exc
    return dsn_db


def client(url: str) -> Any:
    """A clickhouse-connect client for ``url`` (``chdb://`` or ``http(s)://``). Blocking; close it when done.

    ``ChdbBusy`` when another process has the chDB store open.
    """
    import clickhouse_connect

    if url.startswith("chdb:///"):
        path = Path(url.removeprefix("chdb://").split("?", 1)[0])
        holder = chdb_lock_holder(path)
        if holder is not None and holder != os.getpid():
            raise ChdbBusy(path, holder)
    if url.startswith("chdb:"):
        return clickhouse_connect.get_client(dsn=url)
    # A server: no session, so that threads sharing the client may query at once.
    return clickhouse_connect.get_client(dsn=url, autogenerate_session_id=False)
