from __future__ import annotations

from django.apps import AppConfig


class ConnectionsConfig(AppConfig):
    name = "connections"
    verbose_name = "Connections"

    def ready(self) -> None:
        from connections import checks  # noqa: F401  (registers the system checks)
        from connections.providers import registry  # noqa: F401  (the providers' start-up checks)
