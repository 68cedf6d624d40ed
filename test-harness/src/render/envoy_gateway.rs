//! Envoy Gateway: an `EnvoyExtensionPolicy` with the module, a `ClientTrafficPolicy`
//! refusing header names with `_`, and an `EnvoyPatchPolicy` for what the first two
//! cannot say.
//!
//! Envoy Gateway builds the Wasm filter from `name`, `rootID`, `code`, `config`,
//! `failOpen` and `env.hostKeys` only (envoyproxy/gateway
//! `internal/xds/translator/wasm.go`), names it
//! `envoy.filters.http.wasm/envoyextensionpolicy/NAMESPACE/NAME/wasm/INDEX`, and puts it
//! in the connection manager of each listener of the `Gateway`. The patch policy adds,
//! by JSONPath on that listener (Envoy Gateway 1.2 and later):
//! - `allow_on_headers_stop_iteration: true` on that filter: without it routes that hold
//!   the body (webhooks, JSON caps) would wait for Envoy's stream timeout;
//! - `failure_policy: FAIL_RELOAD` (the extension policy's `failOpen: false` leaves the
//!   legacy field unset, so Envoy takes the policy): a trapped VM fails one request, not
//!   every request on its worker until Envoy restarts;
//! - `server_header_transformation: PASS_THROUGH` on the connection manager when the
//!   policy removes `server`;
//! - with a feed, the control service's cluster under the policy's `feed.cluster` name
//!   (Envoy Gateway makes clusters for route backends only).
//!
//! Envoy Gateway applies patch policies only with `extensionApis.enableEnvoyPatchPolicy:
//! true`, and a patch whose listener or filter is missing leaves the policy not
//! `Programmed` ([`warnings`] says both).

use super::{NAME, Options, metadata, policy_object, proxy_secret, set};
use gatehouse_core::policy::LoadedPolicy;
use gatehouse_core::response::removes_server_header;
use serde_json::{Value, json};

fn target_refs(opts: &Options) -> Value {
    json!([ { "group": "gateway.networking.k8s.io", "kind": "Gateway", "name": opts.gateway } ])
}

pub fn extension_policy(loaded: &LoadedPolicy, opts: &Options) -> Value {
    let mut wasm = json!({
        "name": NAME,
        "rootID": NAME,
        "code": {
            "type": "Image",
            "image": { "url": opts.wasm_image },
            "pullPolicy": "IfNotPresent",
        },
        "config": policy_object(loaded),
        "failOpen": false,
    });
    let names = loaded.policy.secret_env_names();
    if !names.is_empty() {
        set(&mut wasm, "env", json!({ "hostKeys": names }));
    }
    json!({
        "apiVersion": "gateway.envoyproxy.io/v1alpha1",
        "kind": "EnvoyExtensionPolicy",
        "metadata": metadata(NAME, opts),
        "spec": { "targetRefs": target_refs(opts), "wasm": [wasm] },
    })
}

pub fn client_traffic_policy(opts: &Options) -> Value {
    json!({
        "apiVersion": "gateway.envoyproxy.io/v1alpha1",
        "kind": "ClientTrafficPolicy",
        "metadata": metadata(NAME, opts),
        "spec": {
            "targetRefs": target_refs(opts),
            "headers": { "withUnderscoresAction": "RejectRequest" },
        },
    })
}

/// The Wasm filter's name in Envoy Gateway's listeners: the first (and only) module of
/// the `EnvoyExtensionPolicy` this render writes.
pub fn wasm_filter_name(opts: &Options) -> String {
    format!(
        "envoy.filters.http.wasm/envoyextensionpolicy/{}/{NAME}/wasm/0",
        opts.namespace
    )
}

/// The xDS name of the listener to patch.
pub fn listener_name(opts: &Options) -> String {
    opts.eg_listener
        .clone()
        .unwrap_or_else(|| format!("{}/{}/http", opts.namespace, opts.gateway))
}

fn listener_patch(opts: &Options, json_path: String, path: &str, value: Value) -> Value {
    json!({
        "type": "type.googleapis.com/envoy.config.listener.v3.Listener",
        "name": listener_name(opts),
        "operation": { "op": "add", "jsonPath": json_path, "path": path, "value": value },
    })
}

/// The settings Envoy Gateway's own resources cannot carry (module docs), and the control
/// service's cluster when the policy has a feed.
pub fn patch_policy(loaded: &LoadedPolicy, opts: &Options) -> Value {
    let filter = format!(
        "$..http_filters[?(@.name=='{}')].typed_config.config",
        wasm_filter_name(opts)
    );
    let mut patches = vec![
        listener_patch(
            opts,
            filter.clone(),
            "/allow_on_headers_stop_iteration",
            json!(true),
        ),
        listener_patch(opts, filter, "/failure_policy", json!("FAIL_RELOAD")),
    ];
    if removes_server_header(&loaded.policy) {
        patches.push(listener_patch(
            opts,
            "$..filters[?(@.name=='envoy.filters.network.http_connection_manager')].typed_config"
                .to_string(),
            "/server_header_transformation",
            json!("PASS_THROUGH"),
        ));
    }
    if let Some(feed) = &loaded.policy.feed {
        patches.push(cluster_patch(&feed.cluster, opts));
    }
    json!({
        "apiVersion": "gateway.envoyproxy.io/v1alpha1",
        "kind": "EnvoyPatchPolicy",
        "metadata": metadata(NAME, opts),
        "spec": {
            "targetRef": { "group": "gateway.networking.k8s.io", "kind": "Gateway", "name": opts.gateway },
            "type": "JSONPatch",
            "jsonPatches": patches,
        },
    })
}

/// The control service's cluster, named as the policy's `feed.cluster`.
fn cluster_patch(cluster: &str, opts: &Options) -> Value {
    let host = opts.control_host();
    json!({
        "type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "name": cluster,
        "operation": {
            "op": "add",
            "path": "",
            "value": {
                "name": cluster,
                "type": "STRICT_DNS",
                "connect_timeout": "2s",
                "load_assignment": {
                    "cluster_name": cluster,
                    "endpoints": [ { "lb_endpoints": [ { "endpoint": { "address": {
                        "socket_address": { "address": host, "port_value": opts.control_port }
                    } } } ] } ],
                },
            },
        },
    })
}

pub fn warnings(_loaded: &LoadedPolicy, opts: &Options) -> Vec<String> {
    vec![format!(
        "the filter's settings (and the control service's cluster, with a feed) come from \
         an EnvoyPatchPolicy on listener '{}': enable extensionApis.enableEnvoyPatchPolicy \
         in Envoy Gateway's configuration, and pass --eg-listener when the Gateway's \
         listener is named otherwise (docs/deploying.md)",
        listener_name(opts)
    )]
}

pub fn render(loaded: &LoadedPolicy, opts: &Options) -> Vec<Value> {
    let mut docs = vec![
        extension_policy(loaded, opts),
        client_traffic_policy(opts),
        patch_policy(loaded, opts),
    ];
    docs.extend(proxy_secret(loaded, opts));
    docs
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::tests::{kinds, load};
    use super::*;

    #[test]
    fn the_module_gets_the_policy_unchanged_and_secrets_by_name() {
        let loaded = load("local.yaml");
        let p = extension_policy(&loaded, &Options::default());
        let wasm = &p["spec"]["wasm"][0];
        assert_eq!(wasm["config"], policy_object(&loaded));
        assert_eq!(
            wasm["env"]["hostKeys"],
            json!(["GATEHOUSE_FEED_TOKEN", "GATEHOUSE_JWT_SECRET"])
        );
        assert_eq!(wasm["failOpen"], false);
        assert_eq!(wasm["code"]["type"], "Image");
    }

    #[test]
    fn the_feed_cluster_is_added_under_the_policys_name() {
        let docs = render(&load("local.yaml"), &Options::default());
        assert_eq!(
            kinds(&docs),
            [
                "EnvoyExtensionPolicy",
                "ClientTrafficPolicy",
                "EnvoyPatchPolicy",
                "Secret"
            ]
        );
        let patches = docs[2]["spec"]["jsonPatches"].as_array().unwrap();
        let patch = patches.last().unwrap();
        assert_eq!(patch["name"], "gatehouse_control");
        assert_eq!(
            patch["operation"]["value"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
                ["address"]["socket_address"]["address"],
            "gatehouse-control.gatehouse.svc.cluster.local"
        );
    }

    #[test]
    fn the_filter_settings_are_patched_into_envoy_gateways_filter() {
        let opts = Options::default();
        let docs = render(&load("example.yaml"), &opts);
        assert_eq!(
            kinds(&docs),
            [
                "EnvoyExtensionPolicy",
                "ClientTrafficPolicy",
                "EnvoyPatchPolicy",
                "Secret"
            ]
        );
        let patches = docs[2]["spec"]["jsonPatches"].as_array().unwrap();
        let by_path = |p: &str| {
            patches
                .iter()
                .find(|x| x["operation"]["path"] == p)
                .unwrap_or_else(|| panic!("no patch of {p}"))
        };
        let stop = by_path("/allow_on_headers_stop_iteration");
        assert_eq!(stop["name"], "gatehouse/eg/http");
        assert_eq!(
            stop["operation"]["jsonPath"],
            "$..http_filters[?(@.name=='envoy.filters.http.wasm/envoyextensionpolicy/gatehouse/gatehouse/wasm/0')].typed_config.config"
        );
        assert_eq!(stop["operation"]["value"], true);
        assert_eq!(
            by_path("/failure_policy")["operation"]["value"],
            "FAIL_RELOAD"
        );
        // example.yaml keeps Envoy's `server` header; a policy that removes it gets it
        // passed through.
        assert!(
            patches
                .iter()
                .all(|x| x["operation"]["path"] != "/server_header_transformation")
        );
        let mut removes: serde_json::Value =
            serde_json::from_str(&load("example.yaml").plugin_config_json).unwrap();
        removes["security_headers"] = json!({ "remove": ["server"] });
        let loaded = gatehouse_core::policy::load_yaml("inline.yaml", &removes.to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        let opts = Options {
            eg_listener: Some("tcp-10080".into()),
            ..Options::default()
        };
        let patch = patch_policy(&loaded, &opts);
        let server = patch["spec"]["jsonPatches"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["operation"]["path"] == "/server_header_transformation")
            .unwrap()
            .clone();
        assert_eq!(server["name"], "tcp-10080");
        assert_eq!(server["operation"]["value"], "PASS_THROUGH");
    }

    #[test]
    fn header_names_with_underscores_are_refused() {
        let ctp = client_traffic_policy(&Options::default());
        assert_eq!(
            ctp["spec"]["headers"]["withUnderscoresAction"],
            "RejectRequest"
        );
    }
}
