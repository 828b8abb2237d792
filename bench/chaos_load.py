"""The load ``./parley chaos`` runs: customers chatting through the HTTP API as real clients do.

Each customer (a token of their own, role ``customer``) runs sessions one after the other until
told to stop: start a conversation (half of them with a first message), send a few messages, now
and then ask for a human, and close the conversation when nothing it said is still waiting for
the AI's answer. Every command carries an ``Idempotency-Key``; a connection error, a timeout, a
5xx, a 429 or a concurrency conflict is retried with the same key (after ``Retry-After`` when the
answer gives one) until the command is acknowledged or its deadline passes. Every attempt and its
answer is recorded: the checks compare what the client was told with what the stream holds.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

BASE = "/api/v1/orchestration"
TEXTS = (
    "Hi, what are your opening hours?",
    "Do you ship to Canada?",
    "How long does delivery usually take?",
    "Can I pay by bank transfer?",
    "Thanks, that helps.",
    "What is your returns policy?",
    "Is there a warranty on the headphones?",
    "Do you have a store in Berlin?",
)
# Answers after which a client tries again with the same key.
RETRIED = {429, 500, 502, 503, 504}


@dataclass
class Command:
    """One command as the client saw it: every attempt's answer, and the first success."""

    kind: str  # start, message, escalate, close
    key: str
    path: str
    body: dict[str, Any]
    customer: str
    conversation_id: str | None = None
    attempts: int = 0
    answers: Counter[str] = field(default_factory=Counter)  # "503", "timeout", "connect", ...
    status: int | None = None  # the final answer's status (None: none came)
    response: dict[str, Any] | None = None
    acked: bool = False
    replied: bool = False  # the AI's answer came inline
    retry_after_missing: int = 0  # 503s without Retry-After
    sent_at: float = 0.0
    done_at: float = 0.0

    @property
    def ids(self) -> dict[str, str]:
        """What the API said it created."""
        body = self.response or {}
        out = {}
        for name in ("conversation_id", "message_id", "escalation_id"):
            if isinstance(body.get(name), str):
                out[name] = body[name]
        return out


@dataclass
class LoadSettings:
    customers: int = 6
    seed: int = 1
    deadline: float = 120.0  # seconds a command is retried before the client gives up
    timeout: float = 30.0  # one attempt
    escalate_share: float = 0.2
    close_share: float = 0.7
    # A customer who closes the chat while their last message is still on its way: the close races
    # the message and the AI's answer to it.
    leave_share: float = 0.1


class Load:
    """Customers in a thread of their own (its own event loop), so the fault injector's blocking
    starts and stops never hold them up."""

    def __init__(self, base_url: str, tokens: list[str], settings: LoadSettings) -> None:
        self.base_url = base_url
        self.tokens = tokens
        self.settings = settings
        self.commands: list[Command] = []
        self.sessions = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="chaos-load", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """No new session; the commands in hand go on until acknowledged or out of time."""
        self._stop.set()

    def join(self, timeout: float) -> bool:
        assert self._thread is not None
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as e:  # reported by the orchestrator
            self.error = e

    async def _run(self) -> None:
        await asyncio.gather(*(self._customer(i) for i in range(self.settings.customers)))

    async def _customer(self, index: int) -> None:
        rng = random.Random(self.settings.seed * 1000 + index)
        headers = {"Authorization": f"Bearer {self.tokens[index % len(self.tokens)]}"}
        timeout = httpx.Timeout(self.settings.timeout, connect=3.0)
        limits = httpx.Limits(max_connections=2, max_keepalive_connections=2)
        async with httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout, limits=limits) as http:
            while not self._stop.is_set():
                await self._session(http, rng, f"customer-{index}")
                self.sessions += 1

    async def _session(self, http: httpx.AsyncClient, rng: random.Random, customer: str) -> None:
        body: dict[str, Any] = {"config_id": "support-bot", "channel": "webchat"}
        first = rng.random() < 0.5
        if first:
            body["initial_message"] = rng.choice(TEXTS)
        start = await self.command(http, "start", f"{BASE}/conversations", body, customer)
        if not start.acked:
            return
        cid = start.ids["conversation_id"]
        waiting = 1 if first and not start.replied else 0  # messages the AI has not answered inline
        escalated = False
        messages = rng.randint(1, 3)
        for n in range(messages):
            if self._stop.is_set():
                return
            text = {"message": rng.choice(TEXTS)}
            if n == messages - 1 and not escalated and rng.random() < self.settings.leave_share:
                await self._leave(http, rng, customer, cid, text)
                return
            sent = await self.command(http, "message", f"{BASE}/conversations/{cid}/messages", text, customer, cid)
            if not sent.acked:
                return
            if not sent.replied and not escalated:
                waiting += 1
            if not escalated and rng.random() < self.settings.escalate_share:
                escalation = await self.command(
                    http,
                    "escalate",
                    f"{BASE}/conversations/{cid}/escalate",
                    {"trigger": "customer_request", "reason": "chaos: the customer asks for a person"},
                    customer,
                    cid,
                )
                if not escalation.acked and escalation.status != 409:  # 409: the AI escalated first
                    return
                escalated = True
        # A customer leaves once the AI has answered what it owns; otherwise the conversation stays
        # open (closing it under an answer in flight is another test: see the report).
        if waiting == 0 and rng.random() < self.settings.close_share:
            await self.command(
                http, "close", f"{BASE}/conversations/{cid}/close", {"reason": "completed"}, customer, cid
            )

    async def _leave(
        self, http: httpx.AsyncClient, rng: random.Random, customer: str, cid: str, text: dict[str, Any]
    ) -> None:
        """The last message, and the close a moment later without waiting for the answer."""

        async def close() -> None:
            await asyncio.sleep(rng.uniform(0.05, 0.5))
            await self.command(http, "close", f"{BASE}/conversations/{cid}/close", {"reason": "left"}, customer, cid)

        await asyncio.gather(
            self.command(http, "message", f"{BASE}/conversations/{cid}/messages", text, customer, cid), close()
        )

    async def command(
        self,
        http: httpx.AsyncClient,
        kind: str,
        path: str,
        body: dict[str, Any],
        customer: str,
        conversation_id: str | None = None,
    ) -> Command:
        cmd = Command(kind, uuid.uuid4().hex, path, body, customer, conversation_id)
        self.commands.append(cmd)
        cmd.sent_at = time.monotonic()
        deadline = cmd.sent_at + self.settings.deadline
        delay = 0.2
        while True:
            cmd.attempts += 1
            wait = delay
            try:
                response = await http.post(path, json=body, headers={"Idempotency-Key": cmd.key})
            except httpx.TimeoutException:
                cmd.answers["timeout"] += 1
            except httpx.TransportError as e:  # refused, reset, closed mid-answer: the API is down
                cmd.answers["connect" if isinstance(e, httpx.ConnectError) else "broken"] += 1
            else:
                cmd.status = response.status_code
                cmd.answers[str(response.status_code)] += 1
                if 200 <= response.status_code < 300:
                    cmd.acked = True
                    cmd.response = response.json()
                    if kind == "start" and cmd.conversation_id is None:
                        cmd.conversation_id = cmd.response.get("conversation_id")
                    cmd.replied = bool(cmd.response.get("agent_response"))
                    break
                answer = _json(response)
                retry = response.status_code in RETRIED or answer.get("code") == "concurrency_conflict"
                if not retry:
                    cmd.response = answer
                    break
                after = response.headers.get("Retry-After")
                if response.status_code == 503 and after is None:
                    cmd.retry_after_missing += 1
                if after and after.isdigit():
                    wait = max(float(after), 0.1)
            if time.monotonic() + wait > deadline:
                break
            await asyncio.sleep(wait * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)
        cmd.done_at = time.monotonic()
        return cmd


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def summary(commands: list[Command]) -> dict[str, Any]:
    """What the clients saw: commands sent, acknowledged, retried; every answer by kind."""
    answers: Counter[str] = Counter()
    for cmd in commands:
        answers.update(cmd.answers)
    refused = Counter(
        f"{c.kind} {c.status} {(c.response or {}).get('code', '')}".strip()
        for c in commands
        if not c.acked and c.status is not None and c.status < 500
    )
    return {
        "sent": len(commands),
        "acknowledged": sum(c.acked for c in commands),
        "retried": sum(c.attempts > 1 for c in commands),
        "attempts": sum(c.attempts for c in commands),
        "gave_up": sum(not c.acked and (c.status is None or c.status in RETRIED) for c in commands),
        "refused": dict(refused),
        "by_kind": dict(Counter(c.kind for c in commands)),
        "acknowledged_by_kind": dict(Counter(c.kind for c in commands if c.acked)),
        "answers": dict(sorted(answers.items())),
        "server_errors_500": answers.get("500", 0),
        "unavailable_503": answers.get("503", 0),
        "unavailable_without_retry_after": sum(c.retry_after_missing for c in commands),
        "replied_inline": sum(c.replied for c in commands),
        "longest_command_s": round(max((c.done_at - c.sent_at for c in commands), default=0.0), 1),
    }
