//! What no other proxy-wasm harness has, each shown catching a real defect in a module:
//! several workers interleaved by a seeded scheduler, virtual time with ticks and HTTP
//! call timeouts, scripted upstreams, shared queues, fault injection, resource limits,
//! failure policies and chunked bodies. Runs the probe fixture (`make probe`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use gatehouse_harness::host::{
    CallResult, FailurePolicy, Harness, HarnessBuilder, Reply, Request, Route, Upstream, VmId,
};
use std::path::PathBuf;
use std::time::Duration;

fn probe_wasm() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/probe/wasm32-wasip1/release/probe.wasm");
    assert!(
        path.exists(),
        "{} is missing; run `make probe`",
        path.display()
    );
    path
}

fn probe(config: &str) -> HarnessBuilder {
    Harness::builder(probe_wasm())
        .plugin_config(config)
        .time(1_767_225_600_000_000_000)
}

fn counter(h: &Harness, key: &str) -> u64 {
    h.shared_data(key)
        .map(|(v, _)| String::from_utf8(v).unwrap().parse().unwrap())
        .unwrap_or(0)
}

fn messages(h: &Harness) -> Vec<String> {
    h.logs().into_iter().map(|r| r.message).collect()
}

fn position(logs: &[String], needle: &str) -> usize {
    logs.iter()
        .position(|m| m.contains(needle))
        .unwrap_or_else(|| panic!("no log line contains {needle:?}; log: {logs:#?}"))
}

/// Two workers each add 1 to a shared counter, interleaved at host calls.
fn race(h: &mut Harness, seed: u64, header: &str) -> Result<(), String> {
    h.set_shared_data("n", b"0");
    let results = h.concurrently(
        seed,
        vec![
            (0, Request::get("/").header(header, "n")),
            (1, Request::get("/").header(header, "n")),
        ],
    );
    for r in results {
        r.map_err(|e| format!("{e:#}"))?;
    }
    match counter(h, "n") {
        2 => Ok(()),
        n => Err(format!(
            "counter is {n} after two increments ({} turn changes)",
            h.interleavings()
        )),
    }
}

#[test]
fn seeded_interleaving_finds_the_lost_update_of_a_read_then_write_counter() {
    let builder = probe("{}").workers(2);
    let found = Harness::explore(&builder, 0..64, |h, seed| {
        race(h, seed, "x-probe-count-racy")
    });
    let (seed, message) =
        found.expect_err("64 seeds and no lost update: the scheduler does not interleave");
    assert!(message.contains("counter is 1"), "{message}");

    // The failing seed replays exactly.
    let mut again = builder.clone().build().unwrap();
    assert_eq!(race(&mut again, seed, "x-probe-count-racy"), Err(message));
}

#[test]
fn a_compare_and_swap_loop_survives_every_explored_interleaving() {
    let builder = probe("{}").workers(2);
    let explored = Harness::explore(&builder, 0..64, |h, seed| {
        race(h, seed, "x-probe-count-cas")
    })
    .unwrap_or_else(|(seed, m)| panic!("seed {seed}: {m}"));
    assert_eq!(explored, 64);
}

#[test]
fn interleaving_depends_only_on_the_seed() {
    let trace = |seed: u64| {
        let mut h = probe("{}").workers(3).build().unwrap();
        h.set_shared_data("n", b"0");
        let requests = (0..6)
            .map(|i| (i % 3, Request::get("/").header("x-probe-count-racy", "n")))
            .collect();
        for r in h.concurrently(seed, requests) {
            r.unwrap();
        }
        (counter(&h, "n"), h.interleavings())
    };
    assert_eq!(trace(7), trace(7));
    assert!(trace(7).1 > 0, "three workers never changed turns");
}

#[test]
fn workers_share_shared_data_and_stats_but_each_runs_its_own_vm() {
    let mut h = probe("{}").workers(2).build().unwrap();
    assert_eq!(h.workers(), 2);
    h.request_on(0, Request::get("/").header("x-probe-set", "k|from-0|0"))
        .unwrap();
    let out = h
        .request_on(1, Request::get("/").header("x-probe-get", "k"))
        .unwrap();
    assert_eq!(
        out.upstream.unwrap().header("x-probe-get-value"),
        Some("from-0")
    );
    assert_eq!(h.metric("probe_requests"), Some(2));
    let vms: Vec<VmId> = h.logs().iter().map(|r| r.vm).collect();
    assert!(vms.contains(&VmId::Worker(0)) && vms.contains(&VmId::Worker(1)));
}

fn upstream() -> Upstream {
    Upstream::new("auth")
        .route(
            Route::get("/ok")
                .reply(Reply::json(200, r#"{"ok":true}"#).delay(Duration::from_millis(40))),
        )
        .route(Route::get("/slow").reply(Reply::status(200).delay(Duration::from_secs(5))))
        .route(Route::get("/hang").reply(Reply::hang()))
        .route(Route::get("/reset").reply(Reply::reset()))
}

#[test]
fn an_http_call_is_answered_later_on_virtual_time_and_the_stream_resumes() {
    let mut h = probe("{}").upstream(upstream()).build().unwrap();
    let before = h.now_nanos();
    let out = h
        .request(Request::get("/").header("x-probe-call", "auth|/ok|1000"))
        .unwrap();
    let up = out
        .upstream
        .expect("the stream resumed and reached the upstream");
    assert_eq!(up.header("x-probe-call-status"), Some("200"));
    assert_eq!(up.header("x-probe-call-body"), Some(r#"{"ok":true}"#));
    assert_eq!(
        h.now_nanos() - before,
        40_000_000,
        "the answer came 40ms later"
    );
    let calls = h.http_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        (calls[0].cluster.as_str(), calls[0].path.as_str()),
        ("auth", "/ok")
    );
    assert_eq!(calls[0].result, CallResult::Responded(200));
    // The answer is never delivered inside the call.
    let logs = messages(&h);
    assert!(position(&logs, "dispatched call") < position(&logs, "answered on context"));
}

#[test]
fn a_slow_upstream_times_out_and_the_module_sees_no_headers() {
    let mut h = probe("{}").upstream(upstream()).build().unwrap();
    for path in ["/slow", "/hang"] {
        let out = h
            .request(Request::get("/").header("x-probe-call", format!("auth|{path}|250")))
            .unwrap();
        let up = out.upstream.unwrap();
        assert_eq!(up.header("x-probe-call-status"), Some("none"), "{path}");
        assert_eq!(up.header("x-probe-call-headers"), Some("0"), "{path}");
    }
    let results: Vec<CallResult> = h.http_calls().into_iter().map(|c| c.result).collect();
    assert_eq!(results, vec![CallResult::TimedOut, CallResult::TimedOut]);

    let out = h
        .request(Request::get("/").header("x-probe-call", "auth|/reset|250"))
        .unwrap();
    assert_eq!(
        out.upstream.unwrap().header("x-probe-call-status"),
        Some("none")
    );
    assert_eq!(h.http_calls()[2].result, CallResult::Reset);
}

#[test]
fn a_module_that_trusts_every_answer_is_caught_by_a_timeout() {
    // x-probe-call-deny: deny unless the check answered 200. A timeout must deny too.
    let mut h = probe("{}").upstream(upstream()).build().unwrap();
    let out = h
        .request(
            Request::get("/")
                .header("x-probe-call", "auth|/hang|100")
                .header("x-probe-call-deny", "1"),
        )
        .unwrap();
    assert_eq!(out.status, 503);
    assert!(out.upstream.is_none());
}

#[test]
fn http_call_errors_are_envoys_bad_argument() {
    let mut h = probe("{}").upstream(upstream()).build().unwrap();
    let out = h
        .request(Request::get("/").header("x-probe-call", "nowhere|/ok|100"))
        .unwrap();
    assert_eq!(
        out.upstream.unwrap().header("x-probe-call-error"),
        Some("BadArgument")
    );
    let out = h
        .request(
            Request::get("/")
                .header("x-probe-call", "auth|/ok|100")
                .header("x-probe-call-no-path", "1"),
        )
        .unwrap();
    assert_eq!(
        out.upstream.unwrap().header("x-probe-call-error"),
        Some("BadArgument")
    );
    assert!(h.http_calls().is_empty(), "refused calls are not made");

    // A known cluster with no matching route answers 404 and is recorded as unmatched.
    let out = h
        .request(Request::get("/").header("x-probe-call", "auth|/other|100"))
        .unwrap();
    assert_eq!(
        out.upstream.unwrap().header("x-probe-call-status"),
        Some("404")
    );
    assert_eq!(h.http_calls()[0].result, CallResult::Unmatched);
}

#[test]
fn a_request_paused_for_good_is_an_error_not_a_hang() {
    let mut h = probe("{}").build().unwrap();
    let err = h
        .request(Request::get("/").header("x-probe-pause", "1"))
        .unwrap_err();
    assert!(format!("{err:#}").contains("nothing pending"), "{err:#}");
}

#[test]
fn pausing_on_headers_holds_the_body_until_the_stream_resumes() {
    let mut h = probe("{}").upstream(upstream()).build().unwrap();
    let out = h
        .request(
            Request::post("/")
                .header("x-probe-call", "auth|/ok|1000")
                .body("hello world!")
                .chunked(4),
        )
        .unwrap();
    assert_eq!(out.upstream.unwrap().body, b"hello world!");
    let logs = messages(&h);
    assert!(position(&logs, "answered on context") < position(&logs, "request body:"));
    // Envoy buffered the chunks that arrived during the pause: one callback with all of it.
    let bodies: Vec<&String> = logs
        .iter()
        .filter(|m| m.starts_with("request body:"))
        .collect();
    assert_eq!(bodies, vec!["request body: 12 bytes, end_of_stream=true"]);
}

#[test]
fn with_allow_on_headers_stop_iteration_the_body_arrives_while_the_headers_wait() {
    // Paused headers with nothing pending would hang without the option (see above);
    // with it the body callbacks run, the filter buffers, and continuing at the end
    // releases headers and body together.
    let mut h = probe("{}")
        .allow_on_headers_stop_iteration(true)
        .build()
        .unwrap();
    let out = h
        .request(
            Request::post("/")
                .header("x-probe-pause", "1")
                .header("x-probe-buffer", "1")
                .body("hello world!")
                .chunked(4),
        )
        .unwrap();
    assert_eq!(out.upstream.unwrap().body, b"hello world!");
    let bodies: Vec<String> = messages(&h)
        .into_iter()
        .filter(|m| m.starts_with("request body:"))
        .collect();
    assert_eq!(
        bodies,
        [
            "request body: 4 bytes, end_of_stream=false",
            "request body: 8 bytes, end_of_stream=false",
            "request body: 12 bytes, end_of_stream=true"
        ]
    );
    // A body callback that continues releases the paused headers at once.
    let mut h = probe("{}")
        .allow_on_headers_stop_iteration(true)
        .build()
        .unwrap();
    let out = h
        .request(
            Request::post("/")
                .header("x-probe-pause", "1")
                .body("hello world!")
                .chunked(5),
        )
        .unwrap();
    assert_eq!(out.upstream.unwrap().body, b"hello world!");
}

#[test]
fn body_chunks_arrive_one_callback_each_and_buffering_accumulates_them() {
    let mut h = probe("{}").build().unwrap();
    let out = h
        .request(Request::post("/").body("hello world!").chunked(5))
        .unwrap();
    assert_eq!(out.upstream.unwrap().body, b"hello world!");
    let streamed: Vec<String> = messages(&h)
        .into_iter()
        .filter(|m| m.starts_with("request body:"))
        .collect();
    assert_eq!(
        streamed,
        [
            "request body: 5 bytes, end_of_stream=false",
            "request body: 5 bytes, end_of_stream=false",
            "request body: 2 bytes, end_of_stream=true"
        ]
    );

    let mut h = probe("{}").build().unwrap();
    let out = h
        .request(
            Request::post("/")
                .header("x-probe-buffer", "1")
                .header("x-probe-upper-body", "1")
                .body("hello world!")
                .chunked(5),
        )
        .unwrap();
    assert_eq!(out.upstream.unwrap().body, b"HELLO WORLD!");
    let buffered: Vec<String> = messages(&h)
        .into_iter()
        .filter(|m| m.starts_with("request body:"))
        .collect();
    assert_eq!(
        buffered,
        [
            "request body: 5 bytes, end_of_stream=false",
            "request body: 10 bytes, end_of_stream=false",
            "request body: 12 bytes, end_of_stream=true"
        ]
    );
}

#[test]
fn advance_fires_ticks_on_schedule_on_every_worker() {
    let start = 1_767_225_600;
    let mut h = probe("tick").workers(2).build().unwrap();
    h.advance(Duration::from_millis(1600)).unwrap();
    assert_eq!(
        h.metric("probe_ticks"),
        Some(6),
        "3 ticks of 500ms on each of 2 workers"
    );
    let ticks: Vec<String> = messages(&h)
        .into_iter()
        .filter(|m| m.starts_with("tick at"))
        .collect();
    assert_eq!(ticks.len(), 6);
    assert_eq!(ticks[0], format!("tick at {start}"), "first tick at +0.5s");
    assert_eq!(
        ticks[5],
        format!("tick at {}", start + 1),
        "third tick at +1.5s"
    );
    h.advance(Duration::from_millis(400)).unwrap();
    assert_eq!(h.metric("probe_ticks"), Some(8), "the 2.0s tick");
}

#[test]
fn the_singleton_polls_an_upstream_on_its_tick_and_workers_see_the_result() {
    let control = Upstream::new("control").route(
        Route::get("/v1/keys")
            .reply(Reply::json(200, r#"{"keys":["k1"]}"#).delay(Duration::from_millis(20))),
    );
    let mut h = probe("{}")
        .singleton("poll")
        .workers(2)
        .upstream(control)
        .build()
        .unwrap();
    h.advance(Duration::from_secs(9)).unwrap();
    assert!(h.http_calls().is_empty());
    h.advance(Duration::from_secs(1)).unwrap();
    assert_eq!(h.http_calls().len(), 1);
    assert_eq!(h.http_calls()[0].vm, VmId::Singleton);
    assert_eq!(h.shared_data("poll_result"), None, "the answer takes 20ms");
    h.advance(Duration::from_millis(20)).unwrap();
    let out = h
        .request_on(1, Request::get("/").header("x-probe-get", "poll_result"))
        .unwrap();
    assert_eq!(
        out.upstream.unwrap().header("x-probe-get-value"),
        Some(r#"{"keys":["k1"]}"#)
    );
}

#[test]
fn queue_items_reach_the_last_registrant_after_the_enqueuing_callback() {
    let mut h = probe("queue").workers(2).build().unwrap();
    let out = h
        .request_on(0, Request::get("/").header("x-probe-enqueue", "hello"))
        .unwrap();
    assert_eq!(
        out.upstream.unwrap().header("x-probe-enqueue-result"),
        Some("Ok(())")
    );
    assert_eq!(h.metric("probe_queue_items"), Some(1));
    let records = h.logs();
    let delivered = records
        .iter()
        .find(|r| r.message.contains("item: hello"))
        .expect("the item was delivered");
    // Worker 1 registered the name last, so it owns the notifications.
    assert_eq!(delivered.vm, VmId::Worker(1));
    let logs = messages(&h);
    assert!(position(&logs, "on_log status=200") < position(&logs, "item: hello"));
}

#[test]
fn an_enqueue_to_an_unregistered_queue_is_not_found() {
    let mut h = probe("{}").build().unwrap();
    let out = h
        .request(Request::get("/").header("x-probe-enqueue", "x"))
        .unwrap();
    assert_eq!(
        out.upstream.unwrap().header("x-probe-enqueue-result"),
        Some("no queue")
    );
}

#[test]
fn an_injected_cas_mismatch_is_retried_by_a_cas_loop() {
    let mut h = probe("{}").build().unwrap();
    h.set_shared_data("n", b"0");
    h.fault("proxy_set_shared_data", 1, 8);
    h.request(Request::get("/").header("x-probe-count-cas", "n"))
        .unwrap();
    assert_eq!(counter(&h, "n"), 1);
    assert_eq!(
        h.host_calls("proxy_set_shared_data"),
        2,
        "one refused, one retried"
    );
}

#[test]
fn an_injected_cas_mismatch_crashes_a_module_that_unwraps_it() {
    let mut h = probe("{}").build().unwrap();
    h.fault("proxy_set_shared_data", 1, 8);
    let err = h
        .request(Request::get("/").header("x-probe-count-racy", "n"))
        .unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains("CasMismatch"), "{message}");
    assert_eq!(h.traps().len(), 1);
    assert!(h.assert_no_trap().is_err());
}

#[test]
fn a_runaway_callback_fails_the_test_instead_of_hanging_it() {
    let mut h = probe("{}").fuel_per_callback(5_000_000).build().unwrap();
    let err = h
        .request(Request::get("/").header("x-probe-spin", "1"))
        .unwrap_err();
    assert!(format!("{err:#}").contains("may be looping"), "{err:#}");
}

#[test]
fn memory_past_the_cap_fails_with_the_reason() {
    let mut h = probe("{}").memory_limit(32 << 20).build().unwrap();
    let out = h
        .request(Request::get("/").header("x-probe-grow", "4"))
        .unwrap();
    assert_eq!(
        out.upstream.unwrap().header("x-probe-grew"),
        Some("4194304")
    );
    let err = h
        .request(Request::get("/").header("x-probe-grow", "64"))
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("over the harness's limit"),
        "{err:#}"
    );
}

#[test]
fn by_default_a_trap_fails_with_the_panic_message() {
    let mut h = probe("{}").build().unwrap();
    let err = h
        .request(Request::get("/").header("x-probe-panic", "boom"))
        .unwrap_err();
    assert!(format!("{err:#}").contains("probe panic: boom"), "{err:#}");
}

#[test]
fn fail_closed_answers_503_now_and_after() {
    let mut h = probe("{}")
        .failure_policy(FailurePolicy::FailClosed)
        .build()
        .unwrap();
    let out = h
        .request(Request::get("/").header("x-probe-panic", "boom"))
        .unwrap();
    assert_eq!((out.status, out.upstream.is_none()), (503, true));
    let out = h.request(Request::get("/")).unwrap();
    assert_eq!(out.status, 503);
    assert!(h.traps()[0].1.contains("probe panic: boom"));
}

#[test]
fn fail_open_passes_requests_around_the_failed_filter() {
    let mut h = probe("{}")
        .failure_policy(FailurePolicy::FailOpen)
        .build()
        .unwrap();
    let out = h
        .request(Request::get("/").header("x-probe-panic", "boom"))
        .unwrap();
    assert_eq!(out.status, 200);
    let out = h.request(Request::get("/after")).unwrap();
    let up = out.upstream.unwrap();
    assert_eq!(up.header(":path"), Some("/after"));
    assert_eq!(
        up.header("x-probe-names"),
        None,
        "the filter no longer runs"
    );
}

#[test]
fn fail_reload_gives_the_next_request_a_fresh_vm() {
    let mut h = probe("{}")
        .failure_policy(FailurePolicy::FailReload)
        .build()
        .unwrap();
    let out = h
        .request(Request::get("/").header("x-probe-panic", "boom"))
        .unwrap();
    assert_eq!(out.status, 503);
    let out = h.request(Request::get("/")).unwrap();
    assert_eq!(out.status, 200);
    assert!(
        out.upstream.unwrap().header("x-probe-names").is_some(),
        "a fresh VM filtered it"
    );
    let configures = messages(&h)
        .iter()
        .filter(|m| m.starts_with("configure:"))
        .count();
    assert_eq!(configures, 2, "the reload started the VM again");
}

#[test]
fn closing_the_stream_resets_it_and_still_ends_the_context() {
    let mut h = probe("{}").build().unwrap();
    let out = h
        .request(Request::get("/").header("x-probe-close", "1"))
        .unwrap();
    assert!(out.reset && out.upstream.is_none(), "{out:?}");
    assert!(messages(&h).iter().any(|m| m.starts_with("on_log")));
    // The VM is fine afterwards.
    assert_eq!(h.request(Request::get("/")).unwrap().status, 200);
}
