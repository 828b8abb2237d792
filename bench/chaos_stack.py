"""The platform as separate processes on free ports, and the faults ``./parley chaos`` inflicts on it.

Services (``infra.services``, attached: they die with this process): nats-server (one node, or the
three-node loopback cluster with R3 streams), PostgreSQL and Redis, each in a temp directory. The
Python processes, started as ``./parley up`` and the deployment run them: the API
(``python -m gateways.http``, with the ClickHouse analytics projector inside it, as ``up`` runs
it), the PostgreSQL projectors (``python -m projections run``) and the agent runtime
(``python -m agents``), each with its own log in the temp directory.

Faults: a Python process or nats-server (a cluster node) is killed with SIGKILL and started again
after a short outage (``nats_outage``: nats-server down 10 to 15 s); Redis is killed and started
again (its append-only file survives); PostgreSQL is stopped in immediate mode (SIGQUIT: no
checkpoint, crash recovery at the next start) and started again. A Python process that exits
without being killed is started again too, as a supervisor would, and counted.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from infra.services import (
    REPO_ROOT,
    NatsCluster,
    NatsServer,
    Postgres,
    Redis,
    ServiceError,
    _die_with_parent,
    free_port,
)

TENANT = "chaos"
PROCESSES = ("api", "projections", "agents")


class Proc:
    """One of the platform's Python processes."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_file: Path) -> None:
        self.name, self.argv, self.env, self.log_file = name, argv, env, log_file
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        with open(self.log_file, "ab") as log:
            log.write(f"\n=== {time.strftime('%H:%M:%S')} chaos: starting {self.name}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv,
                cwd=REPO_ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent(signal.SIGKILL),
            )
        self.starts += 1

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


class Stack:
    def __init__(self, root: Path, *, cluster: bool, secret: str, log: Callable[[str], None] = print) -> None:
        self.root, self.cluster, self.secret, self.log = root, cluster, secret, log
        self.nats: NatsServer | NatsCluster = (
            NatsCluster(root / "nats", 3) if cluster else NatsServer(root / "nats", sync_always=True)
        )
        self.pg = Postgres(root / "pg")
        self.redis = Redis(root / "redis")
        self.port = free_port()
        self.procs: dict[str, Proc] = {}
        self.kills: Counter[str] = Counter()  # fault: how many
        self.exits: Counter[str] = Counter()  # a process that ended without being killed
        self.exit_logs: list[dict[str, object]] = []  # each such end: the process, its code, its last lines
        self.outage_seconds: dict[str, float] = {}
        self._next_node = 0  # cluster nodes are killed in turn

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def nats_url(self) -> str:
        if isinstance(self.nats, NatsCluster):
            return ",".join(self.nats.urls)
        return self.nats.url

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}  # the offline model answers
        for name in ("CLICKHOUSE_URL", "PARLEY_STREAM", "PARLEY_TOKEN", "PARLEY_API_URL"):
            env.pop(name, None)
        env.update(
            {
                "NATS_URL": self.nats_url,
                "DATABASE_URL": self.pg.url,
                "REDIS_URL": self.redis.url,
                "PARLEY_DATA": str(self.root / "data"),
                "PARLEY_JWT_SECRET": self.secret,
                "PARLEY_API_PORT": str(self.port),
                "PARLEY_API_WORKERS": "1",
                "PARLEY_LOG_LEVEL": "INFO",
                "PARLEY_LOG_JSON": "1",
                "PARLEY_TENANT_RATE": "1000000",
                "PARLEY_TENANT_BURST": "1000000",
                "PARLEY_CONVERSATION_MESSAGES_PER_MINUTE": "1000000",
                "PARLEY_INLINE_PROJECTORS": "0",  # python -m projections run
                "PARLEY_INLINE_AGENTS": "0",  # python -m agents
                "PARLEY_ANALYTICS": "1",  # in the API, as ./parley up runs it (chDB: one process)
                "PARLEY_REPLY_WAIT_SECONDS": "3",
                "PARLEY_AUTO_ROLLBACK": "0",
                "PARLEY_DEMO_TENANTS": TENANT,
                "PARLEY_STREAM_REPLICAS": "3" if self.cluster else "1",
            }
        )
        return env

    # Start and stop ---------------------------------------------------------------------------

    def start(self) -> None:
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(exist_ok=True)
        self.nats.start()
        self.pg.start()
        self.redis.start()
        env = self.env()
        subprocess.run(
            [sys.executable, "-m", "streams", "ensure"],
            cwd=REPO_ROOT,
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        python = sys.executable
        for name, argv in (
            ("agents", [python, "-m", "agents"]),
            ("projections", [python, "-m", "projections", "run"]),
            ("api", [python, "-m", "gateways.http"]),
        ):
            self.procs[name] = Proc(name, argv, env, self.root / "logs" / f"{name}.log")
            self.procs[name].start()
        self.wait_api(120)
        self.wait_log("agents", "agent runtime started", 120)

    def stop(self) -> None:
        for name in ("api", "agents", "projections"):
            if name in self.procs:
                self.procs[name].stop()
        for service in (self.redis, self.pg, self.nats):
            with contextlib.suppress(Exception):
                service.stop()

    def wait_api(self, timeout: float) -> None:
        """Until /health answers at all (200, or 503 while a dependency is away)."""
        deadline = time.monotonic() + timeout
        api = self.procs["api"]
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=5):
                    return
            except urllib.error.HTTPError:
                return
            except OSError:
                pass
            if not api.alive():
                self.supervise()
            time.sleep(0.2)
        raise ServiceError(f"the API did not answer within {timeout:.0f} s; see {api.log_file}")

    def wait_log(self, name: str, text: str, timeout: float) -> None:
        proc, deadline = self.procs[name], time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text.encode() in proc.log_file.read_bytes():
                return
            if not proc.alive():
                raise ServiceError(f"{name} exited while starting; see {proc.log_file}")
            time.sleep(0.2)
        raise ServiceError(f"{name} did not log {text!r} within {timeout:.0f} s; see {proc.log_file}")

    def supervise(self) -> list[str]:
        """Start again what ended on its own (a supervisor's job); the names of those."""
        restarted = []
        for name, proc in self.procs.items():
            if not proc.alive():
                self.exits[name] += 1
                self.log(f"  {name} exited on its own (code {proc.exit_code()}); starting it again")
                tail = proc.log_file.read_bytes()[-4000:].decode(errors="replace").splitlines()[-15:]
                self.exit_logs.append({"process": name, "code": proc.exit_code(), "log": tail})
                proc.start()
                restarted.append(name)
        return restarted

    def ensure_services(self) -> None:
        """Every service up (after the faults)."""
        servers = self.nats.servers if isinstance(self.nats, NatsCluster) else [self.nats]
        for server in servers:
            if not server.is_running():
                server.start(wait_jetstream=False)
        if isinstance(self.nats, NatsCluster):
            self.nats.wait_ready(120)
        for service in (self.pg, self.redis):
            if not service.is_running():
                service.start()
        self.supervise()

    # Faults -----------------------------------------------------------------------------------

    def inflict(self, fault: str, rng: random.Random) -> str:
        """One fault: down, a short outage, up again. Returns a line for the log."""
        began = time.monotonic()
        match fault:
            case "api" | "projections" | "agents":
                proc = self.procs[fault]
                proc.kill()
                down = rng.uniform(0.0, 1.5)
                time.sleep(down)
                proc.start()
                if fault == "api":
                    self.wait_api(120)
                what = f"SIGKILL {fault}, up again after {down:.1f} s"
            case "nats" | "nats_outage":
                servers = self.nats.servers if isinstance(self.nats, NatsCluster) else [self.nats]
                server = servers[self._next_node % len(servers)]
                self._next_node += 1
                server.kill()
                down = rng.uniform(1.0, 5.0) if fault == "nats" else rng.uniform(10.0, 15.0)
                time.sleep(down)
                server.start(wait_jetstream=not isinstance(self.nats, NatsCluster), timeout=60)
                name = server.server_name or "nats-server"
                what = f"SIGKILL {name}, a {down:.1f} s outage"
            case "redis":
                self.redis.kill()
                down = rng.uniform(0.5, 3.0)
                time.sleep(down)
                self.redis.start()
                what = f"SIGKILL redis-server, a {down:.1f} s outage"
            case "postgres":
                pid = self.pg.pid
                if pid is not None:
                    os.kill(pid, signal.SIGQUIT)  # immediate shutdown: crash recovery at the next start
                    deadline = time.monotonic() + 30
                    while self.pg.pid is not None and time.monotonic() < deadline:
                        time.sleep(0.05)
                down = rng.uniform(0.5, 3.0)
                time.sleep(down)
                self.pg.start()
                what = f"immediate stop of PostgreSQL, a {down:.1f} s outage"
            case _:
                raise ValueError(fault)
        self.kills[fault] += 1
        self.outage_seconds[fault] = self.outage_seconds.get(fault, 0.0) + time.monotonic() - began
        return what
