"""Call recordings, sealed under the caller's key, in a directory or an S3-compatible bucket (a local
moto server speaking the S3 API, through boto3): one code path, only where the sealed files go differs.
And an inbound call finds its tenant by the number it called."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from domain.errors import NotFoundError
from gateways.speech.audio import read_wav
from gateways.telephony.recordings import DirectoryBlobs, S3Blobs, recording_store
from gateways.telephony.settings import VoiceSettings
from streams.keys import LocalKeyStore

PCM = bytes(range(256)) * 64  # 8,192 bytes of 8 kHz PCM16: half a second


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "parley-test",
        "AWS_SECRET_ACCESS_KEY": "parley-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def keys(tmp_path: Path) -> LocalKeyStore:
    return LocalKeyStore(tmp_path / "keys")


def store_url(kind: str, s3: str, tmp_path: Path) -> str:
    if kind == "directory":
        return str(tmp_path / "recordings")
    bucket = f"calls-{tmp_path.name.lower().replace('_', '-')[-40:]}"
    boto3.client("s3", endpoint_url=s3, region_name="us-east-1").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/parley/recordings?endpoint_url={s3}&region=us-east-1"


@pytest.mark.parametrize("kind", ["directory", "s3"])
async def test_a_recording_is_sealed_under_the_callers_key_wherever_it_is_kept(
    kind: str, s3: str, aws: None, keys: LocalKeyStore, tmp_path: Path
) -> None:
    store = recording_store(store_url(kind, s3, tmp_path), keys)
    assert isinstance(store.blobs, DirectoryBlobs if kind == "directory" else S3Blobs)

    stored = await store.put("acme", "C12345", "call-1", "caller", PCM, 8000)
    other = await store.put("acme", "C99999", "call-2", "caller", PCM, 8000)

    assert stored.uri == f"parley-recording://acme/call-1/caller-{stored.recording_id}.wav.enc"
    sealed = store.blobs.read(f"acme/call-1/caller-{stored.recording_id}.wav.enc")
    assert sealed is not None and len(sealed) == stored.size and b"RIFF" not in sealed and PCM[:64] not in sealed
    wav = await store.open("acme", stored.uri)
    assert read_wav(wav) == (PCM, 8000, 1)
    # Another tenant's name for it finds nothing; a recording that is not there is not found.
    with pytest.raises(NotFoundError):
        await store.open("globex", stored.uri)
    with pytest.raises(NotFoundError):
        await store.open("acme", "parley-recording://acme/call-1/caller-missing.wav.enc")
    # Erasing the customer shreds their recordings with the rest of their data; others' stay.
    keys.shred("acme", "C12345")
    with pytest.raises(NotFoundError, match="erased"):
        await store.open("acme", stored.uri)
    assert read_wav(await store.open("acme", other.uri))[0] == PCM


def test_a_recordings_url_names_a_directory_or_a_bucket(tmp_path: Path, keys: LocalKeyStore) -> None:
    assert isinstance(recording_store(f"file://{tmp_path}", keys).blobs, DirectoryBlobs)
    with pytest.raises(ValueError, match="s3://"):
        recording_store("ftp://example.com/recordings", keys)
    settings = VoiceSettings.from_env({"PARLEY_RECORDINGS_URL": "s3://b/p?endpoint_url=http://127.0.0.1:9&region=x"})
    assert settings.recordings_url and settings.recordings(tmp_path, keys).blobs.bucket == "b"  # type: ignore[attr-defined]
    assert isinstance(VoiceSettings.from_env({}).recordings(tmp_path, keys).blobs, DirectoryBlobs)


def test_an_inbound_call_finds_its_tenant_by_the_number_it_called() -> None:
    settings = VoiceSettings.from_env({"PARLEY_VOICE_NUMBERS": "+1 555-000-1111=acme, +15550002222=globex,bad"})
    assert settings.numbers == {"+1 555-000-1111": "acme", "+15550002222": "globex"}
    assert settings.tenant_of("+15550001111") == "acme"
    assert settings.tenant_of("+1 (555) 000-2222") == "globex"
    assert settings.tenant_of("+15550003333") is None and settings.tenant_of("") is None
