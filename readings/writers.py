"""Where a sync's readings go: this database (`store_batch`), or the patient-graph API over HTTP.

The sync engine (connections.engine) stores each fetched batch through a writer. The database writer joins the sync's own
transaction (rows, fingerprints and cursor commit together). The HTTP writer cannot join it, so the sync
writes remotely first and then commits its fingerprints and cursor: a failure in between replays rows that
the API upserts on their natural keys, so nothing is lost and nothing is doubled.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any, Protocol

from django.conf import settings

from connections.config import JunctionSyncConfig
from connections.models import Connection
from connections.providers.base import ProviderError, ProviderRequestError
from connections.providers.common import http_for
from connections.providers.contract import GlucoseRow, WearableRow, full_glucose_row
from readings.store import store_batch

INGEST = "/service/ingest"
# Exactly how httpx 0.28 (pinned) encodes `json=`: a batch's size is counted in the bytes that travel.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


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
    backoff, Retry-After). Ingest is idempotent on natural keys, so its POSTs are retried like GETs, and a sync
    that failed after some batches were accepted replays them harmlessly.

    Batches are sized by their JSON body's bytes, at most `max_body_bytes` (PATIENT_GRAPH_MAX_BODY_BYTES, the
    limit the service enforces), never by a row count: the rows' sizes vary with their strings. A service
    configured with a smaller limit answers 413 naming it; the writer adopts it and splits again.
    """

    in_transaction = False

    def __init__(self, base_url: str, api_key: str, max_body_bytes: int | None = None) -> None:
        self.http = http_for(
            "patient-graph", base_url, headers={"authorization": f"Bearer {api_key}"}, gated=False
        )
        self.max_body_bytes = max_body_bytes or settings.PATIENT_GRAPH_MAX_BODY_BYTES

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
        envelope = {**who, "provider": connection.provider}
        reading_rows = [_reading(row) for row in readings]
        glucose_rows = [_glucose(row) for row in glucose]
        reading_sizes = [_size(row) for row in reading_rows]
        glucose_sizes = [_size(row) for row in glucose_rows]
        empty = _size({**envelope, "readings": [], "glucose": []})
        written = 0
        r = g = 0
        while r < len(reading_rows) or g < len(glucose_rows):
            r_end, g_end = _fill(empty, reading_sizes, glucose_sizes, r, g, self.max_body_bytes)
            body = {**envelope, "readings": reading_rows[r:r_end], "glucose": glucose_rows[g:g_end]}
            response = self.http.request("POST", INGEST, json=body, idempotent=True, accept=frozenset({413}))
            if response.status_code == 413:
                self.max_body_bytes = self._smaller_limit(response.content)
                continue
            result = self.http.decode(INGEST, response.content)
            written += int(result.get("readings_written", 0)) + int(result.get("glucose_written", 0))
            r, g = r_end, g_end
        return written

    def _smaller_limit(self, content: bytes) -> int:
        """The limit a 413 names, if below ours; otherwise the refusal is final (a proxy's own limit, or a body
        we sized wrongly) and retrying the same bodies cannot help."""
        try:
            limit = json.loads(content)["max_body_bytes"]
        except (ValueError, TypeError, KeyError):
            limit = None
        if type(limit) is int and 0 < limit < self.max_body_bytes:
            return limit
        raise ProviderRequestError(
            "patient-graph",
            f"POST {INGEST} answered 413 to a body of at most {self.max_body_bytes} bytes "
            "(PATIENT_GRAPH_MAX_BODY_BYTES); a proxy in front of the service may have a smaller limit",
            status=413,
        )


def _size(value: Any) -> int:
    text = _ENCODER.encode(value)
    return len(text) if text.isascii() else len(text.encode())


def _fill(
    empty: int, reading_sizes: list[int], glucose_sizes: list[int], r: int, g: int, limit: int
) -> tuple[int, int]:
    """The ends of the next batch, readings[r:] first, then glucose[g:]: as many rows as fit in `limit` bytes.

    `empty` is the body with both lists empty; each row adds its own bytes and, after its list's first row, a
    comma, so the sum is the body's exact size.
    """
    r_end, size = _take(reading_sizes, r, empty, limit)
    g_end = g
    if r_end == len(reading_sizes):
        g_end, size = _take(glucose_sizes, g, size, limit)
    if (r_end, g_end) == (r, g):
        # Impossible for a row the service would accept (its field lengths keep a row near 1 KB, and the limit
        # is at least 64 KiB): refuse here rather than send a body the service must refuse.
        raise ProviderRequestError(
            "patient-graph",
            f"a row is larger than the ingest limit of {limit} bytes (PATIENT_GRAPH_MAX_BODY_BYTES)",
        )
    return r_end, g_end


def _take(sizes: list[int], start: int, size: int, limit: int) -> tuple[int, int]:
    end = start
    while end < len(sizes) and size + sizes[end] + (end > start) <= limit:
        size += sizes[end] + (end > start)
        end += 1
    return end, size


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
    source, measured_at, mg_dl, original, unit, trend, rate, device, flag = full_glucose_row(row)
    out: dict[str, object] = {
        "source": source,
        "measured_at": _iso(measured_at),
        "value_mg_dl": mg_dl,
        "original_value": original,
        "original_unit": unit,
        "trend": trend,
        "trend_rate": rate,
        "device": device,
    }
    if flag:
        out["range_flag"] = flag
    return out


DATABASE_WRITER = DatabaseWriter()
_local = threading.local()


def writer_for(config: JunctionSyncConfig) -> ReadingsWriter:
    """The database writer, or (PATIENT_GRAPH_API_URL set) one HTTP writer per thread and URL."""
    if not config.patient_graph_url:
        return DATABASE_WRITER
    key = (config.patient_graph_url, config.patient_graph_key, settings.PATIENT_GRAPH_MAX_BODY_BYTES)
    writers: dict[tuple[str, str, int], PatientGraphWriter] = getattr(_local, "writers", None) or {}
    _local.writers = writers
    if key not in writers:
        writers[key] = PatientGraphWriter(*key)
    return writers[key]
