"""The admin index's ops summary (connections/templates/admin/index.html)."""

from __future__ import annotations

from typing import Any

from django import template
from django.urls import reverse
from django.utils import timezone

register = template.Library()


@register.inclusion_tag("admin/connections/_index_summary.html", takes_context=True)
def ops_summary(context: dict[str, Any]) -> dict[str, Any]:
    request = context.get("request")
    user = getattr(request, "user", None)
    if user is None or not user.has_perm("connections.view_connection"):
        return {"summary": None}
    from connections.overview import index_summary

    return {
        "summary": index_summary(timezone.now()),
        "overview_url": reverse("admin:connections_overview"),
    }
