"""Daily statistics keyed by (patient, metric, day), like the raw tables, with no database-level patient
constraint.

The table is derived data written in bulk by the aggregator: the surrogate id cost a sequence value and a
second index entry per row, and the deferred patient constraint a locking lookup per inserted row at commit,
together as much as the insert itself. Patients are still deleted with their statistics (Django's cascade),
and cleanup-wearable-data removes statistics whose patient no longer exists.

Django does not migrate a single-column primary key to a composite one, so the table is rebuilt: a new table
under a temporary name, the rows copied, the old table dropped, the new one renamed. Reversible the same way.
"""

import django.db.models.deletion
import django.db.models.functions.datetime
from django.db import migrations, models
from django.db.migrations.operations.base import Operation

TABLE = "patient_wearable_daily_stats"
COLUMNS = ("patient_id", "metric", "day", "avg", "min", "max", "sum", "count", "avg_7d", "avg_30d", "updated_at")


def daily_stat(*, natural_key: bool) -> migrations.CreateModel:
    key = (
        [("pk", models.CompositePrimaryKey("patient", "metric", "day", blank=True, editable=False, primary_key=True, serialize=False))]
        if natural_key
        else [("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID"))]
    )
    return migrations.CreateModel(
        name="DailyStat",
        fields=[
            *key,
            ("metric", models.CharField(max_length=40)),
            ("day", models.DateField()),
            ("avg", models.FloatField()),
            ("min", models.FloatField()),
            ("max", models.FloatField()),
            ("sum", models.FloatField()),
            ("count", models.PositiveIntegerField()),
            ("avg_7d", models.FloatField(blank=True, null=True)),
            ("avg_30d", models.FloatField(blank=True, null=True)),
            ("updated_at", models.DateTimeField(db_default=django.db.models.functions.datetime.Now())),
            (
                "patient",
                models.ForeignKey(
                    db_constraint=not natural_key,
                    db_index=False,
                    on_delete=django.db.models.deletion.CASCADE,
                    related_name="daily_stats",
                    to="connections.patient",
                ),
            ),
        ],
        options={"db_table": TABLE}
        if natural_key
        else {
            "db_table": TABLE,
            "constraints": [models.UniqueConstraint(fields=("patient", "metric", "day"), name="daily_stat_unique_day")],
        },
    )


class RebuildDailyStats(Operation):
    reduces_to_sql = False
    reversible = True

    def __init__(self, natural_key: bool) -> None:
        self.natural_key = natural_key

    def deconstruct(self):  # noqa: ANN201
        return self.__class__.__name__, [], {"natural_key": self.natural_key}

    def state_forwards(self, app_label, state):  # noqa: ANN001, ANN201
        state.remove_model(app_label, "dailystat")
        daily_stat(natural_key=self.natural_key).state_forwards(app_label, state)

    def _rebuild(self, app_label, schema_editor, from_state, to_state):  # noqa: ANN001, ANN202
        new = to_state.apps.get_model(app_label, "DailyStat")
        rebuilt = f"{TABLE}_rebuilt"
        new._meta.db_table = rebuilt
        pending = len(schema_editor.deferred_sql)
        schema_editor.create_model(new)
        # Its constraints are created now, while the table still has the name they were written for.
        for sql in schema_editor.deferred_sql[pending:]:
            schema_editor.execute(sql)
        del schema_editor.deferred_sql[pending:]
        new._meta.db_table = TABLE
        columns = ", ".join(schema_editor.quote_name(c) for c in COLUMNS)
        # No write may land in the old table after the copy.
        schema_editor.execute(f"LOCK TABLE {TABLE} IN SHARE MODE")
        # Statistics of a patient deleted around Django's cascade have nowhere to go (going back, the patient
        # constraint would refuse them): they are not copied.
        schema_editor.execute(
            f"INSERT INTO {rebuilt} ({columns}) SELECT {columns} FROM {TABLE} "
            f"WHERE patient_id IN (SELECT id FROM patients)"
        )
        schema_editor.execute(f"DROP TABLE {TABLE}")
        schema_editor.execute(f"ALTER TABLE {rebuilt} RENAME TO {TABLE}")
        # Constraint names were derived from the temporary table name: give them the table's own.
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(
                "SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND conname LIKE %s",
                [TABLE, f"{rebuilt}%"],
            )
            names = [row[0] for row in cursor.fetchall()]
        for name in names:
            renamed = TABLE + name[len(rebuilt) :]
            schema_editor.execute(f"ALTER TABLE {TABLE} RENAME CONSTRAINT {name} TO {renamed}")

    def database_forwards(self, app_label, schema_editor, from_state, to_state):  # noqa: ANN001, ANN201
        self._rebuild(app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):  # noqa: ANN001, ANN201
        self._rebuild(app_label, schema_editor, from_state, to_state)

    def describe(self) -> str:
        return "Rebuild patient_wearable_daily_stats keyed by " + (
            "(patient, metric, day)" if self.natural_key else "a surrogate id"
        )


class Migration(migrations.Migration):
    dependencies = [
        ("readings", "0003_partition_raw_readings"),
    ]

    operations = [RebuildDailyStats(natural_key=True)]
