"""A customer as a data subject: their erasure (the right to be forgotten), as a pure decider.

A customer's personal data lives sealed under their key in every event that holds it
(``domain.messages``); erasing them destroys that key (``commands.customer``), so the log keeps
its events and loses their personal data. This aggregate records that it happened, once: who
asked, when, and which of the customer's conversations and calls were erased with them. Asking
again changes nothing and answers the same erasure (``EraseCustomer`` is idempotent).
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from domain.errors import ValidationError
from domain.messages import Command, Decider, Event

AGGREGATE_TYPE = "customer"


class CustomerStreams(msgspec.Struct, frozen=True):
    """What a customer has in the tenant: their conversations and calls."""

    conversations: list[str] = []
    calls: list[str] = []


# Events ---------------------------------------------------------------------------------------


class CustomerErased(Event, frozen=True, kw_only=True):
    """The customer's key was destroyed: nothing sealed under it can be read again."""

    customer_id: str
    erased_by: str
    conversations: list[str] = []
    calls: list[str] = []
    erased_at: datetime

    time_field = "erased_at"


# Commands -------------------------------------------------------------------------------------


class EraseCustomer(Command, frozen=True, kw_only=True):
    customer_id: str
    erased_by: str
    conversations: list[str] = []
    calls: list[str] = []
    at: datetime


# State ----------------------------------------------------------------------------------------


class Customer(msgspec.Struct, frozen=True):
    customer_id: str = ""
    erased: CustomerErased | None = None


def initial() -> Customer:
    return Customer()


def decide(command: Command, state: Customer) -> list[Event]:
    match command:
        case EraseCustomer():
            if not command.customer_id:
                raise ValidationError("a customer id is needed", fields={"customer_id": "must not be empty"})
            if state.erased is not None:
                return []  # erased already: the first erasure is the outcome
            return [
                CustomerErased(
                    customer_id=command.customer_id,
                    erased_by=command.erased_by,
                    conversations=sorted(set(command.conversations)),
                    calls=sorted(set(command.calls)),
                    erased_at=command.at,
                )
            ]
    raise ValidationError(f"{type(command).__name__} is not a customer command")


def evolve(state: Customer, event: Event) -> Customer:
    match event:
        case CustomerErased():
            return Customer(customer_id=event.customer_id, erased=event)
    return state


DECIDER = Decider(type_name=AGGREGATE_TYPE, state_type=Customer, initial=initial, evolve=evolve, decide=decide)
