"""`python manage.py mint_token PATIENT_ID_OR_CLERK_ID [--ttl SECONDS]`: a Clerk session token for local work.

Prints the token alone on stdout (`TOKEN=$(python manage.py mint_token 1)`), signed with the sandbox's published
development key (`sandbox.dev_issuer`); what the server needs to accept it goes to stderr. The command exists
only where the sandbox app is installed (DEBUG or SANDBOX_ENABLED), and the API accepts the key only there too.
"""

from __future__ import annotations

import sys
from argparse import ArgumentParser
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from connections.models import Patient
from sandbox import dev_issuer
from sandbox.clerk import DEFAULT_AZP, ClerkSandbox

DEFAULT_TTL_SECONDS = 3600


class Command(BaseCommand):
    help = "Print a Clerk session token for a patient, signed with the sandbox's development key (local work only)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("patient", help="a patient's id, or its Clerk user id (user_...)")
        parser.add_argument(
            "--ttl", type=int, default=DEFAULT_TTL_SECONDS, help="lifetime in seconds (default: an hour)"
        )
        parser.add_argument(
            "--issuer",
            default="",
            help=f"the token's iss (default: CLERK_ISSUER, else the sandbox's {dev_issuer.DEV_ISSUER})",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        # The app is installed only with either setting; checked again for a call that imports the class.
        if not (settings.DEBUG or settings.SANDBOX_ENABLED):
            raise CommandError("mint_token is for local work: set DEBUG=true or SANDBOX_ENABLED=true.")
        if not 1 <= options["ttl"] <= 7 * 24 * 3600:
            raise CommandError("--ttl must be between 1 second and 7 days.")
        clerk_user_id = self._clerk_user_id(options["patient"])
        issuer = options["issuer"] or settings.CLERK_ISSUER or dev_issuer.DEV_ISSUER
        # azp must be one of the server's authorized parties; without any configured, the sandbox's default.
        azp = settings.CLERK_AUTHORIZED_PARTIES[0] if settings.CLERK_AUTHORIZED_PARTIES else DEFAULT_AZP
        clerk = ClerkSandbox(dev_key=True)
        clerk.issuer = issuer
        token = clerk.mint(clerk_user_id, ttl=options["ttl"], azp=azp)
        self.stdout.write(token)
        sys.stderr.write(
            f"Token for {clerk_user_id}, valid {options['ttl']} s. The server accepts it (DEBUG=true) with either\n"
            f"  CLERK_JWKS_URL={issuer}/.well-known/jwks.json  (while `make sandbox` runs)\n"
            f'  CLERK_JWT_KEY="$(cat {dev_issuer.KEY_DIR.relative_to(settings.BASE_DIR)}/public.pem)"\n'
            f"and CLERK_ISSUER={issuer} CLERK_AUTHORIZED_PARTIES={azp}\n"
        )

    def _clerk_user_id(self, given: str) -> str:
        if not given.isdigit():
            if not Patient.objects.filter(clerk_user_id=given).exists():
                raise CommandError(f"No patient has the Clerk user id {given!r}.")
            return given
        patient = Patient.objects.filter(pk=int(given)).first()
        if patient is None:
            raise CommandError(f"No patient with id {given}.")
        if not patient.clerk_user_id:
            # Sandbox-synced patients have no Clerk account; give this one a development id so the token has a
            # subject the API maps back to it. Said on stderr: the command changes the database.
            patient.clerk_user_id = f"user_dev_{patient.pk}"
            patient.save(update_fields=["clerk_user_id"])
            sys.stderr.write(f"Patient {patient.pk} had no Clerk user id: set to {patient.clerk_user_id}.\n")
        return patient.clerk_user_id
