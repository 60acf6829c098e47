"""Every job `manage.py run_job NAME` can run now, by the name its schedule carries.

A job here runs inline (no fan-out) and returns its summary as a JSON-able dict; `sandbox` is a running
SandboxServer to point the provider clients at, or None for the configured providers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.conf import settings

if TYPE_CHECKING:
    from sandbox.server import SandboxServer

JobRunner = Callable[["SandboxServer | None"], dict[str, Any]]


def wearable_sync_daily(sandbox: SandboxServer | None) -> dict[str, Any]:
    from connections.models import SyncTrigger
    from connections.sync import run_wearable_sync_job

    config = settings.JUNCTION_SYNC
    if sandbox is not None:
        config = config.replace(
            base_url_override=sandbox.junction_url,
            api_key=sandbox.api_key,
            environment="sandbox",
            user_ids=config.user_ids or tuple(sandbox.junction.user_ids),
        )
    return run_wearable_sync_job(config, trigger=SyncTrigger.COMMAND).as_dict()


JOBS: dict[str, JobRunner] = {
    "wearable-sync-daily": wearable_sync_daily,
}
