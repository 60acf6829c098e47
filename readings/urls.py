"""The read API's routes, mounted at /api/ by loopsync/urls.py beside connections' own."""

from __future__ import annotations

from django.urls import path

from readings import api, glucose_api

urlpatterns = [
    path("patient-graph/wearables/daily-stats", api.DailyStatsView.as_view(), name="api-daily-stats"),
    path("patient-graph/wearables/readings", api.ReadingsView.as_view(), name="api-readings"),
    path("patient-graph/wearables/glucose", api.GlucoseView.as_view(), name="api-glucose"),
    path(
        "patient-graph/wearables/glucose/summary",
        glucose_api.GlucoseSummaryView.as_view(),
        name="api-glucose-summary",
    ),
    path("patient-graph/wearables/glucose/agp", glucose_api.GlucoseAgpView.as_view(), name="api-glucose-agp"),
    path("patient-graph/service/fhir/cgm", glucose_api.FhirCgmView.as_view(), name="api-service-fhir-cgm"),
]
