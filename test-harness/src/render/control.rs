//! The control service on Kubernetes: `Deployment`, `Service`, `PodDisruptionBudget`,
//! the `Secret` it reads, and with SQLite its volume claim.
//!
//! SQLite is one file on one volume: one replica, `Recreate` (two pods never hold the
//! file at once). PostgreSQL: several replicas rolling, the database URL in the Secret,
//! and a budget keeping one serving through drains. Either way the pod runs as the
//! image's non-root user with a read-only root filesystem; only `/var/lib/gatehouse`
//! (the data volume) and `/tmp` are writable.

use super::{Database, Options, metadata, set};
use gatehouse_core::policy::LoadedPolicy;
use serde_json::{Value, json};

/// The name of the control service's resources (its Service host starts with it).
pub const NAME: &str = "gatehouse-control";
const DATA_DIR: &str = "/var/lib/gatehouse";
/// The image's user (another render's `target/images/gatehouse-control`).
const UID: u32 = 65532;

fn selector() -> Value {
    json!({ "app.kubernetes.io/name": NAME })
}

/// The Secret: the tokens' names (and the PostgreSQL URL), empty for the operator to
/// fill with `gatehouse-control new-token`; never a value.
pub fn secret(opts: &Options) -> Value {
    let mut data = json!({ "GATEHOUSE_ADMIN_TOKEN": "", "GATEHOUSE_FEED_TOKEN": "" });
    if opts.database == Database::Postgres {
        set(&mut data, "GATEHOUSE_DATABASE_URL", json!(""));
    }
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(NAME, opts),
        "type": "Opaque",
        "stringData": data,
    })
}

pub fn deployment(opts: &Options) -> Value {
    let sqlite = opts.database == Database::Sqlite;
    let mut env = vec![
        json!({ "name": "GATEHOUSE_CONTROL_LISTEN", "value": format!("0.0.0.0:{}", opts.control_port) }),
    ];
    if sqlite {
        env.push(json!({
            "name": "GATEHOUSE_DATABASE_URL",
            "value": format!("sqlite://{DATA_DIR}/control.db"),
        }));
    }
    let data_volume = if sqlite {
        json!({ "name": "data", "persistentVolumeClaim": { "claimName": format!("{NAME}-data") } })
    } else {
        json!({ "name": "data", "emptyDir": {} })
    };
    let probe = |path: &str, period: u32| {
        json!({
            "httpGet": { "path": path, "port": "http" },
            "periodSeconds": period,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        })
    };
    let (replicas, strategy) = if sqlite {
        (1, json!({ "type": "Recreate" }))
    } else {
        (
            opts.replicas,
            json!({ "type": "RollingUpdate", "rollingUpdate": { "maxUnavailable": 0, "maxSurge": 1 } }),
        )
    };
    let mut labels = selector();
    set(&mut labels, "app.kubernetes.io/part-of", json!(super::NAME));
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(NAME, opts),
        "spec": {
            "replicas": replicas,
            "strategy": strategy,
            "selector": { "matchLabels": selector() },
            "template": {
                "metadata": { "labels": labels },
                "spec": {
                    "automountServiceAccountToken": false,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": UID,
                        "runAsGroup": UID,
                        "fsGroup": UID,
                        "seccompProfile": { "type": "RuntimeDefault" },
                    },
                    "containers": [ {
                        "name": "control",
                        "image": opts.control_image,
                        "args": ["serve"],
                        "ports": [ { "name": "http", "containerPort": opts.control_port } ],
                        "env": env,
                        "envFrom": [ { "secretRef": { "name": NAME } } ],
                        "livenessProbe": probe("/healthz", 10),
                        "readinessProbe": probe("/readyz", 5),
                        "resources": {
                            "requests": { "cpu": "100m", "memory": "128Mi" },
                            "limits": { "memory": "512Mi" },
                        },
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "runAsNonRoot": true,
                            "capabilities": { "drop": ["ALL"] },
                            "seccompProfile": { "type": "RuntimeDefault" },
                        },
                        "volumeMounts": [
                            { "name": "data", "mountPath": DATA_DIR },
                            { "name": "tmp", "mountPath": "/tmp" },
                        ],
                    } ],
                    "volumes": [ data_volume, { "name": "tmp", "emptyDir": {} } ],
                },
            },
        },
    })
}

pub fn service(opts: &Options) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(NAME, opts),
        "spec": {
            "selector": selector(),
            "ports": [ {
                "name": "http",
                "port": opts.control_port,
                "targetPort": "http",
                "appProtocol": "http",
            } ],
        },
    })
}

/// PostgreSQL keeps one replica serving through voluntary disruptions; SQLite's single
/// replica cannot, so its budget allows the drain (a `minAvailable: 1` on one pod would
/// block every node drain).
pub fn disruption_budget(opts: &Options) -> Value {
    let rule = match opts.database {
        Database::Postgres => json!({ "minAvailable": 1 }),
        Database::Sqlite => json!({ "maxUnavailable": 1 }),
    };
    let mut spec = json!({ "selector": { "matchLabels": selector() } });
    if let (Some(spec), Some(rule)) = (spec.as_object_mut(), rule.as_object()) {
        spec.extend(rule.clone());
    }
    json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(NAME, opts),
        "spec": spec,
    })
}

pub fn volume_claim(opts: &Options) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(&format!("{NAME}-data"), opts),
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": { "requests": { "storage": "1Gi" } },
        },
    })
}

/// The policy does not shape the control service; it is taken for a uniform signature.
pub fn render(_loaded: &LoadedPolicy, opts: &Options) -> Vec<Value> {
    let mut docs = vec![
        secret(opts),
        deployment(opts),
        service(opts),
        disruption_budget(opts),
    ];
    if opts.database == Database::Sqlite {
        docs.push(volume_claim(opts));
    }
    docs
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn postgres() -> Options {
        Options {
            database: Database::Postgres,
            replicas: 3,
            ..Options::default()
        }
    }

    #[test]
    fn sqlite_is_one_replica_recreated_on_its_own_volume() {
        let d = deployment(&Options::default());
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["type"], "Recreate");
        assert_eq!(
            d["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
            "gatehouse-control-data"
        );
        assert_eq!(
            disruption_budget(&Options::default())["spec"]["maxUnavailable"],
            1
        );
    }

    #[test]
    fn postgres_rolls_several_replicas_and_keeps_one_serving() {
        let d = deployment(&postgres());
        assert_eq!(d["spec"]["replicas"], 3);
        assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
        let env = &d["spec"]["template"]["spec"]["containers"][0]["env"];
        assert!(!env.to_string().contains("DATABASE_URL"), "from the Secret");
        assert_eq!(
            secret(&postgres())["stringData"]["GATEHOUSE_DATABASE_URL"],
            ""
        );
        assert_eq!(disruption_budget(&postgres())["spec"]["minAvailable"], 1);
    }

    #[test]
    fn the_pod_is_non_root_read_only_and_probed_on_health_and_readiness() {
        let d = deployment(&Options::default());
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(
            d["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"],
            true
        );
    }

    #[test]
    fn the_secret_names_the_tokens_and_holds_none() {
        let s = secret(&Options::default());
        for (_, v) in s["stringData"].as_object().unwrap() {
            assert_eq!(v, "");
        }
    }
}
