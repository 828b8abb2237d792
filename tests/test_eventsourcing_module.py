"""eventsourcing's own recorder conformance suites, and an unmodified Application, on JetStream."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    InfrastructureFactory,
    IntegrityError,
    OperationalError,
    ProcessRecorder,
    StoredEvent,
    Tracking,
    TrackingRecorder,
)
from eventsourcing.projection import EventSourcedProjection, EventSourcedProjectionRunner
from eventsourcing.system import ProcessApplication, SingleThreadedRunner, System
from eventsourcing.tests.persistence import (
    AggregateRecorderTestCase,
    ApplicationRecorderTestCase,
    InfrastructureFactoryTestCase,
    ProcessRecorderTestCase,
    TrackingRecorderTestCase,
)
from eventsourcing.utils import Environment

from infra.services import NatsServer
from streams.es_jetstream import (
    JetStreamAggregateRecorder,
    JetStreamApplicationRecorder,
    JetStreamFactory,
    JetStreamProcessRecorder,
    JetStreamTrackingRecorder,
    id_to_token,
    token_to_id,
)


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


class TestJetStreamTrackingRecorder(JetStreamCase, TrackingRecorderTestCase):
    def create_recorder(self) -> TrackingRecorder:
        return self.factory().tracking_recorder()


class TestJetStreamProcessRecorder(JetStreamCase, ProcessRecorderTestCase):
    def create_recorder(self) -> ProcessRecorder:
        return self.factory().process_recorder()


class MyTrackingRecorder(JetStreamTrackingRecorder):
    pass


class TestJetStreamInfrastructureFactory(InfrastructureFactoryTestCase[JetStreamFactory]):
    def setUp(self) -> None:
        self.env = Environment(
            "TestCase",
            {
                "PERSISTENCE_MODULE": "streams.es_jetstream",
                "NATS_URL": JetStreamCase.nats_url,
                "JETSTREAM_STREAM": "ES_" + uuid.uuid4().hex[:10].upper(),
            },
        )
        super().setUp()

    def tearDown(self) -> None:
        self.factory.delete_streams()
        super().tearDown()

    def expected_factory_class(self) -> type[JetStreamFactory]:
        return JetStreamFactory

    def expected_aggregate_recorder_class(self) -> type[AggregateRecorder]:
        return JetStreamAggregateRecorder

    def expected_application_recorder_class(self) -> type[ApplicationRecorder]:
        return JetStreamApplicationRecorder

    def expected_tracking_recorder_class(self) -> type[TrackingRecorder]:
        return JetStreamTrackingRecorder

    def tracking_recorder_subclass(self) -> type[TrackingRecorder]:
        return MyTrackingRecorder

    def expected_process_recorder_class(self) -> type[ProcessRecorder]:
        return JetStreamProcessRecorder


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
    env = {"NATS_URL": "nats://127.0.0.1:1", "NATS_CONNECT_TIMEOUT": "0.5"}
    with pytest.raises(OperationalError, match="NATS_URL"):
        JetStreamFactory(env)


# Event processing on JetStream: tracking records committed with the events they cause ------


class TrickCounter(Aggregate):
    @staticmethod
    def create_id(trick: str) -> uuid.UUID:
        return uuid.uuid5(uuid.NAMESPACE_URL, f"/tricks/{trick}")

    @event("Created")
    def __init__(self, trick: str) -> None:
        self.trick = trick
        self.count = 0

    @event("Incremented")
    def increment(self) -> None:
        self.count += 1


class TrickCounters(ProcessApplication[uuid.UUID]):
    """Counts how often each trick is taught, from DogSchool's events."""

    @singledispatchmethod
    def policy(self, domain_event: Any, processing_event: ProcessingEvent[uuid.UUID]) -> None:
        """Other events change nothing (their tracking record is still written)."""

    @policy.register
    def _(self, domain_event: Dog.TrickAdded, processing_event: ProcessingEvent[uuid.UUID]) -> None:  # type: ignore[name-defined]
        try:
            counter: TrickCounter = self.repository.get(TrickCounter.create_id(domain_event.trick))
        except AggregateNotFoundError:
            counter = TrickCounter(domain_event.trick)
        counter.increment()
        processing_event.collect_events(counter)

    def count(self, trick: str) -> int:
        counter: TrickCounter = self.repository.get(TrickCounter.create_id(trick))
        return counter.count


def _process_env(nats_url: str) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8].upper()
    return {
        "PERSISTENCE_MODULE": "streams.es_jetstream",
        "NATS_URL": nats_url,
        "DOGSCHOOL_JETSTREAM_STREAM": f"ES_DOGS_{suffix}",
        "TRICKCOUNTERS_JETSTREAM_STREAM": f"ES_TRICKS_{suffix}",
    }


def _delete(env: dict[str, str]) -> None:
    """Delete the streams an environment names (after the applications that used them closed)."""
    for variable, stream in env.items():
        if variable.endswith("JETSTREAM_STREAM"):
            factory = JetStreamFactory({"NATS_URL": env["NATS_URL"], "JETSTREAM_STREAM": stream})
            try:
                factory.aggregate_recorder()
                factory.aggregate_recorder("snapshots")
                factory.delete_streams()
            finally:
                factory.close()


def test_a_process_application_runs_on_jetstream(nats_url: str) -> None:
    env = _process_env(nats_url)
    runner: SingleThreadedRunner[uuid.UUID] = SingleThreadedRunner(System([[DogSchool, TrickCounters]]), env=env)
    runner.start()
    school, counters = runner.get(DogSchool), runner.get(TrickCounters)
    try:
        fido = school.register("Fido")
        rex = school.register("Rex")
        school.add_trick(fido, "sit")
        school.add_trick(rex, "sit")
        school.add_trick(rex, "roll over")
        assert counters.count("sit") == 2
        assert counters.count("roll over") == 1
        # Every upstream event was tracked, the registrations too (they caused no events).
        last = school.recorder.max_notification_id()
        assert last is not None and counters.recorder.max_tracking_id("DogSchool") == last
        # The counters' own notifications skip the tracking records between them.
        notifications = counters.recorder.select_notifications(start=None, limit=100)
        assert [n.topic.split(":")[1] for n in notifications] == [
            "TrickCounter.Created",
            "TrickCounter.Incremented",
            "TrickCounter.Incremented",
            "TrickCounter.Created",
            "TrickCounter.Incremented",
        ]
        assert counters.recorder.max_notification_id() == notifications[-1].id
    finally:
        runner.stop()
        _delete(env)


class TrickCountersProjection(EventSourcedProjection[uuid.UUID]):
    name = "TrickCounters"
    topics = ()

    @singledispatchmethod
    def policy(self, domain_event: Any, processing_event: ProcessingEvent[uuid.UUID]) -> None:
        """Other events change nothing."""

    @policy.register
    def _(self, domain_event: Dog.TrickAdded, processing_event: ProcessingEvent[uuid.UUID]) -> None:  # type: ignore[name-defined]
        try:
            counter: TrickCounter = self.repository.get(TrickCounter.create_id(domain_event.trick))
        except AggregateNotFoundError:
            counter = TrickCounter(domain_event.trick)
        counter.increment()
        processing_event.collect_events(counter)


def test_a_projection_runner_follows_an_application_and_resumes_where_it_stopped(nats_url: str) -> None:
    env = _process_env(nats_url)
    school = DogSchool(env=env)
    try:
        dog = school.register("Fido")
        school.add_trick(dog, "sit")
        with EventSourcedProjectionRunner(
            application_class=DogSchool, projection_class=TrickCountersProjection, env=env
        ) as runner:
            runner.wait(school.recorder.max_notification_id(), timeout=10)
            counter: TrickCounter = runner.projection.repository.get(TrickCounter.create_id("sit"))
            assert counter.count == 1
        school.add_trick(dog, "sit")
        school.add_trick(dog, "beg")
        with EventSourcedProjectionRunner(
            application_class=DogSchool, projection_class=TrickCountersProjection, env=env
        ) as runner:
            runner.wait(school.recorder.max_notification_id(), timeout=10)
            # Resumed after the last tracked event: the first "sit" is not counted again.
            counter = runner.projection.repository.get(TrickCounter.create_id("sit"))
            assert counter.count == 2
            assert runner.projection.repository.get(TrickCounter.create_id("beg")).count == 1
    finally:
        school.close()
        _delete(env)


def test_racing_writers_of_one_tracking_position_record_it_once(nats_url: str) -> None:
    # Two processes (two factories, nothing shared but the server) handle the same upstream
    # event at once: one batch of events + tracking is recorded, the other is refused whole.
    env = {"NATS_URL": nats_url, "JETSTREAM_STREAM": "ES_RACE_" + uuid.uuid4().hex[:8].upper()}
    factories = [JetStreamFactory(env), JetStreamFactory(env)]
    recorders = [f.process_recorder() for f in factories]
    try:
        for position in range(1, 21):
            tracking = Tracking("upstream", position)
            ids = [uuid.uuid4(), uuid.uuid4()]
            outcomes: list[str] = []

            def write(i: int, dog: uuid.UUID, tracking: Tracking, outcomes: list[str]) -> None:
                event = StoredEvent(originator_id=dog, originator_version=1, topic="t", state=b"s")
                try:
                    recorders[i].insert_events([event], tracking=tracking)
                    outcomes.append("recorded")
                except IntegrityError:
                    outcomes.append("refused")

            threads = [threading.Thread(target=write, args=(i, ids[i], tracking, outcomes)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(outcomes) == ["recorded", "refused"]
            # Exactly one of the two events exists: the refused one was not half-written.
            assert sum(len(recorders[0].select_events(i)) for i in ids) == 1
            assert recorders[1].max_tracking_id("upstream") == position
        notifications = recorders[0].select_notifications(start=None, limit=100)
        assert len(notifications) == 20
    finally:
        factories[0].delete_streams()
        for f in factories:
            f.close()


def test_a_lower_or_equal_tracking_position_is_refused_with_its_events(nats_url: str) -> None:
    factory = JetStreamFactory({"NATS_URL": nats_url, "JETSTREAM_STREAM": "ES_T_" + uuid.uuid4().hex[:8].upper()})
    try:
        recorder = factory.process_recorder()
        recorder.insert_events([], tracking=Tracking("upstream", 5))
        dog = uuid.uuid4()
        for position in (5, 3):
            with pytest.raises(IntegrityError):
                recorder.insert_events(
                    [StoredEvent(originator_id=dog, originator_version=1, topic="t", state=b"s")],
                    tracking=Tracking("upstream", position),
                )
        assert recorder.select_events(dog) == []
        assert recorder.max_notification_id() is None  # a tracking record is not a notification
        assert recorder.max_tracking_id("upstream") == 5
        assert recorder.max_tracking_id("other") is None
    finally:
        factory.delete_streams()
        factory.close()


def _event(originator_id: uuid.UUID, version: int) -> StoredEvent:
    return StoredEvent(originator_id=originator_id, originator_version=version, topic="t", state=b"s")


def test_a_save_on_a_stale_position_looks_again_and_goes_in_or_conflicts(nats_url: str) -> None:
    # Two processes keep where the aggregate stands; each learns of the other's writes from the server.
    env = {"NATS_URL": nats_url, "JETSTREAM_STREAM": "ES_STALE_" + uuid.uuid4().hex[:8].upper()}
    one, two = JetStreamFactory(env), JetStreamFactory(env)
    try:
        a, b = one.application_recorder(), two.application_recorder()
        dog = uuid.uuid4()
        assert a.insert_events([_event(dog, 1)]) == [1]
        assert len(b.select_events(dog)) == 1  # b now knows version 1 at sequence 1
        assert a.insert_events([_event(dog, 2)]) == [2]
        # b still thinks version 1 is the last: the server refuses, b looks again and finds 2 taken.
        with pytest.raises(IntegrityError):
            b.insert_events([_event(dog, 2)])
        # ... and 3 is free: a write from the stale position goes in after one more look.
        assert a.insert_events([_event(dog, 3)]) == [3]
        assert b.insert_events([_event(dog, 4)]) == [4]
        assert [e.originator_version for e in a.select_events(dog)] == [1, 2, 3, 4]
    finally:
        one.delete_streams()
        one.close()
        two.close()


@pytest.mark.parametrize("batch_from", ["2", "1000"])
def test_saves_from_many_threads_each_get_their_own_notification_ids(nats_url: str, batch_from: str) -> None:
    # batch_from 2: the writes waiting together go as atomic batches; 1000: each on its own.
    env = {
        "NATS_URL": nats_url,
        "JETSTREAM_STREAM": "ES_MANY_" + uuid.uuid4().hex[:8].upper(),
        "JETSTREAM_BATCH_FROM": batch_from,
    }
    factory = JetStreamFactory(env)
    try:
        recorder = factory.application_recorder()
        dogs = [uuid.uuid4() for _ in range(16)]
        ids: dict[tuple[uuid.UUID, int], int] = {}
        conflicts: list[int] = []
        all_saved = threading.Barrier(len(dogs))

        def save(dog: uuid.UUID) -> None:
            for version in range(1, 21):
                [notification_id] = recorder.insert_events([_event(dog, version)])  # type: ignore[misc]
                ids[dog, version] = notification_id
            all_saved.wait()
            # Every thread on one aggregate at once: one gets version 21, the others conflict.
            try:
                recorder.insert_events([_event(dogs[0], 21)])
            except IntegrityError:
                conflicts.append(1)

        threads = [threading.Thread(target=save, args=(dog,)) for dog in dogs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(conflicts) == len(dogs) - 1
        notifications = recorder.select_notifications(start=None, limit=1000)
        assert len(notifications) == len(dogs) * 20 + 1
        assert sorted(ids.values()) == sorted(n.id for n in notifications if n.originator_version <= 20)
        for n in notifications:
            if n.originator_version <= 20:
                assert ids[n.originator_id, n.originator_version] == n.id  # type: ignore[index]
        for dog in dogs:
            versions = [e.originator_version for e in recorder.select_events(dog)]
            assert versions == list(range(1, 22 if dog == dogs[0] else 21))
    finally:
        factory.delete_streams()
        factory.close()


def test_a_server_that_stops_answering_fails_the_save_in_time(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats", sync_always=True)
    server.start()
    factory = JetStreamFactory({"NATS_URL": server.url, "JETSTREAM_STREAM": "ES_PAUSE", "JETSTREAM_TIMEOUT": "1"})
    try:
        recorder = factory.application_recorder()
        dog = uuid.uuid4()
        assert recorder.insert_events([_event(dog, 1)]) == [1]
        pid = server.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # the connection stays up; nothing is answered
        try:
            started = time.monotonic()
            with pytest.raises(OperationalError, match="did not acknowledge"):
                recorder.insert_events([_event(dog, 2)])
            assert time.monotonic() - started < 5
        finally:
            os.kill(pid, signal.SIGCONT)
        # Once the server answers again, so does the recorder (the late write went in or not:
        # the library's OperationalError says the outcome is unknown; the next version is free).
        recorder.insert_events([_event(dog, 3)])
        assert [e.originator_version for e in recorder.select_events(dog)][-1] == 3
    finally:
        factory.close()
        server.stop()


def test_closing_the_factory_releases_a_save_still_waiting(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats", sync_always=True)
    server.start()
    factory = JetStreamFactory({"NATS_URL": server.url, "JETSTREAM_STREAM": "ES_CLOSE", "JETSTREAM_TIMEOUT": "1"})
    outcome: list[BaseException | None] = []
    released = threading.Event()
    try:
        recorder = factory.application_recorder()
        dog = uuid.uuid4()
        recorder.insert_events([_event(dog, 1)])

        def save() -> None:
            try:
                recorder.insert_events([_event(dog, 2)])
                outcome.append(None)
            except OperationalError as e:
                outcome.append(e)
            released.set()

        pid = server.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            waiting = threading.Thread(target=save)
            waiting.start()
            time.sleep(0.3)  # the save is out, its acknowledgement cannot come
            assert not released.is_set(), outcome
            closing = threading.Thread(target=factory.close)
            closing.start()
            # Released by the close itself, before the save's own timeout (1 s, 3 s for the thread).
            assert released.wait(0.5)
            assert isinstance(outcome[0], OperationalError) and "closed" in str(outcome[0])
            closing.join()
        finally:
            os.kill(pid, signal.SIGCONT)
    finally:
        factory.close()
        server.stop()


@pytest.mark.parametrize("search_from", [0, 1000])
def test_events_after_a_version_are_found_by_bisecting_the_stream(nats_url: str, search_from: int) -> None:
    # search_from 0: always bisect; 1000: read the whole subject and keep the versions above.
    factory = JetStreamFactory({"NATS_URL": nats_url, "JETSTREAM_STREAM": "ES_GT_" + uuid.uuid4().hex[:8].upper()})
    try:
        recorder = factory.application_recorder()
        core = factory._cores[factory._stream]
        core.search_from = search_from
        dogs = [uuid.uuid4() for _ in range(3)]
        for version in range(1, 301):  # three aggregates interleaved in the stream
            for dog in dogs:
                recorder.insert_events([_event(dog, version)])
        for gt in (0, 1, 150, 299, 300, 400):
            found = recorder.select_events(dogs[1], gt=gt)
            assert [e.originator_version for e in found] == list(range(gt + 1, 301))
        assert [e.originator_version for e in recorder.select_events(dogs[2], gt=290, lte=295)] == [
            291,
            292,
            293,
            294,
            295,
        ]
        assert [e.originator_version for e in recorder.select_events(dogs[0], gt=250, desc=True, limit=2)] == [300, 299]
    finally:
        factory.delete_streams()
        factory.close()
