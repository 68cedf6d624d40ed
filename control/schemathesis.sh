#!/usr/bin/env bash
# Schemathesis against a real `gatehouse-control serve`: every operation of the OpenAPI
# document the service serves at /openapi.json, fuzzed with valid and invalid input, with
# every check on. A server error, an answer the document does not list, a body that does
# not match its schema, invalid input that is accepted or valid input that is refused
# fails it. `make test` runs it (`make schemathesis` alone); about 15 s on 2 cores.
#
#   GATEHOUSE_CONTROL          the binary (default target/debug/gatehouse-control; this
#                              script builds nothing: `make schemathesis` does)
#   SCHEMATHESIS_MAX_EXAMPLES  test cases per operation and phase (default 100)
#   SCHEMATHESIS_SEED          the seed (default 20260101): the same seed, the same cases
#
# Arguments are passed on to `st run`, e.g. `--report har --report-dir /tmp/st` to see
# every request and answer.
#
# The server gets a fresh SQLite file in a temp dir, random tokens and a free loopback
# port, and is stopped on exit. The tokens reach schemathesis through its environment
# only, never a file or the command line; its output masks the Authorization header.
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned: the checks and the generation change between releases.
SCHEMATHESIS_VERSION=4.32.5
VENV=.venv
CONTROL=${GATEHOUSE_CONTROL:-target/debug/gatehouse-control}
MAX_EXAMPLES=${SCHEMATHESIS_MAX_EXAMPLES:-100}
SEED=${SCHEMATHESIS_SEED:-20260101}

if [[ ! -x $CONTROL ]]; then
  echo "schemathesis.sh: $CONTROL is missing; run \`make schemathesis\`, which builds it" >&2
  exit 1
fi
if [[ ! -x $VENV/bin/python ]]; then
  echo "schemathesis.sh: $VENV is missing; run \`make envoy\`, which creates it" >&2
  exit 1
fi
if [[ "$("$VENV/bin/st" --version 2>/dev/null || true)" != *" $SCHEMATHESIS_VERSION" ]]; then
  "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet \
    "schemathesis==$SCHEMATHESIS_VERSION"
fi

work=$(mktemp -d)
server_pid=
st_pid=
cleanup() {
  trap - INT TERM EXIT
  local pid
  for pid in $st_pid $server_pid; do
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
token() {
  python3 -c 'import secrets; print(secrets.token_urlsafe(32))'
}
PORT=$(free_port)
BASE=http://127.0.0.1:$PORT
GATEHOUSE_ADMIN_TOKEN=$(token)
GATEHOUSE_FEED_TOKEN=$(token)
export GATEHOUSE_ADMIN_TOKEN GATEHOUSE_FEED_TOKEN

# Schemathesis sends wrong tokens on purpose (the ignored_auth check) from one address:
# the per-client limit on failed attempts (10 a minute by default, tested in
# control/tests/token_limit.rs) is raised so that it never locks the run out.
GATEHOUSE_CONTROL_LISTEN=127.0.0.1:$PORT \
  GATEHOUSE_DATABASE_URL="sqlite://$work/control.db" \
  GATEHOUSE_TOKEN_FAILURES_PER_MINUTE=1000000 \
  RUST_LOG=warn \
  "$CONTROL" serve 2>"$work/server.log" &
server_pid=$!

ready() {
  python3 - "$BASE/readyz" <<'PY'
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=1) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
PY
}
for _ in $(seq 1 100); do
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "schemathesis.sh: gatehouse-control exited during startup:" >&2
    cat "$work/server.log" >&2
    exit 1
  fi
  if ready; then break; fi
  sleep 0.1
done
if ! ready; then
  echo "schemathesis.sh: gatehouse-control was not ready after 10s:" >&2
  cat "$work/server.log" >&2
  exit 1
fi

# Each operation gets the token of its security scheme: adminToken for the admin API,
# feedToken for GET /v1/cache, POST /v1/limits/exchange and the ext_authz key check.
# ${...} is resolved by schemathesis from its environment.
cat >"$work/schemathesis.toml" <<'TOML'
# No state kept between runs (a crash cache would replay old cases first): the same
# seed, the same run.
[cache]
enabled = false

# Every check on (object_level_authorization has nothing to compare: one admin token).
[checks]
enabled = true

[auth]
auto-signup = false

[auth.openapi.adminToken]
bearer = "${GATEHOUSE_ADMIN_TOKEN}"

[auth.openapi.feedToken]
bearer = "${GATEHOUSE_FEED_TOKEN}"

# The same token in its own header, as ext_authz sends it to /v1/authz.
[auth.openapi.controlToken]
api_key = "${GATEHOUSE_FEED_TOKEN}"

# DELETE /v1/keys/{id} revokes a key: the record stays, readable with status "revoked"
# and revoked_at, because the audit trail and the rotation chain (replaced_by) point at
# it. use_after_free expects a 404 after a DELETE, which is not this API's contract; it
# is off for the one operation that reads a key back, and on everywhere else.
[[operations]]
include-name = "GET /v1/keys/{id}"
checks.use_after_free.enabled = false

# A valid `since` older than the oldest change the cleanup job kept is answered 410 Gone,
# as documented (the sync then asks for a snapshot). The cleanup purges expired jti
# entries generated with an `expires_at` in the past, so this happens during the run.
# `after` is an opaque cursor: one the service did not give out (any generated one) is
# answered 400 as documented, and so is `after` without since=0 and paged=true, which
# the schema cannot say.
[[operations]]
include-name = "GET /v1/cache"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "410", "429", "5xx"]

# POST /v1/keys: an Idempotency-Key sent again with another request is refused with 422
# IDEMPOTENCY_KEY_REUSED, as documented, and generated values repeat (short ones such as
# "0" come up often) with other bodies: valid input meets it. 410 GONE (a retry whose
# key the cleanup job deleted) and 409 KEY_LIMIT_REACHED are documented answers too.
[[operations]]
include-name = "POST /v1/keys"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "410", "422"]

# The ext_authz check (no policy here: the key alone) answers 401 INVALID_CREDENTIALS to
# any key it did not issue, as documented: a generated x-api-key (or none) is valid input
# and still refused, so these operations answer only 401s and missing_auth would warn
# about the expected.
[[operations]]
include-path = "/v1/authz/{rest}"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403"]
warnings = false

# POST /v1/limits/exchange keeps the fleet's limits in Redis, which this run does not set
# up (no GATEHOUSE_REDIS_URL): valid input is answered 503 FLEET_UNAVAILABLE, as
# documented, and every other answer is still checked. limit and caller are at most 256
# bytes, which the schema's maxLength (characters) cannot say: a generated name of
# multi-byte characters is valid to the schema and refused with 400, as documented.
[[operations]]
include-name = "POST /v1/limits/exchange"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "503"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "503"]

# The levers (control/src/levers.rs). An override's expires_at must be in the future and
# after 1970 (a generated date-time often is not: 400, as documented), a key's override
# needs the key (404), and one more lever over the bound is 409 LEVERS_FULL. An allowlist
# cidr must have its host bits zero, which a schema cannot say (400), and an entry of a
# subject and limit already in force is 409 CONFLICT; generated values repeat. A
# generated key id names no key, so PUT /v1/keys/{id}/limits answers almost only 404s
# and would warn about the expected.
[[operations]]
include-name = "PUT /v1/keys/{id}/limits"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409"]
warnings = false

[[operations]]
include-name = "PUT /v1/tenants/{id}/limits"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409"]

[[operations]]
include-name = "PUT /v1/limits/{name}/mode"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409"]

[[operations]]
include-name = "POST /v1/allowlist"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409"]
TOML

# GET /v1/cache long-polls: with `since` at the current version it holds the request up
# to `wait` seconds (at most 60). Any non-negative `wait` is valid, so a generated one is
# lowered to 1 before it is sent: the long-poll path still runs, and a case stays as valid
# or invalid as it was generated (a wait that is not a non-negative integer is sent as is).
#
# POST /v1/keys/import takes NDJSON (application/x-ndjson), which schemathesis cannot make
# from a schema: its body is described as a binary string, and made here as lines of
# keys, valid and not, mixed with lines of arbitrary bytes. Every such body is valid
# input (a bad line is reported in the 200 answer, not refused with 4xx).
cat >"$work/hooks.py" <<'PY'
import json

import schemathesis
from hypothesis import strategies as st

MAX_WAIT = 1

_ID = st.from_regex(r"\A[A-Za-z0-9._:@+-]{1,24}\Z")
_KEY_LINE = st.fixed_dictionaries(
    {
        "sha256": st.binary(min_size=32, max_size=32).map(bytes.hex),
        "user_id": _ID,
        "tenant_id": _ID,
        "plan": st.sampled_from(["free", "team", "gold"]),
    },
    optional={
        "expires_at": st.sampled_from([None, "2030-06-01T00:00:00Z", "2001-01-01T00:00:00Z"]),
        "scopes": st.none() | st.lists(_ID, max_size=3),
        "key_id": st.none() | _ID,
        "device_name": st.none() | st.text(max_size=20),
        "api_key": _ID,
    },
).map(lambda line: json.dumps(line).encode())
_LINE = st.one_of(_KEY_LINE, _KEY_LINE, st.binary(max_size=80).map(lambda b: b.replace(b"\n", b"")))
schemathesis.openapi.media_type(
    "application/x-ndjson", st.lists(_LINE, max_size=30).map(b"\n".join)
)


@schemathesis.hook
def before_call(context, case, kwargs):
    query = case.query
    if not isinstance(query, dict) or "wait" not in query:
        return
    wait = query["wait"]
    if isinstance(wait, bool):
        return
    if isinstance(wait, str) and wait.isascii() and wait.isdigit():
        wait = int(wait)
    if isinstance(wait, int) and wait > MAX_WAIT and wait < 2**63:
        query["wait"] = MAX_WAIT
PY

# In the background, so that a signal to this script stops it at once (bash runs a trap
# only after the foreground command ends). Hypothesis keeps only caches (Unicode tables)
# in its storage directory, under target/ rather than in the source tree; no examples are
# kept (--generation-database none).
HYPOTHESIS_STORAGE_DIRECTORY=target/schemathesis/hypothesis \
  SCHEMATHESIS_HOOKS="$work/hooks.py" \
  "$VENV/bin/st" --config-file "$work/schemathesis.toml" \
  run "$BASE/openapi.json" \
  --mode all \
  --phases examples,coverage,fuzzing,stateful \
  --max-examples "$MAX_EXAMPLES" \
  --seed "$SEED" \
  --generation-database none \
  --workers 1 \
  --request-timeout 10 \
  --no-color \
  "$@" &
st_pid=$!
status=0
wait "$st_pid" || status=$?
st_pid=
if ((status != 0)); then
  echo "schemathesis.sh: schemathesis failed (exit $status); server log (warnings and errors):" >&2
  tail -n 50 "$work/server.log" >&2
  exit "$status"
fi
