from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from connections.models import Patient
from connections.oauth import connect_link, oauth_providers


class Command(BaseCommand):
    help = (
        "Print a short-lived link (OAUTH_STATE_TTL_SECONDS) that starts connecting an OAuth provider "
        "(WHOOP, Dexcom) for a patient; a revoked connection's admin page offers the same link."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("patient_id", type=int)
        parser.add_argument("provider", choices=oauth_providers())
        parser.add_argument("--base-url", default="http://127.0.0.1:8000")

    def handle(self, *args: Any, **options: Any) -> None:
        patient = Patient.objects.filter(pk=options["patient_id"]).first()
        if patient is None:
            raise CommandError(f"no patient {options['patient_id']}")
        self.stdout.write(connect_link(patient, options["provider"], options["base_url"]))
