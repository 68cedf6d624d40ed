//! Just enough HTTP/1.1 for the end-to-end suite: the client that talks to Envoy and the
//! echo upstream behind it. Both sides are under our control (Envoy in front, our own
//! echo behind), so this reads `content-length` and `chunked` bodies and nothing fancier.
//! Header names are lower-cased as they are read; values stay bytes.

use std::io::{self, BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Refuse a head larger than this instead of reading forever.
const MAX_HEAD: usize = 64 * 1024;
/// Refuse a body larger than this.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// The start line and headers of a request or response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub start_line: String,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .any(|(_, v)| {
                String::from_utf8_lossy(v)
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case(token))
            })
    }

    /// The peer asked to close the connection after this message.
    pub fn wants_close(&self) -> bool {
        self.has_token("connection", "close")
    }
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

fn read_line<R: BufRead>(r: &mut R, budget: &mut usize) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let limit = u64::try_from(*budget).unwrap_or(u64::MAX);
    r.take(limit).read_until(b'\n', &mut line)?;
    *budget = budget.saturating_sub(line.len());
    if !line.ends_with(b"\n") {
        if *budget == 0 {
            return Err(invalid("HTTP head too large"));
        }
        if line.is_empty() {
            return Ok(line);
        }
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed in the middle of a line",
        ));
    }
    line.pop();
    if line.ends_with(b"\r") {
        line.pop();
    }
    Ok(line)
}

/// Reads a start line and headers. `Ok(None)`: the peer closed before sending a byte.
pub fn read_head<R: BufRead>(r: &mut R) -> io::Result<Option<Head>> {
    let mut budget = MAX_HEAD;
    let start = read_line(r, &mut budget)?;
    if start.is_empty() && budget == MAX_HEAD {
        return Ok(None);
    }
    let start_line = String::from_utf8(start).map_err(|_| invalid("start line is not UTF-8"))?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(r, &mut budget)?;
        if line.is_empty() {
            break;
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| invalid("header line without ':'"))?;
        let (name, value) = line.split_at(colon);
        let name = String::from_utf8_lossy(name).trim().to_ascii_lowercase();
        let value = value.get(1..).unwrap_or_default().trim_ascii().to_vec();
        headers.push((name, value));
    }
    Ok(Some(Head {
        start_line,
        headers,
    }))
}

/// Reads the body that follows `head`. `to_eof`: a message with neither length nor
/// chunking runs to the end of the connection (responses); otherwise it is empty.
pub fn read_body<R: BufRead>(r: &mut R, head: &Head, to_eof: bool) -> io::Result<Vec<u8>> {
    if head.has_token("transfer-encoding", "chunked") {
        return read_chunked(r);
    }
    if let Some(len) = head.header("content-length") {
        let len: usize = std::str::from_utf8(len)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| invalid("bad content-length"))?;
        if len > MAX_BODY {
            return Err(invalid("body too large"));
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body)?;
        return Ok(body);
    }
    let mut body = Vec::new();
    if to_eof {
        r.take(MAX_BODY as u64).read_to_end(&mut body)?;
    }
    Ok(body)
}

fn read_chunked<R: BufRead>(r: &mut R) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut budget = MAX_HEAD;
        let line = read_line(r, &mut budget)?;
        let size = String::from_utf8_lossy(&line);
        let size = size.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| invalid("bad chunk size"))?;
        if size == 0 {
            // Trailers, then the empty line.
            while !read_line(r, &mut budget)?.is_empty() {}
            return Ok(body);
        }
        if body.len() + size > MAX_BODY {
            return Err(invalid("body too large"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(body.get_mut(start..).unwrap_or_default())?;
        read_line(r, &mut budget)?;
    }
}

/// A request as the client sends it.
#[derive(Clone, Debug, Default)]
pub struct ClientRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// A response as the client received it.
#[derive(Clone, Debug)]
pub struct ClientResponse {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// Sends one request on a fresh connection (`connection: close`) and reads the answer.
pub fn send(
    addr: SocketAddr,
    req: &ClientRequest,
    timeout: Duration,
) -> io::Result<ClientResponse> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut out = Vec::with_capacity(256 + req.body.len());
    write!(out, "{} {} HTTP/1.1\r\n", req.method, req.path)?;
    let has = |name: &str| {
        req.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    };
    if !has("host") {
        write!(out, "host: {addr}\r\n")?;
    }
    for (name, value) in &req.headers {
        write!(out, "{name}: ")?;
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if !req.body.is_empty() && !has("content-length") && !has("transfer-encoding") {
        write!(out, "content-length: {}\r\n", req.body.len())?;
    }
    if !has("connection") {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&req.body);
    (&stream).write_all(&out)?;

    let mut reader = io::BufReader::new(&stream);
    let head = read_head(&mut reader)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the server closed the connection without answering",
        )
    })?;
    let status = head
        .start_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("bad status line {:?}", head.start_line)))?;
    let body = if req.method.eq_ignore_ascii_case("HEAD") {
        Vec::new()
    } else {
        read_body(&mut reader, &head, true)?
    };
    Ok(ClientResponse {
        status,
        headers: head.headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn heads_and_chunked_bodies_are_read() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let mut r = io::BufReader::new(&raw[..]);
        let head = read_head(&mut r).unwrap().unwrap();
        assert_eq!(head.start_line, "HTTP/1.1 200 OK");
        assert_eq!(head.header("content-type"), Some(&b"text/plain"[..]));
        assert_eq!(read_body(&mut r, &head, true).unwrap(), b"abcde");
    }

    #[test]
    fn a_closed_connection_is_not_a_head() {
        let mut r = io::BufReader::new(&b""[..]);
        assert!(read_head(&mut r).unwrap().is_none());
    }

    #[test]
    fn requests_without_length_have_no_body() {
        let raw = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\n\r\n";
        let mut r = io::BufReader::new(&raw[..]);
        let head = read_head(&mut r).unwrap().unwrap();
        assert!(read_body(&mut r, &head, false).unwrap().is_empty());
        let next = read_head(&mut r).unwrap().unwrap();
        assert_eq!(next.start_line, "GET /next HTTP/1.1");
    }
}
