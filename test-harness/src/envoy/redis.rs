//! A throwaway `redis-server` (Debian's `redis-server`, which `make redis` installs) on a
//! unix socket in a scratch directory, with persistence off: the control service's fleet
//! counters in the end-to-end suite. Killed on drop; [`RedisServer::stop`] and
//! [`RedisServer::start_again`] take it away and bring it back on the same socket.

use anyhow::{Context, bail};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct RedisServer {
    child: Option<Child>,
    dir: PathBuf,
}

impl RedisServer {
    /// Starts one and waits until it answers `PING`.
    pub fn start() -> anyhow::Result<RedisServer> {
        let mut server = RedisServer {
            child: None,
            dir: super::scratch_dir("redis")?,
        };
        server.start_again()?;
        Ok(server)
    }

    /// The socket it listens on.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    /// `GATEHOUSE_REDIS_URL` for it.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    /// Starts it (again) on the same socket, empty.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        self.stop();
        let log = std::fs::File::create(self.dir.join("redis.log"))?;
        let child = Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(self.socket())
            .args(["--unixsocketperm", "700"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting redis-server (Debian's package: `make redis` installs it)")?;
        self.child = Some(child);
        for _ in 0..200 {
            if self.ping() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        bail!(
            "redis-server did not answer PING within 5 s:\n{}",
            std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
        )
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = UnixStream::connect(self.socket()) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok()
            && s.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// Kills it (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.socket());
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
