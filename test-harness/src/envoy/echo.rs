//! The echo upstream: answers every request with what it received, as JSON.
//!
//! `200 application/json` with `{"method", "path", "headers": {name: value}, "body"}` and
//! the response header [`ECHO_MARKER`], so a client in front of Envoy can tell "the
//! upstream answered" from "the filter answered locally" without shared state. Repeated
//! header names are joined with `,`. One thread per connection; keep-alive is honoured,
//! since Envoy pools upstream connections. A request with `x-echo-reply` gets the reply it
//! describes instead ([`crate::echo_reply`]): that is how tests make the upstream fail.

use super::http1::{self, Head};
use crate::echo_reply::{EchoReply, RECEIVED_HEADER, REPLY_HEADER, reason_phrase};
use std::io::{self, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// Response header set by the echo upstream on every answer.
pub const ECHO_MARKER: &str = "x-echo-upstream";

/// A running echo upstream; stops accepting on drop.
pub struct EchoUpstream {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl EchoUpstream {
    /// Listens on `addr` (port 0 for any free port) and serves in background threads.
    pub fn start(addr: SocketAddr) -> io::Result<EchoUpstream> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        let accept = std::thread::Builder::new()
            .name("echo-accept".into())
            .spawn(move || accept_loop(&listener, &stop_flag))?;
        Ok(EchoUpstream {
            addr,
            stop,
            accept: Some(accept),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(handle) = self.accept.take() {
            let _ = handle.join();
        }
    }
}

/// Serves on `listener` until the process ends (the `echo-upstream` command).
pub fn serve_forever(listener: &TcpListener) {
    accept_loop(listener, &AtomicBool::new(false));
}

fn accept_loop(listener: &TcpListener, stop: &AtomicBool) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = conn else { continue };
        let _ = std::thread::Builder::new()
            .name("echo-conn".into())
            .spawn(move || {
                let _ = serve_connection(&stream);
            });
    }
}

fn serve_connection(stream: &TcpStream) -> io::Result<()> {
    let mut reader = BufReader::new(stream);
    while let Some(head) = http1::read_head(&mut reader)? {
        let body = http1::read_body(&mut reader, &head, false)?;
        let close = head.wants_close();
        let answer = echo_body(&head, &body);
        if let Some(reply) = head
            .header(REPLY_HEADER)
            .and_then(EchoReply::from_header_value)
        {
            write_scripted(stream, &reply, &answer, close)?;
            if close {
                break;
            }
            continue;
        }
        let mut out = Vec::with_capacity(answer.len() + 128);
        write!(
            out,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{ECHO_MARKER}: 1\r\n{}\r\n",
            answer.len(),
            if close { "connection: close\r\n" } else { "" }
        )?;
        out.extend_from_slice(answer.as_bytes());
        let mut writer = stream;
        writer.write_all(&out)?;
        if close {
            break;
        }
    }
    Ok(())
}

/// The reply an `x-echo-reply` header asked for ([`crate::echo_reply`]): a body in one
/// piece with a length, or in HTTP/1 chunks of `chunk` bytes, flushed one at a time with
/// a pause between them so Envoy hands each to the filter on its own.
fn write_scripted(
    mut stream: &TcpStream,
    reply: &EchoReply,
    received: &str,
    close: bool,
) -> io::Result<()> {
    let mut out = Vec::with_capacity(256 + received.len());
    write!(
        out,
        "HTTP/1.1 {} {}\r\n",
        reply.status,
        reason_phrase(reply.status)
    )?;
    for (name, value) in &reply.headers {
        write!(out, "{name}: {value}\r\n")?;
    }
    write!(out, "{ECHO_MARKER}: 1\r\n{RECEIVED_HEADER}: {received}\r\n")?;
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if reply.chunk.is_none() {
        write!(out, "content-length: {}\r\n\r\n", reply.body.len())?;
        out.extend_from_slice(&reply.body);
        return stream.write_all(&out);
    }
    out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
    stream.write_all(&out)?;
    for piece in reply.pieces() {
        let mut chunk = format!("{:x}\r\n", piece.len()).into_bytes();
        chunk.extend_from_slice(&piece);
        chunk.extend_from_slice(b"\r\n");
        stream.write_all(&chunk)?;
        stream.flush()?;
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    stream.write_all(b"0\r\n\r\n")
}

/// The JSON the echo answers with.
pub fn echo_body(head: &Head, body: &[u8]) -> String {
    let mut parts = head.start_line.split_whitespace();
    let method = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default();
    let mut headers = serde_json::Map::new();
    for (name, value) in &head.headers {
        let value = String::from_utf8_lossy(value).into_owned();
        match headers.get_mut(name) {
            Some(serde_json::Value::String(existing)) => {
                existing.push(',');
                existing.push_str(&value);
            }
            _ => {
                headers.insert(name.clone(), serde_json::Value::String(value));
            }
        }
    }
    serde_json::json!({
        "method": method,
        "path": path,
        "headers": headers,
        "body": String::from_utf8_lossy(body),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::envoy::http1::{ClientRequest, send};
    use std::time::Duration;

    #[test]
    fn the_echo_answers_with_what_it_received() {
        let echo = EchoUpstream::start("127.0.0.1:0".parse().unwrap()).unwrap();
        let req = ClientRequest {
            method: "POST".into(),
            path: "/v1/things?x=1".into(),
            headers: vec![("x-a".into(), b"1".to_vec()), ("x-a".into(), b"2".to_vec())],
            body: b"hello".to_vec(),
        };
        let resp = send(echo.addr(), &req, Duration::from_secs(5)).unwrap();
        assert_eq!(resp.status, 200);
        assert!(resp.headers.iter().any(|(n, _)| n == ECHO_MARKER));
        let json: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(json["method"], "POST");
        assert_eq!(json["path"], "/v1/things?x=1");
        assert_eq!(json["headers"]["x-a"], "1,2");
        assert_eq!(json["body"], "hello");
    }
}
