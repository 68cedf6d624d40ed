#!/usr/bin/env bash
# Envoy's memory across 1,000,000 distinct callers: the rate limiter keeps its state in a
# fixed table of shared-data slots, so resident memory must not grow with the number of
# callers. Not part of `make test` (it takes a few minutes); the always-run version is
# the same test with 20,000 callers over 1,024 slots.
#
# Anonymous callers on an external route are limited per client address, and with
# `rate_limit.trusted_proxies: 1` that address is the last x-forwarded-for entry: each
# request carries a new one, so 1,000,000 requests are 1,000,000 identities. The client
# (test-harness/tests/rate_limit_e2e.rs, `envoy_memory_stays_flat_across_many_distinct_callers`)
# sends them on keep-alive connections and prints, after warm-up and then every
# CALLERS/SAMPLES callers, Envoy's resident memory (VmRSS) and its allocator's heap
# (admin /memory `allocated`), then the ratios end / warm-up.
#
#   GATEHOUSE_MEMORY_CALLERS      distinct callers             (default 1000000)
#   GATEHOUSE_MEMORY_WARMUP       callers before the baseline  (default 50000)
#   GATEHOUSE_MEMORY_SLOTS        rate_limit.slots             (default 65536)
#   GATEHOUSE_MEMORY_CONNECTIONS  client keep-alive connections (default 8)
#   GATEHOUSE_MEMORY_SAMPLES      measurements after warm-up   (default 10)
#   GATEHOUSE_ENVOY, GATEHOUSE_WASM: as for the end-to-end suite
set -euo pipefail
cd "$(dirname "$0")/.."

export GATEHOUSE_MEMORY_CALLERS=${GATEHOUSE_MEMORY_CALLERS:-1000000}
# Warm-up: Envoy's own start-up allocations settle. The table is at full size from the
# start (free slots are as long as claimed ones), so from here on nothing may grow.
export GATEHOUSE_MEMORY_WARMUP=${GATEHOUSE_MEMORY_WARMUP:-50000}
export GATEHOUSE_MEMORY_SLOTS=${GATEHOUSE_MEMORY_SLOTS:-65536}
export GATEHOUSE_MEMORY_CONNECTIONS=${GATEHOUSE_MEMORY_CONNECTIONS:-8}
export GATEHOUSE_MEMORY_SAMPLES=${GATEHOUSE_MEMORY_SAMPLES:-10}

if [[ -z ${GATEHOUSE_WASM:-} ]]; then
  make -s wasm
else
  # The test runs in test-harness/: a relative path would point elsewhere.
  GATEHOUSE_WASM=$(realpath "$GATEHOUSE_WASM")
  export GATEHOUSE_WASM
fi
# Envoy is the bottleneck, not the client: the debug test build is fast enough and is
# the one `make test` already compiled.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test -q -p gatehouse-harness --test rate_limit_e2e -- --exact \
  envoy_memory_stays_flat_across_many_distinct_callers --nocapture 2>&1 |
  tee "$log" | grep --line-buffered '^memory:'
status=${PIPESTATUS[0]}
set -e
if ((status != 0)); then
  tail -n 40 "$log" >&2
fi
exit "$status"
