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
    """The Junction provider's settings (JUNCTION_SYNC); `from_env()` builds it from the spec's variable names."""

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


# --- Direct providers (WHOOP, Dexcom, FreeStyle Libre through LibreLinkUp) ------------------------------------

WHOOP_API_URL = "https://api.prod.whoop.com"
DEXCOM_API_URLS = {
    "us": "https://api.dexcom.com",
    "eu": "https://api.dexcom.eu",
    "jp": "https://api.dexcom.jp",
}
DEXCOM_SANDBOX_URL = "https://sandbox-api.dexcom.com"
LIBRE_API_URL = "https://api.libreview.io"
LIBRE_REGIONAL_URL_TEMPLATE = "https://api-{region}.libreview.io"
# The LibreLinkUp server minimum since Oct 2025; an older value is answered 403 {"status": 920}.
LIBRE_DEFAULT_VERSION = "4.16.0"


@dataclass(frozen=True)
class DirectProvidersConfig:
    """OAuth clients and hosts of the direct providers, and the WHOOP/CGM sync windows."""

    whoop_client_id: str = ""
    whoop_client_secret: str = field(default="", repr=False)
    whoop_api_url: str = WHOOP_API_URL
    whoop_redirect_uri: str = ""
    dexcom_client_id: str = ""
    dexcom_client_secret: str = field(default="", repr=False)
    dexcom_api_url: str = DEXCOM_API_URLS["us"]
    dexcom_redirect_uri: str = ""
    libre_api_url: str = LIBRE_API_URL
    libre_regional_url_template: str = LIBRE_REGIONAL_URL_TEMPLATE
    libre_version: str = LIBRE_DEFAULT_VERSION
    libre_product: str = "llu.android"
    # WHOOP: the first sync's window; later runs start at the cursor (or the oldest unscored record) minus
    # the overlap, never further back than whoop_max_lookback_days.
    whoop_initial_days: int = 14
    whoop_overlap_hours: int = 24
    whoop_max_lookback_days: int = 30
    # CGM: readings since the newest one stored minus this overlap (providers deliver late).
    cgm_overlap_minutes: int = 60
    cgm_initial_days: int = 1
    cgm_max_lookback_days: int = 30
    # Refresh access tokens this long before they expire.
    token_refresh_margin_seconds: int = 300

    def __post_init__(self) -> None:
        if bool(self.whoop_client_id) != bool(self.whoop_client_secret):
            raise ImproperlyConfigured("WHOOP_CLIENT_ID and WHOOP_CLIENT_SECRET must be set together")
        if bool(self.dexcom_client_id) != bool(self.dexcom_client_secret):
            raise ImproperlyConfigured("DEXCOM_CLIENT_ID and DEXCOM_CLIENT_SECRET must be set together")
        if "{region}" not in self.libre_regional_url_template:
            raise ImproperlyConfigured("LIBRE_REGIONAL_URL_TEMPLATE must contain {region}")
        if not all(part.isdigit() for part in self.libre_version.split(".")):
            raise ImproperlyConfigured(f"LIBRE_VERSION={self.libre_version!r} is not a version like 4.16.0")
        if self.libre_product not in ("llu.android", "llu.ios"):
            raise ImproperlyConfigured("LIBRE_PRODUCT must be llu.android or llu.ios")

    @classmethod
    def from_env(cls) -> DirectProvidersConfig:
        dexcom_url = env_str("DEXCOM_API_URL").rstrip("/")
        if not dexcom_url:
            region = env_choice("DEXCOM_REGION", "us", (*DEXCOM_API_URLS, "sandbox"))
            dexcom_url = DEXCOM_SANDBOX_URL if region == "sandbox" else DEXCOM_API_URLS[region]
        return cls(
            whoop_client_id=env_str("WHOOP_CLIENT_ID"),
            whoop_client_secret=env_str("WHOOP_CLIENT_SECRET"),
            whoop_api_url=env_str("WHOOP_API_URL", WHOOP_API_URL).rstrip("/"),
            whoop_redirect_uri=env_str("WHOOP_REDIRECT_URI"),
            dexcom_client_id=env_str("DEXCOM_CLIENT_ID"),
            dexcom_client_secret=env_str("DEXCOM_CLIENT_SECRET"),
            dexcom_api_url=dexcom_url,
            dexcom_redirect_uri=env_str("DEXCOM_REDIRECT_URI"),
            libre_api_url=env_str("LIBRE_API_URL", LIBRE_API_URL).rstrip("/"),
            libre_regional_url_template=env_str("LIBRE_REGIONAL_URL_TEMPLATE", LIBRE_REGIONAL_URL_TEMPLATE),
            libre_version=env_str("LIBRE_VERSION", LIBRE_DEFAULT_VERSION),
            libre_product=env_choice("LIBRE_PRODUCT", "llu.android", ("llu.android", "llu.ios")),
            whoop_initial_days=env_int("WHOOP_SYNC_INITIAL_DAYS", 14, minimum=1, maximum=90),
            cgm_overlap_minutes=env_int("CGM_SYNC_OVERLAP_MINUTES", 60, minimum=0, maximum=24 * 60),
            cgm_initial_days=env_int("CGM_SYNC_INITIAL_DAYS", 1, minimum=1, maximum=90),
        )

    def replace(self, **changes: object) -> DirectProvidersConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def field_encryption_keys(raw: list[str], *, debug: bool) -> list[str]:
    """FIELD_ENCRYPTION_KEYS, validated: each a Fernet key (urlsafe base64 of 32 bytes); the first encrypts.

    Missing keys stop start-up unless DEBUG is on, where a fixed, clearly labelled development key is used.
    """
    import base64
    import binascii

    if not raw:
        if not debug:
            raise ImproperlyConfigured(
                "FIELD_ENCRYPTION_KEYS must be set when DEBUG is off: comma-separated Fernet keys, the first "
                "encrypts, all decrypt (generate one with "
                "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`)"
            )
        return [DEV_FIELD_ENCRYPTION_KEY]
    for position, key in enumerate(raw, start=1):
        try:
            valid = len(base64.urlsafe_b64decode(key.encode())) == 32
        except (binascii.Error, ValueError):
            valid = False
        if not valid:
            raise ImproperlyConfigured(
                f"FIELD_ENCRYPTION_KEYS: key {position} is not a Fernet key (urlsafe base64 of 32 bytes)"
            )
    return raw


# Development only (DEBUG on and no FIELD_ENCRYPTION_KEYS): anything encrypted with it is readable by anyone.
DEV_FIELD_ENCRYPTION_KEY = "ZGV2LW9ubHktbm90LXNlY3JldC1sb29wc3luYy1rZXk="


def pointed_at_sandbox(
    url: str, junction: JunctionSyncConfig, direct: DirectProvidersConfig
) -> tuple[JunctionSyncConfig, DirectProvidersConfig]:
    """SANDBOX_URL (`make look`): every provider host replaced by the sandbox served at `url`, with the
    sandbox's published development credentials, so a Force resync of a demo connection never reaches a
    real provider. Refuses to leave any provider URL pointing elsewhere (a provider added later included)."""
    from sandbox.dexcom import DEFAULT_CLIENT_ID as DEXCOM_ID
    from sandbox.dexcom import DEFAULT_CLIENT_SECRET as DEXCOM_SECRET
    from sandbox.dexcom import DexcomSandbox
    from sandbox.junction import DEFAULT_API_KEY, JunctionSandbox
    from sandbox.libre import LibreSandbox
    from sandbox.whoop import DEFAULT_CLIENT_ID as WHOOP_ID
    from sandbox.whoop import DEFAULT_CLIENT_SECRET as WHOOP_SECRET
    from sandbox.whoop import WhoopSandbox

    url = url.rstrip("/")
    junction = junction.replace(
        base_url_override=url + JunctionSandbox.prefix, api_key=DEFAULT_API_KEY, environment="sandbox"
    )
    direct = direct.replace(
        whoop_api_url=url + WhoopSandbox.prefix,
        whoop_client_id=WHOOP_ID,
        whoop_client_secret=WHOOP_SECRET,
        dexcom_api_url=url + DexcomSandbox.prefix,
        dexcom_client_id=DEXCOM_ID,
        dexcom_client_secret=DEXCOM_SECRET,
        libre_api_url=url + LibreSandbox.prefix,
        libre_regional_url_template=url + LibreSandbox.prefix + "/api-{region}",
    )
    hosts = {"JUNCTION_BASE_URL": junction.base_url} | {
        f.name.upper(): getattr(direct, f.name)
        for f in dataclasses.fields(direct)
        if f.name.endswith(("_url", "_url_template"))
    }
    elsewhere = sorted(name for name, value in hosts.items() if not value.startswith(url + "/"))
    if elsewhere:
        raise ImproperlyConfigured(f"SANDBOX_URL is set but {', '.join(elsewhere)} would not use the sandbox")
    return junction, direct
