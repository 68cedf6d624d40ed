//! Istio: a `WasmPlugin` with the policy, an `EnvoyFilter` for the connection manager,
//! and a `ServiceEntry` and `DestinationRule` for the control service.
//!
//! Istio adds HTTP filters only, so the proxies run the feed sync in a worker under a
//! lease (docs/operating.md, "Filter-only mode"): every secret the policy names,
//! the feed token included, goes to the VM with `vmConfig.env` `valueFrom: HOST`, by
//! name; the proxy's container must have them in its environment (from the rendered
//! `gatehouse-proxy-env` Secret).
//!
//! Istio names an outbound cluster `outbound|PORT||HOST`, and the module's HTTP calls
//! name their cluster, so `feed.cluster` in the `pluginConfig` is rewritten to the
//! control service's (and `feed.authority` set to its host when the policy left it to
//! default to the cluster name).
//!
//! What Istio cannot carry: `allow_on_headers_stop_iteration`. A `WasmPlugin` reaches
//! the proxy as an ECDS extension config, and Istio applies `EXTENSION_CONFIG` patches of
//! an `EnvoyFilter` with operation `ADD` only (istio/istio
//! `pilot/pkg/networking/core/envoyfilter/extension_configuration_patch.go`), so no
//! patch can merge the field into it. Policies whose routes hold the body (webhooks, JSON
//! caps) then hang those requests under Istio; [`render`] still renders them and
//! [`warnings`] says so.

use super::{NAME, Options, PROXY_SECRET, metadata, policy_object, proxy_secret, set};
use gatehouse_core::policy::LoadedPolicy;
use serde_json::{Value, json};

/// Istio's name of the outbound cluster for `host:port`.
pub fn cluster_name(host: &str, port: u16) -> String {
    format!("outbound|{port}||{host}")
}

/// The `pluginConfig`: the policy, with `feed.cluster` pointing at Istio's cluster of
/// the control service.
pub fn plugin_config(loaded: &LoadedPolicy, opts: &Options) -> Value {
    let mut config = policy_object(loaded);
    if let Some(feed) = config.get_mut("feed").and_then(Value::as_object_mut) {
        let host = opts.control_host();
        feed.insert(
            "cluster".into(),
            Value::String(cluster_name(&host, opts.control_port)),
        );
        feed.entry("authority").or_insert(Value::String(host));
    }
    config
}

/// What the operator must know about this render.
pub fn warnings(loaded: &LoadedPolicy) -> Vec<String> {
    let mut out = Vec::new();
    if super::holds_bodies(loaded) {
        out.push(
            "some routes hold the body (webhook or JSON caps): Istio cannot set \
             allow_on_headers_stop_iteration on a WasmPlugin, so those requests would wait \
             for Envoy's stream timeout; see docs/deploying.md"
                .to_string(),
        );
    }
    if loaded.policy.feed.is_some() {
        out.push(format!(
            "feed.cluster is rewritten to Istio's cluster name of the control service; \
             the proxy's container needs {PROXY_SECRET} in its environment (envFrom)"
        ));
    }
    out
}

fn labels(opts: &Options) -> Value {
    Value::Object(
        opts.selector
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

fn context(opts: &Options) -> &'static str {
    if opts.istio_sidecar {
        "SIDECAR_INBOUND"
    } else {
        "GATEWAY"
    }
}

pub fn wasm_plugin(loaded: &LoadedPolicy, opts: &Options) -> Value {
    let env: Vec<Value> = loaded
        .policy
        .secret_env_names()
        .into_iter()
        .map(|name| json!({ "name": name, "valueFrom": "HOST" }))
        .collect();
    let mut spec = json!({
        "selector": { "matchLabels": labels(opts) },
        "url": format!("oci://{}", opts.wasm_image),
        "imagePullPolicy": "IfNotPresent",
        "phase": "AUTHN",
        "pluginName": NAME,
        // As the bootstrap's FAIL_RELOAD: a trap fails closed, then a fresh VM.
        "failStrategy": "FAIL_RELOAD",
        "type": "HTTP",
        "pluginConfig": plugin_config(loaded, opts),
    });
    if !env.is_empty() {
        set(&mut spec, "vmConfig", json!({ "env": env }));
    }
    json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": metadata(NAME, opts),
        "spec": spec,
    })
}

/// The connection manager's settings the bootstrap has and Istio does not set: header
/// names with `_` refused, and `server` passed through (the policy may remove it).
pub fn envoy_filter(opts: &Options) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": metadata(NAME, opts),
        "spec": {
            "workloadSelector": { "labels": labels(opts) },
            "configPatches": [ {
                "applyTo": "NETWORK_FILTER",
                "match": {
                    "context": context(opts),
                    "listener": { "filterChain": { "filter": {
                        "name": "envoy.filters.network.http_connection_manager"
                    } } },
                },
                "patch": {
                    "operation": "MERGE",
                    "value": { "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "common_http_protocol_options": {
                            "headers_with_underscores_action": "REJECT_REQUEST"
                        },
                        "server_header_transformation": "PASS_THROUGH",
                    } },
                },
            } ],
        },
    })
}

/// The control service in Istio's registry, so its outbound cluster exists on the
/// proxies even where the control service is not a Kubernetes Service they see.
pub fn service_entry(opts: &Options) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": metadata(super::control::NAME, opts),
        "spec": {
            "hosts": [opts.control_host()],
            "location": "MESH_INTERNAL",
            "resolution": "DNS",
            "ports": [ { "number": opts.control_port, "name": "http", "protocol": "HTTP" } ],
        },
    })
}

/// The feed is a long poll (`feed.wait`, 20 s by default): connections stay open and
/// are reused; mTLS inside the mesh carries the feed token.
pub fn destination_rule(opts: &Options) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": metadata(super::control::NAME, opts),
        "spec": {
            "host": opts.control_host(),
            "trafficPolicy": {
                "connectionPool": {
                    "tcp": { "connectTimeout": "2s" },
                    "http": { "idleTimeout": "300s" },
                },
                "tls": { "mode": "ISTIO_MUTUAL" },
            },
        },
    })
}

pub fn render(loaded: &LoadedPolicy, opts: &Options) -> Vec<Value> {
    let mut docs = vec![wasm_plugin(loaded, opts), envoy_filter(opts)];
    if loaded.policy.feed.is_some() {
        docs.push(service_entry(opts));
        docs.push(destination_rule(opts));
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
    fn the_feed_cluster_becomes_istios_outbound_cluster_of_the_control_service() {
        let config = plugin_config(&load("local.yaml"), &Options::default());
        assert_eq!(
            config["feed"]["cluster"],
            "outbound|8081||gatehouse-control.gatehouse.svc.cluster.local"
        );
        assert_eq!(
            config["feed"]["authority"],
            "gatehouse-control.gatehouse.svc.cluster.local"
        );
        // Everything else is the policy as written.
        assert_eq!(config["feed"]["token_env"], "GATEHOUSE_FEED_TOKEN");
        assert_eq!(config["api_key"]["header"], "x-api-key");
    }

    #[test]
    fn the_rewritten_plugin_config_is_still_a_valid_policy() {
        let config = plugin_config(&load("local.yaml"), &Options::default());
        let policy =
            gatehouse_core::policy::Policy::from_json(config.to_string().as_bytes()).unwrap();
        assert!(policy.feed.unwrap().cluster.starts_with("outbound|8081||"));
    }

    #[test]
    fn every_secret_goes_to_the_vm_by_name_from_the_proxys_environment() {
        let plugin = wasm_plugin(&load("local.yaml"), &Options::default());
        assert_eq!(
            plugin["spec"]["vmConfig"]["env"],
            json!([
                { "name": "GATEHOUSE_FEED_TOKEN", "valueFrom": "HOST" },
                { "name": "GATEHOUSE_JWT_SECRET", "valueFrom": "HOST" }
            ])
        );
        assert_eq!(plugin["spec"]["phase"], "AUTHN");
        assert_eq!(plugin["spec"]["failStrategy"], "FAIL_RELOAD");
    }

    #[test]
    fn a_policy_without_a_feed_needs_no_control_service_entry() {
        let docs = render(&load("example.yaml"), &Options::default());
        assert_eq!(kinds(&docs), ["WasmPlugin", "EnvoyFilter", "Secret"]);
        let docs = render(&load("local.yaml"), &Options::default());
        assert_eq!(
            kinds(&docs),
            [
                "WasmPlugin",
                "EnvoyFilter",
                "ServiceEntry",
                "DestinationRule",
                "Secret"
            ]
        );
    }

    #[test]
    fn policies_that_hold_bodies_are_warned_about() {
        assert!(warnings(&load("webhooks.yaml"))[0].contains("allow_on_headers_stop_iteration"));
        assert!(warnings(&load("example.yaml")).is_empty());
    }

    #[test]
    fn the_sidecar_context_patches_inbound_listeners() {
        let opts = Options {
            istio_sidecar: true,
            ..Options::default()
        };
        assert_eq!(
            envoy_filter(&opts)["spec"]["configPatches"][0]["match"]["context"],
            "SIDECAR_INBOUND"
        );
    }
}
