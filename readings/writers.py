"""Where a sync's readings go: this database (`store_batch`), or the patient-graph API over HTTP.

The sync engine (connections.engine) stores each fetched batch through a writer. The database writer joins the sync's own
transaction (rows, fingerprints and cursor commit together). The HTTP writer cannot join it, so the sync
writes remotely first and then commits its fingerprints and cursor: a failure in between replays rows that
the API upserts on their natural keys, so nothing is lost and nothing is doubled.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Protocol

from connections.config import JunctionSyncConfig
from connections.models import Connection
from connections.providers.base import ProviderError
from connections.providers.common import http_for
from connections.providers.contract import GlucoseRow, WearableRow
from readings.store import store_batch

# Rows per ingest request: ~1 MB of JSON, well under the API's 50,000-row limit.
INGEST_BATCH_ROWS = 10_000


class ReadingsWriter(Protocol):
    # True: `store` runs inside the caller's transaction; False: it commits on its own, before the caller's.
    in_transaction: bool

    def store(
        self, connection: Connection, readings: Sequence[WearableRow], glucose: Sequence[GlucoseRow]
    ) -> int:
        """Store one connection's rows (its patient loaded or loadable); return the rows written."""
        ...


class DatabaseWriter:
    in_transaction = True

    def store(
        self, connection: Connection, readings: Sequence[WearableRow], glucose: Sequence[GlucoseRow]
    ) -> int:
        patient = connection.patient
        return store_batch(
            patient.pk, patient.time_zone, readings, glucose, connection_id=connection.pk
        ).written


class PatientGraphWriter:
    """POSTs batches to `{PATIENT_GRAPH_API_URL}/service/ingest` through the shared HTTP layer (retries,
    backoff, Retry-After). Ingest is idempotent on natural keys, so its POSTs are retried like GETs."""

    in_transaction = False

    def __init__(self, base_url: str, api_key: str) -> None:
        self.http = http_for("patient-graph", base_url, headers={"authorization": f"Bearer {api_key}"})

    def store(
        self, connection: Connection, readings: Sequence[WearableRow], glucose: Sequence[GlucoseRow]
    ) -> int:
        # The remote database has its own ids: the patient travels by an id both sides share, its Junction
        # user id or its Clerk user id. Never by our row id, which there may be another patient's.
        patient = connection.patient
        if patient.junction_user_id:
            who: dict[str, object] = {"junction_user_id": patient.junction_user_id}
        elif patient.clerk_user_id:
            who = {"clerk_user_id": patient.clerk_user_id}
        else:
            raise ProviderError(
                "patient-graph",
                "the patient has no Junction or Clerk user id to be found by in the patient graph",
            )
        written = 0
        for start in range(0, max(len(readings), len(glucose)), INGEST_BATCH_ROWS):
            body = {
                **who,
                "provider": connection.provider,
                "readings": [_reading(row) for row in readings[start : start + INGEST_BATCH_ROWS]],
                "glucose": [_glucose(row) for row in glucose[start : start + INGEST_BATCH_ROWS]],
            }
            response = self.http.request("POST", "/service/ingest", json=body, idempotent=True)
            result = self.http.decode("/service/ingest", response.content)
            written += int(result.get("readings_written", 0)) + int(result.get("glucose_written", 0))
        return written


def _iso(canonical: str | None) -> str | None:
    return canonical.replace(" ", "T", 1) if canonical else None


def _reading(row: WearableRow) -> dict[str, object]:
    metric, source, source_type, measured_at, end_at, value, unit = row
    return {
        "metric": metric,
        "source": source,
        "source_type": source_type,
        "measured_at": _iso(measured_at),
        "end_at": _iso(end_at),
        "value": value,
        "unit": unit,
    }


def _glucose(row: GlucoseRow) -> dict[str, object]:
    source, measured_at, mg_dl, original, unit, trend, rate, device = row
    return {
        "source": source,
        "measured_at": _iso(measured_at),
        "value_mg_dl": mg_dl,
        "original_value": original,
        "original_unit": unit,
        "trend": trend,
        "trend_rate": rate,
        "device": device,
    }


DATABASE_WRITER = DatabaseWriter()
_local = threading.local()


def writer_for(config: JunctionSyncConfig) -> ReadingsWriter:
    """The database writer, or (PATIENT_GRAPH_API_URL set) one HTTP writer per thread and URL."""
    if not config.patient_graph_url:
        return DATABASE_WRITER
    key = (config.patient_graph_url, config.patient_graph_key)
    writers: dict[tuple[str, str], PatientGraphWriter] = getattr(_local, "writers", None) or {}
    _local.writers = writers
    if key not in writers:
        writers[key] = PatientGraphWriter(*key)
    return writers[key]
