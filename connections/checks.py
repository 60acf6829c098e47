"""Cross-setting rules, reported by `manage.py check` and at the start of every command."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register


@register()
def loopsync_settings_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    if settings.TIME_ZONE != "UTC":
        messages.append(Error("TIME_ZONE must be 'UTC': storage is aware UTC.", id="connections.E001"))
    q = settings.Q_CLUSTER
    if q.get("timeout") and q.get("retry") and q["timeout"] >= q["retry"]:
        messages.append(
            Error(
                "Q_CLUSTER timeout must be below retry, or a slow task is delivered twice.",
                hint="Lower Q_TIMEOUT.",
                id="connections.E002",
            )
        )
    return messages


@register()
def rest_api_settings_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """The consumer API's Clerk settings and the manual-sync limits."""
    messages: list[CheckMessage] = []
    key, jwks, issuer = settings.CLERK_JWT_KEY, settings.CLERK_JWKS_URL, settings.CLERK_ISSUER
    if key:
        from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        try:
            loaded = load_pem_public_key(key.encode())
        except (ValueError, TypeError):
            loaded = None
        if not isinstance(loaded, RSAPublicKey):
            messages.append(
                Error(
                    "CLERK_JWT_KEY is not an RSA public key in PEM form.",
                    hint="Copy the PEM public key from the Clerk dashboard (API keys > Show JWT public key).",
                    id="connections.E101",
                )
            )
    if (key or jwks) and not issuer:
        messages.append(
            Error(
                "CLERK_ISSUER must be set when CLERK_JWT_KEY or CLERK_JWKS_URL is: tokens are checked against it.",
                hint="Your Clerk Frontend API URL, e.g. https://clerk.example.com",
                id="connections.E102",
            )
        )
    if jwks and not jwks.startswith("https://") and not settings.DEBUG and not _is_loopback(jwks):
        messages.append(Error("CLERK_JWKS_URL must be an https:// URL.", id="connections.E103"))
    if not (key or jwks) and not settings.DEBUG:
        # An error, not a warning: a deploy without it answers 401 to every consumer request, so the deploy's
        # `manage.py check` (render.yaml's preDeployCommand) must stop it before it takes traffic.
        messages.append(
            Error(
                "Neither CLERK_JWT_KEY nor CLERK_JWKS_URL is set: the consumer API would reject every request.",
                hint="Set CLERK_JWT_KEY (the PEM from the Clerk dashboard) or CLERK_JWKS_URL, and CLERK_ISSUER.",
                id="connections.E104",
            )
        )
    if (key or jwks) and not settings.CLERK_AUTHORIZED_PARTIES:
        messages.append(
            Warning(
                "CLERK_AUTHORIZED_PARTIES is empty: every browser session token (it carries azp) is rejected.",
                hint="List the consumer app's origins, e.g. https://app.example.com",
                id="connections.W102",
            )
        )
    # A browser app whose origin may call the API (CORS) but whose tokens' azp is refused gets 401 anyway.
    parties = set(settings.CLERK_AUTHORIZED_PARTIES)
    refused = [origin for origin in settings.CORS_ALLOWED_ORIGINS if parties and origin not in parties]
    if refused:
        messages.append(
            Warning(
                f"CORS_ALLOWED_ORIGINS has {', '.join(refused)}, not in CLERK_AUTHORIZED_PARTIES: that app's "
                "session tokens are refused.",
                hint="List the consumer app's origins in both.",
                id="connections.W104",
            )
        )
    if settings.MANUAL_SYNC_PER_HOUR > 8:
        messages.append(
            Warning(
                "MANUAL_SYNC_PER_HOUR is above Junction's 8 user refreshes an hour: later syncs fetch without a "
                "refresh.",
                id="connections.W103",
            )
        )
    return messages


def _is_loopback(url: str) -> bool:
    from urllib.parse import urlsplit

    return (urlsplit(url).hostname or "") in ("127.0.0.1", "localhost", "::1")


@register()
def webhook_settings_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """The webhook receivers' secrets: a wrong one would answer 401 to every delivery."""
    messages: list[CheckMessage] = []
    secret = settings.JUNCTION_WEBHOOK_SECRET
    if secret:
        import binascii

        from svix.webhooks import Webhook

        try:
            Webhook(secret)
        except (binascii.Error, ValueError, RuntimeError, Exception):  # noqa: BLE001 - any refusal is the same
            messages.append(
                Error(
                    "JUNCTION_WEBHOOK_SECRET is not a Svix signing secret (whsec_ followed by base64).",
                    hint="Copy it from the Junction Dashboard: Webhooks > your endpoint > Signing Secret.",
                    id="connections.E301",
                )
            )
    elif not settings.DEBUG:
        messages.append(
            Warning(
                "JUNCTION_WEBHOOK_SECRET is not set: POST /webhooks/junction refuses every delivery, and "
                "Junction data arrives only with the daily pull.",
                id="connections.W301",
            )
        )
    return messages
