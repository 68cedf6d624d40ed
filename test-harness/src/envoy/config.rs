//! Renders the Envoy bootstrap (`envoy/envoy.yaml.tmpl`) for one gatehouse listener.
//!
//! Every substituted value is written as a JSON scalar (a quoted string or a number):
//! JSON strings are valid YAML double-quoted scalars, so a policy full of quotes,
//! backslashes or newlines reaches the plugin byte for byte.

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
}

fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

impl Bootstrap {
    /// The bootstrap YAML.
    pub fn render(&self) -> String {
        let env: serde_json::Map<String, serde_json::Value> = self
            .env
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
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
            ("{{WASM_PATH}}", json_str(&self.wasm.to_string_lossy())),
            ("{{WASM_ENV}}", serde_json::Value::Object(env).to_string()),
            (
                "{{WASM_HOST_ENV}}",
                serde_json::Value::from(
                    self.pass_env
                        .iter()
                        // Envoy refuses a name given both ways.
                        .filter(|name| !self.env.iter().any(|(k, _)| k == *name))
                        .cloned()
                        .collect::<Vec<_>>(),
                )
                .to_string(),
            ),
            ("{{PLUGIN_CONFIG}}", json_str(&self.plugin_config_json)),
        ];
        let mut out = TEMPLATE.to_string();
        for (placeholder, value) in substitutions {
            out = out.replace(placeholder, &value);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample() -> Bootstrap {
        Bootstrap {
            listen: "127.0.0.1:10000".parse().unwrap(),
            admin: "127.0.0.1:9901".parse().unwrap(),
            upstream: "127.0.0.1:8080".parse().unwrap(),
            wasm: PathBuf::from("/tmp/gatehouse.wasm"),
            plugin_config_json: r#"{"version":1,"note":"a \"quoted\" \\ value\n"}"#.into(),
            env: vec![("SECRET".into(), "s3cr\"et".into())],
            pass_env: vec!["GATEHOUSE_JWT_SECRET".into(), "SECRET".into()],
        }
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
        let tree = gatehouse::policy::yaml::parse(&yaml).unwrap().to_json();
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
