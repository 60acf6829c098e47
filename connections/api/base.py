"""What every consumer endpoint shares, whichever app it lives in: Clerk authentication, the patient it is
scoped to, and the problem responses it documents. Each app's API builds on this module, never on another app's
views."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiExample, OpenApiResponse
from rest_framework.request import Request
from rest_framework.views import APIView

from connections.api.authentication import ClerkAuthentication, IsPatient
from connections.api.errors import PROBLEM_CONTENT_TYPE, PROBLEMS, problem_body
from connections.api.serializers import ProblemSerializer
from connections.models import Patient

EXAMPLE_PATH = "/api/patient-graph/wearables/..."


def problem(
    description: str, *codes: str, detail: str | None = None, **extra: Any
) -> dict[tuple[int, str], OpenApiResponse]:
    """The documented `application/problem+json` response of one status: `codes` are the problem codes it can
    carry (all of one status), each with an example body."""
    statuses = {PROBLEMS[code].status for code in codes}
    assert len(statuses) == 1, codes
    examples = [
        OpenApiExample(
            code,
            value=problem_body(
                PROBLEMS[code],
                detail if detail and index == 0 else PROBLEMS[code].description,
                EXAMPLE_PATH,
                extra=extra if index == 0 else None,
            ),
            response_only=True,
            status_codes=[str(PROBLEMS[code].status)],
        )
        for index, code in enumerate(codes)
    ]
    response = OpenApiResponse(ProblemSerializer, description=description, examples=examples)
    return {(statuses.pop(), PROBLEM_CONTENT_TYPE): response}


ERRORS = {
    **problem("Missing, expired or otherwise invalid token.", "not_authenticated"),
    **problem("The account has no patient record.", "permission_denied"),
}


class PatientAPIView(APIView):
    authentication_classes = [ClerkAuthentication]
    permission_classes = [IsPatient]

    def patient(self, request: Request) -> Patient:
        return request.user.patient  # type: ignore[union-attr]  # IsPatient guarantees it
