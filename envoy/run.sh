#!/usr/bin/env bash
# The local stack behind `make run`, in the foreground: the control service
# (gatehouse-control serve, on SQLite), the echo upstream, and Envoy with the gatehouse
# module and a policy whose keys come from the control service's feed. It issues a demo
# key through the API, waits until Envoy accepts it, and prints curl lines.
# Ctrl-C or SIGTERM stops everything this script started.
#
#   GATEHOUSE_LISTEN    Envoy's listener        (default 127.0.0.1:10000)
#   GATEHOUSE_ADMIN     Envoy's admin interface (default 127.0.0.1:9901)
#   GATEHOUSE_POLICY    the policy file         (default policies/local.yaml, which takes
#                       its keys from the feed; a policy without `feed:` gets no demo key)
#   GATEHOUSE_UPSTREAM  the echo upstream       (default: a free loopback port)
#   GATEHOUSE_WORKERS   Envoy worker threads    (default 2)
#   GATEHOUSE_NODE_ID   Envoy's node id, which the refusal audit and /v1/stats name it by
#                       (default gatehouse-local)
#   GATEHOUSE_CONTROL_LISTEN  the control API   (default 127.0.0.1:8081)
#   GATEHOUSE_CONTROL_DB      its SQLite file   (default .run/control.db; kept across runs)
#   GATEHOUSE_FILTER_ONLY=1   no singleton service: one of Envoy's workers runs the sync
#                             (as under Istio or Envoy Gateway; docs/operating.md)
#   GATEHOUSE_REDIS_URL       the fleet's counters, for a policy with `scope: fleet`
#                             (default: a redis-server of its own on .run/redis.sock)
#   GATEHOUSE_ADMIN_TOKEN     the control API's bearer token (default: generated and
#                       printed, new on every start)
#   GATEHOUSE_FEED_TOKEN      the token the sync reads the feed with (default: generated;
#                       never printed or written to a file)
#   GATEHOUSE_JWT_SECRET  the HS256 secret of the policy's `demo-hs256` JWT key
#                       (default: 48 random bytes, base64url, new on every start)
#   GATEHOUSE_ENVOY, GATEHOUSE_WASM, GATEHOUSE_HARNESS, GATEHOUSE_CONTROL: the binaries
#                       (built by `make run`)
#
# Rendered config and logs go to .run/.
set -euo pipefail
cd "$(dirname "$0")/.."

LISTEN=${GATEHOUSE_LISTEN:-127.0.0.1:10000}
ADMIN=${GATEHOUSE_ADMIN:-127.0.0.1:9901}
POLICY=${GATEHOUSE_POLICY:-policies/local.yaml}
WORKERS=${GATEHOUSE_WORKERS:-2}
NODE_ID=${GATEHOUSE_NODE_ID:-gatehouse-local}
ENVOY=${GATEHOUSE_ENVOY:-.venv/bin/envoy}
HARNESS=${GATEHOUSE_HARNESS:-target/debug/gatehouse-harness}
CONTROL=${GATEHOUSE_CONTROL:-target/debug/gatehouse-control}
CONTROL_LISTEN=${GATEHOUSE_CONTROL_LISTEN:-127.0.0.1:8081}
RUN_DIR=.run
CONTROL_DB=${GATEHOUSE_CONTROL_DB:-$RUN_DIR/control.db}
# The static key of policies/example.yaml, for a policy without a feed.
STATIC_DEMO_KEY=ghk_demo_5f0c1b8e2d7a4c9e8b3f6A2d4hG5
# Demo keys are issued to this user with this device name; each run revokes the last
# run's (a user may hold only GATEHOUSE_MAX_KEYS_PER_USER usable keys).
DEMO_USER=user_demo
DEMO_DEVICE="make run demo"
# How long the demo key may take to reach Envoy through the feed.
FEED_WAIT_SECS=30

for bin in "$ENVOY" "$HARNESS" "$CONTROL"; do
  if [[ ! -x $bin ]]; then
    echo "run.sh: $bin is missing; run \`make run\`, which builds it" >&2
    exit 1
  fi
done

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
UPSTREAM=${GATEHOUSE_UPSTREAM:-127.0.0.1:$(free_port)}

random_token() {
  python3 -c 'import secrets; print(secrets.token_urlsafe(32))'
}

# Secrets travel in the environment only: Envoy hands GATEHOUSE_JWT_SECRET and
# GATEHOUSE_FEED_TOKEN to the VM (host_env_keys in the rendered config), where the
# policy's `secret_env` and `feed.token_env` read them; the control service reads both
# tokens from its environment. None of them is written to a file.
if [[ -z ${GATEHOUSE_JWT_SECRET:-} ]]; then
  GATEHOUSE_JWT_SECRET=$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')
  jwt_secret_note="generated for this run"
else
  jwt_secret_note="from the environment"
fi
if [[ -z ${GATEHOUSE_ADMIN_TOKEN:-} ]]; then
  GATEHOUSE_ADMIN_TOKEN=$(random_token)
  admin_token_generated=1
else
  admin_token_generated=
fi
GATEHOUSE_FEED_TOKEN=${GATEHOUSE_FEED_TOKEN:-$(random_token)}
export GATEHOUSE_JWT_SECRET GATEHOUSE_ADMIN_TOKEN GATEHOUSE_FEED_TOKEN
DEMO_JWT=$("$CONTROL" mint-jwt --secret-env GATEHOUSE_JWT_SECRET --kid demo-hs256 \
  --sub user_demo --tenant tenant_demo --plan team)

pids=()
cleanup() {
  trap - INT TERM EXIT
  local i
  # Newest first: Envoy goes before the control service, so no long poll holds up the
  # latter's graceful shutdown.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null || true; done
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do wait "${pids[i]}" 2>/dev/null || true; done
  echo "gatehouse stopped" >&2
}
trap cleanup EXIT
# Exit through the EXIT trap with the conventional status.
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$RUN_DIR"

# Succeeds when GET http://$1 answers 200 within a second.
http_ok() {
  python3 - "$1" <<'PY'
import sys, urllib.request
try:
    with urllib.request.urlopen(f"http://{sys.argv[1]}", timeout=1) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
PY
}

# Waits for `http_ok $2` while process $3 lives; $1 names it, $4 is its log.
wait_ready() {
  local name=$1 url=$2 pid=$3 log=$4
  for _ in $(seq 1 300); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "run.sh: $name exited during startup; the end of $log:" >&2
      tail -n 30 "$log" >&2
      exit 1
    fi
    if http_ok "$url"; then return 0; fi
    sleep 0.2
  done
  echo "run.sh: $name was not ready after 60s; see $log" >&2
  exit 1
}

filter_only=()
[[ -n ${GATEHOUSE_FILTER_ONLY:-} && ${GATEHOUSE_FILTER_ONLY} != 0 ]] && filter_only=(--filter-only)
"$HARNESS" envoy-config --policy "$POLICY" --listen "$LISTEN" --admin "$ADMIN" \
  --upstream "$UPSTREAM" --control "$CONTROL_LISTEN" "${filter_only[@]}" >"$RUN_DIR/envoy.yaml"
# A policy with a `feed` section has a sync: the singleton service, or in filter-only
# mode one of Envoy's workers.
if grep -q '"root_id":"gatehouse_sync"' "$RUN_DIR/envoy.yaml" \
  || { [[ ${#filter_only[@]} -gt 0 ]] && grep -q '\\"feed\\":' "$RUN_DIR/envoy.yaml"; }; then
  fed=1
else
  fed=
fi

# Fleet-scoped limits (`scope: fleet` in the policy, which the rendered plugin
# configuration holds as JSON) keep the fleet's counters in Redis: a redis-server of our
# own on a unix socket under .run, unless GATEHOUSE_REDIS_URL names one.
if grep -q '\\"scope\\":\\"fleet\\"' "$RUN_DIR/envoy.yaml" && [[ -z ${GATEHOUSE_REDIS_URL:-} ]]; then
  # Debian's package, installed when missing (as `make test` does).
  command -v redis-server >/dev/null || make -s redis
  rm -f "$RUN_DIR/redis.sock"
  redis-server --port 0 --unixsocket "$PWD/$RUN_DIR/redis.sock" --unixsocketperm 700 \
    --save '' --appendonly no --dir "$RUN_DIR" >"$RUN_DIR/redis.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do [[ -S $RUN_DIR/redis.sock ]] && break; sleep 0.05; done
  export GATEHOUSE_REDIS_URL="redis+unix://$PWD/$RUN_DIR/redis.sock"
  echo "run.sh: fleet-scoped limits: Redis on $RUN_DIR/redis.sock (log $RUN_DIR/redis.log)" >&2
fi

# The control service before Envoy: Envoy's sync polls it from the start. It runs with
# Envoy's policy: keys are issued on its plans only, revocations last as long as its
# tokens, and /v1/authz decides as the module does.
GATEHOUSE_CONTROL_LISTEN=$CONTROL_LISTEN GATEHOUSE_DATABASE_URL="sqlite://$CONTROL_DB" \
  "$CONTROL" serve --policy "$POLICY" 2>"$RUN_DIR/control.log" &
control_pid=$!
pids+=("$control_pid")
wait_ready "the control service (on $CONTROL_LISTEN; set GATEHOUSE_CONTROL_LISTEN to move it)" \
  "$CONTROL_LISTEN/readyz" "$control_pid" "$RUN_DIR/control.log"

"$HARNESS" echo-upstream --listen "$UPSTREAM" 2>"$RUN_DIR/upstream.log" &
pids+=($!)
# .venv/bin/envoy exec's the real binary, so this pid is Envoy's and signals reach it.
"$ENVOY" -c "$RUN_DIR/envoy.yaml" --concurrency "$WORKERS" --disable-hot-restart \
  --service-node "$NODE_ID" --log-level info >"$RUN_DIR/envoy.log" 2>&1 &
envoy_pid=$!
pids+=("$envoy_pid")
wait_ready Envoy "$ADMIN/ready" "$envoy_pid" "$RUN_DIR/envoy.log"

# Revokes the demo keys of earlier runs and issues a new one through the API; prints
# "<key id> <key>".
issue_demo_key() {
  python3 - "$CONTROL_LISTEN" "$DEMO_USER" "$DEMO_DEVICE" <<'PY'
import json, os, sys, urllib.parse, urllib.request
control, user, device = sys.argv[1:]
token = os.environ["GATEHOUSE_ADMIN_TOKEN"]

def call(method, path, body=None):
    req = urllib.request.Request(
        f"http://{control}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        sys.exit(f"run.sh: {method} {path} answered {e.code}: {e.read().decode(errors='replace')}")

for key in call("GET", "/v1/keys?" + urllib.parse.urlencode({"user": user}))["keys"]:
    if key["device_name"] == device and key["status"] == "active":
        call("DELETE", f"/v1/keys/{key['id']}")
issued = call("POST", "/v1/keys", {"user_id": user, "tenant_id": "tenant_demo",
                                   "plan": "team", "device_name": device})
print(issued["id"], issued["api_key"])
PY
}

# Waits until Envoy answers 200 to the demo key: the feed has delivered it.
wait_for_key() {
  python3 - "$LISTEN" "$1" "$FEED_WAIT_SECS" <<'PY'
import sys, time, urllib.request
listen, key, bound = sys.argv[1], sys.argv[2], float(sys.argv[3])
deadline = time.monotonic() + bound
while time.monotonic() < deadline:
    req = urllib.request.Request(f"http://{listen}/v1/things", headers={"x-api-key": key})
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except Exception:
        pass
    time.sleep(0.05)
sys.exit(1)
PY
}

if [[ -n $fed ]]; then
  demo=$(issue_demo_key)
  read -r DEMO_KEY_ID DEMO_KEY <<<"$demo"
  if ! wait_for_key "$DEMO_KEY"; then
    echo "run.sh: Envoy did not accept the demo key within ${FEED_WAIT_SECS}s; see $RUN_DIR/envoy.log (feed lines) and $RUN_DIR/control.log" >&2
    exit 1
  fi
  key_note="issued through the control API just now (key id $DEMO_KEY_ID)"
else
  DEMO_KEY=$STATIC_DEMO_KEY
  DEMO_KEY_ID=
  key_note="declared in $POLICY (it has no feed section: keys issued through the API do not reach Envoy)"
fi

if [[ -n $admin_token_generated ]]; then
  admin_token_lines="The admin token (generated for this run; set GATEHOUSE_ADMIN_TOKEN to choose it):
export GATEHOUSE_ADMIN_TOKEN='$GATEHOUSE_ADMIN_TOKEN'"
  # The token travels in the fragment, which the browser never sends; the page moves it
  # to the tab's session storage and clears the address bar.
  dashboard_url="http://$CONTROL_LISTEN/#token=$GATEHOUSE_ADMIN_TOKEN"
else
  admin_token_lines="The admin token: GATEHOUSE_ADMIN_TOKEN from the environment (not printed)."
  dashboard_url="http://$CONTROL_LISTEN/ (it asks for the admin token)"
fi

cat <<MSG
gatehouse is running: Envoy on http://$LISTEN (admin http://$ADMIN), echo upstream on $UPSTREAM
control service on http://$CONTROL_LISTEN (database $CONTROL_DB)
policy: $POLICY; logs: $RUN_DIR/envoy.log, $RUN_DIR/control.log

The demo key, $key_note; answered by the upstream (200):
curl -i -H 'x-api-key: $DEMO_KEY' http://$LISTEN/v1/things

Without a key, refused by gatehouse (401):
curl -i http://$LISTEN/v1/things

$admin_token_lines
Issue a key (the answer holds it, shown once, and its id):
curl -s -X POST -H "authorization: Bearer \$GATEHOUSE_ADMIN_TOKEN" -H 'content-type: application/json' -d '{"user_id":"user_1","tenant_id":"tenant_demo","plan":"team","device_name":"laptop"}' http://$CONTROL_LISTEN/v1/keys
List a user's keys:
curl -s -H "authorization: Bearer \$GATEHOUSE_ADMIN_TOKEN" 'http://$CONTROL_LISTEN/v1/keys?user=$DEMO_USER'
Revoke a key by id (here the demo key: its curl line above then gets 401 within a second):
curl -s -X DELETE -H "authorization: Bearer \$GATEHOUSE_ADMIN_TOKEN" http://$CONTROL_LISTEN/v1/keys/${DEMO_KEY_ID:-<key id>}

The dashboard (refusals grouped, requests per plan over time, alerts, levers, keys, cache versions):
$dashboard_url
Who was refused and why (each proxy reports its refusals within a few seconds):
curl -s -H "authorization: Bearer \$GATEHOUSE_ADMIN_TOKEN" 'http://$CONTROL_LISTEN/v1/audit?kind=refusal'
gatehouse's counters, as Envoy exports them:
curl -s http://$ADMIN/stats/prometheus | grep gatehouse

With a demo JWT (HS256, kid demo-hs256, valid for an hour), answered by the upstream (200):
curl -i -H 'authorization: Bearer $DEMO_JWT' http://$LISTEN/v1/things
The JWT secret, GATEHOUSE_JWT_SECRET ($jwt_secret_note):
$GATEHOUSE_JWT_SECRET
More tokens with it:
GATEHOUSE_JWT_SECRET='$GATEHOUSE_JWT_SECRET' $CONTROL mint-jwt --secret-env GATEHOUSE_JWT_SECRET --kid demo-hs256 --sub user_demo --tenant tenant_demo --plan team

Ctrl-C stops everything.
MSG

# Until a signal arrives or any process ends.
wait -n "${pids[@]}" || true
echo "run.sh: a process of the stack exited; stopping" >&2
exit 1
