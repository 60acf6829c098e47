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
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Avg, Case, IntegerField, Max, Min, QuerySet, Value, When
from django.db.models.functions import TruncHour
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.timesince import timesince, timeuntil
from django.views.decorators.http import require_POST
from django_q import admin as q_admin
from django_q.models import Failure, Success, Task

from connections import actions

# Issue 16's admin (the completeness filter and strips; the gap ledger, registered on import).
from connections.admin_history import CompletenessFilter, completeness_strips
from connections.charts import Bucket, time_series_svg
from connections.freshness import arrivals, connection_freshness
from connections.health import Health, data_behind, health_of, health_q, needs_reconnect, with_health
from connections.jobhealth import job_health, provider_gates
from connections.models import (
    Connection,
    JobHealth,
    JobRun,
    Patient,
    Provider,
    SyncEvent,
    SyncEventKind,
    SyncRequest,
    SyncStatus,
)
from connections.oauth import connect_link, oauth_providers
from connections.overview import ops_overview
from loopsync.sentry import scrub_text
from readings.agp_report import agp_report_context, with_glucose_14d
from readings.models import RoutePriority

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


def relative_time(when: datetime | None, now: datetime | None = None) -> str:
    """ "3 hours ago" (one unit, short), the exact UTC time in the title: the age is what ops compare at a glance."""
    if when is None:
        return "-"
    now = now or timezone.now()
    exact = when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if abs((now - when).total_seconds()) < 60:
        text = "just now"
    elif when <= now:
        text = f"{timesince(when, now, depth=1)} ago"
    else:
        text = f"in {timeuntil(when, now, depth=1)}"
    return format_html('<time datetime="{}" title="{}">{}</time>', when.isoformat(), exact, text)


# Worst first: what the list's default order and its health column sort by.
HEALTH_SEVERITY = (Health.FAILING, Health.STALE, Health.INACTIVE, Health.OK)


def with_health_rank(queryset: QuerySet[Connection]) -> QuerySet[Connection]:
    """`health_rank` from the `health` annotation (with_health): failing 0, stale 1, inactive 2, ok 3."""
    return queryset.annotate(
        health_rank=Case(
            *(When(health=str(state), then=Value(rank)) for rank, state in enumerate(HEALTH_SEVERITY)),
            default=Value(len(HEALTH_SEVERITY)),
            output_field=IntegerField(),
        )
    )


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
#result_list td,#result_list th{white-space:nowrap}
#result_list .field-last_error_column .ls-error{display:inline-block;max-width:26em;overflow:hidden;
text-overflow:ellipsis;vertical-align:bottom}
@media (max-width:1500px){#result_list .field-last_error_column .ls-error{max-width:12em}}
@media (max-width:1100px){#result_list .column-last_error_column,#result_list .field-last_error_column,
#result_list .column-failure_streak_column,#result_list .field-failure_streak_column,
#result_list .column-tbr_14d,#result_list .field-tbr_14d,#result_list .column-active_14d,
#result_list .field-active_14d{display:none}}
@media (max-width:900px){#result_list .column-newest_reading,#result_list .field-newest_reading,
#result_list .column-provider,#result_list .field-provider{display:none}}
.ls-ops-form{display:inline}.ls-ops-form button{cursor:pointer}
.ls-status{font-weight:600}.ls-status-success{color:#2f855a}.ls-status-failed{color:#c53030}
.ls-status-partial{color:#b7791f}.ls-status-running,.ls-status-queued{color:#2b6cb0}
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
    # What the message says once it ran: a resync is only queued then, its result comes later.
    done: str = "done"


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
        "resync",
        "Force resync",
        RESYNC_PERMISSION,
        _resync,
        lambda c: c.status == "active",
        done="queued",
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


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}%"


@admin.register(Connection)
class ConnectionAdmin(RefusesNulMixin, admin.ModelAdmin):
    # Health second, so it stays on screen whatever the width; the responsive CSS (CONNECTION_LIST_CSS) drops
    # the least needed columns first on narrow screens.
    list_display = (
        "id",
        "health_column",
        "patient_link",
        "provider",
        "failure_streak_column",
        "last_success_column",
        "newest_reading",
        "tir_14d",
        "tbr_14d",
        "active_14d",
        "last_error_column",
        "backfill_column",
    )
    list_display_links = ("id",)
    list_filter = (HealthFilter, "provider", "status", CompletenessFilter)
    # Prefixes (istartswith): the start of a Junction or Clerk user id, of a connection id; a patient id exactly.
    search_fields = ("^patient__junction_user_id", "^patient__clerk_user_id", "^id", "=patient__id")
    search_help_text = (
        "The start of a Junction user id, Clerk user id or connection id; or a patient id. "
        "Times are relative; hover one for the exact UTC time."
    )
    list_select_related = ("patient", "backfill")
    show_full_result_count = False
    list_per_page = 100

    def get_ordering(self, request: HttpRequest) -> tuple[str, ...]:
        """Open problems first: failing, stale, inactive, ok (a CASE rank, not the alphabet), newest first
        within. A method, since the rank is an annotation (get_queryset) the `ordering` check cannot see; and
        only for the list, since other admins' forms order their connection choices by this too, unannotated."""
        match = getattr(request, "resolver_match", None)
        if match is not None and match.url_name == "connections_connection_changelist":
            return ("health_rank", "-id")
        return ("-id",)

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
        # Annotated before the admin's ordering is applied, since the default order is by the annotation.
        now = timezone.now()
        queryset = with_health_rank(
            with_glucose_14d(with_health(self.model._default_manager.get_queryset(), now), now.date())
        )
        ordering = self.get_ordering(request)
        return queryset.order_by(*ordering) if ordering else queryset

    # Triage by glucose (issue 15): the patient's last 14 days, from readings.agp_report's annotations.
    @admin.display(description="TIR 14d", ordering="glucose_tir_14d")
    def tir_14d(self, obj: Connection) -> str:
        return _percent(obj.glucose_tir_14d)  # type: ignore[attr-defined]

    @admin.display(description="TBR<70 14d", ordering="-glucose_tbr_14d")
    def tbr_14d(self, obj: Connection) -> str:
        return _percent(obj.glucose_tbr_14d)  # type: ignore[attr-defined]

    @admin.display(description="CGM active 14d", ordering="glucose_active_14d")
    def active_14d(self, obj: Connection) -> str:
        return _percent(obj.glucose_active_14d)  # type: ignore[attr-defined]

    @admin.display(description="patient", ordering="patient_id")
    def patient_link(self, obj: Connection) -> str:
        url = reverse("admin:connections_patient_change", args=[obj.patient_id])
        return format_html('<a href="{}">{}</a>', url, obj.patient)

    @admin.display(description="health", ordering="health_rank")
    def health_column(self, obj: Connection) -> str:
        badge = health_badge(obj.health)  # type: ignore[attr-defined]
        if needs_reconnect(obj):
            return format_html('{} <span class="ls-health ls-health-failing">reconnect</span>', badge)
        return badge

    @admin.display(description="fails", ordering="failure_streak")
    def failure_streak_column(self, obj: Connection) -> int:
        return obj.failure_streak

    @admin.display(description="last success", ordering="last_success_at")
    def last_success_column(self, obj: Connection) -> str:
        return relative_time(obj.last_success_at)

    @admin.display(description="newest reading", ordering="latest_reading_at")
    def newest_reading(self, obj: Connection) -> str:
        """The newest reading's age; "behind" when it is older than the provider's usual delay allows."""
        shown = relative_time(obj.latest_reading_at)
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
        line = short_error(obj.last_error)
        return format_html('<span class="ls-error" title="{}">{}</span>', line, line) if line else ""

    @admin.display(description="last error")
    def last_error_scrubbed(self, obj: Connection) -> str:
        return scrub_text(obj.last_error)

    # -- the buttons: POST only, CSRF (admin_view), a confirmation page, permission per operation ----------

    def get_urls(self) -> list[Any]:
        info = self.opts.app_label, self.opts.model_name
        return (
            [path("overview/", self.admin_site.admin_view(self.overview_view), name="connections_overview")]
            + [
                path(
                    f"<path:object_id>/{name}/",
                    self.admin_site.admin_view(self.operation_view),
                    {"operation": name},
                    name=f"{info[0]}_{info[1]}_{name}",
                )
                for name in OPS
            ]
            + super().get_urls()
        )

    def overview_view(self, request: HttpRequest) -> HttpResponse:
        """The ops overview (linked from the admin index): open problems first, then counts and jobs."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        now = timezone.now()
        context = {
            **self.admin_site.each_context(request),
            "title": "Ops overview",
            "opts": self.opts,
            "overview": ops_overview(now),
            "health_order": [Health(h) for h in HEALTH_SEVERITY],
            "now": now,
            "grace_minutes": settings.SENTRY_CRONS_MARGIN_MINUTES,
            "connections_url": reverse("admin:connections_connection_changelist"),
            "jobhealth_url": reverse("admin:connections_jobhealth_changelist"),
            "health_css": HEALTH_CSS,
        }
        return TemplateResponse(request, "admin/connections/overview.html", context)

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
        if done and op.done == "queued":
            self.message_user(
                request,
                f"{op.verb}: queued for {connection}. Its row under Recent sync events shows queued, "
                "then running, then the result of the sync.",
                messages.INFO,
            )
        elif done:
            self.message_user(request, f"{op.verb}: {op.done} for {connection}.", messages.SUCCESS)
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
            f"{op.verb}: {touched} connection(s) {'queued' if op.done == 'queued' else 'touched'}"
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
        # The widest page: without the navigation sidebar every column fits a 1,400 px laptop screen.
        extra = {"health_css": HEALTH_CSS, "is_nav_sidebar_enabled": False}
        return super().changelist_view(request, {**extra, **(extra_context or {})})

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
                freshness=connection_freshness(connection.pk),
                recent_events=SyncEvent.objects.filter(connection=connection)
                .select_related("result_event")
                .order_by("-started_at")[:20],
                pending_resync=SyncEvent.objects.filter(
                    connection=connection,
                    kind=SyncEventKind.RESYNC_REQUESTED,
                    status__in=(SyncStatus.QUEUED, SyncStatus.RUNNING),
                )
                .order_by("-started_at")
                .first(),
                events_url=reverse("admin:connections_syncevent_changelist")
                + f"?connection__id__exact={connection.pk}",
                reconnect=reconnect_offer(request, connection),
            )
        return super().change_view(request, object_id, form_url, {**extra, **(extra_context or {})})


def reconnect_offer(request: HttpRequest, connection: Connection) -> dict[str, Any] | None:
    """What fixes a connection whose credentials were refused: the patient signs in again. OAuth providers get
    the signed connect link (connections.oauth.connect_link, as `manage.py connect_link` prints it) to copy or
    send; a login provider the command that reconnects it. Ops only: the link connects an account to the patient.
    """
    if not needs_reconnect(connection) or not request.user.has_perm(DEACTIVATE_PERMISSION):
        return None
    offer: dict[str, Any] = {
        "provider": connection.get_provider_display(),
        "ttl_minutes": settings.OAUTH_STATE_TTL_SECONDS // 60,
    }
    if connection.provider in oauth_providers():
        link = connect_link(connection.patient, connection.provider, request.build_absolute_uri("/"))
        subject = f"Please reconnect {offer['provider']}"
        body = (
            f"Your {offer['provider']} connection stopped working. Open this link to sign in again "
            f"(valid for {offer['ttl_minutes']} minutes):\n\n{link}\n"
        )
        offer.update(
            link=link, mailto="mailto:?" + urlencode({"subject": subject, "body": body}, quote_via=quote)
        )
    elif connection.provider == Provider.LIBRE:
        offer["command"] = f"python manage.py connect_libre {connection.patient_id} --email FOLLOWER_EMAIL"
    else:
        offer["note"] = (
            f"The patient reconnects {offer['provider']} in the app (the provider's own link flow)."
        )
    return offer


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
    """The last 7 local days of daily statistics: one row per metric, the day's value per column (its total for
    a summed metric such as steps, its mean otherwise: readings/catalogue.py)."""
    from readings.catalogue import CATALOGUE, Daily
    from readings.models import DailyStat

    first = (now - timedelta(days=CHART_DAYS - 1)).date()
    days = [first + timedelta(days=i) for i in range(CHART_DAYS)]
    rows: dict[str, dict[str, Any]] = {}
    for stat in DailyStat.objects.filter(patient=patient, day__gte=first - timedelta(days=1)).order_by(
        "metric", "day"
    ):
        entry = CATALOGUE.get(stat.metric)
        summed = entry is not None and entry.daily is Daily.SUM
        row = rows.setdefault(
            stat.metric,
            {
                "metric": stat.metric,
                "unit": entry.unit if entry else "",
                "daily": "total" if summed else "mean",
                "description": entry.description if entry else "",
                "by_day": {},
                "avg_7d": None,
                "avg_30d": None,
            },
        )
        row["by_day"][stat.day] = stat.sum if summed else stat.avg
        row["avg_7d"], row["avg_30d"] = stat.avg_7d, stat.avg_30d
    return {
        "stat_days": days,
        "stat_rows": [
            {**row, "cells": [row["by_day"].get(day) for day in days]} for _, row in sorted(rows.items())
        ],
    }


class RoutePriorityInline(admin.TabularInline):
    """A patient's own route ranks (readings/resolution.py): which route's copy of a device family's readings
    counts in the statistics. Saving rebuilds the patient's statistics inside the horizon."""

    model = RoutePriority
    fields = ("source_family", "provider", "priority")
    extra = 0
    verbose_name = "route priority (overrides the providers' defaults; higher counts)"
    verbose_name_plural = "route priorities (overrides the providers' defaults; higher counts)"


@admin.register(Patient)
class PatientAdmin(RefusesNulMixin, admin.ModelAdmin):
    list_display = ("id", "junction_user_id", "clerk_user_id", "time_zone", "created_at")
    search_fields = ("^junction_user_id", "^clerk_user_id", "=id")
    search_help_text = "The start of a Junction user id or Clerk user id, or a patient id."
    show_full_result_count = False
    ordering = ("-id",)
    fields = ("junction_user_id", "clerk_user_id", "time_zone", "created_at")
    readonly_fields = ("created_at",)
    inlines = (ConnectionInline, RoutePriorityInline)
    change_form_template = "admin/connections/patient/change_form.html"

    # Patients are created by syncs and onboarding; deleting one would cascade over its readings.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list[Any]:
        agp = path(
            "<path:object_id>/agp/",
            self.admin_site.admin_view(self.agp_view),
            name="connections_patient_agp",
        )
        return [agp, *super().get_urls()]

    def agp_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The printable AGP report (?days=7|14|30|90)."""
        patient = self.get_object(request, unquote(object_id))
        if patient is None or not self.has_view_permission(request, patient):
            raise Http404
        raw = request.GET.get("days", "14")
        days = int(raw) if raw in ("7", "14", "30", "90") else 14
        context = {
            "patient": patient,
            "back_url": reverse("admin:connections_patient_change", args=[patient.pk]),
            "day_choices": (7, 14, 30, 90),
            **agp_report_context(patient.pk, patient.time_zone, timezone.now(), days),
        }
        return TemplateResponse(request, "admin/readings/agp_print.html", context)

    def save_model(self, request: HttpRequest, obj: Patient, form: Any, change: bool) -> None:
        # A zone is never saved as a plain field: the change goes through the one action that re-buckets the
        # patient's days and rebuilds exactly the affected statistics.
        new_zone = obj.time_zone
        if change and "time_zone" in form.changed_data:
            obj.time_zone = form.initial["time_zone"]
        super().save_model(request, obj, form, change)
        if change and "time_zone" in form.changed_data:
            actions.do_change_time_zone(obj, new_zone, actor=request.user.get_username())
            obj.time_zone = new_zone

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        super().save_formset(request, form, formset, change)
        if formset.model._meta.db_table == "patient_route_priorities" and formset.has_changed():
            actions.do_rebuild_patient_statistics(form.instance, actor=request.user.get_username())

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
            extra.update(agp_report_context(patient.pk, patient.time_zone, now))
            extra["agp_print_url"] = reverse("admin:connections_patient_agp", args=[patient.pk])
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
    readonly_fields = ("error_scrubbed", "task")

    def get_queryset(self, request: HttpRequest) -> QuerySet[SyncEvent]:
        return super().get_queryset(request).defer("error")

    @admin.display(description="django-q2 task")
    def task(self, obj: SyncEvent) -> str:
        if obj.task_id:
            return task_link(obj.task_id)
        if obj.job_run_id and obj.connection_id:
            # A fanned-out run names each connection's task "<job>:<connection id>" (connections.tasks).
            run = JobRun.objects.filter(pk=obj.job_run_id).values_list("job", flat=True).first()
            name = f"{run}:{obj.connection_id}"
            url = reverse("admin:django_q_success_changelist") + "?" + urlencode({"q": name})
            failed = reverse("admin:django_q_failure_changelist") + "?" + urlencode({"q": name})
            return format_html(
                '<a href="{}">{} (successful tasks)</a> · <a href="{}">failed tasks</a>', url, name, failed
            )
        return "-"

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


RUN_EVENTS_SHOWN = 200


def events_of_run(run: JobRun) -> QuerySet[SyncEvent]:
    """The sync events a run covered, failed first (so "1 failed" names its connection), then newest."""
    return (
        SyncEvent.objects.filter(job_run=run)
        .defer("error")
        .annotate(
            failed_first=Case(
                When(status=SyncStatus.FAILED, then=Value(0)),
                When(status=SyncStatus.RUNNING, then=Value(1)),
                default=Value(2),
            )
        )
        .order_by("failed_first", "-started_at")
    )


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
        "failed_link",
        "users_skipped",
        "records_stored",
    )
    list_filter = ("job", "status", ("started_at", admin.DateFieldListFilter))
    paginator = CappedCountPaginator
    show_full_result_count = False
    ordering = ("-started_at",)
    change_form_template = "admin/connections/jobrun/change_form.html"

    @admin.display(description="duration (s)")
    def duration(self, obj: JobRun) -> str:
        seconds = obj.duration_seconds
        return "" if seconds is None else f"{seconds:.1f}"

    @admin.display(description="users failed", ordering="users_failed")
    def failed_link(self, obj: JobRun) -> str:
        if not obj.users_failed:
            return "0"
        url = reverse("admin:connections_jobrun_change", args=[obj.pk]) + "#run-sync-events"
        return format_html('<a href="{}" class="ls-status-failed">{} failed</a>', url, obj.users_failed)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> Any:
        run = self.get_object(request, unquote(object_id))
        extra: dict[str, Any] = {"health_css": HEALTH_CSS}
        if run is not None:
            events = events_of_run(run).select_related("connection")
            extra.update(
                run_events=events[:RUN_EVENTS_SHOWN],
                run_events_more=max(events.count() - RUN_EVENTS_SHOWN, 0),
                run_events_url=reverse("admin:connections_syncevent_changelist")
                + f"?job_run__id__exact={run.pk}",
                run_tasks_url=reverse("admin:django_q_success_changelist") + f"?group__exact={run.job}",
            )
        return super().change_view(request, object_id, form_url, {**extra, **(extra_context or {})})


@admin.register(SyncRequest)
class SyncRequestAdmin(ReadOnlyAdmin):
    """Manual syncs the consumer app asked for (POST …/wearables/sync): read-only, filtered by status and
    source; each links its connection and the sync event it ran."""

    list_display = (
        "id",
        "created_at",
        "patient_id",
        "source",
        "status",
        "connection",
        "sync_event",
        "junction_refresh",
        "records_stored",
        "error_preview",
        "finished_at",
    )
    list_filter = ("status", "source", ("created_at", admin.DateFieldListFilter))
    list_select_related = ("connection",)
    paginator = CappedCountPaginator
    show_full_result_count = False
    list_per_page = 100
    ordering = ("-created_at",)
    exclude = ("idempotency_key",)

    @admin.display(description="error")
    def error_preview(self, obj: SyncRequest) -> str:
        return short_error(obj.error)


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
        now = timezone.now()
        context = {
            **self.admin_site.each_context(request),
            "title": "Job health",
            "opts": self.opts,
            "jobs": job_health(now),
            "now": now,
            "grace_minutes": settings.SENTRY_CRONS_MARGIN_MINUTES,
            "arrivals": arrivals(),
            "gates": provider_gates(),
            "runs_url": reverse("admin:connections_jobrun_changelist"),
            "health_css": HEALTH_CSS,
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/connections/jobhealth/dashboard.html", context)


# --- django-q2's queue pages: the truth about a sync lives in our rows ----------------------------------------


def task_link(task_id: str) -> str:
    """A link to the django-q2 task that ran a queued request, on whichever of its pages it is."""
    if not task_id:
        return "-"
    task = Task.objects.filter(pk=task_id).values("success").first()
    if task is None:
        return "not run yet (or no longer kept: Q_CLUSTER save_limit)"
    page = "success" if task["success"] else "failure"
    return format_html(
        '<a href="{}">{}</a>', reverse(f"admin:django_q_{page}_change", args=[task_id]), task_id
    )


QUEUE_NOTE = (
    "Our code owns the retries of a provider failure: a sync that failed still ends its task normally, so it "
    "is listed here as a successful task. The outcome column says what the sync did, and links its sync event "
    "or job run; failed syncs are under Sync events (status Failed) and on each job run's page."
)
FAILURE_NOTE = (
    "A task listed here crashed (the database or the queue failed under it) and is delivered again, at most "
    "Q_CLUSTER max_attempts times. A provider failure is not a failed task: see Sync events (status Failed)."
)


def task_outcome(result: object) -> str:
    """What one of our tasks' returned summary says happened: the sync's own status, linked."""
    if not isinstance(result, dict) or "status" not in result and "job_run_id" not in result:
        return "-"
    status = str(result.get("status", ""))
    css = {"success": "success", "failed": "failed"}.get(status, "queued")
    if result.get("sync_event_id"):
        url = reverse("admin:connections_syncevent_change", args=[result["sync_event_id"]])
        return format_html('<a href="{}" class="ls-status ls-status-{}">sync {}</a>', url, css, status)
    if result.get("job_run_id"):
        url = reverse("admin:connections_jobrun_change", args=[result["job_run_id"]])
        return format_html('<a href="{}">job run {}</a>', url, result["job_run_id"])
    return format_html('<span class="ls-status ls-status-{}">{}</span>', css, status or "-")


class QueueNoteMixin:
    queue_note = ""
    change_list_template = "admin/connections/queue_change_list.html"

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        extra = {"queue_note": self.queue_note, "health_css": HEALTH_CSS, **(extra_context or {})}
        return super().changelist_view(request, extra)  # type: ignore[misc]


class OutcomeTaskAdmin(QueueNoteMixin, q_admin.TaskAdmin):
    queue_note = QUEUE_NOTE
    list_display = (*q_admin.TaskAdmin.list_display, "outcome")

    @admin.display(description="outcome (our code)")
    def outcome(self, obj: Success) -> str:
        return task_outcome(obj.result)


class NotedFailAdmin(QueueNoteMixin, q_admin.FailAdmin):
    queue_note = FAILURE_NOTE


for _model, _admin in ((Success, OutcomeTaskAdmin), (Failure, NotedFailAdmin)):
    if admin.site.is_registered(_model):
        admin.site.unregister(_model)
    admin.site.register(_model, _admin)


# The admin index opens with the ops summary (connections/templatetags/ops.py), linking the overview.
admin.site.index_template = "admin/connections/index.html"


# The webhook inbox registers itself (its admin lives beside this one).
from connections import admin_inbox  # noqa: E402,F401
