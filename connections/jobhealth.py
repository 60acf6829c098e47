"""The job health page's numbers, from JobRun rows and django-q2's schedules.

Per job: whether it ran when its cron said (on time / running / Late / Missed, like healthchecks.io: a run is
expected at each cron time; none since then is Late within the grace, Missed past it; the grace is Sentry Crons'
`checkin_margin`, SENTRY_CRONS_MARGIN_MINUTES, so the admin and Sentry agree), last run and status, duration median and 95th percentile over 7 days, failure rate over 24 hours
and 7 days (a run fails when its entry point raised or any user failed: status failed or partial), next
run, records stored, and per-day users synced and failed over 30 days. A handful of queries per job,
whatever the number of runs: durations of 7 days (at most a few thousand rows for a 5-minute job) are
read as two columns, the 30-day chart is a GROUP BY day.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from croniter import croniter
from django.conf import settings
from django.db.models import Sum
from django.db.models.functions import TruncDate
from django.utils import timezone
from django.utils.safestring import SafeString
from django_q.models import Schedule

from connections.charts import daily_bars_svg
from connections.models import JobRun, JobRunStatus
from loopsync.schedules import PREFIX, all_schedules

FAILED_STATUSES = (JobRunStatus.FAILED, JobRunStatus.PARTIAL)
CHART_DAYS = 30


class ScheduleState:
    """Did the job run when its cron said? (The last run's own outcome is its status, shown beside.)"""

    ON_TIME = "on_time"
    RUNNING = "running"
    LATE = "late"
    MISSED = "missed"
    NOT_SCHEDULED = "not_scheduled"  # no django-q2 schedule: the worker will never start it
    NEVER_RUN = "never_run"

    LABELS = {
        ON_TIME: "On time",
        RUNNING: "Running",
        LATE: "Late",
        MISSED: "Missed",
        NOT_SCHEDULED: "Not scheduled",
        NEVER_RUN: "Not run yet",
    }
    # Worst first, for the overview's "open problems first".
    SEVERITY = (MISSED, NOT_SCHEDULED, LATE, NEVER_RUN, RUNNING, ON_TIME)


def grace() -> timedelta:
    return timedelta(minutes=settings.SENTRY_CRONS_MARGIN_MINUTES)


def last_due(cron: str, now: datetime) -> datetime:
    """The latest time at or before `now` at which the cron expected a run (UTC)."""
    return croniter(cron, now + timedelta(microseconds=1)).get_prev(datetime)


def next_due(cron: str, now: datetime) -> datetime:
    return croniter(cron, now).get_next(datetime)


def schedule_state(
    cron: str, last_run: JobRun | None, now: datetime, *, scheduled: bool = True
) -> tuple[str, datetime]:
    """(state, the cron time it is judged against).

    The first cron time after the last run's start is the one owed: not yet come, the job is on time (or
    running); come and gone without a run, it is Late within the grace and Missed past it, however many later
    times have passed since (a stopped worker stays Missed, it does not turn Late again at the next half hour).
    A job that never ran is judged from its next time: nothing is owed before the first run (as Sentry Crons,
    which knows a monitor from its first check-in). Any run answers, whoever started it.
    """
    if not scheduled:
        return ScheduleState.NOT_SCHEDULED, last_due(cron, now)
    if last_run is None:
        return ScheduleState.NEVER_RUN, next_due(cron, now)
    owed = next_due(cron, last_run.started_at)
    if owed > now:
        running = last_run.status == JobRunStatus.RUNNING
        return (ScheduleState.RUNNING if running else ScheduleState.ON_TIME), owed
    if now - owed <= grace():
        return ScheduleState.LATE, owed
    return ScheduleState.MISSED, owed


@dataclass
class JobHealthRow:
    name: str
    description: str = ""
    cron: str = ""
    last_run: JobRun | None = None
    next_run: datetime | None = None
    duration_median_s: float | None = None
    duration_p95_s: float | None = None
    runs_24h: int = 0
    runs_7d: int = 0
    failure_rate_24h: float | None = None
    failure_rate_7d: float | None = None
    records_stored_7d: int = 0
    chart: SafeString | None = None
    extra: dict[str, object] = field(default_factory=dict)
    # Late / Missed: from the cron, not from django-q2's next_run (which stays in the past while no worker runs).
    state: str = ScheduleState.ON_TIME
    due_at: datetime | None = None
    missed_after: datetime | None = None
    next_due: datetime | None = None

    @property
    def state_label(self) -> str:
        return ScheduleState.LABELS[self.state]

    @property
    def problem(self) -> bool:
        failed = self.last_run is not None and self.last_run.status in FAILED_STATUSES
        return self.state in (ScheduleState.LATE, ScheduleState.MISSED, ScheduleState.NOT_SCHEDULED) or failed


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile (the value at rank ceil(pct/100 · n) of the sorted values)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def _failure_rate(statuses: list[str]) -> float | None:
    if not statuses:
        return None
    return sum(1 for s in statuses if s in FAILED_STATUSES) / len(statuses)


def job_health(now: datetime | None = None) -> list[JobHealthRow]:
    now = now or timezone.now()
    declared = {s.name: s for s in all_schedules()}
    # Jobs that ran but are no longer (or not yet) declared still show, after the declared ones.
    names = list(declared) + sorted(
        set(JobRun.objects.exclude(job__in=list(declared)).values_list("job", flat=True).distinct())
    )
    next_runs = dict(
        Schedule.objects.filter(name__in=[PREFIX + n for n in names]).values_list("name", "next_run")
    )
    return [
        _row(name, declared.get(name), next_runs.get(PREFIX + name), PREFIX + name in next_runs, now)
        for name in names
    ]


def _row(
    name: str, declared: object, next_run: datetime | None, scheduled: bool, now: datetime
) -> JobHealthRow:
    row = JobHealthRow(
        name=name,
        description=getattr(declared, "description", ""),
        cron=getattr(declared, "cron", ""),
        next_run=next_run,
    )
    runs = JobRun.objects.filter(job=name)
    row.last_run = runs.order_by("-started_at").first()
    week = list(
        runs.filter(started_at__gte=now - timedelta(days=7))
        .exclude(status=JobRunStatus.RUNNING)
        .values_list("started_at", "finished_at", "status", "records_stored")
    )
    durations = [(f - s).total_seconds() for s, f, _, _ in week if f is not None]
    row.duration_median_s = percentile(durations, 50)
    row.duration_p95_s = percentile(durations, 95)
    day = [status for s, _, status, _ in week if s >= now - timedelta(hours=24)]
    row.runs_24h, row.runs_7d = len(day), len(week)
    row.failure_rate_24h = _failure_rate(day)
    row.failure_rate_7d = _failure_rate([status for _, _, status, _ in week])
    row.records_stored_7d = sum(r for _, _, _, r in week)
    row.chart = _chart(runs, now)
    if row.cron:
        row.state, row.due_at = schedule_state(row.cron, row.last_run, now, scheduled=scheduled)
        row.missed_after = row.due_at + grace()
        row.next_due = next_due(row.cron, now)
        if row.state in (ScheduleState.LATE, ScheduleState.MISSED):
            row.next_run = None  # django-q2's next_run is in the past: never shown as if it were to come
    return row


def _chart(runs: object, now: datetime) -> SafeString:
    first = (now - timedelta(days=CHART_DAYS - 1)).date()
    start = datetime.combine(first, datetime.min.time(), tzinfo=now.tzinfo)
    per_day = {
        r["day"]: r
        for r in runs.filter(started_at__gte=start)  # type: ignore[attr-defined]
        .annotate(day=TruncDate("started_at"))
        .values("day")
        .annotate(synced=Sum("users_synced"), failed=Sum("users_failed"))
    }
    days: list[date] = [first + timedelta(days=i) for i in range(CHART_DAYS)]
    return daily_bars_svg(
        days,
        [
            ("users synced", "#38a169", [int((per_day.get(d) or {}).get("synced") or 0) for d in days]),
            ("users failed", "#e53e3e", [int((per_day.get(d) or {}).get("failed") or 0) for d in days]),
        ],
        title=f"Last {CHART_DAYS} days",
    )


@dataclass
class ProviderGateRow:
    """A provider's shared budgets (use now) and circuit breaker, for the job health page."""

    provider: str
    budgets: list[object] = field(default_factory=list)
    breaker: object | None = None


def provider_gates() -> list[ProviderGateRow]:
    from connections.budgets import budget_use
    from connections.models import ProviderBreaker
    from connections.providers.registry import PROVIDERS

    breakers = {b.provider: b for b in ProviderBreaker.objects.all()}
    uses = budget_use()
    return [
        ProviderGateRow(
            provider=key,
            budgets=[u for u in uses if u.provider == key],
            breaker=breakers.get(key),
        )
        for key in PROVIDERS
    ]
