#!/usr/bin/env python3
"""Propagation across replicas: how long a key issued or revoked through any control
replica takes to reach every Envoy, with and without a rolling restart of the replicas.

Two `gatehouse-control serve` replicas (release build) on one throwaway PostgreSQL
cluster; three Envoys (2 workers each, `policies/local.yaml`), each with both replicas
as the endpoints of its control cluster (Envoy takes them in turn, poll by poll).

One sample: sleep a uniform random delay in [0, MAX_DELAY] (default 20 s, the policy's
long-poll `wait`, so the change lands at a random point of the polls held), issue an
enterprise-plan key through a randomly chosen replica and time from the API's answer
until every Envoy accepts it (200); then revoke it at once through a randomly chosen
replica and time from the API's answer until every Envoy refuses it (401). Each Envoy is
asked with the key every ~2 ms over a kept-alive connection of its own. SAMPLES samples
(default 50) with the replicas left alone, then as many while a rolling restart runs in
the background, twice: SIGTERM replica A, start it again on the same port, wait for
/readyz, then the same for B, and so on, first without a pause (`rolling`), then with
2 s between one replica ready and the next SIGTERM (`rolling:2`). A replica that is down when chosen is
skipped for the other (counted as a retry).

It prints p50, p90, p99 and max (nearest rank: with 50 samples the p99 is the maximum)
for issue and revocation in each phase as a Markdown table, and for every sample over
1 s which Envoy was last and how its feed had fared (benches/README.md has the figures).
Run it with `make bench-propagation` (which builds what it needs) or directly:

    python3 benches/propagation.py [--samples 50] [--max-delay 20] [--envoys 3]
                                   [--phases steady,rolling,rolling:2] [--seed N] [--keep]

Binaries: GATEHOUSE_ENVOY, GATEHOUSE_WASM, GATEHOUSE_CONTROL (release),
GATEHOUSE_HARNESS (renders Envoy's config, runs the echo upstream).
"""

import argparse
import http.client as httpclient
import json
import math
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from feed_scale import (CONTROL, ENVOY, HARNESS, POLICY, WASM, Postgres, Procs, free_port,
                        http)

PROBE_EVERY = 0.002
# A correctness bound: a change that has not arrived by then fails the run.
BOUND = 30.0
PLAN = "enterprise"


def wait_for(what, check, timeout, interval=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise SystemExit(f"propagation: {what} did not happen within {timeout:.0f} s")


class Replica:
    """One `gatehouse-control serve` on a fixed port, stopped and started again there."""

    def __init__(self, name, url, env, work):
        self.name = name
        self.listen = f"127.0.0.1:{free_port()}"
        self.env = dict(env, GATEHOUSE_DATABASE_URL=url,
                        GATEHOUSE_CONTROL_LISTEN=self.listen)
        self.log = open(os.path.join(work, f"control-{name}.log"), "a")
        self.proc = None
        self.restarts = 0

    def start(self):
        self.proc = subprocess.Popen([CONTROL, "serve", "--policy", POLICY],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     env=self.env, stdin=subprocess.DEVNULL)
        wait_for(f"replica {self.name}'s /readyz",
                 lambda: http("GET", f"http://{self.listen}/readyz", timeout=1)[0] == 200,
                 60)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class RollingRestart(threading.Thread):
    """Restarts the replicas one after the other until told to stop."""

    def __init__(self, replicas, pause):
        super().__init__(daemon=True)
        self.replicas = replicas
        self.pause = pause
        self.halt = threading.Event()
        self.down = []  # seconds each replica was not ready: SIGTERM to /readyz 200

    def run(self):
        while not self.halt.is_set():
            for r in self.replicas:
                if self.halt.is_set():
                    return
                t = time.monotonic()
                r.stop()
                r.start()
                r.restarts += 1
                self.down.append(time.monotonic() - t)
                self.halt.wait(self.pause)


class Prober:
    """Asks one Envoy with a key over a connection kept alive between questions."""

    def __init__(self, name, listen, admin):
        self.name, self.listen, self.admin = name, listen, admin
        host, port = listen.rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.conn = None

    def status(self, key):
        for _ in range(2):
            try:
                if self.conn is None:
                    self.conn = httpclient.HTTPConnection(self.host, self.port, timeout=5)
                self.conn.request("GET", "/v1/things", headers={"x-api-key": key})
                r = self.conn.getresponse()
                r.read()
                return r.status
            except (OSError, httpclient.HTTPException):
                self.conn = None
        return 0

    def until(self, key, want, out):
        """Records in out[name] the monotonic time the answer was first `want`."""
        deadline = time.monotonic() + BOUND
        while time.monotonic() < deadline:
            s = self.status(key)
            if s == want:
                out[self.name] = time.monotonic()
                return
            time.sleep(PROBE_EVERY)
        out[self.name] = None

    def feed(self):
        status, body = http("GET", f"http://{self.admin}/stats?filter=gatehouse.feed&format=json")
        if status != 200:
            return {}
        return {s["name"].rsplit(".", 1)[-1]: s.get("value")
                for s in json.loads(body).get("stats", []) if "value" in s}


class Run:
    def __init__(self, args, work, pg):
        self.args = args
        self.work = work
        self.rng = random.Random(args.seed)
        self.procs = Procs()
        self.admin_token = secrets.token_urlsafe(32)
        self.feed_token = secrets.token_urlsafe(32)
        self.env = dict(os.environ, GATEHOUSE_ADMIN_TOKEN=self.admin_token,
                        GATEHOUSE_FEED_TOKEN=self.feed_token,
                        GATEHOUSE_JWT_SECRET=secrets.token_urlsafe(48), RUST_LOG="info")
        url = pg.database()
        self.replicas = [Replica(n, url, self.env, work) for n in ("a", "b")]
        self.upstream = f"127.0.0.1:{free_port()}"
        self.probers = []
        self.next_user = 0

    def start(self):
        for r in self.replicas:
            r.start()
        self.procs.start([HARNESS, "echo-upstream", "--listen", self.upstream],
                         open(os.path.join(self.work, "upstream.log"), "w"))
        # A key before the Envoys start: an empty database's snapshot is version 0, and a
        # set version gauge is how an Envoy says its snapshot is in.
        status, _ = http("POST", f"http://{self.replicas[0].listen}/v1/keys", self.admin_token,
                         {"user_id": "user_prop_0", "tenant_id": "bench", "plan": PLAN,
                          "device_name": "propagation"})
        if status != 201:
            raise SystemExit(f"propagation: issuing the first key answered {status}")
        self.probers = [self.envoy(f"envoy{i}") for i in range(self.args.envoys)]

    def envoy(self, name):
        listen, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        config = os.path.join(self.work, f"{name}.yaml")
        controls = [a for r in self.replicas for a in ("--control", r.listen)]
        with open(config, "w") as f:
            subprocess.run([HARNESS, "envoy-config", "--policy", POLICY, "--listen", listen,
                            "--admin", admin, "--upstream", self.upstream, "--module", WASM]
                           + controls, check=True, stdout=f)
        self.procs.start([ENVOY, "-c", config, "--concurrency", "2", "--disable-hot-restart",
                          "--service-node", name, "--log-level", "warn"],
                         open(os.path.join(self.work, f"{name}.log"), "w"), env=self.env)
        prober = Prober(name, listen, admin)
        # Ready once the first snapshot is in: the feed version gauge is set.
        wait_for(f"{name}'s first snapshot",
                 lambda: (prober.feed().get("version") or 0) > 0, 120, 0.05)
        return prober

    def through_any(self, what, call):
        """`call(replica)` on a random replica, else the other; the first that answers."""
        order = self.rng.sample(self.replicas, len(self.replicas))
        retries = 0
        deadline = time.monotonic() + BOUND
        while time.monotonic() < deadline:
            for r in order:
                status, body = call(r)
                if status in (200, 201):
                    return r, json.loads(body), retries
                retries += 1
            time.sleep(0.01)
        raise SystemExit(f"propagation: no replica would {what}")

    def everywhere(self, key, want):
        """From now, the time until every Envoy answers `want`, and the last one's name."""
        times = {}
        threads = [threading.Thread(target=p.until, args=(key, want, times))
                   for p in self.probers]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if any(v is None for v in times.values()):
            late = [n for n, v in times.items() if v is None]
            raise SystemExit(f"propagation: {late} never answered {want} within {BOUND} s")
        last = max(times, key=times.get)
        return times[last] - start, last

    def sample(self, phase):
        time.sleep(self.rng.uniform(0, self.args.max_delay))
        self.next_user += 1
        body = {"user_id": f"user_prop_{self.next_user}", "tenant_id": "bench",
                "plan": PLAN, "device_name": "propagation"}
        r_issue, issued, retries = self.through_any(
            "issue", lambda r: http("POST", f"http://{r.listen}/v1/keys", self.admin_token,
                                    body, timeout=5))
        issue_s, issue_last = self.everywhere(issued["api_key"], 200)
        r_revoke, _, more = self.through_any(
            "revoke", lambda r: http("DELETE", f"http://{r.listen}/v1/keys/{issued['id']}",
                                     self.admin_token, timeout=5))
        revoke_s, revoke_last = self.everywhere(issued["api_key"], 401)
        row = {"phase": phase, "issue_s": issue_s, "issue_via": r_issue.name,
               "issue_last": issue_last, "revoke_s": revoke_s, "revoke_via": r_revoke.name,
               "revoke_last": revoke_last, "api_retries": retries + more}
        for what in ("issue", "revoke"):
            if row[f"{what}_s"] > 1.0:
                prober = next(p for p in self.probers if p.name == row[f"{what}_last"])
                row[f"{what}_slow_feed"] = prober.feed()
        print(json.dumps(row), file=sys.stderr, flush=True)
        return row

    def phase(self, name):
        failures_before = {p.name: p.feed().get("failures", 0) for p in self.probers}
        rows = [self.sample(name) for _ in range(self.args.samples)]
        failures = sum(p.feed().get("failures", 0) - failures_before[p.name]
                       for p in self.probers)
        return rows, failures

    def stop(self):
        self.procs.stop_all()
        for r in self.replicas:
            r.stop()


def nearest_rank(sorted_values, q):
    rank = min(len(sorted_values), max(1, math.ceil(q * len(sorted_values) - 1e-9)))
    return sorted_values[rank - 1]


def summary(rows, what):
    s = sorted(r[f"{what}_s"] for r in rows)
    return [nearest_rank(s, q) for q in (0.50, 0.90, 0.99, 1.0)], sum(v > 1.0 for v in s)


def fmt(seconds):
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--max-delay", type=float, default=20.0,
                    help="seconds; the random delay before each issue is uniform in [0, this]")
    ap.add_argument("--envoys", type=int, default=3)
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--phases", default="steady,rolling,rolling:2",
                    help="steady: replicas left alone; rolling: restarted one after the "
                         "other without a pause; rolling:S: with S seconds between restarts")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = ap.parse_args()
    for path in (ENVOY, WASM, CONTROL, HARNESS):
        if not os.path.exists(path):
            raise SystemExit(f"propagation: {path} is missing (make bench-propagation builds it)")
    work = tempfile.mkdtemp(prefix="gatehouse-propagation-")
    pg = None
    run = None
    results = []
    try:
        pg = Postgres(work)
        run = Run(args, work, pg)
        run.start()
        for phase in args.phases.split(","):
            restarter = None
            if phase.startswith("rolling"):
                pause = float(phase.split(":", 1)[1]) if ":" in phase else 0.0
                restarter = RollingRestart(run.replicas, pause)
                restarter.start()
            started = time.monotonic()
            rows, failures = run.phase(phase)
            took = time.monotonic() - started
            restarts = None
            if restarter:
                restarter.halt.set()
                restarter.join()
                restarts = restarter.down
            results.append((phase, rows, failures, took, restarts))
    finally:
        if run:
            run.stop()
        if pg:
            pg.stop()
        if args.keep:
            print(f"propagation: logs in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{args.samples} samples a phase, {args.envoys} Envoys, 2 replicas on PostgreSQL, "
          f"delay before each issue uniform in [0, {args.max_delay:g}] s, seed {args.seed}")
    print()
    print("| replicas | change | p50 | p90 | p99 | max | over 1 s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for phase, rows, _, _, _ in results:
        label = "left alone" if phase == "steady" else "rolling restart"
        if ":" in phase:
            label += f", {phase.split(':', 1)[1]} s between restarts"
        for what, name in (("issue", "issue"), ("revoke", "revocation")):
            (p50, p90, p99, mx), over = summary(rows, what)
            print(f"| {label} | {name} | {fmt(p50)} | {fmt(p90)} | {fmt(p99)} | {fmt(mx)} "
                  f"| {over} |")
    print()
    for phase, rows, failures, took, restarts in results:
        retries = sum(r["api_retries"] for r in rows)
        line = (f"{phase}: {took:.0f} s, {failures} failed feed polls over the Envoys, "
                f"{retries} API calls sent to the other replica")
        if restarts:
            s = sorted(restarts)
            line += (f"; {len(s)} restarts, each replica down (SIGTERM to ready) "
                     f"p50 {fmt(nearest_rank(s, 0.5))}, max {fmt(s[-1])}")
        print(line)


if __name__ == "__main__":
    main()
