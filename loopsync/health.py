"""Health routes: `/healthz` (liveness: the process answers) and `/healthz/ready` (readiness: it can serve).

Readiness runs django-health-check's database check and `QueueBroker` below. A healthy queue means what the web
service needs from django-q2: its ORM broker's table answers, so a manual sync or a Force resync can be queued.
It does not mean a worker is draining the queue: a stopped worker must not take the API out of the load balancer
(the API still serves reads and queues syncs); missed runs show on the job health page and in Sentry Crons.
django-q2's cluster heartbeat lives in Django's cache, which is per process here, so the web cannot read it.
"""

from __future__ import annotations

import dataclasses

from django.db import DatabaseError, connections
from django.http import HttpRequest, JsonResponse
from django_q.brokers import get_broker
from django_q.conf import Conf
from health_check.base import HealthCheck
from health_check.exceptions import ServiceUnavailable
from health_check.views import HealthCheckView


@dataclasses.dataclass
class QueueBroker(HealthCheck):
    """django-q2's ORM broker can be read: the count of tasks waiting for a worker."""

    def run(self) -> None:
        # The check runs in a worker thread: open and close that thread's own connection.
        try:
            with connections[Conf.ORM].temporary_connection():
                get_broker().queue_size()
        except DatabaseError as exc:
            # Only the exception's class: its text can name the host and the database.
            raise ServiceUnavailable(f"the task queue's table cannot be read ({type(exc).__name__})") from exc


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: no database, no queue; answers as long as a worker process can run a view."""
    return JsonResponse({"ok": True})


readiness = HealthCheckView.as_view(checks=("health_check.checks.Database", QueueBroker))
