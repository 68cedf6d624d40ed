//! One HTTP stream through the filter, in the order Envoy calls the callbacks:
//! context create, request headers, request body, (upstream), response headers, response
//! body, log, done, delete.
//!
//! Envoy behaviours reproduced here, each observable by a plugin:
//! - `x-request-id` is generated (UUID v4, here from the seeded generator) before filters
//!   run when the client sent none (HCM `generate_request_id`).
//! - A local response takes effect after the callback that sent it returns; the request
//!   goes no further (no body callback, no upstream) and the reply then passes through the
//!   filter's own `on_response_headers`/`on_response_body`, as local replies traverse
//!   the encoder filter chain in Envoy.
//! - A paused callback holds its header map reachable until the stream continues. While the
//!   request headers are paused no body callback runs; the body that arrived meanwhile is
//!   delivered in one callback once the stream continues. With
//!   `allow_on_headers_stop_iteration` (as gatehouse's bootstrap sets it) the body
//!   callbacks do run while the headers are paused, and the first one that continues
//!   releases headers and body together.
//! - A body arrives in chunks of the size the test chooses; a chunk the filter pauses on
//!   (StopIterationAndBuffer) is buffered, so the next callback sees all data so far.
//! - A paused stream waits: the VM's events (HTTP call responses, queue notifications,
//!   ticks) are delivered, moving virtual time forward to each, until the module continues
//!   the stream or replies. With nothing pending, or after 5 virtual minutes, it is an
//!   error naming the callback (Envoy would hold the stream until a timeout).
//! - The upstream is an echo, like the Envoy suite's: `200 application/json`,
//!   `{"method","path","headers","body"}`, and `x-echo-upstream: 1`; a request with
//!   `x-echo-reply` gets the reply it describes instead ([`crate::echo_reply`]), its body
//!   in one `on_response_body` per piece (`chunk`). As on the request side, a piece the
//!   filter pauses on is buffered and the next callback sees all data so far; a response
//!   without a body ends the stream on its headers.

use super::headers::HeaderMap;
use super::request::{Outcome, Request, UpstreamRequest};
use super::state::{LocalResponse, Phase, Stream};
use super::vm::{Trapped, Vm};
use super::{ROOT_CONTEXT_ID, len_u32};
use crate::echo_reply::{EchoReply, RECEIVED_HEADER, REPLY_HEADER};
use anyhow::{anyhow, bail};

/// Response header marking answers from the echo upstream; the same name as
/// `crate::envoy::echo::ECHO_MARKER`, so cases tell upstream answers apart on both backends.
const ECHO_MARKER: &str = "x-echo-upstream";

/// proxy-wasm `Action::Continue`.
const CONTINUE: u32 = 0;

/// Longest a paused stream may wait on virtual time for something to resume it before the
/// harness gives up, as Envoy's `stream_idle_timeout` (5 minutes by default) would.
const MAX_WAIT_NANOS: u64 = 300 * 1_000_000_000;

/// The module closed the stream; unwinds the stream driver to [`Vm::finish_reset`].
#[derive(Debug)]
struct StreamReset;

impl std::fmt::Display for StreamReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the module closed the stream")
    }
}

impl std::error::Error for StreamReset {}

/// Which direction a paused stream waits on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Request,
    Response,
}

impl Vm {
    /// Sends one request through the filter and returns what the client got.
    ///
    /// An `Err` means the stream could not complete as Envoy would run it: the module
    /// trapped (a [`Trapped`] error, with the panic message), or it paused the stream and
    /// nothing pending can resume it.
    pub(crate) fn request(&mut self, req: Request) -> anyhow::Result<Outcome> {
        if let Some(first) = &self.failed {
            return Err(anyhow::Error::new(Trapped(format!(
                "the VM failed earlier and Envoy does not call it again; first failure: {first}"
            ))));
        }
        let context_id = self.next_context_id;
        self.next_context_id = self
            .next_context_id
            .wrapping_add(1)
            .max(ROOT_CONTEXT_ID + 1);

        let mut headers = HeaderMap::from_pairs([
            (":authority", req.authority.as_bytes()),
            (":path", req.path.as_bytes()),
            (":method", req.method.as_bytes()),
            (":scheme", b"http".as_slice()),
        ]);
        for (name, value) in &req.headers {
            headers.add(name.as_bytes(), value);
        }
        let request_id = match headers.get(b"x-request-id") {
            Some(id) => id.to_vec(),
            None => {
                let id = self.store.data().world.lock().rng.uuid_v4();
                headers.add(b"x-request-id", id.as_bytes());
                id.into_bytes()
            }
        };
        self.store.data_mut().stream = Some(Stream {
            context_id,
            request_headers: headers,
            source_address: req.source_address.clone(),
            method: req.method.clone().into_bytes(),
            path: req.path.clone().into_bytes(),
            request_id,
            ..Stream::default()
        });
        let chunks: Vec<Vec<u8>> = match req.chunk_size {
            _ if req.body.is_empty() => Vec::new(),
            Some(size) => req.body.chunks(size.max(1)).map(<[u8]>::to_vec).collect(),
            None => vec![req.body],
        };
        let mut result = self.run_stream(context_id, chunks);
        if result
            .as_ref()
            .err()
            .is_some_and(|e| e.downcast_ref::<StreamReset>().is_some())
        {
            result = self.finish_reset(context_id);
        }
        let state = self.store.data_mut();
        state.stream = None;
        state.phase = Phase::Idle;
        result
    }

    /// After `proxy_close_stream`: Envoy resets the stream; the filter still gets its
    /// access-log and end-of-context callbacks.
    fn finish_reset(&mut self, ctx: u32) -> anyhow::Result<Outcome> {
        self.simple_callback(Phase::Log, "proxy_on_log", ctx)?;
        self.store.data_mut().phase = Phase::Idle;
        self.call::<u32, u32>("proxy_on_done", ctx)
            .map_err(Self::trap)?;
        self.simple_callback(Phase::Idle, "proxy_on_delete", ctx)?;
        Ok(Outcome {
            status: 0,
            headers: Vec::new(),
            body: Vec::new(),
            local_response: false,
            reset: true,
            upstream: None,
        })
    }

    fn stream_mut(&mut self) -> anyhow::Result<&mut Stream> {
        self.store
            .data_mut()
            .stream
            .as_mut()
            .ok_or_else(|| anyhow!("no stream in progress"))
    }

    fn trap(message: String) -> anyhow::Error {
        anyhow::Error::new(Trapped(message))
    }

    /// Calls a stream callback that returns an action, in `phase`; `Ok(true)` when the
    /// stream continues (the callback returned Continue or called `proxy_continue_stream`).
    fn callback(
        &mut self,
        phase: Phase,
        name: &str,
        args: (u32, u32, u32),
    ) -> anyhow::Result<bool> {
        self.store.data_mut().phase = phase;
        let action = self
            .call::<(u32, u32, u32), u32>(name, args)
            .map_err(Self::trap)?
            .unwrap_or(CONTINUE);
        let direction = match phase {
            Phase::RequestHeaders | Phase::RequestBody => Direction::Request,
            _ => Direction::Response,
        };
        let resumed = self.take_resume(direction)?;
        if self.stream_mut()?.reset {
            return Err(anyhow::Error::new(StreamReset));
        }
        Ok(action == CONTINUE || resumed)
    }

    fn take_resume(&mut self, direction: Direction) -> anyhow::Result<bool> {
        let stream = self.stream_mut()?;
        Ok(match direction {
            Direction::Request => std::mem::take(&mut stream.resume_request),
            Direction::Response => std::mem::take(&mut stream.resume_response),
        })
    }

    fn simple_callback(&mut self, phase: Phase, name: &str, context_id: u32) -> anyhow::Result<()> {
        self.store.data_mut().phase = phase;
        self.call::<u32, ()>(name, context_id).map_err(Self::trap)?;
        Ok(())
    }

    fn take_local_response(&mut self) -> anyhow::Result<Option<LocalResponse>> {
        Ok(self.stream_mut()?.local_response.take())
    }

    /// The stream is paused in `callback`: runs this VM's events (HTTP call responses,
    /// queue notifications, ticks), moving virtual time forward to each as Envoy's event
    /// loop would, until the module continues the stream or sends a local response.
    fn wait(&mut self, direction: Direction, callback: &str) -> anyhow::Result<()> {
        let world = self.world();
        let vm = self.id();
        let deadline = world
            .lock()
            .clock
            .monotonic_nanos
            .saturating_add(MAX_WAIT_NANOS);
        loop {
            if self.take_resume(direction)? {
                return Ok(());
            }
            if self.stream_mut()?.local_response.is_some() {
                return Ok(());
            }
            if self.stream_mut()?.reset {
                return Err(anyhow::Error::new(StreamReset));
            }
            let next = world.lock().next_event(Some(vm));
            match next {
                None => bail!(
                    "the module paused the stream in {callback} and nothing pending (no HTTP \
                     call, queue item or tick) can resume it; Envoy would hold the stream until \
                     it times out"
                ),
                Some(due) if due > deadline => bail!(
                    "the module paused the stream in {callback} and did not resume it within \
                     {} virtual seconds; Envoy's stream_idle_timeout would end it",
                    MAX_WAIT_NANOS / 1_000_000_000
                ),
                Some(due) => {
                    let event = {
                        let mut w = world.lock();
                        w.move_clock_to(due);
                        w.take_due(due, Some(vm))
                    };
                    if let Some((_, event)) = event {
                        self.deliver(event.kind)?;
                    }
                }
            }
        }
    }

    fn run_stream(&mut self, ctx: u32, chunks: Vec<Vec<u8>>) -> anyhow::Result<Outcome> {
        self.call::<(u32, u32), ()>("proxy_on_context_create", (ctx, ROOT_CONTEXT_ID))
            .map_err(Self::trap)?;

        let stream = self.stream_mut()?;
        stream.request_headers_held = true;
        let count = len_u32(stream.request_headers.len());
        let go = self.callback(
            Phase::RequestHeaders,
            "proxy_on_request_headers",
            (ctx, count, u32::from(chunks.is_empty())),
        )?;
        // With `allow_on_headers_stop_iteration`, headers paused with a body to come stay
        // paused while the body callbacks run; the first that continues releases them.
        let mut headers_paused = !go && self.allow_on_headers_stop_iteration && !chunks.is_empty();
        if !go && !headers_paused && self.stream_mut()?.local_response.is_none() {
            self.wait(Direction::Request, "proxy_on_request_headers")?;
        }
        if let Some(local) = self.take_local_response()? {
            return self.encode(ctx, local_reply(&local), one_piece(local.body), None, true);
        }
        let paused_on_headers = !go && !headers_paused;
        self.stream_mut()?.request_headers_held = headers_paused;

        // While headers were paused (Envoy's default), the body arrived and Envoy buffered
        // it: the filter then sees it in one callback.
        let chunks = if paused_on_headers && chunks.len() > 1 {
            vec![chunks.concat()]
        } else {
            chunks
        };
        // `pending`: data the filter has seen but not let through (it returned Pause, i.e.
        // StopIterationAndBuffer, so Envoy buffers it and the next callback sees it all);
        // `passed`: what went on to the upstream.
        let mut passed = Vec::new();
        let last = chunks.len();
        for (i, chunk) in chunks.into_iter().enumerate() {
            let end_of_stream = i + 1 == last;
            let stream = self.stream_mut()?;
            let mut pending = stream.request_body.take().unwrap_or_default();
            pending.extend_from_slice(&chunk);
            let size = len_u32(pending.len());
            stream.request_body = Some(pending);
            let go = self.callback(
                Phase::RequestBody,
                "proxy_on_request_body",
                (ctx, size, u32::from(end_of_stream)),
            )?;
            if !go && end_of_stream && self.stream_mut()?.local_response.is_none() {
                self.stream_mut()?.request_body_held = true;
                self.wait(Direction::Request, "proxy_on_request_body")?;
            }
            if let Some(local) = self.take_local_response()? {
                return self.encode(ctx, local_reply(&local), one_piece(local.body), None, true);
            }
            let stream = self.stream_mut()?;
            stream.request_body_held = false;
            if go || end_of_stream {
                passed.extend(stream.request_body.take().unwrap_or_default());
                if headers_paused {
                    headers_paused = false;
                    stream.request_headers_held = false;
                }
            }
        }

        let stream = self.stream_mut()?;
        stream.request_body = Some(passed.clone());
        let upstream = UpstreamRequest {
            headers: stream.request_headers.entries().to_vec(),
            body: passed,
        };
        let (headers, pieces) = echo(&upstream);
        self.encode(ctx, headers, pieces, Some(upstream), false)
    }

    /// Runs a response (upstream or local) through the filter's encoder callbacks, then
    /// the access log and the end of the context.
    fn encode(
        &mut self,
        ctx: u32,
        headers: HeaderMap,
        pieces: Vec<Vec<u8>>,
        upstream: Option<UpstreamRequest>,
        mut local: bool,
    ) -> anyhow::Result<Outcome> {
        let stream = self.stream_mut()?;
        let count = len_u32(headers.len());
        stream.response_headers = Some(headers);
        stream.response_headers_held = true;
        let has_body = !pieces.is_empty();
        let go = self.callback(
            Phase::ResponseHeaders,
            "proxy_on_response_headers",
            (ctx, count, u32::from(!has_body)),
        )?;
        // A local response sent while encoding replaces the response not yet sent; a
        // second one during a local reply is ignored, as Envoy cannot send two.
        if !go && !local && self.stream_mut()?.local_response.is_none() {
            self.wait(Direction::Response, "proxy_on_response_headers")?;
        } else if !go && local {
            bail!(
                "the module paused a local reply in proxy_on_response_headers; Envoy would \
                 hold the stream until it times out"
            );
        }
        self.stream_mut()?.response_headers_held = false;
        let mut replacement = self.take_local_response()?.filter(|_| !local);
        if replacement.is_none() && has_body {
            // `pending`: data the filter has seen but not let through (it paused, so Envoy
            // buffers it and the next callback sees it all); `passed`: what went on.
            let mut passed = Vec::new();
            let last = pieces.len();
            for (i, piece) in pieces.into_iter().enumerate() {
                let end_of_stream = i + 1 == last;
                let stream = self.stream_mut()?;
                let mut pending = stream.response_body.take().unwrap_or_default();
                pending.extend_from_slice(&piece);
                let size = len_u32(pending.len());
                stream.response_body = Some(pending);
                let go = self.callback(
                    Phase::ResponseBody,
                    "proxy_on_response_body",
                    (ctx, size, u32::from(end_of_stream)),
                )?;
                if !go && end_of_stream && !local && self.stream_mut()?.local_response.is_none() {
                    self.stream_mut()?.response_body_held = true;
                    self.wait(Direction::Response, "proxy_on_response_body")?;
                } else if !go && end_of_stream && local {
                    bail!(
                        "the module paused a local reply in proxy_on_response_body; Envoy would \
                         hold the stream until it times out"
                    );
                }
                replacement = self.take_local_response()?.filter(|_| !local);
                if replacement.is_some() {
                    break;
                }
                let stream = self.stream_mut()?;
                stream.response_body_held = false;
                if go || end_of_stream {
                    passed.extend(stream.response_body.take().unwrap_or_default());
                }
            }
            if replacement.is_none() {
                self.stream_mut()?.response_body = Some(passed);
            }
        }
        if let Some(reply) = replacement {
            let stream = self.stream_mut()?;
            stream.response_headers = Some(local_reply(&reply));
            stream.response_body = Some(reply.body);
            local = true;
        }
        let stream = self.stream_mut()?;
        stream.response_headers_held = false;
        stream.response_body_held = false;
        stream.request_headers_held = false;
        let final_headers = stream.response_headers.clone().unwrap_or_default();
        let final_body = stream.response_body.clone().unwrap_or_default();

        self.simple_callback(Phase::Log, "proxy_on_log", ctx)?;
        self.store.data_mut().phase = Phase::Idle;
        self.call::<u32, u32>("proxy_on_done", ctx)
            .map_err(Self::trap)?;
        self.simple_callback(Phase::Idle, "proxy_on_delete", ctx)?;

        let status = final_headers
            .get(b":status")
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers = final_headers
            .into_entries()
            .into_iter()
            .filter(|(n, _)| !n.starts_with(':'))
            .collect();
        Ok(Outcome {
            status,
            headers,
            body: final_body,
            local_response: local,
            reset: false,
            upstream,
        })
    }
}

/// What Envoy sends for a request the filter could not handle because its VM failed
/// under FAIL_CLOSED: 503 with an empty body (response code details `wasm_fail_stream`).
pub(crate) fn fail_closed() -> Outcome {
    Outcome {
        status: 503,
        headers: vec![("content-length".to_string(), b"0".to_vec())],
        body: Vec::new(),
        local_response: true,
        reset: false,
        upstream: None,
    }
}

/// What the client gets when the filter is skipped (FAIL_OPEN after a failure): the
/// request as the client sent it reaches the echo upstream.
pub(crate) fn bypass(req: &Request) -> Outcome {
    let mut headers = vec![
        (":authority".to_string(), req.authority.clone().into_bytes()),
        (":path".to_string(), req.path.clone().into_bytes()),
        (":method".to_string(), req.method.clone().into_bytes()),
        (":scheme".to_string(), b"http".to_vec()),
    ];
    headers.extend(
        req.headers
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.clone())),
    );
    let upstream = UpstreamRequest {
        headers,
        body: req.body.clone(),
    };
    let (response, pieces) = echo(&upstream);
    let body = pieces.concat();
    Outcome {
        status: 200,
        headers: response
            .into_entries()
            .into_iter()
            .filter(|(n, _)| !n.starts_with(':'))
            .collect(),
        body,
        local_response: false,
        reset: false,
        upstream: Some(upstream),
    }
}

/// The headers of Envoy's local reply: `:status`, the module's headers (added, not
/// replacing), then `content-length` and, for a non-empty body without one,
/// `content-type: text/plain`.
fn local_reply(reply: &LocalResponse) -> HeaderMap {
    let mut headers = HeaderMap::from_pairs([(":status", reply.status.to_string().into_bytes())]);
    for (name, value) in &reply.headers {
        headers.add(name, value);
    }
    if !reply.body.is_empty() && headers.get(b"content-type").is_none() {
        headers.add(b"content-type", b"text/plain");
    }
    headers.replace(b"content-length", reply.body.len().to_string().as_bytes());
    headers
}

/// A body delivered in one piece (none when empty).
fn one_piece(body: Vec<u8>) -> Vec<Vec<u8>> {
    if body.is_empty() {
        Vec::new()
    } else {
        vec![body]
    }
}

/// The echo upstream's answer: what it received, as JSON, in one piece; or the reply an
/// `x-echo-reply` header asks for ([`crate::echo_reply`]). It sees HTTP/1 (`host` from
/// `:authority`, no pseudo-headers); repeated headers are joined with `,`.
fn echo(up: &UpstreamRequest) -> (HeaderMap, Vec<Vec<u8>>) {
    let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    let pseudo = |name: &str| {
        up.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| text(v))
            .unwrap_or_default()
    };
    let mut seen = serde_json::Map::new();
    seen.insert("host".into(), pseudo(":authority").into());
    for (name, value) in up.headers.iter().filter(|(n, _)| !n.starts_with(':')) {
        match seen.get_mut(name) {
            Some(serde_json::Value::String(existing)) => {
                existing.push(',');
                existing.push_str(&text(value));
            }
            _ => {
                seen.insert(name.clone(), text(value).into());
            }
        }
    }
    let body = serde_json::json!({
        "method": pseudo(":method"),
        "path": pseudo(":path"),
        "headers": seen,
        "body": text(&up.body),
    })
    .to_string()
    .into_bytes();
    let scripted = up
        .headers
        .iter()
        .find(|(n, _)| n == REPLY_HEADER)
        .and_then(|(_, v)| EchoReply::from_header_value(v));
    if let Some(reply) = scripted {
        let mut headers =
            HeaderMap::from_pairs([(":status", reply.status.to_string().into_bytes())]);
        for (name, value) in &reply.headers {
            headers.add(name.as_bytes(), value.as_bytes());
        }
        // The real echo writes HTTP/1: a length for a body in one piece, chunked otherwise.
        if reply.chunk.is_none() {
            headers.replace(b"content-length", reply.body.len().to_string().as_bytes());
        }
        headers.add(ECHO_MARKER.as_bytes(), b"1");
        headers.add(RECEIVED_HEADER.as_bytes(), &body);
        return (headers, reply.pieces());
    }
    let headers = HeaderMap::from_pairs([
        (":status", b"200".to_vec()),
        ("content-type", b"application/json".to_vec()),
        ("content-length", body.len().to_string().into_bytes()),
        (ECHO_MARKER, b"1".to_vec()),
    ]);
    (headers, vec![body])
}
