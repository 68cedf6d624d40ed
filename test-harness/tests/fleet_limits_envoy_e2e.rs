//! Fleet-wide limits end to end: three real Envoys running the module with
//! `policies/local.yaml` and `rate_limit.scope: fleet`, two real `gatehouse-control serve`
//! replicas on one throwaway PostgreSQL (Envoys 0 and 2 poll one, Envoy 1 the other) and
//! a real `redis-server` holding the fleet's counters.
//!
//! For the same requests at the same times, the fleet must admit within 10% of the limit
//! (±6 of the free plan's 60 a minute) of what one exact limiter would admit, whether a
//! caller's traffic is spread over the three Envoys or all lands on one; a restarted Envoy
//! must not hand out a fresh budget; with Redis gone each Envoy enforces its share, and
//! the fleet recovers when Redis is back. The figures are printed (`-- --nocapture`);
//! benches/README.md ("Fleet-wide limits") reports them.
//!
//! Needs Envoy (`make envoy`), the module (`make wasm`), the control binary
//! (`cargo build -p gatehouse-control`) and `redis-server` (`make redis`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use gatehouse_harness::envoy::control::{ControlOptions, ControlService, Database, IssuedKey};
use gatehouse_harness::envoy::http1::{ClientRequest, ClientResponse};
use gatehouse_harness::envoy::postgres::PostgresCluster;
use gatehouse_harness::envoy::redis::RedisServer;
use gatehouse_harness::envoy::{Envoy, EnvoyOptions, FeedLink, workspace_root};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const FEED_TOKEN_ENV: &str = "GATEHOUSE_FEED_TOKEN";
const JWT_SECRET_ENV: &str = "GATEHOUSE_JWT_SECRET";
const JWT_SECRET: &str = "gatehouse-test-secret-0123456789abcdef-xyz";
/// The plan under test: 60 a minute, bursts of 60.
const PLAN: &str = "free";
const PER_MINUTE: u32 = 60;
/// The accuracy target: 10% of the limit.
const TOLERANCE: i64 = 6;
/// How long each caller sends, and how often.
const RUN: Duration = Duration::from_secs(20);
const EVERY: Duration = Duration::from_millis(166);
const BOUND: Duration = Duration::from_secs(15);

#[allow(
    clippy::disallowed_methods,
    reason = "schedules real requests to real processes; the core never reads it"
)]
fn stopwatch() -> Instant {
    Instant::now()
}

/// `policies/local.yaml` with every limit fleet-wide.
fn fleet_policy() -> String {
    let source = std::fs::read_to_string(workspace_root().join("policies/local.yaml")).unwrap();
    let loaded = gatehouse_core::policy::load_yaml("local.yaml", &source).unwrap();
    let mut config: Value = serde_json::from_str(&loaded.plugin_config_json).unwrap();
    config["rate_limit"] = json!({ "scope": "fleet", "sync_interval": "250ms" });
    let json = config.to_string();
    let policy = gatehouse_core::policy::Policy::from_json(json.as_bytes()).unwrap();
    assert!(policy.rate_limit.any_fleet(&policy.routes));
    json
}

struct Fleet {
    envoys: Vec<Envoy>,
    /// The two replicas; Envoy `i` polls `replicas[i % 2]`.
    replicas: Vec<ControlService>,
    redis: RedisServer,
    /// Dropped last: the replicas go before their database.
    _postgres: PostgresCluster,
}

impl Fleet {
    fn start(envoys: usize) -> Fleet {
        let postgres = PostgresCluster::start()
            .unwrap_or_else(|e| panic!("could not start PostgreSQL: {e:#}"));
        let url = postgres
            .create_database("gatehouse_fleet")
            .unwrap_or_else(|e| panic!("{e:#}"));
        let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e:#}"));
        let mut opts = ControlOptions {
            database: Database::Postgres(url),
            ..ControlOptions::new()
        };
        opts.env.push(("GATEHOUSE_REDIS_URL".into(), redis.url()));
        let a = ControlService::start(&opts)
            .unwrap_or_else(|e| panic!("could not start gatehouse-control: {e:#}"));
        let b = a
            .replica()
            .unwrap_or_else(|e| panic!("could not start a second replica: {e:#}"));
        let mut fleet = Fleet {
            envoys: Vec::new(),
            replicas: vec![a, b],
            redis,
            _postgres: postgres,
        };
        for i in 0..envoys {
            let envoy = fleet.new_envoy(i);
            fleet.envoys.push(envoy);
        }
        fleet
    }

    /// The replica Envoy `i` polls.
    fn control_of(&self, i: usize) -> &ControlService {
        &self.replicas[i % self.replicas.len()]
    }

    fn new_envoy(&self, i: usize) -> Envoy {
        let control = self.control_of(i);
        let opts = EnvoyOptions {
            env: vec![(JWT_SECRET_ENV.into(), JWT_SECRET.into())],
            concurrency: 2,
            ..EnvoyOptions::new(fleet_policy())
        };
        let link = FeedLink {
            control: control.addr(),
            secret_env: vec![(FEED_TOKEN_ENV.into(), control.feed_token().into())],
        };
        Envoy::start_with_feed(&opts, &link)
            .unwrap_or_else(|e| panic!("could not start Envoy: {e:#}"))
    }

    fn diagnostics(&self) -> String {
        let mut out = String::new();
        for (i, e) in self.envoys.iter().enumerate() {
            out.push_str(&format!("--- Envoy {i} ---\n"));
            for m in [
                "exchanges",
                "exchange_failures",
                "states_applied",
                "proxies",
            ] {
                let name = format!("wasmcustom.gatehouse.fleet.{m}");
                out.push_str(&format!("{name}: {:?}\n", e.stat(&name).ok().flatten()));
            }
            out.push_str(&e.log_tail(15));
        }
        for (i, c) in self.replicas.iter().enumerate() {
            out.push_str(&format!("\n--- control replica {i} ---\n"));
            out.push_str(&c.log_tail(10));
        }
        out
    }

    /// Issued through the second replica: it reaches Envoys polling either.
    fn issue(&self, user: &str, plan: &str) -> IssuedKey {
        self.replicas[1]
            .issue_key(user, "tenant_demo", plan)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.diagnostics()))
    }

    fn call(&self, envoy: usize, key: &IssuedKey) -> ClientResponse {
        let req = ClientRequest {
            method: "GET".into(),
            path: "/v1/things".into(),
            headers: vec![("x-api-key".into(), key.api_key.as_bytes().to_vec())],
            body: Vec::new(),
        };
        self.envoys[envoy]
            .send(&req)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.diagnostics()))
    }

    /// Waits until every Envoy knows the keys issued so far: a fresh enterprise key (its
    /// own budget, far from its limit) issued after them is accepted everywhere.
    fn until_known(&self) {
        let probe = self.issue(&format!("probe_{}", self.envoys.len()), "enterprise");
        for i in 0..self.envoys.len() {
            let start = stopwatch();
            while self.call(i, &probe).status != 200 {
                assert!(start.elapsed() < BOUND, "Envoy {i}\n{}", self.diagnostics());
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn stat(&self, envoy: usize, name: &str) -> u64 {
        self.envoys[envoy]
            .stat(&format!("wasmcustom.gatehouse.fleet.{name}"))
            .unwrap_or_else(|e| panic!("{e:#}"))
            .unwrap_or(0)
    }
}

/// What one exact GCRA limiter of `PER_MINUTE` (burst as many) admits of requests sent at
/// `times` (seconds from any origin).
fn exact_admits(times: &[f64]) -> i64 {
    let t = 60.0 / f64::from(PER_MINUTE);
    let horizon = t * f64::from(PER_MINUTE);
    let mut tat = f64::MIN;
    let mut admitted = 0;
    for &now in times {
        let next = tat.max(now) + t;
        if next <= now + horizon {
            tat = next;
            admitted += 1;
        }
    }
    admitted
}

/// Requests as `(seconds from the start, admitted)`.
type Sent = Vec<(f64, bool)>;

/// The most the fleet was ahead of one exact limiter at any moment of a run: requests
/// `(time, admitted)` in time order.
fn largest_lead(requests: &[(f64, bool)]) -> i64 {
    let t = 60.0 / f64::from(PER_MINUTE);
    let horizon = t * f64::from(PER_MINUTE);
    let (mut tat, mut exact, mut fleet, mut lead) = (f64::MIN, 0i64, 0i64, 0i64);
    for &(now, admitted) in requests {
        let next = tat.max(now) + t;
        if next <= now + horizon {
            tat = next;
            exact += 1;
        }
        fleet += i64::from(admitted);
        lead = lead.max(fleet - exact);
    }
    lead
}

/// One caller's run: where each request went, when, and whether it was admitted.
struct Run {
    times: Vec<f64>,
    admitted: i64,
}

#[test]
fn the_fleet_admits_what_one_exact_limiter_would_spread_or_concentrated() {
    let mut fleet = Fleet::start(3);
    let spread = fleet.issue("user_fleet_spread", PLAN);
    let one = fleet.issue("user_fleet_one", PLAN);
    fleet.until_known();

    // Both callers at 6 requests a second for RUN: `spread` round-robin over the three
    // Envoys, `one` always to the first.
    let origin = stopwatch();
    let mut runs = [
        Run {
            times: Vec::new(),
            admitted: 0,
        },
        Run {
            times: Vec::new(),
            admitted: 0,
        },
    ];
    let mut i = 0u32;
    while origin.elapsed() < RUN {
        let due = EVERY * i;
        if let Some(wait) = due.checked_sub(origin.elapsed()) {
            std::thread::sleep(wait);
        }
        for (r, (key, envoy)) in [(&spread, i as usize % 3), (&one, 0)]
            .into_iter()
            .enumerate()
        {
            let at = origin.elapsed().as_secs_f64();
            let resp = fleet.call(envoy, key);
            assert!(
                resp.status == 200 || resp.status == 429,
                "{} {}",
                resp.status,
                String::from_utf8_lossy(&resp.body)
            );
            runs[r].times.push(at);
            runs[r].admitted += i64::from(resp.status == 200);
        }
        i += 1;
    }
    for (name, run) in ["spread over 3 Envoys", "all on one Envoy"]
        .iter()
        .zip(&runs)
    {
        let exact = exact_admits(&run.times);
        println!(
            "fleet limit {PER_MINUTE}/min, {name}: {} requests in {:?}, admitted {} \
             (one exact limiter: {exact}, difference {:+})",
            run.times.len(),
            RUN,
            run.admitted,
            run.admitted - exact
        );
        assert!(
            (run.admitted - exact).abs() <= TOLERANCE,
            "{name}: admitted {} where one exact limiter admits {exact}\n{}",
            run.admitted,
            fleet.diagnostics()
        );
    }
    assert_eq!(fleet.stat(0, "proxies"), 3, "{}", fleet.diagnostics());

    // A restarted Envoy hands out no fresh budget: `one` has none left (it is refused on
    // its Envoy), and a new Envoy in place of the third learns that before any key works.
    // Its requests from here on are timed too, to compare with the exact limiter.
    let before = exact_admits(&runs[1].times);
    let mut times = runs[1].times.clone();
    let mut send = |fleet: &Fleet, envoy: usize| -> i64 {
        times.push(origin.elapsed().as_secs_f64());
        i64::from(fleet.call(envoy, &one).status == 200)
    };
    let mut admitted: i64 = (0..5).map(|_| send(&fleet, 0)).sum();
    drop(fleet.envoys.remove(2));
    let replacement = fleet.new_envoy(2);
    fleet.envoys.push(replacement);
    fleet.until_known();
    let on_new: i64 = (0..10).map(|_| send(&fleet, 2)).sum();
    admitted += on_new;
    // What one exact limiter admits of these 15 requests: the refill since the run.
    let exact = exact_admits(&times) - before;
    println!(
        "restarted Envoy: {on_new} of 10 admitted for a caller without budget, {admitted} \
         of 15 around the restart (one exact limiter: {exact}; without the fleet: 10 more)"
    );
    assert!(
        admitted <= exact + 2,
        "a restarted Envoy gave a fresh budget: {admitted} admitted, {exact} due\n{}",
        fleet.diagnostics()
    );

    // Redis gone: the exchanges fail, the fleet's states go stale (1 s), and each Envoy
    // enforces its share of the plan.
    let outage = fleet.issue("user_fleet_outage", PLAN);
    fleet.until_known();
    let proxies = fleet.stat(0, "proxies").max(1);
    let failures = fleet.stat(0, "exchange_failures");
    fleet.redis.stop();
    let start = stopwatch();
    while fleet.stat(0, "exchange_failures") == failures {
        assert!(start.elapsed() < BOUND, "{}", fleet.diagnostics());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1_500));
    let share = u64::from(PER_MINUTE).div_ceil(proxies);
    let admitted = (0..40)
        .filter(|_| fleet.call(0, &outage).status == 200)
        .count() as u64;
    println!(
        "Redis down: {admitted} of 40 admitted on one Envoy (its share: {share} of {PER_MINUTE}, {proxies} proxies)"
    );
    assert!(
        admitted.abs_diff(share) <= 1,
        "admitted {admitted}, share {share}\n{}",
        fleet.diagnostics()
    );
    assert!(
        fleet.envoys[0].log().contains("fleet: exchange failed"),
        "{}",
        fleet.diagnostics()
    );

    // Redis back (empty): exchanges resume by themselves, and what the first Envoy
    // admitted during the outage reaches the others.
    let outage_at = stopwatch();
    fleet.redis.start_again().unwrap();
    let exchanges = fleet.stat(1, "exchanges");
    let start = stopwatch();
    while fleet.stat(1, "exchanges") < exchanges + 3 || fleet.stat(0, "exchanges") == 0 {
        assert!(start.elapsed() < BOUND, "{}", fleet.diagnostics());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1_000));
    assert!(
        fleet.envoys[1]
            .log()
            .contains("fleet: exchanges work again"),
        "{}",
        fleet.diagnostics()
    );
    let refill = outage_at.elapsed().as_secs_f64() + 2.0;
    let admitted = (0..70)
        .filter(|_| fleet.call(1, &outage).status == 200)
        .count() as f64;
    let left = f64::from(PER_MINUTE) - share as f64;
    println!("Redis back: {admitted} of 70 admitted on another Envoy ({left} left, plus refill)");
    assert!(
        admitted >= left - TOLERANCE as f64 && admitted <= left + refill + 2.0,
        "admitted {admitted}, expected about {left}\n{}",
        fleet.diagnostics()
    );
}

#[test]
fn the_exact_model_is_gcra() {
    // 60 at once, then one a second.
    let burst: Vec<f64> = (0..100).map(|_| 0.0).collect();
    assert_eq!(exact_admits(&burst), 60);
    let later: Vec<f64> = burst.iter().copied().chain((0..20).map(|_| 10.0)).collect();
    assert_eq!(exact_admits(&later), 70, "ten seconds refill ten");
}

/// The accuracy table of benches/README.md ("Fleet-wide limits"): callers at several
/// rates, spread over three Envoys or all on one, and one caller bursting at all three at
/// once, each against one exact limiter given the same requests at the same times.
/// `make bench-fleet` runs it (`-- --ignored --nocapture accuracy_table`).
#[test]
#[ignore = "a measurement: make bench-fleet"]
fn accuracy_table() {
    const SECONDS: u64 = 30;
    let fleet = Fleet::start(3);
    let rates = [2.0, 6.0, 20.0, 60.0];
    let mut callers = Vec::new();
    for (r, rate) in rates.iter().enumerate() {
        for spread in [true, false] {
            let key = fleet.issue(&format!("user_table_{r}_{spread}"), PLAN);
            callers.push((*rate, spread, key));
        }
    }
    let burst = fleet.issue("user_table_burst", PLAN);
    fleet.until_known();
    let origin = stopwatch();
    let results: Vec<(f64, bool, Sent)> = std::thread::scope(|s| {
        let handles: Vec<_> = callers
            .iter()
            .map(|(rate, spread, key)| {
                let fleet = &fleet;
                s.spawn(move || {
                    let every = Duration::from_secs_f64(1.0 / rate);
                    let mut sent = Vec::new();
                    let mut i = 0u32;
                    while origin.elapsed() < Duration::from_secs(SECONDS) {
                        if let Some(wait) = (every * i).checked_sub(origin.elapsed()) {
                            std::thread::sleep(wait);
                        }
                        let envoy = if *spread { i as usize % 3 } else { 0 };
                        let at = origin.elapsed().as_secs_f64();
                        sent.push((at, fleet.call(envoy, key).status == 200));
                        i += 1;
                    }
                    (*rate, *spread, sent)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // One caller fires 50 requests at each Envoy at once, from three threads.
    let burst_start = stopwatch();
    let burst_results: Vec<Sent> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|envoy| {
                let (fleet, burst) = (&fleet, &burst);
                s.spawn(move || {
                    let mut sent = Vec::new();
                    for _ in 0..50 {
                        let at = burst_start.elapsed().as_secs_f64();
                        sent.push((at, fleet.call(envoy, burst).status == 200));
                    }
                    sent
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let burst_took = burst_start.elapsed().as_secs_f64();
    println!(
        "\n| caller's requests | Envoys | sent | admitted | one exact limiter | difference | largest lead |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let row = |what: String, envoys: &str, sent: &[(f64, bool)]| {
        let times: Vec<f64> = sent.iter().map(|(t, _)| *t).collect();
        let admitted = sent.iter().filter(|(_, a)| *a).count() as i64;
        let exact = exact_admits(&times);
        println!(
            "| {what} | {envoys} | {} | {admitted} | {exact} | {:+} | {} |",
            sent.len(),
            admitted - exact,
            largest_lead(sent)
        );
    };
    for (rate, spread, sent) in &results {
        let envoys = if *spread { "3, round-robin" } else { "1" };
        row(format!("{rate} a second for {SECONDS} s"), envoys, sent);
    }
    let mut sent: Vec<(f64, bool)> = burst_results.concat();
    sent.sort_by(|a, b| a.0.total_cmp(&b.0));
    row(
        format!("150 at once ({burst_took:.2} s), 50 at each Envoy"),
        "3, at once",
        &sent,
    );
}
