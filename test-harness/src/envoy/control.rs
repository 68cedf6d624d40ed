//! A real `gatehouse-control serve` process on a temporary SQLite file (or on a
//! PostgreSQL database, [`Database::Postgres`]), for the end-to-end suite: Envoy's sync polls it through the control cluster, and tests issue
//! and revoke keys through its admin API over loopback TCP.
//!
//! [`ControlService::start`] runs the binary ([`control_binary`]: `$GATEHOUSE_CONTROL`,
//! else `gatehouse-control` beside the running executable, which `cargo test --workspace`
//! builds) with both tokens in its environment only, reads the address it bound from its
//! JSON log, and waits for `/readyz`. [`ControlService::stop`] sends SIGTERM and waits;
//! [`ControlService::restart`] starts it again on the same address and database file, so
//! Envoy's cluster still points at it. [`ControlService::replica`] starts another process
//! on the same database: a second replica (on PostgreSQL, as replicas run on several
//! machines; [`super::postgres`] starts a throwaway cluster). Dropping it kills the process and removes the
//! temporary directory (kept with `GATEHOUSE_KEEP_ENVOY_DIR`).
//!
//! Never a mock: a missing binary is an error that says how to build it.

use super::http1::{self, ClientRequest};
use super::{REQUEST_TIMEOUT, scratch_dir};
use anyhow::{Context, anyhow, bail};
use serde_json::Value;
use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How often, and how many times, to look for the end of start-up (open the database,
/// bind, answer `/readyz`): 30 s in all.
const POLL: Duration = Duration::from_millis(20);
const START_POLLS: u32 = 1500;
/// How many polls a SIGTERM may take, 65 s: a correctness bound far above what it takes
/// (the server answers its held polls at once and gives the rest 5 s: `serve.rs`).
const STOP_POLLS: u32 = 3250;

/// The `gatehouse-control` binary: `$GATEHOUSE_CONTROL`, else the one beside the running
/// executable (`target/debug/gatehouse-control` for both the harness binary and an
/// integration test in `target/debug/deps/`). `CARGO_BIN_EXE_*` names only the binaries of
/// the test's own package, hence the search. Missing is an error, never a reason to skip.
pub fn control_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("GATEHOUSE_CONTROL").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(p);
        if !path.is_file() {
            bail!(
                "gatehouse-control not found: GATEHOUSE_CONTROL={} is not a file",
                path.display()
            );
        }
        return Ok(path);
    }
    let exe = std::env::current_exe().context("locating the running executable")?;
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("gatehouse-control"))
        .collect();
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    bail!(
        "gatehouse-control not found at {}: build it with `cargo build -p gatehouse-control` \
         (`make test` and `cargo test --workspace` do) or set GATEHOUSE_CONTROL",
        candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" or ")
    )
}

/// What to start the control service with.
#[derive(Clone, Debug)]
pub struct ControlOptions {
    /// `GATEHOUSE_ADMIN_TOKEN`: the bearer token of the admin API.
    pub admin_token: String,
    /// `GATEHOUSE_FEED_TOKEN`: the bearer token of `GET /v1/cache`.
    pub feed_token: String,
    /// Where to listen; port 0 lets the kernel pick (read back from the log).
    pub listen: SocketAddr,
    /// `--policy FILE`: the proxies' policy. Defaults to none.
    pub policy: Option<PathBuf>,
    /// More variables for its environment (the policy's JWT secrets). Defaults to none.
    pub env: Vec<(String, String)>,
    /// The database. Defaults to [`Database::Sqlite`].
    pub database: Database,
    /// The binary to run (the one in the control image: tests/images.rs). Defaults to
    /// [`control_binary`].
    pub binary: Option<PathBuf>,
}

/// Where the service keeps its state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Database {
    /// A new SQLite file in the service's scratch folder, removed with it.
    #[default]
    Sqlite,
    /// `GATEHOUSE_DATABASE_URL` of an existing PostgreSQL database, e.g. one of a
    /// [`super::postgres::PostgresCluster`]; it outlives the service.
    Postgres(String),
}

impl ControlOptions {
    /// Fixture tokens (the service listens on loopback only) and a kernel-chosen port.
    pub fn new() -> ControlOptions {
        ControlOptions {
            admin_token: "e2e-admin-token-0123456789abcdef".into(),
            feed_token: "e2e-feed-token-fedcba9876543210-7c1e".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            policy: None,
            env: Vec::new(),
            database: Database::Sqlite,
            binary: None,
        }
    }
}

impl Default for ControlOptions {
    fn default() -> Self {
        ControlOptions::new()
    }
}

/// A key as `POST /v1/keys` issued it: the secret is shown this once.
#[derive(Clone, Debug)]
pub struct IssuedKey {
    pub id: String,
    pub api_key: String,
}

/// A running (or stopped) control service with its database. Killed on drop.
pub struct ControlService {
    child: Option<Child>,
    binary: PathBuf,
    opts: ControlOptions,
    /// Its scratch folder: the log, and the SQLite file unless it is a replica's.
    dir: PathBuf,
    /// `GATEHOUSE_DATABASE_URL`.
    database_url: String,
    addr: SocketAddr,
}

impl ControlService {
    /// Starts the service on its database (a new SQLite file by default) and waits until
    /// it is ready.
    pub fn start(opts: &ControlOptions) -> anyhow::Result<ControlService> {
        let binary = match &opts.binary {
            Some(binary) => binary.clone(),
            None => control_binary()?,
        };
        let dir = scratch_dir("control")?;
        let database_url = match &opts.database {
            Database::Sqlite => format!("sqlite://{}", dir.join("control.db").display()),
            Database::Postgres(url) => url.clone(),
        };
        let mut service = ControlService {
            child: None,
            binary,
            opts: opts.clone(),
            dir,
            database_url,
            addr: opts.listen,
        };
        service.spawn()?;
        Ok(service)
    }

    /// Another `serve` process on this one's database, with the same tokens, its own
    /// kernel-chosen port and its own log: a second replica (docs/operating.md, "Several
    /// replicas"). On SQLite, drop it before this one, which removes the file.
    pub fn replica(&self) -> anyhow::Result<ControlService> {
        let mut service = ControlService {
            child: None,
            binary: self.binary.clone(),
            opts: self.opts.clone(),
            dir: scratch_dir("control-replica")?,
            database_url: self.database_url.clone(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        service.spawn()?;
        Ok(service)
    }

    /// `GATEHOUSE_DATABASE_URL`: the database outlives [`stop`](Self::stop) and
    /// [`restart`](Self::restart).
    pub fn database_url(&self) -> &str {
        &self.database_url
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("control.log")
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log_path = self.log_path();
        // Appended across restarts; the bound address is the last one logged.
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let logged_before = fs::read_to_string(&log_path).unwrap_or_default().len();
        let mut command = Command::new(&self.binary);
        command.arg("serve");
        if let Some(policy) = &self.opts.policy {
            command.arg("--policy").arg(policy);
        }
        let child = command
            .envs(self.opts.env.iter().map(|(k, v)| (k, v)))
            .env("GATEHOUSE_ADMIN_TOKEN", &self.opts.admin_token)
            .env("GATEHOUSE_FEED_TOKEN", &self.opts.feed_token)
            .env("GATEHOUSE_CONTROL_LISTEN", self.addr.to_string())
            .env("GATEHOUSE_DATABASE_URL", &self.database_url)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.child = Some(child);
        self.wait_ready(logged_before).map_err(|e| {
            anyhow!(
                "{e:#}\n--- control log (last lines) ---\n{}",
                self.log_tail(20)
            )
        })
    }

    fn wait_ready(&mut self, logged_before: usize) -> anyhow::Result<()> {
        let mut bound = None;
        for _ in 0..START_POLLS {
            if let Some(status) = self
                .child
                .as_mut()
                .map(Child::try_wait)
                .transpose()?
                .flatten()
            {
                bail!("gatehouse-control exited during startup ({status})");
            }
            if bound.is_none() {
                let log = fs::read_to_string(self.log_path()).unwrap_or_default();
                bound = bound_address(log.get(logged_before..).unwrap_or_default());
                if let Some(addr) = bound {
                    self.addr = addr;
                }
            }
            if bound.is_some()
                && self
                    .admin("GET", "/readyz", None)
                    .is_ok_and(|(status, _)| status == 200)
            {
                return Ok(());
            }
            std::thread::sleep(POLL);
        }
        bail!(
            "gatehouse-control was not ready after {:?}",
            POLL * START_POLLS
        )
    }

    /// Where it listens (Envoy's control cluster points here).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn feed_token(&self) -> &str {
        &self.opts.feed_token
    }

    /// SIGTERM (graceful shutdown, as an operator stops it), then waits for the exit.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let term = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        if !term.is_ok_and(|s| s.success()) {
            let _ = child.kill();
        }
        for _ in 0..STOP_POLLS {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!(
                        "gatehouse-control exited with {status} on SIGTERM\n--- control log ---\n{}",
                        self.log_tail(20)
                    );
                }
                return Ok(());
            }
            std::thread::sleep(POLL);
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!(
            "gatehouse-control did not stop within {:?} of SIGTERM",
            POLL * STOP_POLLS
        )
    }

    /// Starts it again on the same address and database.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.spawn()
    }

    /// An admin API call with the admin token: `(status, JSON body or null)`.
    pub fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut headers = vec![(
            "authorization".to_string(),
            format!("Bearer {}", self.opts.admin_token).into_bytes(),
        )];
        if body.is_some() {
            headers.push(("content-type".into(), b"application/json".to_vec()));
        }
        let req = ClientRequest {
            method: method.into(),
            path: path.into(),
            headers,
            body: body.map(|b| b.to_string().into_bytes()).unwrap_or_default(),
        };
        let resp = http1::send(self.addr, &req, REQUEST_TIMEOUT)
            .with_context(|| format!("{method} {path} to gatehouse-control at {}", self.addr))?;
        let json = if resp.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&resp.body).with_context(|| {
                format!(
                    "{method} {path}: the answer is not JSON: {}",
                    String::from_utf8_lossy(&resp.body)
                )
            })?
        };
        Ok((resp.status, json))
    }

    /// `POST /v1/keys`; anything but 201 is an error.
    pub fn issue_key(&self, user: &str, tenant: &str, plan: &str) -> anyhow::Result<IssuedKey> {
        let body = serde_json::json!({
            "user_id": user, "tenant_id": tenant, "plan": plan, "device_name": "e2e",
        });
        let (status, json) = self.admin("POST", "/v1/keys", Some(&body))?;
        if status != 201 {
            bail!("POST /v1/keys answered {status}: {json}");
        }
        let field = |name: &str| {
            json.get(name)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| anyhow!("POST /v1/keys: no '{name}' in {json}"))
        };
        Ok(IssuedKey {
            id: field("id")?,
            api_key: field("api_key")?,
        })
    }

    /// `DELETE /v1/keys/{id}`; anything but 200 is an error.
    pub fn revoke_key(&self, id: &str) -> anyhow::Result<()> {
        let (status, json) = self.admin("DELETE", &format!("/v1/keys/{id}"), None)?;
        if status != 200 {
            bail!("DELETE /v1/keys/{id} answered {status}: {json}");
        }
        Ok(())
    }

    /// The last `lines` lines of its log (all runs).
    pub fn log_tail(&self, lines: usize) -> String {
        let log = fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all.get(all.len().saturating_sub(lines)..)
            .unwrap_or_default()
            .join("\n")
    }
}

/// The address in the service's `gatehouse-control serving` log line.
fn bound_address(log: &str) -> Option<SocketAddr> {
    log.lines().find_map(|line| {
        let v: Value = serde_json::from_str(line).ok()?;
        let fields = v.get("fields")?;
        (fields.get("message")?.as_str()? == "gatehouse-control serving")
            .then(|| fields.get("listen")?.as_str()?.parse().ok())
            .flatten()
    })
}

impl Drop for ControlService {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::env::var_os("GATEHOUSE_KEEP_ENVOY_DIR").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_bound_address_is_read_from_the_json_log() {
        let log = concat!(
            "{\"level\":\"INFO\",\"fields\":{\"message\":\"cleanup\",\"keys\":0}}\n",
            "not json\n",
            "{\"level\":\"INFO\",\"fields\":{\"message\":\"gatehouse-control serving\",",
            "\"listen\":\"127.0.0.1:40153\"}}\n",
        );
        assert_eq!(bound_address(log), Some("127.0.0.1:40153".parse().unwrap()));
        assert_eq!(bound_address("{\"fields\":{\"message\":\"other\"}}"), None);
    }
}
