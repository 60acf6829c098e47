"""What every consumer endpoint shares, whichever app it lives in: Clerk authentication, the patient it is
scoped to, and the error responses it documents. Each app's API builds on this module, never on another app's
views."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse
from rest_framework.request import Request
from rest_framework.views import APIView

from connections.api.authentication import ClerkAuthentication, IsPatient
from connections.api.serializers import ErrorSerializer
from connections.models import Patient

ERRORS = {
    401: OpenApiResponse(ErrorSerializer, description="Missing, expired or otherwise invalid token."),
    403: OpenApiResponse(ErrorSerializer, description="The account has no patient record."),
}


class PatientAPIView(APIView):
    authentication_classes = [ClerkAuthentication]
    permission_classes = [IsPatient]

    def patient(self, request: Request) -> Patient:
        return request.user.patient  # type: ignore[union-attr]  # IsPatient guarantees it
