from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.urls import include, path


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", healthz),
    # Connecting WHOOP / Dexcom (OAuth): /connect/<provider>/start and /connect/<provider>/callback.
    path("", include("connections.urls")),
    # REST API: consumer (Clerk JWT), patient-graph service (API key), schema and docs; each app its routes.
    path("api/", include("connections.api.urls")),
    path("api/", include("readings.urls")),
]
