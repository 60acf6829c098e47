"""One truth per measurement (issue 13).

Libre direct readings were stored under Junction's slug `freestyle_libre`; they now carry their own source
name `librelinkup`. Rows written by a Libre direct connection are renamed. A row both routes wrote to (the
collapsed copy) keeps the first writer's connection; it is renamed only if that writer was the direct one.

WHOOP's recovery and cycle values that meant something else than Junction's metrics of the same name get their
own names (readings/catalogue.py): resting_heart_rate -> recovery_resting_heart_rate, blood_oxygen ->
recovery_blood_oxygen, calories_total -> cycle_calories. Only rows a WHOOP direct connection wrote are renamed
(Junction relays WHOOP under the source `whoop` too, with Junction's meanings). The days of renamed rows are
marked under both names, so the next aggregate-wearable-data recomputes them (a day left with no raw rows
inside the horizon loses its statistic).

Day-level summaries (Junction daily activity and body) were stamped at the patient's local noon; they are now
stamped at 00:00 UTC of their calendar date, taken as the local date of the old stamp in the patient's current
zone. Where a zone change left two stamps of one date, the most recently ingested copy is kept. Their days are
marked for the next aggregation.
"""

import django.db.models.deletion
from django.db import migrations, models

RENAME_LIBRE = """
UPDATE patient_glucose_readings g SET source = 'librelinkup'
FROM patient_connections c
WHERE c.id = g.connection_id AND c.provider = 'libre' AND g.source = 'freestyle_libre'
"""
WHOOP_RENAMES = (
    ("resting_heart_rate", "recovery_resting_heart_rate"),
    ("blood_oxygen", "recovery_blood_oxygen"),
    ("calories_total", "cycle_calories"),
)


def rename_whoop_sql(old: str, new: str) -> str:
    return f"""
WITH renamed AS (
    UPDATE patient_wearable_readings r SET metric = '{new}'
    FROM patient_connections c
    WHERE c.id = r.connection_id AND c.provider = 'whoop' AND r.source = 'whoop' AND r.metric = '{old}'
    RETURNING r.patient_id, r.measured_at
)
INSERT INTO patient_wearable_daily_stats_dirty AS m (patient_id, metric, day, version, marked_at)
SELECT DISTINCT x.patient_id, names.metric, (x.measured_at AT TIME ZONE p.time_zone)::date, 1, now()
FROM renamed x JOIN patients p ON p.id = x.patient_id
CROSS JOIN (VALUES ('{old}'), ('{new}')) AS names(metric)
ON CONFLICT (patient_id, metric, day) DO UPDATE SET version = m.version + 1, marked_at = EXCLUDED.marked_at
"""


def unrename_whoop_sql(old: str, new: str) -> str:
    return f"UPDATE patient_wearable_readings SET metric = '{old}' WHERE metric = '{new}'"


DAY_LEVEL = (
    "activity_steps", "calories_total", "calories_active", "activity_distance", "floors_climbed",
    "resting_heart_rate", "activity_heart_rate_avg", "body_weight", "body_fat", "body_mass_index",
)
_DAY_LEVEL_LIST = ", ".join(f"'{m}'" for m in DAY_LEVEL)

RESTAMP_DAY_LEVEL = [
    f"""
CREATE TEMP TABLE restamp_day_level ON COMMIT DROP AS
SELECT * FROM patient_wearable_readings WITH NO DATA
""",
    "ALTER TABLE restamp_day_level ADD COLUMN day date",
    f"""
WITH moved AS (
    DELETE FROM patient_wearable_readings r USING patients p
    WHERE p.id = r.patient_id AND r.metric IN ({_DAY_LEVEL_LIST})
      AND r.measured_at <> (((r.measured_at AT TIME ZONE p.time_zone)::date)::timestamp AT TIME ZONE 'UTC')
    RETURNING r.*, (r.measured_at AT TIME ZONE p.time_zone)::date AS day
)
INSERT INTO restamp_day_level SELECT * FROM moved
""",
    """
INSERT INTO patient_wearable_readings
    (patient_id, metric, source, source_type, measured_at, end_at, value, unit, connection_id, ingested_at)
SELECT DISTINCT ON (patient_id, metric, source, source_type, day)
    patient_id, metric, source, source_type, day::timestamp AT TIME ZONE 'UTC', end_at, value, unit,
    connection_id, ingested_at
FROM restamp_day_level
ORDER BY patient_id, metric, source, source_type, day, ingested_at DESC
ON CONFLICT (patient_id, metric, source, source_type, measured_at) DO NOTHING
""",
    """
INSERT INTO patient_wearable_daily_stats_dirty AS m (patient_id, metric, day, version, marked_at)
SELECT DISTINCT patient_id, metric, day, 1, now() FROM restamp_day_level
ON CONFLICT (patient_id, metric, day) DO UPDATE SET version = m.version + 1, marked_at = EXCLUDED.marked_at
""",
]

UNRENAME_LIBRE = "UPDATE patient_glucose_readings SET source = 'freestyle_libre' WHERE source = 'librelinkup'"


class Migration(migrations.Migration):
    dependencies = [
        ("readings", "0005_glucose_range_flag_and_days"),
        ("connections", "0010_connection_last_success"),
    ]

    operations = [
        # Source resolution (readings/resolution.py): a patient's own rank of a route for a device family.
        migrations.CreateModel(
            name="RoutePriority",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("source_family", models.CharField(max_length=40)),
                ("provider", models.CharField(max_length=16)),
                ("priority", models.SmallIntegerField()),
                (
                    "patient",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="route_priorities",
                        to="connections.patient",
                    ),
                ),
            ],
            options={
                "db_table": "patient_route_priorities",
                "constraints": [
                    models.UniqueConstraint(
                        fields=("patient", "source_family", "provider"), name="route_priority_unique_route"
                    )
                ],
            },
        ),
        migrations.RunSQL(RENAME_LIBRE, UNRENAME_LIBRE),
        *(migrations.RunSQL(rename_whoop_sql(old, new), unrename_whoop_sql(old, new)) for old, new in WHOOP_RENAMES),
        # After the WHOOP renames: the resting_heart_rate rows left are Junction's day-level ones.
        migrations.RunSQL(RESTAMP_DAY_LEVEL, migrations.RunSQL.noop),
    ]
