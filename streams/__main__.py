"""``python -m streams ensure|info``: create or update the event stream, or show its state."""

from __future__ import annotations

import argparse
import asyncio

from infra.logs import configure_logging
from streams.factory import StoreSettings, open_store


async def _run(command: str) -> None:
    settings = StoreSettings.from_env(connect_retry_for=60.0)
    opened = await open_store(settings, name="parley-admin")
    try:
        info = await opened.log.js.stream_info(settings.stream)
        config = info.config
        print(
            f"stream {settings.stream} at {settings.nats_url}: {info.state.messages} messages, "
            f"last sequence {info.state.last_seq}, replicas {config.num_replicas}, "
            f"subjects {', '.join(config.subjects or [])}"
        )
        if command == "info":
            server = opened.nc.connected_server_version
            print(f"nats-server {server}; duplicate window {config.duplicate_window}s; snapshots bucket ready")
    finally:
        await opened.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m streams", description=__doc__)
    parser.add_argument("command", choices=["ensure", "info"])
    configure_logging()
    asyncio.run(_run(parser.parse_args().command))


if __name__ == "__main__":
    main()
