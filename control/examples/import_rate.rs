//! How fast `POST /v1/keys/import` stores keys, against issuing them one by one with
//! `POST /v1/keys`, in the same run on the same database (the figures are in
//! benches/README.md, "Bulk import of hashed keys"):
//!
//! ```sh
//! cargo run --release -p gatehouse-control --example import_rate
//! cargo run --release -p gatehouse-control --example import_rate -- \
//!     --keys 100000 --issue 2000 --database-url postgres://USER:PASSWORD@HOST/EMPTY_DB
//! ```
//!
//! Both go through the real router in this process (no socket): the import's body is
//! streamed in 64 KiB chunks made as they are read, so the 250 MB of a million keys is
//! never held; each line names a key by the SHA-256 of a distinct made-up secret, so the
//! table's indexes are written in random order, as a real migration writes them. Then the
//! same body again: every key skipped. The default database is a new SQLite file in a
//! temp dir; `--database-url` takes an empty database of either backend. `--write FILE`
//! writes the body of `--keys` keys to FILE instead, to time `gatehouse-control import`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods,
    clippy::indexing_slicing,
    reason = "a measurement: a failure panics, and Instant::now times it"
)]

use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode};
use gatehouse_control::app::{AppState, router};
use gatehouse_control::clock::SystemClock;
use gatehouse_control::config::Config;
use gatehouse_core::authn::api_key::KeyHash;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Instant;
use tower::ServiceExt;

const ADMIN: &str = "admin-token-for-the-import-rate-3f9a1c7e5b20";
const FEED: &str = "feed-token-for-the-import-rate-8c4e2a6f0d97";
/// Lines per chunk of the streamed body: some 64 KiB.
const LINES_PER_CHUNK: usize = 256;

/// Line `i` of the body: a key of one of 10,000 users.
fn line(i: usize) -> String {
    let sha256 = KeyHash::of_key(format!("made-up secret {i}").as_bytes()).to_hex();
    format!(
        "{{\"sha256\":\"{sha256}\",\"user_id\":\"user_{}\",\"tenant_id\":\"tenant_{}\",\
         \"plan\":\"team\",\"expires_at\":\"2030-01-01T00:00:00Z\",\"scopes\":[\"orders\"]}}\n",
        i % 10_000,
        i % 100
    )
}

/// The body of `n` keys, made chunk by chunk as it is read.
fn body(n: usize) -> Body {
    let chunks = (0..n.div_ceil(LINES_PER_CHUNK)).map(move |c| {
        let lines = (c * LINES_PER_CHUNK..((c + 1) * LINES_PER_CHUNK).min(n)).map(line);
        Ok::<_, std::convert::Infallible>(Bytes::from(lines.collect::<String>()))
    });
    Body::from_stream(futures_util::stream::iter(chunks))
}

async fn call(app: &axum::Router, req: Request<Body>) -> (StatusCode, Value) {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let keys: usize = arg(&args, "--keys").map_or(1_000_000, |v| v.parse().unwrap());
    if let Some(path) = arg(&args, "--write") {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        for i in 0..keys {
            std::io::Write::write_all(&mut out, line(i).as_bytes()).unwrap();
        }
        std::io::Write::flush(&mut out).unwrap();
        println!("{keys} keys written to {path}");
        return;
    }
    let issue: usize = arg(&args, "--issue").map_or(5_000, |v| v.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let url = arg(&args, "--database-url")
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("control.db").display()));
    let store = gatehouse_control::store::open(&url).await.unwrap();
    let mut config = Config::with_tokens(ADMIN, FEED);
    config.max_keys_per_user = u32::MAX;
    let state = AppState::new(store, config, Arc::new(SystemClock))
        .await
        .unwrap();
    let app = router(state.clone());
    let backend = url.split(':').next().unwrap_or_default();

    // One by one, as an admin script would issue them.
    let started = Instant::now();
    for i in 0..issue {
        let req = Request::post("/v1/keys")
            .header("authorization", format!("Bearer {ADMIN}"))
            .header("content-type", "application/json")
            .body(Body::from(
                json!({"user_id": format!("issued_{}", i % 10_000), "tenant_id": "t",
                       "plan": "team", "device_name": "laptop"})
                .to_string(),
            ))
            .unwrap();
        let (status, body) = call(&app, req).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let issued_secs = started.elapsed().as_secs_f64();
    let issue_rate = issue as f64 / issued_secs;

    let import = |n| {
        Request::post("/v1/keys/import")
            .header("authorization", format!("Bearer {ADMIN}"))
            .header("content-type", "application/x-ndjson")
            .body(body(n))
            .unwrap()
    };
    let started = Instant::now();
    let (status, summary) = call(&app, import(keys)).await;
    let import_secs = started.elapsed().as_secs_f64();
    assert_eq!(status, StatusCode::OK, "{summary}");
    assert_eq!(summary["imported"], keys, "{summary}");
    let import_rate = keys as f64 / import_secs;

    let started = Instant::now();
    let (status, summary) = call(&app, import(keys)).await;
    let rerun_secs = started.elapsed().as_secs_f64();
    assert_eq!(status, StatusCode::OK, "{summary}");
    assert_eq!(summary["skipped"], keys, "{summary}");

    let versions = state.store.version().await.unwrap();
    println!("backend: {backend}");
    println!(
        "issued one by one (POST /v1/keys):  {issue} keys in {issued_secs:.2} s: {issue_rate:.0} keys/s"
    );
    println!(
        "imported (POST /v1/keys/import):    {keys} keys in {import_secs:.2} s: {import_rate:.0} keys/s \
         ({:.1}x issuing)",
        import_rate / issue_rate
    );
    println!(
        "imported again (every key skipped): {keys} keys in {rerun_secs:.2} s: {:.0} keys/s",
        keys as f64 / rerun_secs
    );
    println!(
        "feed versions: {versions} ({issue} issued + {} import batches)",
        versions - issue as i64
    );
}
