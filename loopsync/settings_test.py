"""Test settings: the production settings with fast retries and safe defaults for a test run."""

from __future__ import annotations

import os

os.environ.setdefault("SECRET_KEY", "test-only-secret-key")
os.environ.setdefault("JUNCTION_ENV", "sandbox")
# A fixed test key (not the DEBUG development key): tests run with DEBUG off, as production does.
os.environ.setdefault("FIELD_ENCRYPTION_KEYS", "dGVzdC1vbmx5LWtleS1mb3ItbG9vcHN5bmMtdGVzdHM=")
# Tests run with DEBUG off, where a deploy without Clerk keys fails its system checks (connections.E104). The
# suite's default is a real RSA public key whose private half was thrown away: the configuration is complete
# and valid, and no token verifies against it, so a test that needs a signed-in patient points Clerk at the
# sandbox's keys (tests/conftest.py's `clerk` fixture).
os.environ.setdefault(
    "CLERK_JWT_KEY",
    "-----BEGIN PUBLIC KEY-----\n"
    "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAuIFN2rpVnMt26Zh1dedX\n"
    "Y1O4DTFZG/mky2gtLzFwEzp/LNpK8VGbrYw5RUPHKhS/JxANRxcNjZzuEzC3Q3iu\n"
    "sskHQBTDOyWwRJ1EgOmAFVI+psHUDaS4+vv2HIKyfDvQ4KpAKCW2IXKE+thJEQdC\n"
    "tkNJuY4zf9scxTuCYz8+RwEnciDlb8yzOTEu9mcl0QZI3kVyxNOvun7i6HglBXlC\n"
    "Q5XHGO3oJEQtGgqINo7/ztKRsxjnqUxFRszYOsDpCyGfDanffFE2codyjg/Mne2l\n"
    "l9snAJXufM0rZMSskJvziM3aH9NGeTH7bxJbDxnEuUAmW7xATDnfCshpo4fyZxQc\n"
    "lwIDAQAB\n"
    "-----END PUBLIC KEY-----",
)
os.environ.setdefault("CLERK_ISSUER", "https://clerk.loopsync.test")
# The sandbox's Clerk tokens carry this azp (sandbox/clerk.py DEFAULT_AZP); the same origin may use CORS.
os.environ.setdefault("CLERK_AUTHORIZED_PARTIES", "http://localhost:3000")
os.environ.setdefault("CORS_ALLOWED_ORIGINS", "http://localhost:3000")
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
# Connecting a sandbox user does not start its backfill unless the test asks for one (tests/test_backfill.py):
# most tests connect users to test something else, and the sandbox would serve months of history inline.
BACKFILL_ON_CONNECT = os.environ.get("BACKFILL_ON_CONNECT", "false") == "true"
# django-q2 runs tasks in-process in tests.
# (A test that runs a real cluster in a child process sets Q_SYNC=false for it.)
Q_CLUSTER = {**Q_CLUSTER, "sync": os.environ.get("Q_SYNC", "true") != "false"}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Static files from the apps' folders, found on each request: the suite does not run collectstatic (a test that
# needs the production manifest storage runs it in a child process: tests/test_deploy.py).
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}  # noqa: F405
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True

# Let pytest's caplog (a root handler) see our structured log records.
LOGGING = {
    **LOGGING,  # noqa: F405
    "loggers": {
        **LOGGING["loggers"],  # noqa: F405
        "loopsync": {"level": "INFO", "propagate": True},
    },
}
