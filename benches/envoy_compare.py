#!/usr/bin/env python3
"""Envoy comparison: what each way of authenticating and limiting costs Envoy per request.

`make bench-envoy` runs it (it builds the modules and binaries first). Seven Envoys, one
per configuration, each with the same listener, the same HTTP connection manager and the
same `direct_response` 200 route (no upstream), differing only in their HTTP filters:

  a        no filter                                   (the floor)
  b        a proxy-wasm filter that reads one header   (the wasm floor, benches/wasm-floor)
  h        the same module making the host calls gatehouse makes for an API key, and
           nothing else: splits d_key - b into host calls (h - b) and work in the VM (d_key - h)
  c        jwt_authn (HS256, inline JWKS, jwt_cache_config of 128) + local_ratelimit
  d        gatehouse, plan limit on; requests with a JWT (d_jwt) and with an API key (d_key)
  d_feed   d with a `feed:` section, so the Envoy also runs the sync singleton polling the
           control service; requests with the API key, as d_key
  d_fleet  d_feed with `rate_limit: { scope: fleet }`: the sync also exchanges with the
           control service (and its Redis) every 300 ms while it serves. The sync runs on
           Envoy's main thread, so its CPU is in d_feed's and d_fleet's
  e        ext_authz (HTTP service) calling gatehouse-control's /v1/authz on loopback

wrk (one thread, BENCH_CONNECTIONS keep-alive connections, `--latency`) loads one
configuration at a time for BENCH_SECONDS; the rows alternate within each round, in an
order rotated by one every round, for BENCH_ROUNDS rounds. For each run:

  CPU µs/request = Δ(utime + stime of the Envoy process, /proc/<pid>/stat) / Δrequests
  Δrequests      = Δ http.bench.downstream_rq_completed (Envoy's admin stats), all 2xx

and wrk's p50/p99. The table shows each row's median over the rounds; each ratio is the
median over the rounds of that round's ratio (the two runs of a pair are minutes apart at
most, so a slow spell of the machine cancels out). The ratios, CPU per request, gatehouse
first:

  gatehouse_vs_native     d_jwt / c   (both verify an HS256 JWT and apply a limit)
  gatehouse_vs_wasm_floor d_key / b   (gatehouse's own logic above any wasm filter)
  gatehouse_vs_ext_authz  d_key / e   (both check an API key)
  fleet_vs_local          d_fleet / d_feed  (a fleet-scoped limit against a local one, the
                          same feed and sync otherwise; issue 21 asks for 1, no request
                          waiting for Redis; p50 and p99 of both are printed beside it)

d_fleet's exchange must really run: before the warm-up its Envoy must have exchanged at
least once, and after the rounds `wasmcustom.gatehouse.fleet.exchanges` and
`states_applied` (the key's fleet state, back from Redis) must have grown, with
`exchange_failures` and `admissions_dropped` still 0 (all printed), or the bench fails.
The part of each row's CPU per request spent on Envoy's main thread (where d_fleet's sync
runs; the rest is the worker's) is printed for d_key, d_feed and d_fleet.

Environment (defaults in brackets):
  BENCH_ROUNDS [5]  BENCH_SECONDS [8]  BENCH_WARMUP_SECONDS [3]  BENCH_CONNECTIONS [8]
  BENCH_WORKERS [1]: Envoy's --concurrency, the same for every configuration. One: on a
    2-core machine one core runs Envoy's worker, the other wrk (and in e the control
    service); one worker is also one wasm VM, so gatehouse's shared-data CAS never contends.
  GATEHOUSE_ENVOY [.venv/bin/envoy]  GATEHOUSE_WASM [target/wasm32-wasip1/release/gatehouse.wasm]
  BENCH_WASM_FLOOR [target/wasm-floor/wasm32-wasip1/release/wasm_floor.wasm]
  GATEHOUSE_CONTROL [target/release/gatehouse-control]  GATEHOUSE_HARNESS [target/debug/gatehouse-harness]
  redis-server from PATH (`make redis` installs it): on a unix socket in the work
    directory, no TCP port, no persistence; the control service's GATEHOUSE_REDIS_URL
  BENCH_KEEP [unset]: keep the work directory (rendered bootstraps, logs) and print it

Everything it starts (redis-server, the control service, seven Envoys, wrk) is stopped
on exit.
"""

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.chdir(ROOT)

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "8"))
WARMUP = int(os.environ.get("BENCH_WARMUP_SECONDS", "3"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "8"))
WORKERS = int(os.environ.get("BENCH_WORKERS", "1"))
ENVOY = os.environ.get("GATEHOUSE_ENVOY", ".venv/bin/envoy")
WASM = os.environ.get("GATEHOUSE_WASM", "target/wasm32-wasip1/release/gatehouse.wasm")
FLOOR = os.environ.get("BENCH_WASM_FLOOR", "target/wasm-floor/wasm32-wasip1/release/wasm_floor.wasm")
CONTROL = os.environ.get("GATEHOUSE_CONTROL", "target/release/gatehouse-control")
HARNESS = os.environ.get("GATEHOUSE_HARNESS", "target/debug/gatehouse-harness")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PATH = "/v1/things"
STAT_PREFIX = "bench"
JWT_KID = "bench-hs256"

ROWS = [
    # (row, configuration, label)
    ("a", "a", "no filter"),
    ("b", "b", "wasm floor (reads one header)"),
    ("h", "h", "wasm floor + gatehouse's host calls"),
    ("c", "c", "jwt_authn HS256 + local_ratelimit"),
    ("d_jwt", "d", "gatehouse, JWT, plan limit"),
    ("d_key", "d", "gatehouse, API key, plan limit"),
    ("d_feed", "d_feed", "gatehouse, API key, feed, local limit"),
    ("d_fleet", "d_fleet", "gatehouse, API key, feed, fleet limit"),
    ("e", "e", "ext_authz -> control /v1/authz"),
]

procs = []  # everything started, stopped newest first on exit


def die(msg):
    print(f"envoy_compare: {msg}", file=sys.stderr)
    sys.exit(1)


def stop_all():
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in reversed(procs):
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, headers=None, body=None, timeout=10):
    req = urllib.request.Request(url, method=method, headers=headers or {},
                                 data=None if body is None else json.dumps(body).encode())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_ready(name, url, proc, log):
    for _ in range(300):
        if proc.poll() is not None:
            die(f"{name} exited during startup; see {log}:\n" + open(log).read()[-3000:])
        try:
            if http("GET", url, timeout=1)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    die(f"{name} was not ready after 60s; see {log}")


def wait_redis(sock, proc, log):
    """Until redis-server answers PING on its unix socket."""
    for _ in range(200):
        if proc.poll() is not None:
            die(f"redis-server exited during startup; see {log}:\n" + open(log).read()[-3000:])
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(1)
                s.connect(sock)
                s.sendall(b"PING\r\n")
                if s.recv(16) == b"+PONG\r\n":
                    return
        except OSError:
            pass
        time.sleep(0.05)
    die(f"redis-server did not answer PING within 10s; see {log}")


def fleet_stats(admin):
    """d_fleet's sync counters: {exchanges, exchange_failures, states_applied,
    admissions_dropped}."""
    names = ("exchanges", "exchange_failures", "states_applied", "admissions_dropped")
    status, body = http("GET", f"http://{admin}/stats?filter=^wasmcustom\\.gatehouse\\.fleet\\.")
    if status != 200:
        die(f"admin stats answered {status}")
    stats = dict(line.split(": ", 1) for line in body.decode().splitlines() if ": " in line)
    return {n: int(stats.get(f"wasmcustom.gatehouse.fleet.{n}", "0")) for n in names}


def b64url(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def mint_jwt(secret, sub, tenant, plan):
    now = int(time.time())
    header = {"alg": "HS256", "typ": "JWT", "kid": JWT_KID}
    claims = {"sub": sub, "tenant": tenant, "plan": plan, "iat": now, "exp": now + 6 * 3600}
    signing = b64url(json.dumps(header, separators=(",", ":")).encode()) + "." + \
        b64url(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(secret, signing.encode(), hashlib.sha256).digest()
    return signing + "." + b64url(sig)


def cpu_ticks(pid, tid=None):
    # Fields after the command name (which is in parentheses and may hold spaces):
    # utime and stime are the 14th and 15th fields of the line. With `tid`, one thread's
    # (Envoy's main thread is the one whose id is the process's).
    with open(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])


def rq_stats(admin):
    status, body = http("GET", f"http://{admin}/stats?filter=^http\\.{STAT_PREFIX}\\.downstream_rq_(completed|2xx)$")
    if status != 200:
        die(f"admin stats answered {status}")
    stats = dict(line.split(": ", 1) for line in body.decode().splitlines() if ": " in line)
    return int(stats[f"http.{STAT_PREFIX}.downstream_rq_completed"]), int(stats[f"http.{STAT_PREFIX}.downstream_rq_2xx"])


def wrk_args(port, headers, seconds):
    args = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    for k, v in headers.items():
        args += ["-H", f"{k}: {v}"]
    return args + [f"http://127.0.0.1:{port}{PATH}"]


LAT = re.compile(r"^\s+(50|99)(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", re.M)


def to_ms(value, unit):
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(envoy, headers, seconds):
    """One measured run: returns (cpu µs/request, p50 ms, p99 ms, requests, req/s, main
    thread's cpu µs/request)."""
    pid = envoy["proc"].pid
    before_rq, before_ok = rq_stats(envoy["admin"])
    before_cpu, before_main = cpu_ticks(pid), cpu_ticks(pid, pid)
    out = subprocess.run(wrk_args(envoy["port"], headers, seconds), capture_output=True, text=True)
    after_cpu, after_main = cpu_ticks(pid), cpu_ticks(pid, pid)
    after_rq, after_ok = rq_stats(envoy["admin"])
    if out.returncode != 0:
        die(f"wrk failed: {out.stderr}")
    if "Non-2xx" in out.stdout or "Socket errors" in out.stdout:
        die(f"{envoy['name']}: not every answer was a 200:\n{out.stdout}")
    requests = after_rq - before_rq
    if requests <= 0 or after_ok - before_ok != requests:
        die(f"{envoy['name']}: {requests} requests, {after_ok - before_ok} of them 2xx")
    lat = {p: to_ms(v, u) for p, v, u in LAT.findall(out.stdout)}
    if set(lat) != {"50", "99"}:
        die(f"cannot read wrk's latency distribution:\n{out.stdout}")
    cpu_us = (after_cpu - before_cpu) * 1e6 / CLK_TCK / requests
    main_us = (after_main - before_main) * 1e6 / CLK_TCK / requests
    return cpu_us, lat["50"], lat["99"], requests, requests / seconds, main_us


def main():
    for path in (ENVOY, WASM, FLOOR, CONTROL, HARNESS):
        if not os.path.exists(path):
            die(f"{path} is missing; `make bench-envoy` builds everything this needs")
    if subprocess.run(["sh", "-c", "command -v wrk"], capture_output=True).returncode != 0:
        die("wrk is missing; `make bench-envoy` installs it")

    work = tempfile.mkdtemp(prefix="gatehouse-bench-")
    os.chmod(work, 0o700)

    # --- Redis, for d_fleet's fleet-wide counters: a unix socket in the work dir, no TCP
    # port, nothing written to disk ------------------------------------------------------
    redis_sock = f"{work}/redis.sock"
    log = f"{work}/redis.log"
    redis = subprocess.Popen(
        ["redis-server", "--port", "0", "--save", "", "--appendonly", "no",
         "--unixsocket", redis_sock, "--unixsocketperm", "700", "--dir", work],
        stdin=subprocess.DEVNULL, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    procs.append(redis)
    wait_redis(redis_sock, redis, log)

    # --- the control service: SQLite in the work dir, random tokens, quiet log ---------
    # It issues keys only on plans it knows: `bench`, the one plan the policy below adds.
    admin_token = secrets.token_urlsafe(32)
    feed_token = secrets.token_urlsafe(32)
    control_addr = f"127.0.0.1:{free_port()}"
    env = dict(os.environ, GATEHOUSE_ADMIN_TOKEN=admin_token, GATEHOUSE_FEED_TOKEN=feed_token,
               GATEHOUSE_CONTROL_LISTEN=control_addr, GATEHOUSE_PLANS="bench",
               GATEHOUSE_DATABASE_URL=f"sqlite://{work}/control.db",
               GATEHOUSE_REDIS_URL=f"redis+unix://{redis_sock}", RUST_LOG="warn")
    log = f"{work}/control.log"
    control = subprocess.Popen([CONTROL, "serve"], env=env, stdout=subprocess.DEVNULL,
                               stderr=open(log, "w"))
    procs.append(control)
    wait_ready("the control service", f"http://{control_addr}/readyz", control, log)

    # One API key, issued through the API: e checks it there, d finds its hash in the
    # policy (no feed: d's cost is the request path only, not a sync service's polls);
    # d_fleet has the same policy entry and gets the key from the feed as well.
    status, body = http("POST", f"http://{control_addr}/v1/keys",
                        headers={"authorization": f"Bearer {admin_token}",
                                 "content-type": "application/json"},
                        body={"user_id": "user_bench", "tenant_id": "tenant_bench",
                              "plan": "bench", "device_name": "envoy comparison"})
    if status != 201:
        die(f"POST /v1/keys answered {status}: {body[:300]!r}")
    api_key = json.loads(body)["api_key"]
    key_sha256 = hashlib.sha256(api_key.encode()).hexdigest()

    # The plugin uses the variable's value as bytes (as mint-jwt does): 43 characters,
    # 32 random bytes in base64url, the HMAC key for both gatehouse and jwt_authn.
    jwt_secret = secrets.token_urlsafe(32).encode()
    jwt = mint_jwt(jwt_secret, "user_bench", "tenant_bench", "bench")

    # --- gatehouse's plugin configuration, rendered by the harness ---------------------
    # The plan limit is on (every request takes a token from the caller's bucket in
    # shared data) but 60M/minute with a burst of 1M: never reached in a run, so no
    # request is refused and every row counts 200s only.
    policy = f"""version: 1
plans:
  bench: {{ requests_per_minute: 60000000, burst: 1000000 }}
keys:
  - {{ id: key_bench, sha256: {key_sha256}, user: user_bench, tenant: tenant_bench, plan: bench }}
jwt:
  keys:
    - {{ kid: {JWT_KID}, alg: HS256, secret_env: GATEHOUSE_BENCH_JWT_SECRET }}
  claims: {{ user: sub, tenant: tenant, plan: plan }}
routes:
  - name: api
    match: {{ path_prefix: /v1/ }}
"""
    # d_fleet: the same, with every limit fleet-wide and the control service's feed, so
    # its Envoy also runs the sync singleton (the sync_interval's default, 250ms).
    fleet_policy = policy + """feed: { cluster: gatehouse_control, token_env: GATEHOUSE_FEED_TOKEN }
rate_limit: { scope: fleet }
"""
    # d_feed: d_fleet with the limit local: the same feed and sync, so d_fleet / d_feed is
    # what counting fleet-wide costs, and nothing else.
    feed_policy = policy + """feed: { cluster: gatehouse_control, token_env: GATEHOUSE_FEED_TOKEN }
"""

    def render(name, policy, *args):
        path = f"{work}/{name}.yaml"
        with open(path, "w") as f:
            f.write(policy)
        out = subprocess.run(
            [HARNESS, "envoy-config", "--policy", path, "--module", os.path.abspath(WASM),
             "--upstream", "127.0.0.1:9", *args], capture_output=True, text=True)
        if out.returncode != 0:
            die(f"gatehouse-harness envoy-config --policy {path} failed:\n{out.stderr}")
        return out.stdout

    def grab(rendered, name):
        m = re.search(rf"^\s*{name}: (.*)$", rendered, re.M)
        if not m:
            die(f"no {name} in the rendered bootstrap")
        return json.loads(m.group(1))

    rendered = render("policy", policy)
    plugin_config = grab(rendered, "value")
    host_env_keys = grab(rendered, "host_env_keys")
    buffer_limit = grab(rendered, "per_connection_buffer_limit_bytes")
    server_header = grab(rendered, "server_header_transformation")
    # For d_fleet, also the sync singleton (bootstrap_extensions) and the cluster it polls,
    # as `envoy-config --control` renders them; the singleton's host_env_keys name the
    # feed token.
    rendered = render("policy-fleet", fleet_policy, "--control", control_addr)
    fleet_plugin_config = grab(rendered, "value")
    fleet_host_env_keys = grab(rendered, "host_env_keys")
    fleet_extensions = grab(rendered, "bootstrap_extensions")
    m = re.search(r"^\s*# The control service the sync polls.*\n\s*- (\{.*\})$", rendered, re.M)
    if not fleet_extensions or not m:
        die("no sync service or control cluster in the rendered fleet bootstrap")
    feed_cluster = json.loads(m.group(1))
    rendered = render("policy-feed", feed_policy, "--control", control_addr)
    feed_plugin_config = grab(rendered, "value")
    feed_extensions = grab(rendered, "bootstrap_extensions")
    # The feed token goes to the singleton only (the filter's VM has no use for it).
    sync_env = fleet_extensions[0]["typed_config"]["config"]["vm_config"]["environment_variables"]
    if "GATEHOUSE_FEED_TOKEN" not in sync_env["host_env_keys"]:
        die(f"the fleet bootstrap passes {sync_env} to the sync, not the feed token")

    def wasm_filter(name, path, configuration, extra=None):
        config = {
            "name": name,
            "root_id": "",
            "vm_config": {
                "vm_id": name,
                "runtime": "envoy.wasm.runtime.v8",
                "code": {"local": {"filename": os.path.abspath(path)}},
            },
        }
        if configuration is not None:
            config["configuration"] = {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                       "value": configuration}
        config.update(extra or {})
        return {"name": "envoy.filters.http.wasm",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                                 "config": config}}

    jwks = json.dumps({"keys": [{"kty": "oct", "kid": JWT_KID, "alg": "HS256", "k": b64url(jwt_secret)}]})
    native = [
        {"name": "envoy.filters.http.jwt_authn",
         "typed_config": {
             "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
             "providers": {"bench": {
                 "local_jwks": {"inline_string": jwks},
                 # gatehouse keeps the tokens that verified (128 per worker, checked
                 # against the clock on every use); jwt_authn's cache of verified
                 # tokens does the same, so both sides verify a repeated token once.
                 "jwt_cache_config": {"jwt_cache_size": 128},
                 # The identity upstream, as gatehouse sends it.
                 "claim_to_headers": [{"header_name": "x-gatehouse-user", "claim_name": "sub"},
                                      {"header_name": "x-gatehouse-tenant", "claim_name": "tenant"},
                                      {"header_name": "x-gatehouse-plan", "claim_name": "plan"}]}},
             "rules": [{"match": {"prefix": "/v1/"}, "requires": {"provider_name": "bench"}}]}},
        # One token bucket for the listener (local_ratelimit has no per-caller buckets
        # without a descriptor per known value), 60M tokens a minute: never empty in a run.
        {"name": "envoy.filters.http.local_ratelimit",
         "typed_config": {
             "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
             "stat_prefix": "bench_rl",
             "token_bucket": {"max_tokens": 1000000, "tokens_per_fill": 1000000, "fill_interval": "1s"},
             "filter_enabled": {"runtime_key": "rl_enabled",
                                "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
             "filter_enforced": {"runtime_key": "rl_enforced",
                                 "default_value": {"numerator": 100, "denominator": "HUNDRED"}}}},
    ]
    ext_authz = [{
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "transport_api_version": "V3",
            "failure_mode_allow": False,
            "allowed_headers": {"patterns": [{"exact": "x-api-key"}]},
            "http_service": {
                "server_uri": {"uri": f"http://{control_addr}", "cluster": "control", "timeout": "2s"},
                "path_prefix": "/v1/authz",
                # The proxies' token (control/src/authz.rs): the same one a feed sync holds.
                "authorization_request": {"headers_to_add": [
                    {"key": "authorization", "value": f"Bearer {feed_token}"}]},
                "authorization_response": {"allowed_upstream_headers": {
                    "patterns": [{"prefix": "x-gatehouse-"}]}}}}}]
    control_host, control_port = control_addr.rsplit(":", 1)
    control_cluster = {
        "name": "control", "connect_timeout": "2s", "type": "STATIC",
        "load_assignment": {"cluster_name": "control", "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": control_host, "port_value": int(control_port)}}}}]}]}}

    configs = {
        "a": ([], []),
        "b": ([wasm_filter("floor", FLOOR, None)], []),
        "h": ([wasm_filter("floor", FLOOR, "gatehouse-host-calls")], []),
        "c": (native, []),
        "d": ([wasm_filter("gatehouse", WASM, plugin_config, {
            "allow_on_headers_stop_iteration": True})], []),
        "d_feed": ([wasm_filter("gatehouse", WASM, feed_plugin_config, {
            "allow_on_headers_stop_iteration": True})], [feed_cluster]),
        "d_fleet": ([wasm_filter("gatehouse", WASM, fleet_plugin_config, {
            "allow_on_headers_stop_iteration": True})], [feed_cluster]),
        "e": (ext_authz, [control_cluster]),
    }
    # gatehouse's VM reads the JWT secret (and d_fleet's the feed token) from Envoy's
    # environment, as in production: never written into a file.
    configs["d"][0][0]["typed_config"]["config"]["vm_config"]["environment_variables"] = {
        "host_env_keys": host_env_keys}
    for name in ("d_feed", "d_fleet"):
        configs[name][0][0]["typed_config"]["config"]["vm_config"]["environment_variables"] = {
            "host_env_keys": fleet_host_env_keys}
    extensions = {"d_feed": feed_extensions, "d_fleet": fleet_extensions}

    def bootstrap(filters, clusters, port, admin_port, extensions):
        return {
            "bootstrap_extensions": extensions,
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
            "static_resources": {
                "listeners": [{
                    "name": "bench",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "per_connection_buffer_limit_bytes": buffer_limit,
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": STAT_PREFIX,
                            "server_header_transformation": server_header,
                            "preserve_external_request_id": True,
                            "route_config": {"name": "bench", "virtual_hosts": [{
                                "name": "all", "domains": ["*"],
                                "routes": [{"match": {"prefix": "/"},
                                            "direct_response": {"status": 200,
                                                                "body": {"inline_string": "ok\n"}}}]}]},
                            "http_filters": filters + [{
                                "name": "envoy.filters.http.router",
                                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                        }}]}],
                }],
                "clusters": clusters,
            },
        }

    envoys = {}
    envoy_env = dict(os.environ, GATEHOUSE_BENCH_JWT_SECRET=jwt_secret.decode())
    for i, (name, (filters, clusters)) in enumerate(configs.items()):
        port, admin_port = free_port(), free_port()
        path = f"{work}/envoy-{name}.json"
        with open(path, "w") as f:
            json.dump(bootstrap(filters, clusters, port, admin_port, extensions.get(name, [])), f, indent=1)
        os.chmod(path, 0o600)
        log = f"{work}/envoy-{name}.log"
        env = dict(envoy_env, GATEHOUSE_FEED_TOKEN=feed_token) if name in ("d_feed", "d_fleet") else envoy_env
        proc = subprocess.Popen(
            [ENVOY, "-c", path, "--concurrency", str(WORKERS), "--disable-hot-restart",
             "--base-id", str(100 + i), "--log-level", "warn"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
        procs.append(proc)
        envoys[name] = {"name": name, "proc": proc, "port": port, "admin": f"127.0.0.1:{admin_port}", "log": log}
    for name, e in envoys.items():
        wait_ready(f"Envoy {name}", f"http://{e['admin']}/ready", e["proc"], e["log"])

    headers = {
        "a": {"x-api-key": api_key},
        "b": {"x-api-key": api_key},
        "h": {"x-api-key": api_key},
        "c": {"authorization": f"Bearer {jwt}"},
        "d_jwt": {"authorization": f"Bearer {jwt}"},
        "d_key": {"x-api-key": api_key},
        "d_feed": {"x-api-key": api_key},
        "d_fleet": {"x-api-key": api_key},
        "e": {"x-api-key": api_key},
    }
    # d_fleet serves once its sync has exchanged with the control service at least once
    # (a fresh Envoy waits up to 2 s for its first exchange before it polls for its keys)
    # and its first snapshot of the feed is in.
    fleet = envoys["d_fleet"]
    for _ in range(150):
        if fleet_stats(fleet["admin"])["exchanges"] > 0 and http(
                "GET", f"http://127.0.0.1:{fleet['port']}{PATH}", headers=headers["d_fleet"])[0] == 200:
            break
        time.sleep(0.1)
    else:
        die(f"d_fleet: no exchange, or no 200, within 15s: {fleet_stats(fleet['admin'])}; see {fleet['log']}")
    # Every row must be a 200 before it is measured (a refusal would be cheap and wrong),
    # and without its credential c, d, d_fleet and e must refuse: the filters really run.
    for row, config, _ in ROWS:
        port = envoys[config]["port"]
        status, _ = http("GET", f"http://127.0.0.1:{port}{PATH}", headers=headers[row])
        if status != 200:
            die(f"{row}: answered {status} to a valid request; see {envoys[config]['log']}")
        if config in ("c", "d", "d_feed", "d_fleet", "e"):
            status, _ = http("GET", f"http://127.0.0.1:{port}{PATH}")
            if status != 401:
                die(f"{row}: answered {status} to a request without credentials")

    machine = describe_machine()
    print(machine, flush=True)
    print(f"\nwarm-up {WARMUP}s per row, then {ROUNDS} rounds of {SECONDS}s per row, "
          f"{CONNECTIONS} connections, Envoy --concurrency {WORKERS}", flush=True)
    fleet_before = fleet_stats(fleet["admin"])
    for row, config, _ in ROWS:
        run_wrk(envoys[config], headers[row], WARMUP)

    results = {row: [] for row, _, _ in ROWS}
    control_cpu = []  # e: the control service's CPU per request, besides Envoy's
    for r in range(ROUNDS):
        order = ROWS[r % len(ROWS):] + ROWS[:r % len(ROWS)]
        line = []
        for row, config, _ in order:
            control_before = cpu_ticks(control.pid)
            m = run_wrk(envoys[config], headers[row], SECONDS)
            if row == "e":
                control_cpu.append((cpu_ticks(control.pid) - control_before) * 1e6 / CLK_TCK / m[3])
            results[row].append(m)
            line.append(f"{row} {m[0]:.1f}")
        print(f"round {r + 1}/{ROUNDS}: CPU µs/request " + ", ".join(line), flush=True)
    # d_fleet's sync exchanged all along, every exchange worked, and the key's admissions
    # went through Redis and came back (the fleet's state of a caller this Envoy served
    # changed, so the exchange answers with it, and the sync applies it).
    fleet_after = fleet_stats(fleet["admin"])
    print(f"d_fleet: wasmcustom.gatehouse.fleet.* before the warm-up {fleet_before}, "
          f"after the rounds {fleet_after}", flush=True)
    if fleet_after["exchanges"] <= fleet_before["exchanges"] or fleet_after["exchange_failures"] \
            or fleet_after["states_applied"] <= fleet_before["states_applied"] \
            or fleet_after["admissions_dropped"]:
        die(f"d_fleet's fleet exchange did not run cleanly; see {fleet['log']} and {work}/control.log")

    med = {row: [statistics.median(m[i] for m in results[row]) for i in range(6)] for row in results}
    print()
    print(f"{'':7} {'configuration':36} {'CPU µs/req':>10} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}")
    for row, _, label in ROWS:
        cpu, p50, p99, _, rps, _ = med[row]
        print(f"{row:7} {label:36} {cpu:10.1f} {p50:8.3f} {p99:8.3f} {rps:8.0f}")
    print(f"(medians over {ROUNDS} rounds; CPU = Envoy's utime+stime over the run / requests completed)")

    status, body = http("GET", f"http://{envoys['e']['admin']}/stats?filter=^cluster\\.control\\.upstream_(cx|rq)_total$")
    print(f"e: besides Envoy's, the control service spent {statistics.median(control_cpu):.1f} µs CPU "
          f"per request (median); Envoy's pool to it: {'; '.join(body.decode().splitlines())}")

    def ratio(x, y):
        return statistics.median(results[x][i][0] / results[y][i][0] for i in range(ROUNDS))

    ratios = [("gatehouse_vs_native", "d_jwt", "c"), ("gatehouse_vs_wasm_floor", "d_key", "b"),
              ("gatehouse_vs_ext_authz", "d_key", "e"), ("fleet_vs_local", "d_fleet", "d_feed")]
    print("ratios: CPU per request, median over rounds of each round's ratio; "
          "native = d_jwt/c, wasm floor = d_key/b, ext_authz = d_key/e, fleet = d_fleet/d_feed")
    for name, x, y in ratios:
        print(f"ratio {name}: {ratio(x, y):.2f}")
    print(f"fleet vs local: p50 {med['d_fleet'][1]:.3f} ms against {med['d_feed'][1]:.3f} ms, "
          f"p99 {med['d_fleet'][2]:.3f} ms against {med['d_feed'][2]:.3f} ms (medians over the rounds)")
    # Where d_fleet's extra CPU is spent: the sync runs on Envoy's main thread (with the
    # admin and stats), the requests on the worker.
    print(f"of Envoy's CPU per request, its main thread's (d_fleet's sync, admin, stats): "
          f"d_fleet {med['d_fleet'][5]:.2f} µs, d_feed {med['d_feed'][5]:.2f} µs, "
          f"d_key {med['d_key'][5]:.2f} µs; the rest is the worker's")

    if os.environ.get("BENCH_KEEP"):
        print(f"work directory kept: {work}", file=sys.stderr)
    else:
        subprocess.run(["rm", "-rf", work])


def describe_machine():
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    envoy_version = subprocess.run([ENVOY, "--version"], capture_output=True, text=True).stdout.strip()
    envoy_version = envoy_version.split("version:", 1)[-1].strip()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "core", "plugin"], capture_output=True, text=True).stdout.strip()
    with open(WASM, "rb") as f:
        module = f.read()
    return (f"machine: nproc {os.cpu_count()}, {cpu}, kernel {os.uname().release}\n"
            f"envoy: {envoy_version}\n"
            f"gatehouse.wasm: {len(module)} bytes, sha256 {hashlib.sha256(module).hexdigest()[:16]}, "
            f"built at commit {commit}{' with uncommitted changes in core/ or plugin/' if dirty else ''}")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        stop_all()
