"""Given / when / then for pure deciders (in the manner of Emmett's DeciderSpecification)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import pytest

from domain.messages import Command, Event

S = TypeVar("S")


class DeciderSpec(Generic[S]):
    def __init__(
        self, decide: Callable[[Command, S], list[Event]], evolve: Callable[[S, Event], S], initial: S
    ) -> None:
        self.decide, self.evolve, self.initial = decide, evolve, initial

    def given(self, *events: Event) -> _Given[S]:
        state = self.initial
        for event in events:
            state = self.evolve(state, event)
        return _Given(self, state)


class _Given(Generic[S]):
    def __init__(self, spec: DeciderSpec[S], state: S) -> None:
        self.spec, self.state = spec, state

    def when(self, command: Command) -> _When[S]:
        return _When(self.spec, self.state, command)


class _When(Generic[S]):
    def __init__(self, spec: DeciderSpec[S], state: S, command: Command) -> None:
        self.spec, self.state, self.command = spec, state, command

    def then(self, *expected: Event) -> S:
        events = self.spec.decide(self.command, self.state)
        assert events == list(expected)
        state = self.state
        for event in events:
            state = self.spec.evolve(state, event)
        return state

    def then_raises(self, error: type[Exception], match: str | None = None, **attributes: Any) -> Exception:
        with pytest.raises(error, match=match) as caught:
            self.spec.decide(self.command, self.state)
        for name, value in attributes.items():
            assert getattr(caught.value, name) == value
        return caught.value
