"""patient_glucose_readings.range_flag: readings beyond the sensor's range, kept at its limit with a flag;
patient_glucose_daily: the per-day sufficient statistics of the consensus CGM metrics (readings/glucose_metrics.py).

A nullable column without a default: on the partitioned table ALTER TABLE ... ADD COLUMN reaches every
partition (and the DEFAULT one) as a catalogue change, without rewriting rows.
"""

import django.db.models.deletion
import django.db.models.functions.datetime
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("connections", "0010_connection_last_success"),
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
        migrations.CreateModel(
            name='GlucoseDay',
            fields=[
                ('pk', models.CompositePrimaryKey('patient', 'day', blank=True, editable=False, primary_key=True, serialize=False)),
                ('day', models.DateField()),
                ('readings', models.PositiveIntegerField()),
                ('above_range', models.PositiveIntegerField(default=0)),
                ('below_range', models.PositiveIntegerField(default=0)),
                ('active_minutes', models.FloatField()),
                ('sum_weighted', models.FloatField()),
                ('sum_weighted_sq', models.FloatField()),
                ('min_mg_dl', models.FloatField()),
                ('max_mg_dl', models.FloatField()),
                ('very_low_minutes', models.FloatField()),
                ('low_minutes', models.FloatField()),
                ('target_minutes', models.FloatField()),
                ('high_minutes', models.FloatField()),
                ('very_high_minutes', models.FloatField()),
                ('tight_minutes', models.FloatField()),
                ('hypo_episodes', models.PositiveIntegerField(default=0)),
                ('severe_hypo_episodes', models.PositiveIntegerField(default=0)),
                ('hyper_episodes', models.PositiveIntegerField(default=0)),
                ('severe_hyper_episodes', models.PositiveIntegerField(default=0)),
                ('updated_at', models.DateTimeField(db_default=django.db.models.functions.datetime.Now())),
                ('patient', models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='glucose_days', to='connections.patient')),
            ],
            options={
                'db_table': 'patient_glucose_daily',
            },
        ),
    ]
