"""A small aggregate used by the event-store tests: a counter with a customer's email."""

from __future__ import annotations

import msgspec

from domain.errors import ValidationError
from domain.messages import Command, Decider, Event


class Incremented(Event, frozen=True):
    amount: int


class EmailNoted(Event, frozen=True):
    customer_id: str
    email: str | None = None
    phone: str | None = None
    note: str = ""

    personal_fields = ("email", "phone")
    data_subject = "customer_id"


class CounterState(msgspec.Struct, frozen=True):
    total: int = 0
    customer_id: str | None = None
    email: str | None = None


def evolve(state: CounterState, event: Event) -> CounterState:
    match event:
        case Incremented(amount=amount):
            return msgspec.structs.replace(state, total=state.total + amount)
        case EmailNoted(customer_id=customer_id, email=email):
            return msgspec.structs.replace(state, customer_id=customer_id, email=email)
    return state


def decide(command: Command, state: CounterState) -> list[Event]:
    raise ValidationError(f"{type(command).__name__} is not a counter command")


COUNTER = Decider(
    type_name="counter",
    state_type=CounterState,
    initial=CounterState,
    evolve=evolve,
    decide=decide,
    data_subject=lambda s: s.customer_id,
)
