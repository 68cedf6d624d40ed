#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers that read untrusted bytes, for a bounded time.
# `make test` runs it; a crash, a timeout or a memory blow-up fails it.
#
#   fuzz/run.sh [TARGET...]      default: every target in fuzz/fuzz_targets
#
#   FUZZ_SECONDS   wall-clock fuzzing time in all (default 60), shared by the targets:
#                  with 8 targets and 2 jobs, four waves of 15 s each
#   FUZZ_JOBS      targets fuzzed at once (default: the number of CPUs, at most 4)
#
# How, on the stable toolchain: libFuzzer (the `libfuzzer-sys` crate, which builds it
# from source with the C++ compiler) drives the targets, and rustc's stable codegen
# options insert SanitizerCoverage: `-Cpasses=sancov-module` plus the `-sanitizer-coverage-*`
# LLVM options, the same flags `cargo fuzz build -s none` passes. No nightly, no
# RUSTC_BOOTSTRAP, no cargo-fuzz binary to install. No AddressSanitizer: the code under
# test has no `unsafe` (the workspace denies it), so the findings are panics, hangs and
# runaway allocation, which libFuzzer catches itself.
#
# Seeds (fuzz/seeds/TARGET, committed) are read, never written; the growing corpus lives
# in target/fuzz/corpus/TARGET and carries over between runs. A crashing input is kept in
# target/fuzz/artifacts/TARGET/; copy it into fuzz/seeds/TARGET once fixed, so every
# later run replays it.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_TOTAL=${FUZZ_SECONDS:-60}
CPUS=$(nproc 2>/dev/null || echo 2)
JOBS=${FUZZ_JOBS:-$((CPUS < 4 ? CPUS : 4))}
HOST=$(rustc -vV | sed -n 's/^host: //p')
OUT=target/fuzz

if (($# > 0)); then
  targets=("$@")
else
  targets=()
  for f in fuzz/fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi

# An explicit --target keeps these flags off build scripts and proc macros, which would
# not link against libFuzzer's coverage callbacks.
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
  -Cllvm-args=-sanitizer-coverage-level=4 \
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
  -Cllvm-args=-sanitizer-coverage-pc-table \
  -Cllvm-args=-sanitizer-coverage-trace-compares \
  -Cllvm-args=-sanitizer-coverage-stack-depth \
  -Cdebug-assertions -Coverflow-checks -Cforce-frame-pointers"
unset RUSTC_WORKSPACE_WRAPPER
bins=()
for t in "${targets[@]}"; do bins+=(--bin "$t"); done
echo "fuzz: building ${targets[*]} (release, sanitizer coverage)" >&2
${CARGO:-cargo} build -q --release --manifest-path fuzz/Cargo.toml --target "$HOST" \
  --target-dir "$OUT" "${bins[@]}"

waves=$(((${#targets[@]} + JOBS - 1) / JOBS))
per=$((SECONDS_TOTAL / waves))
((per >= 1)) || per=1

run_one() {
  local t=$1 bin="$OUT/$HOST/release/$1" seeds="fuzz/seeds/$1" dict="fuzz/dicts/$1.dict"
  local corpus="$OUT/corpus/$t" artifacts="$OUT/artifacts/$t/" log="$OUT/logs/$t.log"
  mkdir -p "$corpus" "$artifacts" "$(dirname "$log")"
  local args=(-max_total_time="$per" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
    -artifact_prefix="$artifacts")
  [[ -f $dict ]] && args+=(-dict="$dict")
  local extra="fuzz/options/$t"
  # Per-target libFuzzer options, one a line (e.g. -max_len for the 8 KiB token limit).
  [[ -f $extra ]] && mapfile -t -O "${#args[@]}" args < <(grep -v '^#' "$extra")
  if "$bin" "${args[@]}" "$corpus" "$seeds" >"$log" 2>&1; then
    local runs rate
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    printf 'fuzz: %-12s ok   %9s execs in %ss (%s/s), corpus %s inputs\n' \
      "$t" "${runs:-?}" "$per" "${rate:-?}" "$(find "$corpus" -type f | wc -l)" >&2
  else
    echo "fuzz: $t FAILED; the end of $log:" >&2
    tail -n 40 "$log" >&2
    local unit
    unit=$(sed -n 's/.*Test unit written to //p' "$log" | tail -n 1)
    echo "fuzz: reproduce with: $bin ${unit:-$artifacts<file>}" >&2
    return 1
  fi
}

echo "fuzz: ${#targets[@]} targets x ${per}s, $JOBS at a time" >&2
failed=0
running=0
for t in "${targets[@]}"; do
  if ((running >= JOBS)); then
    wait -n || failed=1
    running=$((running - 1))
  fi
  run_one "$t" &
  running=$((running + 1))
done
while ((running > 0)); do
  wait -n || failed=1
  running=$((running - 1))
done
if ((failed)); then
  echo "fuzz: a target failed (see above)" >&2
  exit 1
fi
