"""``python -m streams ensure|info``: create or update the event stream and the agent work stream, or show their state.

The work stream (``streams.work``) is created here, before the API starts, so the messages of
the platform's first seconds wait there for the agent runtime; ``PARLEY_AGENT_PARTITIONS`` sets
its partition count the first time.
"""

from __future__ import annotations

import argparse
import asyncio

from infra.logs import configure_logging
from streams.factory import StoreSettings, open_store
from streams.work import ensure_work_stream, partitions_from_env


async def _run(command: str) -> None:
    settings = StoreSettings.from_env(connect_retry_for=60.0)
    opened = await open_store(settings, name="parley-admin")
    try:
        work = await ensure_work_stream(opened.log, partitions=partitions_from_env())
        info = await opened.log.js.stream_info(settings.stream)
        config = info.config
        print(
            f"stream {settings.stream} at {settings.nats_url}: {info.state.messages} messages, "
            f"last sequence {info.state.last_seq}, replicas {config.num_replicas}, "
            f"subjects {', '.join(config.subjects or [])}"
        )
        held = (await opened.log.js.stream_info(work.name)).state.messages
        print(f"stream {work.name}: {work.partitions} partitions, {held} messages (the agent runtime's work, a day)")
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
