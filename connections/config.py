"""The Junction sync job's configuration, built from the environment.

Kept free of Django models so settings.py can build it at start-up: a bad value (region `asia`, lookback
`seven`, production without an API key) stops start-up with a message that names the variable.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from django.core.exceptions import ImproperlyConfigured

from loopsync.env import env_choice, env_int, env_list, env_str

JUNCTION_ENVIRONMENTS = ("production", "sandbox")
JUNCTION_REGIONS = ("us", "eu")

# Current hosts from the Junction docs (the legacy *.tryvital.io hosts are still accepted there).
JUNCTION_HOSTS: dict[tuple[str, str], str] = {
    ("production", "us"): "https://api.us.junction.com",
    ("production", "eu"): "https://api.eu.junction.com",
    ("sandbox", "us"): "https://api.sandbox.us.junction.com",
    ("sandbox", "eu"): "https://api.sandbox.eu.junction.com",
}

MAX_LOOKBACK_DAYS = 365


@dataclass(frozen=True)
class JunctionSyncConfig:
    """What `run_wearable_sync_job` needs; `from_env()` builds it from the spec's variable names."""

    api_key: str = field(default="", repr=False)
    patient_graph_url: str = ""
    patient_graph_key: str = field(default="", repr=False)
    user_ids: tuple[str, ...] = ()
    lookback_days: int = 7
    environment: str = "sandbox"
    region: str = "us"
    base_url_override: str = ""

    def __post_init__(self) -> None:
        if self.environment not in JUNCTION_ENVIRONMENTS:
            raise ImproperlyConfigured(
                f"JUNCTION_ENV={self.environment!r} is not one of: {', '.join(JUNCTION_ENVIRONMENTS)}"
            )
        if self.region not in JUNCTION_REGIONS:
            raise ImproperlyConfigured(
                f"JUNCTION_REGION={self.region!r} is not one of: {', '.join(JUNCTION_REGIONS)}"
            )
        if not 1 <= self.lookback_days <= MAX_LOOKBACK_DAYS:
            raise ImproperlyConfigured(
                f"JUNCTION_SYNC_LOOKBACK_DAYS={self.lookback_days} must be between 1 and {MAX_LOOKBACK_DAYS}"
            )
        if self.environment == "production" and not self.api_key:
            raise ImproperlyConfigured("JUNCTION_API_KEY must be set when JUNCTION_ENV=production")
        if self.patient_graph_url and not self.patient_graph_key:
            raise ImproperlyConfigured("PATIENT_GRAPH_API_KEY must be set when PATIENT_GRAPH_API_URL is set")

    @classmethod
    def from_env(cls) -> JunctionSyncConfig:
        return cls(
            api_key=env_str("JUNCTION_API_KEY"),
            patient_graph_url=env_str("PATIENT_GRAPH_API_URL").rstrip("/"),
            patient_graph_key=env_str("PATIENT_GRAPH_API_KEY"),
            user_ids=tuple(env_list("JUNCTION_SYNC_USER_IDS")),
            lookback_days=env_int("JUNCTION_SYNC_LOOKBACK_DAYS", 7),
            environment=env_choice("JUNCTION_ENV", "sandbox", JUNCTION_ENVIRONMENTS),
            region=env_choice("JUNCTION_REGION", "us", JUNCTION_REGIONS),
            base_url_override=env_str("JUNCTION_BASE_URL").rstrip("/"),
        )

    @property
    def base_url(self) -> str:
        return self.base_url_override or JUNCTION_HOSTS[(self.environment, self.region)]

    def replace(self, **changes: object) -> JunctionSyncConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
