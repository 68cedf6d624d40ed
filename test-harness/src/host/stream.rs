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
//! - A paused callback holds its header map reachable until the stream continues; data
//!   continuing (`on_request_body` returning Continue) also releases paused headers.
//! - A stream paused with no local response and no `proxy_continue_stream` would hang in
//!   Envoy until a timeout: here it is an error naming the callback.
//! - The upstream is an echo, like the Envoy suite's: `200 application/json`,
//!   `{"method","path","headers","body"}`, and `x-echo-upstream: 1`.

use super::headers::HeaderMap;
use super::request::{Outcome, Request, UpstreamRequest};
use super::state::{LocalResponse, Phase, Stream};
use super::{Harness, ROOT_CONTEXT_ID, len_u32};
use anyhow::{anyhow, bail};

/// Response header marking answers from the echo upstream; the same name as
/// `crate::envoy::echo::ECHO_MARKER`, so cases tell upstream answers apart on both backends.
const ECHO_MARKER: &str = "x-echo-upstream";

/// proxy-wasm `Action::Continue`.
const CONTINUE: u32 = 0;

impl Harness {
    /// Sends one request through the filter and returns what the client got.
    ///
    /// An `Err` means the stream could not complete as Envoy would run it: the module
    /// trapped (the message includes its panic message), or it paused the stream for good.
    pub fn request(&mut self, req: Request) -> anyhow::Result<Outcome> {
        if let Some(first) = &self.failed {
            bail!("the VM failed earlier and Envoy does not call it again; first failure: {first}");
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
                let id = self.store.data_mut().rng.uuid_v4();
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
        let result = self.run_stream(context_id, req.body);
        let state = self.store.data_mut();
        state.stream = None;
        state.phase = Phase::Idle;
        result
    }

    fn stream_mut(&mut self) -> anyhow::Result<&mut Stream> {
        self.store
            .data_mut()
            .stream
            .as_mut()
            .ok_or_else(|| anyhow!("no stream in progress"))
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
            .map_err(anyhow::Error::msg)?
            .unwrap_or(CONTINUE);
        let stream = self.stream_mut()?;
        let resumed = match phase {
            Phase::RequestHeaders | Phase::RequestBody => {
                std::mem::take(&mut stream.resume_request)
            }
            _ => std::mem::take(&mut stream.resume_response),
        };
        Ok(action == CONTINUE || resumed)
    }

    fn simple_callback(&mut self, phase: Phase, name: &str, context_id: u32) -> anyhow::Result<()> {
        self.store.data_mut().phase = phase;
        self.call::<u32, ()>(name, context_id)
            .map_err(anyhow::Error::msg)?;
        Ok(())
    }

    fn take_local_response(&mut self) -> anyhow::Result<Option<LocalResponse>> {
        Ok(self.stream_mut()?.local_response.take())
    }

    fn run_stream(&mut self, ctx: u32, body: Vec<u8>) -> anyhow::Result<Outcome> {
        self.call::<(u32, u32), ()>("proxy_on_context_create", (ctx, ROOT_CONTEXT_ID))
            .map_err(anyhow::Error::msg)?;

        let has_body = !body.is_empty();
        let stream = self.stream_mut()?;
        stream.request_headers_held = true;
        let count = len_u32(stream.request_headers.len());
        let go = self.callback(
            Phase::RequestHeaders,
            "proxy_on_request_headers",
            (ctx, count, u32::from(!has_body)),
        )?;
        if go {
            self.stream_mut()?.request_headers_held = false;
        }
        if let Some(local) = self.take_local_response()? {
            return self.encode(ctx, local_reply(&local), local.body, None, true);
        }

        let mut paused_in = (!go).then_some("proxy_on_request_headers");
        if has_body {
            let size = len_u32(body.len());
            self.stream_mut()?.request_body = Some(body);
            let go = self.callback(Phase::RequestBody, "proxy_on_request_body", (ctx, size, 1))?;
            if let Some(local) = self.take_local_response()? {
                return self.encode(ctx, local_reply(&local), local.body, None, true);
            }
            let stream = self.stream_mut()?;
            if go {
                // Data continuing releases headers held by StopIteration, as in Envoy.
                stream.request_headers_held = false;
                paused_in = None;
            } else {
                stream.request_body_held = true;
                paused_in = Some("proxy_on_request_body");
            }
        }
        if let Some(callback) = paused_in {
            bail!(
                "the module paused the request in {callback} and neither continued it nor \
                 sent a local response; Envoy would hold the stream until it times out"
            );
        }

        let stream = self.stream_mut()?;
        stream.request_body_held = false;
        let upstream = UpstreamRequest {
            headers: stream.request_headers.entries().to_vec(),
            body: stream.request_body.clone().unwrap_or_default(),
        };
        let (headers, body) = echo(&upstream);
        self.encode(ctx, headers, body, Some(upstream), false)
    }

    /// Runs a response (upstream or local) through the filter's encoder callbacks, then
    /// the access log and the end of the context.
    fn encode(
        &mut self,
        ctx: u32,
        headers: HeaderMap,
        body: Vec<u8>,
        upstream: Option<UpstreamRequest>,
        mut local: bool,
    ) -> anyhow::Result<Outcome> {
        let stream = self.stream_mut()?;
        let count = len_u32(headers.len());
        stream.response_headers = Some(headers);
        stream.response_headers_held = true;
        let has_body = !body.is_empty();
        let go = self.callback(
            Phase::ResponseHeaders,
            "proxy_on_response_headers",
            (ctx, count, u32::from(!has_body)),
        )?;
        if go {
            self.stream_mut()?.response_headers_held = false;
        }
        let mut paused_in = (!go).then_some("proxy_on_response_headers");
        // A local response sent while encoding replaces the response not yet sent; a
        // second one during a local reply is ignored, as Envoy cannot send two.
        let mut replacement = self.take_local_response()?.filter(|_| !local);
        if replacement.is_none() && has_body {
            let size = len_u32(body.len());
            self.stream_mut()?.response_body = Some(body);
            let go = self.callback(
                Phase::ResponseBody,
                "proxy_on_response_body",
                (ctx, size, 1),
            )?;
            if go {
                self.stream_mut()?.response_headers_held = false;
                paused_in = None;
            } else {
                paused_in = Some("proxy_on_response_body");
            }
            replacement = self.take_local_response()?.filter(|_| !local);
        }
        if let Some(reply) = replacement {
            let stream = self.stream_mut()?;
            stream.response_headers = Some(local_reply(&reply));
            stream.response_body = Some(reply.body);
            local = true;
            paused_in = None;
        }
        if let Some(callback) = paused_in {
            bail!(
                "the module paused the response in {callback} and never continued it; \
                 Envoy would hold the stream until it times out"
            );
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
            .map_err(anyhow::Error::msg)?;
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
            upstream,
        })
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

/// The echo upstream's answer: what it received, as JSON. It sees HTTP/1 (`host` from
/// `:authority`, no pseudo-headers); repeated headers are joined with `,`.
fn echo(up: &UpstreamRequest) -> (HeaderMap, Vec<u8>) {
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
    let headers = HeaderMap::from_pairs([
        (":status", b"200".to_vec()),
        ("content-type", b"application/json".to_vec()),
        ("content-length", body.len().to_string().into_bytes()),
        (ECHO_MARKER, b"1".to_vec()),
    ]);
    (headers, body)
}
