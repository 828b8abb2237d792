"""The channel, contact, delivery and API-key deciders, given / when / then."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from domain import api_key as k
from domain import channel as ch
from domain.errors import IllegalStateError, ValidationError
from tests.decider import DeciderSpec

T0 = datetime(2025, 10, 11, 10, 0, tzinfo=UTC)
channels = DeciderSpec(ch.decide_channel, ch.evolve_channel, ch.ChannelSettings())
contacts = DeciderSpec(ch.decide_contact, ch.evolve_contact, ch.Contact())
deliveries = DeciderSpec(ch.decide_delivery, ch.evolve_delivery, ch.Delivery())
keys = DeciderSpec(k.decide, k.evolve, k.Keyring())

REQUESTED = ch.DeliveryRequested(conversation_id="c1", message_id="m1-reply", channel="sms", requested_at=T0)


def attempted(n: int) -> ch.DeliveryAttempted:
    return ch.DeliveryAttempted(attempt=n, reference=f"ref-{n}", attempted_at=T0)


def test_a_channel_needs_its_credentials_and_a_sender() -> None:
    error = (
        channels.given()
        .when(
            ch.ConfigureChannel(channel="whatsapp", config_id="support-bot", credential_names=["access_token"], at=T0)
        )
        .then_raises(ValidationError)
    )
    assert set(error.fields) == {"credentials", "sender"}  # type: ignore[attr-defined]
    channels.given().when(ch.ConfigureChannel(channel="fax", config_id="x", at=T0)).then_raises(ValidationError)


def test_a_contact_opens_one_conversation_at_a_time() -> None:
    opened = ch.ContactConversationOpened(channel="sms", conversation_id="c1", opened_at=T0)
    contacts.given().when(ch.OpenContactConversation(channel="sms", conversation_id="c1", at=T0)).then(opened)
    contacts.given(opened).when(ch.OpenContactConversation(channel="sms", conversation_id="c1", at=T0)).then()
    contacts.given(opened).when(
        ch.OpenContactConversation(channel="sms", conversation_id="c2", replacing=None, at=T0)
    ).then_raises(IllegalStateError)
    contacts.given(opened).when(
        ch.OpenContactConversation(channel="sms", conversation_id="c2", replacing="c1", at=T0)
    ).then(ch.ContactConversationOpened(channel="sms", conversation_id="c2", opened_at=T0))


def test_stop_opts_out_once_and_start_opts_back_in() -> None:
    out = ch.ContactOptedOut(channel="sms", keyword="STOP", at=T0)
    contacts.given().when(ch.OptOut(channel="sms", keyword="STOP", at=T0)).then(out)
    contacts.given(out).when(ch.OptOut(channel="sms", keyword="STOP", at=T0)).then()
    contacts.given(out).when(ch.OptIn(channel="sms", keyword="START", at=T0)).then(
        ch.ContactOptedIn(channel="sms", keyword="START", at=T0)
    )


def test_a_delivery_is_requested_once() -> None:
    deliveries.given().when(ch.RequestDelivery(conversation_id="c1", message_id="m1-reply", channel="sms", at=T0)).then(
        REQUESTED
    )
    deliveries.given(REQUESTED).when(
        ch.RequestDelivery(conversation_id="c1", message_id="m1-reply", channel="sms", at=T0)
    ).then()


def test_an_attempt_without_an_outcome_is_in_doubt_and_only_the_next_attempt_may_be_recorded() -> None:
    state = deliveries.given(REQUESTED).when(ch.RecordAttempt(attempt=1, reference="ref-1", at=T0)).then(attempted(1))
    assert state.in_doubt
    deliveries.given(REQUESTED, attempted(1)).when(ch.RecordAttempt(attempt=1, reference="ref-1", at=T0)).then_raises(
        IllegalStateError
    )
    sent = (
        deliveries.given(REQUESTED, attempted(1))
        .when(ch.RecordSent(attempt=1, provider_message_id="SM1", at=T0))
        .then(ch.DeliverySent(attempt=1, provider_message_id="SM1", sent_at=T0))
    )
    assert not sent.in_doubt and sent.status == "sent"


def test_failures_are_retried_until_the_last_attempt_then_dead_lettered() -> None:
    retry_at = T0 + timedelta(seconds=2)
    state = (
        deliveries.given(REQUESTED, attempted(1))
        .when(ch.RecordFailure(attempt=1, reason="503", retryable=True, retry_at=retry_at, at=T0))
        .then(ch.DeliveryFailed(attempt=1, reason="503", retryable=True, retry_at=retry_at, failed_at=T0))
    )
    assert state.status == "retrying"
    history = [REQUESTED]
    for n in range(1, ch.MAX_ATTEMPTS):
        history += [attempted(n), ch.DeliveryFailed(attempt=n, reason="503", retryable=True, failed_at=T0)]
    history.append(attempted(ch.MAX_ATTEMPTS))
    state = (
        deliveries.given(*history)
        .when(ch.RecordFailure(attempt=ch.MAX_ATTEMPTS, reason="503", retryable=True, at=T0))
        .then(
            ch.DeliveryFailed(attempt=ch.MAX_ATTEMPTS, reason="503", retryable=False, failed_at=T0),
            ch.DeliveryDeadLettered(
                conversation_id="c1", message_id="m1-reply", channel="sms", reason="503", attempts=5, at=T0
            ),
        )
    )
    assert state.status == "dead_lettered"


def test_provider_statuses_only_move_forward() -> None:
    sent = ch.DeliverySent(attempt=1, provider_message_id="SM1", sent_at=T0)
    read = ch.DeliveryStatusChanged(status="read", provider_message_id="SM1", at=T0)
    deliveries.given(REQUESTED, attempted(1), sent, read).when(
        ch.RecordProviderStatus(status="delivered", provider_message_id="SM1", at=T0)
    ).then()
    # A status webhook that arrives before the send was recorded settles the attempt in doubt.
    state = (
        deliveries.given(REQUESTED, attempted(1))
        .when(ch.RecordProviderStatus(status="delivered", provider_message_id="SM1", at=T0))
        .then(
            ch.DeliverySent(attempt=1, provider_message_id="SM1", recovered=True, sent_at=T0),
            ch.DeliveryStatusChanged(status="delivered", provider_message_id="SM1", at=T0),
        )
    )
    assert state.status == "delivered" and not state.in_doubt


def created(key_id: str = "k1") -> k.ApiKeyCreated:
    return k.ApiKeyCreated(
        key_id=key_id,
        name="crm",
        scopes=["conversations"],
        tier="standard",
        secret_digest="d" * 64,
        prefix="pk_acme.k1",
        created_at=T0,
    )


def test_api_keys_are_scoped_rotated_with_a_grace_period_and_revoked() -> None:
    keys.given().when(
        k.CreateApiKey(key_id="k1", name="crm", scopes=["everything"], secret_digest="d", prefix="p", at=T0)
    ).then_raises(ValidationError)
    state = (
        keys.given(created())
        .when(k.ScopeApiKey(key_id="k1", scopes=["conversations", "analytics"], tier="basic", at=T0))
        .then(k.ApiKeyScoped(key_id="k1", scopes=["analytics", "conversations"], tier="basic", at=T0))
    )
    assert state.keys["k1"].roles == {"service", "analyst"}
    grace = T0 + timedelta(hours=1)
    rotate = k.RotateApiKey(key_id="k1", new_key_id="k2", secret_digest="e" * 64, prefix="p2", valid_until=grace, at=T0)
    rotated = (
        keys.given(created())
        .when(rotate)
        .then(
            k.ApiKeyCreated(
                key_id="k2",
                name="crm",
                scopes=["conversations"],
                tier="standard",
                secret_digest="e" * 64,
                prefix="p2",
                replaces="k1",
                created_at=T0,
            ),
            k.ApiKeyRotated(key_id="k1", replaced_by="k2", valid_until=grace, at=T0),
        )
    )
    old = rotated.keys["k1"]
    assert old.usable_at(T0) and not old.usable_at(grace)
    keys.given(created(), *k.decide(rotate, keys.given(created()).state)).when(rotate).then()  # a retry
    revoked = (
        keys.given(created())
        .when(k.RevokeApiKey(key_id="k1", reason="leaked", at=T0))
        .then(k.ApiKeyRevoked(key_id="k1", reason="leaked", at=T0))
    )
    assert not revoked.keys["k1"].usable_at(T0)
