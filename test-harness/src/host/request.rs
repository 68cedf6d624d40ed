//! What a test sends ([`Request`]) and what comes back ([`Outcome`]): the client's view of
//! one HTTP exchange through the filter, plus what the upstream received.

/// A client request. Header names are lower-cased when the stream starts, as Envoy's
/// codec does; values are bytes and may be anything, including invalid UTF-8.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Sent as `:authority`. Defaults to `localhost`.
    pub authority: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// The `source.address` property. Defaults to `127.0.0.1:54321`.
    pub source_address: String,
    /// The body arrives in chunks of this many bytes (one `on_request_body` per chunk,
    /// the last with `end_of_stream`). `None`: one chunk.
    pub chunk_size: Option<usize>,
}

impl Request {
    pub fn new(method: &str, path: &str) -> Self {
        Request {
            method: method.to_string(),
            path: path.to_string(),
            authority: "localhost".to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            source_address: "127.0.0.1:54321".to_string(),
            chunk_size: None,
        }
    }

    pub fn get(path: &str) -> Self {
        Request::new("GET", path)
    }

    pub fn post(path: &str) -> Self {
        Request::new("POST", path)
    }

    /// Adds a header (repeat the call for repeated headers).
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_string(), value.as_ref().to_vec()));
        self
    }

    pub fn body(mut self, b: impl Into<Vec<u8>>) -> Self {
        self.body = b.into();
        self
    }

    /// Sends the body in chunks of `size` bytes (at least 1).
    pub fn chunked(mut self, size: usize) -> Self {
        self.chunk_size = Some(size.max(1));
        self
    }

    pub fn source(mut self, addr: &str) -> Self {
        self.source_address = addr.to_string();
        self
    }

    pub fn authority(mut self, authority: &str) -> Self {
        self.authority = authority.to_string();
        self
    }
}

/// What the client got back.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The local response's status, or the upstream's (the echo upstream answers 200).
    pub status: u16,
    /// Response headers the client sees, without pseudo-headers (`:status` is `status`).
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// True when the module answered with `proxy_send_local_response`.
    pub local_response: bool,
    /// True when the module closed the stream (`proxy_close_stream`): Envoy resets it and
    /// the client gets no response (`status` is then 0).
    pub reset: bool,
    /// What the upstream received, `None` if the request never reached it.
    pub upstream: Option<UpstreamRequest>,
}

impl Outcome {
    /// The first value of a response header, if present and UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        find(&self.headers, name)
    }

    /// All values of a response header, as bytes.
    pub fn header_values(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    /// The body parsed as JSON; `Value::Null` when it is not JSON, so assertions on fields
    /// fail with the field name rather than a parse error.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The body as text (lossy), for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The request as the upstream received it, after the filter changed it. Headers include
/// the pseudo-headers (`:path`, `:method`, `:authority`, `:scheme`) as the filter left them.
#[derive(Clone, Debug)]
pub struct UpstreamRequest {
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl UpstreamRequest {
    /// The first value of a header, if present and UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        find(&self.headers, name)
    }

    /// The first value of a header as bytes, for values that are not UTF-8.
    pub fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

fn find<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}
