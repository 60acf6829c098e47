"""Loop Sync settings: everything that varies between deploys comes from the environment.

The typed helpers in `loopsync.env` raise ImproperlyConfigured naming the variable, so a bad value stops
start-up. Rules that span several settings are Django system checks (`connections/checks.py`).
"""

from __future__ import annotations

from pathlib import Path

import dj_database_url
from corsheaders.defaults import default_headers
from django.core.exceptions import ImproperlyConfigured

from connections.config import (
    DirectProvidersConfig,
    JunctionSyncConfig,
    field_encryption_keys,
    pointed_at_sandbox,
)
from loopsync import embedded_db
from loopsync.env import (
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_origins,
    env_str,
    provider_budgets_from_env,
)

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off (set DEBUG=true for local work)")
    # Local development only: DEBUG is on, so nothing here is reachable from outside.
    SECRET_KEY = "insecure-local-development-key-do-not-deploy"  # noqa: S105

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1" if DEBUG else "")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

# The provider sandbox's app (its `manage.py sandbox` command) is installed only for local work or when asked.
SANDBOX_ENABLED = env_bool("SANDBOX_ENABLED", DEBUG)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    # Before staticfiles, so runserver serves static files through WhiteNoise too (as gunicorn does).
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "corsheaders",
    # Readiness checks behind /healthz/ready (loopsync/health.py); its app holds the HTML report's template.
    "health_check",
    "django_q",
    "connections.apps.ConnectionsConfig",
    "readings",
    # `manage.py sandbox` (the fake providers) only where asked for: local work, or SANDBOX_ENABLED.
    *(["sandbox"] if SANDBOX_ENABLED else []),
    # OpenAPI schema and self-hosted Swagger UI for the REST API.
    "drf_spectacular",
    "drf_spectacular_sidecar",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # CORS for /api/ only: above everything that can answer (WhiteNoise, CommonMiddleware, DRF's 401), so a
    # browser's preflight gets its 200 and headers without authentication.
    "corsheaders.middleware.CorsMiddleware",
    # Under /api/, an error answered without a problem body (no route: Django's 404; an unhandled exception:
    # its 500, already logged and reported) becomes RFC 9457 problem details. Below CORS, which then adds its
    # headers to that body too.
    "connections.api.errors.ProblemDetailsMiddleware",
    # Static files (admin CSS, Swagger UI) from gunicorn itself: DEBUG off serves none otherwise. Above the rest
    # so a static request skips sessions and CSRF.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "loopsync.urls"
WSGI_APPLICATION = "loopsync.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------------------------------
# PostgreSQL only. DATABASE_URL=postgres://user:password@host:port/name points at any server; unset, the
# embedded server in .pgdata/ (loopsync/embedded_db.py) is started if it is not running, and used.
DATABASE_URL = env_str("DATABASE_URL")
if not DATABASE_URL and not DEBUG:
    # A deploy that lost its DATABASE_URL must fail, not write to a server on its ephemeral disk.
    raise ImproperlyConfigured("DATABASE_URL must be set when DEBUG is off (set DEBUG=true for local work)")
DATABASE_URL = DATABASE_URL or embedded_db.url()
try:
    _default_db = dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 0, minimum=0))
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not a database URL Django understands: {exc}") from None
if _default_db["ENGINE"] != "django.db.backends.postgresql":
    raise ImproperlyConfigured(
        "DATABASE_URL must be a PostgreSQL URL (postgres://...): the SQL is PostgreSQL's."
    )
_default_db.setdefault("OPTIONS", {})["application_name"] = "loopsync"
DATABASES = {"default": _default_db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
# The admin shows "2026-03-10 12:00:00 UTC", not "March 10, 2026, noon" (loopsync/formats/en/formats.py).
FORMAT_MODULE_PATH = ["loopsync.formats"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# Filled by `manage.py collectstatic` at build time (render.yaml); WhiteNoise serves it.
STATIC_ROOT = Path(env_str("STATIC_ROOT") or BASE_DIR / "staticfiles")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Hashed names (cached for a year by browsers, safe to change on deploy) and gzip copies made at build
    # time. It needs collectstatic's manifest: a {% static %} of a file not collected is an error, not a 404.
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# --- Security defaults for production ---------------------------------------------------------------------
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SECURE_CONTENT_TYPE_NOSNIFF = True

# --- Junction sync -----------------------------------------------------------------------------------------
# JUNCTION_API_KEY, JUNCTION_ENV, JUNCTION_REGION, JUNCTION_BASE_URL, JUNCTION_SYNC_USER_IDS,
# JUNCTION_SYNC_LOOKBACK_DAYS, PATIENT_GRAPH_API_URL, PATIENT_GRAPH_API_KEY: parsed and validated here so a
# bad value stops start-up with a message naming the variable.
JUNCTION_SYNC = JunctionSyncConfig.from_env()
# Seconds; the product spec fixes 30 s for provider calls. Lowered in tests to exercise timeouts quickly.
PROVIDER_HTTP_TIMEOUT = env_float("PROVIDER_HTTP_TIMEOUT", 30.0, minimum=0.05)
# Attempts per provider request before the request fails (429, 5xx, timeouts), and the backoff cap.
PROVIDER_HTTP_ATTEMPTS = env_int("PROVIDER_HTTP_ATTEMPTS", 4, minimum=1, maximum=10)
PROVIDER_BACKOFF_BASE = env_float("PROVIDER_BACKOFF_BASE", 0.5)
PROVIDER_BACKOFF_CAP = env_float("PROVIDER_BACKOFF_CAP", 30.0)
# Shared provider budgets (connections/budgets.py): token buckets in PostgreSQL that every request of every
# worker passes. Per provider: its documented limits, each {"limit": requests, "window": seconds, "scope":
# "app" | "account"}. WHOOP: 100/min and 10,000/day per app; Dexcom: 60,000/h per app; LibreLinkUp: its
# undocumented per-account polling limit (429 past a burst; the sandbox's 30 a minute); Junction: none for
# server-to-server calls.
PROVIDER_BUDGETS: dict[str, list[dict[str, float | int | str]]] = {
    "whoop": [
        {"limit": 100, "window": 60, "scope": "app"},
        {"limit": 10_000, "window": 86_400, "scope": "app"},
    ],
    "dexcom": [{"limit": 60_000, "window": 3600, "scope": "app"}],
    "libre": [{"limit": 30, "window": 60, "scope": "account"}],
    "junction": [],
    # PROVIDER_BUDGETS (JSON, per provider as above) replaces a provider's defaults, e.g. after WHOOP raised
    # the app's limit: {"whoop": [{"limit": 300, "window": 60}, {"limit": 30000, "window": 86400}]}.
    **provider_budgets_from_env(env_str("PROVIDER_BUDGETS")),
}
# A provider's circuit breaker opens when, of at least `min_requests` requests in `window` seconds, more than
# `failure_ratio` failed (5xx, timeouts, network errors); after `cooldown` seconds one probe request decides.
PROVIDER_BREAKER = {
    "window": env_float("PROVIDER_BREAKER_WINDOW", 60.0, minimum=1.0),
    "min_requests": env_int("PROVIDER_BREAKER_MIN_REQUESTS", 10, minimum=1),
    "failure_ratio": env_float("PROVIDER_BREAKER_FAILURE_RATIO", 0.5, minimum=0.0),
    "cooldown": env_float("PROVIDER_BREAKER_COOLDOWN", 30.0, minimum=0.0),
    # A probe whose worker died is given up after this many seconds and another one is let through.
    "probe_timeout": env_float("PROVIDER_BREAKER_PROBE_TIMEOUT", 60.0, minimum=1.0),
}
# Logins per account not known to have succeeded within `interval` seconds (LibreLinkUp locks an account after 3
# failed logins in 60 s: we stop at 2 and wait).
PROVIDER_LOGIN_GUARD = {"attempts": 2, "interval": 60.0}
# Backfill on connect (connections/backfill.py): days of history fetched for a new connection, per provider,
# capped by what the provider holds (LibreLinkUp: ~12 h). Junction's own historical pull decides its depth;
# its `historical.data.*` events extend the backfill. BACKFILL_ON_CONNECT=false turns it off.
BACKFILL_DAYS: dict[str, float] = {
    "whoop": env_int("BACKFILL_DAYS_WHOOP", 180, minimum=0, maximum=3650),
    "dexcom": env_int("BACKFILL_DAYS_DEXCOM", 90, minimum=0, maximum=3650),
    "libre": env_int("BACKFILL_DAYS_LIBRE", 1, minimum=0, maximum=3650),
    "junction": env_int("BACKFILL_DAYS_JUNCTION", 30, minimum=0, maximum=3650),
}
BACKFILL_ON_CONNECT = env_bool("BACKFILL_ON_CONNECT", True)
# The gap ledger (connections/gaps.py): a local day below this share of the expected data is a gap day; runs of
# them in the last GAP_SCAN_DAYS are recorded after each scheduled sync; a reconnect after a pause longer than
# GAP_RECONNECT_AFTER_HOURS records the pause as a gap and queues its repair.
GAP_DAY_SHARE = env_float("GAP_DAY_SHARE", 0.5, minimum=0.0)
GAP_SCAN_DAYS = env_int("GAP_SCAN_DAYS", 30, minimum=1, maximum=365)
GAP_RECONNECT_AFTER_HOURS = env_float("GAP_RECONNECT_AFTER_HOURS", 6.0, minimum=0.0)
# Attempts per user sync (the spec: retry a failed user sync up to 3 times, then skip the user).
SYNC_USER_ATTEMPTS = env_int("SYNC_USER_ATTEMPTS", 3, minimum=1, maximum=10)
SYNC_RETRY_BASE_SECONDS = env_float("SYNC_RETRY_BASE_SECONDS", 2.0)

# --- Direct providers: WHOOP, Dexcom, FreeStyle Libre (LibreLinkUp) and OAuth connections ----------------
# WHOOP_CLIENT_ID/SECRET, WHOOP_API_URL, WHOOP_REDIRECT_URI, DEXCOM_CLIENT_ID/SECRET, DEXCOM_REGION or
# DEXCOM_API_URL, DEXCOM_REDIRECT_URI, LIBRE_API_URL, LIBRE_REGIONAL_URL_TEMPLATE, LIBRE_VERSION, LIBRE_PRODUCT,
# WHOOP_SYNC_INITIAL_DAYS, CGM_SYNC_OVERLAP_MINUTES, CGM_SYNC_INITIAL_DAYS.
DIRECT_PROVIDERS = DirectProvidersConfig.from_env()
# `make look`: the URL of a running sandbox; every provider host and credential then points at it, so nothing
# done in the demo (a Force resync) reaches a real provider. Only where the sandbox may run.
SANDBOX_URL = env_str("SANDBOX_URL").rstrip("/")
if SANDBOX_URL:
    if not SANDBOX_ENABLED:
        raise ImproperlyConfigured(
            "SANDBOX_URL is for local work: set DEBUG=true or SANDBOX_ENABLED=true, or unset it"
        )
    JUNCTION_SYNC, DIRECT_PROVIDERS = pointed_at_sandbox(SANDBOX_URL, JUNCTION_SYNC, DIRECT_PROVIDERS)
# Fernet keys for credentials at rest, comma-separated: the first encrypts, all decrypt (rotation).
FIELD_ENCRYPTION_KEYS = field_encryption_keys(env_list("FIELD_ENCRYPTION_KEYS"), debug=DEBUG)
# Seconds an OAuth state (and a patient's signed connect link) stays valid.
OAUTH_STATE_TTL_SECONDS = env_int("OAUTH_STATE_TTL_SECONDS", 600, minimum=60, maximum=3600)
# Parallel connections per run of the direct-provider jobs when run inline (run_job); the scheduled jobs fan
# out one django-q2 task per connection instead.
SYNC_JOB_CONCURRENCY = env_int("SYNC_JOB_CONCURRENCY", 16, minimum=1, maximum=128)

# --- Webhooks (POST /webhooks/junction, POST /webhooks/whoop) --------------------------------------------
# The Junction endpoint's Svix signing secret (whsec_...); empty: /webhooks/junction refuses every delivery.
# WHOOP signs with the app's client secret (WHOOP_CLIENT_SECRET).
JUNCTION_WEBHOOK_SECRET = env_str("JUNCTION_WEBHOOK_SECRET")
# Processed and ignored inbox rows older than this are removed by the weekly cleanup-wearable-data.
WEBHOOK_INBOX_RETENTION_DAYS = env_int("WEBHOOK_INBOX_RETENTION_DAYS", 14, minimum=1, maximum=3650)
# A received inbox row still unprocessed after this many seconds (its task was lost with a worker, or never
# queued) is processed by the process-webhook-inbox sweep.
WEBHOOK_PENDING_SECONDS = env_int("WEBHOOK_PENDING_SECONDS", 120, minimum=5, maximum=86_400)

# --- Daily statistics and retention (aggregate-wearable-data, cleanup-wearable-data) ---------------------
# Raw readings older than this many days are removed weekly; daily statistics are kept for good.
RAW_READING_RETENTION_DAYS = env_int("RAW_READING_RETENTION_DAYS", 90, minimum=1, maximum=3650)
# Readings of a deleted or deactivated connection are removed this many days after it went away.
ORPHANED_READING_GRACE_DAYS = env_int("ORPHANED_READING_GRACE_DAYS", 30, minimum=0, maximum=3650)
# PostgreSQL: weekly partitions of the raw tables are created this many weeks ahead of today.
READING_PARTITION_PREMAKE_WEEKS = env_int("READING_PARTITION_PREMAKE_WEEKS", 4, minimum=1, maximum=52)

# --- django-q2 --------------------------------------------------------------------------------------------
# ORM broker: delivery receipts, so a task lost with its worker is re-delivered; every task is idempotent.
# timeout < retry, or a slow task is re-delivered while it still runs. Provider failures are retried by the
# engine and end the task normally; a task that raises (the database or the broker failed under it) is not
# acknowledged and is delivered again, at most max_attempts times; its run counts it once (JobRunUnit).
Q_CLUSTER = {
    "name": "loopsync",
    "orm": "default",
    "workers": env_int("Q_WORKERS", 2, minimum=1, maximum=64),
    "timeout": env_int("Q_TIMEOUT", 900, minimum=1),
    # When an unacknowledged task (its worker died) is delivered again; must exceed the timeout (E002).
    "retry": env_int("Q_RETRY", env_int("Q_TIMEOUT", 900, minimum=1) + 300, minimum=2),
    "max_attempts": 3,
    "ack_failures": False,
    "catch_up": False,
    "save_limit": 1000,
    "poll": 1,
    "label": "Background jobs",
    "sync": env_bool("Q_SYNC", False),
}

# --- Logging: never log tokens, readings or request bodies ---------------------------------------------
LOG_FORMAT = env_choice("LOG_FORMAT", "text", ("text", "json"))
LOG_LEVEL = env_choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error")).upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "text": {"()": "loopsync.logging.TextFormatter"},
        "json": {"()": "loopsync.logging.JsonFormatter"},
    },
    "filters": {"scrub_query": {"()": "loopsync.logging.ScrubQueryFilter"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["scrub_query"]}
    },
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "loopsync": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
        # Django's 4xx/5xx lines carry the request (its repr is the path with the query string: OAuth codes,
        # states, connect links). Filtered on the logger, before any handler or Sentry's logging hook sees it.
        "django.request": {"filters": ["scrub_query"]},
        # runserver's request lines, through our formatter and filter instead of Django's raw one.
        "django.server": {
            "handlers": ["console"],
            "filters": ["scrub_query"],
            "level": "INFO",
            "propagate": False,
        },
        "django_q": {"handlers": ["console"], "level": "WARNING", "propagate": False},
        # httpx logs full request URLs (user ids) at INFO; keep it quiet.
        "httpx": {"handlers": ["console"], "level": "WARNING", "propagate": False},
    },
}

REST_FRAMEWORK = {
    "DEFAULT_RENDERER_CLASSES": ["connections.api.jsoncodec.ORJSONRenderer"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
}

# --- CORS: the consumer app's browser calls /api/ from its own origin ------------------------------------
# Origins (scheme://host[:port]) allowed to call the API from a browser; empty: none (curl and servers are not
# affected). Bearer tokens, never cookies, so no credentials mode.
CORS_ALLOWED_ORIGINS = env_origins("CORS_ALLOWED_ORIGINS")
CORS_URLS_REGEX = r"^/api/.*$"
# Idempotency-Key is sent by the manual-sync POST; Location and Retry-After are what a browser app must read
# back (202 and 429).
CORS_ALLOW_HEADERS = (*default_headers, "idempotency-key")
CORS_EXPOSE_HEADERS = ["location", "retry-after"]
# Browsers cache a preflight this long (Chromium caps it at 2 hours).
CORS_PREFLIGHT_MAX_AGE = 7200

# --- Sentry and ops monitoring (loopsync/sentry.py, connections/jobruns.py) ------------------------------
# SENTRY_DSN turns on error reporting and Crons check-ins; PHI is scrubbed before anything leaves.
SENTRY_DSN = env_str("SENTRY_DSN")
SENTRY_ENVIRONMENT = env_str("SENTRY_ENVIRONMENT", "development" if DEBUG else "production")
SENTRY_TRACES_SAMPLE_RATE = env_float("SENTRY_TRACES_SAMPLE_RATE", 0.0)
if SENTRY_TRACES_SAMPLE_RATE > 1:
    raise ImproperlyConfigured(
        f"SENTRY_TRACES_SAMPLE_RATE={SENTRY_TRACES_SAMPLE_RATE} must be between 0 and 1"
    )
# Minutes Sentry waits past a scheduled time for the check-in, and the longest a run may take, before alerting.
SENTRY_CRONS_MARGIN_MINUTES = env_int("SENTRY_CRONS_MARGIN_MINUTES", 30, minimum=1)
SENTRY_CRONS_MAX_RUNTIME_MINUTES = env_int("SENTRY_CRONS_MAX_RUNTIME_MINUTES", 240, minimum=1)
if SENTRY_DSN:
    from sentry_sdk.utils import BadDsn

    from loopsync.sentry import init_sentry

    try:
        init_sentry(
            SENTRY_DSN,
            environment=SENTRY_ENVIRONMENT,
            release=env_str("SENTRY_RELEASE") or env_str("RENDER_GIT_COMMIT"),
            traces_sample_rate=SENTRY_TRACES_SAMPLE_RATE,
        )
    except BadDsn as exc:
        raise ImproperlyConfigured(f"SENTRY_DSN is not a Sentry DSN: {exc}") from None

# --- REST API: Clerk authentication, manual sync, the patient-graph service API --------------------------
# Clerk session JWTs: RS256 only. Keys from CLERK_JWT_KEY (a PEM, networkless; "\n" escapes allowed) or
# CLERK_JWKS_URL (cached; an unknown kid refetches at most once a minute). `iss` must equal CLERK_ISSUER;
# an `azp` claim must be in CLERK_AUTHORIZED_PARTIES. Cross-setting rules: connections/checks.py.
CLERK_JWKS_URL = env_str("CLERK_JWKS_URL")
CLERK_JWT_KEY = env_str("CLERK_JWT_KEY").replace("\\n", "\n")
CLERK_ISSUER = env_str("CLERK_ISSUER")
CLERK_AUTHORIZED_PARTIES = env_list("CLERK_AUTHORIZED_PARTIES")
CLERK_LEEWAY_SECONDS = env_int("CLERK_LEEWAY_SECONDS", 5, minimum=0, maximum=60)
# Clerk session tokens carry `sid`; JWT-template tokens (same keys) do not, so they cannot pass as sessions.
CLERK_REQUIRE_SID = env_bool("CLERK_REQUIRE_SID", True)
# Manual syncs a patient may start per rolling hour (Junction allows 8 user refreshes an hour).
MANUAL_SYNC_PER_HOUR = env_int("MANUAL_SYNC_PER_HOUR", 6, minimum=1, maximum=1000)
# A queued or running manual sync older than this is taken over by the next request (its task was lost).
MANUAL_SYNC_STALE_SECONDS = env_int("MANUAL_SYNC_STALE_SECONDS", Q_CLUSTER["retry"] + 300, minimum=60)
# The largest ingest body the patient-graph service accepts, and the largest the sync worker's writer sends: one
# value, so the two agree (web and worker read the same variable). 2 MiB holds about 14,000 readings; the web
# process holds a body and its parsed rows in memory at once. A valid row is at most about 1.2 KB (the service's
# field lengths), so the minimum always fits one.
PATIENT_GRAPH_MAX_BODY_BYTES = env_int(
    "PATIENT_GRAPH_MAX_BODY_BYTES", 2 * 1024 * 1024, minimum=64 * 1024, maximum=64 * 1024 * 1024
)
REST_FRAMEWORK |= {
    "DEFAULT_AUTHENTICATION_CLASSES": ["connections.api.authentication.ClerkAuthentication"],
    "EXCEPTION_HANDLER": "connections.api.errors.api_exception_handler",
    # Both APIs speak JSON only; form parsers would also appear in the schema as accepted bodies.
    "DEFAULT_PARSER_CLASSES": ["connections.api.jsoncodec.ORJSONParser"],
    # drf-spectacular's, adding the problem responses every operation can answer with (connections/api/openapi.py).
    "DEFAULT_SCHEMA_CLASS": "connections.api.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Loop Sync API",
    "DESCRIPTION": "Manual wearable sync and read API for the consumer app (Clerk session JWT), and the "
    "patient-graph service API (PATIENT_GRAPH_API_KEY).",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Errors are RFC 9457 problem details; each code and sync error code is one named, documented enum.
    "ENUM_NAME_OVERRIDES": {
        "ProblemCode": "connections.api.errors.PROBLEM_CHOICES",
        "SyncErrorCode": "connections.models.SyncErrorCode",
        "SyncRequestStatus": "connections.models.SyncRequestStatus",
    },
    # The metric and source enums come from the provider registry when the schema is generated.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "connections.api.openapi.registry_enums",
    ],
}
