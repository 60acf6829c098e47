"""`manage.py export_fhir_cgm --patient ID [--start D] [--end D] [--readings] --output FILE`: the FHIR CGM
transaction Bundle the service route `GET /api/patient-graph/service/fhir/cgm` returns, written to a file."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from connections.models import Patient
from readings import fhir
from readings.glucose_api import DEFAULT_DAYS, MAX_DAYS


def _day(raw: str) -> date:
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise CommandError(f"not a date (YYYY-MM-DD): {raw[:20]!r}") from None


class Command(BaseCommand):
    help = "Write a patient's FHIR CGM Bundle (HL7 FHIR CGM IG) for a period to a file."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--patient", type=int, required=True, help="The patient's id.")
        parser.add_argument("--start", help="First local day (YYYY-MM-DD); default 14 days before --end.")
        parser.add_argument(
            "--end", help="Last local day (YYYY-MM-DD, inclusive); default the patient's today."
        )
        parser.add_argument("--readings", action="store_true", help="Include every reading.")
        parser.add_argument("--subject", help="The receiving system's patient reference, e.g. Patient/123.")
        parser.add_argument("--output", required=True, help="File to write (overwritten).")

    def handle(self, *args: Any, **options: Any) -> None:
        patient = Patient.objects.filter(pk=options["patient"]).first()
        if patient is None:
            raise CommandError(f"no patient {options['patient']}")
        _, today = fhir.default_period(patient.time_zone)
        end = _day(options["end"]) if options["end"] else today
        start = _day(options["start"]) if options["start"] else end - timedelta(days=DEFAULT_DAYS - 1)
        if start > end or (end - start).days + 1 > MAX_DAYS:
            raise CommandError(f"the period must run forwards and last at most {MAX_DAYS} days")
        bundle = fhir.cgm_bundle(
            patient.pk,
            patient.time_zone,
            start,
            end,
            include_readings=options["readings"],
            subject=options["subject"],
        )
        with open(options["output"], "w", encoding="utf-8") as out:
            out.write(fhir.render(bundle, indent=2))
        self.stdout.write(f"wrote {len(bundle['entry'])} entries for {start}..{end} to {options['output']}")
