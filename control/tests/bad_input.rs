//! Bad input that got through, one test per finding, so that each stays fixed without
//! the fuzzer: what Schemathesis (control/schemathesis.sh) found where the handlers and
//! the OpenAPI document disagreed, and what probing the running service by hand found
//! next to it. Input the document calls valid is accepted; input it calls invalid is a
//! 4xx in the standard shape, and no error quotes what the client sent.
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

/// An admin request with this body, sent as is, with this content type if any.
fn raw(method: Method, path: &str, content_type: Option<&str>, body: &str) -> Request<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {ADMIN}"));
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    b.body(Body::from(body.to_string())).unwrap()
}

fn new_key(device_name: &str) -> Value {
    json!({"user_id": "user_1", "tenant_id": "tenant_1", "plan": "team", "device_name": device_name})
}

#[tokio::test]
async fn device_name_over_128_characters_is_400_even_when_trimming_would_shorten_it() {
    let s = svc().await;
    // 127 characters and two spaces: 129 as sent, the document's maxLength is 128.
    let name = format!(" {} ", "d".repeat(127));
    let (status, body) = s
        .admin(Method::POST, "/v1/keys", Some(new_key(&name)))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(error_code(&body), "BAD_REQUEST");
}

#[tokio::test]
async fn device_name_with_a_control_character_at_either_end_is_400() {
    let s = svc().await;
    // Trimming would remove these, and the document's pattern refuses them anywhere.
    for name in [
        "laptop\n",
        "\tlaptop",
        "laptop\u{85}",
        "a\u{7f}b",
        "\u{91}x",
    ] {
        let (status, body) = s.admin(Method::POST, "/v1/keys", Some(new_key(name))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name:?}: {body}");
        assert_eq!(error_code(&body), "BAD_REQUEST");
    }
}

#[tokio::test]
async fn device_name_of_only_white_space_is_400() {
    let s = svc().await;
    for name in [" ", "\u{3000}", "\u{a0}\u{2003}"] {
        let (status, body) = s.admin(Method::POST, "/v1/keys", Some(new_key(name))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name:?}: {body}");
        assert_eq!(error_code(&body), "BAD_REQUEST");
    }
}

#[tokio::test]
async fn device_name_of_128_characters_outside_the_basic_plane_is_accepted_and_trimmed() {
    let s = svc().await;
    // maxLength counts characters, not bytes or UTF-16 units.
    let name = format!(" {}", "\u{1d540}".repeat(127));
    let (status, body) = s
        .admin(Method::POST, "/v1/keys", Some(new_key(&name)))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["device_name"], name.trim());
}

#[tokio::test]
async fn null_optional_fields_mean_absent() {
    let s = svc().await;
    let mut body = new_key("laptop");
    body["expires_in_days"] = Value::Null;
    body["scopes"] = Value::Null;
    let (status, key) = s.admin(Method::POST, "/v1/keys", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    assert_eq!(key["expires_at"], Value::Null);
    assert_eq!(key["scopes"], json!([]));
    let id = key["id"].as_str().unwrap();
    let (status, rotated) = s
        .admin(
            Method::POST,
            &format!("/v1/keys/{id}/rotate"),
            Some(json!({"grace_seconds": null})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    assert_eq!(rotated["replaces"]["status"], "revoked");
}

#[tokio::test]
async fn empty_scopes_are_400_and_say_to_omit_them_for_every_route() {
    let s = svc().await;
    let mut body = new_key("laptop");
    body["scopes"] = json!([]);
    let (status, resp) = s.admin(Method::POST, "/v1/keys", Some(body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
    assert_eq!(error_code(&resp), "BAD_REQUEST");
    assert!(
        resp["error"].as_str().unwrap().contains("omit scopes"),
        "{resp}"
    );
    let (_, list) = s.admin(Method::GET, "/v1/keys?user=user_1", None).await;
    assert_eq!(list["keys"], json!([]), "nothing was issued");
    // Omitted, the key may call every route, and its rotation keeps that.
    let (status, key) = s
        .admin(Method::POST, "/v1/keys", Some(new_key("laptop")))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    assert_eq!(key["scopes"], json!([]));
    let id = key["id"].as_str().unwrap();
    let (status, rotated) = s
        .admin(Method::POST, &format!("/v1/keys/{id}/rotate"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    assert_eq!(rotated["scopes"], json!([]));
}

#[tokio::test]
async fn feed_wait_beyond_int64_is_400_in_the_standard_shape() {
    let s = svc().await;
    for query in [
        "wait=9223372036854775808",
        "wait=47194578904252216770560",
        "wait=-1",
        "wait=1.5",
    ] {
        let (status, body) = s.feed(query).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(error_code(&body), "BAD_REQUEST", "{query}");
    }
}

#[tokio::test]
async fn feed_wait_up_to_int64_max_is_accepted() {
    let s = svc().await;
    s.issue("user_1").await;
    // A change after `since`: answered at once, whatever the wait.
    let (status, body) = s.feed("since=0&wait=9223372036854775807").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["full"], true);
}

#[tokio::test]
async fn a_json_array_of_the_fields_is_not_a_body_and_is_400() {
    let s = svc().await;
    // serde's derived structs take their fields in order from an array: this one used to
    // issue a key.
    let cases = [
        (
            "/v1/keys",
            r#"["user_1","tenant_1","team","laptop",null,null]"#,
        ),
        ("/v1/keys/verify", r#"["ghk_x"]"#),
        ("/v1/tokens/revoke", r#"["jti", 5]"#),
        ("/v1/keys/key_x/rotate", "[60]"),
        ("/v1/users/user_1/revoke-tokens", "[]"),
        ("/v1/keys/verify", r#""ghk_x""#),
        ("/v1/keys/verify", "null"),
    ];
    for (path, body) in cases {
        let req = raw(Method::POST, path, Some("application/json"), body);
        let (status, resp) = send(&s.app, req).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}: {resp}");
        assert_eq!(error_code(&resp), "BAD_REQUEST");
        assert_eq!(
            resp["error"], "the body must be a JSON object",
            "{path} {body}"
        );
    }
    let (_, audit) = s.admin(Method::GET, "/v1/audit", None).await;
    assert_eq!(audit["events"], json!([]), "nothing was changed");
}

#[tokio::test]
async fn user_token_revocation_takes_no_body_or_an_empty_object() {
    let s = svc().await;
    let path = "/v1/users/user_1/revoke-tokens";
    for (content_type, body) in [(None, ""), (Some("application/json"), "{}")] {
        let (status, resp) = send(&s.app, raw(Method::POST, path, content_type, body)).await;
        assert_eq!(status, StatusCode::OK, "{body:?}: {resp}");
        assert_eq!(resp["user_id"], "user_1");
    }
    // A field is refused, not ignored: the caller would believe it applied.
    let cases = [
        (
            Some("application/json"),
            r#"{"until": 5}"#,
            StatusCode::BAD_REQUEST,
        ),
        (Some("application/json"), "{", StatusCode::BAD_REQUEST),
        (Some("text/plain"), "{}", StatusCode::UNSUPPORTED_MEDIA_TYPE),
        (None, "{}", StatusCode::UNSUPPORTED_MEDIA_TYPE),
    ];
    for (content_type, body, want) in cases {
        let (status, resp) = send(&s.app, raw(Method::POST, path, content_type, body)).await;
        assert_eq!(status, want, "{content_type:?} {body}: {resp}");
        error_code(&resp);
    }
    let huge = format!(r#"{{"pad": "{}"}}"#, "x".repeat(100 * 1024));
    let req = raw(Method::POST, path, Some("application/json"), &huge);
    let (status, resp) = send(&s.app, req).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{resp}");
    assert_eq!(error_code(&resp), "PAYLOAD_TOO_LARGE");
}

#[tokio::test]
async fn a_body_declared_over_64_kib_is_413_on_routes_that_read_no_body() {
    let s = svc().await;
    let body = "x".repeat(64 * 1024 + 1);
    for (method, path) in [
        (Method::GET, "/v1/keys?user=user_1"),
        (Method::GET, "/healthz"),
        (Method::DELETE, "/v1/keys/key_x"),
        (Method::GET, "/v1/nothing"),
    ] {
        let req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header("authorization", format!("Bearer {ADMIN}"))
            .header("content-length", body.len())
            .body(Body::from(body.clone()))
            .unwrap();
        let (status, resp) = send(&s.app, req).await;
        assert_eq!(
            status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{method} {path}: {resp}"
        );
        assert_eq!(error_code(&resp), "PAYLOAD_TOO_LARGE");
    }
    // At the limit, a route that reads no body answers as usual.
    let body = "x".repeat(64 * 1024);
    let req = Request::builder()
        .uri("/healthz")
        .header("content-length", body.len())
        .body(Body::from(body))
        .unwrap();
    assert_eq!(send(&s.app, req).await.0, StatusCode::OK);
}

#[tokio::test]
async fn an_unknown_field_is_400_without_echoing_its_name() {
    let s = svc().await;
    // A secret pasted where a field name goes must not come back in the error.
    let body = r#"{"jti": "j", "expires_at": 5, "ghk_pastedsecret0000000000000": 1}"#;
    let req = raw(
        Method::POST,
        "/v1/tokens/revoke",
        Some("application/json"),
        body,
    );
    let (status, resp) = send(&s.app, req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
    assert_eq!(error_code(&resp), "BAD_REQUEST");
    let message = resp["error"].as_str().unwrap();
    assert!(!message.contains("pastedsecret"), "{message}");
    assert!(
        message.contains("`jti`"),
        "names the fields expected: {message}"
    );
    let (status, resp) = s
        .admin(Method::GET, "/v1/keys?user=u&ghk_pastedsecret=1", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
    assert!(!resp.to_string().contains("pastedsecret"), "{resp}");
}

#[tokio::test]
async fn every_body_accepts_the_same_json_content_types() {
    let s = svc().await;
    // application/json with parameters, and application/*+json, as axum's Json takes them,
    // for required and optional bodies alike.
    for content_type in [
        "application/json; charset=utf-8",
        "application/merge-patch+json",
    ] {
        let req = raw(
            Method::POST,
            "/v1/keys/verify",
            Some(content_type),
            r#"{"api_key": "x"}"#,
        );
        let (status, resp) = send(&s.app, req).await;
        assert_eq!(status, StatusCode::OK, "{content_type}: {resp}");
        let req = raw(
            Method::POST,
            "/v1/users/user_1/revoke-tokens",
            Some(content_type),
            "{}",
        );
        let (status, resp) = send(&s.app, req).await;
        assert_eq!(status, StatusCode::OK, "{content_type}: {resp}");
    }
}

#[tokio::test]
async fn openapi_states_the_rules_these_tests_check() {
    let s = svc().await;
    let req = Request::builder()
        .uri("/openapi.json")
        .body(Body::empty())
        .unwrap();
    let (status, doc) = send(&s.app, req).await;
    assert_eq!(status, StatusCode::OK);
    let create = &doc["components"]["schemas"]["CreateKey"]["properties"];
    assert_eq!(create["device_name"]["maxLength"], 128);
    assert!(create["device_name"]["pattern"].is_string());
    assert_eq!(create["expires_in_days"]["nullable"], true);
    assert_eq!(create["scopes"]["nullable"], true);
    assert_eq!(create["scopes"]["minItems"], 1);
    assert_eq!(
        create["plan"]["enum"],
        json!(["free", "solo", "team", "enterprise"])
    );
    let rotate = &doc["components"]["schemas"]["RotateKey"]["properties"];
    assert_eq!(rotate["grace_seconds"]["nullable"], true);
    let wait = doc["paths"]["/v1/cache"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "wait")
        .unwrap();
    assert_eq!(wait["schema"]["format"], "int64");
    assert_eq!(wait["schema"]["minimum"], 0);
    let revoke = &doc["paths"]["/v1/users/{id}/revoke-tokens"]["post"];
    assert_eq!(revoke["requestBody"]["required"], false);
    let body = &doc["components"]["schemas"]["RevokeUserTokens"];
    assert_eq!(body["additionalProperties"], false);
    assert_eq!(body["properties"], json!({}));
    for code in ["400", "413", "415"] {
        assert!(revoke["responses"][code].is_object(), "{code}");
    }
}
