from __future__ import annotations

import getpass
import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from connections.models import Patient
from connections.oauth import OAuthFlowError, connect_libre
from connections.providers.base import ProviderError


class Command(BaseCommand):
    help = "Connect a patient's FreeStyle Libre through a LibreLinkUp follower login (password: LIBRE_PASSWORD or prompt)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("patient_id", type=int)
        parser.add_argument("--email", required=True)

    def handle(self, *args: Any, **options: Any) -> None:
        patient = Patient.objects.filter(pk=options["patient_id"]).first()
        if patient is None:
            raise CommandError(f"no patient {options['patient_id']}")
        # Never a command-line argument: it would show in `ps` and shell history.
        password = os.environ.get("LIBRE_PASSWORD") or getpass.getpass("LibreLinkUp password: ")
        try:
            connection = connect_libre(patient, options["email"], password)
        except (OAuthFlowError, ProviderError) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"connected: libre connection {connection.pk} for patient {patient.pk}")
