"""Every scheduled job, declared once. `manage.py sync_schedules` makes django-q2 match `all_schedules()`.

The provider jobs come from the provider registry (each provider names its job and cron); the readings jobs
are declared here.
"""

from __future__ import annotations

from dataclasses import dataclass

# Schedules this project owns carry the prefix; others (added by hand in the admin) are left alone.
PREFIX = "loopsync."


@dataclass(frozen=True)
class JobSchedule:
    name: str
    func: str
    cron: str
    description: str
    args: tuple[str, ...] = ()

    @property
    def schedule_name(self) -> str:
        return PREFIX + self.name


READINGS_SCHEDULES: tuple[JobSchedule, ...] = (
    # After the 03:00 fan-out has had 90 minutes to store the day: the marks its batches left are consumed
    # in one pass. A user synced later (retries, a long queue) is picked up the next day; its daily
    # avg/min/max are already exact (store_batch computes them inline), only the rolling values wait.
    JobSchedule(
        name="aggregate-wearable-data",
        func="readings.tasks.aggregate_wearable_data",
        cron="30 4 * * *",
        description="Daily stats and rolling 7/30-day averages of the days touched since the last run.",
    ),
    # Sunday 02:00, before the 03:00 sync: dropping a partition takes a short exclusive lock on the parent
    # table, best taken while nothing writes; the duplicates' days it marks are aggregated at 04:30.
    JobSchedule(
        name="cleanup-wearable-data",
        func="readings.tasks.cleanup_wearable_data",
        cron="0 2 * * 0",
        description="Weekly: partitions ahead, raw readings past RAW_READING_RETENTION_DAYS, orphans, duplicates.",
    ),
)


WEBHOOK_SCHEDULES: tuple[JobSchedule, ...] = (
    # The inbox row is the durable record of a delivery; this picks up the ones whose task was lost (a worker
    # killed between the inbox write and processing), failed ones, and users who appeared since.
    JobSchedule(
        name="process-webhook-inbox",
        func="connections.tasks.process_webhook_inbox",
        cron="* * * * *",
        description="Webhook inbox events still unprocessed after WEBHOOK_PENDING_SECONDS, failed or unmatched.",
    ),
)


def provider_schedules() -> tuple[JobSchedule, ...]:
    from connections.providers.registry import provider_jobs

    return tuple(
        JobSchedule(
            name=job.name,
            func="connections.tasks.sync_job",
            cron=job.cron,
            description=job.description,
            args=(job.name,),
        )
        for job in provider_jobs().values()
    )


def all_schedules() -> tuple[JobSchedule, ...]:
    return (*provider_schedules(), *READINGS_SCHEDULES, *WEBHOOK_SCHEDULES)
