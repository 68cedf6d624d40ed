//! The same Envoy with `envoy.filters.http.ext_authz` in place of the gatehouse module:
//! every request is decided by the control service's `/v1/authz` (HTTP service), for the
//! parity suite (`tests/authz_parity_envoy.rs`), which sends the same requests to both.
//!
//! [`rewrite`] takes the bootstrap [`super::config::Bootstrap`] renders for the module and
//! changes only the filter: the connection manager (client address, header names with
//! `_`, the standard body for Envoy's own refusals, request ids) stays the same, so the
//! two Envoys differ in who decides and nothing else. The sync service is dropped (the
//! control service is asked on every request) and a cluster for the control service is
//! added.
//!
//! The filter ([`filter`]) is the configuration docs/operating.md's "ext_authz" section shows:
//! - `path_prefix: /v1/authz`: Envoy sends `/v1/authz` followed by the original `:path`;
//! - `allowed_headers`: what the decision reads besides `authorization` (always sent):
//!   the key header, method overrides, `x-forwarded-for`, `x-request-id` (echoed in
//!   refusals), the CORS preflight headers and every `x-gatehouse-*` name (so the answer
//!   can list the client's for removal);
//! - `headers_to_add`: the feed token in `x-control-token`, read by Envoy from its own
//!   environment (`%ENVIRONMENT(...)%`), never written in the file;
//! - `allowed_upstream_headers`: `x-gatehouse-*`, the identity the answer sets;
//! - `failure_mode_allow: false` and `status_on_error: 503`: a control service that cannot
//!   answer refuses, never lets through.

use anyhow::{Context, anyhow};
use serde_json::{Value, json};
use std::net::SocketAddr;

/// The cluster ext_authz calls.
pub const AUTHZ_CLUSTER: &str = "gatehouse_authz";

/// How the ext_authz Envoy reaches the control service.
#[derive(Clone, Debug)]
pub struct ExtAuthzLink {
    /// The control service, started with `--policy` of the same policy.
    pub control: SocketAddr,
    /// The variable in Envoy's environment that holds the feed token, and its value.
    pub token_env: (String, String),
}

/// The ext_authz HTTP filter for a policy whose key header is `api_key_header`.
pub fn filter(api_key_header: &str, token_env: &str) -> Value {
    let exact = |name: &str| json!({ "exact": name });
    json!({
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "transport_api_version": "V3",
            "failure_mode_allow": false,
            "status_on_error": { "code": 503 },
            "http_service": {
                "server_uri": {
                    "uri": format!("http://{AUTHZ_CLUSTER}"),
                    "cluster": AUTHZ_CLUSTER,
                    "timeout": "2s",
                },
                "path_prefix": "/v1/authz",
                "authorization_request": {
                    "allowed_headers": { "patterns": [
                        exact(api_key_header),
                        exact("x-request-id"),
                        exact("x-forwarded-for"),
                        exact("x-http-method-override"),
                        exact("x-http-method"),
                        exact("x-method-override"),
                        exact("origin"),
                        exact("access-control-request-method"),
                        exact("access-control-request-headers"),
                        { "prefix": "x-gatehouse-" },
                    ] },
                    "headers_to_add": [
                        { "key": "x-control-token", "value": format!("%ENVIRONMENT({token_env})%") },
                    ],
                },
                "authorization_response": {
                    "allowed_upstream_headers": { "patterns": [ { "prefix": "x-gatehouse-" } ] },
                },
            },
        },
    })
}

fn cluster(control: SocketAddr) -> Value {
    json!({
        "name": AUTHZ_CLUSTER,
        "connect_timeout": "2s",
        "type": "STATIC",
        "load_assignment": {
            "cluster_name": AUTHZ_CLUSTER,
            "endpoints": [ { "lb_endpoints": [ { "endpoint": { "address": {
                "socket_address": {
                    "address": control.ip().to_string(),
                    "port_value": control.port(),
                }
            } } } ] } ],
        },
    })
}

/// The bootstrap `rendered` (the module's) with ext_authz in place of the module.
pub fn rewrite(
    rendered: &str,
    api_key_header: &str,
    link: &ExtAuthzLink,
) -> anyhow::Result<String> {
    let mut tree = gatehouse_core::policy::yaml::parse(rendered)
        .map_err(|e| anyhow!("the rendered bootstrap is not YAML: {e:?}"))?
        .to_json();
    tree.as_object_mut()
        .context("the rendered bootstrap is not a mapping")?
        .insert("bootstrap_extensions".into(), json!([]));
    let filters = tree
        .pointer_mut(
            "/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/http_filters",
        )
        .and_then(Value::as_array_mut)
        .context("no http_filters in the rendered bootstrap")?;
    let wasm = filters
        .iter()
        .position(|f| f["name"] == "envoy.filters.http.wasm")
        .context("no wasm filter in the rendered bootstrap")?;
    if let Some(slot) = filters.get_mut(wasm) {
        *slot = filter(api_key_header, &link.token_env.0);
    }
    tree.pointer_mut("/static_resources/clusters")
        .and_then(Value::as_array_mut)
        .context("no clusters in the rendered bootstrap")?
        .push(cluster(link.control));
    // JSON is YAML: Envoy reads it from the `.yaml` file as it is.
    Ok(serde_json::to_string_pretty(&tree)?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::envoy::config::Bootstrap;
    use std::path::PathBuf;

    #[test]
    fn only_the_filter_changes_and_the_token_stays_out_of_the_file() {
        let rendered = Bootstrap {
            listen: "127.0.0.1:10000".parse().unwrap(),
            admin: "127.0.0.1:9901".parse().unwrap(),
            upstream: "127.0.0.1:8080".parse().unwrap(),
            wasm: PathBuf::from("/tmp/gatehouse.wasm"),
            plugin_config_json: "{}".into(),
            env: Vec::new(),
            pass_env: Vec::new(),
            control: Vec::new(),
            filter_only: false,
            filter_config: None,
        }
        .render();
        let link = ExtAuthzLink {
            control: "127.0.0.1:7070".parse().unwrap(),
            token_env: ("GATEHOUSE_FEED_TOKEN".into(), "s3cret-token".into()),
        };
        let out = rewrite(&rendered, "x-api-key", &link).unwrap();
        assert!(!out.contains("s3cret-token"));
        let before = gatehouse_core::policy::yaml::parse(&rendered)
            .unwrap()
            .to_json();
        let after: Value = serde_json::from_str(&out).unwrap();
        let hcm = |t: &Value| {
            let mut h = t["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
                ["typed_config"]
                .clone();
            h["http_filters"] = Value::Null;
            h
        };
        assert_eq!(hcm(&before), hcm(&after));
        let filters = after["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"]["http_filters"]
            .as_array()
            .unwrap();
        let names: Vec<&str> = filters
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["envoy.filters.http.ext_authz", "envoy.filters.http.router"]
        );
        let clusters = after["static_resources"]["clusters"].as_array().unwrap();
        assert!(clusters.iter().any(|c| c["name"] == AUTHZ_CLUSTER));
    }
}
