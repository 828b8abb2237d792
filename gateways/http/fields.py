"""The constrained strings and collections requests are made of: bodies, path and query parameters.

Text is checked at the edge, before anything is decided or stored: no NUL or other control
characters except newline and tab, lengths and sizes bounded. Each bound lives on the type
(``msgspec.Meta`` in a body, Litestar's ``Parameter`` in a path or query), so a refusal is a 400
naming the field, and the OpenAPI schema states it.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar.params import Parameter

# Printable text: any character but the C0 controls (tab and newline excepted) and DEL.
_PRINTABLE = r"^[^\x00-\x08\x0b-\x1f\x7f]*$"
_ONE_LINE = r"^[^\x00-\x1f\x7f]*$"

# A customer's or an agent's message.
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=10_000, pattern=_PRINTABLE, description="printable text")]
# A short free-text field: a reason, a summary line.
Note = Annotated[str, msgspec.Meta(max_length=2_000, pattern=_PRINTABLE)]
# A name, a label, an identifier given by a client: one line.
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=_ONE_LINE)]
ContextKey = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=_ONE_LINE)]
ContextValue = Annotated[str, msgspec.Meta(max_length=1_000, pattern=_PRINTABLE)]
# A start's context: a few keys the client knows (customer id, session, page).
Context = Annotated[dict[ContextKey, ContextValue], msgspec.Meta(max_length=50)]
Attachment = Annotated[str, msgspec.Meta(min_length=1, max_length=2_048, pattern=_ONE_LINE)]
Attachments = Annotated[list[Attachment], msgspec.Meta(max_length=10)]

# An aggregate's id in a path (a conversation, an escalation, a config, an agent, a key, ...): what
# an event stream's name allows (``streams.subjects``).
ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
Id = Annotated[str, Parameter(pattern=ID_PATTERN, max_length=128, description="letters, digits, '_' or '-'")]
# A person by the id their token names (a customer's ``sub``): one line of text.
SubjectId = Annotated[
    str, Parameter(min_length=1, max_length=200, pattern=_ONE_LINE, description="the person's id (a token's subject)")
]
# A tenant's slug or a config's branch: lowercase letters, digits, '_' or '-'.
Slug = Annotated[str, Parameter(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", max_length=64)]
# A stream position a query waits for (Litestar drops a bound of 0 from the schema: stated again).
MinPosition = Annotated[int | None, Parameter(ge=0, schema_extra={"minimum": 0}, description="a stream position")]
