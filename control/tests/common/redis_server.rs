//! A throwaway Redis for the fleet tests: Debian's `redis-server` (or the binary
//! `GATEHOUSE_REDIS_SERVER` names) on a unix socket in a temp dir, no TCP port, no
//! persistence. Killed on drop; [`RedisServer::kill`] and [`RedisServer::restart`] let a
//! test take it away and bring it back on the same socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const INSTALL_HINT: &str = "the fleet tests need Redis's server: install it with \
    `apt-get install -y redis-server` (or `make redis`), or set GATEHOUSE_REDIS_SERVER";

pub struct RedisServer {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// `--requirepass`, if set.
    password: Option<String>,
}

fn binary() -> PathBuf {
    if let Some(b) = std::env::var_os("GATEHOUSE_REDIS_SERVER") {
        return b.into();
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("redis-server"))
                .find(|b| b.is_file())
        })
        .unwrap_or_else(|| panic!("redis-server not found: {INSTALL_HINT}"))
}

/// Whether a Redis answers `PING` on `socket` (`+PONG`, or `-NOAUTH` with a password).
fn answers(socket: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut first = [0u8; 1];
    s.write_all(b"PING\r\n").is_ok()
        && s.read_exact(&mut first).is_ok()
        && b"+-".contains(&first[0])
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(None)
    }

    /// A server that takes commands only after `AUTH password`.
    pub fn with_password(password: &str) -> RedisServer {
        RedisServer::start_with(Some(password.to_string()))
    }

    fn start_with(password: Option<String>) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("gatehouse-redis-")
            .tempdir()
            .unwrap();
        let mut server = RedisServer {
            dir,
            child: None,
            password,
        };
        server.restart();
        server
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// What `GATEHOUSE_REDIS_URL` is set to (with the password, if there is one).
    pub fn url(&self) -> String {
        let url = format!("redis+unix://{}", self.socket().display());
        match &self.password {
            Some(p) => format!("{url}?pass={p}"),
            None => url,
        }
    }

    /// A client of its own, for looking at what the service stored.
    pub fn client(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// Starts the server (again, after [`RedisServer::kill`]), empty, on the same socket.
    pub fn restart(&mut self) {
        self.kill();
        let mut command = Command::new(binary());
        command
            .args(["--port", "0", "--unixsocket"])
            .arg(self.socket())
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ]);
        if let Some(p) = &self.password {
            command.args(["--requirepass", p]);
        }
        let child = command
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting redis-server: {e}; {INSTALL_HINT}"));
        self.child = Some(child);
        // 500 tries 20 ms apart: some 10 s.
        let mut tries = 0;
        while !answers(&self.socket()) {
            tries += 1;
            assert!(
                tries < 500,
                "redis-server did not answer within 10 s: {}",
                std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(self.socket());
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
