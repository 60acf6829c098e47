from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.urls import reverse

from connections.models import Patient
from connections.oauth import OAUTH_PROVIDERS, connect_token_for


class Command(BaseCommand):
    help = "Print a short-lived link that starts connecting WHOOP or Dexcom for a patient (OAUTH_STATE_TTL_SECONDS)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("patient_id", type=int)
        parser.add_argument("provider", choices=list(OAUTH_PROVIDERS))
        parser.add_argument("--base-url", default="http://127.0.0.1:8000")

    def handle(self, *args: Any, **options: Any) -> None:
        patient = Patient.objects.filter(pk=options["patient_id"]).first()
        if patient is None:
            raise CommandError(f"no patient {options['patient_id']}")
        path = reverse("connect-start", args=[options["provider"]])
        self.stdout.write(f"{options['base_url'].rstrip('/')}{path}?token={connect_token_for(patient)}")
