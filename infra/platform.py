"""The Parley processes on one machine: the API (with its projectors) as a detached service, and
the LiveKit voice worker (``python -m voice_worker``) when ``LIVEKIT_URL`` is set.

``python -m infra.platform start|stop|status|token``; ``./parley up`` runs ``start`` after the
backing services are up, and prints a development token.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
import urllib.request
from pathlib import Path

from infra.services import REPO_ROOT, ServiceError, _port_open, _Service

API_PORT = int(os.environ.get("PARLEY_API_PORT", "8000"))


def data_root() -> Path:
    return Path(os.environ.get("PARLEY_DATA", str(REPO_ROOT / ".data")))


def jwt_secret(root: Path) -> str:
    """The signing secret of this data directory: ``PARLEY_JWT_SECRET``, or one made once (0600)."""
    if value := os.environ.get("PARLEY_JWT_SECRET"):
        return value
    path = root / "run" / "jwt_secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def service_env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env_file = root / "run" / "env"
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            name, _, value = line.partition("=")
            if name and name not in os.environ:
                env[name] = value
    env["PARLEY_JWT_SECRET"] = jwt_secret(root)
    env["PARLEY_DATA"] = str(root)
    env.setdefault("PARLEY_LOG_JSON", "1")
    env.setdefault("PARLEY_DEV_SIGNIN", "1")  # the local platform: the console offers a sign-in per role
    return env


class ApiServer(_Service):
    name = "api"
    process_name = "gateways.http"

    def __init__(self, root: Path, port: int = API_PORT) -> None:
        super().__init__(
            root / "run", detached=True, log_file=root / "logs" / "api.log", pid_file=root / "run" / "api.pid"
        )
        self.root = root
        self.port = port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> str:
        if self.is_running():
            self.wait_ready(timeout)
            return self.url
        if _port_open(self.port):
            raise ServiceError(f"port {self.port} is in use; stop that process or set PARLEY_API_PORT")
        env = service_env(self.root)
        env["PARLEY_API_PORT"] = str(self.port)
        os.environ.update({k: v for k, v in env.items() if k.startswith(("PARLEY_", "NATS_", "DATABASE_", "REDIS_"))})
        self._spawn([sys.executable, "-m", "gateways.http"], cwd=REPO_ROOT)
        try:
            self.wait_ready(timeout)
        except Exception:
            self._abort()
            raise
        return self.url

    def wait_ready(self, timeout: float = 60.0) -> None:
        def healthy() -> bool:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.status == 200

        self._wait(healthy, timeout, f"{self.url}/health")


class VoiceWorker(_Service):
    """The LiveKit Agents worker, registered with the LiveKit server at ``LIVEKIT_URL``."""

    name = "voice-worker"
    process_name = "voice_worker"

    def __init__(self, root: Path) -> None:
        super().__init__(
            root / "run",
            detached=True,
            log_file=root / "logs" / "voice-worker.log",
            pid_file=root / "run" / "voice-worker.pid",
        )
        self.root = root

    @staticmethod
    def wanted(root: Path) -> bool:
        return bool(service_env(root).get("LIVEKIT_URL"))

    def start(self, settle: float = 3.0) -> None:
        """Spawn it (once); it is up when it has not exited ``settle`` seconds later."""
        if self.is_running():
            return
        env = service_env(self.root)
        os.environ.update({k: v for k, v in env.items() if k.startswith(("PARLEY_", "NATS_", "DATABASE_", "LIVEKIT_"))})
        self._spawn([sys.executable, "-m", "voice_worker"], cwd=REPO_ROOT)
        began = time.monotonic()
        try:
            self._wait(lambda: time.monotonic() - began >= settle, settle + 10, "its start")
        except Exception:
            self._abort()
            raise


def dev_token(root: Path) -> str:
    from infra.tokens import make_token

    roles = ["customer", "support_agent", "org_admin", "analyst"]
    return make_token(jwt_secret(root), subject="dev", tenant="demo", roles=roles)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.platform", description=__doc__)
    parser.add_argument("command", choices=["start", "stop", "status", "token"])
    args = parser.parse_args(argv)
    root = data_root()
    api = ApiServer(root)
    if args.command == "start":
        try:
            url = api.start()
        except ServiceError as e:
            print(f"api: {e}", file=sys.stderr)
            return 1
        worker = VoiceWorker(root)
        if VoiceWorker.wanted(root):
            try:
                worker.start()
            except ServiceError as e:
                print(f"voice-worker: {e}", file=sys.stderr)
                return 1
            livekit = os.environ.get("LIVEKIT_URL")
            print(f"voice     LiveKit worker 'parley' for {livekit}   (log: {worker.log_file})")
        token = dev_token(root)
        print(f"api       {url}   (OpenAPI: {url}/schema, health: {url}/health, log: {api.log_file})")
        print(f"console   {url}/console   (development sign-in per role)")
        print(f"\ndev token (tenant 'demo'): {token}")
        print(f'try: curl -s -H "Authorization: Bearer $(./parley token)" {url}/health')
    elif args.command == "stop":
        VoiceWorker(root).stop()
        api.stop()
        print("api       stopped")
    elif args.command == "status":
        state = f"running (pid {api.pid})" if api.is_running() else "stopped"
        print(f"api       {api.url}   {state}")
        worker = VoiceWorker(root)
        if worker.is_running() or VoiceWorker.wanted(root):
            print(f"voice     {f'running (pid {worker.pid})' if worker.is_running() else 'stopped'}")
    else:
        print(dev_token(root))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
