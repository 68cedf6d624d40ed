//! Bad input, bad tokens, unknown routes: every refusal in the standard shape. And the
//! OpenAPI document against the real router.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests: a failure panics"
)]

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::{ADMIN, error_code, send, svc};
use serde_json::{Value, json};

fn raw(
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<Body>,
) -> Request<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {ADMIN}"));
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    b.body(body.into()).unwrap()
}

#[tokio::test]
async fn malformed_bodies_are_4xx_in_the_standard_shape() {
    let s = svc().await;
    let valid = json!({"user_id": "u", "tenant_id": "t", "plan": "free", "device_name": "d"});
    let mut unknown = valid.clone();
    unknown["is_admin"] = json!(true);
    let mut wrong_type = valid.clone();
    wrong_type["expires_in_days"] = json!("ghk_secretlookingvalue000000000");
    let mut bad_id = valid.clone();
    bad_id["user_id"] = json!("user with spaces");
    let mut zero_days = valid.clone();
    zero_days["expires_in_days"] = json!(0);
    let mut bad_scope = valid.clone();
    bad_scope["scopes"] = json!(["ok", "not ok"]);
    let mut control_chars = valid.clone();
    control_chars["device_name"] = json!("a\nb");
    let mut missing = valid.clone();
    missing.as_object_mut().unwrap().remove("plan");
    let cases: Vec<(&str, String, StatusCode)> = vec![
        (
            "unknown field",
            unknown.to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "wrong type",
            wrong_type.to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "missing field",
            missing.to_string(),
            StatusCode::BAD_REQUEST,
        ),
        ("bad id", bad_id.to_string(), StatusCode::BAD_REQUEST),
        ("zero days", zero_days.to_string(), StatusCode::BAD_REQUEST),
        ("bad scope", bad_scope.to_string(), StatusCode::BAD_REQUEST),
        (
            "control chars",
            control_chars.to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "not JSON",
            "{\"user_id\": ".to_string(),
            StatusCode::BAD_REQUEST,
        ),
        ("array", "[]".to_string(), StatusCode::BAD_REQUEST),
        ("empty", String::new(), StatusCode::BAD_REQUEST),
    ];
    for (what, body, want) in cases {
        let (status, resp) = send(
            &s.app,
            raw(Method::POST, "/v1/keys", Some("application/json"), body),
        )
        .await;
        assert_eq!(status, want, "{what}: {resp}");
        assert_eq!(error_code(&resp), "BAD_REQUEST", "{what}");
        // serde would quote the value; a value may be a secret.
        assert!(
            !resp.to_string().contains("secretlooking"),
            "{what}: {resp}"
        );
    }
    let (status, resp) = send(
        &s.app,
        raw(Method::POST, "/v1/keys", None, valid.to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(error_code(&resp), "UNSUPPORTED_MEDIA_TYPE");
    let (status, resp) = send(
        &s.app,
        raw(
            Method::POST,
            "/v1/keys",
            Some("text/plain"),
            valid.to_string(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    error_code(&resp);
}

#[tokio::test]
async fn oversized_bodies_are_413_in_the_standard_shape() {
    let s = svc().await;
    let huge = json!({"api_key": "x".repeat(100 * 1024)}).to_string();
    for path in ["/v1/keys/verify", "/v1/keys/key_x/rotate", "/v1/keys"] {
        let (status, resp) = send(
            &s.app,
            raw(Method::POST, path, Some("application/json"), huge.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{path}: {resp}");
        assert_eq!(error_code(&resp), "PAYLOAD_TOO_LARGE");
    }
}

#[tokio::test]
async fn bad_query_strings_and_path_values_are_400() {
    let s = svc().await;
    for path in [
        "/v1/keys?limit=0",
        "/v1/keys?limit=1001",
        "/v1/keys?user=",
        "/v1/keys?user=a%20b",
        "/v1/keys?user=u&extra=1",
        "/v1/audit?limit=0",
        "/v1/audit?limit=1001",
        "/v1/audit?limit=abc",
        "/v1/audit?kind=changes",
        "/v1/audit?kind=",
    ] {
        let (status, resp) = s.admin(Method::GET, path, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {resp}");
        assert_eq!(error_code(&resp), "BAD_REQUEST");
    }
    for query in ["since=-1", "since=abc", "wait=-5", "since=1&bogus=2"] {
        let (status, resp) = s.feed(query).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {resp}");
        error_code(&resp);
    }
    let (status, resp) = s
        .admin(
            Method::POST,
            "/v1/keys/key_x/rotate",
            Some(json!({"grace_seconds": -1})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
    let (status, _) = s
        .admin(
            Method::POST,
            "/v1/keys/key_x/rotate",
            Some(json!({"grace_seconds": 99_999_999})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    for body in [
        json!({"jti": "", "expires_at": 1}),
        json!({"jti": "a"}),
        json!({"jti": "a", "expires_at": -1}),
    ] {
        let (status, resp) = s.admin(Method::POST, "/v1/tokens/revoke", Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
        error_code(&resp);
    }
}

#[tokio::test]
async fn missing_or_wrong_tokens_are_401_with_www_authenticate() {
    let s = svc().await;
    for auth in [
        None,
        Some("Bearer nope"),
        Some("Basic YWRtaW4="),
        Some("Bearer"),
    ] {
        let mut b = Request::builder().uri("/v1/keys?user=u");
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        let res = tower::ServiceExt::oneshot(s.app.clone(), b.body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
        let body = http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap()
            .to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(error_code(&v), "UNAUTHORIZED");
    }
    // The scheme is case-insensitive.
    let req = Request::builder()
        .uri("/v1/keys?user=u")
        .header("authorization", format!("bearer {ADMIN}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&s.app, req).await.0, StatusCode::OK);
}

#[tokio::test]
async fn unknown_routes_and_methods_use_the_standard_shape() {
    let s = svc().await;
    let (status, resp) = s.admin(Method::GET, "/v2/nothing", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&resp), "NOT_FOUND");
    let (status, resp) = s.admin(Method::PUT, "/v1/keys", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_code(&resp), "METHOD_NOT_ALLOWED");
    let (status, resp) = s.admin(Method::GET, "/v1/keys/key_nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&resp), "NOT_FOUND");
}

#[tokio::test]
async fn request_id_is_echoed_or_made() {
    let s = svc().await;
    let res = tower::ServiceExt::oneshot(
        s.app.clone(),
        Request::builder()
            .uri("/v1/keys/x")
            .body(Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    let made = res.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(made.len(), 32);
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["request_id"], made.as_str());
    let (_, v) = s.admin(Method::GET, "/v1/keys/x", None).await;
    assert_eq!(v["request_id"], "test-req-1");
    assert_eq!(v["timestamp"], "2026-01-01T00:00:00.000Z");
}

#[tokio::test]
async fn health_and_readiness() {
    let s = svc().await;
    let req = |p: &str| Request::builder().uri(p).body(Body::empty()).unwrap();
    assert_eq!(
        send(&s.app, req("/healthz")).await,
        (StatusCode::OK, json!({"status": "ok"}))
    );
    assert_eq!(
        send(&s.app, req("/readyz")).await,
        (StatusCode::OK, json!({"status": "ready"}))
    );
}

// --- The OpenAPI document matches the router and the bodies it answers. ---

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.trim_start_matches("#/components/schemas/");
            &doc["components"]["schemas"][name]
        }
        None => schema,
    }
}

/// A small structural check: types, required fields, no undeclared fields, enums.
fn conforms(doc: &Value, schema: &Value, v: &Value, at: &str) {
    let schema = resolve(doc, schema);
    if v.is_null() {
        assert!(schema["nullable"] == true, "{at}: null not allowed");
        return;
    }
    // `allOf` of one schema: a `$ref` made nullable or given its own description.
    if let Some([inner]) = schema
        .get("allOf")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
    {
        return conforms(doc, inner, v, at);
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        assert!(values.contains(v), "{at}: {v} not in {values:?}");
    }
    match schema["type"].as_str() {
        Some("object") => {
            let obj = v
                .as_object()
                .unwrap_or_else(|| panic!("{at}: not an object: {v}"));
            let props = schema["properties"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            for r in schema["required"].as_array().into_iter().flatten() {
                assert!(obj.contains_key(r.as_str().unwrap()), "{at}: {r} missing");
            }
            for (k, val) in obj {
                match props.get(k) {
                    Some(p) => conforms(doc, p, val, &format!("{at}.{k}")),
                    None => assert!(
                        schema["additionalProperties"] != false,
                        "{at}: undeclared {k}"
                    ),
                }
            }
        }
        Some("array") => {
            for (i, item) in v.as_array().unwrap().iter().enumerate() {
                conforms(doc, &schema["items"], item, &format!("{at}[{i}]"));
            }
        }
        Some("string") => assert!(v.is_string(), "{at}: not a string: {v}"),
        Some("integer") => assert!(v.is_i64(), "{at}: not an integer: {v}"),
        Some("boolean") => assert!(v.is_boolean(), "{at}: not a boolean: {v}"),
        _ => {}
    }
}

fn response_schema<'a>(doc: &'a Value, path: &str, method: &str, status: u16) -> &'a Value {
    let r = &doc["paths"][path][method]["responses"][status.to_string()];
    assert!(!r.is_null(), "{method} {path} {status} not documented");
    let r = match r.get("$ref").and_then(Value::as_str) {
        Some(name) => {
            &doc["components"]["responses"][name.trim_start_matches("#/components/responses/")]
        }
        None => r,
    };
    &r["content"]["application/json"]["schema"]
}

#[tokio::test]
async fn openapi_lists_exactly_the_routes_and_describes_their_answers() {
    let s = svc().await;
    let (status, doc) = send(
        &s.app,
        Request::builder()
            .uri("/openapi.json")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));

    // Every documented operation is routed (no 404/405), and the documented set is the
    // routed set.
    let mut documented = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.push(format!("{} {path}", method.to_uppercase()));
            let concrete = path.replace("{id}", "x");
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let res = tower::ServiceExt::oneshot(
                s.app.clone(),
                Request::builder()
                    .method(m)
                    .uri(concrete)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
            assert!(
                ![StatusCode::NOT_FOUND, StatusCode::METHOD_NOT_ALLOWED].contains(&res.status())
                    || path.contains("{id}"),
                "{method} {path} documented but not routed"
            );
        }
    }
    documented.sort();
    let routed = [
        "DELETE /v1/allowlist/{id}",
        "DELETE /v1/authz/{rest}",
        "DELETE /v1/keys/{id}",
        "DELETE /v1/keys/{id}/limits",
        "DELETE /v1/tenants/{id}/limits",
        "GET /",
        "GET /healthz",
        "GET /openapi.json",
        "GET /readyz",
        "GET /v1/allowlist",
        "GET /v1/audit",
        "GET /v1/authz/{rest}",
        "GET /v1/cache",
        "GET /v1/keys",
        "GET /v1/keys/{id}",
        "GET /v1/keys/{id}/limits",
        "GET /v1/limits",
        "GET /v1/stats",
        "GET /v1/stats/refusals",
        "GET /v1/stats/series",
        "GET /v1/tenants/{id}/limits",
        "OPTIONS /v1/authz/{rest}",
        "PATCH /v1/authz/{rest}",
        "POST /v1/allowlist",
        "POST /v1/authz/{rest}",
        "POST /v1/events",
        "POST /v1/keys",
        "POST /v1/keys/import",
        "POST /v1/keys/verify",
        "POST /v1/keys/{id}/rotate",
        "POST /v1/limits/exchange",
        "POST /v1/tokens/revoke",
        "POST /v1/users/{id}/revoke-tokens",
        "PUT /v1/authz/{rest}",
        "PUT /v1/keys/{id}/limits",
        "PUT /v1/limits/{name}/mode",
        "PUT /v1/tenants/{id}/limits",
    ];
    assert_eq!(documented, routed);

    // Real answers conform to their documented schemas.
    let check = |path: &str, method: &str, status: StatusCode, body: &Value| {
        conforms(
            &doc,
            response_schema(&doc, path, method, status.as_u16()),
            body,
            path,
        );
    };
    let k = s.issue("user_1").await;
    check("/v1/keys", "post", StatusCode::CREATED, &k);
    // Idempotent issuance: the header is documented as the service checks it, and the
    // first answer, the replay (with its header), a reuse and a bad value conform.
    let params = doc["paths"]["/v1/keys"]["post"]["parameters"]
        .as_array()
        .unwrap();
    let header = params
        .iter()
        .find(|p| p["name"] == "Idempotency-Key")
        .unwrap();
    assert_eq!(
        (&header["in"], &header["required"]),
        (&json!("header"), &json!(false))
    );
    assert_eq!(
        (
            &header["schema"]["minLength"],
            &header["schema"]["maxLength"]
        ),
        (&json!(1), &json!(255))
    );
    assert_eq!(header["schema"]["pattern"], "^[!-~]{1,255}$");
    let replayed_header =
        &doc["paths"]["/v1/keys"]["post"]["responses"]["200"]["headers"]["Idempotent-Replayed"];
    assert_eq!(replayed_header["schema"]["enum"], json!(["true"]));
    let create = |idempotency_key: &str, device: &str| {
        let mut req = common::request(
            Method::POST,
            "/v1/keys",
            Some(ADMIN),
            Some(
                &json!({"user_id": "user_i", "tenant_id": "t", "plan": "free",
                "device_name": device}),
            ),
        );
        req.headers_mut()
            .insert("idempotency-key", idempotency_key.parse().unwrap());
        req
    };
    let res = tower::ServiceExt::oneshot(s.app.clone(), create("doc-1", "d"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let res = tower::ServiceExt::oneshot(s.app.clone(), create("doc-1", "d"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["idempotent-replayed"], "true");
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    let replay: Value = serde_json::from_slice(&body).unwrap();
    check("/v1/keys", "post", StatusCode::OK, &replay);
    assert!(replay["api_key"].is_null());
    let (st, b) = send(&s.app, create("doc-1", "other")).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_code(&b), "IDEMPOTENCY_KEY_REUSED");
    check("/v1/keys", "post", st, &b);
    let (st, b) = send(&s.app, create("doc 2", "d")).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    check("/v1/keys", "post", st, &b);
    // Fleet-wide limits without Redis: 503 FLEET_UNAVAILABLE, documented (the 200 is
    // checked against Redis in tests/fleet.rs).
    let (st, b) = send(
        &s.app,
        common::request(
            Method::POST,
            "/v1/limits/exchange",
            Some(common::FEED),
            Some(&json!({"proxy": "envoy-a"})),
        ),
    )
    .await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    check("/v1/limits/exchange", "post", st, &b);
    let id = k["id"].as_str().unwrap();
    let (st, b) = s.admin(Method::GET, "/v1/keys?user=user_1", None).await;
    check("/v1/keys", "get", st, &b);
    let (st, b) = s.admin(Method::GET, &format!("/v1/keys/{id}"), None).await;
    check("/v1/keys/{id}", "get", st, &b);
    let (st, b) = s
        .admin(
            Method::POST,
            "/v1/keys/verify",
            Some(json!({"api_key": k["api_key"]})),
        )
        .await;
    check("/v1/keys/verify", "post", st, &b);
    let (st, b) = s
        .admin(
            Method::POST,
            "/v1/keys/verify",
            Some(json!({"api_key": "x"})),
        )
        .await;
    check("/v1/keys/verify", "post", st, &b);
    // An import with a line of each kind: imported, skipped, refused.
    let hash = |k: &Value| {
        gatehouse_core::authn::api_key::KeyHash::of_key(k["api_key"].as_str().unwrap().as_bytes())
            .to_hex()
    };
    let line = |sha256: String| {
        json!({"sha256": sha256, "user_id": "user_9", "tenant_id": "t", "plan": "free"}).to_string()
    };
    let ndjson = format!("{}\n{}\nnot json\n", line(hash(&k)), line("ab".repeat(32)));
    let (st, b) = send(
        &s.app,
        raw(
            Method::POST,
            "/v1/keys/import",
            Some("application/x-ndjson"),
            ndjson,
        ),
    )
    .await;
    assert_eq!(
        (&b["imported"], &b["skipped"], &b["failed"]),
        (&json!(1), &json!(1), &json!(1)),
        "{b}"
    );
    check("/v1/keys/import", "post", st, &b);
    let (st, b) = s
        .admin(
            Method::POST,
            &format!("/v1/keys/{id}/rotate"),
            Some(json!({"grace_seconds": 60})),
        )
        .await;
    check("/v1/keys/{id}/rotate", "post", st, &b);
    let new_id = b["id"].as_str().unwrap().to_string();
    let (st, b) = s
        .admin(Method::DELETE, &format!("/v1/keys/{new_id}"), None)
        .await;
    check("/v1/keys/{id}", "delete", st, &b);
    let (st, b) = s
        .admin(Method::POST, "/v1/users/user_1/revoke-tokens", None)
        .await;
    check("/v1/users/{id}/revoke-tokens", "post", st, &b);
    let (st, b) = s
        .admin(
            Method::POST,
            "/v1/tokens/revoke",
            Some(json!({"jti": "j", "expires_at": 5})),
        )
        .await;
    check("/v1/tokens/revoke", "post", st, &b);
    let (st, b) = s.admin(Method::GET, "/v1/audit", None).await;
    check("/v1/audit", "get", st, &b);
    let (st, b) = s.feed("since=0").await;
    check("/v1/cache", "get", st, &b);
    let (st, b) = s.feed("since=1").await;
    check("/v1/cache", "get", st, &b);
    // What the proxies report, and what it shows.
    let (st, b) = send(
        &s.app,
        common::request(
            Method::POST,
            "/v1/events",
            Some(common::FEED),
            Some(&json!({
                "proxy": "envoy-1", "cache_version": 3, "dropped": 0,
                "refusals": [
                    {"at": 1, "request_id": "r1", "method": "GET", "route": "/v1/x",
                     "code": "RATE_LIMITED", "status": 429, "key_id": id, "plan": "team",
                     "client": "2001:db8::7"},
                    {"at": 2, "request_id": "", "method": "", "route": "",
                     "code": "NO_ROUTE", "status": 404},
                    {"at": common::T0, "request_id": "r3", "method": "GET", "route": "/v1/x",
                     "code": "RATE_LIMITED", "status": 429, "client": "203.0.113.7",
                     "shadow": true}
                ],
                "key_uses": [{"key_id": id, "at": 5}],
                "requests": [{"plan": "team", "allowed": 2, "refused": 1, "shadow_refused": 1},
                             {"plan": "", "allowed": 0, "refused": 1}]
            })),
        ),
    )
    .await;
    check("/v1/events", "post", st, &b);
    for path in [
        "/v1/audit",
        "/v1/audit?kind=refusal",
        "/v1/audit?kind=change",
    ] {
        let (st, b) = s.admin(Method::GET, path, None).await;
        check("/v1/audit", "get", st, &b);
    }
    let (st, b) = s.admin(Method::GET, "/v1/stats", None).await;
    check("/v1/stats", "get", st, &b);
    for path in ["/v1/stats/refusals", "/v1/stats/series"] {
        for query in ["", "?window=hour", "?window=day", "?window=week"] {
            let (st, b) = s.admin(Method::GET, &format!("{path}{query}"), None).await;
            check(path, "get", st, &b);
        }
    }
    let (st, b) = s.admin(Method::GET, "/v1/keys", None).await;
    check("/v1/keys", "get", st, &b);
    // The levers (control/src/levers.rs): each answer, a key that shows its limits, the
    // feed that carries them, their audit events, and their errors.
    let key_id = k["id"].as_str().unwrap();
    let key_limits = format!("/v1/keys/{key_id}/limits");
    let set = json!({"requests_per_minute": 20000, "expires_at": "2026-02-01T00:00:00Z",
                     "reason": "enterprise"});
    let (st, b) = s.admin(Method::PUT, &key_limits, Some(set.clone())).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    check("/v1/keys/{id}/limits", "put", st, &b);
    let (st, b) = s.admin(Method::GET, &key_limits, None).await;
    check("/v1/keys/{id}/limits", "get", st, &b);
    let (st, b) = s
        .admin(Method::PUT, "/v1/keys/key_nope/limits", Some(set.clone()))
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    check("/v1/keys/{id}/limits", "put", st, &b);
    let (st, b) = s
        .admin(Method::PUT, "/v1/tenants/t/limits", Some(set.clone()))
        .await;
    check("/v1/tenants/{id}/limits", "put", st, &b);
    let (st, b) = s.admin(Method::GET, "/v1/tenants/t/limits", None).await;
    check("/v1/tenants/{id}/limits", "get", st, &b);
    let (st, b) = s
        .admin(
            Method::PUT,
            "/v1/tenants/t/limits",
            Some(json!({"reason": "x"})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    check("/v1/tenants/{id}/limits", "put", st, &b);
    let (st, b) = s
        .admin(
            Method::PUT,
            "/v1/limits/team/mode",
            Some(json!({"mode": "shadow", "reason": "rollout"})),
        )
        .await;
    check("/v1/limits/{name}/mode", "put", st, &b);
    let (st, b) = s.admin(Method::GET, "/v1/limits", None).await;
    check("/v1/limits", "get", st, &b);
    for entry in [
        json!({"cidr": "2001:db8::/32", "reason": "office"}),
        json!({"key_id": key_id, "limit": "team", "reason": "batch"}),
    ] {
        let (st, b) = s.admin(Method::POST, "/v1/allowlist", Some(entry)).await;
        assert_eq!(st, StatusCode::CREATED, "{b}");
        check("/v1/allowlist", "post", st, &b);
    }
    let (st, b) = s
        .admin(
            Method::POST,
            "/v1/allowlist",
            Some(json!({"cidr": "2001:db8::/32", "reason": "again"})),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    check("/v1/allowlist", "post", st, &b);
    let (st, b) = s.admin(Method::GET, "/v1/allowlist", None).await;
    check("/v1/allowlist", "get", st, &b);
    let (st, b) = s.admin(Method::GET, "/v1/keys", None).await;
    let listed = b["keys"].as_array().unwrap();
    let with_limits = listed.iter().find(|x| x["id"] == k["id"]).unwrap();
    assert_eq!(with_limits["limits"]["requests_per_minute"], 20000, "{b}");
    check("/v1/keys", "get", st, &b);
    let (st, b) = s
        .admin(Method::GET, &format!("/v1/keys/{key_id}"), None)
        .await;
    check("/v1/keys/{id}", "get", st, &b);
    let (st, b) = s.feed("since=0").await;
    assert!(b["levers"].is_object(), "{b}");
    check("/v1/cache", "get", st, &b);
    let (st, b) = s.admin(Method::GET, "/v1/audit?kind=lever", None).await;
    assert!(!b["events"].as_array().unwrap().is_empty());
    check("/v1/audit", "get", st, &b);
    let (st, _) = s.admin(Method::DELETE, &key_limits, None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, b) = s.admin(Method::DELETE, &key_limits, None).await;
    check("/v1/keys/{id}/limits", "delete", st, &b);
    let (st, b) = s
        .admin(Method::DELETE, "/v1/allowlist/alw_nope", None)
        .await;
    check("/v1/allowlist/{id}", "delete", st, &b);
    // And an error.
    let (st, b) = s.admin(Method::GET, "/v1/keys/nope", None).await;
    check("/v1/keys/{id}", "get", st, &b);
    let (st, b) = s
        .admin(Method::POST, "/v1/keys", Some(json!({"user_id": "user_1"})))
        .await;
    check("/v1/keys", "post", st, &b);
}
