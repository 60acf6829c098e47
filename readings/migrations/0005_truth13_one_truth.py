"""One truth per measurement (issue 13).

Libre direct readings were stored under Junction's slug `freestyle_libre`; they now carry their own source
name `librelinkup`. Rows written by a Libre direct connection are renamed. A row both routes wrote to (the
collapsed copy) keeps the first writer's connection; it is renamed only if that writer was the direct one.
"""

from django.db import migrations

RENAME_LIBRE = """
UPDATE patient_glucose_readings g SET source = 'librelinkup'
FROM patient_connections c
WHERE c.id = g.connection_id AND c.provider = 'libre' AND g.source = 'freestyle_libre'
"""
UNRENAME_LIBRE = "UPDATE patient_glucose_readings SET source = 'freestyle_libre' WHERE source = 'librelinkup'"


class Migration(migrations.Migration):
    dependencies = [
        ("readings", "0004_daily_stats_natural_key"),
        ("connections", "0010_connection_last_success"),
    ]

    operations = [
        migrations.RunSQL(RENAME_LIBRE, UNRENAME_LIBRE),
    ]
