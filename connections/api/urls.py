"""connections' REST API routes (manual sync, connections, the service API) and the schema, mounted at /api/ by
loopsync/urls.py; the read API's routes are readings' own (readings/urls.py)."""

from __future__ import annotations

from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from connections.api import service, views

urlpatterns = [
    path("ping", views.PingView.as_view(), name="api-ping"),
    # The documentation of each problem `type` URI (connections/api/errors.py).
    path("problems/<str:code>", views.ProblemTypeView.as_view(), name="api-problem-type"),
    path("patient-graph/wearables/sync", views.ManualSyncView.as_view(), name="api-sync"),
    path(
        "patient-graph/wearables/sync/<str:sync_id>", views.SyncStatusView.as_view(), name="api-sync-status"
    ),
    path("wearables/<str:source>/sync", views.SourceSyncView.as_view(), name="api-source-sync"),
    path("patient-graph/wearables/connections", views.ConnectionListView.as_view(), name="api-connections"),
    path("patient-graph/service/ingest", service.IngestView.as_view(), name="api-service-ingest"),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
]
