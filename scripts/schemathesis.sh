#!/usr/bin/env bash
# Property-based API testing of the REST surface with schemathesis (not part of CI).
#
# Starts the relay built from this tree on 127.0.0.1 with a fresh data dir, fetches its
# /openapi.json, and lets schemathesis generate requests from it with every check on:
# no 5xx, status codes and bodies that match the schema, content types, auth refusals.
# With API keys built in (--api-key), the relay gets a known key and admin token and
# schemathesis sends the key; otherwise keys are not enforced. Exits non-zero on any
# failure, a panic in the relay's log, or a relay that died during the run.
#
# Usage: scripts/schemathesis.sh [extra schemathesis arguments]
#   MAX_EXAMPLES=200 scripts/schemathesis.sh        # more cases per operation (default 50)
#   SCHEMATHESIS_VENV=/path scripts/schemathesis.sh  # reuse a virtualenv
# Needs python3 with venv, and crates.io/PyPI access the first time.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build -q -p relay-server
BIN=target/debug/relay-server

VENV=${SCHEMATHESIS_VENV:-target/schemathesis-venv}
if [ ! -x "$VENV/bin/schemathesis" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q 'schemathesis>=4,<5'
fi

WORK=$(mktemp -d)
LOG=$WORK/relay.log
KEY='ABEiM0RVZneImaq7zN3u/w=='
ADMIN_TOKEN='schemathesis-admin-token-0123456789abcdef'
if "$BIN" --help | grep -q -- '--api-key'; then
    AUTH_ARGS=(--api-key "$KEY,schemathesis" --secret-auth "$ADMIN_TOKEN")
    AUTH_HEADER=(-H "Authorization: Bearer $KEY")
else
    AUTH_ARGS=(--insecure-api-keys-not-enforced)
    AUTH_HEADER=()
fi

"$BIN" --listen 127.0.0.1:0 --data-dir "$WORK/data" "${AUTH_ARGS[@]}" 2>"$LOG" &
PID=$!
trap 'kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT

ADDR=
for _ in $(seq 100); do
    ADDR=$(grep -o 'listening on [^ ,]*' "$LOG" | head -1 | cut -d' ' -f3 || true)
    [ -n "$ADDR" ] && break
    sleep 0.1
done
[ -n "$ADDR" ] || { echo "relay did not start:"; cat "$LOG"; exit 1; }
BASE="http://$ADDR"
if ! curl -fsS "$BASE/openapi.json" -o "$WORK/openapi.json"; then
    echo "no /openapi.json at $BASE (is the metrics/openapi work merged?)"
    exit 1
fi

status=0
"$VENV/bin/schemathesis" run "$BASE/openapi.json" --url "$BASE" --checks all \
    --max-examples "${MAX_EXAMPLES:-50}" "${AUTH_HEADER[@]}" "$@" || status=$?

if ! kill -0 "$PID" 2>/dev/null; then
    echo "the relay died during the run:"; cat "$LOG"; exit 1
fi
if grep -q panicked "$LOG"; then
    echo "the relay panicked:"; grep -A5 panicked "$LOG"; exit 1
fi
exit "$status"
