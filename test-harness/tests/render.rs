//! `gatehouse-harness render`: every target's manifests for real policies, checked
//! against the schemas their APIs define, and the Istio render's plugin configuration
//! run through every case file in a real Envoy configured as Istio configures it
//! (filter-only: HTTP filters, no singleton service).
//!
//! - Core kinds (Deployment, Service, PodDisruptionBudget, Secret, PersistentVolumeClaim):
//!   `kubernetes-validate --strict` (PyPI, pinned in the Makefile; its bundled Kubernetes
//!   schemas, offline), from `.venv` or `$GATEHOUSE_KUBERNETES_VALIDATE`.
//! - Istio and Envoy Gateway kinds: [`documented_fields`], the fields (and enums) their
//!   CRDs define for what we render, read from istio/api
//!   `kubernetes/customresourcedefinitions.gen.yaml` at b8f8791d9653b2edc77a071d48887e582cfe84bf
//!   and envoyproxy/gateway `charts/gateway-helm/charts/crds/crds/generated/
//!   gateway.envoyproxy.io_{envoyextensionpolicies,clienttrafficpolicies,envoypatchpolicies}.yaml`
//!   at d32f28294245e454d20f81d323d626a90e660c1e. With `$GATEHOUSE_CRD_SCHEMAS` (a JSON
//!   map `GROUP/VERSION/KIND` -> `openAPIV3Schema` from those files) the manifests are
//!   also validated against the full schemas (`tools/crd_validate.py`).
//! - The feed through Istio's cluster name: `policies/local.yaml` rendered for Istio, in a
//!   filter-only Envoy whose control cluster has that name (`outbound|PORT||HOST`), gets
//!   a key issued by a real `gatehouse-control` (which `cargo test --workspace` builds).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use gatehouse_core::policy::LoadedPolicy;
use gatehouse_harness::cases::{self, BackendKind, CaseOutcome, PluginSource, RunOptions};
use gatehouse_harness::envoy::control::{ControlOptions, ControlService};
use gatehouse_harness::envoy::http1::ClientRequest;
use gatehouse_harness::envoy::{Envoy, EnvoyOptions, FeedLink, workspace_root};
use gatehouse_harness::render::{self, Database, Options, Target};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[allow(dead_code, reason = "the shared suite helpers this file does not use")]
mod common;

fn load(path: &Path) -> LoadedPolicy {
    let source = std::fs::read_to_string(path).unwrap();
    gatehouse_core::policy::load_yaml(&path.display().to_string(), &source).unwrap()
}

fn policy(name: &str) -> LoadedPolicy {
    load(&workspace_root().join("policies").join(name))
}

/// Every render the CLI can make for two policies (one with a feed, one holding bodies).
fn every_render() -> Vec<(String, Vec<Value>)> {
    let mut out = Vec::new();
    for name in ["local.yaml", "webhooks.yaml"] {
        let loaded = policy(name);
        let sidecar = Options {
            istio_sidecar: true,
            selector: vec![("app".into(), "api".into())],
            ..Options::default()
        };
        let postgres = Options {
            database: Database::Postgres,
            replicas: 3,
            ..Options::default()
        };
        for (label, target, opts) in [
            ("istio", Target::Istio, Options::default()),
            ("istio-sidecar", Target::Istio, sidecar),
            ("envoy-gateway", Target::EnvoyGateway, Options::default()),
            ("control-sqlite", Target::Control, Options::default()),
            ("control-postgres", Target::Control, postgres),
        ] {
            out.push((
                format!("{name}-{label}"),
                render::render(target, &loaded, &opts),
            ));
        }
    }
    out
}

fn is_core(doc: &Value) -> bool {
    matches!(
        doc["apiVersion"].as_str(),
        Some("v1" | "apps/v1" | "policy/v1")
    )
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gatehouse-render-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn kubernetes_validate() -> PathBuf {
    std::env::var_os("GATEHOUSE_KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/kubernetes-validate"))
}

/// `kubernetes-validate --strict` over `files`: Ok, or its output.
fn validate_core(files: &[PathBuf]) -> Result<(), String> {
    let tool = kubernetes_validate();
    let out = Command::new(&tool)
        .args(["--strict", "--quiet"])
        .args(files)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}; `make kubernetes-validate` installs it",
                tool.display()
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && !text.contains("ERROR") {
        Ok(())
    } else {
        Err(text)
    }
}

#[test]
fn core_kinds_pass_the_kubernetes_schemas() {
    let dir = scratch("core");
    let mut files = Vec::new();
    for (label, docs) in every_render() {
        let core: Vec<Value> = docs.into_iter().filter(is_core).collect();
        if core.is_empty() {
            continue;
        }
        let path = dir.join(format!("{label}.yaml"));
        std::fs::write(&path, render::to_yaml(&core)).unwrap();
        files.push(path);
    }
    assert!(files.len() >= 4, "{files:?}");
    if let Err(why) = validate_core(&files) {
        panic!("kubernetes-validate refused the rendered manifests:\n{why}");
    }
    // The validator does refuse: a misspelt field fails.
    let mut broken = render::control::deployment(&Options::default());
    broken["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = json!({});
    let path = dir.join("broken.yaml");
    std::fs::write(&path, render::to_yaml(&[broken])).unwrap();
    assert!(validate_core(&[path]).is_err(), "a bad field passed");
}

/// What the CRDs define for the fields we render. A shape is `"string"`, `"integer"`,
/// `"boolean"`, `"map"` (string to string), `"any"` (a free-form object the CRD leaves
/// open: `pluginConfig`, `config`, patch values), a list of allowed strings (an enum),
/// `"json"` (any JSON value: `apiextensionsv1.JSON`), `{"[]": shape}` for a list, or an object of the allowed keys.
fn documented_fields(api_version: &str, kind: &str) -> Option<Value> {
    let target_ref =
        json!({ "group": "string", "kind": "string", "name": "string", "namespace": "string" });
    let spec = match (api_version, kind) {
        ("extensions.istio.io/v1alpha1", "WasmPlugin") => json!({
            "selector": { "matchLabels": "map" },
            "targetRef": target_ref, "targetRefs": { "[]": target_ref },
            "url": "string", "sha256": "string",
            "imagePullPolicy": ["UNSPECIFIED_POLICY", "IfNotPresent", "Always"],
            "imagePullSecret": "string", "verificationKey": "string",
            "pluginConfig": "any", "pluginName": "string",
            "phase": ["UNSPECIFIED_PHASE", "AUTHN", "AUTHZ", "STATS"],
            "priority": "integer",
            "failStrategy": ["FAIL_CLOSE", "FAIL_OPEN", "FAIL_RELOAD"],
            "vmConfig": { "env": { "[]": {
                "name": "string", "valueFrom": ["INLINE", "HOST"], "value": "string"
            } } },
            "type": ["UNSPECIFIED_PLUGIN_TYPE", "HTTP", "NETWORK"],
        }),
        ("networking.istio.io/v1alpha3", "EnvoyFilter") => json!({
            "workloadSelector": { "labels": "map" },
            "priority": "integer",
            "configPatches": { "[]": {
                "applyTo": ["INVALID", "LISTENER", "FILTER_CHAIN", "NETWORK_FILTER", "HTTP_FILTER",
                    "ROUTE_CONFIGURATION", "VIRTUAL_HOST", "HTTP_ROUTE", "CLUSTER",
                    "EXTENSION_CONFIG", "BOOTSTRAP", "LISTENER_FILTER"],
                "match": {
                    "context": ["ANY", "SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY", "WAYPOINT"],
                    "listener": { "portNumber": "integer", "filterChain": {
                        "filter": { "name": "string", "subFilter": { "name": "string" } }
                    } },
                },
                "patch": {
                    "operation": ["INVALID", "MERGE", "ADD", "REMOVE", "INSERT_BEFORE",
                        "INSERT_AFTER", "INSERT_FIRST", "REPLACE", "MERGE_AND_REPLACE_LIST"],
                    "value": "any",
                },
            } },
        }),
        ("networking.istio.io/v1", "ServiceEntry") => json!({
            "hosts": { "[]": "string" },
            "location": ["MESH_EXTERNAL", "MESH_INTERNAL"],
            "resolution": ["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS"],
            "ports": { "[]": { "number": "integer", "name": "string", "protocol": "string", "targetPort": "integer" } },
            "exportTo": { "[]": "string" },
        }),
        ("networking.istio.io/v1", "DestinationRule") => json!({
            "host": "string",
            "exportTo": { "[]": "string" },
            "trafficPolicy": {
                "connectionPool": {
                    "tcp": { "connectTimeout": "string", "idleTimeout": "string", "maxConnections": "integer" },
                    "http": { "idleTimeout": "string", "http2MaxRequests": "integer", "maxRequestsPerConnection": "integer" },
                },
                "tls": { "mode": ["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"] },
            },
        }),
        ("gateway.envoyproxy.io/v1alpha1", "EnvoyExtensionPolicy") => json!({
            "targetRefs": { "[]": { "group": "string", "kind": "string", "name": "string" } },
            "wasm": { "[]": {
                "name": "string", "rootID": "string",
                "code": {
                    "type": "string",
                    "image": { "url": "string", "sha256": "string" },
                    "http": { "url": "string", "sha256": "string" },
                    "pullPolicy": ["IfNotPresent", "Always"],
                },
                "config": "any", "failOpen": "boolean",
                "env": { "hostKeys": { "[]": "string" } },
            } },
        }),
        ("gateway.envoyproxy.io/v1alpha1", "ClientTrafficPolicy") => json!({
            "targetRefs": { "[]": { "group": "string", "kind": "string", "name": "string" } },
            "headers": { "withUnderscoresAction": ["Allow", "RejectRequest", "DropHeader"] },
        }),
        ("gateway.envoyproxy.io/v1alpha1", "EnvoyPatchPolicy") => json!({
            "targetRef": { "group": "string", "kind": "string", "name": "string" },
            "type": ["JSONPatch"],
            "priority": "integer",
            "jsonPatches": { "[]": {
                "type": ["type.googleapis.com/envoy.config.listener.v3.Listener",
                    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
                    "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
                    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"],
                "name": "string",
                "operation": {
                    "op": ["add", "remove", "replace", "move", "copy", "test"],
                    "path": "string", "jsonPath": "string", "from": "string", "value": "json",
                },
            } },
        }),
        _ => return None,
    };
    Some(spec)
}

/// Every way `value` strays from `shape`, as `path: what`.
fn stray(path: &str, value: &Value, shape: &Value, out: &mut Vec<String>) {
    let ok = match (shape, value) {
        (Value::String(t), _) => match t.as_str() {
            "string" => value.is_string(),
            "integer" => value.is_u64() || value.is_i64(),
            "boolean" => value.is_boolean(),
            "any" => value.is_object(),
            "json" => true,
            "map" => value
                .as_object()
                .is_some_and(|m| m.values().all(Value::is_string)),
            other => panic!("unknown shape {other}"),
        },
        (Value::Array(allowed), Value::String(s)) => allowed.iter().any(|a| a == s),
        (Value::Object(fields), _) if fields.contains_key("[]") => match value.as_array() {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    stray(&format!("{path}[{i}]"), item, &fields["[]"], out);
                }
                true
            }
            None => false,
        },
        (Value::Object(fields), Value::Object(map)) => {
            for (k, v) in map {
                match fields.get(k) {
                    Some(s) => stray(&format!("{path}.{k}"), v, s, out),
                    None => out.push(format!("{path}.{k}: not a field the CRD defines")),
                }
            }
            true
        }
        _ => false,
    };
    if !ok {
        out.push(format!("{path}: {value} is not {shape}"));
    }
}

#[test]
fn istio_and_envoy_gateway_resources_use_only_documented_fields() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for (label, docs) in every_render() {
        for doc in docs.iter().filter(|d| !is_core(d)) {
            let (api, kind) = (
                doc["apiVersion"].as_str().unwrap(),
                doc["kind"].as_str().unwrap(),
            );
            let Some(spec) = documented_fields(api, kind) else {
                problems.push(format!(
                    "{label}: {api} {kind}: no documented fields listed"
                ));
                continue;
            };
            let top: Vec<&String> = doc.as_object().unwrap().keys().collect();
            assert_eq!(top, ["apiVersion", "kind", "metadata", "spec"], "{label}");
            stray(
                &format!("{label}: {kind}.spec"),
                &doc["spec"],
                &spec,
                &mut problems,
            );
            checked += 1;
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(checked >= 10, "{checked}");
    // The check does refuse: a field the CRD does not define fails.
    let mut bad = Vec::new();
    let plugin = render::istio::wasm_plugin(&policy("local.yaml"), &Options::default());
    let mut spec = plugin["spec"].clone();
    spec["vmConfig"]["env"][0]["valueFrom"] = json!("SECRET");
    spec["failurePolicy"] = json!("FAIL_RELOAD");
    stray(
        "spec",
        &spec,
        &documented_fields(plugin["apiVersion"].as_str().unwrap(), "WasmPlugin").unwrap(),
        &mut bad,
    );
    assert_eq!(bad.len(), 2, "{bad:?}");
}

/// With the CRDs' own schemas at hand (`$GATEHOUSE_CRD_SCHEMAS`), the full validation.
#[test]
fn istio_and_envoy_gateway_resources_pass_their_crd_schemas_when_given() {
    let Some(schemas) = std::env::var_os("GATEHOUSE_CRD_SCHEMAS") else {
        eprintln!("GATEHOUSE_CRD_SCHEMAS not set: the documented-fields test stands in");
        return;
    };
    let dir = scratch("crd");
    let mut files = Vec::new();
    for (label, docs) in every_render() {
        let path = dir.join(format!("{label}.yaml"));
        std::fs::write(&path, render::to_yaml(&docs)).unwrap();
        files.push(path);
    }
    let python = kubernetes_validate().with_file_name("python");
    let out = Command::new(python)
        .arg(workspace_root().join("tools/crd_validate.py"))
        .arg(schemas)
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The module as the Istio agent (or Envoy Gateway's Wasm cache) hands it to Envoy: a
/// local file in place of the remote `oci://` code.
fn local_code() -> Value {
    let wasm = std::fs::canonicalize(gatehouse_harness::envoy::default_wasm()).unwrap();
    json!({ "local": { "filename": wasm } })
}

/// The Wasm filter configuration Envoy gets from this Istio render: the `EnvoyFilter`'s
/// extension config with the code the agent pulled, or, for a `WasmPlugin`, what Istio
/// builds from it (istio/istio `pilot/pkg/model/extensions.go`: name, root id, the
/// `pluginConfig` as a string, `vmConfig.env` `HOST` names as `host_env_keys`, the fail
/// strategy; nothing else, so no `allow_on_headers_stop_iteration`).
fn istio_filter_config(docs: &[Value]) -> Value {
    let mut config = match docs.iter().find(|d| d["kind"] == "WasmPlugin") {
        Some(plugin) => {
            let spec = &plugin["spec"];
            let names: Vec<Value> = spec["vmConfig"]["env"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| e["name"].clone())
                .collect();
            json!({
                "@type": render::WASM_FILTER_TYPE,
                "config": {
                    "name": format!("{}.{}", plugin["metadata"]["namespace"].as_str().unwrap(), spec["pluginName"].as_str().unwrap()),
                    "root_id": spec["pluginName"],
                    "failure_policy": spec["failStrategy"],
                    "vm_config": {
                        "runtime": "envoy.wasm.runtime.v8",
                        "environment_variables": { "host_env_keys": names },
                    },
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": spec["pluginConfig"].to_string(),
                    },
                },
            })
        }
        None => {
            let filter = docs.iter().find(|d| d["kind"] == "EnvoyFilter").unwrap();
            let patch = filter["spec"]["configPatches"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["applyTo"] == "EXTENSION_CONFIG")
                .unwrap();
            patch["patch"]["value"]["typed_config"].clone()
        }
    };
    config["config"]["vm_config"]["code"] = local_code();
    config
}

/// Every case file whose plugin is a policy file, through a real filter-only Envoy whose
/// gatehouse filter is `filter_config(policy)`; the others as they are.
fn every_case_file_passes_with(filter_config: impl Fn(&LoadedPolicy) -> Value) {
    let mut failures = Vec::new();
    let mut passed = 0;
    for path in common::cases_files() {
        let mut file = cases::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let mut opts = RunOptions {
            filter_only: true,
            ..RunOptions::default()
        };
        if let PluginSource::Policy(policy_path) = &file.plugin {
            let config = filter_config(&load(policy_path));
            let policy = config["config"]["configuration"]["value"].as_str().unwrap();
            file.plugin = PluginSource::Raw(policy.to_string());
            opts.filter_config = Some(config);
        }
        let results = cases::run_file(&file, BackendKind::Envoy, &opts)
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        for r in results {
            match &r.outcome {
                CaseOutcome::Passed => passed += 1,
                CaseOutcome::Failed(why) => failures.push(format!("{}\n{why}", r.line())),
                CaseOutcome::Skipped => {}
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(passed > 0, "no case ran");
}

/// The plain-Envoy equivalent of the Istio deployment: each case file's policy rendered
/// for Istio, the Wasm filter configuration Envoy would get from it (a `WasmPlugin`, or
/// the `EnvoyFilter`'s own for policies that hold bodies), in the filter-only bootstrap,
/// through every case file in a real Envoy.
#[test]
fn the_istio_render_passes_every_case_file_in_a_filter_only_envoy() {
    every_case_file_passes_with(|loaded| {
        istio_filter_config(&render::render(Target::Istio, loaded, &Options::default()))
    });
}

/// Why a policy that holds bodies is not delivered as a `WasmPlugin`: with the filter
/// Istio builds from one, a webhook's body never reaches the module, and the request
/// gets no answer (until Envoy's stream timeout, minutes later); with the `EnvoyFilter`'s
/// filter the wrong signature is refused at once.
#[test]
fn under_a_wasm_plugin_a_held_body_never_reaches_the_module() {
    let loaded = policy("webhooks.yaml");
    let forced = Options {
        istio_delivery: Some(render::IstioDelivery::WasmPlugin),
        ..Options::default()
    };
    let answered_within = |opts: &Options| {
        let config = istio_filter_config(&render::render(Target::Istio, &loaded, opts));
        let envoy_opts = EnvoyOptions {
            filter_only: true,
            filter_config: Some(config),
            env: loaded
                .policy
                .secret_env_names()
                .into_iter()
                .map(|name| (name, "whsec_render_test_0123456789".into()))
                .collect(),
            ..EnvoyOptions::new(loaded.plugin_config_json.clone())
        };
        let envoy = Envoy::start(&envoy_opts).unwrap_or_else(|e| panic!("{e:#}"));
        let mut stream = std::net::TcpStream::connect(envoy.listener_addr()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        use std::io::{Read, Write};
        let body = br#"{"event":"ping"}"#;
        // A well-formed, current, wrongly signed Stripe signature: only the body can
        // tell it is wrong.
        #[allow(clippy::disallowed_methods, reason = "the signature's timestamp")]
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        write!(
            stream,
            "POST /webhooks/stripe HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
             stripe-signature: t={now},v1={}\r\ncontent-length: {}\r\n\r\n",
            "0".repeat(64),
            body.len()
        )
        .unwrap();
        stream.write_all(body).unwrap();
        let mut first = [0u8; 12];
        match stream.read(&mut first) {
            Ok(n) if n > 0 => Some(String::from_utf8_lossy(&first[..n]).to_string()),
            _ => None,
        }
    };
    // The EnvoyFilter's filter reads the body and refuses the request at once.
    let answer = answered_within(&Options::default());
    assert!(
        answer
            .as_deref()
            .is_some_and(|a| a.starts_with("HTTP/1.1 4")),
        "{answer:?}"
    );
    assert_eq!(answered_within(&forced), None);
}

/// JSON pointers of what `json_path` selects in `doc`, for the one shape the Envoy
/// Gateway render writes: `$..KEY[?(@.name=='VALUE')].A.B`, with the semantics of
/// Envoy Gateway's JSONPath library (every `KEY` array at any depth, each element whose
/// `name` is `VALUE`, then the member path).
fn select(doc: &Value, json_path: &str) -> Vec<String> {
    let rest = json_path.strip_prefix("$..").expect("a $.. path");
    let (key, rest) = rest.split_once("[?(@.name=='").expect("a name filter");
    let (value, members) = rest.split_once("')]").expect("a closed filter");
    let members: Vec<&str> = members.split('.').filter(|m| !m.is_empty()).collect();
    fn walk(v: &Value, at: String, key: &str, name: &str, members: &[&str], out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    let here = format!("{at}/{k}");
                    if k == key {
                        for (i, item) in child.as_array().into_iter().flatten().enumerate() {
                            if item["name"] == name {
                                let mut p = format!("{here}/{i}");
                                let mut node = item;
                                let mut ok = true;
                                for m in members {
                                    node = &node[*m];
                                    ok &= !node.is_null();
                                    p = format!("{p}/{m}");
                                }
                                if ok {
                                    out.push(p);
                                }
                            }
                        }
                    }
                    walk(child, here, key, name, members, out);
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, format!("{at}/{i}"), key, name, members, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(doc, String::new(), key, value, &members, &mut out);
    out
}

/// The listener Envoy Gateway generates for this render's `EnvoyExtensionPolicy`
/// (envoyproxy/gateway `internal/xds/translator/wasm.go`: the filter in the connection
/// manager, named after the policy, disabled there and enabled per route; its config
/// from `name`, `rootID`, `config`, `failOpen` and `env.hostKeys`), with the render's
/// `EnvoyPatchPolicy` listener patches applied; each patch must select exactly one
/// place. Returns the Wasm filter's `typed_config`.
fn envoy_gateway_filter_config(docs: &[Value], opts: &Options) -> Value {
    let extension = docs
        .iter()
        .find(|d| d["kind"] == "EnvoyExtensionPolicy")
        .unwrap();
    let wasm = &extension["spec"]["wasm"][0];
    let filter_name = render::envoy_gateway::wasm_filter_name(opts);
    let vm_id = filter_name.trim_start_matches("envoy.filters.http.wasm/");
    let mut vm =
        json!({ "vm_id": vm_id, "runtime": "envoy.wasm.runtime.v8", "code": local_code() });
    if let Some(keys) = wasm["env"].get("hostKeys") {
        vm["environment_variables"] = json!({ "host_env_keys": keys });
    }
    let mut listener = json!({
        "name": render::envoy_gateway::listener_name(opts),
        "default_filter_chain": { "filters": [ {
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "http-10080",
                "http_filters": [
                    { "name": filter_name, "disabled": true, "typed_config": {
                        "@type": render::WASM_FILTER_TYPE,
                        "config": {
                            "name": wasm["name"],
                            "root_id": wasm["rootID"],
                            "vm_config": vm,
                            "configuration": {
                                "@type": "type.googleapis.com/google.protobuf.StringValue",
                                "value": wasm["config"].to_string(),
                            },
                            "fail_open": wasm["failOpen"],
                        },
                    } },
                    { "name": "envoy.filters.http.router" },
                ],
            },
        } ] },
    });
    let patch_policy = docs
        .iter()
        .find(|d| d["kind"] == "EnvoyPatchPolicy")
        .unwrap();
    let mut applied = 0;
    for patch in patch_policy["spec"]["jsonPatches"].as_array().unwrap() {
        if patch["type"] != "type.googleapis.com/envoy.config.listener.v3.Listener" {
            continue;
        }
        assert_eq!(patch["name"], listener["name"]);
        let op = &patch["operation"];
        assert_eq!(op["op"], "add");
        let places = select(&listener, op["jsonPath"].as_str().unwrap());
        assert_eq!(places.len(), 1, "{op}");
        let (parent, field) = {
            let full = format!("{}{}", places[0], op["path"].as_str().unwrap());
            let (p, f) = full.rsplit_once('/').unwrap();
            (p.to_string(), f.to_string())
        };
        listener.pointer_mut(&parent).unwrap()[field] = op["value"].clone();
        applied += 1;
    }
    assert!(applied >= 2, "{applied} listener patches");
    let filters = &listener["default_filter_chain"]["filters"][0]["typed_config"];
    filters["http_filters"][0]["typed_config"].clone()
}

/// The plain-Envoy equivalent of the Envoy Gateway deployment: the Wasm filter Envoy
/// Gateway generates from the `EnvoyExtensionPolicy`, patched by the
/// `EnvoyPatchPolicy`, through every case file in a real filter-only Envoy.
#[test]
fn the_envoy_gateway_render_passes_every_case_file_in_a_filter_only_envoy() {
    let opts = Options::default();
    let config = envoy_gateway_filter_config(
        &render::render(Target::EnvoyGateway, &policy("webhooks.yaml"), &opts),
        &opts,
    );
    assert_eq!(config["config"]["allow_on_headers_stop_iteration"], true);
    assert_eq!(config["config"]["failure_policy"], "FAIL_RELOAD");
    every_case_file_passes_with(|loaded| {
        envoy_gateway_filter_config(&render::render(Target::EnvoyGateway, loaded, &opts), &opts)
    });
}

/// The rewritten `feed.cluster` is a name Envoy takes and the sync polls: a key issued by
/// the control service works through an Envoy configured as Istio configures it.
#[test]
fn the_istio_feed_cluster_name_carries_the_feed_in_a_filter_only_envoy() {
    let control = ControlService::start(&ControlOptions::new())
        .unwrap_or_else(|e| panic!("could not start gatehouse-control: {e:#}"));
    let opts = Options {
        control_port: control.addr().port(),
        ..Options::default()
    };
    let docs = render::render(Target::Istio, &policy("local.yaml"), &opts);
    let config = &docs[0]["spec"]["pluginConfig"];
    let cluster = config["feed"]["cluster"].as_str().unwrap();
    assert!(cluster.starts_with("outbound|"), "{cluster}");
    let envoy_opts = EnvoyOptions {
        filter_only: true,
        env: vec![(
            "GATEHOUSE_JWT_SECRET".into(),
            "gatehouse-test-secret-0123456789abcdef-xyz".into(),
        )],
        concurrency: 2,
        ..EnvoyOptions::new(config.to_string())
    };
    let link = FeedLink {
        control: control.addr(),
        secret_env: vec![("GATEHOUSE_FEED_TOKEN".into(), control.feed_token().into())],
    };
    let envoy = Envoy::start_with_feed(&envoy_opts, &link)
        .unwrap_or_else(|e| panic!("could not start Envoy: {e:#}"));
    assert!(
        envoy.config().unwrap().contains(cluster),
        "the bootstrap's control cluster is named {cluster}"
    );
    let key = control
        .issue_key("user_istio", "tenant_demo", "team")
        .unwrap();
    let req = ClientRequest {
        method: "GET".into(),
        path: "/v1/things".into(),
        headers: vec![("x-api-key".into(), key.api_key.as_bytes().to_vec())],
        body: Vec::new(),
    };
    #[allow(clippy::disallowed_methods, reason = "a real Envoy's wall-clock bound")]
    let start = Instant::now();
    loop {
        let resp = envoy.send(&req).unwrap();
        if resp.status == 200 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the issued key is still {} after 30 s: {}\n{}\n{}",
            resp.status,
            String::from_utf8_lossy(&resp.body),
            envoy.log_tail(25),
            control.log_tail(10)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The CLI prints the stream on stdout, what the target cannot express on stderr, and
/// refuses knobs that do not fit (exit 2).
#[test]
fn the_cli_prints_manifests_and_warnings_apart() {
    let bin = env!("CARGO_BIN_EXE_gatehouse-harness");
    let policies = workspace_root().join("policies");
    let out = Command::new(bin)
        .args([
            "render",
            "--target",
            "istio",
            "--namespace",
            "edge",
            "--policy",
        ])
        .arg(policies.join("local.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.starts_with("---\n"), "{stdout}");
    assert!(stdout.contains("outbound|8081||gatehouse-control.edge.svc.cluster.local"));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("feed.cluster is rewritten"), "{stderr}");
    let out = Command::new(bin)
        .args([
            "render",
            "--target",
            "control",
            "--replicas",
            "3",
            "--policy",
        ])
        .arg(policies.join("local.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--database postgres"));
}
