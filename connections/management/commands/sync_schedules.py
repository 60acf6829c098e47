from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction
from django_q.models import Schedule

from loopsync.schedules import PREFIX, all_schedules


class Command(BaseCommand):
    help = "Create or update the django-q2 schedules of every job (loopsync/schedules.py; idempotent)."

    def handle(self, *args: Any, **options: Any) -> None:
        created = updated = removed = 0
        with transaction.atomic():
            # Lock the schedule table's rows we own: two deploys running this at once serialise here.
            existing = {
                s.name: s for s in Schedule.objects.select_for_update().filter(name__startswith=PREFIX)
            }
            declared = all_schedules()
            for job in declared:
                # django-q2 keeps positional arguments as the text of a tuple (it literal_evals them).
                args = repr(job.args) if job.args else None
                schedule = existing.pop(job.schedule_name, None)
                if schedule is None:
                    Schedule.objects.create(
                        name=job.schedule_name,
                        func=job.func,
                        args=args,
                        schedule_type=Schedule.CRON,
                        cron=job.cron,
                        repeats=-1,
                    )
                    created += 1
                    continue
                if (schedule.func, schedule.args, schedule.cron, schedule.schedule_type) != (
                    job.func,
                    args,
                    job.cron,
                    Schedule.CRON,
                ):
                    schedule.func, schedule.args = job.func, args
                    schedule.cron, schedule.schedule_type = job.cron, Schedule.CRON
                    # django-q2 computes next_run from cron only on creation.
                    schedule.next_run = schedule.calculate_next_run()
                    schedule.save()
                    updated += 1
            for stale in existing.values():
                stale.delete()
                removed += 1
        self.stdout.write(
            f"schedules: {created} created, {updated} updated, {removed} removed, {len(declared)} declared"
        )
