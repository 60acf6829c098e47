from __future__ import annotations

from django.apps import AppConfig


class ConnectionsConfig(AppConfig):
    name = "connections"
    verbose_name = "Connections"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from connections import checks  # noqa: F401  (registers the system checks)
        from connections.api.authentication import forget_sessions_of_changed_patient
        from connections.models import Patient

        # A remembered Clerk session holds its patient: any change to a patient forgets them all.
        post_save.connect(
            forget_sessions_of_changed_patient, sender=Patient, dispatch_uid="forget-clerk-sessions-save"
        )
        post_delete.connect(
            forget_sessions_of_changed_patient, sender=Patient, dispatch_uid="forget-clerk-sessions-delete"
        )
