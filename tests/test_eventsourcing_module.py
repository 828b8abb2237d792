"""eventsourcing's own recorder conformance suites, and an unmodified Application, on JetStream."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import AggregateRecorder, ApplicationRecorder, InfrastructureFactory
from eventsourcing.tests.persistence import AggregateRecorderTestCase, ApplicationRecorderTestCase

from streams.es_jetstream import JetStreamFactory, id_to_token, token_to_id


@pytest.fixture(autouse=True, scope="module")
def _nats_url_for_unittest_cases(request: pytest.FixtureRequest, nats_url: str) -> None:
    # unittest-style cases cannot take fixtures; they read the session's server from a class attribute.
    JetStreamCase.nats_url = nats_url


class JetStreamCase:
    nats_url = ""
    factories: list[JetStreamFactory]

    def setUp(self) -> None:
        self.factories = []
        super().setUp()  # type: ignore[misc]

    def tearDown(self) -> None:
        for factory in self.factories:
            factory.delete_streams()
            factory.close()
        super().tearDown()  # type: ignore[misc]

    def factory(self) -> JetStreamFactory:
        env = {"NATS_URL": self.nats_url, "JETSTREAM_STREAM": "ES_" + uuid.uuid4().hex[:10].upper()}
        factory = JetStreamFactory(env)
        self.factories.append(factory)
        return factory


class TestJetStreamAggregateRecorder(JetStreamCase, AggregateRecorderTestCase):
    def create_recorder(self) -> AggregateRecorder:
        return self.factory().aggregate_recorder()


class TestJetStreamApplicationRecorder(JetStreamCase, ApplicationRecorderTestCase):
    def create_recorder(self) -> ApplicationRecorder:
        return self.factory().application_recorder()

    def test_insert_subscribe(self) -> None:
        self.optional_test_insert_subscribe()


@pytest.mark.parametrize("originator_id", [uuid.uuid4(), "order-42", "has spaces/and.dots*", "ünïcode"])
def test_originator_ids_survive_the_trip_through_a_subject(originator_id: Any) -> None:
    assert token_to_id(id_to_token(originator_id)) == originator_id


class Dog(Aggregate):
    @event("Registered")
    def __init__(self, name: str) -> None:
        self.name = name
        self.tricks: list[str] = []

    @event("TrickAdded")
    def add_trick(self, trick: str) -> None:
        self.tricks.append(trick)


class DogSchool(Application[uuid.UUID]):
    snapshotting_intervals = {Dog: 5}

    def register(self, name: str) -> uuid.UUID:
        dog = Dog(name)
        self.save(dog)
        return dog.id

    def add_trick(self, dog_id: uuid.UUID, trick: str) -> None:
        dog: Dog = self.repository.get(dog_id)
        dog.add_trick(trick)
        self.save(dog)


def test_an_unmodified_application_runs_on_jetstream(nats_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    stream = "ES_DOGS_" + uuid.uuid4().hex[:8].upper()
    monkeypatch.setenv("PERSISTENCE_MODULE", "streams.es_jetstream")
    monkeypatch.setenv("NATS_URL", nats_url)
    monkeypatch.setenv("JETSTREAM_STREAM", stream)
    app = DogSchool()
    try:
        assert isinstance(app.factory, JetStreamFactory)
        dog_id = app.register("Fido")
        for trick in ["roll over", "play dead", "fetch", "sit", "stay", "beg"]:
            app.add_trick(dog_id, trick)
        dog: Dog = app.repository.get(dog_id)
        assert dog.tricks == ["roll over", "play dead", "fetch", "sit", "stay", "beg"]
        assert dog.version == 7
        assert app.snapshots is not None and len(list(app.snapshots.get(dog_id))) == 1
        notifications = app.recorder.select_notifications(start=None, limit=100)
        assert [n.id for n in notifications] == list(range(1, 8))
        # Reopening the application reads the same history from JetStream.
        again = DogSchool()
        try:
            assert again.repository.get(dog_id).tricks == dog.tricks
        finally:
            again.close()
    finally:
        assert isinstance(app.factory, JetStreamFactory)
        app.factory.delete_streams()
        app.close()


def test_the_module_is_found_by_the_library_from_the_environment(nats_url: str) -> None:
    factory = InfrastructureFactory.construct({"PERSISTENCE_MODULE": "streams.es_jetstream", "NATS_URL": nats_url})
    try:
        assert isinstance(factory, JetStreamFactory)
    finally:
        factory.close()


def test_an_unreachable_server_is_reported_with_the_variable_name() -> None:
    from eventsourcing.persistence import OperationalError

    env = {"NATS_URL": "nats://127.0.0.1:1", "NATS_CONNECT_TIMEOUT": "0.5"}
    with pytest.raises(OperationalError, match="NATS_URL"):
        JetStreamFactory(env)
