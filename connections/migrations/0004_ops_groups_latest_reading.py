"""The "support" and "ops" groups, and `latest_reading_at` filled for connections synced before it existed."""

from django.contrib.auth.management import create_permissions
from django.db import migrations
from django.db.models import Max

SUPPORT_PERMISSIONS = [
    ("connections", "view_patient"),
    ("connections", "view_connection"),
    ("connections", "view_syncevent"),
    ("connections", "view_jobrun"),
    ("connections", "view_jobhealth"),
    ("django_q", "view_schedule"),
    ("django_q", "view_success"),
    ("django_q", "view_failure"),
    ("django_q", "view_ormq"),
]
OPS_PERMISSIONS = [
    *SUPPORT_PERMISSIONS,
    ("connections", "force_resync_connection"),
    ("connections", "deactivate_connection"),
]


def create_groups(apps, schema_editor):
    # Permissions are normally created after `migrate` (post_migrate); a fresh database needs them now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, wanted in (("support", SUPPORT_PERMISSIONS), ("ops", OPS_PERMISSIONS)):
        group, _ = Group.objects.get_or_create(name=name)
        for app_label, codename in wanted:
            permission = Permission.objects.filter(
                content_type__app_label=app_label, codename=codename
            ).first()
            if permission is not None:
                group.permissions.add(permission)


def remove_groups(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=["support", "ops"]).delete()


def fill_latest_reading_at(apps, schema_editor):
    Connection = apps.get_model("connections", "Connection")
    newest: dict[int, object] = {}
    for model in (apps.get_model("readings", "WearableReading"), apps.get_model("readings", "GlucoseReading")):
        # One grouped scan per table, not one max() per connection.
        rows = model.objects.exclude(connection_id=None).values("connection_id").annotate(m=Max("measured_at"))
        for row in rows:
            current = newest.get(row["connection_id"])
            if current is None or row["m"] > current:
                newest[row["connection_id"]] = row["m"]
    for connection_id, measured_at in newest.items():
        Connection.objects.filter(pk=connection_id).update(latest_reading_at=measured_at)


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
        ("connections", "0003_ops_admin_monitoring"),
        ("readings", "0001_initial"),
    ]

    operations = [
        migrations.RunPython(create_groups, remove_groups),
        migrations.RunPython(fill_latest_reading_at, migrations.RunPython.noop),
    ]
