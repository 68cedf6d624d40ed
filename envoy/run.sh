#!/usr/bin/env bash
# The local stack behind `make run`: the echo upstream and Envoy with the gatehouse module
# and a policy, in the foreground. Ctrl-C or SIGTERM stops everything this script started.
#
#   GATEHOUSE_LISTEN    Envoy's listener        (default 127.0.0.1:10000)
#   GATEHOUSE_ADMIN     Envoy's admin interface (default 127.0.0.1:9901)
#   GATEHOUSE_POLICY    the policy file         (default policies/example.yaml)
#   GATEHOUSE_UPSTREAM  the echo upstream       (default: a free loopback port)
#   GATEHOUSE_WORKERS   Envoy worker threads    (default 2)
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
POLICY=${GATEHOUSE_POLICY:-policies/example.yaml}
WORKERS=${GATEHOUSE_WORKERS:-2}
ENVOY=${GATEHOUSE_ENVOY:-.venv/bin/envoy}
HARNESS=${GATEHOUSE_HARNESS:-target/debug/gatehouse-harness}
CONTROL=${GATEHOUSE_CONTROL:-target/debug/gatehouse-control}
DEMO_KEY=${GATEHOUSE_DEMO_KEY:-ghk_demo_5f0c1b8e2d7a4c9e8b3f6A2d4hG5}
RUN_DIR=.run

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

# Envoy hands this variable to the VM (host_env_keys in the rendered config), where the
# policy's `secret_env: GATEHOUSE_JWT_SECRET` reads it; it is never written to a file.
if [[ -z ${GATEHOUSE_JWT_SECRET:-} ]]; then
  GATEHOUSE_JWT_SECRET=$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')
  jwt_secret_note="generated for this run"
else
  jwt_secret_note="from the environment"
fi
export GATEHOUSE_JWT_SECRET
DEMO_JWT=$("$CONTROL" mint-jwt --secret-env GATEHOUSE_JWT_SECRET --kid demo-hs256 \
  --sub user_demo --tenant tenant_demo --plan team)

pids=()
cleanup() {
  trap - INT TERM EXIT
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "gatehouse stopped" >&2
}
trap cleanup EXIT
# Exit through the EXIT trap with the conventional status.
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$RUN_DIR"
"$HARNESS" envoy-config --policy "$POLICY" --listen "$LISTEN" --admin "$ADMIN" \
  --upstream "$UPSTREAM" >"$RUN_DIR/envoy.yaml"

"$HARNESS" echo-upstream --listen "$UPSTREAM" 2>"$RUN_DIR/upstream.log" &
pids+=($!)
# .venv/bin/envoy exec's the real binary, so this pid is Envoy's and signals reach it.
"$ENVOY" -c "$RUN_DIR/envoy.yaml" --concurrency "$WORKERS" --disable-hot-restart \
  --log-level info >"$RUN_DIR/envoy.log" 2>&1 &
envoy_pid=$!
pids+=("$envoy_pid")

ready() {
  python3 - "$ADMIN" <<'PY'
import sys, urllib.request
try:
    with urllib.request.urlopen(f"http://{sys.argv[1]}/ready", timeout=1) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
PY
}

for _ in $(seq 1 300); do
  if ! kill -0 "$envoy_pid" 2>/dev/null; then
    echo "run.sh: Envoy exited during startup; the end of $RUN_DIR/envoy.log:" >&2
    tail -n 30 "$RUN_DIR/envoy.log" >&2
    exit 1
  fi
  if ready; then break; fi
  sleep 0.2
done
if ! ready; then
  echo "run.sh: Envoy was not ready after 60s; see $RUN_DIR/envoy.log" >&2
  exit 1
fi

cat <<MSG
gatehouse is running: Envoy on http://$LISTEN (admin http://$ADMIN), echo upstream on $UPSTREAM
policy: $POLICY; Envoy log: $RUN_DIR/envoy.log

With the demo key, answered by the upstream (200):
curl -i -H 'x-api-key: $DEMO_KEY' http://$LISTEN/v1/things

Without a key, refused by gatehouse (401):
curl -i http://$LISTEN/v1/things

With a demo JWT (HS256, kid demo-hs256, valid for an hour), answered by the upstream (200):
curl -i -H 'authorization: Bearer $DEMO_JWT' http://$LISTEN/v1/things
The JWT secret, GATEHOUSE_JWT_SECRET ($jwt_secret_note):
$GATEHOUSE_JWT_SECRET
More tokens with it:
GATEHOUSE_JWT_SECRET='$GATEHOUSE_JWT_SECRET' $CONTROL mint-jwt --secret-env GATEHOUSE_JWT_SECRET --kid demo-hs256 --sub user_demo --tenant tenant_demo --plan team

Ctrl-C stops everything.
MSG

# Until a signal arrives or either process ends.
wait -n "${pids[@]}" || true
echo "run.sh: a process of the stack exited; stopping" >&2
exit 1
