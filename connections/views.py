"""Thin views for connecting providers; the logic is in connections.oauth."""

from __future__ import annotations

import logging

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.urls import reverse
from django.views.decorators.http import require_GET

from connections.models import Patient
from connections.oauth import (
    OAuthFlowError,
    begin_oauth,
    browser_cookie_name,
    claim_state,
    complete_oauth,
    oauth_providers,
    patient_from_connect_token,
)
from connections.providers.base import ProviderError

logger = logging.getLogger("loopsync.connect")


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


def connecting_patient(request: HttpRequest) -> Patient:
    """Who is connecting: today a signed, short-lived `token` query parameter (connections.oauth.connect_token_for).

    When Clerk sessions land, an authenticated patient on the request is accepted here first.
    """
    patient = getattr(request, "patient", None)
    if isinstance(patient, Patient):
        return patient
    token = request.GET.get("token", "")
    if not token:
        raise OAuthFlowError("a connect token is required")
    return patient_from_connect_token(token)


def _redirect_uri(request: HttpRequest, provider: str) -> str:
    configured = getattr(settings.DIRECT_PROVIDERS, f"{provider}_redirect_uri", "")
    return configured or request.build_absolute_uri(reverse("connect-callback", args=[provider]))


@require_GET
def connect_start(request: HttpRequest, provider: str) -> HttpResponse:
    if provider not in oauth_providers():
        return _error(404, f"unknown OAuth provider {provider!r}")
    try:
        patient = connecting_patient(request)
        flow = begin_oauth(patient, provider, _redirect_uri(request, provider))
    except OAuthFlowError as exc:
        return _error(403 if "link" in str(exc) or "token" in str(exc) else 400, str(exc))
    response = HttpResponseRedirect(flow.authorize_url)
    # SameSite=Lax: the provider sends the browser back with a top-level GET, which Lax cookies accompany.
    response.set_cookie(
        browser_cookie_name(provider),
        flow.browser_key,
        max_age=settings.OAUTH_STATE_TTL_SECONDS,
        path=reverse("connect-callback", args=[provider]),
        secure=request.is_secure(),
        httponly=True,
        samesite="Lax",
    )
    return response


@require_GET
def connect_callback(request: HttpRequest, provider: str) -> HttpResponse:
    if provider not in oauth_providers():
        return _error(404, f"unknown OAuth provider {provider!r}")
    state = request.GET.get("state", "")
    denied = request.GET.get("error")
    browser_key = request.COOKIES.get(browser_cookie_name(provider), "")
    try:
        if denied:
            if state:
                claim_state(provider, state, browser_key)  # burn it: a denied flow cannot be resumed
            return _error(400, f"the patient did not authorize access ({denied[:40]})")
        connection = complete_oauth(provider, state, request.GET.get("code", ""), browser_key)
    except OAuthFlowError as exc:
        return _error(400, str(exc))
    except ProviderError as exc:
        logger.warning("oauth code exchange failed", extra={"provider": provider, "error": str(exc)})
        return _error(502, f"{provider} did not accept the authorization; start again")
    return JsonResponse({"connected": True, "provider": provider, "connection_id": connection.pk})
