//! Renders the Envoy bootstrap (`envoy/envoy.yaml.tmpl`) for one gatehouse listener.
//!
//! Every substituted value is written as JSON (a quoted string, a number, a list or a
//! mapping): JSON is valid YAML flow syntax, so a policy full of quotes, backslashes or
//! newlines reaches the plugin byte for byte.
//!
//! A policy with a `feed` section also gets the sync: the same module as a singleton wasm
//! service (`bootstrap_extensions`, root id `gatehouse_sync`, same vm_id and policy) and,
//! when [`Bootstrap::control`] is given, a cluster named by `feed.cluster` for it to poll.
//!
//! A policy whose `security_headers` remove `server` gets `server_header_transformation:
//! PASS_THROUGH`: with Envoy's default (`OVERWRITE`) the connection manager writes
//! `server: envoy` on every response after the filters ran, so the header could never be
//! removed; passed through, the client sees no `server` header at all.
//!
//! The wasm filter allows `StopIteration` on headers (`allow_on_headers_stop_iteration`),
//! which webhook and JSON routes need to read the body before the upstream sees anything,
//! and the listener's `per_connection_buffer_limit_bytes` is raised to twice the largest
//! body such a route may hold ([`gatehouse_core::body::envoy_buffer_limit`]), so Envoy's own
//! 413 never undercuts the policy's.
//!
//! The connection manager takes the client address from the connection
//! (`use_remote_address: true`), never from a client-sent `x-forwarded-for`, and leaves
//! that header as the proxies in front wrote it (`skip_xff_append`), which is what the
//! policy's `rate_limit.trusted_proxies` counts. Header names with `_` are refused
//! (`headers_with_underscores_action: REJECT_REQUEST`): CGI-style upstreams read `_` as
//! `-`, so `x_gatehouse_user` would be an identity header to them. Envoy's own refusals (400, 408, 413,
//! 431, 5xx) get the standard JSON body through `local_reply_config`; gatehouse's replies,
//! which always carry a content-type, pass untouched.

use std::net::SocketAddr;
use std::path::PathBuf;

const TEMPLATE: &str = include_str!("../../../envoy/envoy.yaml.tmpl");

/// What the bootstrap is made from.
#[derive(Clone, Debug)]
pub struct Bootstrap {
    /// The gatehouse listener. Port 0 lets the kernel pick; read it back from the admin.
    pub listen: SocketAddr,
    /// The admin interface (`/ready`, `/listeners`, stats).
    pub admin: SocketAddr,
    /// Where every request that passes the filter goes.
    pub upstream: SocketAddr,
    /// `gatehouse.wasm`; Envoy needs an absolute path or one relative to its cwd.
    pub wasm: PathBuf,
    /// The plugin configuration: the policy as JSON (`LoadedPolicy::plugin_config_json`).
    pub plugin_config_json: String,
    /// Environment variables the wasm VM sees, with their values (test fixtures).
    pub env: Vec<(String, String)>,
    /// Environment variables Envoy passes from its own environment to the VM
    /// (`host_env_keys`): secrets named by the policy, which so never land in this file.
    pub pass_env: Vec<String>,
    /// The control service, for a policy with a `feed` section: the endpoints of the
    /// cluster the sync polls (named by the policy's `feed.cluster`), one per replica,
    /// taken in turn. Empty: no such cluster.
    pub control: Vec<SocketAddr>,
    /// Filter-only mode: no singleton service (`bootstrap_extensions` empty, as Istio's
    /// `WasmPlugin` and Envoy Gateway generate), and the feed token passed to the filter's
    /// VM, whose workers then run the sync under a lease (`core/src/sync/lease.rs`).
    /// Otherwise only the singleton gets the feed token.
    pub filter_only: bool,
    /// The Wasm filter's whole `typed_config`, as a control plane would deliver it (the
    /// render tests run Istio's and Envoy Gateway's filter configurations this way).
    /// `None`: the template's filter.
    pub filter_config: Option<serde_json::Value>,
}

/// The sync's root id: the shell runs the feed sync under it (`src/shell.rs`).
pub const SYNC_ROOT_ID: &str = "gatehouse_sync";

fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

impl Bootstrap {
    /// The bootstrap YAML.
    pub fn render(&self) -> String {
        use serde_json::{Value, json};
        let env: serde_json::Map<String, Value> = self
            .env
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let host_env = Value::from(
            self.pass_env
                .iter()
                // Envoy refuses a name given both ways.
                .filter(|name| !self.env.iter().any(|(k, _)| k == *name))
                .cloned()
                .collect::<Vec<_>>(),
        );
        let wasm = self.wasm.to_string_lossy().to_string();
        let policy =
            gatehouse_core::policy::Policy::from_json(self.plugin_config_json.as_bytes()).ok();
        // Envoy writes `server: envoy` after every filter unless told to pass the header
        // through: a policy that removes `server` must get no header at all.
        let server_header = if policy
            .as_ref()
            .is_some_and(gatehouse_core::response::removes_server_header)
        {
            "PASS_THROUGH"
        } else {
            "OVERWRITE"
        };
        let buffer_limit =
            policy
                .as_ref()
                .map_or(gatehouse_core::body::ENVOY_DEFAULT_BUFFER_LIMIT, |p| {
                    gatehouse_core::body::envoy_buffer_limit(
                        p.routes.iter().map(|r| (&r.body, r.webhook.is_some())),
                    )
                });
        let feed = policy.and_then(|p| p.feed);
        // The filter's VM gets the feed token only when its workers run the sync.
        let filter_host_env = match (&feed, self.filter_only) {
            (Some(feed), false) => Value::from(
                host_env
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|name| name.as_str() != Some(feed.token_env.as_str()))
                    .cloned()
                    .collect::<Vec<_>>(),
            ),
            _ => host_env.clone(),
        };
        let extensions = match &feed {
            None => json!([]),
            Some(_) if self.filter_only => json!([]),
            Some(_) => json!([{
                "name": "envoy.bootstrap.wasm",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.wasm.v3.WasmService",
                    "singleton": true,
                    "config": {
                        "name": SYNC_ROOT_ID,
                        "root_id": SYNC_ROOT_ID,
                        "vm_config": {
                            "vm_id": "gatehouse",
                            "runtime": "envoy.wasm.runtime.v8",
                            "code": { "local": { "filename": wasm } },
                            "environment_variables": {
                                "host_env_keys": host_env,
                                "key_values": env,
                            },
                        },
                        "configuration": {
                            "@type": "type.googleapis.com/google.protobuf.StringValue",
                            "value": self.plugin_config_json,
                        },
                    },
                },
            }]),
        };
        let endpoints: Vec<Value> = self
            .control
            .iter()
            .map(|addr| {
                json!({ "endpoint": { "address": { "socket_address": {
                    "address": addr.ip().to_string(),
                    "port_value": addr.port(),
                } } } })
            })
            .collect();
        let control_cluster = match &feed {
            Some(feed) if !endpoints.is_empty() => format!(
                "- {}",
                json!({
                    "name": feed.cluster,
                    "connect_timeout": "2s",
                    "type": "STATIC",
                    "load_assignment": {
                        "cluster_name": feed.cluster,
                        "endpoints": [ { "lb_endpoints": endpoints } ],
                    },
                })
            ),
            _ => "# (no feed, or no control address: no control cluster)".to_string(),
        };
        let substitutions = [
            ("{{ADMIN_ADDRESS}}", json_str(&self.admin.ip().to_string())),
            ("{{ADMIN_PORT}}", self.admin.port().to_string()),
            (
                "{{LISTEN_ADDRESS}}",
                json_str(&self.listen.ip().to_string()),
            ),
            ("{{LISTEN_PORT}}", self.listen.port().to_string()),
            (
                "{{UPSTREAM_ADDRESS}}",
                json_str(&self.upstream.ip().to_string()),
            ),
            ("{{UPSTREAM_PORT}}", self.upstream.port().to_string()),
            ("{{WASM_PATH}}", json_str(&wasm)),
            ("{{WASM_ENV}}", Value::Object(env).to_string()),
            ("{{WASM_HOST_ENV}}", filter_host_env.to_string()),
            ("{{PLUGIN_CONFIG}}", json_str(&self.plugin_config_json)),
            ("{{BOOTSTRAP_EXTENSIONS}}", extensions.to_string()),
            ("{{CONTROL_CLUSTER}}", control_cluster),
            ("{{SERVER_HEADER}}", json_str(server_header)),
            ("{{BUFFER_LIMIT}}", buffer_limit.to_string()),
        ];
        let mut out = TEMPLATE.to_string();
        for (placeholder, value) in substitutions {
            out = out.replace(placeholder, &value);
        }
        match &self.filter_config {
            None => out,
            Some(config) => with_filter_config(&out, &self.with_fixture_env(config)),
        }
    }
}

impl Bootstrap {
    /// `config` with [`Bootstrap::env`] as the VM's `key_values`, as the template's
    /// filter has them (test fixtures), and dropped from `host_env_keys` (Envoy refuses a
    /// name given both ways).
    fn with_fixture_env(&self, config: &serde_json::Value) -> serde_json::Value {
        let mut config = config.clone();
        if self.env.is_empty() {
            return config;
        }
        let Some(vm) = config
            .pointer_mut("/config/vm_config")
            .and_then(serde_json::Value::as_object_mut)
        else {
            return config;
        };
        let Some(vars) = vm
            .entry("environment_variables")
            .or_insert_with(|| serde_json::json!({}))
            .as_object_mut()
        else {
            return config;
        };
        if let Some(keys) = vars
            .get_mut("host_env_keys")
            .and_then(serde_json::Value::as_array_mut)
        {
            keys.retain(|k| !self.env.iter().any(|(name, _)| k == name.as_str()));
        }
        let values: serde_json::Map<_, _> = self
            .env
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        vars.insert("key_values".into(), values.into());
        config
    }
}

/// `bootstrap` with the gatehouse filter's `typed_config` replaced, written as JSON
/// (which Envoy reads as YAML); `bootstrap` unchanged if it does not parse, which the
/// template always does.
fn with_filter_config(bootstrap: &str, config: &serde_json::Value) -> String {
    let Ok(tree) = gatehouse_core::policy::yaml::parse(bootstrap) else {
        return bootstrap.to_string();
    };
    let mut tree = tree.to_json();
    if let Some(slot) = tree
        .pointer_mut("/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/http_filters/0/typed_config")
    {
        *slot = config.clone();
    }
    serde_json::to_string_pretty(&tree).unwrap_or_else(|_| bootstrap.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::Value;

    fn sample() -> Bootstrap {
        Bootstrap {
            listen: "127.0.0.1:10000".parse().unwrap(),
            admin: "127.0.0.1:9901".parse().unwrap(),
            upstream: "127.0.0.1:8080".parse().unwrap(),
            wasm: PathBuf::from("/tmp/gatehouse.wasm"),
            plugin_config_json: r#"{"version":1,"note":"a \"quoted\" \\ value\n"}"#.into(),
            env: vec![("SECRET".into(), "s3cr\"et".into())],
            pass_env: vec!["GATEHOUSE_JWT_SECRET".into(), "SECRET".into()],
            control: Vec::new(),
            filter_only: false,
            filter_config: None,
        }
    }

    /// The filter's `host_env_keys` and the bootstrap extensions of `b`, rendered.
    fn filter_env_and_extensions(b: &Bootstrap) -> (serde_json::Value, serde_json::Value) {
        let tree = gatehouse_core::policy::yaml::parse(&b.render())
            .unwrap()
            .to_json();
        let filter = &tree["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            ["http_filters"][0]["typed_config"]["config"];
        (
            filter["vm_config"]["environment_variables"]["host_env_keys"].clone(),
            tree["bootstrap_extensions"].clone(),
        )
    }

    #[test]
    fn a_given_filter_config_replaces_the_filter_and_keeps_the_fixture_env() {
        let mut b = sample();
        b.filter_config = Some(serde_json::json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "from-a-control-plane",
                "vm_config": { "environment_variables": { "host_env_keys": ["SECRET", "OTHER"] } },
            },
        }));
        let tree = gatehouse_core::policy::yaml::parse(&b.render())
            .unwrap()
            .to_json();
        let filter = &tree["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            ["http_filters"][0]["typed_config"]["config"];
        assert_eq!(filter["name"], "from-a-control-plane");
        assert!(filter.get("allow_on_headers_stop_iteration").is_none());
        let vars = &filter["vm_config"]["environment_variables"];
        assert_eq!(vars["host_env_keys"], serde_json::json!(["OTHER"]));
        assert_eq!(vars["key_values"]["SECRET"], "s3cr\"et");
        // The rest of the bootstrap is the template's.
        assert_eq!(
            tree["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"],
            10000
        );
    }

    #[test]
    fn filter_only_mode_has_no_singleton_and_hands_the_filter_the_feed_token() {
        let mut b = sample();
        b.plugin_config_json = r#"{"version":1,"routes":[{"match":{"path_prefix":"/"}}],
            "feed":{"cluster":"control","token_env":"FEED_TOKEN"}}"#
            .into();
        b.pass_env.push("FEED_TOKEN".into());
        b.control = vec!["127.0.0.1:8081".parse().unwrap()];
        let (env, ext) = filter_env_and_extensions(&b);
        assert_eq!(ext.as_array().unwrap().len(), 1, "the singleton");
        assert_eq!(
            env,
            serde_json::json!(["GATEHOUSE_JWT_SECRET"]),
            "no feed token"
        );
        b.filter_only = true;
        let (env, ext) = filter_env_and_extensions(&b);
        assert_eq!(ext, serde_json::json!([]));
        assert_eq!(
            env,
            serde_json::json!(["GATEHOUSE_JWT_SECRET", "FEED_TOKEN"])
        );
        let tree = gatehouse_core::policy::yaml::parse(&b.render())
            .unwrap()
            .to_json();
        let clusters = tree["static_resources"]["clusters"].as_array().unwrap();
        assert!(
            clusters.iter().any(|c| c["name"] == "control"),
            "still polled"
        );
    }

    #[test]
    fn without_a_feed_there_is_no_sync_and_no_control_cluster() {
        let yaml = sample().render();
        let tree = gatehouse_core::policy::yaml::parse(&yaml)
            .unwrap()
            .to_json();
        assert_eq!(tree["bootstrap_extensions"], serde_json::json!([]));
        assert_eq!(
            tree["static_resources"]["clusters"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn a_feed_adds_the_sync_service_and_the_control_cluster() {
        let mut b = sample();
        b.plugin_config_json = serde_json::json!({
            "version": 1,
            "routes": [ { "match": { "path_prefix": "/" } } ],
            "feed": { "cluster": "gatehouse_control", "token_env": "GATEHOUSE_FEED_TOKEN" }
        })
        .to_string();
        b.control = vec!["127.0.0.1:7070".parse().unwrap()];
        let yaml = b.render();
        let tree = gatehouse_core::policy::yaml::parse(&yaml)
            .unwrap()
            .to_json();
        let sync = &tree["bootstrap_extensions"][0]["typed_config"];
        assert_eq!(sync["singleton"], true);
        assert_eq!(sync["config"]["root_id"], SYNC_ROOT_ID);
        assert_eq!(sync["config"]["vm_config"]["vm_id"], "gatehouse");
        assert_eq!(
            sync["config"]["configuration"]["value"],
            b.plugin_config_json.as_str()
        );
        assert_eq!(
            sync["config"]["vm_config"]["environment_variables"]["key_values"]["SECRET"],
            "s3cr\"et"
        );
        let clusters = tree["static_resources"]["clusters"].as_array().unwrap();
        assert_eq!(clusters.len(), 2);
        assert_eq!(clusters[0]["name"], "gatehouse_control");
        assert_eq!(
            clusters[0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["socket_address"]["port_value"],
            7070
        );
    }

    #[test]
    fn each_control_replica_is_an_endpoint_of_the_control_cluster() {
        let mut b = sample();
        b.plugin_config_json = serde_json::json!({
            "version": 1,
            "routes": [ { "match": { "path_prefix": "/" } } ],
            "feed": { "cluster": "gatehouse_control", "token_env": "GATEHOUSE_FEED_TOKEN" }
        })
        .to_string();
        b.control = vec![
            "127.0.0.1:7070".parse().unwrap(),
            "127.0.0.1:7071".parse().unwrap(),
        ];
        let tree = gatehouse_core::policy::yaml::parse(&b.render())
            .unwrap()
            .to_json();
        let cluster = &tree["static_resources"]["clusters"][0];
        let ports: Vec<&Value> = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["endpoint"]["address"]["socket_address"]["port_value"])
            .collect();
        assert_eq!(ports, [7070, 7071]);
    }

    #[test]
    fn the_buffer_limit_follows_the_largest_held_body_and_headers_may_stop() {
        let limit = |config: &str| {
            let mut b = sample();
            b.plugin_config_json = config.to_string();
            let tree = gatehouse_core::policy::yaml::parse(&b.render())
                .unwrap()
                .to_json();
            let listener = &tree["static_resources"]["listeners"][0];
            let wasm = &listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
                [0]["typed_config"]["config"];
            assert_eq!(wasm["allow_on_headers_stop_iteration"], true);
            listener["per_connection_buffer_limit_bytes"]
                .as_u64()
                .unwrap()
        };
        assert_eq!(limit("not a policy"), 1 << 20);
        let held = serde_json::json!({
            "routes": [
                { "match": { "path": "/big" }, "body": { "max_bytes": "100MB" } },
                {
                    "match": { "path": "/hook" },
                    "body": { "max_bytes": "4MB" },
                    "webhook": { "provider": "github", "secrets_env": ["S"] }
                }
            ]
        });
        assert_eq!(limit(&held.to_string()), 8 << 20);
    }

    #[test]
    fn the_client_address_is_the_connections_and_envoys_own_refusals_are_json() {
        let tree = gatehouse_core::policy::yaml::parse(&sample().render())
            .unwrap()
            .to_json();
        let hcm = &tree["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
        assert_eq!(hcm["use_remote_address"], true);
        assert_eq!(hcm["skip_xff_append"], true);
        assert_eq!(
            hcm["common_http_protocol_options"]["headers_with_underscores_action"],
            "REJECT_REQUEST"
        );
        let mappers = hcm["local_reply_config"]["mappers"].as_array().unwrap();
        let mut codes = Vec::new();
        for m in mappers {
            let expression = m["filter"]["extension_filter"]["typed_config"]["expression"]
                .as_str()
                .unwrap();
            // gatehouse's own replies always have a content-type: never rewritten.
            assert!(
                expression.contains("!('content-type' in response.headers)"),
                "{expression}"
            );
            let body = &m["body_format_override"];
            assert_eq!(body["content_type"], "application/json");
            // The standard body's four fields (listed here in serde_json's sorted order).
            let fields: Vec<&String> = body["json_format"].as_object().unwrap().keys().collect();
            assert_eq!(fields, ["code", "error", "request_id", "timestamp"]);
            codes.push(body["json_format"]["code"].as_str().unwrap().to_string());
        }
        assert_eq!(
            codes,
            [
                "BAD_REQUEST",
                "REQUEST_TIMEOUT",
                "PAYLOAD_TOO_LARGE",
                "HEADERS_TOO_LARGE",
                "UPSTREAM_ERROR",
                "BAD_REQUEST"
            ]
        );
    }

    #[test]
    fn every_placeholder_is_replaced() {
        let yaml = sample().render();
        assert!(!yaml.contains("{{"), "{yaml}");
        assert!(yaml.contains("port_value: 10000"));
        assert!(yaml.contains("port_value: 9901"));
        assert!(yaml.contains("port_value: 8080"));
        assert!(yaml.contains("vm_id: gatehouse"));
        assert!(yaml.contains("envoy.wasm.runtime.v8"));
    }

    #[test]
    fn the_plugin_configuration_survives_yaml_quoting() {
        let b = sample();
        let yaml = b.render();
        let tree = gatehouse_core::policy::yaml::parse(&yaml)
            .unwrap()
            .to_json();
        let wasm = &tree["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            ["http_filters"][0]["typed_config"]["config"];
        assert_eq!(
            wasm["configuration"]["value"],
            b.plugin_config_json.as_str()
        );
        assert_eq!(
            wasm["vm_config"]["code"]["local"]["filename"],
            "/tmp/gatehouse.wasm"
        );
        assert_eq!(
            wasm["vm_config"]["environment_variables"]["key_values"]["SECRET"],
            "s3cr\"et"
        );
    }
}
