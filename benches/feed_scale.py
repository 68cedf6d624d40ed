#!/usr/bin/env python3
"""The key cache at scale: a real control service (release build) on SQLite or
PostgreSQL holding N keys, and real Envoys (2 workers each) syncing its feed.

For each database and each N (default 10,000, 100,000 and 1,000,000) it measures:

- the import: `gatehouse-control import` of N hashed keys, keys per second;
- a fresh Envoy: from its start to the first 200 for a key issued just before it
  started, and to its snapshot complete (the `gatehouse.feed.version` gauge set);
- Envoy's resident memory once the snapshot is in, against an Envoy fed an empty
  database in the same run: bytes per cached key; the sync VM's linear memory
  (`gatehouse.feed.wasm_memory_bytes`);
- the control service's peak resident memory while ENVOYS fresh Envoys read the
  snapshot at once, and how long the last of them took;
- issue and revocation: from the API call to the first 200 (issue) or 401 (revocation)
  through Envoy, SAMPLES of each, p50 and p99.

It prints a Markdown table (the figures in benches/README.md come from it). Run it with
`make bench-feed` (which builds what it needs) or directly:

    python3 benches/feed_scale.py [--keys 10000,100000,1000000] [--db sqlite,postgres]
                                  [--envoys 4] [--samples 100]

Binaries: GATEHOUSE_ENVOY, GATEHOUSE_WASM, GATEHOUSE_CONTROL (release),
GATEHOUSE_HARNESS (renders Envoy's config, runs the echo upstream).
"""

import argparse
import hashlib
import json
import os
import secrets
import shutil
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
POLICY = os.path.join(ROOT, "policies", "local.yaml")


def env_path(name, default):
    return os.path.abspath(os.environ.get(name, os.path.join(ROOT, default)))


ENVOY = env_path("GATEHOUSE_ENVOY", ".venv/bin/envoy")
WASM = env_path("GATEHOUSE_WASM", "target/wasm32-wasip1/release/gatehouse.wasm")
CONTROL = env_path("GATEHOUSE_CONTROL", "target/release/gatehouse-control")
HARNESS = env_path("GATEHOUSE_HARNESS", "target/debug/gatehouse-harness")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rss_bytes(pid, field="VmRSS"):
    """A process's resident memory (or its peak, VmHWM), in bytes."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def http(method, url, token=None, body=None, timeout=10):
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, method=method, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def wait_for(what, check, timeout, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"feed_scale: {what} did not happen within {timeout:.0f} s")


class Procs:
    """Every process the run started, stopped newest first."""

    def __init__(self):
        self.procs = []

    def start(self, args, log, env=None):
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                             stdin=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def stop(self, p):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self):
        for p in reversed(list(self.procs)):
            self.stop(p)


class Postgres:
    """A throwaway PostgreSQL cluster (trust on loopback), as the control tests run one."""

    def __init__(self, work):
        versions = sorted(
            (int(v), v) for v in os.listdir("/usr/lib/postgresql") if v.isdigit()
        ) if os.path.isdir("/usr/lib/postgresql") else []
        if not versions:
            raise SystemExit("feed_scale: PostgreSQL is not installed (make postgres)")
        self.bin = f"/usr/lib/postgresql/{versions[-1][1]}/bin"
        self.dir = os.path.join(work, "pg")
        os.makedirs(self.dir)
        self.run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.run_as:
            # mkdtemp made the work folder root's alone; the server runs as postgres.
            os.chmod(work, 0o755)
            shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port()
        data = os.path.join(self.dir, "data")
        subprocess.run(self.run_as + [f"{self.bin}/initdb", "-D", data, "-U", "postgres",
                                      "--auth=trust", "-E", "UTF8"],
                       check=True, stdout=subprocess.DEVNULL, cwd=self.dir)
        subprocess.run(self.run_as + [f"{self.bin}/pg_ctl", "-D", data, "-w", "-l",
                                      os.path.join(self.dir, "log"), "-o",
                                      f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
                                      " -c fsync=off -c synchronous_commit=off",
                                      "start"],
                       check=True, stdout=subprocess.DEVNULL, cwd=self.dir)
        self.data = data
        self.next = 0

    def database(self):
        self.next += 1
        name = f"feed_scale_{self.next}"
        subprocess.run([f"{self.bin}/psql", "-h", "127.0.0.1", "-p", str(self.port), "-U",
                        "postgres", "-d", "postgres", "-qc", f"CREATE DATABASE {name}"],
                       check=True)
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self):
        subprocess.run(self.run_as + [f"{self.bin}/pg_ctl", "-D", self.data, "-m",
                                      "immediate", "stop"],
                       stdout=subprocess.DEVNULL, cwd=self.dir)


def write_keys(path, n):
    """N hashed keys as NDJSON, 1,000 users of up to 1,000 keys each."""
    with open(path, "w") as f:
        for i in range(n):
            digest = hashlib.sha256(secrets.token_bytes(32)).hexdigest()
            f.write(json.dumps({"sha256": digest, "user_id": f"user_{i % 1000}",
                                "tenant_id": f"tenant_{i % 100}", "plan": "team",
                                "expires_at": None}) + "\n")


class Run:
    def __init__(self, args, work):
        self.args = args
        self.work = work
        self.procs = Procs()
        self.admin_token = secrets.token_urlsafe(32)
        self.feed_token = secrets.token_urlsafe(32)
        self.upstream = f"127.0.0.1:{free_port()}"
        self.procs.start([HARNESS, "echo-upstream", "--listen", self.upstream],
                         open(os.path.join(work, "upstream.log"), "w"))

    def env(self, url, **extra):
        e = dict(os.environ)
        e.update(GATEHOUSE_DATABASE_URL=url, GATEHOUSE_ADMIN_TOKEN=self.admin_token,
                 GATEHOUSE_FEED_TOKEN=self.feed_token,
                 GATEHOUSE_JWT_SECRET=secrets.token_urlsafe(48), **extra)
        return e

    def import_keys(self, url, path):
        start = time.monotonic()
        out = subprocess.run([CONTROL, "import", path], env=self.env(url),
                             capture_output=True, text=True)
        took = time.monotonic() - start
        if out.returncode != 0:
            raise SystemExit(f"feed_scale: import failed: {out.stdout}{out.stderr}")
        summary = json.loads(out.stdout.strip().splitlines()[-1])
        return summary, took

    def control(self, url, name):
        listen = f"127.0.0.1:{free_port()}"
        log = open(os.path.join(self.work, f"control-{name}.log"), "w")
        p = self.procs.start([CONTROL, "serve", "--policy", POLICY], log,
                             env=self.env(url, GATEHOUSE_CONTROL_LISTEN=listen))
        wait_for("the control service's /readyz",
                 lambda: http("GET", f"http://{listen}/readyz")[0] == 200, 60)
        return p, listen

    def envoy(self, control, name):
        listen, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        config = os.path.join(self.work, f"envoy-{name}.yaml")
        with open(config, "w") as f:
            subprocess.run([HARNESS, "envoy-config", "--policy", POLICY, "--listen", listen,
                            "--admin", admin, "--upstream", self.upstream, "--control",
                            control, "--module", WASM],
                           check=True, stdout=f)
        log = open(os.path.join(self.work, f"envoy-{name}.log"), "w")
        env = self.env("")
        p = self.procs.start([ENVOY, "-c", config, "--concurrency", "2",
                              "--disable-hot-restart", "--service-node", name,
                              "--log-level", "warn"], log, env=env)
        return p, listen, admin

    def stat(self, admin, name):
        status, body = http("GET", f"http://{admin}/stats?filter={name}$&format=json")
        if status != 200:
            return None
        for s in json.loads(body).get("stats", []):
            if s.get("name", "").endswith(name):
                return s.get("value")
        return None

    def complete(self, admin):
        """The snapshot is in: the version gauge is set (every database measured holds
        at least the key issued before Envoy started, so its version is above 0)."""
        v = self.stat(admin, "gatehouse.feed.version")
        return v is not None and v > 0

    def issue(self, control):
        status, body = http("POST", f"http://{control}/v1/keys", self.admin_token,
                            {"user_id": "bench_user", "tenant_id": "bench", "plan": "team",
                             "device_name": "feed_scale"})
        if status != 201 and status != 200:
            raise SystemExit(f"feed_scale: issuing a key answered {status}: {body[:200]}")
        issued = json.loads(body)
        return issued["id"], issued["api_key"]

    def revoke(self, control, key_id):
        status, _ = http("DELETE", f"http://{control}/v1/keys/{key_id}", self.admin_token)
        if status not in (200, 204):
            raise SystemExit(f"feed_scale: revoking answered {status}")

    @staticmethod
    def through(listen, key):
        req = urllib.request.Request(f"http://{listen}/v1/things", headers={"x-api-key": key})
        try:
            with urllib.request.urlopen(req, timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return 0

    def measure(self, db, url, n, keys_file):
        row = {"db": db, "keys": n}
        if n:
            summary, took = self.import_keys(url, keys_file)
            row["import_keys_per_s"] = summary.get("imported", 0) / took
        control, control_listen = self.control(url, f"{db}-{n}")
        row["control_rss_idle"] = rss_bytes(control.pid)
        key_id, key = self.issue(control_listen)
        started = time.monotonic()
        envoy, listen, admin = self.envoy(control_listen, f"bench-{db}-{n}")
        wait_for("the fresh Envoy accepting the key",
                 lambda: self.through(listen, key) == 200, 600, 0.02)
        row["accept_s"] = time.monotonic() - started
        wait_for("the snapshot completing", lambda: self.complete(admin), 600, 0.05)
        row["snapshot_s"] = time.monotonic() - started
        time.sleep(2)
        row["envoy_rss"] = rss_bytes(envoy.pid)
        row["sync_wasm_memory"] = self.stat(admin, "gatehouse.feed.wasm_memory_bytes") or 0
        row["pages"] = self.stat(admin, "gatehouse.feed.snapshot_pages") or 0
        # Issue and revocation reach Envoy.
        issue_s, revoke_s = [], []
        for _ in range(self.args.samples):
            t = time.monotonic()
            kid, k = self.issue(control_listen)
            wait_for("an issued key", lambda: self.through(listen, k) == 200, 30, 0.005)
            issue_s.append(time.monotonic() - t)
            t = time.monotonic()
            self.revoke(control_listen, kid)
            wait_for("a revocation", lambda: self.through(listen, k) == 401, 30, 0.005)
            revoke_s.append(time.monotonic() - t)
        row["issue_p50"], row["issue_p99"] = percentiles(issue_s)
        row["revoke_p50"], row["revoke_p99"] = percentiles(revoke_s)
        self.procs.stop(envoy)
        self.revoke(control_listen, key_id)
        # Several fresh Envoys read the snapshot at once.
        if self.args.envoys:
            started = time.monotonic()
            fleet = [self.envoy(control_listen, f"fleet-{db}-{n}-{i}")
                     for i in range(self.args.envoys)]
            peak = 0
            deadline = time.monotonic() + 900
            pending = list(fleet)
            while pending and time.monotonic() < deadline:
                peak = max(peak, rss_bytes(control.pid))
                pending = [e for e in pending if not self.complete(e[2])]
                time.sleep(0.1)
            if pending:
                raise SystemExit("feed_scale: the fleet's snapshots did not complete")
            row["fleet_s"] = time.monotonic() - started
            row["control_rss_fleet_peak"] = max(peak, rss_bytes(control.pid, "VmHWM"))
            for e in fleet:
                self.procs.stop(e[0])
        self.procs.stop(control)
        return row


def percentiles(samples):
    s = sorted(samples)
    p99 = s[min(len(s) - 1, int(round(0.99 * (len(s) - 1))))]
    return statistics.median(s), p99


def mb(b):
    return f"{b / 1e6:.0f} MB"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", default="10000,100000,1000000")
    ap.add_argument("--db", default="sqlite,postgres")
    ap.add_argument("--envoys", type=int, default=4)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = ap.parse_args()
    for path in (ENVOY, WASM, CONTROL, HARNESS):
        if not os.path.exists(path):
            raise SystemExit(f"feed_scale: {path} is missing (make bench-feed builds it)")
    counts = [int(k) for k in args.keys.split(",")]
    work = tempfile.mkdtemp(prefix="gatehouse-feed-scale-")
    run = Run(args, work)
    pg = None
    rows = []
    try:
        files = {}
        for n in counts:
            files[n] = os.path.join(work, f"keys-{n}.ndjson")
            write_keys(files[n], n)
        for db in args.db.split(","):
            if db == "postgres":
                pg = pg or Postgres(work)
            new_url = (lambda: pg.database()) if db == "postgres" else \
                (lambda: f"sqlite://{work}/{secrets.token_hex(4)}.db")
            # The baseline: an Envoy fed an empty database, in this run.
            base = run.measure(db, new_url(), 0, None)
            print(f"{db}: baseline Envoy RSS {mb(base['envoy_rss'])}", file=sys.stderr)
            for n in counts:
                row = run.measure(db, new_url(), n, files[n])
                row["bytes_per_key"] = (row["envoy_rss"] - base["envoy_rss"]) / n
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    finally:
        run.procs.stop_all()
        if pg:
            pg.stop()
        if args.keep:
            print(f"feed_scale: logs in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print("| database | keys | import | fresh Envoy: key accepted / snapshot in | pages "
          "| Envoy RSS growth per key | sync wasm memory "
          f"| control peak RSS, {args.envoys} fresh Envoys (all in after) "
          "| issue p50 / p99 | revocation p50 / p99 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['db']} | {r['keys']:,} | {r['import_keys_per_s']:,.0f}/s "
              f"| {r['accept_s']:.1f} s / {r['snapshot_s']:.1f} s | {r['pages']:.0f} "
              f"| {r['bytes_per_key']:.0f} B | {mb(r['sync_wasm_memory'])} "
              f"| {mb(r.get('control_rss_fleet_peak', 0))} ({r.get('fleet_s', 0):.1f} s) "
              f"| {r['issue_p50'] * 1000:.0f} / {r['issue_p99'] * 1000:.0f} ms "
              f"| {r['revoke_p50'] * 1000:.0f} / {r['revoke_p99'] * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
