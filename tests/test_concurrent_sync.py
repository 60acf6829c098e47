"""Two workers syncing the same connection at once: nothing doubled, nothing lost, cursor consistent."""

from __future__ import annotations

import threading
from datetime import datetime

import pytest
from django.db import connections

from connections.config import JunctionSyncConfig
from connections.models import Connection, Patient, Provider, SyncEvent
from readings.models import DailyStat, GlucoseReading, WearableReading
from tests.direct_helpers import sync

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("frozen_time")]


def test_two_concurrent_syncs_of_one_connection_store_each_sample_once(
    junction_config: JunctionSyncConfig, frozen_time: datetime
) -> None:
    user_id = junction_config.user_ids[0]
    patient = Patient.objects.create(junction_user_id=user_id, time_zone="Europe/London")
    connection = Connection.objects.create(patient=patient, provider=Provider.JUNCTION)
    barrier = threading.Barrier(2)
    results = []

    def worker() -> None:
        try:
            barrier.wait()
            fresh = Connection.objects.select_related("patient").get(pk=connection.pk)
            results.append(sync(fresh, junction_config))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert [r.status for r in results] == ["success", "success"]
    stored = (
        WearableReading.objects.filter(patient=patient).count()
        + GlucoseReading.objects.filter(patient=patient).count()
    )
    # Every sample written exactly once, split however the race fell between the two workers.
    assert sum(r.records_stored for r in results) == stored
    assert results[0].records_fetched == results[1].records_fetched == stored
    assert DailyStat.objects.filter(patient=patient).exists()
    connection.refresh_from_db()
    assert connection.last_sync_at == frozen_time
    assert SyncEvent.objects.filter(connection=connection, status="success").count() == 2
