"""The agent work stream: the commits the agent runtime acts on, split into partitions.

``PARLEY_AGENT_WORK`` has no subjects of its own: it sources the conversation and agent-pool
commits of ``PARLEY_EVENTS`` through a subject transform that puts a partition number first.
``parley.ev.<tenant>.conversation.<id>.<command>`` is stored as
``parley.work.<p>.<tenant>.conversation.<id>.<command>``, with ``p`` the server's deterministic
hash of the tenant and conversation id (``{{partition(N,1,2)}}``, NATS subject mapping); a
tenant's pool commits go the same way by tenant and pool id. So every commit of one conversation
lands in one partition, in stream order, and each partition is read by its own durable consumer:
runtime processes divide the partitions among themselves (``agents.partitions``), and one
conversation's turns are answered by one process, in order.

The first time, the source starts after the last commit of the event stream: a new runtime
answers new messages, not history; whatever is committed after ``ensure`` waits here until a
runtime answers it. A partition's consumer, made the first time the partition is claimed, starts
at the beginning (no one has answered any of it); a process that takes a partition over starts it
afresh from where it is acknowledged (``Feed.restart``). Messages are kept for ``MAX_AGE``, then
dropped: the events keep them, only the automatic answer to a day-old message is lost, and a
platform running without a runtime does not fill the disk. (Work-queue retention would drop each
message as it is acknowledged, but with ``sync_always`` every such delete is one more fsync: it
doubled the server's cost per message.)

The partition count is fixed when the stream is created and read back from its metadata, so every
process agrees on it. To change it, let the runtimes answer what is waiting and stop them, then
delete the stream (everything in it is in the event stream too) and ensure it again.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig, StreamSource, SubjectTransform

from streams.errors import EventDecodeError, StoreError, UnavailableError
from streams.feed import Feed
from streams.jetstream import STREAM_NAME_IN_USE, JetStreamLog, RawMessage
from streams.subjects import EVENTS_PREFIX

log = structlog.get_logger(__name__)

WORK_PREFIX = "parley.work"
AGGREGATE_TYPES = ("conversation", "agent_pool")  # what the agent runtime acts on
DEFAULT_PARTITIONS = 16
MAX_AGE = 24 * 3600.0
PARTITIONS_KEY = "parley.partitions"
SOURCE_HEADER = "Nats-Stream-Source"  # "<stream> <sequence there> <filters> <transforms> <subject>"


def work_stream_name(events_stream: str) -> str:
    """``PARLEY_EVENTS`` -> ``PARLEY_AGENT_WORK``; any other event stream ``X`` -> ``X_AGENT_WORK``."""
    return events_stream.removesuffix("_EVENTS") + "_AGENT_WORK"


def partitions_from_env(env: Mapping[str, str] = os.environ) -> int:
    """``PARLEY_AGENT_PARTITIONS``: the partition count a new work stream gets (default 16)."""
    value = int(env.get("PARLEY_AGENT_PARTITIONS", DEFAULT_PARTITIONS))
    if not 1 <= value <= 1024:
        raise StoreError(f"PARLEY_AGENT_PARTITIONS must be between 1 and 1024, got {value}")
    return value


class WorkStream(msgspec.Struct, frozen=True):
    name: str
    events: str  # the event stream it sources
    partitions: int

    def subject(self, partition: int) -> str:
        """The filter of one partition's messages."""
        return f"{WORK_PREFIX}.{partition}.>"

    def feed(self, log: JetStreamLog, durable: str, partition: int, **options: Any) -> Feed:
        """One partition's durable consumer, ``<durable>_<partition>``."""
        return Feed(log, f"{durable}_{partition}", stream=self.name, subject=self.subject(partition), **options)

    def to_commit(self, raw: RawMessage) -> RawMessage:
        """A work message as the event stream's commit: the subject without its partition, the
        sequence it has in the event stream (from the source header)."""
        partition, _, rest = raw.subject.removeprefix(f"{WORK_PREFIX}.").partition(".")
        try:
            sequence = int(raw.headers[SOURCE_HEADER].split(" ", 2)[1])
        except (KeyError, IndexError, ValueError):
            raise EventDecodeError(raw.seq, raw.subject, "not a commit sourced from the event stream") from None
        if not raw.subject.startswith(f"{WORK_PREFIX}.") or not partition.isdigit() or not rest:
            raise EventDecodeError(raw.seq, raw.subject, "not a work subject")
        return msgspec.structs.replace(raw, seq=sequence, subject=f"{EVENTS_PREFIX}.{rest}")


def work_stream_config(name: str, events: str, partitions: int, *, start_seq: int, replicas: int) -> StreamConfig:
    transforms = [
        SubjectTransform(
            src=f"{EVENTS_PREFIX}.*.{kind}.*.*",
            dest=f"{WORK_PREFIX}.{{{{partition({partitions},1,2)}}}}"
            f".{{{{wildcard(1)}}}}.{kind}.{{{{wildcard(2)}}}}.{{{{wildcard(3)}}}}",
        )
        for kind in AGGREGATE_TYPES
    ]
    return StreamConfig(
        name=name,
        description=f"the agent runtime's work: {events}' {' and '.join(AGGREGATE_TYPES)} commits, by partition",
        subjects=[],
        sources=[StreamSource(name=events, opt_start_seq=start_seq, subject_transforms=transforms)],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=MAX_AGE,
        num_replicas=replicas,
        metadata={PARTITIONS_KEY: str(partitions)},
    )


async def ensure_work_stream(events: JetStreamLog, *, partitions: int = DEFAULT_PARTITIONS) -> WorkStream:
    """The work stream of an event stream, created the first time (sourcing from the next commit
    on). An existing one is left as it is, sources and all: its own partition count wins."""
    name = work_stream_name(events.stream)
    try:
        info = await _found_or_created(events, name, partitions)
    except nats.errors.Error as e:
        raise UnavailableError(f"cannot ensure stream {name}: {e}") from None
    try:
        existing = int((info.config.metadata or {})[PARTITIONS_KEY])
    except (KeyError, ValueError):
        raise StoreError(f"stream {name} has no {PARTITIONS_KEY} metadata: not an agent work stream") from None
    if existing != partitions:
        log.warning(
            "the work stream keeps its partition count; to change it, delete the stream and ensure it again",
            stream=name, partitions=existing, asked=partitions,
        )  # fmt: skip
    return WorkStream(name, events.stream, existing)


async def _found_or_created(events: JetStreamLog, name: str, partitions: int) -> Any:
    try:
        return await events.js.stream_info(name)
    except nats.js.errors.NotFoundError:
        pass
    config = work_stream_config(name, events.stream, partitions, start_seq=await events.last_seq() + 1,
                                replicas=events.replicas)  # fmt: skip
    try:
        await events.js.add_stream(config)
    except nats.js.errors.BadRequestError as e:
        # Another process made it meanwhile: keep its source position (updating it could skip commits).
        if e.err_code != STREAM_NAME_IN_USE:
            raise StoreError(f"cannot create stream {name}: {e.description}") from None
    return await events.js.stream_info(name)
