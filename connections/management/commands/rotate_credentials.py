from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction

from connections.models import ProviderCredential


class Command(BaseCommand):
    help = "Re-encrypt every stored credential with the first FIELD_ENCRYPTION_KEYS key (after adding a new key first)."

    def handle(self, *args: Any, **options: Any) -> None:
        rotated = 0
        for pk in ProviderCredential.objects.values_list("pk", flat=True).iterator():
            with transaction.atomic():
                # Locked like a token refresh, so a concurrent refresh is never overwritten with older tokens.
                credential = ProviderCredential.objects.select_for_update().get(pk=pk)
                credential.save()  # decrypted with any key on read, encrypted with the first on save
            rotated += 1
        self.stdout.write(f"credentials re-encrypted: {rotated}")
