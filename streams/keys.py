"""Keys for personal data, kept outside the event stream.

Each (tenant, data subject) pair has its own AES key; the tenant's own key is the pair
(tenant, ""). Destroying a subject's keys (``shred``) makes every ciphertext sealed under them
unreadable for good: that subject is erased from the log without rewriting it. A later write for
the same subject starts a new key epoch, so new data is readable and the old stays erased.

``LocalKeyStore`` is the embedded default: a SQLite file under the data directory whose data keys
are wrapped with a master key (``PARLEY_MASTER_KEY``, base64, or a 0600 file beside the database).
A cloud KMS can take its place by implementing ``KeyStore``.

Each process caches the keys it used. A shred is announced to every process on the live subject
``parley.live.keys.shredded`` (``shred_everywhere``); each process forgets the subject's keys the
moment the announcement arrives (``forget_when_announced``, which ``streams.factory.open_store``
starts), so no process decrypts with a destroyed key afterwards, whatever its cache's age (the age limit
stays only as a backstop for a process cut off from NATS when the announcement went out).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from base64 import b64decode, b64encode
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.cryptography import AESCipher
from eventsourcing.utils import Environment

MASTER_KEY_ENV = "PARLEY_MASTER_KEY"


def make_cipher(key: bytes) -> AESCipher:
    """eventsourcing's AES-GCM cipher (on the ``cryptography`` package) for a raw key.

    Same format as the pycryptodome one (nonce, tag, ciphertext), several times faster.
    """
    return _AESCipher(Environment(env={AESCipher.CIPHER_KEY: b64encode(key).decode()}))


class _AESCipher(AESCipher):
    """eventsourcing's ``AESCipher`` with its key schedule made once, not at every call (a replay
    decrypts hundreds of thousands of fields with one key each). Same format, same errors."""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self._aead = AESGCM(self.key)

    def encrypt(self, plaintext: bytes) -> bytes:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plaintext, None)
        return nonce + sealed[-16:] + sealed[:-16]  # the tag in front, as eventsourcing has it

    def decrypt(self, ciphertext: bytes) -> bytes:
        if len(ciphertext) < 28:
            return super().decrypt(ciphertext)  # its errors for a damaged ciphertext
        try:
            return self._aead.decrypt(ciphertext[:12], ciphertext[28:] + ciphertext[12:28], None)
        except InvalidTag as e:
            raise ValueError("Invalid cipher tag") from e


class KeyStore(Protocol):
    def current(self, tenant: str, subject: str) -> tuple[int, AESCipher]:
        """The key epoch and cipher to seal new data with, creating a key if there is none."""

    def get(self, tenant: str, subject: str, epoch: int) -> AESCipher | None:
        """The cipher of an epoch, or None when that key has been destroyed."""

    def shred(self, tenant: str, subject: str) -> None:
        """Destroy every key of the subject."""

    def forget(self, tenant: str, subject: str | None = None) -> None:
        """Drop what this process caches of the subject's keys (None: of every key)."""


class UnknownKeyError(LookupError):
    """A ciphertext names a key this store never had."""


class LocalKeyStore:
    def __init__(self, directory: Path, *, master_key: bytes | None = None, cache_seconds: float = 60.0) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._path = directory / "keys.sqlite"
        self._master = make_cipher(master_key or _load_master_key(directory))
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str, int], tuple[float, AESCipher | None]] = {}
        self._current: dict[tuple[str, str], tuple[float, int, AESCipher]] = {}
        self._cache_seconds = cache_seconds
        self._db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS data_keys ("
            " tenant TEXT NOT NULL, subject TEXT NOT NULL, epoch INTEGER NOT NULL,"
            " wrapped BLOB, created_at REAL NOT NULL, shredded_at REAL,"
            " PRIMARY KEY (tenant, subject, epoch))"
        )

    def close(self) -> None:
        self._db.close()

    def current(self, tenant: str, subject: str) -> tuple[int, AESCipher]:
        now = time.monotonic()
        hit = self._current.get((tenant, subject))
        if hit and now - hit[0] < self._cache_seconds:
            return hit[1], hit[2]
        with self._lock:
            row = self._db.execute(
                "SELECT epoch, wrapped FROM data_keys WHERE tenant=? AND subject=? ORDER BY epoch DESC LIMIT 1",
                (tenant, subject),
            ).fetchone()
            if row is None or row[1] is None:
                epoch = 1 if row is None else row[0] + 1
                wrapped = self._master.encrypt(os.urandom(32))
                self._db.execute(
                    "INSERT OR IGNORE INTO data_keys (tenant, subject, epoch, wrapped, created_at) VALUES (?,?,?,?,?)",
                    (tenant, subject, epoch, wrapped, time.time()),
                )
                # Another process may have won the insert: read back whatever is stored.
                row = self._db.execute(
                    "SELECT epoch, wrapped FROM data_keys WHERE tenant=? AND subject=? AND epoch=?",
                    (tenant, subject, epoch),
                ).fetchone()
            cipher = make_cipher(self._master.decrypt(row[1]))
            self._current[(tenant, subject)] = (now, row[0], cipher)
            self._cache[(tenant, subject, row[0])] = (now, cipher)
            return row[0], cipher

    def get(self, tenant: str, subject: str, epoch: int) -> AESCipher | None:
        now = time.monotonic()
        hit = self._cache.get((tenant, subject, epoch))
        if hit and now - hit[0] < self._cache_seconds:
            return hit[1]
        with self._lock:
            row = self._db.execute(
                "SELECT wrapped FROM data_keys WHERE tenant=? AND subject=? AND epoch=?",
                (tenant, subject, epoch),
            ).fetchone()
        if row is None:
            raise UnknownKeyError(f"no key epoch {epoch} for tenant {tenant!r}")
        cipher = None if row[0] is None else make_cipher(self._master.decrypt(row[0]))
        self._cache[(tenant, subject, epoch)] = (now, cipher)
        return cipher

    def shred(self, tenant: str, subject: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE data_keys SET wrapped=NULL, shredded_at=? WHERE tenant=? AND subject=?",
                (time.time(), tenant, subject),
            )
        self.forget(tenant, subject)

    def forget(self, tenant: str, subject: str | None = None) -> None:
        with self._lock:
            if subject is None and tenant == "":
                self._current.clear()
                self._cache.clear()
                return
            for current in [k for k in self._current if k[0] == tenant and subject in (None, k[1])]:
                del self._current[current]
            for key in [k for k in self._cache if k[0] == tenant and subject in (None, k[1])]:
                del self._cache[key]


def _load_master_key(directory: Path) -> bytes:
    if value := os.environ.get(MASTER_KEY_ENV):
        return b64decode(value)
    path = directory / "master.key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(b64encode(os.urandom(32)))
    return b64decode(path.read_bytes())


# Every process forgets a shredded key at once --------------------------------------------------

SHREDDED = "parley.live.keys.shredded"


class Shredded(msgspec.Struct, frozen=True):
    tenant: str
    subject: str


class LiveMessages(Protocol):
    """The store's live messages (``EventStore.publish_live`` / ``listen_live``)."""

    async def publish_live(self, subject: str, data: bytes) -> None: ...

    async def listen_live(
        self, subject: str, received: Callable[[bytes], Awaitable[None]]
    ) -> Callable[[], Awaitable[None]]: ...


async def shred_everywhere(keys: KeyStore, live: LiveMessages, tenant: str, subject: str) -> None:
    """Destroy the subject's keys, then tell every process to forget them (this one forgets at once)."""
    keys.shred(tenant, subject)
    await live.publish_live(SHREDDED, msgspec.json.encode(Shredded(tenant, subject)))


async def forget_when_announced(keys: KeyStore, live: LiveMessages) -> Callable[[], Awaitable[None]]:
    """Forget a subject's cached keys whenever a shred of them is announced; returns the stop."""

    async def announced(data: bytes) -> None:
        try:
            shredded = _SHREDDED.decode(data)
        except msgspec.DecodeError:  # not ours to read: forget everything rather than guess
            keys.forget("")
            return
        keys.forget(shredded.tenant, shredded.subject)

    return await live.listen_live(SHREDDED, announced)


_SHREDDED = msgspec.json.Decoder(Shredded)
