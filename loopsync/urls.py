from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.urls import include, path


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", healthz),
    # REST API: consumer (Clerk JWT), patient-graph service (API key), schema and docs.
    path("api/", include("connections.api.urls")),
]
