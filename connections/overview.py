"""The ops overview: connections by health and provider, every scheduled job's state and last run, open problems
first. Read-only; a few grouped queries whatever the number of connections."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import Count

from connections.health import Health, with_health
from connections.jobhealth import FAILED_STATUSES, JobHealthRow, ScheduleState, job_health, schedule_state
from connections.models import Connection, ConnectionStatus, JobRun
from connections.providers.registry import PROVIDERS
from connections.tokens import MUST_RECONNECT
from loopsync.schedules import all_schedules

HEALTH_ORDER = (Health.FAILING, Health.STALE, Health.INACTIVE, Health.OK)
PROBLEM_CONNECTIONS_SHOWN = 20


@dataclass
class ProviderCounts:
    key: str
    label: str
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def cells(self) -> list[int]:
        return [self.counts.get(str(h), 0) for h in HEALTH_ORDER]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class Overview:
    providers: list[ProviderCounts]
    totals: ProviderCounts
    needs_reconnect: int
    problem_connections: list[Connection]
    jobs: list[JobHealthRow]

    @property
    def problem_jobs(self) -> list[JobHealthRow]:
        return [j for j in self.jobs if j.problem]


def health_counts(now: datetime) -> tuple[list[ProviderCounts], ProviderCounts]:
    """Connections per provider and health: one GROUP BY over the health CASE."""
    rows = (
        with_health(Connection.objects.all(), now)
        .values("provider", "health")
        .annotate(n=Count("id"))
        .order_by()
    )
    by_provider = {key: ProviderCounts(key, provider.label) for key, provider in PROVIDERS.items()}
    totals = ProviderCounts("", "All providers")
    for row in rows:
        counts = by_provider.setdefault(row["provider"], ProviderCounts(row["provider"], row["provider"]))
        counts.counts[row["health"]] = counts.counts.get(row["health"], 0) + row["n"]
        totals.counts[row["health"]] = totals.counts.get(row["health"], 0) + row["n"]
    return list(by_provider.values()), totals


def problem_connections(now: datetime) -> list[Connection]:
    """Failing, then stale, then revoked (credentials refused) connections; the newest problems first."""
    base = with_health(Connection.objects.select_related("patient"), now)
    failing = list(
        base.filter(health=Health.FAILING).order_by("-last_attempt_at", "-id")[:PROBLEM_CONNECTIONS_SHOWN]
    )
    stale = list(
        base.filter(health=Health.STALE).order_by("last_success_at", "-id")[:PROBLEM_CONNECTIONS_SHOWN]
    )
    revoked = list(
        base.filter(status=ConnectionStatus.INACTIVE, status_reason__contains=MUST_RECONNECT).order_by(
            "-updated_at"
        )[:PROBLEM_CONNECTIONS_SHOWN]
    )
    return (failing + stale + revoked)[:PROBLEM_CONNECTIONS_SHOWN]


def ops_overview(now: datetime) -> Overview:
    providers, totals = health_counts(now)
    severity = {state: rank for rank, state in enumerate(ScheduleState.SEVERITY)}
    jobs = sorted(job_health(now), key=lambda j: (not j.problem, severity.get(j.state, 99)))
    return Overview(
        providers=providers,
        totals=totals,
        needs_reconnect=Connection.objects.filter(
            status=ConnectionStatus.INACTIVE, status_reason__contains=MUST_RECONNECT
        ).count(),
        problem_connections=problem_connections(now),
        jobs=jobs,
    )


@dataclass
class IndexSummary:
    failing: int
    stale: int
    late_jobs: list[str]
    missed_jobs: list[str]
    failed_jobs: list[str]


def index_summary(now: datetime) -> IndexSummary:
    """The admin index's one-line summary: cheap (one GROUP BY, one query per job)."""
    _, totals = health_counts(now)
    from django_q.models import Schedule

    from loopsync.schedules import PREFIX

    scheduled = set(Schedule.objects.filter(name__startswith=PREFIX).values_list("name", flat=True))
    late, missed, failed = [], [], []
    for job in all_schedules():
        last = JobRun.objects.filter(job=job.name).order_by("-started_at").first()
        state, _ = schedule_state(job.cron, last, now, scheduled=job.schedule_name in scheduled)
        if state == ScheduleState.LATE:
            late.append(job.name)
        elif state in (ScheduleState.MISSED, ScheduleState.NOT_SCHEDULED):
            missed.append(job.name)
        if last is not None and last.status in FAILED_STATUSES:
            failed.append(job.name)
    return IndexSummary(
        failing=totals.counts.get(str(Health.FAILING), 0),
        stale=totals.counts.get(str(Health.STALE), 0),
        late_jobs=late,
        missed_jobs=missed,
        failed_jobs=failed,
    )
