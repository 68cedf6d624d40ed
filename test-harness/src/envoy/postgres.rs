//! A throwaway PostgreSQL cluster for the end-to-end suite: the database of several
//! control replicas ([`super::control::Database::Postgres`]). Debian's server binaries
//! (`/usr/lib/postgresql/<version>/bin`, which `make postgres` installs, else `initdb` on
//! PATH), a data folder in a scratch directory, listening on a unix socket in that folder
//! only (no TCP port, so nothing to race for), trust authentication (only the socket's
//! folder lets anyone in), durability off. Modelled on the control tests' cluster
//! (`control/tests/common/pg_cluster.rs`).
//!
//! The `postgres` process is this struct's child. Dropping it stops the server (SIGQUIT,
//! PostgreSQL's immediate shutdown) and removes the folder (kept with
//! `GATEHOUSE_KEEP_ENVOY_DIR`). A watchdog shell in its own process group does the same
//! if the test process dies without dropping it (a kill), so no server outlives a run.
//!
//! PostgreSQL refuses to run as root: as root, initdb and the server run as the `postgres`
//! user (made by Debian's package), in a folder chowned to it.

use super::scratch_dir;
use anyhow::{Context, anyhow, bail};
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// The port names the socket file (`.s.PGSQL.5432`) only: the server listens on no TCP.
const PORT: u16 = 5432;
/// The cluster's superuser, whom every URL names.
const USER: &str = "postgres";
/// The unprivileged user the server runs as when the harness runs as root.
const SERVER_USER: &str = "postgres";
/// How often, and how many times, to ask whether the server takes connections: 30 s.
const POLL: Duration = Duration::from_millis(50);
const START_POLLS: u32 = 600;
/// How long an immediate shutdown may take before the server is killed: 5 s.
const STOP_POLLS: u32 = 100;

const INSTALL_HINT: &str = "PostgreSQL's server binaries (initdb, postgres, psql) are \
    needed under /usr/lib/postgresql/<version>/bin or on PATH: `make postgres` (or \
    `apt-get install -y postgresql`) installs them";

/// A running PostgreSQL server. Stopped on drop.
pub struct PostgresCluster {
    child: Option<Child>,
    bin: PathBuf,
    dir: PathBuf,
}

impl PostgresCluster {
    /// Makes a cluster in a new scratch directory, starts it and waits until it takes
    /// connections.
    pub fn start() -> anyhow::Result<PostgresCluster> {
        let bin = find_bin().ok_or_else(|| anyhow!("{INSTALL_HINT}"))?;
        for tool in ["initdb", "postgres", "psql"] {
            if !bin.join(tool).is_file() {
                bail!("{} is missing. {INSTALL_HINT}", bin.join(tool).display());
            }
        }
        let run_as = server_user()?;
        let mut cluster = PostgresCluster {
            child: None,
            bin,
            dir: scratch_dir("postgres")?,
        };
        if let Some((uid, _)) = run_as {
            let status = Command::new("chown")
                .arg(uid.to_string())
                .arg(&cluster.dir)
                .status()
                .context("chown")?;
            if !status.success() {
                bail!("chown {uid} {} failed", cluster.dir.display());
            }
        }
        let mut initdb = cluster.server_command("initdb", run_as);
        initdb.arg("-D").arg(cluster.data()).args([
            "-U",
            USER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ]);
        let out = initdb.output().context("running initdb")?;
        if !out.status.success() {
            bail!("initdb failed ({}):\n{}", out.status, text(&out));
        }
        let log = fs::File::create(cluster.dir.join("server.log"))?;
        let mut server = cluster.server_command("postgres", run_as);
        server
            .arg("-D")
            .arg(cluster.data())
            .arg("-k")
            .arg(&cluster.dir)
            .args(["-p", &PORT.to_string()])
            // Throwaway data: no durability; room for many replicas' pools.
            .args(["-c", "listen_addresses=", "-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=300"])
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = server.spawn().context("starting postgres")?;
        spawn_watchdog(child.id(), &cluster.dir)?;
        cluster.child = Some(child);
        cluster.wait_ready().map_err(|e| {
            anyhow!(
                "{e:#}\n--- server log ---\n{}",
                fs::read_to_string(cluster.dir.join("server.log")).unwrap_or_default()
            )
        })?;
        Ok(cluster)
    }

    /// Creates database `name` and returns its URL.
    pub fn create_database(&self, name: &str) -> anyhow::Result<String> {
        self.psql(&format!("CREATE DATABASE {name}"))?;
        Ok(self.url(name))
    }

    /// The URL of database `name`: over the socket in the cluster's folder, as sqlx
    /// reads it (`host` a path).
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgres://{USER}@localhost:{PORT}/{name}?host={}",
            self.dir.display()
        )
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let mut last = String::new();
        for _ in 0..START_POLLS {
            if let Some(status) = self
                .child
                .as_mut()
                .map(Child::try_wait)
                .transpose()?
                .flatten()
            {
                bail!("postgres exited during startup ({status})");
            }
            match self.psql("SELECT 1") {
                Ok(()) => return Ok(()),
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(POLL);
        }
        bail!(
            "postgres took no connection within {:?}: {last}",
            POLL * START_POLLS
        )
    }

    fn psql(&self, sql: &str) -> anyhow::Result<()> {
        let out = Command::new(self.bin.join("psql"))
            .arg("-h")
            .arg(&self.dir)
            .args(["-p", &PORT.to_string(), "-U", USER, "-d", "postgres"])
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .context("running psql")?;
        if !out.status.success() {
            bail!("psql -c '{sql}': {}", text(&out));
        }
        Ok(())
    }

    /// A server program, run as the server's user (`uid`, `gid`) when given.
    fn server_command(&self, program: &str, run_as: Option<(u32, u32)>) -> Command {
        let mut c = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = run_as {
            c.uid(uid).gid(gid);
        }
        // The server's user may not be allowed into the caller's working directory.
        c.current_dir(&self.dir).stdin(Stdio::null());
        c
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }
}

impl Drop for PostgresCluster {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Immediate shutdown: the backends go with the postmaster.
            let quit = Command::new("kill")
                .arg("-QUIT")
                .arg(child.id().to_string())
                .status();
            let mut stopped = false;
            for _ in 0..STOP_POLLS {
                if !quit.as_ref().is_ok_and(|s| s.success()) {
                    break;
                }
                if child.try_wait().ok().flatten().is_some() {
                    stopped = true;
                    break;
                }
                std::thread::sleep(POLL);
            }
            if !stopped {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::env::var_os("GATEHOUSE_KEEP_ENVOY_DIR").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// As root, the `(uid, gid)` of the server's user; otherwise none (the server runs as
/// the caller).
fn server_user() -> anyhow::Result<Option<(u32, u32)>> {
    let id = |args: &[&str]| -> Option<u32> {
        let out = Command::new("id").args(args).output().ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    if id(&["-u"]).is_some_and(|me| me != 0) {
        return Ok(None);
    }
    match (id(&["-u", SERVER_USER]), id(&["-g", SERVER_USER])) {
        (Some(uid), Some(gid)) => Ok(Some((uid, gid))),
        _ => bail!(
            "the harness runs as root, and PostgreSQL refuses to: it runs the server as the \
             `{SERVER_USER}` user, which does not exist. {INSTALL_HINT}"
        ),
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` holding `initdb`, else the folder of the
/// `initdb` on PATH.
fn find_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).find(|dir| dir.join("initdb").is_file()))
}

/// Waits while this process lives, then stops the server if it still runs and removes
/// `dir`: the cleanup a kill of the test process would skip. Its own process group, so a Ctrl-C in the
/// terminal does not stop it first.
fn spawn_watchdog(server: u32, dir: &Path) -> anyhow::Result<()> {
    const SCRIPT: &str = r#"
        while kill -0 "$1" 2>/dev/null; do sleep 0.2; done
        # Only if the server still runs: its pid file names it (a stopped one removed it).
        if [ "$(head -n 1 "$3/data/postmaster.pid" 2>/dev/null)" = "$2" ]; then
            kill -QUIT "$2"
        fi
        [ -n "$GATEHOUSE_KEEP_ENVOY_DIR" ] || rm -rf "$3"
    "#;
    Command::new("sh")
        .args(["-c", SCRIPT, "gatehouse-postgres-watchdog"])
        .arg(std::process::id().to_string())
        .arg(server.to_string())
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map(drop)
        .context("starting the cluster's watchdog")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
