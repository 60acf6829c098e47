"""The admin of issue 16's history features, kept apart from connections/admin.py: the connection list's
completeness filter, the patient page's completeness strips, and the gap ledger with its Repair button (the
Force resync pattern: get_urls + admin_view, a confirmation page on GET or an unconfirmed POST, the resync
permission, connections.actions.do_repair_gap writing the audit row)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from connections import actions
from connections.models import Connection, DataGap, GapStatus, Patient
from connections.providers.registry import PROVIDERS

# The permission of Force resync (connections/admin.py): a repair, like a resync, makes the provider send again.
RESYNC_PERMISSION = "connections.force_resync_connection"


class CompletenessFilter(admin.SimpleListFilter):
    """Connections whose main kind of data (the provider's first completeness kind) arrived at under 70 % of
    what a worn device sends, over the last 14 days (readings/completeness.py)."""

    title = "data completeness"
    parameter_name = "completeness"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("under70", "under 70 % in the last 14 days")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Connection]) -> QuerySet[Connection]:
        if self.value() != "under70":
            return queryset
        from django.db.models import Exists, OuterRef, Sum
        from django.db.models.functions import Least

        from readings.completeness import TYPICAL_EXPECTED, UNDER_SHARE, WINDOW_DAYS, window_days
        from readings.models import DataCompleteness

        first, last = window_days(timezone.now().date())
        under = Q(pk__in=[])
        for key, provider in PROVIDERS.items():
            if not provider.completeness_kinds:
                continue
            kind = provider.completeness_kinds[0]
            enough = (
                DataCompleteness.objects.filter(
                    patient_id=OuterRef("patient_id"), kind=kind, day__gte=first, day__lte=last
                )
                .values("patient_id")
                .annotate(received=Sum(Least("received", "expected")))
                .filter(received__gte=UNDER_SHARE * WINDOW_DAYS * TYPICAL_EXPECTED[kind])
            )
            under |= Q(provider=key) & ~Exists(enough)
        return queryset.filter(under)


COMPLETENESS_STRIP_DAYS = 30


def completeness_strips(patient: Patient, now: datetime) -> list[dict[str, Any]]:
    """Per connection and kind of data it is judged by: a heat-map strip of the last 30 local days."""
    from zoneinfo import ZoneInfo

    from connections.charts import completeness_strip_svg
    from readings.completeness import daily_shares, window_share

    today = timezone.localtime(now, ZoneInfo(patient.time_zone)).date()
    first = today - timedelta(days=COMPLETENESS_STRIP_DAYS - 1)
    strips = []
    for connection in patient.connections.order_by("provider"):
        provider = PROVIDERS.get(connection.provider)
        for kind in provider.completeness_kinds if provider else ():
            shares = daily_shares(patient.pk, patient.time_zone, kind, first, today)
            overall = window_share(shares)
            strips.append(
                {
                    "connection": connection,
                    "kind": kind,
                    "share": overall,
                    "svg": completeness_strip_svg(
                        [(s.day, s.share if s.expected else None) for s in shares],
                        title=f"{connection.get_provider_display()} · {kind.replace('_', ' ')}, "
                        f"last {COMPLETENESS_STRIP_DAYS} days",
                    ),
                }
            )
    return strips


# --- The gap ledger ------------------------------------------------------------------------------------------


@admin.register(DataGap)
class DataGapAdmin(admin.ModelAdmin):
    """Gaps in connections' data (connections/gaps.py), open ones first; Repair re-fetches exactly the window."""

    list_display = (
        "id",
        "connection",
        "kind",
        "start",
        "end",
        "cause",
        "status",
        "rows_repaired",
        "repair_button",
    )
    list_filter = ("status", "cause", "kind", "connection__provider")
    list_select_related = ("connection__patient",)
    ordering = ("status", "-detected_at")
    show_full_result_count = False
    fields = (
        "connection",
        "kind",
        "start",
        "end",
        "cause",
        "status",
        "note",
        "detected_at",
        "closed_at",
        "repair_attempts",
        "rows_repaired",
    )
    readonly_fields = fields

    # Gaps are recorded by syncs and reconnects and closed by repairs: the admin views them and repairs.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list[Any]:
        return [
            path(
                "<path:object_id>/repair/",
                self.admin_site.admin_view(self.repair_view),
                name="connections_datagap_repair",
            )
        ] + super().get_urls()

    @admin.display(description="repair")
    def repair_button(self, obj: DataGap) -> str:
        if obj.status != GapStatus.OPEN:
            return "-"
        url = reverse("admin:connections_datagap_repair", args=[obj.pk])
        return format_html('<a class="button" href="{}">Repair</a>', url)

    def repair_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        # The same permission as Force resync: both make the provider send data again.
        if not request.user.has_perm(RESYNC_PERMISSION):
            raise PermissionDenied
        gap = DataGap.objects.select_related("connection__patient").filter(pk=unquote(object_id)).first()
        if gap is None:
            raise Http404("no such gap")
        back = reverse("admin:connections_datagap_changelist")
        if request.method != "POST" or request.POST.get("confirm") != "yes":
            # A GET (the list's link) or a POST without the confirmation shows the confirmation page.
            context = {
                **self.admin_site.each_context(request),
                "title": "Repair: are you sure?",
                "opts": self.opts,
                "gap": gap,
                "action_url": request.path,
            }
            return TemplateResponse(request, "admin/connections/datagap/confirm_repair.html", context)
        event = actions.do_repair_gap(gap, actor=request.user.get_username())
        if event is None:
            self.message_user(
                request, f"Repair: {gap} is not open ({gap.get_status_display()}).", messages.WARNING
            )
        else:
            self.message_user(request, f"Repair: queued for {gap}.", messages.SUCCESS)
        return HttpResponseRedirect(back)
