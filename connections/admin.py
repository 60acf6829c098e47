"""The ops admin: connection health, Force resync / Deactivate / Reactivate, patients, the sync audit trail,
job runs and the job health page.

Thin by design: every write goes through `connections.actions`, which owns the transaction and the audit
row. Permissions: `connections.force_resync_connection` and `connections.deactivate_connection` (groups
"support" = view, "ops" = view + both, created by migration 0003) guard the buttons, the bulk actions and
the URLs alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Avg, Max, Min, Q, QuerySet
from django.db.models.functions import TruncHour
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.utils.formats import date_format
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from connections import actions

# Issue 16's admin (the completeness filter and strips; the gap ledger, registered on import).
from connections.admin_history import CompletenessFilter, completeness_strips
from connections.charts import Bucket, time_series_svg
from connections.health import Health, data_behind, health_of, health_q, with_health
from connections.jobhealth import job_health, provider_gates
from connections.models import Connection, JobHealth, JobRun, Patient, SyncEvent
from loopsync.sentry import scrub_text

RESYNC_PERMISSION = "connections.force_resync_connection"
DEACTIVATE_PERMISSION = "connections.deactivate_connection"
CHART_DAYS = 7
ERROR_PREVIEW = 90


class CappedCountPaginator(Paginator):
    """Counts at most `cap` rows: `SELECT count(*) FROM (… LIMIT cap+1)`, cheap on a table of millions."""

    cap = 10_000

    @cached_property
    def count(self) -> int:
        return self.object_list[: self.cap + 1].count()


def health_badge(health: str) -> str:
    return format_html('<span class="ls-health ls-health-{}">{}</span>', health, Health(health).label)


def short_error(text: str) -> str:
    """The stored error is scrubbed when written; scrub again for display (older rows, other writers)."""
    text = scrub_text(text or "").strip().splitlines()[-1:] or [""]
    line = text[0]
    return line if len(line) <= ERROR_PREVIEW else line[: ERROR_PREVIEW - 1] + "…"


def is_ascii_number(term: str) -> bool:
    """Whether a search term can be an id: str.isdigit() is also true of "²" or "٣", which int() refuses."""
    return term.isascii() and term.isdigit()


class RefusesNulMixin:
    """A changelist whose query string carries NUL is Django's "incorrect lookup parameters" redirect (the
    unfiltered list, flagged), not a 500: PostgreSQL refuses NUL in text, so `?provider=%00` failed the query.
    """

    def get_changelist_instance(self, request: HttpRequest) -> ChangeList:
        if any("\x00" in key or any("\x00" in v for v in values) for key, values in request.GET.lists()):
            raise IncorrectLookupParameters("a NUL character in the query string")
        return super().get_changelist_instance(request)  # type: ignore[misc]


HEALTH_CSS = """
.ls-health{display:inline-block;padding:1px 8px;border-radius:9px;font-weight:600;font-size:11px;color:#fff}
.ls-health-ok{background:#2f855a}.ls-health-stale{background:#b7791f}
.ls-health-failing{background:#c53030}.ls-health-inactive{background:#718096}
.ls-chart{display:block;margin:8px 0 16px;max-width:100%;height:auto}
table.ls-table{width:100%;margin-bottom:16px}table.ls-table td,table.ls-table th{padding:4px 8px}
.ls-ops-form{display:inline}.ls-ops-form button{cursor:pointer}
"""


# --- Connections ------------------------------------------------------------------------------------------


class HealthFilter(admin.SimpleListFilter):
    title = "health"
    parameter_name = "health"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(str(value), str(label)) for value, label in Health.choices]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Connection]) -> QuerySet[Connection]:
        if self.value() in Health.values:
            return queryset.filter(health_q(self.value(), timezone.now()))
        return queryset


@dataclass(frozen=True)
class ConnectionOp:
    """One ops operation, shared by its button, its URL and its bulk action."""

    name: str
    verb: str
    permission: str
    run: Callable[[Connection, str, str], bool]
    applies: Callable[[Connection], bool]
    asks_reason: bool = False
    danger: bool = False


def _resync(connection: Connection, actor: str, reason: str) -> bool:
    return actions.do_request_resync(connection, actor=actor) is not None


def _deactivate(connection: Connection, actor: str, reason: str) -> bool:
    return actions.do_deactivate_connection(
        connection, reason=reason or f"deactivated by {actor} in the admin", actor=actor
    )


def _reactivate(connection: Connection, actor: str, reason: str) -> bool:
    return actions.do_reactivate_connection(connection, actor=actor)


OPS: dict[str, ConnectionOp] = {
    "resync": ConnectionOp(
        "resync", "Force resync", RESYNC_PERMISSION, _resync, lambda c: c.status == "active"
    ),
    "deactivate": ConnectionOp(
        "deactivate",
        "Deactivate",
        DEACTIVATE_PERMISSION,
        _deactivate,
        lambda c: c.status == "active",
        asks_reason=True,
        danger=True,
    ),
    "reactivate": ConnectionOp(
        "reactivate", "Reactivate", DEACTIVATE_PERMISSION, _reactivate, lambda c: c.status != "active"
    ),
}


@admin.register(Connection)
class ConnectionAdmin(RefusesNulMixin, admin.ModelAdmin):
    list_display = (
        "id",
        "patient_link",
        "provider",
        "status",
        "health_column",
        "failure_streak",
        "last_error_column",
        "last_success_at",
        "newest_reading",
        "backfill_column",
    )
    list_display_links = ("id",)
    list_filter = (HealthFilter, "provider", "status", CompletenessFilter)
    search_fields = ("patient__junction_user_id", "patient__clerk_user_id")
    search_help_text = "Exact Junction user id, Clerk user id, patient id or connection id."
    list_select_related = ("patient", "backfill")
    show_full_result_count = False
    list_per_page = 100
    ordering = ("-id",)
    actions = ("force_resync_selected", "deactivate_selected", "reactivate_selected")
    fields = (
        "patient",
        "provider",
        "status",
        "status_reason",
        "last_success_at",
        "last_attempt_at",
        "last_sync_at",
        "latest_reading_at",
        "failure_streak",
        "last_error_scrubbed",
        "backfill_column",
        "created_at",
        "updated_at",
    )
    readonly_fields = fields
    change_form_template = "admin/connections/connection/change_form.html"
    change_list_template = "admin/connections/connection/change_list.html"

    # Connections are created by syncs and onboarding, and their cursor is the sync's to move: the admin
    # only views them and acts through the ops operations.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_force_resync_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(RESYNC_PERMISSION)

    def has_deactivate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(DEACTIVATE_PERMISSION)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Connection]:
        return with_health(super().get_queryset(request), timezone.now())

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Connection], search_term: str
    ) -> tuple[QuerySet[Connection], bool]:
        """Exact identifiers only: the unique indexes answer at once, and no patient is found by a fragment."""
        term = search_term.strip()
        if not term:
            return queryset, False
        q = Q(patient__junction_user_id=term) | Q(patient__clerk_user_id=term)
        if is_ascii_number(term):
            q |= Q(patient_id=int(term)) | Q(pk=int(term))
        return queryset.filter(q), False

    @admin.display(description="patient", ordering="patient_id")
    def patient_link(self, obj: Connection) -> str:
        url = reverse("admin:connections_patient_change", args=[obj.patient_id])
        return format_html('<a href="{}">{}</a>', url, obj.patient)

    @admin.display(description="health", ordering="health")
    def health_column(self, obj: Connection) -> str:
        return health_badge(obj.health)  # type: ignore[attr-defined]

    @admin.display(description="newest reading", ordering="latest_reading_at")
    def newest_reading(self, obj: Connection) -> str:
        """The newest reading's time; "behind" when it is older than the provider's usual delay allows."""
        shown = (
            date_format(timezone.localtime(obj.latest_reading_at), "DATETIME_FORMAT")
            if obj.latest_reading_at
            else "-"
        )
        if data_behind(obj, timezone.now()):
            return format_html('{} <span class="ls-health ls-health-stale">behind</span>', shown)
        return shown

    @admin.display(description="backfill")
    def backfill_column(self, obj: Connection) -> str:
        """Pending, running with % done, done, or failed with its (scrubbed) reason (connections/backfill.py)."""
        backfill = getattr(obj, "backfill", None)
        return scrub_text(backfill.label) if backfill is not None else "-"

    @admin.display(description="last error")
    def last_error_column(self, obj: Connection) -> str:
        return short_error(obj.last_error)

    @admin.display(description="last error")
    def last_error_scrubbed(self, obj: Connection) -> str:
        return scrub_text(obj.last_error)

    # -- the buttons: POST only, CSRF (admin_view), a confirmation page, permission per operation ----------

    def get_urls(self) -> list[Any]:
        info = self.opts.app_label, self.opts.model_name
        return [
            path(
                f"<path:object_id>/{name}/",
                self.admin_site.admin_view(self.operation_view),
                {"operation": name},
                name=f"{info[0]}_{info[1]}_{name}",
            )
            for name in OPS
        ] + super().get_urls()

    @method_decorator(require_POST)
    def operation_view(self, request: HttpRequest, object_id: str, operation: str) -> HttpResponse:
        op = OPS[operation]
        if not request.user.has_perm(op.permission):
            raise PermissionDenied
        connection = self.get_object(request, unquote(object_id))
        if connection is None:
            raise Http404("no such connection")
        change_url = reverse("admin:connections_connection_change", args=[connection.pk])
        if not op.applies(connection):
            self.message_user(
                request,
                f"{op.verb}: not possible while the connection is {connection.status}.",
                messages.WARNING,
            )
            return HttpResponseRedirect(change_url)
        if request.POST.get("confirm") != "yes":
            return self._confirmation(request, op, [connection], action_url=request.path)
        done = op.run(connection, request.user.get_username(), request.POST.get("reason", "").strip())
        if done:
            self.message_user(request, f"{op.verb}: done for {connection}.", messages.SUCCESS)
        else:
            self.message_user(request, f"{op.verb}: nothing to do for {connection}.", messages.WARNING)
        return HttpResponseRedirect(change_url)

    def _confirmation(
        self,
        request: HttpRequest,
        op: ConnectionOp,
        connections: list[Connection],
        *,
        action_url: str,
        bulk_action: str = "",
        skipped: int = 0,
    ) -> TemplateResponse:
        context = {
            **self.admin_site.each_context(request),
            "title": f"{op.verb}: are you sure?",
            "opts": self.opts,
            "op": op,
            "connections": connections[:50],
            "more": max(len(connections) - 50, 0),
            "count": len(connections),
            "skipped": skipped,
            "action_url": action_url,
            "bulk_action": bulk_action,
            # With "select all" the re-post acts on the filtered queryset: one id keeps Django's action branch.
            "selected": [str(c.pk) for c in connections]
            if request.POST.get("select_across", "0") != "1"
            else [str(connections[0].pk)],
            "select_across": request.POST.get("select_across", "0"),
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
            "health_css": HEALTH_CSS,
        }
        return TemplateResponse(request, "admin/connections/connection/confirm_operation.html", context)

    # -- the same operations as bulk actions -------------------------------------------------------------

    def _bulk(self, request: HttpRequest, queryset: QuerySet[Connection], op: ConnectionOp) -> Any:
        if not request.user.has_perm(op.permission):
            raise PermissionDenied
        connections = list(queryset.select_related(None).order_by("pk"))
        applicable = [c for c in connections if op.applies(c)]
        skipped = len(connections) - len(applicable)
        if not applicable:
            self.message_user(
                request,
                f"{op.verb}: none of the {len(connections)} selected connection(s) qualify.",
                messages.WARNING,
            )
            return None
        if request.POST.get("confirm") != "yes":
            return self._confirmation(
                request, op, applicable, action_url="", bulk_action=f"{op.name}_selected", skipped=skipped
            )
        actor = request.user.get_username()
        reason = request.POST.get("reason", "").strip()
        touched = sum(1 for c in applicable if op.run(c, actor, reason))
        self.message_user(
            request,
            f"{op.verb}: {touched} connection(s) touched"
            + (f", {len(connections) - touched} left as they were." if len(connections) > touched else "."),
            messages.SUCCESS if touched else messages.WARNING,
        )
        return None

    @admin.action(description="Force resync selected connections", permissions=["force_resync"])
    def force_resync_selected(self, request: HttpRequest, queryset: QuerySet[Connection]) -> Any:
        return self._bulk(request, queryset, OPS["resync"])

    @admin.action(description="Deactivate selected connections", permissions=["deactivate"])
    def deactivate_selected(self, request: HttpRequest, queryset: QuerySet[Connection]) -> Any:
        return self._bulk(request, queryset, OPS["deactivate"])

    @admin.action(description="Reactivate selected connections", permissions=["deactivate"])
    def reactivate_selected(self, request: HttpRequest, queryset: QuerySet[Connection]) -> Any:
        return self._bulk(request, queryset, OPS["reactivate"])

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        return super().changelist_view(request, {**(extra_context or {}), "health_css": HEALTH_CSS})

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> Any:
        connection = self.get_object(request, unquote(object_id))
        extra: dict[str, Any] = {"health_css": HEALTH_CSS}
        if connection is not None:
            user = request.user
            extra.update(
                health=health_badge(health_of(connection, timezone.now())),
                operations=[
                    {
                        "op": op,
                        "url": reverse(f"admin:connections_connection_{name}", args=[connection.pk]),
                    }
                    for name, op in OPS.items()
                    if user.has_perm(op.permission) and op.applies(connection)
                ],
                recent_events=SyncEvent.objects.filter(connection=connection).order_by("-started_at")[:20],
                events_url=reverse("admin:connections_syncevent_changelist")
                + f"?connection__id__exact={connection.pk}",
            )
        return super().change_view(request, object_id, form_url, {**extra, **(extra_context or {})})


# --- Patients ---------------------------------------------------------------------------------------------


class ConnectionInline(admin.TabularInline):
    model = Connection
    fields = (
        "link",
        "provider",
        "status",
        "health",
        "failure_streak",
        "last_success_at",
        "latest_reading_at",
    )
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="connection")
    def link(self, obj: Connection) -> str:
        url = reverse("admin:connections_connection_change", args=[obj.pk])
        return format_html('<a href="{}">{}</a>', url, obj)

    @admin.display(description="health")
    def health(self, obj: Connection) -> str:
        return health_badge(health_of(obj, timezone.now()))


def hourly_buckets(rows: QuerySet[Any], field: str) -> list[Bucket]:
    """Hourly mean/min/max of `field`, aggregated by the database."""
    return [
        Bucket(r["hour"], r["avg"], r["low"], r["high"])
        for r in rows.annotate(hour=TruncHour("measured_at"))
        .values("hour")
        .annotate(avg=Avg(field), low=Min(field), high=Max(field))
        .order_by("hour")
    ]


def patient_charts(patient: Patient, now: datetime) -> dict[str, Any]:
    from readings.models import GlucoseReading, WearableReading

    start = (now - timedelta(days=CHART_DAYS)).replace(minute=0, second=0, microsecond=0)
    glucose = hourly_buckets(
        GlucoseReading.objects.filter(patient=patient, measured_at__gte=start, measured_at__lte=now),
        "value_mg_dl",
    )
    heart_rate = hourly_buckets(
        WearableReading.objects.filter(
            patient=patient, metric="heart_rate", measured_at__gte=start, measured_at__lte=now
        ),
        "value",
    )
    return {
        "glucose_chart": time_series_svg(
            glucose,
            start=start,
            end=now,
            title=f"Glucose, last {CHART_DAYS} days",
            unit="mg/dL",
            color="#6b46c1",
            target=(70.0, 180.0),
        ),
        "heart_rate_chart": time_series_svg(
            heart_rate,
            start=start,
            end=now,
            title=f"Heart rate, last {CHART_DAYS} days",
            unit="bpm",
            color="#c53030",
        ),
    }


def daily_stats_table(patient: Patient, now: datetime) -> dict[str, Any]:
    """The last 7 local days of daily statistics: one row per metric, the day's mean per column."""
    from readings.models import DailyStat

    first = (now - timedelta(days=CHART_DAYS - 1)).date()
    days = [first + timedelta(days=i) for i in range(CHART_DAYS)]
    rows: dict[str, dict[str, Any]] = {}
    for stat in DailyStat.objects.filter(patient=patient, day__gte=first - timedelta(days=1)).order_by(
        "metric", "day"
    ):
        row = rows.setdefault(
            stat.metric, {"metric": stat.metric, "by_day": {}, "avg_7d": None, "avg_30d": None}
        )
        row["by_day"][stat.day] = stat.avg
        row["avg_7d"], row["avg_30d"] = stat.avg_7d, stat.avg_30d
    return {
        "stat_days": days,
        "stat_rows": [
            {**row, "cells": [row["by_day"].get(day) for day in days]} for _, row in sorted(rows.items())
        ],
    }


@admin.register(Patient)
class PatientAdmin(RefusesNulMixin, admin.ModelAdmin):
    list_display = ("id", "junction_user_id", "clerk_user_id", "time_zone", "created_at")
    search_fields = ("junction_user_id", "clerk_user_id")
    search_help_text = "Exact Junction user id, Clerk user id or patient id."
    show_full_result_count = False
    ordering = ("-id",)
    fields = ("junction_user_id", "clerk_user_id", "time_zone", "created_at")
    readonly_fields = ("created_at",)
    inlines = (ConnectionInline,)
    change_form_template = "admin/connections/patient/change_form.html"

    # Patients are created by syncs and onboarding; deleting one would cascade over its readings.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Patient], search_term: str
    ) -> tuple[QuerySet[Patient], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        q = Q(junction_user_id=term) | Q(clerk_user_id=term)
        if is_ascii_number(term):
            q |= Q(pk=int(term))
        return queryset.filter(q), False

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> Any:
        patient = self.get_object(request, unquote(object_id))
        extra: dict[str, Any] = {"health_css": HEALTH_CSS}
        if patient is not None:
            now = timezone.now()
            extra.update(patient_charts(patient, now))
            extra.update(daily_stats_table(patient, now))
            extra["completeness_strips"] = completeness_strips(patient, now)
            extra["recent_events"] = SyncEvent.objects.filter(patient=patient).order_by("-started_at")[:20]
            extra["events_url"] = (
                reverse("admin:connections_syncevent_changelist") + f"?patient__id__exact={patient.pk}"
            )
        return super().change_view(request, object_id, form_url, {**extra, **(extra_context or {})})


# --- The sync audit trail -----------------------------------------------------------------------------------


class ReadOnlyAdmin(RefusesNulMixin, admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(SyncEvent)
class SyncEventAdmin(ReadOnlyAdmin):
    list_display = (
        "started_at",
        "kind",
        "provider",
        "trigger",
        "status",
        "actor",
        "patient_id",
        "connection_id",
        "records_stored",
        "duration",
        "error_preview",
    )
    list_filter = ("trigger", "status", "kind", "provider", ("started_at", admin.DateFieldListFilter))
    # An audit trail of millions: no full count, no joins in the list.
    paginator = CappedCountPaginator
    show_full_result_count = False
    list_per_page = 100
    ordering = ("-started_at",)
    exclude = ("error",)
    readonly_fields = ("error_scrubbed",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[SyncEvent]:
        return super().get_queryset(request).defer("error")

    @admin.display(description="duration (s)")
    def duration(self, obj: SyncEvent) -> str:
        seconds = obj.duration_seconds
        return "" if seconds is None else f"{seconds:.1f}"

    @admin.display(description="error")
    def error_preview(self, obj: SyncEvent) -> str:
        return short_error(obj.error)

    @admin.display(description="error")
    def error_scrubbed(self, obj: SyncEvent) -> str:
        return scrub_text(obj.error)


# --- Jobs ---------------------------------------------------------------------------------------------------


@admin.register(JobRun)
class JobRunAdmin(ReadOnlyAdmin):
    list_display = (
        "job",
        "status",
        "started_at",
        "finished_at",
        "duration",
        "users_expected",
        "users_synced",
        "users_failed",
        "users_skipped",
        "records_stored",
    )
    list_filter = ("job", "status", ("started_at", admin.DateFieldListFilter))
    paginator = CappedCountPaginator
    show_full_result_count = False
    ordering = ("-started_at",)

    @admin.display(description="duration (s)")
    def duration(self, obj: JobRun) -> str:
        seconds = obj.duration_seconds
        return "" if seconds is None else f"{seconds:.1f}"


@admin.register(JobHealth)
class JobHealthAdmin(ReadOnlyAdmin):
    """The job health page: the changelist of this proxy is the dashboard."""

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("connections.view_jobhealth") or request.user.has_perm(
            "connections.view_jobrun"
        )

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "title": "Job health",
            "opts": self.opts,
            "jobs": job_health(),
            "gates": provider_gates(),
            "runs_url": reverse("admin:connections_jobrun_changelist"),
            "health_css": HEALTH_CSS,
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/connections/jobhealth/dashboard.html", context)
