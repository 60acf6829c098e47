"""patient_glucose_readings.range_flag: readings beyond the sensor's range, kept at its limit with a flag.

A nullable column without a default: on the partitioned table ALTER TABLE ... ADD COLUMN reaches every
partition (and the DEFAULT one) as a catalogue change, without rewriting rows.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("readings", "0004_daily_stats_natural_key"),
    ]

    operations = [
        migrations.AddField(
            model_name="glucosereading",
            name="range_flag",
            field=models.CharField(
                blank=True,
                choices=[("above", "above range"), ("below", "below range")],
                max_length=8,
                null=True,
            ),
        ),
    ]
