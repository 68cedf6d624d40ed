//! Envoy Gateway: an `EnvoyExtensionPolicy` with the module, a `ClientTrafficPolicy`
//! refusing header names with `_`, and, for a policy with a feed, an `EnvoyPatchPolicy`
//! adding the control service's cluster under the policy's `feed.cluster` name.
//!
//! What Envoy Gateway cannot express (envoyproxy/gateway `internal/xds/translator/wasm.go`
//! builds the filter from `name`, `rootID`, `code`, `config`, `failOpen` and
//! `env.hostKeys`, nothing else):
//! - `allow_on_headers_stop_iteration`: not set, so routes that hold the body (webhooks,
//!   JSON caps) would wait for Envoy's stream timeout ([`warnings`]);
//! - `failure_policy: FAIL_RELOAD`: only `failOpen` (false: Envoy's `FAIL_CLOSED`, a
//!   trapped VM refuses every request on its worker until Envoy restarts);
//! - a cluster for the module's HTTP calls: Envoy Gateway makes clusters for route
//!   backends only, so the control service's comes from an `EnvoyPatchPolicy`, which
//!   Envoy Gateway applies only with `extensionApis.enableEnvoyPatchPolicy: true`;
//! - `server_header_transformation: PASS_THROUGH` (a policy removing `server` still sees
//!   Envoy write `server: envoy`).

use super::{NAME, Options, metadata, policy_object, proxy_secret, set};
use gatehouse_core::policy::LoadedPolicy;
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

/// The control service's cluster, named as the policy's `feed.cluster`.
pub fn patch_policy(cluster: &str, opts: &Options) -> Value {
    let host = opts.control_host();
    json!({
        "apiVersion": "gateway.envoyproxy.io/v1alpha1",
        "kind": "EnvoyPatchPolicy",
        "metadata": metadata(&format!("{NAME}-control-cluster"), opts),
        "spec": {
            "targetRef": { "group": "gateway.networking.k8s.io", "kind": "Gateway", "name": opts.gateway },
            "type": "JSONPatch",
            "jsonPatches": [ {
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
            } ],
        },
    })
}

pub fn warnings(loaded: &LoadedPolicy) -> Vec<String> {
    let mut out = Vec::new();
    if super::holds_bodies(loaded) {
        out.push(
            "some routes hold the body (webhook or JSON caps): Envoy Gateway cannot set \
             allow_on_headers_stop_iteration, so those requests would wait for Envoy's \
             stream timeout; see docs/deploying.md"
                .to_string(),
        );
    }
    if loaded.policy.feed.is_some() {
        out.push(
            "the control service's cluster comes from an EnvoyPatchPolicy: enable \
             extensionApis.enableEnvoyPatchPolicy in Envoy Gateway's configuration"
                .to_string(),
        );
    }
    out
}

pub fn render(loaded: &LoadedPolicy, opts: &Options) -> Vec<Value> {
    let mut docs = vec![extension_policy(loaded, opts), client_traffic_policy(opts)];
    if let Some(feed) = &loaded.policy.feed {
        docs.push(patch_policy(&feed.cluster, opts));
    }
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
        let patch = &docs[2]["spec"]["jsonPatches"][0];
        assert_eq!(patch["name"], "gatehouse_control");
        assert_eq!(
            patch["operation"]["value"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
                ["address"]["socket_address"]["address"],
            "gatehouse-control.gatehouse.svc.cluster.local"
        );
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
