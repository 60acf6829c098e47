"""Raw readings (stored once, keyed by what they measure) and per-day statistics.

The raw tables use the natural key as a composite primary key: a sample can never be stored twice, and no
surrogate sequence is burnt by every replayed insert. Writes go through `readings.store`, never `save()`.
"""

from __future__ import annotations

from django.db import models
from django.db.models.functions import Now

from connections.models import Connection, Patient


class WearableReading(models.Model):
    """One raw sample or summary value: heart rate at 07:31, a night's sleep duration, 15 minutes of steps."""

    pk = models.CompositePrimaryKey("patient", "metric", "source", "source_type", "measured_at")
    # The primary key starts with patient_id, so the default FK index would only duplicate it.
    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, db_index=False, related_name="+")
    metric = models.CharField(max_length=40)
    # The device maker as the aggregator names it (oura, garmin, apple_health_kit, whoop, ...).
    source = models.CharField(max_length=40)
    # phone / watch / ring / ...: Junction keys samples by (resource, provider, source type, timestamp).
    source_type = models.CharField(max_length=32, default="")
    measured_at = models.DateTimeField()
    # Interval samples (steps per 15 minutes) end here; NULL for instant samples.
    end_at = models.DateTimeField(null=True, blank=True)
    value = models.FloatField()
    unit = models.CharField(max_length=16)
    # The connection that delivered it; no constraint, so removing a connection never rewrites readings.
    connection = models.ForeignKey(
        Connection,
        on_delete=models.DO_NOTHING,
        null=True,
        db_constraint=False,
        db_index=False,
        related_name="+",
    )
    ingested_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "patient_wearable_readings"
        indexes = [
            # Retention and per-day aggregation scan by time.
            models.Index(fields=["measured_at"], name="wearable_reading_measured_at"),
        ]

    def __str__(self) -> str:
        return f"{self.metric} at {self.measured_at:%Y-%m-%d %H:%M}"


class GlucoseReading(models.Model):
    """A CGM sample, normalised to mg/dL with the provider's original value and unit kept."""

    pk = models.CompositePrimaryKey("patient", "source", "measured_at")
    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, db_index=False, related_name="+")
    source = models.CharField(max_length=40)
    measured_at = models.DateTimeField()
    value_mg_dl = models.FloatField()
    original_value = models.FloatField()
    original_unit = models.CharField(max_length=16)
    trend = models.CharField(max_length=32, blank=True, default="")
    trend_rate = models.FloatField(null=True, blank=True)
    device = models.CharField(max_length=64, blank=True, default="")
    # Beyond the sensor's reporting range ("above"/"below"): value_mg_dl is then the sensor's limit, a bound,
    # not a measurement. NULL for an ordinary reading.
    range_flag = models.CharField(
        max_length=8, null=True, blank=True, choices=[("above", "above range"), ("below", "below range")]
    )
    connection = models.ForeignKey(
        Connection,
        on_delete=models.DO_NOTHING,
        null=True,
        db_constraint=False,
        db_index=False,
        related_name="+",
    )
    ingested_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "patient_glucose_readings"
        indexes = [
            models.Index(fields=["measured_at"], name="glucose_reading_measured_at"),
        ]

    def __str__(self) -> str:
        return f"glucose at {self.measured_at:%Y-%m-%d %H:%M}"


class DailyStat(models.Model):
    """Per patient, metric and patient-local day: avg/min/max/sum/count, recomputed from raw rows in SQL.

    Derived data written in bulk by the aggregator: keyed by what it describes (no surrogate sequence), and
    no database constraint on the patient, whose per-row check at commit cost as much as the write. Deleting
    a patient still deletes its statistics (Django's cascade); cleanup removes any whose patient is gone.
    """

    pk = models.CompositePrimaryKey("patient", "metric", "day")
    patient = models.ForeignKey(
        Patient, on_delete=models.CASCADE, db_constraint=False, db_index=False, related_name="daily_stats"
    )
    metric = models.CharField(max_length=40)
    day = models.DateField()
    avg = models.FloatField()
    min = models.FloatField()
    max = models.FloatField()
    sum = models.FloatField()
    count = models.PositiveIntegerField()
    # Rolling means over calendar days D-6..D and D-29..D by the metric's rule (readings/catalogue.py): the mean
    # of the daily totals over days with data for a summed metric, sum of sums / sum of counts otherwise.
    avg_7d = models.FloatField(null=True, blank=True)
    avg_30d = models.FloatField(null=True, blank=True)
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "patient_wearable_daily_stats"

    def __str__(self) -> str:
        return f"{self.metric} {self.day}"


class DailyStatDirty(models.Model):
    """A (patient, metric, patient-local day) whose raw rows changed since `aggregate-wearable-data` last ran.

    Written by every ingest in the ingest's own transaction (one upsert per batch), so a committed reading is
    always either aggregated or still marked. `version` grows on every re-mark: the aggregator deletes only the
    versions it read, so a day marked again while it runs stays marked for the next run.
    """

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, db_index=False, related_name="+")
    metric = models.CharField(max_length=40)
    day = models.DateField()
    version = models.PositiveBigIntegerField(default=1)
    marked_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "patient_wearable_daily_stats_dirty"
        constraints = [
            models.UniqueConstraint(fields=["patient", "metric", "day"], name="daily_stat_dirty_unique_day"),
        ]

    def __str__(self) -> str:
        return f"dirty {self.metric} {self.day}"


class ConnectionRemoval(models.Model):
    """A tombstone left when a Connection row is deleted, so cleanup knows when its readings became orphans.

    Readings keep their `connection_id` (no constraint); `cleanup-wearable-data` removes them once
    `ORPHANED_READING_GRACE_DAYS` have passed since `removed_at`. Daily statistics are never touched.
    Plain ids, not foreign keys: the connection is gone, and the patient may go too.
    """

    connection_id = models.BigIntegerField(unique=True)
    patient_id = models.BigIntegerField()
    provider = models.CharField(max_length=16)
    removed_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "patient_connection_removals"

    def __str__(self) -> str:
        return f"removed connection {self.connection_id}"


class GlucoseDay(models.Model):
    """Per patient and patient-local day: the sufficient statistics of the consensus CGM metrics.

    Time-weighted (readings/glucose_metrics.py states the rule): a window's metrics are sums of these rows,
    never a rescan of the raw readings, and the SD comes from the pooled sums. Kept by the same path as the
    daily statistics (readings.store, the aggregate job's rebuilds); derived data like `DailyStat`.
    """

    pk = models.CompositePrimaryKey("patient", "day")
    patient = models.ForeignKey(
        Patient, on_delete=models.CASCADE, db_constraint=False, db_index=False, related_name="glucose_days"
    )
    day = models.DateField()
    readings = models.PositiveIntegerField()
    # Readings beyond the sensor's range (stored at its limit, counted in their band).
    above_range = models.PositiveIntegerField(default=0)
    below_range = models.PositiveIntegerField(default=0)
    # Minutes the readings stand for (each capped at its sensor's interval): the CGM's active time.
    active_minutes = models.FloatField()
    # Sum of minutes x mg/dL and of minutes x (mg/dL)^2: the time-weighted mean and SD of any set of days.
    sum_weighted = models.FloatField()
    sum_weighted_sq = models.FloatField()
    min_mg_dl = models.FloatField()
    max_mg_dl = models.FloatField()
    # Minutes in each consensus band: < 54, 54-69, 70-180, 181-250, > 250; and the tight range 70-140.
    very_low_minutes = models.FloatField()
    low_minutes = models.FloatField()
    target_minutes = models.FloatField()
    high_minutes = models.FloatField()
    very_high_minutes = models.FloatField()
    tight_minutes = models.FloatField()
    # Episodes (>= 15 minutes) that start on this day: below 70, below 54, above 180, above 250.
    hypo_episodes = models.PositiveIntegerField(default=0)
    severe_hypo_episodes = models.PositiveIntegerField(default=0)
    hyper_episodes = models.PositiveIntegerField(default=0)
    severe_hyper_episodes = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "patient_glucose_daily"

    def __str__(self) -> str:
        return f"glucose day {self.day}"


class RoutePriority(models.Model):
    """A patient's own rank of a route for one device family, overriding the providers' registry priorities
    (readings/resolution.py): e.g. count this patient's Dexcom readings from Junction, not Dexcom direct.
    Higher wins. Edited in the admin's patient page, which rebuilds the patient's statistics."""

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="route_priorities")
    # A provider's source_family (dexcom, libre, whoop) or a source name Junction relays.
    source_family = models.CharField(max_length=40)
    # The route: a registered provider's key.
    provider = models.CharField(max_length=16)
    priority = models.SmallIntegerField()

    class Meta:
        db_table = "patient_route_priorities"
        constraints = [
            models.UniqueConstraint(
                fields=["patient", "source_family", "provider"], name="route_priority_unique_route"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.source_family} via {self.provider}: {self.priority}"


class DataCompleteness(models.Model):
    """Per patient, kind of data and patient-local day: what arrived against what a worn device sends
    (readings.completeness). Kept by every ingest with the daily statistics, for the days it touched.

    Kinds: `glucose` (5-minute CGM slots with a reading, of the day's 288, or 276/300 on DST days),
    `heart_rate` (minutes with a heart-rate sample, of the day's minutes), `sleep` (a night's sleep: 1 of 1).
    """

    pk = models.CompositePrimaryKey("patient", "kind", "day")
    patient = models.ForeignKey(
        Patient, on_delete=models.CASCADE, db_constraint=False, db_index=False, related_name="+"
    )
    kind = models.CharField(max_length=16)
    day = models.DateField()
    received = models.PositiveIntegerField()
    expected = models.PositiveIntegerField()
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "patient_data_completeness"

    def __str__(self) -> str:
        return f"{self.kind} {self.day}: {self.received}/{self.expected}"
