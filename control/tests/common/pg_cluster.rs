//! A throwaway PostgreSQL cluster for the tests (`GATEHOUSE_TEST_DATABASE=postgres`),
//! started on first use, once per test binary: Debian's server binaries
//! (`/usr/lib/postgresql/<version>/bin`, else `initdb` on PATH), a data folder in the temp
//! dir, listening on 127.0.0.1 on a free port with no unix socket, password auth. Each
//! test gets a database of its own, dropped with its fixture.
//!
//! Stopping: before the server starts, a watchdog shell is spawned in its own process
//! group (a Ctrl-C in the terminal does not reach it). It waits while this test process
//! lives, then stops the server (`pg_ctl stop -m immediate`) and removes the folder: at a
//! normal exit, after a panic, or after a kill.
//!
//! initdb and the server refuse to run as root: as root, they run as the `postgres` user
//! (made by Debian's package) through `runuser`, in a folder chowned to it.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The cluster's superuser and its password: the tests connect with it in the URL, so a
/// leak of the URL's password into logs or messages would show.
pub const USER: &str = "postgres";
pub const PASSWORD: &str = "gh-test-pw-5be1a9d0";

/// The unprivileged user the server runs as when the tests run as root.
const SERVER_USER: &str = "postgres";

const INSTALL_HINT: &str = "GATEHOUSE_TEST_DATABASE=postgres needs PostgreSQL's server \
    binaries (initdb, pg_ctl, psql) under /usr/lib/postgresql/<version>/bin or on PATH; \
    install them with `apt-get install -y postgresql` (or `make postgres`)";

pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    run_as: Option<&'static str>,
    /// `CREATE DATABASE` options: a plain file copy of the tiny template where the server
    /// has the choice (15+), twice as fast as WAL-logging it.
    create_options: &'static str,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();

/// The cluster of this test binary, started on the first call.
pub fn cluster() -> &'static Cluster {
    match CLUSTER.get_or_init(start) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

/// A database of its own for one test; dropped (with any connection still open to it)
/// when this is.
pub struct Database {
    pub name: String,
    pub url: String,
    cluster: &'static Cluster,
}

impl Database {
    /// Everything the database holds, as `pg_dump` prints it.
    pub fn dump(&self) -> Vec<u8> {
        let out = self
            .cluster
            .client("pg_dump")
            .args(["--no-owner", "-d", &self.name])
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_dump: {}", text(&out));
        out.stdout
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        // Best effort and in the background, so the next test need not wait for it: the
        // whole cluster goes when the test binary exits anyway.
        let cluster = self.cluster;
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        std::thread::spawn(move || cluster.psql(&sql));
    }
}

impl Cluster {
    pub fn create_database(&'static self) -> Database {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let name = format!("gh_test_{}", NEXT.fetch_add(1, Ordering::Relaxed));
        self.psql(&format!("CREATE DATABASE {name}{}", self.create_options))
            .unwrap_or_else(|e| panic!("creating database {name}: {e}"));
        Database {
            url: self.url(&name),
            name,
            cluster: self,
        }
    }

    /// The URL of database `name`, password included.
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{name}",
            self.port
        )
    }

    /// A client program (`psql`, `pg_dump`) aimed at this cluster.
    fn client(&self, program: &str) -> Command {
        let mut c = Command::new(self.bin.join(program));
        c.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER])
            .env("PGPASSWORD", PASSWORD)
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null());
        c
    }

    fn psql(&self, sql: &str) -> Result<(), String> {
        let out = self
            .client("psql")
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                "postgres",
                "-c",
                sql,
            ])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(text(&out))
        }
    }

    /// A server program, run as the server's user.
    fn server_command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut c = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        };
        // The server's user may not be allowed into the caller's working directory.
        c.current_dir(&self.dir).stdin(Stdio::null());
        c
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The newest `/usr/lib/postgresql/<version>/bin` holding `initdb`, else the folder of the
/// `initdb` on PATH.
fn find_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
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
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn out_file(path: &Path) -> Result<std::fs::File, String> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn run(mut c: Command, what: &str) -> Result<(), String> {
    let out = c.output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({}):\n{}", out.status, text(&out)))
    }
}

/// Waits while this process lives, then stops the server and removes `dir`.
fn spawn_watchdog(cluster: &Cluster) -> Result<(), String> {
    const SCRIPT: &str = r#"
        while kill -0 "$1" 2>/dev/null; do sleep 0.2; done
        if [ -n "$4" ]; then
            runuser -u "$4" -- "$2" stop -D "$3/data" -m immediate
        else
            "$2" stop -D "$3/data" -m immediate
        fi
        rm -rf "$3"
    "#;
    Command::new("sh")
        .args(["-c", SCRIPT, "gatehouse-pg-watchdog"])
        .arg(std::process::id().to_string())
        .arg(cluster.bin.join("pg_ctl"))
        .arg(&cluster.dir)
        .arg(cluster.run_as.unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map(drop)
        .map_err(|e| format!("starting the cluster's watchdog: {e}"))
}

fn start() -> Result<Cluster, String> {
    let bin = find_bin().ok_or_else(|| INSTALL_HINT.to_string())?;
    for tool in ["initdb", "pg_ctl", "psql", "pg_dump"] {
        if !bin.join(tool).is_file() {
            return Err(format!(
                "{} is missing. {INSTALL_HINT}",
                bin.join(tool).display()
            ));
        }
    }
    let root = std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false);
    let run_as = if root {
        let known = Command::new("id")
            .args(["-u", SERVER_USER])
            .output()
            .is_ok_and(|o| o.status.success());
        if !known {
            return Err(format!(
                "the tests run as root, and PostgreSQL refuses to: they run it as the \
                 `{SERVER_USER}` user, which does not exist. {INSTALL_HINT}"
            ));
        }
        Some(SERVER_USER)
    } else {
        None
    };
    let dir = tempfile::Builder::new()
        .prefix("gatehouse-pg-")
        .tempdir()
        .map_err(|e| format!("making the cluster's folder: {e}"))?
        .keep();
    let version = Command::new(bin.join("initdb"))
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    // "initdb (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)"
    let major: u32 = version
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.split('.').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut cluster = Cluster {
        bin,
        dir,
        port: 0,
        run_as,
        create_options: if major >= 15 {
            " STRATEGY FILE_COPY"
        } else {
            ""
        },
    };
    // First, so that nothing started after it can outlive this process.
    spawn_watchdog(&cluster)?;
    let pwfile = cluster.dir.join("pwfile");
    std::fs::write(&pwfile, PASSWORD).map_err(|e| format!("writing the password file: {e}"))?;
    if let Some(user) = run_as {
        let mut chown = Command::new("chown");
        chown.args(["-R", user]).arg(&cluster.dir);
        run(chown, "chown")?;
    }
    let mut initdb = cluster.server_command("initdb");
    initdb
        .arg("-D")
        .arg(cluster.data())
        .args([
            "-U",
            USER,
            "-A",
            "scram-sha-256",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ])
        .arg(format!("--pwfile={}", pwfile.display()));
    run(initdb, "initdb")?;
    // Appended, as the last setting of a name wins; throwaway data needs no durability.
    let settings = "\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n\
        max_connections = 300\nfsync = off\nsynchronous_commit = off\n\
        full_page_writes = off\n";
    let conf = cluster.data().join("postgresql.conf");
    let mut text_conf = std::fs::read_to_string(&conf).map_err(|e| format!("{e}"))?;
    text_conf.push_str(settings);
    std::fs::write(&conf, text_conf).map_err(|e| format!("writing postgresql.conf: {e}"))?;
    // The free port may be taken between the probe and the bind: try a few.
    let mut last = String::new();
    for _ in 0..5 {
        cluster.port = free_port();
        let mut pg_ctl = cluster.server_command("pg_ctl");
        pg_ctl
            .arg("start")
            .arg("-D")
            .arg(cluster.data())
            .arg("-l")
            .arg(cluster.dir.join("server.log"))
            .args(["-w", "-t", "60", "-o"])
            .arg(format!("-p {}", cluster.port))
            // To a file, not a pipe: the server must hold no pipe of ours open.
            .stdout(out_file(&cluster.dir.join("pg_ctl.out"))?)
            .stderr(out_file(&cluster.dir.join("pg_ctl.out"))?);
        match pg_ctl.status() {
            Ok(s) if s.success() => return Ok(cluster),
            Ok(s) => {
                let read = |name: &str| {
                    std::fs::read_to_string(cluster.dir.join(name)).unwrap_or_default()
                };
                last = format!(
                    "pg_ctl start: {s}\n{}{}",
                    read("pg_ctl.out"),
                    read("server.log")
                );
            }
            Err(e) => last = format!("pg_ctl start: {e}"),
        }
    }
    Err(format!("the test cluster did not start: {last}"))
}
