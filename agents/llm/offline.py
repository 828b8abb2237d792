"""The offline model: deterministic, no network, no key. The default, and the last link of every chain.

It reads the conversation with rules rather than weights:

- ``analyze(text)``: intent (``support``, ``sales``, ``general``, ``urgent`` or any configured one) from
  regex rules over the text with common typos corrected ("ordr", "refnd"), sentiment in [-1, 1] from a
  lexicon with negations and intensifiers, whether the customer is urgent or asks for a human, and the
  language the message is written in (English, Spanish, French, German, Portuguese, Italian, Dutch,
  or another script).
- ``complete()``: calls the tools whose ``x-parley-patterns`` fire, with arguments drawn from
  everything the conversation knows (the latest message first, then earlier ones), asks for what is
  missing otherwise, and answers a tool result or an intent from ``{{variable}}`` templates
  (``render``: alternatives and optional segments, so no reply shows an empty field).

A tool's patterns, as the agent YAML declares them::

    - name: fetch_order_status
      parameters: {type: object, properties: {order_id: {type: string}}, required: [order_id]}
      x-parley-patterns:
        intents: [order_status]          # fires when the message matches one of these intents' rules,
        triggers: [order, where is my]   # or contains one of these phrases (at a word start, any case,
                                         # a typo of a long word tolerated)
        arguments: {order_id: "ORD-\\d+"}  # regex; a group named like the argument, else group 1, else all
        default_for: [support]           # a read-only lookup: called when nothing else fires, the
                                         # message's intent is one of these, and the customer gave
                                         # one of its arguments ("My package ORD-55555 is late")

How a turn is read:

- One message may ask for several things ("refund $20 on ORD-12345 and email tracking for ORD-78945
  to john@example.com"): it is cut into clauses, each firing tool takes its arguments from its own
  clauses first, and every tool whose own clauses name one of its arguments is called.
- A change of mind wins: "not ORD-12345, I meant ORD-78945" gives ORD-78945 (a value after "not" is
  skipped, and after "I meant", "actually", "sorry" or "wait" the value that follows counts).
- A required argument the latest message lacks comes from earlier customer turns, latest first; an
  optional one only from the turns since the last tool result.
- A tool fired by an earlier customer turn is still chosen when the latest turn supplies one of its
  arguments ("Where is my order?" / "What's the number?" / "ORD-78945"), until a tool result closes
  the topic; after that, a message giving another value ("and ORD-12345?") runs the last lookup again.
- A message in another language is answered politely in that language (the assistant speaks
  English); an order number in it is still looked up.

Tool results arrive as JSON. ``{"error": ...}`` is a failure the customer may hear about and is
answered with the ``<tool>.error`` template; with ``"error_type": "unavailable"`` or
``"invalid_arguments"`` the failure is internal and its text never reaches the reply: the
``<tool>.unavailable`` / ``tool_unavailable`` (or ``<tool>.invalid`` / ``tool_invalid``) wording does.
A result with a ``status`` is answered with ``<tool>.<status>`` when the config has it, else ``<tool>``.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec
import structlog

from agents.llm.port import ChatMessage, Completion, ProviderRejected, ToolCallRequest, ToolSpec
from domain.bot import PATTERNS_KEY, ToolPatterns
from domain.patterns import PatternError, compile_pattern

log = structlog.get_logger(__name__)

FILLERS = frozenset({"the", "a", "an", "my", "your", "our", "me", "this", "that", "its", "it", "us", "for"})
MAX_CALLS_PER_TOOL = 3  # "status of ORD-1, ORD-2 and ORD-3": one call each, no more

# Regex rules per intent, searched case-insensitively; each rule that matches scores one point.
# ``urgent`` wins whenever it matches; otherwise the highest score wins, ties going to a configured
# intent, then to the earlier one.
DEFAULT_INTENTS: dict[str, list[str]] = {
    "urgent": [
        r"\burgent(ly)?\b",
        r"\bemergency\b",
        r"\basap\b",
        r"\bimmediately\b",
        r"\bright (now|away)\b",
        r"\b(fraud(ulent)?|scam(med)?)\b",
        r"\b(hacked|stolen|unauthori[sz]ed)\b",
        r"\bcharged (me )?(twice|two times|double)\b",
        r"\b(lawyer|legal action|sue you)\b",
        r"\b(dangerous|injur(ed|y)|on fire|smoke)\b",
        r"\bsecurity (breach|issue)\b",
    ],
    "support": [
        r"\border(s|ed)?\b",
        r"\b(refund|return|exchange|replacement)(s|ed|ing)?\b",
        r"\b(broken|damaged|defective|faulty)\b",
        r"\b(not|isn'?t|doesn'?t|won'?t|can'?t|cannot) (work|load|log ?in|sign ?in|connect|open)",
        r"\b(deliver(y|ed)?|shipping|shipment|package|parcel|track(ing)?)\b",
        r"\b(problem|issue|error|bug|trouble)s?\b",
        r"\b(password|log ?in|account|sign ?in)\b",
        r"\b(help|support|assist(ance)?)\b",
        r"\bcancel(l?ed|lation|ling)?\b",
        r"\bwhere is my\b",
        r"\b(late|delayed|missing|lost|never arrived|hasn'?t arrived)\b",
    ],
    "sales": [
        r"\b(price|prices|pricing|cost|costs)\b",
        r"\bhow much\b",
        r"\b(buy|purchase|purchasing)\b",
        r"\b(discount|coupon|promo(tion)?|deal|offer|sale)s?\b",
        r"\b(plan|plans|subscription|subscribe|upgrade|tier)\b",
        r"\b(quote|demo|trial)\b",
        r"\b(interested in|looking for|recommend)\b",
        r"\b(enterprise|bulk|wholesale|licen[cs]e)\b",
        r"\b(in stock|availab(le|ility))\b",
    ],
    "general": [
        r"^\W*(hi|hello|hey|good (morning|afternoon|evening))\b",
        r"\b(thanks|thank you|thx)\b",
        r"\b(opening hours|open(ing)? times?|business hours|are you open)\b",
        r"\b(who are you|are you (a )?(bot|human|real))\b",
        r"\b(where are you located|your address|contact you)\b",
        r"\bhow are you\b",
    ],
}

DEFAULT_HUMAN_PATTERNS: list[str] = [
    r"\b(talk|speak|chat)\s+(to|with)\s+(a\s+|an\s+|the\s+|your\s+)?"
    r"(human|person|agent|representative|rep|manager|supervisor|some\s?one|somebody|operator)\b",
    r"\b(real|live|actual)\s+(person|human|agent)\b",
    r"\bhuman\s+(please|agent|support|being)\b",
    r"\bescalate\b",
]

# A template may list alternatives separated by ``||`` (the first whose fields are all known wins)
# and optional ``[[segments]]`` (dropped when a field inside is unknown); see ``render``.
DEFAULT_TEMPLATES: dict[str, str] = {
    "fallback": "I can help with orders, refunds, deliveries, pricing and your account. "
    "Could you tell me a bit more about what you need?",
    "general": "Hello! I can help with orders, refunds, deliveries, pricing and your account. What can I do for you?",
    "thanks": "You're welcome! Is there anything else I can help you with?",
    "noted": "Thanks, I've noted that. What can I help you with?",
    "support": "I'm sorry for the trouble. Could you share your order number or a few details so I can look into it?",
    "sales": "Happy to help with products, plans and pricing. What are you looking for?",
    "urgent": "I understand this is urgent. Tell me what happened and I'll help right away, "
    "or ask me to connect you with a member of our team.",
    "human": "I've let our team know you'd like to speak with a person. Meanwhile, I'm happy to help: "
    "what do you need?",
    "missing_arguments": "I can look into that. Could you tell me your {{missing}}?",
    "tool_result": "Here's what I found: {{result}}",
    "tool_error": "Sorry, I couldn't complete that: {{error}}.",
    "tool_unavailable": "Sorry, I can't do that right now. Please try again in a little while, "
    "or ask me to connect you with a member of our team.",
    "tool_invalid": "Sorry, I couldn't do that with the details I have. Could you check them and try again?",
    "cross_sell.accepted": "Great choice! I've noted your interest in {{product}}[[ (reference {{upgrade_id}})]].",
    "cross_sell.accept_failed": "Thanks for your interest in {{product}}! I couldn't set it up just now; "
    "please try again in a little while.",
    "cross_sell.declined": "No problem, I won't mention it again.",
    "anything_else": "Is there anything else I can help you with?",
    "language.es": "¡Hola! Gracias por escribirnos. Por ahora solo puedo atenderte en inglés. "
    "¿Podrías escribirme en inglés? (Sorry, I can only help in English for now.)",
    "language.fr": "Bonjour ! Merci pour votre message. Pour le moment, je ne peux vous aider qu'en anglais. "
    "Pourriez-vous m'écrire en anglais ? (Sorry, I can only help in English for now.)",
    "language.de": "Hallo! Danke für Ihre Nachricht. Im Moment kann ich leider nur auf Englisch helfen. "
    "Könnten Sie mir auf Englisch schreiben? (Sorry, I can only help in English for now.)",
    "language.pt": "Olá! Obrigado pela sua mensagem. Por enquanto, só consigo ajudar em inglês. "
    "Pode escrever-me em inglês? (Sorry, I can only help in English for now.)",
    "language.it": "Ciao! Grazie per il tuo messaggio. Per ora posso aiutarti solo in inglese. "
    "Potresti scrivermi in inglese? (Sorry, I can only help in English for now.)",
    "language.nl": "Hallo! Bedankt voor je bericht. Op dit moment kan ik alleen in het Engels helpen. "
    "Kun je me in het Engels schrijven? (Sorry, I can only help in English for now.)",
    "language.other": "Hello! Sorry, I can only help in English for now. Could you write to me in English?",
    "language_note.es": "(Por ahora solo puedo responder en inglés.)",
    "language_note.fr": "(Pour le moment, je ne peux répondre qu'en anglais.)",
    "language_note.de": "(Im Moment kann ich nur auf Englisch antworten.)",
    "language_note.pt": "(Por enquanto, só consigo responder em inglês.)",
    "language_note.it": "(Per ora posso rispondere solo in inglese.)",
    "language_note.nl": "(Op dit moment kan ik alleen in het Engels antwoorden.)",
    "language_note.other": "(Sorry, I can only reply in English for now.)",
}
LAST_RESORT = "Sorry, I'm not able to help with that right now."

LEXICON: dict[str, float] = {
    # positive
    "good": 1.9, "great": 3.1, "excellent": 3.2, "amazing": 2.8, "awesome": 3.1, "fantastic": 2.6,
    "wonderful": 2.7, "perfect": 2.7, "best": 3.2, "love": 3.2, "loved": 2.9, "happy": 2.7, "glad": 2.0,
    "pleased": 1.9, "satisfied": 1.8, "thanks": 1.9, "thank": 1.5, "thankful": 2.0, "appreciate": 2.0,
    "helpful": 1.8, "nice": 1.8, "fine": 0.8, "fast": 1.0, "quick": 1.0, "easy": 1.5, "resolved": 1.5,
    "fixed": 1.2, "works": 1.0, "working": 1.0, "recommend": 1.5, "cool": 1.3, "ok": 0.9, "okay": 0.9,
    # negative
    "bad": -2.5, "terrible": -3.0, "awful": -3.0, "horrible": -3.0, "worst": -3.1, "hate": -2.7,
    "hated": -2.7, "angry": -2.3, "annoyed": -1.8, "annoying": -1.8, "frustrated": -2.0, "frustrating": -2.0,
    "disappointed": -2.0, "disappointing": -2.0, "upset": -1.9, "unhappy": -1.9, "sad": -2.1,
    "furious": -3.0, "ridiculous": -2.0, "unacceptable": -2.6, "useless": -2.4, "poor": -2.1,
    "broken": -1.9, "damaged": -1.8, "wrong": -1.6, "slow": -1.0, "late": -1.0, "delayed": -1.2,
    "missing": -1.2, "lost": -1.4, "problem": -1.4, "problems": -1.4, "issue": -1.0, "issues": -1.0,
    "error": -1.3, "fail": -2.0, "failed": -2.0, "failure": -2.2, "scam": -3.0, "rude": -2.0,
    "waste": -1.8, "sucks": -2.5, "complaint": -1.6, "disaster": -3.0, "nightmare": -2.8,
}  # fmt: skip
NEGATIONS = frozenset(
    {"not", "no", "never", "none", "nothing", "nobody", "neither", "nor", "without", "hardly", "cannot"}
    | {"dont", "doesnt", "didnt", "isnt", "wasnt", "arent", "werent", "wont", "cant", "couldnt", "wouldnt"}
)
INTENSIFIERS: dict[str, float] = {
    "very": 1.5, "really": 1.4, "so": 1.3, "extremely": 1.8, "super": 1.5, "totally": 1.4, "absolutely": 1.6,
    "incredibly": 1.7, "quite": 1.2, "too": 1.3, "slightly": 0.6, "somewhat": 0.7, "barely": 0.5,
}  # fmt: skip
NEGATION_SCOPE = 3  # words after a negation that it can flip
NEGATED = -0.75  # a negated word flips and weakens: "not happy" is milder than "unhappy"
_WORDS = re.compile(r"[a-z]+(?:'[a-z]+)?|[.!?;,]")
_JSON = msgspec.json.Decoder()

# -- typos ------------------------------------------------------------------------------------------
# Words of the domain a customer may mistype. A word one edit away from one of them is read as it
# ("ordr", "refnd", "trackng", "delivry"): a missing, extra or swapped letter, or for words of six
# letters or more a wrong one. Real words that happen to sit one edit away are never changed.
VOCABULARY = frozenset(
    "order orders refund refunds return returns tracking track package parcel delivery deliver delivered "
    "shipping shipped shipment cancel cancelled status where email callback ticket human agent manager person "
    "someone representative price prices pricing upgrade subscription discount warranty headphones broken "
    "damaged arrived account password please thanks urgent money recommend interested purchase replacement "
    "exchange missing delayed received number support problem receipt invoice charged schedule tomorrow "
    "morning afternoon evening premium shipping difference compare business basic"
    .split()
)  # fmt: skip
REAL_WORDS = frozenset(
    "here were there mail rice tanks hanks stats rack tack older border trick truck trace prize pride prince "
    "humane statue whore tissue odder monkey lumber chipped whipped shopped managed mourning parson changed "
    "kissing hissing relayed decayed broker picket wicket argent pleased arrives aged cancer persons agents "
    "humans prices tracks orders emails reorder ordered tickets parcels packages"
    .split()
)  # fmt: skip
_TYPO_WORD = re.compile(r"[A-Za-z]{4,}")
_WERE_IS = re.compile(r"\b(w)(?:ere|hre|her)(?=\s+(?:is|are|'s)\b)|\b(w)(?:ehre|hree)\b", re.IGNORECASE)


def one_edit(word: str, target: str) -> bool:
    """``word`` is ``target`` with one letter missing, added or two neighbours swapped (or, from six
    letters on, one letter wrong)."""
    n, m = len(word), len(target)
    if n == m:
        diffs = [i for i in range(n) if word[i] != target[i]]
        if len(diffs) == 1:
            return m >= 6
        return (
            len(diffs) == 2
            and diffs[1] == diffs[0] + 1
            and word[diffs[0]] == target[diffs[1]]
            and (word[diffs[1]] == target[diffs[0]])
        )
    if m < 5 or abs(n - m) != 1:
        return False
    short, long = (word, target) if n < m else (target, word)
    i = 0
    while i < len(short) and short[i] == long[i]:
        i += 1
    return short[i:] == long[i + 1 :]


@functools.lru_cache(maxsize=4096)
def _corrected_word(word: str, vocabulary: frozenset[str]) -> str | None:
    lower = word.lower()
    if lower in vocabulary or lower in REAL_WORDS or lower in LEXICON:
        return None
    found = [
        target
        for target in vocabulary
        if abs(len(target) - len(lower)) <= 1
        and not (target.startswith(lower) or lower.startswith(target))  # "arrive" is no typo of "arrived"
        and one_edit(lower, target)
    ]
    return found[0] if len(set(found)) == 1 else None


def correct_typos(text: str, vocabulary: frozenset[str] = VOCABULARY) -> str:
    """``text`` with each word one edit away from a single ``vocabulary`` word replaced by it."""
    text = _WERE_IS.sub(lambda m: (m.group(1) or m.group(2)) + "here", text)
    return _TYPO_WORD.sub(lambda m: _corrected_word(m.group(0), vocabulary) or m.group(0), text)


# -- languages --------------------------------------------------------------------------------------
# Words frequent in one language and rare in the others; a message is in the language with the most
# of them when that beats its English words (a greeting alone is enough).
LANGUAGE_WORDS: dict[str, frozenset[str]] = {
    "en": frozenset(
        "the is my where i you to and for of it please order what can with this have not me on in hi hello "
        "thanks thank want need your are do how was be that an at help refund package hey yes no".split()
    ),
    "es": frozenset(
        "hola gracias por favor pedido dónde donde está mi quiero necesito ayuda buenos buenas días tardes noches "
        "reembolso paquete llegó todavía puedo usted cómo qué los las una y con para sí del que tengo hablas "
        "español mío pero ya es el la".split()
    ),
    "fr": frozenset(
        "bonjour salut merci je mon ma mes est où commande les une et pour avec vous voudrais remboursement pas "
        "c'est s'il plaît aide colis pourquoi toujours reçu français bonsoir livraison le la".split()
    ),
    "de": frozenset(
        "hallo guten tag danke bitte ich mein meine ist wo bestellung die der das und nicht mit für möchte "
        "rückerstattung paket hilfe habe noch angekommen sprechen sie deutsch wie morgen abend".split()
    ),
    "pt": frozenset(
        "olá ola obrigado obrigada meu minha pedido onde está não quero para com reembolso encomenda ajuda bom "
        "dia você por favor ainda chegou preciso tudo bem português boa tarde".split()
    ),
    "it": frozenset(
        "ciao buongiorno buonasera grazie mio mia ordine dove è il lo non voglio per con rimborso pacco aiuto "
        "vorrei ancora arrivato sono della italiano parla".split()
    ),
    "nl": frozenset(
        "hallo goedemorgen bedankt dank je wel waar mijn bestelling is niet met voor wil pakket hulp graag nog "
        "aangekomen nederlands hoe het een".split()
    ),
}
GREETINGS: dict[str, str] = {
    "hola": "es", "gracias": "es", "buenos": "es", "buenas": "es", "bonjour": "fr", "salut": "fr", "merci": "fr",
    "bonsoir": "fr", "hallo": "de", "danke": "de", "guten": "de", "olá": "pt", "obrigado": "pt",
    "obrigada": "pt", "ciao": "it", "buongiorno": "it", "grazie": "it", "buonasera": "it", "goedemorgen": "nl",
    "bedankt": "nl",
}  # fmt: skip
_LETTERS = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")


def detect_language(text: str) -> str:
    """``en``, ``es``, ``fr``, ``de``, ``pt``, ``it``, ``nl``, or ``other`` for a non-Latin script."""
    words = _LETTERS.findall(text.lower())
    if not words:
        return "en"
    letters = "".join(words)
    if sum(1 for char in letters if char.isascii() or "\u00c0" <= char <= "\u024f") < len(letters) / 2:
        return "other"
    scores = {
        language: sum(1 for word in words if word in vocabulary) for language, vocabulary in LANGUAGE_WORDS.items()
    }
    english = scores.pop("en")
    best = max(scores, key=lambda language: scores[language])
    if scores[best] >= 2 and scores[best] > english:
        return best
    greeting = next((GREETINGS[word] for word in words if word in GREETINGS), None)
    if greeting is not None and english == 0:
        return greeting
    return "en"


# -- templates --------------------------------------------------------------------------------------
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][\w-]*(?:\.[\w-]+)*)\s*\}\}")
_TOKEN = re.compile(r"\[\[(?P<segment>.*?)\]\]|\{\{\s*(?P<name>[A-Za-z_][\w-]*(?:\.[\w-]+)*)\s*\}\}", re.DOTALL)
ALTERNATIVE = "||"


def render(template: str, variables: Mapping[str, Any]) -> str | None:
    """``template`` filled from ``variables``, or None when it cannot be without an empty field.

    ``{{name}}`` (or ``{{order.status}}``, ``{{items.0}}``) is a field; a field is unknown when
    missing, None, or empty. A template may hold alternatives separated by ``||``: the first whose
    fields are all known is used. ``[[ ... ]]`` is an optional segment, left out when a field in it is
    unknown. Values are inserted as they are, never expanded again.
    """
    for alternative in template.split(ALTERNATIVE):
        filled = _fill(alternative.strip(), variables)
        if filled is not None:
            return filled
    return None


def render_template(template: str, variables: Mapping[str, Any], default: str = "") -> str:
    """``render``, or ``default`` when no alternative of ``template`` can be filled."""
    rendered = render(template, variables)
    return default if rendered is None else rendered


def render_first(templates: Iterable[str | None], variables: Mapping[str, Any], default: str = LAST_RESORT) -> str:
    """The first of ``templates`` (None skipped) that renders; ``default`` when none does."""
    for template in templates:
        if template is not None and (rendered := render(template, variables)) is not None:
            return rendered
    return default


def _fill(text: str, variables: Mapping[str, Any], *, segments: bool = True) -> str | None:
    parts: list[str] = []
    position = 0
    for token in (_TOKEN if segments else _PLACEHOLDER).finditer(text):
        parts.append(text[position : token.start()])
        position = token.end()
        if segments and token.group("segment") is not None:
            parts.append(_fill(token.group("segment"), variables, segments=False) or "")
            continue
        value = _lookup(token.group("name") if segments else token.group(1), variables)
        if value is None:
            return None
        parts.append(value)
    parts.append(text[position:])
    return "".join(parts)


def _lookup(path: str, variables: Mapping[str, Any]) -> str | None:
    value: Any = variables
    for part in path.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list | tuple) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    shown = display(value)
    return shown if shown.strip() else None


def display(value: Any) -> str:
    """How a variable reads in a reply: nothing for None, yes/no, lists joined, objects as JSON."""
    match value:
        case None:
            return ""
        case str():
            return value
        case bool():
            return "yes" if value else "no"
        case list() | tuple():
            return ", ".join(shown for shown in (display(item) for item in value) if shown)
        case dict():
            if not value:
                return ""
            try:
                return msgspec.json.encode(value).decode()
            except (TypeError, msgspec.EncodeError):
                return str(value)
        case _:
            return str(value)


class Analysis(msgspec.Struct, frozen=True):
    """``intents`` lists every intent whose rules matched, strongest first; ``intent`` is the one chosen."""

    intent: str
    confidence: float
    sentiment: float
    urgent: bool
    wants_human: bool
    intents: list[str] = []
    language: str = "en"


class _Candidate(msgspec.Struct):
    """A tool the turn may call: how it fired, its strength, and the clauses of the latest message it owns."""

    tool: ToolSpec
    patterns: ToolPatterns
    position: int
    hits: int
    how: str  # latest, earlier, follow_up, default
    clauses: list[int] = []
    span: str = ""
    arguments: dict[str, Any] = {}
    missing: list[str] = []
    variants: list[dict[str, Any]] = []  # one set of arguments per call

    @property
    def lookup(self) -> bool:
        return bool(self.patterns.default_for)


THANKS = re.compile(
    r"^\W*(?:(?:ok(?:ay)?|great|perfect|awesome|cool|got it|brilliant)\W+)?"
    r"(?:thanks?|thank you|thx|ty|cheers|bye|goodbye|that'?s all|that is all)\b",
    re.IGNORECASE,
)
ADDITIVE = re.compile(r"\b(and|also|too|as well|what about|how about|same for|another|other one)\b", re.IGNORECASE)
CORRECTION = re.compile(
    r"\b(i meant|i mean|meant|actually|sorry|wait|instead|correction|rather|my bad|my mistake|oops)\b", re.IGNORECASE
)
NEGATED_BEFORE = re.compile(
    r"(?:\bnot|n't|\bno|\binstead of|\brather than)[\s,:]+(?:(?:the|that|this|order|for|on|about)\s+)*$", re.IGNORECASE
)
CLAUSE_BREAK = re.compile(
    r"[.;!?]+(?:\s+|$)|,?\s+(?:and(?: also)?|also|plus|then|as well as)\s+|,\s+(?=[a-z])", re.IGNORECASE
)


class OfflineModel:
    """A rule-based ``LLMProvider``. ``intents`` and ``templates`` are merged over the defaults by key."""

    def __init__(
        self,
        *,
        intents: Mapping[str, Sequence[str]] | None = None,
        templates: Mapping[str, str] | None = None,
        human_patterns: Sequence[str] | None = None,
        lexicon: Mapping[str, float] | None = None,
        name: str = "offline",
        model: str = "parley-offline-1",
    ) -> None:
        self.name = name
        self.model = model
        configured = dict(intents or {})
        rules = {**DEFAULT_INTENTS, **configured}
        # A config's own patterns run in the linear-time engine; the built-in ones are ours.
        self._intents = {
            intent: [
                compile_pattern(p, ignore_case=True) if intent in configured else re.compile(p, re.IGNORECASE)
                for p in patterns
            ]
            for intent, patterns in rules.items()
        }
        self._human = [re.compile(p, re.IGNORECASE) for p in (human_patterns or DEFAULT_HUMAN_PATTERNS)]
        self._lexicon = {**LEXICON, **(lexicon or {})}
        self.templates = {**DEFAULT_TEMPLATES, **(templates or {})}
        self._analyses: dict[str, Analysis] = {}  # a turn reads the same text several times

    # -- reading a message -------------------------------------------------------------------------

    def analyze(self, text: str) -> Analysis:
        if (known := self._analyses.get(text)) is not None:
            return known
        if len(self._analyses) >= 1024:
            self._analyses.clear()
        analysis = self._analyses[text] = self._analyze(text)
        return analysis

    def _analyze(self, text: str) -> Analysis:
        read = correct_typos(text)
        scores = {intent: sum(1 for rule in rules if rule.search(read)) for intent, rules in self._intents.items()}
        # Ties go to a configured intent before a default one (it is the more specific), then to the
        # one listed first.
        order = [*(i for i in scores if i not in DEFAULT_INTENTS), *(i for i in scores if i in DEFAULT_INTENTS)]
        matched = sorted((i for i, s in scores.items() if s), key=lambda i: (-scores[i], order.index(i)))
        urgent = scores.get("urgent", 0) > 0
        intent = "urgent" if urgent else matched[0] if matched else "general"
        total = sum(scores.values())
        confidence = scores[intent] / total * (1 - 0.5 ** (scores[intent] + 1)) if total else 0.2
        return Analysis(
            intent=intent,
            confidence=round(confidence, 3),
            sentiment=self.sentiment(text),
            urgent=urgent,
            wants_human=any(rule.search(read) for rule in self._human),
            intents=matched,
            language=detect_language(text),
        )

    def sentiment(self, text: str) -> float:
        """Lexicon sum with negation (flip, weaken), intensifiers, ``but`` shifting weight, ``!`` amplifying."""
        total, weight, boost = 0.0, 1.0, 1.0
        negation, scope = "", 0
        for word in _WORDS.findall(text.lower().replace("\u2019", "'")):
            if word in ".!?;,":
                negation, scope, boost = "", 0, 1.0
            elif word in NEGATIONS or word.endswith("n't"):
                negation, scope = word, NEGATION_SCOPE
            elif word == "but":
                total, weight = total * 0.5, 1.5
            elif word in INTENSIFIERS:
                boost *= INTENSIFIERS[word]
                if negation == "never" and scope:  # "never so disappointed" amplifies rather than negates
                    negation, scope = "", 0
            elif (value := self._lexicon.get(word)) is not None:
                total += value * boost * (NEGATED if scope else 1.0) * weight
                negation, scope, boost = "", 0, 1.0
            else:
                scope, boost = max(scope - 1, 0), 1.0
        total *= 1 + 0.1 * min(text.count("!"), 3)
        return round(total / math.sqrt(total * total + 15), 4)

    # -- answering ---------------------------------------------------------------------------------

    async def complete(
        self,
        messages: list[ChatMessage],
        *,
        system: str = "",
        tools: Sequence[ToolSpec] = (),
        timeout: float = 0.0,  # noqa: ASYNC109  (the port's; it answers at once)
    ) -> Completion:
        del system, timeout  # rules, not a prompt; and it answers at once
        if messages and messages[-1].role == "tool":
            return self._reply(self._answer_tool_results(messages))
        window = topic(messages)
        if not window:
            return self._reply(self.templates["fallback"])
        analysis = self.analyze(window[-1])
        if analysis.wants_human:
            return self._reply(self.templates["human"])
        calls, ask = self.plan(messages, tools, analysis)
        if calls:
            requests = [
                ToolCallRequest(id=call_id(len(messages), f"{index}:{tool.name}", arguments), name=tool.name,
                                arguments=arguments)
                for index, (tool, arguments) in enumerate(calls)
            ]  # fmt: skip
            log.debug("llm.offline.tool_call", tools=[request.name for request in requests])
            return Completion(
                text="", tool_calls=requests, provider=self.name, model=self.model, stop_reason="tool_use"
            )
        if analysis.language != "en":
            return self._reply(self._template(f"language.{analysis.language}", "language.other"))
        if ask is not None:
            tool, arguments, missing = ask
            wanted = " and ".join(name.replace("_", " ") for name in missing)
            variables = {**arguments, "missing": wanted, "tool": tool.name}
            return self._reply(
                render_first(
                    [self.templates.get(f"{tool.name}.missing"), self.templates["missing_arguments"]], variables
                )
            )
        if THANKS.search(window[-1]) and set(analysis.intents) <= {"general"}:
            return self._reply(self._template("thanks", "general"))
        if set(analysis.intents) <= {"general"} and _gives_values(window[-1], tools):
            return self._reply(self._template("noted", "fallback"))  # "my email is jo@example.com"
        key = analysis.intent if analysis.intents or analysis.urgent else "fallback"
        return self._reply(
            render_first([self.templates.get(key), self.templates["fallback"]], {"intent": analysis.intent})
        )

    def _template(self, *keys: str) -> str:
        return render_first((self.templates.get(key) for key in keys), {})

    def _reply(self, text: str) -> Completion:
        return Completion(text=text, tool_calls=[], provider=self.name, model=self.model, stop_reason="end_turn")

    def _answer_tool_results(self, messages: list[ChatMessage]) -> str:
        """One rendered sentence per trailing tool result: arguments of the call, then the result's fields."""
        calls = {call.id: call for message in messages for call in message.tool_calls}
        trailing: list[ChatMessage] = []
        for message in reversed(messages):
            if message.role != "tool":
                break
            trailing.insert(0, message)
        replies = []
        for result in trailing:
            call = calls.get(result.tool_call_id or "")
            tool = result.name or (call.name if call else "")
            variables = {**(call.arguments if call else {}), **result_variables(result.content), "tool": tool}
            replies.append(render_first(self.result_templates(tool, variables), variables))
        said = [message.content for message in messages if message.role == "user"]
        language = detect_language(said[-1]) if said else "en"
        if language != "en":
            replies.insert(0, self._template(f"language_note.{language}", "language_note.other"))
        return " ".join(reply for reply in replies if reply)

    def result_templates(self, tool: str, variables: Mapping[str, Any]) -> list[str | None]:
        """The templates that may answer a tool's result, most specific first."""
        get = self.templates.get
        if variables.get("error"):
            match variables.get("error_type"):
                case "unavailable":
                    return [get(f"{tool}.unavailable"), get("tool_unavailable")]
                case "invalid_arguments":
                    return [get(f"{tool}.invalid"), get("tool_invalid"), get("tool_unavailable")]
                case _:
                    return [get(f"{tool}.error"), get("tool_error"), get("tool_unavailable")]
        status = variables.get("status")
        specific = get(f"{tool}.{status}") if isinstance(status, str) and status else None
        return [specific, get(tool), get("tool_result")]

    # -- choosing tools ----------------------------------------------------------------------------

    def plan(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec], analysis: Analysis | None = None
    ) -> tuple[list[tuple[ToolSpec, dict[str, Any]]], tuple[ToolSpec, dict[str, Any], list[str]] | None]:
        """The tool calls the latest customer turn asks for, or else the tool it needs more for (and what).

        Returns ``(calls, ask)``: ``calls`` as (tool, arguments), each complete; ``ask`` as (tool,
        arguments so far, missing required arguments) when nothing can be called but a tool fired.
        """
        window = topic(messages)
        if not window:
            return [], None
        said = [message.content for message in messages if message.role == "user"]
        earlier = said[: len(said) - len(window)]
        latest = window[-1]
        analysis = analysis or self.analyze(latest)
        patterned = [(tool, patterns) for tool in tools if (patterns := tool_patterns(tool)) is not None]
        vocabulary = VOCABULARY | {
            word.lower() for _, patterns in patterned for trigger in patterns.triggers for word in trigger.split()
            if len(word) >= 5 and word.isalpha()
        }  # fmt: skip
        clauses = split_clauses(latest)
        read = [correct_typos(clause, vocabulary) for clause in clauses]
        candidates: list[_Candidate] = []
        for position, (tool, patterns) in enumerate(patterned):
            hit = [index for index, clause in enumerate(read) if self._trigger_hits(patterns, clause)]
            hits = sum(self._trigger_hits(patterns, clause) for clause in read)
            hits += sum(1 for intent in patterns.intents if intent in analysis.intents)
            if hits:
                candidates.append(_Candidate(tool, patterns, position, hits, "latest", hit))
        if candidates:
            _assign_spans(candidates, clauses)
        else:
            fallback = self._carried_over(messages, window, patterned, vocabulary)
            candidates = [] if fallback is None else [fallback]
        if not candidates:
            return [], None
        for candidate in candidates:
            _fill_arguments(candidate, latest, window[:-1], earlier)
        complete = [c for c in candidates if not c.missing]
        if not complete:
            best = max(candidates, key=lambda c: (c.hits, not c.lookup, -c.position))
            return [], (best.tool, best.arguments, best.missing)
        best = max(complete, key=lambda c: (c.hits, not c.lookup, -c.position))
        chosen = [best] + [c for c in complete if c is not best and c.how == "latest" and _own_values(c)]
        calls: list[tuple[ToolSpec, dict[str, Any]]] = []
        for candidate in sorted(chosen, key=lambda c: (min(c.clauses, default=0), c.position)):
            for arguments in candidate.variants:
                if (candidate.tool, arguments) not in calls:
                    calls.append((candidate.tool, arguments))
        effects = [arguments for tool, arguments in calls if not _is_lookup(tool)]
        calls = [
            (tool, arguments) for tool, arguments in calls
            if not _is_lookup(tool) or not any(arguments.items() <= effect.items() for effect in effects)
        ]  # fmt: skip
        return calls, None

    def _carried_over(
        self,
        messages: Sequence[ChatMessage],
        window: list[str],
        patterned: list[tuple[ToolSpec, ToolPatterns]],
        vocabulary: frozenset[str],
    ) -> _Candidate | None:
        """A tool for a latest turn no tool fired on: one fired earlier in the topic that it completes,
        the last lookup again for a new value ("and ORD-12345?"), or a lookup by default."""
        latest = window[-1]

        def supplies(patterns: ToolPatterns, texts: Sequence[str]) -> bool:
            return any(_values(regex, text) for regex in patterns.arguments.values() for text in texts)

        fired = []
        for position, (tool, patterns) in enumerate(patterned):
            hits = sum(
                self._trigger_hits(patterns, correct_typos(text, vocabulary))
                + len(set(patterns.intents) & set(self.analyze(text).intents))
                for text in window[:-1]
            )
            if hits and supplies(patterns, [latest]):
                fired.append(_Candidate(tool, patterns, position, hits, "earlier", span=latest))
        if fired:  # the one the last reply asked about, ranked as ``plan`` ranks what it asks for
            return max(fired, key=lambda c: (c.hits, not c.lookup, -c.position))
        last = last_tool_call(messages)
        for position, (tool, patterns) in enumerate(patterned):
            if last is not None and tool.name == last.name and supplies(patterns, [latest]):
                if patterns.default_for or ADDITIVE.search(latest) or CORRECTION.search(latest):
                    return _Candidate(tool, patterns, position, 1, "follow_up", span=latest)
        analyses = [self.analyze(text) for text in window]
        intents = {intent for analysis in analyses for intent in analysis.intents}
        # A bare value ("ORD-12345?", "can you check ORD-1 for me") or one in a language no rule reads
        # is looked up too: an order number is an order number.
        plain = set(analyses[-1].intents) <= {"general"} and not analyses[-1].urgent
        foreign = analyses[-1].language != "en"
        for position, (tool, patterns) in enumerate(patterned):
            if not patterns.default_for:
                continue
            wanted = foreign or bool(set(patterns.default_for) & intents)
            if (wanted and supplies(patterns, window)) or (plain and supplies(patterns, [latest])):
                return _Candidate(tool, patterns, position, 1, "default", span=latest)
        return None

    def _trigger_hits(self, patterns: ToolPatterns, text: str) -> int:
        return sum(1 for trigger in patterns.triggers if phrase(trigger).search(text))


def _gives_values(text: str, tools: Sequence[ToolSpec]) -> bool:
    """``text`` gives a value one of the tools takes (an email, a phone number, an order number)."""
    for tool in tools:
        patterns = tool_patterns(tool)
        regexes = [] if patterns is None else patterns.arguments.values()
        if any(_values(regex, text) for regex in regexes if not _compiled(regex).search("just some words")):
            return True  # (a regex that takes any text, like a ticket's description, gives nothing)
    return False


def _own_values(candidate: _Candidate) -> bool:
    """The candidate's own clauses name one of its arguments."""
    return any(_values(regex, candidate.span) for regex in candidate.patterns.arguments.values())


def _is_lookup(tool: ToolSpec) -> bool:
    patterns = tool_patterns(tool)
    return patterns is not None and bool(patterns.default_for)


def _assign_spans(candidates: list[_Candidate], clauses: list[str]) -> None:
    """Each tool fired in the latest message owns the clauses from each one it fired in up to the next
    clause another fired tool fired in; a tool fired by intent alone owns the whole message."""
    starts = sorted({index for candidate in candidates for index in candidate.clauses})
    for candidate in candidates:
        owned: list[int] = []
        for index in candidate.clauses:
            later = [start for start in starts if start > index and start not in candidate.clauses]
            owned += range(index, later[0] if later else len(clauses))
        candidate.span = " ".join(clauses[i] for i in sorted(set(owned))) if owned else " ".join(clauses)


def _fill_arguments(candidate: _Candidate, latest: str, window: Sequence[str], earlier: Sequence[str]) -> None:
    """A candidate's arguments: its own clauses, the latest message, the topic's earlier turns (latest
    first), and for required arguments the conversation before; several values in its own clauses for
    its first required argument make one call each."""
    tool, patterns = candidate.tool, candidate.patterns
    properties = tool.parameters.get("properties", {})
    required = [name for name in tool.parameters.get("required", []) if isinstance(name, str)]
    found: dict[str, Any] = {}
    for name, regex in patterns.arguments.items():
        sources = [candidate.span, latest, *reversed(window)]
        if name in required:
            sources += list(reversed(earlier))
        for text in sources:
            value = pick(_values(regex, text, name), text)
            typed_value = None if value is None else typed(value, properties.get(name, {}))
            if typed_value is not None:
                found[name] = typed_value
                break
    candidate.arguments = found
    candidate.missing = [name for name in required if name not in found]
    candidate.variants = [found]
    varying = next((name for name in required if name in patterns.arguments), None)
    if varying is not None and not CORRECTION.search(candidate.span):
        values = _unique(v for v in _values(patterns.arguments[varying], candidate.span, varying) if not v.negated)
        typed_values = [typed(v, properties.get(varying, {})) for v in values[:MAX_CALLS_PER_TOOL]]
        if len(typed_values) > 1 and None not in typed_values:
            candidate.variants = [{**found, varying: value} for value in typed_values]


class _Value(msgspec.Struct, frozen=True):
    text: str
    start: int
    negated: bool


def _values(regex: str, text: str, name: str = "") -> list[_Value]:
    """Every value of an argument's regex in ``text``, each marked when a negation precedes it."""
    rule = _compiled(regex)
    found = []
    for match in rule.finditer(text):
        group = rule.groupindex[name] if name and name in rule.groupindex else 1 if rule.groups else 0
        raw = match.group(group)
        if raw is None:
            continue
        before = text[max(0, match.start(group) - 24) : match.start(group)]
        found.append(_Value(raw, match.start(group), NEGATED_BEFORE.search(before) is not None))
    return found


def pick(values: Sequence[_Value], text: str) -> str | None:
    """The value meant: the first not negated after the last correction ("I meant ..."), else the first
    not negated."""
    kept = [value for value in values if not value.negated]
    if not kept:
        return None
    corrections = [match.end() for match in CORRECTION.finditer(text)]
    if corrections:
        after = [value for value in kept if value.start >= corrections[-1]]
        if after:
            return after[0].text
        return kept[-1].text
    return kept[0].text


def _unique(values: Iterable[_Value]) -> list[str]:
    seen: list[str] = []
    for value in values:
        if value.text.upper() not in (s.upper() for s in seen):
            seen.append(value.text)
    return seen


def _compiled(regex: str) -> Any:
    """A config's argument pattern, in the linear-time engine (``domain.patterns``)."""
    return compile_pattern(regex)


def split_clauses(text: str) -> list[str]:
    """``text`` cut at sentence ends, semicolons, and joining words ("and", "also", "then")."""
    return [clause.strip() for clause in CLAUSE_BREAK.split(text) if clause and clause.strip()]


def topic(messages: Sequence[ChatMessage]) -> list[str]:
    """The customer's turns since the last tool result: what the next tool call may draw on."""
    texts: list[str] = []
    for message in reversed(messages):
        if message.role == "tool":
            break
        if message.role == "user":
            texts.insert(0, message.content)
    return texts


def last_tool_call(messages: Sequence[ChatMessage]) -> ToolCallRequest | None:
    """The conversation's most recent tool call."""
    for message in reversed(messages):
        if message.tool_calls:
            return message.tool_calls[-1]
    return None


def tool_patterns(tool: ToolSpec) -> ToolPatterns | None:
    raw = tool.extra.get(PATTERNS_KEY)
    if raw is None:
        return None
    try:
        patterns = msgspec.convert(raw, ToolPatterns)
        for regex in patterns.arguments.values():
            compile_pattern(regex)
    except (msgspec.ValidationError, PatternError) as exc:
        raise ProviderRejected(f"tool {tool.name!r} has invalid {PATTERNS_KEY}: {exc}", provider="offline") from exc
    return patterns


@functools.lru_cache(maxsize=512)
def phrase(trigger: str) -> re.Pattern[str]:
    """A trigger phrase matches at the start of a word, in any case ("order" finds "orders"). Between
    its first and last word, small words may be left out or added ("send the tracking" finds "send me
    tracking"); its first and last words are always there ("my order" needs the "my")."""
    words = trigger.split()
    if len(words) < 2:
        return re.compile(r"(?<!\w)" + re.escape(trigger.strip()), re.IGNORECASE)
    inner = [word for word in words[1:-1] if word.lower() not in FILLERS]
    between = r"\s+(?:(?:" + "|".join(sorted(FILLERS)) + r")\s+)*"
    return re.compile(r"(?<!\w)" + between.join(map(re.escape, [words[0], *inner, words[-1]])), re.IGNORECASE)


def typed(raw: str | None, schema: Mapping[str, Any]) -> Any:
    """``raw`` as the schema's ``integer``, ``number`` or ``boolean``; None when it is not one."""
    if raw is None:
        return None
    try:
        match schema.get("type"):
            case "integer":
                return int(raw)
            case "number":
                return float(raw)
            case "boolean":
                return raw.strip().lower() in {"yes", "true", "y", "1"}
            case _:
                return raw
    except ValueError:
        return None


def result_variables(content: str) -> dict[str, Any]:
    """A tool result's fields when it is a JSON object; always ``result``, the content as it came."""
    try:
        decoded = _JSON.decode(content)
    except msgspec.DecodeError:
        return {"result": content}
    if isinstance(decoded, dict):
        return {"result": content, **decoded}
    return {"result": decoded}


def call_id(position: int, tool: str, arguments: Mapping[str, Any]) -> str:
    """Deterministic: the same conversation asks for the same call with the same id."""
    digest = hashlib.sha256(f"{position}:{tool}:{msgspec.json.encode(arguments).decode()}".encode()).hexdigest()
    return f"call_offline_{digest[:16]}"
