//! Where a request's time goes inside the module: runs one kind of request through the
//! real `gatehouse.wasm` in the harness, prints the wasmtime fuel (about one unit per
//! wasm instruction) and the host calls of one request, then repeats it `N` times for a
//! profiler. With `GATEHOUSE_HARNESS_PERFMAP=1` wasmtime writes `/tmp/perf-<pid>.map`, so
//! `perf record` / `perf report` name the module's functions (build the module without
//! `strip` for names; benches/README.md, "Finding where the time goes").
//!
//! ```sh
//! MODE=key N=200000 GATEHOUSE_HARNESS_PERFMAP=1 perf record -F 5000 -o key.data \
//!   target/release/examples/profile_request target/wasm32-wasip1/release/gatehouse.wasm
//! perf report -i key.data --no-children --sort dso,sym | grep JIT
//! ```
//!
//! `MODE`: `key` (a valid API key, plan limit), `jwt` (an HS256 token, plan limit),
//! `none` (no credential on an internal route: 401) or `anon` (no credential on an
//! external route: the anonymous limit, counted by the client's address).

use gatehouse_harness::bench_fixtures::{
    HARNESS_JWT, HARNESS_JWT_SECRET, HARNESS_KEY, HARNESS_POLICY_JSON, measure,
};
use gatehouse_harness::host::{Harness, Request};

const SEC: u64 = 1_000_000_000;

fn main() -> anyhow::Result<()> {
    let wasm = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/wasm32-wasip1/release/gatehouse.wasm".to_string());
    let mode = std::env::var("MODE").unwrap_or_else(|_| "key".to_string());
    let n: u64 = std::env::var("N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // `anon` needs an external route: the bench policy with one more, after the others.
    let policy = match mode.as_str() {
        "anon" => HARNESS_POLICY_JSON.replace(
            r#""audience": "internal"}"#,
            r#""audience": "internal"},
    {"name": "docs", "match": {"path_prefix": "/docs/"}, "audience": "external"}"#,
        ),
        _ => HARNESS_POLICY_JSON.to_string(),
    };
    let mut h = Harness::builder(std::path::Path::new(&wasm))
        .plugin_config(policy)
        .env("GATEHOUSE_JWT_SECRET", HARNESS_JWT_SECRET)
        .time(1_767_225_600 * SEC)
        .build()?;
    let bearer = format!("Bearer {HARNESS_JWT}");
    let credential = match mode.as_str() {
        "key" => Some(("x-api-key", HARNESS_KEY)),
        "jwt" => Some(("authorization", bearer.as_str())),
        "none" | "anon" => None,
        other => anyhow::bail!("MODE is key, jwt, none or anon, not {other:?}"),
    };
    let send = |h: &mut Harness| -> anyhow::Result<u16> {
        // One second apart: the plan's limit never runs out.
        h.set_time(h.now_nanos() + SEC);
        let path = if mode == "anon" {
            "/docs/page"
        } else {
            "/v1/things"
        };
        let r = Request::get(path)
            .header("user-agent", "curl/8.5.0")
            .header("accept", "application/json")
            .header("x-request-id", "0f6a3d0e-8c1b-4c7e-9a51-2f4b6d8e0a13");
        let r = match credential {
            Some((name, value)) => r.header(name, value),
            None => r,
        };
        Ok(h.request(r)?.status)
    };
    // The first request warms what a worker keeps (a JWT verified once is cached).
    send(&mut h)?;
    let (status, cost) = measure(&mut h, send);
    println!("{mode}: status {}, {cost}", status?);
    for _ in 0..n {
        send(&mut h)?;
    }
    Ok(())
}
