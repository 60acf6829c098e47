"""Manual sync over REST: queued in the background, single flight per (patient, source), limited per hour."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import time_machine
from django.db import IntegrityError, transaction
from django.utils import timezone

from connections import actions
from connections.models import (
    Connection,
    Patient,
    Provider,
    SyncEvent,
    SyncRequest,
    SyncRequestStatus,
    SyncStatus,
    SyncTrigger,
)
from readings.models import WearableReading
from sandbox import SandboxServer
from sandbox.clerk import ClerkSandbox
from tests.api_helpers import client_for, error_of, field_errors_of, make_patient, wearable_of

SYNC = "/api/patient-graph/wearables/sync"


@pytest.fixture
def alice(clean_sandbox: SandboxServer, clerk: ClerkSandbox, api_config) -> Patient:
    return make_patient(clean_sandbox, 1, "user_alice")


@pytest.fixture
def bob(clean_sandbox: SandboxServer, clerk: ClerkSandbox, api_config) -> Patient:
    return make_patient(clean_sandbox, 2, "user_bob")


def refreshes(sandbox: SandboxServer, patient: Patient) -> list[dict]:
    return sandbox.requests.snapshot(
        provider="junction", path_contains="/v2/user/refresh/", user_id=patient.junction_user_id
    )


@pytest.mark.django_db
@pytest.mark.usefixtures("frozen_time")
def test_a_manual_sync_is_queued_then_refreshes_at_junction_and_stores_the_window(
    alice: Patient, clerk: ClerkSandbox, clean_sandbox: SandboxServer, django_capture_on_commit_callbacks
) -> None:
    client = client_for(clerk.mint("user_alice"))
    source = wearable_of(clean_sandbox, alice)

    with django_capture_on_commit_callbacks(execute=False) as queued:
        response = client.post(SYNC, {"source": source}, format="json")

    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued" and body["source"] == source
    assert response["Location"] == f"{SYNC}/{body['id']}"
    assert len(queued) == 1 and not WearableReading.objects.exists()  # nothing ran in the request

    queued[0]()  # the django-q2 task (Q_CLUSTER sync mode runs it in-process)

    status = client.get(f"{SYNC}/{body['id']}").json()
    assert status["status"] == "success", status
    assert status["junction_refresh"] == "refreshed"
    assert status["records_stored"] == WearableReading.objects.filter(patient=alice).count() > 0
    event = SyncEvent.objects.get(pk=status["sync_event_id"])
    assert event.trigger == SyncTrigger.MANUAL and event.patient_id == alice.pk
    [refresh] = refreshes(clean_sandbox, alice)
    assert refresh["method"] == "POST"


@pytest.mark.django_db
def test_the_source_in_the_path_works_the_same(
    alice: Patient, clerk: ClerkSandbox, clean_sandbox: SandboxServer
) -> None:
    source = wearable_of(clean_sandbox, alice)
    response = client_for(clerk.mint("user_alice")).post(f"/api/wearables/{source}/sync")
    assert response.status_code == 202
    assert SyncRequest.objects.get(pk=response.json()["id"]).source == source


@pytest.mark.django_db
def test_a_second_request_while_one_is_queued_returns_it(
    alice: Patient, clerk: ClerkSandbox, clean_sandbox: SandboxServer, django_capture_on_commit_callbacks
) -> None:
    client = client_for(clerk.mint("user_alice"))
    source = wearable_of(clean_sandbox, alice)
    with django_capture_on_commit_callbacks() as queued:
        first = client.post(SYNC, {"source": source}, format="json")
        second = client.post(f"/api/wearables/{source}/sync")

    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert SyncRequest.objects.count() == 1 and len(queued) == 1


@pytest.mark.django_db
def test_the_database_refuses_a_second_active_request_for_one_source(alice: Patient) -> None:
    SyncRequest.objects.create(patient=alice, source="oura", status=SyncRequestStatus.RUNNING)
    with pytest.raises(IntegrityError), transaction.atomic():
        SyncRequest.objects.create(patient=alice, source="oura")
    # Finished requests do not count: history is kept.
    SyncRequest.objects.filter(patient=alice).update(status=SyncRequestStatus.SUCCESS)
    SyncRequest.objects.create(patient=alice, source="oura")


@pytest.mark.django_db(transaction=True)
def test_two_simultaneous_posts_create_one_sync(
    alice: Patient, clerk: ClerkSandbox, clean_sandbox: SandboxServer, monkeypatch
) -> None:
    monkeypatch.setattr(actions, "_enqueue_manual_sync", lambda request_id: None)
    source = wearable_of(clean_sandbox, alice)
    token = clerk.mint("user_alice")
    barrier = threading.Barrier(2)
    results: list[tuple[int, int]] = []

    def post() -> None:
        from django.db import connections

        try:
            client = client_for(token)
            barrier.wait()
            response = client.post(SYNC, {"source": source}, format="json")
            results.append((response.status_code, response.json()["id"]))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=post) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert [status for status, _ in results] == [202, 202]
    assert results[0][1] == results[1][1]
    assert SyncRequest.objects.count() == 1


@pytest.mark.django_db
def test_the_idempotency_key_returns_the_same_sync_and_refuses_another_source(
    alice: Patient, bob: Patient, clerk: ClerkSandbox, clean_sandbox: SandboxServer
) -> None:
    client = client_for(clerk.mint("user_alice"))
    source = wearable_of(clean_sandbox, alice)
    headers = {"HTTP_IDEMPOTENCY_KEY": "c0ffee-1"}
    first = client.post(SYNC, {"source": source}, format="json", **headers)
    SyncRequest.objects.update(status=SyncRequestStatus.SUCCESS)  # finished: coalescing no longer applies

    again = client.post(SYNC, {"source": source}, format="json", **headers)
    other = client.post(SYNC, {"source": "whoop"}, format="json", **headers)
    # Keys are per patient: Bob's identical key is his own.
    bobs = client_for(clerk.mint("user_bob")).post(
        SYNC, {"source": wearable_of(clean_sandbox, bob)}, format="json", **headers
    )

    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    assert other.status_code == 422 and error_of(other)["code"] == "idempotency_key_reused"
    assert bobs.status_code == 202 and bobs.json()["id"] != first.json()["id"]
    bad = client.post(SYNC, {"source": source}, format="json", HTTP_IDEMPOTENCY_KEY="has space")
    assert bad.status_code == 400


@pytest.mark.django_db
def test_unknown_source_is_400_naming_the_accepted_sources(alice: Patient, clerk: ClerkSandbox) -> None:
    response = client_for(clerk.mint("user_alice")).post(SYNC, {"source": "myspace"}, format="json")

    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_source"
    assert "oura" in error["detail"] and "whoop" in error["detail"]
    assert "libre" in error["accepted_sources"]
    missing = client_for(clerk.mint("user_alice")).post(SYNC, {}, format="json")
    assert missing.status_code == 400 and field_errors_of(error_of(missing)) == {
        "source": ["This field is required."]
    }


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "code", "field_error"),
    [
        ({"source": ""}, "invalid_request", "This field may not be blank."),
        ({"source": "x" * 65}, "invalid_request", "Ensure this field has no more than 64 characters."),
        ({"source": 7}, "invalid_source", None),  # the serializer turns 7 into "7", an unknown source
        ({"source": ["oura"]}, "invalid_request", "Not a valid string."),
        (["oura"], "invalid_request", None),
        ({"source": "oura\x00"}, "invalid_request", "Null characters are not allowed."),
    ],
)
def test_a_malformed_body_is_400_from_the_serializer(
    alice: Patient, clerk: ClerkSandbox, body, code: str, field_error: str | None
) -> None:
    response = client_for(clerk.mint("user_alice")).post(SYNC, body, format="json")

    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == code
    if field_error:
        assert field_errors_of(error) == {"source": [field_error]}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("raw", "content_type"),
    [
        (b'{"source": "oura"', "application/json"),  # truncated
        (b'{"source": NaN}', "application/json"),  # not JSON, whatever Python's json module allows
        (b'{"source": "\xff"}', "application/json"),  # not UTF-8
    ],
)
def test_a_body_that_is_not_json_is_400_malformed_request(
    alice: Patient, clerk: ClerkSandbox, raw: bytes, content_type: str
) -> None:
    response = client_for(clerk.mint("user_alice")).post(SYNC, raw, content_type=content_type)

    assert response.status_code == 400
    assert error_of(response)["code"] == "malformed_request"
    assert error_of(response)["detail"].startswith("JSON parse error")


@pytest.mark.django_db
def test_a_body_in_another_declared_charset_is_decoded(
    alice: Patient, clerk: ClerkSandbox, clean_sandbox: SandboxServer
) -> None:
    source = wearable_of(clean_sandbox, alice)
    body = f'{{"source": "{source}"}}'.encode("utf-16")

    response = client_for(clerk.mint("user_alice")).post(
        SYNC, body, content_type="application/json; charset=utf-16"
    )

    assert response.status_code == 202 and response.json()["source"] == source


@pytest.mark.django_db
def test_surrounding_whitespace_in_the_source_is_trimmed(
    alice: Patient, clerk: ClerkSandbox, clean_sandbox: SandboxServer
) -> None:
    client = client_for(clerk.mint("user_alice"))
    source = wearable_of(clean_sandbox, alice)

    padded = client.post(SYNC, {"source": f"  {source}\n"}, format="json")
    plain = client.post(SYNC, {"source": source}, format="json")

    assert padded.status_code == plain.status_code == 202
    assert padded.json()["id"] == plain.json()["id"] and padded.json()["source"] == source


@pytest.mark.django_db
def test_a_source_without_a_connection_is_404(
    alice: Patient, clerk: ClerkSandbox, clean_sandbox: SandboxServer
) -> None:
    client = client_for(clerk.mint("user_alice"))
    connected = set(clean_sandbox.junction.user(alice.junction_user_id).providers)
    not_connected = next(s for s in ("garmin", "fitbit", "polar") if s not in connected)

    assert client.post(SYNC, {"source": not_connected}, format="json").status_code == 404
    response = client.post(SYNC, {"source": "whoop"}, format="json")  # no direct WHOOP connection
    assert response.status_code == 404 and error_of(response)["code"] == "no_connection"
    Connection.objects.filter(patient=alice).update(status="inactive")
    assert client.post(SYNC, {"source": wearable_of(clean_sandbox, alice)}, format="json").status_code == 404


@pytest.mark.django_db
def test_a_connection_deactivated_while_its_sync_is_queued_fails_that_sync_then_is_404(
    alice: Patient, clerk: ClerkSandbox, clean_sandbox: SandboxServer, django_capture_on_commit_callbacks
) -> None:
    client = client_for(clerk.mint("user_alice"))
    source = wearable_of(clean_sandbox, alice)
    with django_capture_on_commit_callbacks(execute=False) as queued:
        first = client.post(SYNC, {"source": source}, format="json").json()
    Connection.objects.filter(patient=alice).update(status="inactive")

    # Still pending: the app polling by POSTing again gets the same sync, not a second one.
    assert client.post(SYNC, {"source": source}, format="json").json()["id"] == first["id"]
    queued[0]()

    status = client.get(f"{SYNC}/{first['id']}").json()
    assert status["status"] == "failed" and status["error_code"] == "connection_inactive"
    assert "deactivated" in status["error_message"]
    assert client.post(SYNC, {"source": source}, format="json").status_code == 404


@pytest.mark.django_db
def test_more_than_the_hourly_limit_is_429_with_retry_after(
    alice: Patient, clerk: ClerkSandbox, clean_sandbox: SandboxServer, settings
) -> None:
    settings.MANUAL_SYNC_PER_HOUR = 2
    source = wearable_of(clean_sandbox, alice)
    start = timezone.now()
    with time_machine.travel(start, tick=False) as clock:
        for _ in range(2):
            response = client_for(clerk.mint("user_alice")).post(SYNC, {"source": source}, format="json")
            assert response.status_code == 202
            SyncRequest.objects.update(status=SyncRequestStatus.SUCCESS)
            clock.shift(timedelta(minutes=10))

        limited = client_for(clerk.mint("user_alice")).post(SYNC, {"source": source}, format="json")

        assert limited.status_code == 429
        assert int(limited["Retry-After"]) == 40 * 60  # the first request leaves the window 60 min after it
        assert error_of(limited)["code"] == "rate_limited"
        assert error_of(limited)["retry_after_seconds"] == 40 * 60
        clock.shift(timedelta(minutes=41))
        assert (
            client_for(clerk.mint("user_alice")).post(SYNC, {"source": source}, format="json").status_code
            == 202
        )


@pytest.mark.django_db
@pytest.mark.usefixtures("frozen_time")
def test_junctions_refresh_limit_does_not_fail_the_sync(
    alice: Patient, clerk: ClerkSandbox, clean_sandbox: SandboxServer, django_capture_on_commit_callbacks
) -> None:
    clean_sandbox.faults.add(
        {
            "provider": "junction",
            "path_contains": "/v2/user/refresh/",
            "kind": "status",
            "status": 429,
            "retry_after": 1800,
        }
    )
    with django_capture_on_commit_callbacks(execute=True):
        response = client_for(clerk.mint("user_alice")).post(
            SYNC, {"source": wearable_of(clean_sandbox, alice)}, format="json"
        )

    sync = SyncRequest.objects.get(pk=response.json()["id"])
    assert sync.status == SyncRequestStatus.SUCCESS, sync.error
    assert sync.junction_refresh == "rate_limited" and sync.records_stored > 0
    assert len(refreshes(clean_sandbox, alice)) == 1  # a 429 on refresh is never retried blindly


@pytest.mark.django_db
def test_another_patients_sync_is_404(
    alice: Patient, bob: Patient, clerk: ClerkSandbox, clean_sandbox: SandboxServer
) -> None:
    response = client_for(clerk.mint("user_alice")).post(
        SYNC, {"source": wearable_of(clean_sandbox, alice)}, format="json"
    )
    sync_id = response.json()["id"]

    as_bob = client_for(clerk.mint("user_bob")).get(f"{SYNC}/{sync_id}")
    assert as_bob.status_code == 404 and error_of(as_bob)["code"] == "not_found"
    assert client_for(clerk.mint("user_alice")).get(f"{SYNC}/{sync_id}").status_code == 200
    # Bob asking for Alice's wearable syncs only his own connection (if any), never hers.
    bobs = client_for(clerk.mint("user_bob")).post(
        SYNC, {"source": wearable_of(clean_sandbox, alice)}, format="json"
    )
    if bobs.status_code == 202:
        assert SyncRequest.objects.get(pk=bobs.json()["id"]).patient_id == bob.pk
    else:
        assert bobs.status_code == 404


@pytest.mark.django_db
def test_a_stale_queued_request_is_taken_over(
    alice: Patient, clerk: ClerkSandbox, clean_sandbox: SandboxServer, settings
) -> None:
    source = wearable_of(clean_sandbox, alice)
    lost = SyncRequest.objects.create(
        patient=alice,
        source=source,
        created_at=timezone.now() - timedelta(seconds=settings.MANUAL_SYNC_STALE_SECONDS + 1),
    )

    response = client_for(clerk.mint("user_alice")).post(SYNC, {"source": source}, format="json")

    assert response.status_code == 202 and response.json()["id"] != lost.pk
    lost.refresh_from_db()
    assert lost.status == SyncRequestStatus.FAILED and lost.error.startswith("abandoned")


@pytest.mark.django_db
@pytest.mark.usefixtures("frozen_time")
def test_a_task_delivered_twice_runs_once(alice: Patient, clean_sandbox: SandboxServer) -> None:
    source = wearable_of(clean_sandbox, alice)
    outcome = actions.request_manual_sync(alice, source)

    first = actions.do_manual_sync(outcome.request.pk)
    second = actions.do_manual_sync(outcome.request.pk)

    assert first.status == second.status == SyncRequestStatus.SUCCESS
    assert len(refreshes(clean_sandbox, alice)) == 1
    assert SyncEvent.objects.filter(trigger=SyncTrigger.MANUAL).count() == 1


@pytest.mark.django_db
def test_a_direct_provider_dispatches_to_its_connection_sync(alice: Patient, monkeypatch) -> None:
    whoop = Connection.objects.create(patient=alice, provider=Provider.WHOOP)
    calls = []

    def fake_sync(connection, *, trigger, actor="", **kwargs):
        calls.append((connection.pk, trigger, actor))
        return SyncEvent.objects.create(
            connection=connection,
            patient_id=connection.patient_id,
            provider=connection.provider,
            trigger=trigger,
            status=SyncStatus.SUCCESS,
            started_at=timezone.now(),
            records_fetched=3,
            records_stored=2,
        )

    monkeypatch.setattr(actions, "sync_connection", fake_sync)
    outcome = actions.request_manual_sync(alice, "whoop")
    done = actions.do_manual_sync(outcome.request.pk)

    assert calls == [(whoop.pk, SyncTrigger.MANUAL, "patient")]
    assert done.status == SyncRequestStatus.SUCCESS and done.records_stored == 2
    # The request links the event its own sync wrote, not one found again by time.
    assert done.sync_event == SyncEvent.objects.get(connection=whoop)


@pytest.mark.django_db
def test_a_sync_that_crashes_ends_the_request_failed_never_running(alice: Patient, monkeypatch) -> None:
    Connection.objects.create(patient=alice, provider=Provider.DEXCOM)

    def crashing(connection, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(actions, "sync_connection", crashing)
    outcome = actions.request_manual_sync(alice, "dexcom")
    done = actions.do_manual_sync(outcome.request.pk)

    assert done.status == SyncRequestStatus.FAILED
    assert done.error == "internal error: KeyError"
    assert done.finished_at is not None
