"""Local servers speaking Deepgram's streaming STT and ElevenLabs' streaming TTS, for their real
LiveKit plugins (``base_url``).

``DeepgramFake`` (``/v1/listen``, ``Authorization: Token <key>``): binary PCM16 in, JSON out. It
finds utterances by energy and answers each with the next of its ``transcripts``: ``SpeechStarted``,
an interim ``Results``, a final ``Results`` with ``speech_final``. ``KeepAlive``, ``Finalize`` and
``CloseStream`` are answered as Deepgram does. ``drop_after`` closes the first connection abruptly
after that many finals (a dropped connection mid-call).

``ElevenLabsFake`` (``/v1/text-to-speech/{voice}/multi-stream-input``, ``xi-api-key``): the
multi-context websocket; text in per ``context_id``, espeak-ng's speech back as base64 PCM at
22,050 Hz, ``isFinal`` when a context closes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from gateways.speech.offline import espeak_pcm


class _Threaded:
    """An aiohttp app on a thread and loop of its own."""

    url: str = ""

    def _app(self) -> web.Application:
        raise NotImplementedError

    async def start(self) -> str:
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        caller = asyncio.get_running_loop()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            runner = web.AppRunner(self._app())
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            caller.call_soon_threadsafe(ready.set_result, f"http://127.0.0.1:{port}")
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, daemon=True, name=type(self).__name__)
        self._thread.start()
        self.url = await ready
        return self.url

    async def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        await asyncio.to_thread(self._thread.join, 10)


@dataclass
class DeepgramFake(_Threaded):
    transcripts: list[str] = field(default_factory=list)
    drop_after: int | None = None
    connections: int = 0
    queries: list[dict[str, Any]] = field(default_factory=list)
    headers: list[str] = field(default_factory=list)
    finals: int = 0

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/listen", self._listen)
        return app

    async def _listen(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization", "") == "":
            return web.json_response({"err_code": "INVALID_AUTH"}, status=401)
        self.connections += 1
        first = self.connections == 1
        self.headers.append(request.headers["Authorization"])
        self.queries.append(dict(request.query))
        rate = int(request.query.get("sample_rate", "16000"))
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        speaking, silence, heard = False, 0.0, 0.0
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                kind = json.loads(message.data).get("type")
                if kind == "CloseStream":
                    await ws.send_json({"type": "Metadata", "request_id": uuid.uuid4().hex, "duration": heard})
                    break
                continue
            if message.type != WSMsgType.BINARY:
                continue
            samples = np.frombuffer(message.data, dtype=np.int16)
            seconds = len(samples) / rate
            heard += seconds
            loud = bool(len(samples)) and float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) > 300
            if loud and not speaking:
                speaking, silence = True, 0.0
                await ws.send_json({"type": "SpeechStarted", "channel": [0], "timestamp": heard})
            elif speaking and not loud:
                silence += seconds
                if silence >= 0.3:
                    speaking = False
                    text = self.transcripts.pop(0) if self.transcripts else ""
                    if text:
                        await ws.send_json(_results(text, heard, final=False))
                        await ws.send_json(_results(text, heard, final=True))
                        self.finals += 1
                    if first and self.drop_after is not None and self.finals >= self.drop_after:
                        await ws.close(code=1011, message=b"internal error")
                        return ws
            elif loud:
                silence = 0.0
        await ws.close()
        return ws


def _results(text: str, at: float, *, final: bool) -> dict[str, Any]:
    words = [{"word": w.lower(), "start": at, "end": at, "confidence": 0.97, "punctuated_word": w}
             for w in text.split()]  # fmt: skip
    return {
        "type": "Results",
        "channel_index": [0, 1],
        "duration": 1.0,
        "start": max(0.0, at - 1.0),
        "is_final": final,
        "speech_final": final,
        "from_finalize": False,
        "channel": {
            "alternatives": [{"transcript": text if final else text.split()[0], "confidence": 0.97, "words": words}]
        },
        "metadata": {
            "request_id": uuid.uuid4().hex,
            "model_info": {"name": "nova-3", "version": "x", "arch": "x"},
            "model_uuid": uuid.uuid4().hex,
        },
    }


@dataclass
class ElevenLabsFake(_Threaded):
    spoken: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/text-to-speech/{voice}/multi-stream-input", self._stream)
        return app

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        self.keys.append(request.headers.get("xi-api-key", ""))
        self.paths.append(request.path_qs)
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        pending: dict[str, str] = {}
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                continue
            data = json.loads(message.data)
            context = data.get("context_id", "")
            if data.get("close_context"):
                text = pending.pop(context, "").strip()
                if text:
                    self.spoken.append(text)
                    pcm = await espeak_pcm(text)
                    for at in range(0, len(pcm), 4410):
                        await ws.send_json(
                            {"audio": base64.b64encode(pcm[at : at + 4410]).decode(), "contextId": context}
                        )
                await ws.send_json({"isFinal": True, "contextId": context})
                continue
            if "text" in data:
                pending[context] = pending.get(context, "") + data["text"]
        await ws.close()
        return ws
