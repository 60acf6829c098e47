#!/usr/bin/env bash
# `make look`: the provider sandbox, the django-q2 worker and the web server together, on the demo database
# (the embedded PostgreSQL or DATABASE_URL). Ctrl-C (or any of the three exiting) stops all three.
set -euo pipefail
PY=${PY:-.venv/bin/python}
WEB_PORT=${LOOK_PORT:-8000}
SANDBOX_PORT=${SANDBOX_PORT:-8765}
export DEBUG=true SANDBOX_URL="http://127.0.0.1:${SANDBOX_PORT}" LOG_LEVEL=${LOG_LEVEL:-warning}
# The consumer API trusts the sandbox's development Clerk issuer (refused without DEBUG/SANDBOX_ENABLED), so
# `manage.py mint_token` gives a token this server accepts.
export CLERK_ISSUER=${CLERK_ISSUER:-"${SANDBOX_URL}/clerk"}
export CLERK_JWKS_URL=${CLERK_JWKS_URL:-"${SANDBOX_URL}/clerk/.well-known/jwks.json"}
export CLERK_AUTHORIZED_PARTIES=${CLERK_AUTHORIZED_PARTIES:-"http://localhost:3000"}

pids=()
stop() { trap - EXIT INT TERM; for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap stop EXIT INT TERM

echo "== sandbox on ${SANDBOX_URL} (every provider host points here: SANDBOX_URL) =="
"$PY" manage.py sandbox --port "$SANDBOX_PORT" & pids+=($!)
for _ in $(seq 1 50); do
    "$PY" -c "import socket,sys; socket.create_connection(('127.0.0.1', $SANDBOX_PORT), 0.2)" 2>/dev/null && break
    sleep 0.2
done
echo "== django-q2 worker (qcluster) =="
"$PY" manage.py qcluster & pids+=($!)
echo "== web server on http://127.0.0.1:${WEB_PORT}/admin/ =="
"$PY" manage.py runserver "127.0.0.1:${WEB_PORT}" --noreload & pids+=($!)
"$PY" manage.py seed_ops_demo --base-url "http://127.0.0.1:${WEB_PORT}"
echo "API: TOKEN=\$(DEBUG=true $PY manage.py mint_token 1 --issuer $CLERK_ISSUER); curl -H \"Authorization: Bearer \$TOKEN\" http://127.0.0.1:${WEB_PORT}/api/patient-graph/wearables/daily-stats"
echo "== running; Ctrl-C stops the web server, the worker and the sandbox =="
wait -n "${pids[@]}"
