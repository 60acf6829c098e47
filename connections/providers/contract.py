"""What every provider hands the sync engine: row shapes, record errors, and when a reading can have happened."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from django.utils import timezone

# Row shapes handed to readings.store (tuples, not objects: the ingest path handles millions of them).
# WearableRow: (metric, source, source_type, measured_at, end_at | None, value, unit)
# GlucoseRow: (source, measured_at, value_mg_dl, original_value, original_unit, trend, trend_rate, device)
# Timestamps are canonical UTC strings "YYYY-MM-DD HH:MM:SS[.ffffff]+00:00".
WearableRow = tuple[str, str, str, str, str | None, float, str]
GlucoseRow = tuple[str, str, float, float, str, str, float | None, str]


class InvalidRecord(ValueError):
    """A record that fails validation; the message names the field and the rule, never the value."""


class InvalidPayload(ValueError):
    """The response's envelope is not what the API documents (the whole page is unusable)."""


# No provider we sync existed before 2000; an earlier stamp is an unset device clock (1970) or a sentinel.
EARLIEST_READING = datetime(2000, 1, 1, tzinfo=UTC)
# Sensor and phone clocks run a little ahead of ours; a reading further ahead than this is a broken clock,
# and storing it would move a CGM cursor past every real reading still to come.
CLOCK_SKEW = timedelta(minutes=15)
# Day-level summaries are stamped at the patient's local noon, which for today is up to 12 h after now.
LOCAL_NOON_AHEAD = timedelta(hours=12)


def latest_plausible(now: datetime | None = None) -> datetime:
    """The newest instant a reading (or a cursor) may carry."""
    return (now or timezone.now()) + CLOCK_SKEW


def plausible_instant(
    moment: datetime, field_name: str, now: datetime | None = None, *, ahead: timedelta = CLOCK_SKEW
) -> datetime:
    """`moment` in UTC if a reading can have happened then; InvalidRecord if before 2000 or more than `ahead`
    after now.

    Also the guard that keeps extreme years (0001, 9999) out of the database, where a patient-local day
    computed from them would overflow and fail the whole batch.
    """
    try:
        utc = moment.astimezone(UTC)
    except OverflowError:
        raise InvalidRecord(f"{field_name} is out of range") from None
    if utc < EARLIEST_READING:
        raise InvalidRecord(f"{field_name} is before {EARLIEST_READING.year}")
    if utc > (now or timezone.now()) + ahead:
        raise InvalidRecord(f"{field_name} is in the future")
    return utc


def plausible_day(day: date, local_today: date, field_name: str) -> date:
    """A day-level summary's calendar date: not before 2000, not after the patient's local today."""
    if day < EARLIEST_READING.date():
        raise InvalidRecord(f"{field_name} is before {EARLIEST_READING.year}")
    if day > local_today:
        raise InvalidRecord(f"{field_name} is in the future")
    return day
