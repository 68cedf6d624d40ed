//! The reply a request can ask the echo upstream for, so tests can make the upstream fail.
//!
//! Both echo upstreams (the harness's, in [`crate::host`], and the real one behind Envoy,
//! [`crate::envoy::echo`]) answer a request that carries the header [`REPLY_HEADER`]
//! with the reply it describes instead of the echo: `{"status": 500, "headers":
//! {"content-type": "text/html"}, "body": "Traceback ...", "chunk": 16}` (compact JSON:
//! newlines in the body travel as `\n` escapes). `status` defaults to 200, `headers` to
//! none, `body` to empty; `chunk` sends the body in pieces of that many bytes (the
//! harness delivers one `on_response_body` per piece, the real echo writes HTTP/1 chunks
//! with a pause between them, so Envoy hands them on one by one). The answer still
//! carries the echo marker, and what the upstream received travels in the response
//! header [`RECEIVED_HEADER`] (the echo JSON), since the body is no longer the echo.
//!
//! Case files write it as `reply:` in a request step ([`crate::cases`]).

/// Request header: the reply the echo upstream should send, as JSON.
pub const REPLY_HEADER: &str = "x-echo-reply";
/// Response header of a scripted reply: what the upstream received, as the echo's JSON.
pub const RECEIVED_HEADER: &str = "x-echo-received";

/// A scripted upstream reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EchoReply {
    pub status: u16,
    /// Names lower case, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Deliver the body in pieces of this many bytes; `None`: in one piece.
    pub chunk: Option<usize>,
}

impl EchoReply {
    /// The value of [`REPLY_HEADER`] that asks for this reply.
    pub fn to_header_value(&self) -> String {
        let headers: serde_json::Map<String, serde_json::Value> = self
            .headers
            .iter()
            .map(|(n, v)| (n.clone(), serde_json::Value::String(v.clone())))
            .collect();
        let mut json = serde_json::json!({
            "status": self.status,
            "headers": headers,
            "body": String::from_utf8_lossy(&self.body),
        });
        if let (Some(size), Some(obj)) = (self.chunk, json.as_object_mut()) {
            obj.insert("chunk".into(), size.into());
        }
        json.to_string()
    }

    /// Reads a [`REPLY_HEADER`] value; `None` when it is not one.
    pub fn from_header_value(value: &[u8]) -> Option<EchoReply> {
        let value: serde_json::Value = serde_json::from_slice(value).ok()?;
        let json = value.as_object()?;
        let status = match json.get("status") {
            None => 200,
            Some(s) => u16::try_from(s.as_u64()?).ok()?,
        };
        let headers = match json.get("headers") {
            None => Vec::new(),
            Some(h) => h
                .as_object()?
                .iter()
                .map(|(n, v)| Some((n.to_ascii_lowercase(), v.as_str()?.to_string())))
                .collect::<Option<Vec<_>>>()?,
        };
        let body = match json.get("body") {
            None => Vec::new(),
            Some(b) => b.as_str()?.as_bytes().to_vec(),
        };
        let chunk = match json.get("chunk") {
            None => None,
            Some(c) => Some(usize::try_from(c.as_u64()?).ok()?.max(1)),
        };
        Some(EchoReply {
            status,
            headers,
            body,
            chunk,
        })
    }

    /// The body as it is delivered: one piece, or pieces of `chunk` bytes; none when empty.
    pub fn pieces(&self) -> Vec<Vec<u8>> {
        match self.chunk {
            _ if self.body.is_empty() => Vec::new(),
            Some(size) => self.body.chunks(size).map(<[u8]>::to_vec).collect(),
            None => vec![self.body.clone()],
        }
    }
}

/// The reason phrase for a status line (the echo writes HTTP/1).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_reply_survives_the_header_round_trip() {
        let reply = EchoReply {
            status: 500,
            headers: vec![("content-type".into(), "text/html".into())],
            body: b"Traceback (most recent call last):\n  File \"app.py\"\n".to_vec(),
            chunk: Some(8),
        };
        let value = reply.to_header_value();
        assert!(!value.contains('\n'), "{value}");
        assert_eq!(EchoReply::from_header_value(value.as_bytes()), Some(reply));
    }

    #[test]
    fn fields_default_and_bad_values_are_not_replies() {
        let r = EchoReply::from_header_value(br#"{"status": 503}"#).unwrap();
        assert_eq!((r.status, r.body.len(), r.chunk), (503, 0, None));
        assert!(r.pieces().is_empty());
        assert_eq!(EchoReply::from_header_value(b"500"), None);
        assert_eq!(EchoReply::from_header_value(br#"{"status": 70000}"#), None);
        assert_eq!(EchoReply::from_header_value(b"not json"), None);
    }

    #[test]
    fn the_body_is_cut_into_pieces_of_chunk_bytes() {
        let r = EchoReply {
            body: b"abcdefg".to_vec(),
            chunk: Some(3),
            ..EchoReply::default()
        };
        assert_eq!(
            r.pieces(),
            vec![b"abc".to_vec(), b"def".to_vec(), b"g".to_vec()]
        );
    }
}
