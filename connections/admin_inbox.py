"""The webhook inbox in the admin: received / processed / failed / ignored / unmatched, the scrubbed error of a
failed one, a Replay button and a bulk replay.

Replay needs the Force resync permission (it re-runs processing of data a provider sent, as a resync re-runs a
sync) and goes through `connections.actions.do_replay_webhook`, which writes the audit row. The body is PHI and
is never shown.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.decorators import method_decorator
from django.views.decorators.http import require_POST

from connections import actions
from connections.admin import RESYNC_PERMISSION, CappedCountPaginator, ReadOnlyAdmin, short_error
from connections.models import WebhookEvent
from loopsync.sentry import scrub_text


@admin.register(WebhookEvent)
class WebhookEventAdmin(ReadOnlyAdmin):
    list_display = (
        "received_at",
        "provider",
        "event_type",
        "status",
        "connection_id",
        "attempts",
        "records_stored",
        "freshness",
        "error_preview",
    )
    list_filter = ("status", "provider", ("received_at", admin.DateFieldListFilter))
    search_fields = ("delivery_id", "external_user_id")
    search_help_text = "Exact delivery id (svix-id, WHOOP trace_id) or provider user id."
    paginator = CappedCountPaginator
    show_full_result_count = False
    list_per_page = 100
    ordering = ("-received_at",)
    actions = ("replay_selected",)
    fields = (
        "provider",
        "event_type",
        "status",
        "delivery_id",
        "external_user_id",
        "connection",
        "sent_at",
        "received_at",
        "processed_at",
        "freshness",
        "attempts",
        "records_stored",
        "error_scrubbed",
    )
    readonly_fields = fields
    change_form_template = "admin/connections/webhookevent/change_form.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet[WebhookEvent]:
        # Never the body: it is PHI, and decrypting it for a list would cost for nothing.
        return super().get_queryset(request).defer("body")

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[WebhookEvent], search_term: str
    ) -> tuple[QuerySet[WebhookEvent], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(delivery_id=term) | queryset.filter(external_user_id=term), False

    def has_replay_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(RESYNC_PERMISSION)

    @admin.display(description="freshness (s)")
    def freshness(self, obj: WebhookEvent) -> str:
        seconds = obj.freshness_seconds
        return "" if seconds is None else f"{seconds:.1f}"

    @admin.display(description="error")
    def error_preview(self, obj: WebhookEvent) -> str:
        return short_error(obj.error)

    @admin.display(description="error")
    def error_scrubbed(self, obj: WebhookEvent) -> str:
        return scrub_text(obj.error)

    def get_urls(self) -> list[Any]:
        return [
            path(
                "<path:object_id>/replay/",
                self.admin_site.admin_view(self.replay_view),
                name="connections_webhookevent_replay",
            )
        ] + super().get_urls()

    @method_decorator(require_POST)
    def replay_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if not self.has_replay_permission(request):
            raise PermissionDenied
        event = self.get_object(request, unquote(object_id))
        if event is None:
            raise Http404("no such webhook event")
        if request.POST.get("confirm") != "yes":
            return self._confirmation(request, [event], action_url=request.path)
        change_url = reverse("admin:connections_webhookevent_change", args=[event.pk])
        if actions.do_replay_webhook(event.pk, actor=request.user.get_username()):
            self.message_user(request, f"Replay: queued {event}.", messages.SUCCESS)
        else:
            self.message_user(request, "Replay: the event is being processed right now.", messages.WARNING)
        return HttpResponseRedirect(change_url)

    @admin.action(description="Replay selected webhook events", permissions=["replay"])
    def replay_selected(self, request: HttpRequest, queryset: QuerySet[WebhookEvent]) -> Any:
        if not self.has_replay_permission(request):
            raise PermissionDenied
        events = list(queryset.order_by("pk"))
        if request.POST.get("confirm") != "yes":
            return self._confirmation(request, events, action_url="", bulk_action="replay_selected")
        actor = request.user.get_username()
        queued = sum(1 for e in events if actions.do_replay_webhook(e.pk, actor=actor))
        self.message_user(
            request, f"Replay: {queued} event(s) queued.", messages.SUCCESS if queued else messages.WARNING
        )
        return None

    def _confirmation(
        self, request: HttpRequest, events: list[WebhookEvent], *, action_url: str, bulk_action: str = ""
    ) -> TemplateResponse:
        context = {
            **self.admin_site.each_context(request),
            "title": "Replay: are you sure?",
            "opts": self.opts,
            "events": events[:50],
            "more": max(len(events) - 50, 0),
            "count": len(events),
            "action_url": action_url,
            "bulk_action": bulk_action,
            "selected": [str(e.pk) for e in events]
            if request.POST.get("select_across", "0") != "1"
            else [str(events[0].pk)],
            "select_across": request.POST.get("select_across", "0"),
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/connections/webhookevent/confirm_replay.html", context)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> Any:
        extra: dict[str, Any] = {}
        if self.has_replay_permission(request):
            extra["replay_url"] = reverse("admin:connections_webhookevent_replay", args=[unquote(object_id)])
        return super().change_view(request, object_id, form_url, {**extra, **(extra_context or {})})
