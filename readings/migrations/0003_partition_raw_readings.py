"""Turn the two raw reading tables into weekly range partitions on measured_at.

The rows are copied in this migration's transaction; on a large existing table, run it in a maintenance window.
"""

from django.db import migrations

RAW_TABLES = ("patient_wearable_readings", "patient_glucose_readings")


def partition(apps, schema_editor):
    from readings.partitions import convert_table, is_partitioned

    for table in RAW_TABLES:
        if not is_partitioned(table):
            convert_table(table, partitioned=True)


def unpartition(apps, schema_editor):
    from readings.partitions import convert_table, is_partitioned

    for table in RAW_TABLES:
        if is_partitioned(table):
            convert_table(table, partitioned=False)


class Migration(migrations.Migration):
    dependencies = [
        ("readings", "0002_aggregation_dirty_days"),
    ]

    operations = [
        migrations.RunPython(partition, unpartition),
    ]
