from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from loopsync import health

urlpatterns = [
    path("admin/", admin.site.urls),
    # Liveness (cheap) and readiness (database and task queue; render.yaml's healthCheckPath): loopsync/health.py.
    path("healthz", health.healthz, name="healthz"),
    path("healthz/ready", health.readiness, name="healthz-ready"),
    # Connecting WHOOP / Dexcom (OAuth): /connect/<provider>/start and /connect/<provider>/callback.
    path("", include("connections.urls")),
    # REST API: consumer (Clerk JWT), patient-graph service (API key), schema and docs; each app its routes.
    path("api/", include("connections.api.urls")),
    path("api/", include("readings.urls")),
]
