"""Domain events <-> stored bytes, through eventsourcing's ``Mapper``.

``EventMapper`` keeps the library's pipeline (transcoder, then optional compressor, then
optional whole-payload cipher) and adds two things Parley needs:

* msgspec Structs as events, encoded by ``MsgspecTranscoder`` and decoded straight into the
  event class named by the topic (typed, validating, no intermediate dict);
* personal data sealed per person: the fields an event lists in ``personal_fields`` (a field, or
  a field of each item of a list: ``"tool_calls[].input"``) are encrypted under the key of
  (tenant, the person the field is about: ``Event.seal_subject``, by default its data subject)
  from a ``KeyStore``. Once a person's key is destroyed their fields decode blank (``None`` or
  the field's default): crypto-shredding without rewriting the log. An event stored before a
  field was sealed keeps it in clear and reads as it was written.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import pkgutil
import sys
from base64 import b64encode
from binascii import a2b_base64
from collections.abc import Callable
from typing import Any

import msgspec
import msgspec.inspect
from eventsourcing.persistence import Cipher, Compressor, Mapper, StoredEvent, Transcoder
from eventsourcing.utils import TopicError, get_topic, register_topic, resolve_topic

import domain
from domain.messages import Event, put_all_personal, take_personal
from streams.keys import KeyStore

PII_KEY = "__pii__"


class MsgspecTranscoder(Transcoder):
    """An eventsourcing ``Transcoder`` backed by msgspec's JSON codec."""

    def __init__(self) -> None:
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder()

    def encode(self, obj: Any) -> bytes:
        return self._encoder.encode(obj)

    def decode(self, data: bytes) -> Any:
        return self._decoder.decode(data)

    def decode_as(self, data: bytes, type_: type[Any]) -> Any:
        return _typed_decoder(type_).decode(data)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=1024)
def _typed_decoder(type_: type[Any]) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(type_)


# A topic names an event class in the log, so it never changes. A domain module renamed since its
# events were first stored says where that was (``STORED_AS = "domain.agent_pool"``): its events
# keep that topic (``topic_of``), and the old topic resolves to the class in its new module.


@functools.lru_cache(maxsize=1024)
def topic_of(cls: type[Event]) -> str:
    """The topic an event class is stored under."""
    stored_as = getattr(sys.modules.get(cls.__module__), "STORED_AS", None)
    if stored_as is None:
        return get_topic(cls)
    topic = f"{stored_as}:{cls.__qualname__}"
    with contextlib.suppress(TopicError):
        register_topic(topic, cls)
    return topic


def resolve_event(topic: str) -> type[Event]:
    """The event class a stored topic names, also under a module's former name."""
    try:
        found: type[Event] = resolve_topic(topic)
        return found
    except TopicError:
        module = topic.partition(":")[0]
        for name in pkgutil.iter_modules(domain.__path__):  # the domain modules, whichever are loaded
            candidate = importlib.import_module(f"domain.{name.name}")
            if getattr(candidate, "STORED_AS", None) == module:
                with contextlib.suppress(TopicError):
                    register_topic(module, candidate)
                found = resolve_topic(topic)
                return found
        raise


class Pending(msgspec.Struct, frozen=True):
    """An event with its place in an aggregate's stream: what ``Mapper`` maps.

    ``originator_id`` is the stream key ``tenant.type.id``.
    """

    originator_id: str
    originator_version: int
    event: Event

    @property
    def tenant(self) -> str:
        return self.originator_id.split(".", 1)[0]


class EventMapper(Mapper[Any]):
    def __init__(
        self,
        transcoder: Transcoder | None = None,
        compressor: Compressor | None = None,
        cipher: Cipher | None = None,
        *,
        keys: KeyStore | None = None,
    ) -> None:
        super().__init__(transcoder or MsgspecTranscoder(), compressor=compressor, cipher=cipher)
        self.keys = keys

    def to_stored_event(self, domain_event: Pending) -> StoredEvent:  # type: ignore[override]
        event = domain_event.event
        if event.personal_fields:
            state = self._seal(domain_event.tenant, event)
        else:
            state = self.transcoder.encode(event)
        if self.compressor:
            state = self.compressor.compress(state)
        if self.cipher:
            state = self.cipher.encrypt(state)
        return StoredEvent(
            originator_id=domain_event.originator_id,
            originator_version=domain_event.originator_version,
            topic=topic_of(type(event)),
            state=state,
        )

    def to_domain_event(self, stored_event: StoredEvent) -> Pending:
        originator_id = str(stored_event.originator_id)
        event = self.decode_event(originator_id.split(".", 1)[0], stored_event.topic, stored_event.state)
        return Pending(originator_id, stored_event.originator_version, event)

    def decode_event(self, tenant: str, topic: str, state: bytes) -> Event:
        """A stored event of ``tenant`` as its domain event, personal data unsealed
        (``to_domain_event`` without the ``StoredEvent`` and ``Pending`` around it)."""
        if self.cipher:
            state = self.cipher.decrypt(state)
        if self.compressor:
            state = self.compressor.decompress(state)
        if isinstance(self.transcoder, MsgspecTranscoder):
            cls, decoder = _stored_class(topic)
            event: Event = decoder.decode(state)
        else:
            cls = resolve_event(topic)
            event = msgspec.convert(self.transcoder.decode(state), cls)
        if cls.personal_fields:
            event = self._unseal(tenant, event, state)
        return event

    # Personal data -------------------------------------------------------------------------

    def _seal(self, tenant: str, event: Event) -> bytes:
        """The event's JSON with its personal fields blank, and the envelope: one seal per person
        the fields are about (``Event.seal_subject``), the data subject's first."""
        if self.keys is None:
            raise RuntimeError(f"{type(event).__name__} carries personal data but the mapper has no key store")
        primary = event.data_subject_id() or ""
        groups: dict[str, dict[str, Any]] = {primary: {}}
        plain_event = event
        for path in event.personal_fields:
            value, after = take_personal(plain_event, path)
            subject = event.seal_subject(path) or ""
            if after == plain_event and subject != primary:  # another person's, and blank: nothing to seal
                continue
            plain_event = after
            groups.setdefault(subject, {})[path] = value
        plain = msgspec.to_builtins(plain_event)
        seals = [self._seal_group(tenant, subject, values) for subject, values in groups.items()]
        envelope = seals[0]  # the data subject's
        if len(seals) > 1:
            envelope["x"] = seals[1:]
        plain[PII_KEY] = envelope
        return self.transcoder.encode(plain)

    def _seal_group(self, tenant: str, subject: str, values: dict[str, Any]) -> dict[str, Any]:
        assert self.keys is not None
        epoch, cipher = self.keys.current(tenant, subject)
        sealed = cipher.encrypt(self.transcoder.encode(values))
        return {"s": subject, "k": epoch, "c": b64encode(sealed).decode()}

    def _unseal(self, tenant: str, event: Event, state: bytes) -> Event:
        cut = state.rfind(ENVELOPE_KEY)
        if cut < 0:  # nothing sealed: stored in clear (older events), or no personal data
            return event
        envelope = _envelope(state, cut)  # the last key's value alone is parsed
        if envelope is None:  # not where the mapper puts it: the whole document is read
            envelope = _PiiEnvelope.decode(state).pii
            if envelope is None:
                return event
        assert self.keys is not None, "personal data found but the mapper has no key store"
        personal: dict[str, Any] = {}
        for seal in (envelope, *envelope.x):
            cipher = self.keys.get(tenant, seal.s, seal.k)
            if cipher is None:  # that person's key was destroyed: their fields read as erased
                continue
            personal.update(self.transcoder.decode(cipher.decrypt(a2b_base64(seal.c))))
        return put_all_personal(event, personal) if personal else event

    # Reading without personal data ---------------------------------------------------------

    @property
    def stores_plain_json(self) -> bool:
        """Events are stored as msgspec JSON, neither compressed nor enciphered as a whole: the
        stored bytes can be read without the mapper (``envelope_at``)."""
        return self.cipher is None and self.compressor is None and isinstance(self.transcoder, MsgspecTranscoder)


# A sealed event's stored JSON: the event with its personal fields null, then the envelope as the
# last key (``EventMapper._seal``).
ENVELOPE_KEY = f',"{PII_KEY}":'.encode()


def envelope_at(state: bytes) -> int:
    """Where a sealed event's envelope starts in its stored JSON, or -1 when nothing was sealed.

    The mapper adds the envelope as the last key (``_seal``), after the event's fields with the
    personal ones blank. (An event sealed before one of its fields was declared personal holds
    that field in clear beside its envelope: whether an event is blank is for its fields to say.)
    The envelope is told from a look-alike in a value (an older event stored in clear) by its
    place: what follows the key, up to the document's end, must be an envelope."""
    cut = state.rfind(ENVELOPE_KEY)
    if cut > 0:
        try:
            _SHAPE_DECODER.decode(state[cut + len(ENVELOPE_KEY) : -1])
            return cut
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass
    return -1


def blank_envelope_finder(cls: type[Event]) -> Callable[[bytes], int]:
    """``envelope_at`` for the events of ``cls`` whose personal fields are all blank
    (``domain.messages.blank_check``). A look-alike can only be a key of a mapping (a string's
    quotes are escaped), and a blank field holds no key (None, or an empty default), so for a class
    with no mapping and no free-form value outside its personal fields (a start's ``context``, a
    tool call's ``input``) the last envelope key is the envelope, and the check of what follows it
    is spared."""
    return envelope_at if _holds_free_keys_when_blank(cls) else envelope_key_at


def _holds_free_keys_when_blank(cls: type[Event]) -> bool:
    fields = {path for path in cls.personal_fields if "[]." not in path}
    items: dict[str, set[str]] = {}
    for path in cls.personal_fields:
        if "[]." in path:
            outer, _, inner = path.partition("[].")
            items.setdefault(outer, set()).add(inner)
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    for field in info.fields:
        if field.name in fields:
            if not _blank_holds_no_keys(field):
                return True
        elif field.name in items:
            item = field.type
            if isinstance(item, msgspec.inspect.UnionType):  # list[...] | None
                others = [t for t in item.types if not isinstance(t, msgspec.inspect.NoneType)]
                item = others[0] if len(others) == 1 else item
            if not (
                isinstance(item, msgspec.inspect.ListType) and isinstance(item.item_type, msgspec.inspect.StructType)
            ):
                return True  # not a list of Structs: not known here
            for part in item.item_type.fields:
                if part.name in items[field.name]:
                    if not _blank_holds_no_keys(part):
                        return True
                elif _holds_free_keys(part.type, frozenset({id(cls)})):
                    return True
        elif _holds_free_keys(field.type, frozenset({id(cls)})):
            return True
    return False


def _blank_holds_no_keys(field: msgspec.inspect.Field) -> bool:
    """Whether a personal field's blank (``domain.messages``: its default, else None) is a value
    with no key in it."""
    if field.default is not msgspec.NODEFAULT:
        blank = field.default
    elif field.default_factory is not msgspec.NODEFAULT:
        blank = field.default_factory()
    else:
        blank = None
    return blank is None or isinstance(blank, (str, int, float, bytes)) or (type(blank) in (dict, list) and not blank)


def envelope_key_at(state: bytes) -> int:
    """Where the last envelope key is in an event's stored JSON, or -1 (its envelope, for a class
    that holds no look-alike: ``blank_envelope_finder``)."""
    return state.rfind(ENVELOPE_KEY)


def _holds_free_keys(t: Any, seen: frozenset[int] = frozenset()) -> bool:
    """Whether a value of this type (``msgspec.inspect``) can hold an object with keys of its own."""
    mi = msgspec.inspect
    if isinstance(t, (mi.DictType, mi.AnyType, mi.TypedDictType)):
        return True
    if isinstance(t, (mi.StructType, mi.DataclassType, mi.NamedTupleType)):
        if id(t.cls) in seen:
            return False
        return any(_holds_free_keys(f.type, seen | {id(t.cls)}) for f in t.fields)
    if isinstance(t, (mi.ListType, mi.SetType, mi.FrozenSetType, mi.VarTupleType)):
        return _holds_free_keys(t.item_type, seen)
    if isinstance(t, mi.TupleType):
        return any(_holds_free_keys(item, seen) for item in t.item_types)
    if isinstance(t, mi.UnionType):
        return any(_holds_free_keys(item, seen) for item in t.types)
    return isinstance(t, mi.CustomType)  # what it encodes to is not known here


def _envelope(state: bytes, cut: int) -> _Sealed | None:
    try:
        found: _Sealed = _SEALED_DECODER.decode(state[cut + len(ENVELOPE_KEY) : -1])
        return found
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


class _Seal(msgspec.Struct, frozen=True):
    s: str
    k: int
    c: str


class _Sealed(_Seal, frozen=True):
    x: list[_Seal] = []  # the seals of other people's fields (``Event.seal_subject``)


class _PiiEnvelope(msgspec.Struct, frozen=True):
    pii: _Sealed | None = msgspec.field(default=None, name=PII_KEY)

    @classmethod
    def decode(cls, state: bytes) -> _PiiEnvelope:
        return _ENVELOPE_DECODER.decode(state)


_ENVELOPE_DECODER = msgspec.json.Decoder(_PiiEnvelope)
_SEALED_DECODER = msgspec.json.Decoder(_Sealed)


class _Shape(msgspec.Struct, frozen=True):
    """An envelope's shape, to tell it apart (its other keys are checked as JSON, not kept)."""

    s: str


_SHAPE_DECODER = msgspec.json.Decoder(_Shape)


@functools.lru_cache(maxsize=1024)
def _stored_class(topic: str) -> tuple[type[Event], msgspec.json.Decoder[Any]]:
    """The event class a stored topic names, and its typed decoder."""
    cls = resolve_event(topic)
    return cls, _typed_decoder(cls)
