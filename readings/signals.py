"""Keep a tombstone of every deleted connection: its readings become orphans with a known removal time."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_delete
from django.dispatch import receiver
from django.utils import timezone

from connections.models import Connection
from readings.models import ConnectionRemoval


@receiver(post_delete, sender=Connection, dispatch_uid="readings.connection_removed")
def record_connection_removal(sender: type[Connection], instance: Connection, **kwargs: Any) -> None:
    # Runs inside the delete's transaction; a replayed delete keeps the first removal time.
    ConnectionRemoval.objects.get_or_create(
        connection_id=instance.pk,
        defaults={
            "patient_id": instance.patient_id,
            "provider": instance.provider,
            # The application clock, like Connection.updated_at which the grace of an inactive one uses.
            "removed_at": timezone.now(),
        },
    )
