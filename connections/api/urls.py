"""REST API routes, mounted at /api/ by loopsync/urls.py."""

from __future__ import annotations

from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from connections.api import service, views
from readings import api as readings_api

urlpatterns = [
    path("ping", views.PingView.as_view(), name="api-ping"),
    path("patient-graph/wearables/sync", views.ManualSyncView.as_view(), name="api-sync"),
    path(
        "patient-graph/wearables/sync/<str:sync_id>", views.SyncStatusView.as_view(), name="api-sync-status"
    ),
    path("wearables/<str:source>/sync", views.SourceSyncView.as_view(), name="api-source-sync"),
    path("patient-graph/wearables/connections", views.ConnectionListView.as_view(), name="api-connections"),
    path(
        "patient-graph/wearables/daily-stats", readings_api.DailyStatsView.as_view(), name="api-daily-stats"
    ),
    path("patient-graph/wearables/readings", readings_api.ReadingsView.as_view(), name="api-readings"),
    path("patient-graph/wearables/glucose", readings_api.GlucoseView.as_view(), name="api-glucose"),
    path("patient-graph/service/ingest", service.IngestView.as_view(), name="api-service-ingest"),
    path(
        "patient-graph/service/daily-stats",
        service.DailyStatsUpsertView.as_view(),
        name="api-service-daily-stats",
    ),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
]
