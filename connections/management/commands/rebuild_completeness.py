from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction

from readings.completeness import rebuild_completeness
from readings.models import DataCompleteness


class Command(BaseCommand):
    help = (
        "Recount data completeness (patient_data_completeness) from the raw readings: once after deploying "
        "issue 16, for data stored before completeness was kept. Idempotent; ingests keep it from then on."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        with transaction.atomic():
            rebuild_completeness()
        self.stdout.write(f"completeness rows: {DataCompleteness.objects.count()}")
