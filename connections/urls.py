from __future__ import annotations

from django.urls import path

from connections import views, webhook_views

urlpatterns = [
    path("connect/<str:provider>/start", views.connect_start, name="connect-start"),
    path("connect/<str:provider>/callback", views.connect_callback, name="connect-callback"),
    # Provider webhooks (Junction's Svix endpoint, WHOOP's webhook URL): connections/inbox.py.
    path("webhooks/<str:provider>", webhook_views.webhook, name="webhook"),
]
