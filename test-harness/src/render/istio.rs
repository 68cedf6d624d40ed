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
//! Two ways to deliver the module ([`IstioDelivery`]):
//! - a `WasmPlugin`, the default for policies that never hold a body. It reaches Envoy as
//!   an ECDS extension config that Istio builds from a fixed set of fields, without
//!   `allow_on_headers_stop_iteration`, and Istio applies an `EnvoyFilter`'s
//!   `EXTENSION_CONFIG` patches with operation `ADD` only (istio/istio
//!   `pilot/pkg/networking/core/envoyfilter/extension_configuration_patch.go`), so no
//!   patch can merge the field into it;
//! - the whole filter in the `EnvoyFilter`, the default when some route holds the body
//!   (webhooks, JSON caps): an `EXTENSION_CONFIG` with every field the bootstrap sets,
//!   its code a remote `oci://` URL, which the Istio agent fetches and rewrites to a
//!   local file before Envoy sees it (as it does for a `WasmPlugin`: istio/istio
//!   `pkg/wasm`), and an `HTTP_FILTER` first in the chain that takes its configuration
//!   from that extension config. Without `allow_on_headers_stop_iteration` Envoy holds
//!   the body while the headers wait, and those requests would hang until the stream
//!   timeout. What it gives up: image pull secrets (the agent pulls without credentials;
//!   use a registry the nodes may read), which [`warnings`] says.

use super::{
    IstioDelivery, NAME, Options, PROXY_SECRET, WASM_FILTER_TYPE, metadata, policy_object,
    proxy_secret, set,
};
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

/// How this render delivers the module: the option, else the `EnvoyFilter` when some
/// route holds the body.
pub fn delivery(loaded: &LoadedPolicy, opts: &Options) -> IstioDelivery {
    opts.istio_delivery
        .unwrap_or(if super::holds_bodies(loaded) {
            IstioDelivery::EnvoyFilter
        } else {
            IstioDelivery::WasmPlugin
        })
}

/// What the operator must know about this render.
pub fn warnings(loaded: &LoadedPolicy, opts: &Options) -> Vec<String> {
    let mut out = Vec::new();
    match delivery(loaded, opts) {
        IstioDelivery::WasmPlugin if super::holds_bodies(loaded) => out.push(
            "some routes hold the body (webhook or JSON caps): a WasmPlugin cannot set \
             allow_on_headers_stop_iteration, so those requests would wait for Envoy's \
             stream timeout; render with --istio-delivery envoyfilter (docs/deploying.md)"
                .to_string(),
        ),
        IstioDelivery::WasmPlugin => {}
        IstioDelivery::EnvoyFilter => out.push(
            "the module is delivered in the EnvoyFilter (some routes hold the body, which \
             needs allow_on_headers_stop_iteration): the Istio agent pulls the image \
             without credentials, so it must be in a registry the proxies may read"
                .to_string(),
        ),
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

/// The Wasm filter's configuration as the bootstrap has it, its code the image: the
/// `EXTENSION_CONFIG` of the `EnvoyFilter` delivery. The Istio agent replaces the remote
/// code with the file it pulled (so the `http_uri` cluster is never used: `_`, as Istio
/// writes it for a `WasmPlugin`), and verifies `sha256` when the reference pins a digest
/// that way.
pub fn filter_config(loaded: &LoadedPolicy, opts: &Options) -> Value {
    let mut vm = json!({
        // Shared data (key cache, limiter slots, the sync's lease) belongs to this id.
        "vm_id": NAME,
        "runtime": "envoy.wasm.runtime.v8",
        "code": { "remote": { "http_uri": {
            "uri": format!("oci://{}", opts.wasm_image),
            "cluster": "_",
            "timeout": "30s",
        } } },
    });
    let names = loaded.policy.secret_env_names();
    if !names.is_empty() {
        set(
            &mut vm,
            "environment_variables",
            json!({ "host_env_keys": names }),
        );
    }
    json!({
        "@type": WASM_FILTER_TYPE,
        "config": {
            "name": NAME,
            "root_id": NAME,
            "allow_on_headers_stop_iteration": true,
            "failure_policy": "FAIL_RELOAD",
            "vm_config": vm,
            "configuration": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": plugin_config(loaded, opts).to_string(),
            },
        },
    })
}

/// The extension config's name: Istio shares `EXTENSION_CONFIG` names across the
/// namespaces an `EnvoyFilter` reaches, so it carries the namespace.
pub fn extension_config_name(opts: &Options) -> String {
    format!("{}.{NAME}", opts.namespace)
}

fn hcm_match(opts: &Options) -> Value {
    json!({
        "context": context(opts),
        "listener": { "filterChain": { "filter": {
            "name": "envoy.filters.network.http_connection_manager"
        } } },
    })
}

/// The connection manager's settings the bootstrap has and Istio does not set (header
/// names with `_` refused, and `server` passed through: the policy may remove it), and
/// with the `EnvoyFilter` delivery the filter itself: first the extension config, then
/// the HTTP filter, first in the chain, that waits for it (`initial_fetch_timeout: 0s`:
/// a listener serves no request before the module is loaded).
pub fn envoy_filter(loaded: &LoadedPolicy, opts: &Options) -> Value {
    let mut patches = Vec::new();
    if delivery(loaded, opts) == IstioDelivery::EnvoyFilter {
        let name = extension_config_name(opts);
        patches.push(json!({
            "applyTo": "EXTENSION_CONFIG",
            "patch": {
                "operation": "ADD",
                "value": { "name": name, "typed_config": filter_config(loaded, opts) },
            },
        }));
        patches.push(json!({
            "applyTo": "HTTP_FILTER",
            "match": hcm_match(opts),
            "patch": {
                "operation": "INSERT_FIRST",
                "value": {
                    "name": name,
                    "config_discovery": {
                        "config_source": { "ads": {}, "initial_fetch_timeout": "0s" },
                        "type_urls": [WASM_FILTER_TYPE],
                    },
                },
            },
        }));
    }
    patches.push(json!({
        "applyTo": "NETWORK_FILTER",
        "match": hcm_match(opts),
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
    }));
    json!({
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": metadata(NAME, opts),
        "spec": {
            "workloadSelector": { "labels": labels(opts) },
            "configPatches": patches,
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
    let mut docs = Vec::new();
    if delivery(loaded, opts) == IstioDelivery::WasmPlugin {
        docs.push(wasm_plugin(loaded, opts));
    }
    docs.push(envoy_filter(loaded, opts));
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
    fn policies_that_hold_bodies_get_the_whole_filter_in_the_envoy_filter() {
        let loaded = load("webhooks.yaml");
        let opts = Options::default();
        assert_eq!(delivery(&loaded, &opts), IstioDelivery::EnvoyFilter);
        let docs = render(&loaded, &opts);
        assert_eq!(kinds(&docs), ["EnvoyFilter", "Secret"]);
        let patches = &docs[0]["spec"]["configPatches"];
        assert_eq!(patches[0]["applyTo"], "EXTENSION_CONFIG");
        assert_eq!(patches[0]["patch"]["operation"], "ADD");
        let name = &patches[0]["patch"]["value"]["name"];
        assert_eq!(name, "gatehouse.gatehouse");
        assert_eq!(patches[1]["applyTo"], "HTTP_FILTER");
        assert_eq!(patches[1]["patch"]["operation"], "INSERT_FIRST");
        assert_eq!(&patches[1]["patch"]["value"]["name"], name);
        assert_eq!(
            patches[1]["patch"]["value"]["config_discovery"]["type_urls"],
            json!([WASM_FILTER_TYPE])
        );
        assert_eq!(patches[2]["applyTo"], "NETWORK_FILTER");
        let config = &patches[0]["patch"]["value"]["typed_config"]["config"];
        assert_eq!(config["allow_on_headers_stop_iteration"], true);
        assert_eq!(config["failure_policy"], "FAIL_RELOAD");
        assert_eq!(
            config["vm_config"]["code"]["remote"]["http_uri"]["uri"],
            format!("oci://{}", opts.wasm_image)
        );
        let policy: Value =
            serde_json::from_str(config["configuration"]["value"].as_str().unwrap()).unwrap();
        assert_eq!(policy, plugin_config(&loaded, &opts));
        assert!(warnings(&loaded, &opts)[0].contains("without credentials"));
    }

    #[test]
    fn a_wasm_plugin_for_a_policy_that_holds_bodies_is_warned_about() {
        let opts = Options {
            istio_delivery: Some(IstioDelivery::WasmPlugin),
            ..Options::default()
        };
        let loaded = load("webhooks.yaml");
        assert_eq!(
            kinds(&render(&loaded, &opts)),
            ["WasmPlugin", "EnvoyFilter", "Secret"]
        );
        assert!(warnings(&loaded, &opts)[0].contains("allow_on_headers_stop_iteration"));
        assert!(warnings(&load("example.yaml"), &Options::default()).is_empty());
    }

    #[test]
    fn the_sidecar_context_patches_inbound_listeners() {
        let opts = Options {
            istio_sidecar: true,
            ..Options::default()
        };
        for policy in ["example.yaml", "webhooks.yaml"] {
            let filter = envoy_filter(&load(policy), &opts);
            let patches = filter["spec"]["configPatches"].as_array().unwrap();
            for patch in patches
                .iter()
                .filter(|p| p["applyTo"] != "EXTENSION_CONFIG")
            {
                assert_eq!(patch["match"]["context"], "SIDECAR_INBOUND");
            }
        }
    }
}
