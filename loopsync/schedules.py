"""Every scheduled job, declared once. `manage.py sync_schedules` makes django-q2 match this list."""

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

    @property
    def schedule_name(self) -> str:
        return PREFIX + self.name


SCHEDULES: tuple[JobSchedule, ...] = (
    JobSchedule(
        name="wearable-sync-daily",
        func="connections.tasks.wearable_sync_daily",
        cron="0 3 * * *",
        description="Junction users: last JUNCTION_SYNC_LOOKBACK_DAYS days of wearable data, one task per user.",
    ),
    JobSchedule(
        name="sync-whoop-data",
        func="connections.tasks.sync_whoop_data",
        # After the night's sleep and recovery are usually scored in the Americas and Europe.
        cron="0 6 * * *",
        description="WHOOP: recovery, strain (cycles), sleep and workouts since the cursor; one task per connection.",
    ),
    JobSchedule(
        name="sync-cgm-readings",
        func="connections.tasks.sync_cgm_readings",
        cron="*/30 * * * *",
        description="Dexcom and FreeStyle Libre: glucose since the newest stored reading; one task per connection.",
    ),
)
