"""A loopback HTTP/1.1 server that plays a model provider's API from scripted, recorded replies.

A test scripts the replies for a path in order (``script``); each request gets the next one, after
its ``delay`` (to make a client time out), with its status and headers (500, 429, 400...). Every
request is recorded (``requests``) and checked by the API's ``check`` function; one that breaks the
API's contract is answered with ``reject`` (the API's own 400) and its problems are kept in
``violations``, which the test fixtures assert empty. Plain asyncio: no framework between the SDK
and the bytes it sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: Any  # the decoded JSON, or the raw text when it is not JSON


Check = Callable[[Request], list[str]]


class FakeAPI:
    def __init__(self, *, check: Check, reject: Callable[[list[str]], Reply]) -> None:
        self.check = check
        self.reject = reject
        self.requests: list[Request] = []
        self.violations: list[str] = []
        self.base_url = ""
        self._scripts: dict[str, deque[Reply]] = {}
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._closing = asyncio.Event()

    async def start(self) -> str:
        """Listen on a free loopback port; return the base URL."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        host, port = self._server.sockets[0].getsockname()[:2]
        self.base_url = f"http://{host}:{port}"
        return self.base_url

    def script(self, path: str, *replies: Reply) -> None:
        self._scripts.setdefault(path, deque()).extend(replies)

    def last(self, path: str) -> Request:
        return [request for request in self.requests if request.path == path][-1]

    async def close(self) -> None:
        """Stop listening, wake delayed replies, drop open connections, and wait for their handlers."""
        self._closing.set()
        if self._server is not None:
            self._server.close()
        for writer in self._connections.values():
            writer.transport.abort()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        try:
            while not self._closing.is_set() and (request := await read_request(reader)) is not None:
                reply = self._answer(request)
                if reply.delay:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._closing.wait(), reply.delay)
                if self._closing.is_set():
                    break
                writer.write(encode_response(reply))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client hung up, e.g. after its timeout
        finally:
            del self._connections[task]
            writer.transport.abort()

    def _answer(self, request: Request) -> Reply:
        self.requests.append(request)
        if problems := self.check(request):
            self.violations.extend(f"{request.method} {request.path}: {problem}" for problem in problems)
            return self.reject(problems)
        queue = self._scripts.get(request.path)
        if not queue:
            self.violations.append(f"{request.method} {request.path}: nothing scripted")
            return Reply(status=599, body={"fake": "nothing scripted"})
        return queue.popleft()


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """One request off a keep-alive connection; None at a clean end of stream."""
    line = await reader.readline()
    if not line:
        return None
    method, target, _ = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = header.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while size := int((await reader.readline()).split(b";")[0], 16):
            body += await reader.readexactly(size)
            await reader.readline()
        await reader.readline()
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    text = body.decode()
    try:
        decoded: Any = json.loads(text) if text else None
    except json.JSONDecodeError:
        decoded = text
    return Request(method=method, path=target.split("?", 1)[0], headers=headers, body=decoded)


def encode_response(reply: Reply) -> bytes:
    payload = json.dumps(reply.body).encode()
    try:
        reason = HTTPStatus(reply.status).phrase
    except ValueError:
        reason = "Unknown"
    head = [f"HTTP/1.1 {reply.status} {reason}", "content-type: application/json", f"content-length: {len(payload)}"]
    head += [f"{name}: {value}" for name, value in reply.headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload
