//! The wasmtime host against the probe fixture (`tests/fixtures/probe`), a module that
//! drives one host call per request header. Build it first:
//!
//! ```sh
//! cargo build --release --target wasm32-wasip1 \
//!   --manifest-path test-harness/tests/fixtures/probe/Cargo.toml --target-dir target/probe
//! ```
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use gatehouse_harness::host::{BuildError, Harness, HarnessBuilder, LogLevel, Request};
use std::path::PathBuf;
use std::time::Duration;

fn probe_wasm() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join("target/probe/wasm32-wasip1/release/probe.wasm");
    assert!(
        path.exists(),
        "{} is missing; build the probe fixture first:\n  cargo build --release --target wasm32-wasip1 \
         --manifest-path test-harness/tests/fixtures/probe/Cargo.toml --target-dir target/probe",
        path.display()
    );
    path
}

fn probe() -> HarnessBuilder {
    Harness::builder(probe_wasm()).plugin_config("{}")
}

fn harness() -> Harness {
    probe()
        .build()
        .unwrap_or_else(|e| panic!("probe did not start: {e}"))
}

fn messages(h: &Harness) -> Vec<String> {
    h.logs().into_iter().map(|r| r.message).collect()
}

#[test]
fn start_up_runs_vm_start_then_configure_with_the_plugin_config() {
    let h = probe()
        .vm_config("vm-bytes")
        .plugin_config(r#"{"a":1}"#)
        .build()
        .unwrap();
    let logs = messages(&h);
    assert_eq!(logs[0], r#"vm start: "vm-bytes""#);
    assert_eq!(logs[1], r#"configure: 7 bytes: {"a":1}"#);
}

#[test]
fn configure_returning_false_is_a_configure_rejected_error_with_the_logs() {
    match probe().plugin_config("reject").build() {
        Err(BuildError::ConfigureRejected { logs }) => {
            assert!(
                logs.iter()
                    .any(|r| r.message.contains("configure: 6 bytes: reject"))
            );
        }
        other => panic!("expected ConfigureRejected, got {:?}", other.err()),
    }
}

#[test]
fn vm_start_returning_false_is_a_vm_start_rejected_error() {
    let err = probe().vm_config("reject").build().err().unwrap();
    assert!(matches!(err, BuildError::VmStartRejected { .. }), "{err}");
}

#[test]
fn panic_while_configuring_is_a_trap_carrying_the_panic_message() {
    let err = probe().plugin_config("panic").build().err().unwrap();
    match &err {
        BuildError::Trap { message, .. } => {
            assert!(message.contains("probe refuses to configure"), "{message}")
        }
        other => panic!("expected Trap, got {other}"),
    }
}

#[test]
fn missing_module_is_a_load_error_naming_the_path() {
    let err = Harness::builder("/nonexistent/x.wasm")
        .build()
        .err()
        .unwrap();
    assert!(matches!(err, BuildError::Load(_)));
    assert!(err.to_string().contains("/nonexistent/x.wasm"), "{err}");
}

#[test]
fn request_reaches_the_echo_upstream_with_envoy_header_order() {
    let mut h = harness();
    let out = h
        .request(Request::get("/things?x=1").header("X-Custom", "v"))
        .unwrap();
    assert_eq!(out.status, 200);
    assert!(!out.local_response);
    assert_eq!(out.header("content-type"), Some("application/json"));
    assert_eq!(out.header("x-echo-upstream"), Some("1"));
    let up = out.upstream.as_ref().expect("upstream reached");
    assert_eq!(
        up.header("x-probe-names"),
        Some(":authority,:path,:method,:scheme,x-custom,x-request-id")
    );
    let json = out.json();
    assert_eq!(json["method"], "GET");
    assert_eq!(json["path"], "/things?x=1");
    assert_eq!(json["headers"]["x-custom"], "v");
    assert_eq!(json["headers"]["host"], "localhost");
}

#[test]
fn request_id_is_generated_deterministically_when_absent_and_kept_when_sent() {
    let id = |seed| {
        let mut h = probe().seed(seed).build().unwrap();
        let out = h.request(Request::get("/")).unwrap();
        out.upstream
            .unwrap()
            .header("x-request-id")
            .unwrap()
            .to_string()
    };
    let a = id(7);
    assert_eq!(a, id(7));
    assert_ne!(a, id(8));
    assert_eq!(a.len(), 36);
    assert_eq!(&a[14..15], "4", "UUID version 4: {a}");

    let mut h = harness();
    let out = h
        .request(Request::get("/").header("x-request-id", "mine"))
        .unwrap();
    let up = out.upstream.unwrap();
    assert_eq!(up.header("x-request-id"), Some("mine"));
}

#[test]
fn invalid_utf8_header_value_reaches_the_module() {
    let mut h = harness();
    let out = h
        .request(Request::get("/").header("x-probe-bytes", [0xff, 0xfe, b'a']))
        .unwrap();
    let up = out.upstream.unwrap();
    assert_eq!(up.header("x-probe-bytes-hex"), Some("fffe61"));
    assert_eq!(
        up.header_bytes("x-probe-bytes"),
        Some(&[0xff, 0xfe, b'a'][..])
    );
}

#[test]
fn local_response_ends_the_stream_before_upstream() {
    let mut h = harness();
    let out = h
        .request(
            Request::post("/")
                .header("x-probe-deny", "429")
                .body("payload"),
        )
        .unwrap();
    assert_eq!(out.status, 429);
    assert!(out.local_response);
    assert!(out.upstream.is_none());
    assert_eq!(out.body, b"denied by probe");
    assert_eq!(out.header("x-probe"), Some("denied"));
    assert_eq!(out.header("content-length"), Some("15"));
    // The module's own log line after send_local_response ran: the reply is deferred.
    let logs = messages(&h);
    assert!(logs.iter().any(|m| m == "after send_local_response"));
    // No body callback once the request was answered.
    assert!(
        !logs.iter().any(|m| m.starts_with("request body")),
        "{logs:?}"
    );
    // The local reply passes through the filter's own response callbacks, then on_log.
    assert_eq!(out.header("x-probe-response"), Some("429"));
    assert!(logs.iter().any(|m| m == "on_log status=429"));
}

#[test]
fn local_response_from_the_body_callback_answers_without_upstream() {
    let mut h = harness();
    let out = h.request(Request::post("/").body("deny")).unwrap();
    assert_eq!(out.status, 413);
    assert!(out.upstream.is_none());
    assert_eq!(out.header("content-type"), Some("text/plain"));
}

#[test]
fn request_body_is_readable_and_replaceable_in_the_body_callback() {
    let mut h = harness();
    let out = h
        .request(
            Request::post("/")
                .header("x-probe-upper-body", "1")
                .body("hello"),
        )
        .unwrap();
    assert_eq!(out.upstream.as_ref().unwrap().body, b"HELLO");
    assert_eq!(out.json()["body"], "HELLO");
    assert!(messages(&h).contains(&"request body: 5 bytes, end_of_stream=true".to_string()));
}

#[test]
fn headers_end_of_stream_is_true_only_without_a_body() {
    let mut h = harness();
    h.request(Request::get("/")).unwrap();
    h.request(Request::post("/").body("x")).unwrap();
    let logs: Vec<String> = messages(&h)
        .into_iter()
        .filter(|m| m.starts_with("request headers"))
        .collect();
    assert!(logs[0].contains("end_of_stream=true"), "{logs:?}");
    assert!(logs[1].contains("end_of_stream=false"), "{logs:?}");
}

#[test]
fn stream_contexts_get_fresh_ids_after_the_root() {
    let mut h = harness();
    h.request(Request::get("/")).unwrap();
    h.request(Request::get("/")).unwrap();
    let logs = messages(&h);
    assert!(logs.iter().any(|m| m.ends_with("context=2")));
    assert!(logs.iter().any(|m| m.ends_with("context=3")));
}

#[test]
fn header_removal_and_replacement_reach_the_upstream() {
    let mut h = harness();
    let out = h
        .request(
            Request::get("/")
                .header("x-probe-remove", "x-secret")
                .header("x-secret", "s")
                .header("x-replaced", "a")
                .header("x-replaced", "b")
                .header("x-probe-replace", "new"),
        )
        .unwrap();
    let up = out.upstream.unwrap();
    assert_eq!(up.header("x-secret"), None);
    let replaced: Vec<_> = up
        .headers
        .iter()
        .filter(|(n, _)| n == "x-replaced")
        .collect();
    assert_eq!(replaced.len(), 1);
    assert_eq!(replaced[0].1, b"new");
}

#[test]
fn response_headers_added_by_the_module_reach_the_client() {
    let mut h = harness();
    let out = h.request(Request::get("/")).unwrap();
    assert_eq!(out.header("x-probe-response"), Some("200"));
    assert!(messages(&h).contains(&"on_log status=200".to_string()));
}

#[test]
fn shared_data_set_by_the_test_is_read_by_the_module_with_its_cas() {
    let mut h = harness();
    h.set_shared_data("k", b"v1");
    let (_, cas) = h.shared_data("k").unwrap();
    let out = h
        .request(Request::get("/").header("x-probe-get", "k"))
        .unwrap();
    let up = out.upstream.unwrap();
    assert_eq!(up.header("x-probe-get-value"), Some("v1"));
    assert_eq!(up.header("x-probe-get-cas"), Some(cas.to_string().as_str()));
    let out = h
        .request(Request::get("/").header("x-probe-get", "absent"))
        .unwrap();
    assert_eq!(
        out.upstream.unwrap().header("x-probe-get-value"),
        Some("<absent>")
    );
}

#[test]
fn set_with_current_cas_succeeds_and_assigns_a_new_cas() {
    let mut h = harness();
    h.set_shared_data("k", b"v1");
    let (_, cas) = h.shared_data("k").unwrap();
    let out = h
        .request(Request::get("/").header("x-probe-set", format!("k|v2|{cas}")))
        .unwrap();
    assert_eq!(
        out.upstream.unwrap().header("x-probe-set-result"),
        Some("ok")
    );
    let (value, new_cas) = h.shared_data("k").unwrap();
    assert_eq!(value, b"v2");
    assert_ne!(new_cas, cas);
    assert_ne!(new_cas, 0);
}

#[test]
fn set_with_stale_cas_is_refused() {
    let mut h = harness();
    h.set_shared_data("k", b"v1");
    let (_, stale) = h.shared_data("k").unwrap();
    h.set_shared_data("k", b"v2");
    let out = h
        .request(Request::get("/").header("x-probe-set", format!("k|v3|{stale}")))
        .unwrap();
    assert_eq!(
        out.upstream.unwrap().header("x-probe-set-result"),
        Some("cas-mismatch")
    );
    assert_eq!(h.shared_data("k").unwrap().0, b"v2");
}

#[test]
fn set_of_an_absent_key_succeeds_whatever_the_cas() {
    let mut h = harness();
    let out = h
        .request(Request::get("/").header("x-probe-set", "fresh|v|12345"))
        .unwrap();
    assert_eq!(
        out.upstream.unwrap().header("x-probe-set-result"),
        Some("ok")
    );
    assert_eq!(h.shared_data("fresh").unwrap().0, b"v");
}

#[test]
fn shared_data_is_per_harness() {
    let mut a = harness();
    let b = harness();
    a.set_shared_data("k", b"v");
    assert!(b.shared_data("k").is_none());
}

#[test]
fn panic_in_a_callback_is_an_error_with_the_panic_message_and_fails_the_vm() {
    let mut h = harness();
    let err = h
        .request(Request::get("/").header("x-probe-panic", "boom"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("probe panic: boom"), "{err}");
    assert!(err.contains("proxy_on_request_headers"), "{err}");
    let again = h.request(Request::get("/")).unwrap_err().to_string();
    assert!(again.contains("VM failed earlier"), "{again}");
}

#[test]
fn unknown_import_traps_with_its_name_only_when_called() {
    let mut h = harness();
    h.request(Request::get("/")).unwrap();
    let err = h
        .request(Request::get("/").header("x-probe-unknown", "1"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unimplemented host call env.probe_nonexistent_host_call"),
        "{err}"
    );
}

#[test]
fn paused_request_without_answer_is_an_error_naming_the_callback() {
    let mut h = harness();
    let err = h
        .request(Request::get("/").header("x-probe-pause", "1"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("proxy_on_request_headers"), "{err}");
}

#[test]
fn environment_variables_reach_the_module_through_wasi() {
    let mut h = probe().env("PROBE_SECRET", "s3cret").build().unwrap();
    let out = h
        .request(Request::get("/").header("x-probe-env", "PROBE_SECRET"))
        .unwrap();
    assert_eq!(
        out.upstream.unwrap().header("x-probe-env-value"),
        Some("s3cret")
    );
    let out = h
        .request(Request::get("/").header("x-probe-env", "NOPE"))
        .unwrap();
    assert_eq!(
        out.upstream.unwrap().header("x-probe-env-value"),
        Some("<unset>")
    );
}

#[test]
fn host_clock_and_wasi_clock_share_the_virtual_time() {
    let t0 = 1_700_000_000_000_000_000;
    let mut h = probe().time(t0).build().unwrap();
    let out = h
        .request(Request::get("/").header("x-probe-time", "1"))
        .unwrap();
    let up = out.upstream.unwrap();
    assert_eq!(
        up.header("x-probe-time-host"),
        Some(t0.to_string().as_str())
    );
    assert_eq!(
        up.header("x-probe-time-wasi"),
        Some(t0.to_string().as_str())
    );

    h.advance(Duration::from_secs(2)).unwrap();
    assert_eq!(h.now_nanos(), t0 + 2_000_000_000);
    let out = h
        .request(Request::get("/").header("x-probe-time", "1"))
        .unwrap();
    let expected = (t0 + 2_000_000_000).to_string();
    assert_eq!(
        out.upstream.unwrap().header("x-probe-time-host"),
        Some(expected.as_str())
    );

    h.set_time(5);
    assert_eq!(h.now_nanos(), 5);
}

#[test]
fn properties_answer_source_address_request_fields_and_plugin_names() {
    let mut h = harness();
    let ask = |h: &mut Harness, path: &str| {
        let out = h
            .request(
                Request::post("/p")
                    .source("10.0.0.9:1234")
                    .header("x-request-id", "rid")
                    .header("x-probe-property", path),
            )
            .unwrap();
        out.upstream
            .unwrap()
            .header("x-probe-property-value")
            .unwrap()
            .to_string()
    };
    assert_eq!(ask(&mut h, "source.address"), "10.0.0.9:1234");
    assert_eq!(ask(&mut h, "request.path"), "/p");
    assert_eq!(ask(&mut h, "request.method"), "POST");
    assert_eq!(ask(&mut h, "request.id"), "rid");
    assert_eq!(ask(&mut h, "plugin_name"), "gatehouse");
    assert_eq!(ask(&mut h, "plugin_vm_id"), "gatehouse");
    assert_eq!(ask(&mut h, "no.such.thing"), "<absent>");
}

#[test]
fn counters_are_readable_by_name_across_redefinitions() {
    let mut h = harness();
    assert_eq!(h.metric("probe_requests"), None);
    h.request(Request::get("/")).unwrap();
    h.request(Request::get("/")).unwrap();
    assert_eq!(h.metric("probe_requests"), Some(2));
}

#[test]
fn tick_calls_on_tick_and_the_period_is_recorded() {
    let mut h = probe().plugin_config("tick").build().unwrap();
    assert_eq!(h.tick_period(), Some(Duration::from_millis(500)));
    h.tick().unwrap();
    h.tick().unwrap();
    assert_eq!(h.metric("probe_ticks"), Some(2));
}

#[test]
fn stdout_and_stderr_become_info_and_error_log_lines() {
    let mut h = harness();
    h.request(Request::get("/").header("x-probe-stdio", "1"))
        .unwrap();
    let logs = h.logs();
    assert!(
        logs.iter()
            .any(|r| r.level == LogLevel::Info && r.message == "hello on stdout")
    );
    assert!(
        logs.iter()
            .any(|r| r.level == LogLevel::Error && r.message == "hello on stderr")
    );
}

#[test]
fn log_level_filters_what_is_recorded() {
    let mut h = harness();
    h.request(Request::get("/")).unwrap();
    assert!(!messages(&h).contains(&"a debug line".to_string()));

    let mut h = probe().log_level(LogLevel::Debug).build().unwrap();
    h.request(Request::get("/")).unwrap();
    assert!(messages(&h).contains(&"a debug line".to_string()));
}

#[test]
fn harnesses_run_in_parallel_threads() {
    let handles: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                let mut h = harness();
                h.set_shared_data("k", format!("{i}").as_bytes());
                for _ in 0..5 {
                    h.request(Request::get("/")).unwrap();
                }
                (h.metric("probe_requests"), h.shared_data("k").unwrap().0)
            })
        })
        .collect();
    for (i, handle) in handles.into_iter().enumerate() {
        let (count, value) = handle.join().unwrap();
        assert_eq!(count, Some(5));
        assert_eq!(value, format!("{i}").into_bytes());
    }
}
