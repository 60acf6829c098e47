"""Test settings: the production settings with fast retries and safe defaults for a test run."""

from __future__ import annotations

import os

os.environ.setdefault("SECRET_KEY", "test-only-secret-key")
os.environ.setdefault("JUNCTION_ENV", "sandbox")
# A fixed test key (not the DEBUG development key): tests run with DEBUG off, as production does.
os.environ.setdefault("FIELD_ENCRYPTION_KEYS", "dGVzdC1vbmx5LWtleS1mb3ItbG9vcHN5bmMtdGVzdHM=")
if not os.environ.get("DATABASE_URL"):
    # Tests run with DEBUG off, where settings require DATABASE_URL: without one, the embedded server.
    from loopsync import embedded_db

    os.environ["DATABASE_URL"] = embedded_db.url()

from loopsync.settings import *  # noqa: E402,F403
from loopsync.settings import Q_CLUSTER  # noqa: E402

# Retries and backoff as in production, only faster: tests exercise the same code paths.
PROVIDER_HTTP_TIMEOUT = 2.0
PROVIDER_BACKOFF_BASE = 0.01
PROVIDER_BACKOFF_CAP = 0.05
SYNC_RETRY_BASE_SECONDS = 0.01
# django-q2 runs tasks in-process in tests.
# (A test that runs a real cluster in a child process sets Q_SYNC=false for it.)
Q_CLUSTER = {**Q_CLUSTER, "sync": os.environ.get("Q_SYNC", "true") != "false"}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Let pytest's caplog (a root handler) see our structured log records.
LOGGING = {
    **LOGGING,  # noqa: F405
    "loggers": {
        **LOGGING["loggers"],  # noqa: F405
        "loopsync": {"level": "INFO", "propagate": True},
    },
}
