"""A durable pull consumer read in bulk: ``streams.feed.Feed`` at several times the rate.

``Feed.fetch`` goes through nats-py's ``fetch``, which awaits each message of a batch on its own
(a future and a timeout per message): under 20,000 messages a second here. This feed asks for a
batch with one pull request and takes the deliveries straight from the protocol parser. Same
consumer: durable, ``AckPolicy.ALL`` (acknowledging a batch's last message acknowledges the
batch), redelivery of what is not acknowledged within ``ack_wait``; but its reader keeps its own
position (the analytics projector's checkpoint in ClickHouse), so acknowledgements are sent
without waiting for the server. A reader that recreates the consumer from its own position at
every start needs no acknowledgements at all: ``acks=False`` makes the consumer ``AckPolicy.NONE``,
which spares the server a third of its work per message.

The feed has a NATS connection of its own, so a replay's traffic stays off the connection the
rest of the process shares, and so its client can be lean: nats-py's, with a parser that hands
the frames of the feed's inbox to the feed as bytes, without building a message object, parsing
its headers (every commit carries its expectation headers) or queueing it for a callback task.
Every other frame (acknowledgement replies, PING, INFO) takes nats-py's usual path.

A pull asks for at most ``batch`` messages and ``max_bytes`` bytes and ends with the server's
status: 409 Batch Completed or Message Size Exceeds MaxBytes when more is waiting (the next batch
is asked for at once), 404 or 408 when the stream has no more. The byte bound keeps a batch, and
the one sent behind it, under what the server lets pile up for a client.

A delivery may not go missing between the server and the reader, or acknowledging a later one
would acknowledge it too. The consumer sequence of each delivery is checked to follow the one
before; a gap, a delivery outside a pull, a pull that does not end in time or a consumer-level
error raise ``UnavailableError``, and the reader starts again from its own checkpoint.

The projectors (PostgreSQL and ClickHouse) and the channel outbox read the stream with it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Protocol

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.errors import ProtocolError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.protocol.parser import MAX_CONTROL_LINE_SIZE, Parser

from streams.errors import UnavailableError
from streams.feed import resume_point
from streams.jetstream import JetStreamLog


class Route(Protocol):
    """Where the frames of one subscription go, synchronously, from the parser."""

    def on_delivery(self, subject: bytes, reply: bytes, seq: int, cseq: int, ns: int, data: bytes) -> None:
        """A JetStream delivery (headers dropped): its stream and consumer sequences, its time."""

    def on_frame(self, subject: bytes, reply: bytes, headers: bytes | None, data: bytes) -> None:
        """Any other frame (headers are given only to frames without a reply: statuses)."""


class _FrameParser(Parser):
    """nats-py's protocol parser, reading each chunk as it came, with ``bytes`` operations.

    ``MSG``/``HMSG`` frames of a subscription the client routes (``_LeanClient.routes``) go to
    its route, synchronously; the others to nats-py as usual. The hot path, a delivery, is a few
    C-speed ``find``/``split`` calls on the chunk (``bytes``, so a slice is one copy): a regular
    expression over the control line cost more than the rest of the frame's reading together.
    A frame cut by the end of a chunk waits, with the chunks after it, until it is whole.
    """

    nc: _LeanClient

    def reset(self) -> None:
        super().reset()
        self._rest: list[bytes] = []  # the start of an incomplete frame, and the chunks after it
        self._have = 0  # bytes in ``_rest``
        self._need = 0  # bytes ``_rest`` must hold before it is worth reading again

    async def parse(self, data: bytes = b"") -> None:
        if self._rest:
            self._rest.append(data)
            self._have += len(data)
            if self._have < self._need:
                return
            buf = b"".join(self._rest)
            self._rest, self._have, self._need = [], 0, 0
        else:
            buf = bytes(data)
        pos, size = 0, len(buf)
        routes = self.nc.routes
        find = buf.find
        while pos < size:
            eol = find(b"\r\n", pos)
            if eol < 0:
                if size - pos > MAX_CONTROL_LINE_SIZE:
                    raise ProtocolError("nats: control line too long")
                break
            args = buf[pos:eol].split()
            if args and args[0] in (b"HMSG", b"MSG"):
                headers = args[0] == b"HMSG"
                try:
                    end = eol + 2 + int(args[-1])
                    hsize = int(args[-2]) if headers else 0
                except (IndexError, ValueError):
                    raise ProtocolError("nats: malformed MSG") from None
                if size < end + 2:  # the payload has not all arrived
                    self._need = end + 2 - pos
                    break
                reply = args[3] if len(args) == (6 if headers else 5) else b""
                route = routes.get(args[2])
                # A delivery with the short ack subject, ``$JS.ACK.<stream>.<consumer>.<delivered>.
                # <stream seq>.<consumer seq>.<ns>.<pending>``, is read here; other forms in ``_frame``.
                if route is not None and len(ack := reply.split(b".")) == 9 and ack[1] == b"ACK":
                    route.on_delivery(args[1], reply, int(ack[5]), int(ack[6]), int(ack[7]), buf[eol + 2 + hsize : end])
                else:
                    await self._frame(route, args[1], args[2], reply, buf[eol + 2 : end], hsize)
                pos = end + 2
                continue
            line = buf[pos:eol]
            pos = eol + 2
            if line.startswith(b"PING"):
                await self.nc._process_ping()
            elif line.startswith(b"PONG"):
                await self.nc._process_pong()
            elif line.startswith(b"+OK"):
                pass
            elif line.startswith(b"-ERR"):
                await self.nc._process_err(line[4:].strip().strip(b"'").decode().lower())
            elif line.startswith(b"INFO "):
                await self.nc._process_info(json.loads(line[5:]))
            else:
                raise ProtocolError("nats: unknown protocol")
        if pos < size:
            self._rest, self._have = [buf[pos:]], size - pos

    async def _frame(
        self, route: Route | None, subject: bytes, sid: bytes, reply: bytes, frame: bytes, hsize: int
    ) -> None:
        headers, data = (frame[:hsize] or None), frame[hsize:]
        if route is not None:
            if reply.startswith(b"$JS.ACK.") and (meta := _ack_metadata(reply)) is not None:
                route.on_delivery(subject, reply, *meta, data)
            else:
                route.on_frame(subject, reply, None if reply else headers, data)
            return
        await self.nc._process_msg(int(sid), subject, reply, data, headers)  # type: ignore[arg-type]


def _ack_metadata(reply: bytes) -> tuple[int, int, int] | None:
    """(stream sequence, consumer sequence, ns) from an ack subject, None if not one.

    ``$JS.ACK.[<domain>.<account hash>.]<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.
    <ns>.<pending>[.<token>]``
    """
    tokens = reply.split(b".")
    if len(tokens) != 9:
        del tokens[2:4]
    try:
        return int(tokens[5]), int(tokens[6]), int(tokens[7])
    except (IndexError, ValueError):
        return None


class _LeanClient(NATS):
    def __init__(self) -> None:
        super().__init__()
        self.routes: dict[bytes, Route] = {}  # by subscription id, as the frames spell it
        self._ps = _FrameParser(self)


class Delivered(msgspec.Struct, frozen=True, gc=False):
    seq: int  # stream sequence
    subject: str
    data: bytes
    time: int  # when the stream stored it, epoch milliseconds


class BulkBatch:
    def __init__(self, messages: list[Delivered], last_reply: str | None, feed: BulkFeed) -> None:
        self.messages = messages
        self._last_reply = last_reply
        self._feed = feed

    async def ack(self) -> None:
        """Acknowledge the batch (its last delivery), without waiting for the server's reply.

        The reader keeps its own checkpoint and recreates the consumer from it at start: an
        acknowledgement that goes missing only brings back messages the checkpoint skips. Waiting
        would put the reply behind the next batch, which the server is already sending.
        """
        nc = self._feed.nc
        if self._last_reply is None or nc is None:
            return  # nothing to acknowledge, or the feed was closed: the batch comes again
        try:
            await nc.publish(self._last_reply, b"+ACK")
        except nats.errors.Error as e:
            raise UnavailableError(f"could not acknowledge a batch: {type(e).__name__} {e}") from None


class BulkFeed:
    def __init__(
        self,
        log: JetStreamLog,
        durable: str,
        *,
        subject: str | None = None,
        start_seq: int = 1,
        batch: int = 20_000,
        ack_wait: float = 120.0,
        idle_wait: float = 0.5,
        request_timeout: float = 10.0,
        acks: bool = True,
        max_bytes: int = 48 * 1024 * 1024,  # under the server's max_pending, 64 MiB by default
        inactive_threshold: float | None = None,  # seconds unread before the server drops the consumer
    ) -> None:
        self.log = log
        self.durable = durable
        self.subject = subject
        self.start_seq = max(start_seq, 1)
        self.batch = batch
        self.ack_wait = ack_wait
        self.idle_wait = idle_wait
        self.request_timeout = request_timeout
        self.acks = acks
        self.max_bytes = max_bytes
        self.inactive_threshold = inactive_threshold
        self.nc: _LeanClient | None = None
        self._inbox = ""
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{log.stream}.{durable}"
        self._got: list[Delivered] = []
        self._last_reply: bytes | None = None  # the last delivery's, to acknowledge the batch
        self._done: asyncio.Future[None] | None = None
        self._cseq = 0  # the consumer sequence of the last delivery
        self._prefetching = False  # the next batch is asked for already
        self._full = False  # the last pull ended at its count or its bytes, not at the stream's end
        self._broken: str | None = None

    async def _open(self) -> _LeanClient:
        config = ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.ALL if self.acks else AckPolicy.NONE,
            ack_wait=self.ack_wait if self.acks else None,
            max_ack_pending=-1 if self.acks else None,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.start_seq,
            filter_subject=self.subject,
            inactive_threshold=self.inactive_threshold,
        )
        shared = self.log.nc
        servers = [u.geturl() for u in shared.servers] or [shared.connected_url.geturl()]  # type: ignore[union-attr]
        self.nc = nc = _LeanClient()
        try:
            await nc.connect(servers=servers, name=f"parley-{self.durable}", connect_timeout=2, allow_reconnect=False)
            await self.log.js.add_consumer(self.log.stream, config)
            self._inbox = nc.new_inbox()
            sub = await nc.subscribe(self._inbox)
            nc.routes[str(sub._id).encode()] = self
        except (TimeoutError, OSError, nats.errors.Error) as e:
            await self.close()
            raise UnavailableError(f"cannot open consumer {self.durable} on {self.log.stream}: {e}") from None
        return nc

    async def restart(self) -> None:
        """Start the durable consumer afresh from its acknowledged position (for a reader that keeps
        no position of its own: the consumer's acknowledgements are its position).

        Unacknowledged deliveries come again at once, in order, rather than after the ack wait
        behind the ones that followed them.
        """
        start = await resume_point(self.log, self.log.stream, self.durable)
        if start is None:
            return  # it does not exist yet: the first fetch creates it at ``start_seq``
        await self.close()
        await self.delete()
        self.start_seq = start

    async def delete(self) -> None:
        try:
            await self.log.js.delete_consumer(self.log.stream, self.durable)
        except nats.js.errors.NotFoundError:
            pass
        except nats.errors.Error as e:
            raise UnavailableError(f"cannot delete consumer {self.durable}: {e}") from None

    async def fetch(self) -> BulkBatch:
        """The next batch; empty when nothing arrived within ``idle_wait``.

        After a full batch the next one is asked for at once, so the server sends it while the
        caller works on this one (its deliveries are read whenever the caller yields).
        """
        nc = self.nc or await self._open()
        if self._prefetching:
            self._prefetching = False
            got = await self._collect(self.request_timeout)
        else:
            got = await self._pull(nc, self._ask(self.batch, no_wait=True), self.request_timeout)
        if not got:  # wait for one, then take what else is there
            expires = int(self.idle_wait * 1e9)
            got = await self._pull(nc, self._ask(1, expires=expires), self.idle_wait + self.request_timeout)
            if got and self.batch > 1:
                got += await self._pull(nc, self._ask(self.batch - 1, no_wait=True), self.request_timeout)
        elif self._full:
            await self._request(nc, self._ask(self.batch, no_wait=True))
            self._prefetching = True
        last_reply, self._last_reply = self._last_reply, None
        return BulkBatch(got, last_reply.decode() if got and last_reply and self.acks else None, self)

    def _ask(self, batch: int, **options: Any) -> dict[str, Any]:
        """A pull request: at most ``batch`` messages and ``max_bytes`` bytes.

        The byte bound keeps a batch, with the next one sent while the caller works on it, under
        what the server lets pile up for a client (``max_pending``, 64 MiB by default); past it the
        server cuts the connection as a slow consumer.
        """
        return {"batch": batch, "max_bytes": self.max_bytes, **options}

    async def _pull(self, nc: NATS, request: dict[str, Any], timeout: float) -> list[Delivered]:  # noqa: ASYNC109
        await self._request(nc, request)
        return await self._collect(timeout)

    async def _request(self, nc: NATS, request: dict[str, Any]) -> None:
        """Ask for a batch; its deliveries gather in ``_got`` until ``_collect``."""
        if self._broken:
            raise UnavailableError(self._broken)
        self._got, self._full = [], False
        self._done = asyncio.get_running_loop().create_future()
        try:
            await nc.publish(self._next, json.dumps(request).encode(), reply=self._inbox)
        except nats.errors.Error as e:
            self._broken = f"consumer {self.durable}: {e}"
            raise UnavailableError(self._broken) from None

    async def _collect(self, timeout: float) -> list[Delivered]:  # noqa: ASYNC109
        """The deliveries of the batch asked for, once it is complete (or the server ends it)."""
        done = self._done
        assert done is not None
        try:
            await asyncio.wait_for(asyncio.shield(done), timeout)
        except TimeoutError:
            self._broken = f"consumer {self.durable}: a pull did not end within {timeout:.1f} s"
        finally:
            self._done = None
        if self._broken:
            raise UnavailableError(self._broken)
        return self._got

    def on_delivery(self, subject: bytes, reply: bytes, seq: int, cseq: int, ns: int, data: bytes) -> None:
        done = self._done
        if done is None or done.done():
            self._broken = self._broken or f"consumer {self.durable}: a delivery outside a pull"
            return
        if cseq != self._cseq + 1 and self._cseq:
            self._broken = self._broken or f"consumer {self.durable}: deliveries after {self._cseq} went missing"
            done.set_result(None)
            return
        self._cseq = cseq
        self._last_reply = reply
        # The pull ends with the status that follows its last delivery (``on_frame``).
        self._got.append(Delivered(seq, subject.decode(), data, ns // 1_000_000))

    def on_frame(self, subject: bytes, reply: bytes, headers: bytes | None, data: bytes) -> None:
        """A status, the end of a pull but for 100 (heartbeat).

        404 nothing (more) to deliver, 408 expired, 409 Batch Completed (the count was delivered) or
        Message Size Exceeds MaxBytes (the bytes were; ``_got`` empty: one message is larger than
        the bound), any other 409 consumer trouble.
        """
        done = self._done
        headers = headers or b""
        status = headers[9:12]
        if status == b"100":
            return
        if status == b"409" and (b"Batch Completed" in headers or (b"Exceeds MaxBytes" in headers and self._got)):
            self._full = True
        elif status not in (b"404", b"408") and self._broken is None:
            line = headers.split(b"\r\n", 1)[0].decode(errors="replace")
            self._broken = f"consumer {self.durable}: {line or 'a frame that is neither a delivery nor a status'}"
        if done is not None and not done.done():
            done.set_result(None)

    async def close(self) -> None:
        """Close the feed's connection; a later fetch opens the consumer again at ``start_seq``."""
        self._got, self._last_reply, self._done = [], None, None
        self._cseq, self._prefetching, self._full, self._broken = 0, False, False, None
        if self.nc is not None:
            nc, self.nc = self.nc, None
            try:
                await nc.close()
            except (TimeoutError, nats.errors.Error) as e:
                raise UnavailableError(f"could not close consumer {self.durable}: {e}") from None
