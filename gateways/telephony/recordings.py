"""Call recordings, encrypted under the key of the customer they are about.

A recording (one track: the caller's or the agent's audio) is a WAV file sealed with the
(tenant, customer) data key of the event store's ``KeyStore`` (AES-GCM, the same key that seals
the customer's personal fields in events). The sealed file names its key epoch, so erasing a
customer (``KeyStore.shred``) makes their recordings unreadable with the rest of their data.
``open`` reads one back for whoever may hear it.

Where the sealed files go is the only thing that varies (``recording_store(url)``): a directory
(the data directory's ``recordings/`` by default) or an S3-compatible bucket
(``s3://bucket/prefix?endpoint_url=http://host:9000&region=us-east-1``, credentials from the usual
AWS variables). Both keep ``<tenant>/<call id>/<track>-<recording id>.wav.enc``; sealing, naming and
reading are the same code for both.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlparse

import msgspec

from domain.errors import NotFoundError
from gateways.speech.audio import wav_bytes
from streams.keys import KeyStore

MAGIC = b"PRLYREC1"


class StoredRecording(msgspec.Struct, frozen=True):
    recording_id: str
    uri: str
    size: int


class Blobs(Protocol):
    """Where sealed recordings are kept: ``key`` is ``<tenant>/<call id>/<file name>``."""

    def write(self, key: str, blob: bytes) -> None: ...

    def read(self, key: str) -> bytes | None: ...  # None: no such recording


class DirectoryBlobs:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/"))

    def write(self, key: str, blob: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
        partial.write_bytes(blob)
        partial.replace(path)

    def read(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None


class S3Blobs:
    """An S3-compatible bucket through boto3 (AWS, MinIO, Ceph, ...)."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None, region: str | None = None):
        import boto3

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client: Any = boto3.client("s3", endpoint_url=endpoint_url, region_name=region)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def write(self, key: str, blob: bytes) -> None:
        self.client.put_object(
            Bucket=self.bucket, Key=self._key(key), Body=blob, ContentType="application/octet-stream"
        )

    def read(self, key: str) -> bytes | None:
        try:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read())
        except self.client.exceptions.NoSuchKey:
            return None


class RecordingStore:
    def __init__(self, blobs: Blobs | Path, keys: KeyStore) -> None:
        self.blobs: Blobs = DirectoryBlobs(blobs) if isinstance(blobs, Path) else blobs
        self.keys = keys

    @staticmethod
    def _key(tenant: str, call_id: str, name: str) -> str:
        return "/".join(part.replace("/", "_").replace("..", "_") for part in (tenant, call_id, name))

    async def put(
        self, tenant: str, subject: str, call_id: str, track: str, pcm16: bytes, sample_rate: int
    ) -> StoredRecording:
        recording_id = uuid.uuid4().hex
        epoch, cipher = self.keys.current(tenant, subject)
        header = json.dumps({"subject": subject, "epoch": epoch, "track": track, "rate": sample_rate}).encode()
        sealed = cipher.encrypt(wav_bytes(pcm16, sample_rate))
        blob = MAGIC + len(header).to_bytes(4, "big") + header + sealed
        name = f"{track}-{recording_id}.wav.enc"
        await asyncio.to_thread(self.blobs.write, self._key(tenant, call_id, name), blob)
        return StoredRecording(
            recording_id=recording_id, uri=f"parley-recording://{tenant}/{call_id}/{name}", size=len(blob)
        )

    async def open(self, tenant: str, uri: str) -> bytes:
        """The WAV bytes of a stored recording; ``NotFoundError`` when it is gone or its key was shredded."""
        prefix = f"parley-recording://{tenant}/"
        if not uri.startswith(prefix):
            raise NotFoundError("recording not found")
        call_id, _, name = uri.removeprefix(prefix).partition("/")
        blob = await asyncio.to_thread(self.blobs.read, self._key(tenant, call_id, name))
        if blob is None:
            raise NotFoundError("recording not found")
        if not blob.startswith(MAGIC):
            raise NotFoundError("recording not readable")
        size = int.from_bytes(blob[8:12], "big")
        header = json.loads(blob[12 : 12 + size])
        cipher = self.keys.get(tenant, header["subject"], header["epoch"])
        if cipher is None:
            raise NotFoundError("recording erased (its customer's key was destroyed)")
        return bytes(cipher.decrypt(blob[12 + size :]))


def recording_store(url: str, keys: KeyStore) -> RecordingStore:
    """``s3://bucket/prefix?endpoint_url=...&region=...`` or a directory (a path or ``file://``)."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        query = {key: values[-1] for key, values in parse_qs(parsed.query).items()}
        blobs = S3Blobs(parsed.netloc, parsed.path, endpoint_url=query.get("endpoint_url"), region=query.get("region"))
        return RecordingStore(blobs, keys)
    if parsed.scheme in ("", "file"):
        return RecordingStore(Path(parsed.path if parsed.scheme == "file" else url), keys)
    raise ValueError(f"recordings go to a directory or s3://bucket/prefix, not {parsed.scheme}://")
