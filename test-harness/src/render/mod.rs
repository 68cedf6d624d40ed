//! Kubernetes manifests rendered from a policy: Istio, Envoy Gateway and the control
//! service (`gatehouse-harness render`).
//!
//! Pure functions from a checked policy and [`Options`] to a list of manifests (JSON
//! values); [`to_yaml`] writes them as one multi-document YAML stream, each document in
//! JSON flow syntax (valid YAML, so a policy full of quotes reaches the cluster byte for
//! byte, as in `envoy::config`).
//!
//! Secrets appear by name only: the policy's `secret_env_names()` become the proxy's
//! environment variable names, and every rendered `Secret` has those names as keys with
//! empty values for the operator to fill. A rendered manifest never holds a token.

pub mod control;
pub mod envoy_gateway;
pub mod istio;

use gatehouse_core::policy::LoadedPolicy;
use serde_json::{Value, json};

/// What to render for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Istio,
    EnvoyGateway,
    Control,
}

impl Target {
    pub fn parse(s: &str) -> Result<Target, String> {
        match s {
            "istio" => Ok(Target::Istio),
            "envoy-gateway" => Ok(Target::EnvoyGateway),
            "control" => Ok(Target::Control),
            other => Err(format!(
                "unknown target '{other}'; expected one of [istio, envoy-gateway, control]"
            )),
        }
    }
}

/// How the module reaches Istio's proxies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IstioDelivery {
    /// A `WasmPlugin`: image pull secrets and pull policy, but no
    /// `allow_on_headers_stop_iteration`.
    WasmPlugin,
    /// The whole Wasm filter in an `EnvoyFilter` (an `EXTENSION_CONFIG` the Istio agent
    /// fetches, and the `HTTP_FILTER` that uses it): every field of the filter, pulled
    /// without credentials.
    EnvoyFilter,
}

impl IstioDelivery {
    pub fn parse(s: &str) -> Result<IstioDelivery, String> {
        match s {
            "wasmplugin" => Ok(IstioDelivery::WasmPlugin),
            "envoyfilter" => Ok(IstioDelivery::EnvoyFilter),
            other => Err(format!(
                "unknown delivery '{other}'; expected one of [wasmplugin, envoyfilter]"
            )),
        }
    }
}

/// The control service's database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Database {
    /// One replica with a volume of its own.
    Sqlite,
    /// Several replicas on a database named in the Secret.
    Postgres,
}

impl Database {
    pub fn parse(s: &str) -> Result<Database, String> {
        match s {
            "sqlite" => Ok(Database::Sqlite),
            "postgres" => Ok(Database::Postgres),
            other => Err(format!(
                "unknown database '{other}'; expected one of [sqlite, postgres]"
            )),
        }
    }
}

/// Every knob of the render; [`Options::default`] is what the CLI starts from.
#[derive(Clone, Debug)]
pub struct Options {
    /// The namespace of the rendered resources. Defaults to `gatehouse`.
    pub namespace: String,
    /// The module's OCI image (no scheme). Defaults to `ghcr.io/gatehouse/gatehouse-wasm:VERSION`.
    pub wasm_image: String,
    /// The control service's image. Defaults to `ghcr.io/gatehouse/gatehouse-control:VERSION`.
    pub control_image: String,
    /// The control service's Service host, as the proxies reach it. Defaults to
    /// `gatehouse-control.NAMESPACE.svc.cluster.local`.
    pub control_host: Option<String>,
    /// The control service's port. Defaults to 8081.
    pub control_port: u16,
    /// Istio: the labels of the proxies that get the filter. Defaults to
    /// `istio=ingressgateway`.
    pub selector: Vec<(String, String)>,
    /// Istio: `gateway` (an ingress gateway) or `sidecar` (inbound on a workload's
    /// sidecar). Defaults to `gateway`.
    pub istio_sidecar: bool,
    /// Istio: how the module is delivered. Defaults to a `WasmPlugin`, or the
    /// `EnvoyFilter` when some route holds the body ([`holds_bodies`]), which needs
    /// `allow_on_headers_stop_iteration`.
    pub istio_delivery: Option<IstioDelivery>,
    /// Envoy Gateway: the `Gateway` the policy attaches to. Defaults to `eg`.
    pub gateway: String,
    /// Envoy Gateway: the xDS name of the gateway's listener that the filter settings are
    /// patched into. Defaults to `NAMESPACE/GATEWAY/http` (Envoy Gateway's listener name
    /// `namespace/gateway/section`); with its `XDSNameSchemeV2` it is `tcp-PORT`.
    pub eg_listener: Option<String>,
    /// The control service's database. Defaults to SQLite.
    pub database: Database,
    /// PostgreSQL: how many replicas. Defaults to 2 (SQLite is always 1).
    pub replicas: u32,
}

impl Default for Options {
    fn default() -> Self {
        let version = env!("CARGO_PKG_VERSION");
        Options {
            namespace: "gatehouse".into(),
            wasm_image: format!("ghcr.io/gatehouse/gatehouse-wasm:{version}"),
            control_image: format!("ghcr.io/gatehouse/gatehouse-control:{version}"),
            control_host: None,
            control_port: 8081,
            selector: vec![("istio".into(), "ingressgateway".into())],
            istio_sidecar: false,
            istio_delivery: None,
            gateway: "eg".into(),
            eg_listener: None,
            database: Database::Sqlite,
            replicas: 2,
        }
    }
}

impl Options {
    /// The control service's host as the proxies address it.
    pub fn control_host(&self) -> String {
        self.control_host
            .clone()
            .unwrap_or_else(|| format!("{}.{}.svc.cluster.local", control::NAME, self.namespace))
    }
}

/// The type of Envoy's Wasm HTTP filter configuration.
pub const WASM_FILTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

/// The name every gatehouse resource shares (plugin name and root id too).
pub const NAME: &str = "gatehouse";

/// The Secret with the proxy's variables (`secret_env_names`), empty for the operator.
pub const PROXY_SECRET: &str = "gatehouse-proxy-env";

/// The manifests for `target`.
pub fn render(target: Target, loaded: &LoadedPolicy, opts: &Options) -> Vec<Value> {
    match target {
        Target::Istio => istio::render(loaded, opts),
        Target::EnvoyGateway => envoy_gateway::render(loaded, opts),
        Target::Control => control::render(loaded, opts),
    }
}

/// The policy as an object: what `pluginConfig` (Istio) and `config` (Envoy Gateway)
/// carry, and what the proxy serializes back to JSON for the module.
pub fn policy_object(loaded: &LoadedPolicy) -> Value {
    serde_json::from_str(&loaded.plugin_config_json).unwrap_or(Value::Null)
}

/// Sets `key` on an object built with `json!` (a no-op on anything else, which never
/// happens: indexing would panic there instead).
fn set(object: &mut Value, key: &str, value: Value) {
    if let Some(map) = object.as_object_mut() {
        map.insert(key.to_string(), value);
    }
}

/// `metadata` with the shared label.
fn metadata(name: &str, opts: &Options) -> Value {
    json!({
        "name": name,
        "namespace": opts.namespace,
        "labels": { "app.kubernetes.io/part-of": NAME },
    })
}

/// The Secret the proxies' environment reads the policy's secrets from: the names as
/// keys, empty values the operator fills (`kubectl create secret ... --dry-run` or a
/// secret manager), never a real token.
fn proxy_secret(loaded: &LoadedPolicy, opts: &Options) -> Option<Value> {
    let names = loaded.policy.secret_env_names();
    if names.is_empty() {
        return None;
    }
    let data: serde_json::Map<String, Value> = names
        .into_iter()
        .map(|n| (n, Value::String(String::new())))
        .collect();
    Some(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(PROXY_SECRET, opts),
        "type": "Opaque",
        "stringData": data,
    }))
}

/// True when some route holds the body before the headers continue: such a policy needs
/// `allow_on_headers_stop_iteration` on the filter.
pub fn holds_bodies(loaded: &LoadedPolicy) -> bool {
    loaded
        .policy
        .routes
        .iter()
        .any(|r| gatehouse_core::body::holds_body(&r.body, r.webhook.is_some()))
}

/// One YAML stream, a document per manifest, each in JSON flow syntax.
pub fn to_yaml(docs: &[Value]) -> String {
    let mut out = String::new();
    for doc in docs {
        out.push_str("---\n");
        out.push_str(&serde_json::to_string_pretty(doc).unwrap_or_default());
        out.push('\n');
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    pub fn load(name: &str) -> LoadedPolicy {
        let path = format!("{}/../policies/{name}", env!("CARGO_MANIFEST_DIR"));
        let source = std::fs::read_to_string(&path).unwrap();
        gatehouse_core::policy::load_yaml(&path, &source).unwrap()
    }

    pub fn kinds(docs: &[Value]) -> Vec<&str> {
        docs.iter().map(|d| d["kind"].as_str().unwrap()).collect()
    }

    #[test]
    fn the_yaml_stream_reads_back_as_the_same_documents() {
        let docs = render(Target::Istio, &load("local.yaml"), &Options::default());
        let yaml = to_yaml(&docs);
        let back: Vec<Value> = yaml
            .split("---\n")
            .filter(|d| !d.trim().is_empty())
            .map(|d| gatehouse_core::policy::yaml::parse(d).unwrap().to_json())
            .collect();
        assert_eq!(back, docs);
    }

    #[test]
    fn secrets_are_named_with_empty_values_never_filled() {
        let s = proxy_secret(&load("local.yaml"), &Options::default()).unwrap();
        assert_eq!(
            s["stringData"],
            json!({ "GATEHOUSE_FEED_TOKEN": "", "GATEHOUSE_JWT_SECRET": "" })
        );
    }

    #[test]
    fn unknown_targets_and_databases_name_the_allowed_values() {
        assert!(
            Target::parse("k8s")
                .unwrap_err()
                .contains("[istio, envoy-gateway, control]")
        );
        assert!(
            Database::parse("mysql")
                .unwrap_err()
                .contains("[sqlite, postgres]")
        );
    }
}
