"""Call recordings, encrypted under the key of the customer they are about.

A recording (one track: the caller's or the agent's audio) is a WAV file sealed with the
(tenant, customer) data key of the event store's ``KeyStore`` (AES-GCM, the same key that seals
the customer's personal fields in events), and stored under the data directory:
``<root>/<tenant>/<call id>/<track>-<recording id>.wav.enc``. The sealed file names its key epoch,
so erasing a customer (``KeyStore.shred``) makes their recordings unreadable with the rest of their
data. ``open`` reads one back for whoever may hear it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import msgspec

from domain.errors import NotFoundError
from gateways.speech.audio import wav_bytes
from streams.keys import KeyStore

MAGIC = b"PRLYREC1"


class StoredRecording(msgspec.Struct, frozen=True):
    recording_id: str
    uri: str
    size: int


class RecordingStore:
    def __init__(self, root: Path, keys: KeyStore) -> None:
        self.root = root
        self.keys = keys

    def _path(self, tenant: str, call_id: str, name: str) -> Path:
        safe = [part.replace("/", "_").replace("..", "_") for part in (tenant, call_id, name)]
        return self.root.joinpath(*safe)

    async def put(
        self, tenant: str, subject: str, call_id: str, track: str, pcm16: bytes, sample_rate: int
    ) -> StoredRecording:
        recording_id = uuid.uuid4().hex
        epoch, cipher = self.keys.current(tenant, subject)
        header = json.dumps({"subject": subject, "epoch": epoch, "track": track, "rate": sample_rate}).encode()
        sealed = cipher.encrypt(wav_bytes(pcm16, sample_rate))
        blob = MAGIC + len(header).to_bytes(4, "big") + header + sealed
        name = f"{track}-{recording_id}.wav.enc"
        path = self._path(tenant, call_id, name)
        await asyncio.to_thread(_write, path, blob)
        return StoredRecording(
            recording_id=recording_id, uri=f"parley-recording://{tenant}/{call_id}/{name}", size=len(blob)
        )

    async def open(self, tenant: str, uri: str) -> bytes:
        """The WAV bytes of a stored recording; ``NotFoundError`` when it is gone or its key was shredded."""
        prefix = f"parley-recording://{tenant}/"
        if not uri.startswith(prefix):
            raise NotFoundError("recording not found")
        call_id, _, name = uri.removeprefix(prefix).partition("/")
        path = self._path(tenant, call_id, name)
        try:
            blob = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError as e:
            raise NotFoundError("recording not found") from e
        if not blob.startswith(MAGIC):
            raise NotFoundError("recording not readable")
        size = int.from_bytes(blob[8:12], "big")
        header = json.loads(blob[12 : 12 + size])
        cipher = self.keys.get(tenant, header["subject"], header["epoch"])
        if cipher is None:
            raise NotFoundError("recording erased (its customer's key was destroyed)")
        return bytes(cipher.decrypt(blob[12 + size :]))


def _write(path: Path, blob: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_bytes(blob)
    partial.replace(path)
