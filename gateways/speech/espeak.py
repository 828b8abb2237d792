"""espeak-ng in this process: ``libespeak-ng`` (Debian's libespeak-ng1, the library the ``espeak-ng``
command is a front end of) through ctypes, so a sentence is synthesized without a process per
sentence. Spawning one from this process (a big one: the agent, onnxruntime, the calls) costs a
fork and an exec each time, and stalled the event loop, and with it every call's audio, for 100-300
ms on a busy machine; the library starts speaking within a millisecond or two.

The library keeps global state (one voice, one output callback): ``Espeak`` runs one synthesis at a
time, on a thread of its own (ctypes releases the GIL while the C code runs; the output callback
takes it only to hand each chunk to the event loop). Chunks of about 40 ms reach the caller as they
are made (``chunks``), and a synthesis cut short (a barge-in) is aborted at its next chunk. The
audio is the command's: same engine, voice, rate and flags as ``espeak-ng -v VOICE -s WPM --stdout``
(22,050 Hz mono PCM16; the pause after a sentence may run some tens of ms longer than a fresh
command's, as the engine carries a little state from one sentence to the next).

No Python package binds the library's synthesis (those on PyPI run the command or only phonemize),
hence the few declarations here; ``Espeak.shared()`` is None where the library is missing, and the
caller falls back to the command.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import ctypes.util
import threading
from collections.abc import AsyncIterator
from typing import Any

# espeak_AUDIO_OUTPUT, espeak_PARAMETER, espeak_POSITION_TYPE and synth flags (speak_lib.h)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_RATE = 1
_POS_CHARACTER = 1
_CHARS_AUTO, _PHONEMES, _ENDPAUSE = 0, 0x100, 0x1000
_FLAGS = _CHARS_AUTO | _PHONEMES | _ENDPAUSE  # the command's (``synth_flags`` in espeak-ng.c)
_BUFFER_MS = 40  # audio per callback

# int SynthCallback(short *wav, int numsamples, espeak_EVENT *events): 0 goes on, 1 aborts
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _Job:
    """One synthesis: where its chunks go (an event loop's queue) and whether it was cut short."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[bytes | BaseException | None]) -> None:
        self.loop, self.queue = loop, queue
        self.cancelled = False

    def put(self, item: bytes | BaseException | None) -> bool:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody listens any more
            self.cancelled = True
        return not self.cancelled


class Espeak:
    _shared: Espeak | None = None
    _loaded = False
    _load_lock = threading.Lock()

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.argtypes = []
        lib.espeak_Synchronize.restype = ctypes.c_int
        self.sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, None, 0)
        if self.sample_rate <= 0:
            raise OSError(f"espeak_Initialize failed ({self.sample_rate})")
        self._callback = _CALLBACK(self._on_audio)  # kept: the library holds a pointer to it
        lib.espeak_SetSynthCallback(self._callback)
        self._job: _Job | None = None
        self._voice: str | None = None
        self._thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="espeak-ng")

    @classmethod
    def shared(cls) -> Espeak | None:
        """The process's synthesizer, or None where libespeak-ng cannot be loaded."""
        with cls._load_lock:
            if not cls._loaded:
                cls._loaded = True
                name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
                try:
                    cls._shared = cls(ctypes.CDLL(name))
                except OSError:
                    cls._shared = None
            return cls._shared

    def _on_audio(self, wav: Any, samples: int, _events: Any) -> int:
        job = self._job
        if job is None or job.cancelled:
            return 1
        if samples > 0 and wav:
            return 0 if job.put(ctypes.string_at(wav, samples * 2)) else 1
        return 0

    def _synthesize(self, job: _Job, text: str, voice: str, words_per_minute: int) -> None:
        """On the synthesizer's thread: the whole text, chunk by chunk into ``job``, then None."""
        try:
            if voice != self._voice:
                if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
                    raise ValueError(f"espeak-ng has no voice {voice!r}")
                self._voice = voice
            self._lib.espeak_SetParameter(_RATE, words_per_minute, 0)
            data = text.encode() + b"\0"
            self._job = job
            try:
                status = self._lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _FLAGS, None, None)
                self._lib.espeak_Synchronize()
            finally:
                self._job = None
            if status != 0 and not job.cancelled:
                raise RuntimeError(f"espeak_Synth failed ({status})")
            job.put(None)
        except BaseException as e:  # the caller hears of it
            job.put(e)

    async def chunks(self, text: str, voice: str = "en-us", words_per_minute: int = 165) -> AsyncIterator[bytes]:
        """The speech for ``text`` as it is made: 22,050 Hz mono PCM16 in chunks of about 40 ms."""
        queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        job = _Job(asyncio.get_running_loop(), queue)
        self._thread.submit(self._synthesize, job, text, voice, words_per_minute)
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            job.cancelled = True  # cut short (a barge-in): the synthesis stops at its next chunk
