"""POST /webhooks/<provider>: the providers' webhook receivers (connections/inbox.py does the work).

No session, no Clerk token, no CSRF token: a provider's server calls these, and the signature over the raw
body is the authentication. A bad or stale signature is 401 and nothing is stored.
"""

from __future__ import annotations

import logging

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from connections.api.errors import PROBLEM_CONTENT_TYPE, PROBLEMS, problem_body
from connections.inbox import push_providers, receive
from connections.providers.contract import WebhookRefused

logger = logging.getLogger("loopsync.webhooks")


@csrf_exempt
@require_POST
def webhook(request: HttpRequest, provider: str) -> HttpResponse:
    if provider not in push_providers():
        return _problem(request, "not_found", f"no webhook receiver for {provider!r}")
    headers = {key.lower(): value for key, value in request.headers.items()}
    try:
        receipt = receive(provider, request.body, headers)
    except WebhookRefused as exc:
        # The reason names the header or the rule, never the body.
        logger.warning("webhook refused", extra={"provider": provider, "reason": str(exc)})
        return _problem(request, "invalid_signature", str(exc))
    return JsonResponse(
        {"status": receipt.status, "duplicate": receipt.duplicate},
        status=202 if not receipt.duplicate else 200,
    )


def _problem(request: HttpRequest, code: str, detail: str) -> JsonResponse:
    """The same RFC 9457 problem details as the API's errors."""
    problem = PROBLEMS[code]
    return JsonResponse(
        problem_body(problem, detail, request.path),
        status=problem.status,
        content_type=PROBLEM_CONTENT_TYPE,
    )
