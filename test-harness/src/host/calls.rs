//! `proxy_http_call` against the harness's scripted upstreams, and shared queues, with
//! Envoy's statuses: an unknown cluster, a negative timeout or a request without
//! `:method`, `:path` or `:authority` is `BadArgument`; answers come back later through
//! `proxy_on_http_call_response`, never inside the call. Shared queues follow
//! proxy-wasm-cpp-host: one token per (vm id, name), the last VM to register a name gets
//! its `proxy_on_queue_ready`, any VM may dequeue, an empty queue is `Empty`.

use super::abi::status::*;
use super::headers;
use super::memory::{self, Ctx};
use super::state::HostState;
use super::upstream::{CallResult, HttpCall, Reply};
use super::world::{Event, EventKind, HttpResponse};
use std::time::Duration;
use wasmtime::{Linker, Result};

const ENV: &str = "env";

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_http_call",
        |mut c: Ctx<'_>,
         cluster_ptr: u32,
         cluster_len: u32,
         headers_ptr: u32,
         headers_len: u32,
         body_ptr: u32,
         body_len: u32,
         trailers_ptr: u32,
         trailers_len: u32,
         timeout_ms: i32,
         token_ptr: u32|
         -> Result<u32> {
            let cluster = memory::read_string(&mut c, cluster_ptr, cluster_len)?;
            let raw_headers = memory::read(&mut c, headers_ptr, headers_len)?;
            let body = memory::read(&mut c, body_ptr, body_len)?;
            memory::read(&mut c, trailers_ptr, trailers_len)?;
            if timeout_ms < 0 {
                return Ok(BAD_ARGUMENT);
            }
            let Ok(pairs) = headers::deserialize(&raw_headers) else {
                return Ok(BAD_ARGUMENT);
            };
            let pairs: Vec<(String, Vec<u8>)> = pairs
                .into_iter()
                .map(|(n, v)| (headers::lower_name(&n), v))
                .collect();
            let get = |name: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            };
            let (Some(method), Some(path), Some(authority)) =
                (get(":method"), get(":path"), get(":authority"))
            else {
                return Ok(BAD_ARGUMENT);
            };
            let context_id = c.data().current_context();
            let vm = c.data().vm;
            let timeout = (timeout_ms > 0)
                .then(|| Duration::from_millis(u64::from(timeout_ms.unsigned_abs())));

            let world = std::sync::Arc::clone(&c.data().world);
            let mut w = world.lock();
            let Some(upstream) = w.upstreams.iter().find(|u| u.cluster == cluster) else {
                return Ok(BAD_ARGUMENT);
            };
            let reply = upstream.answer(&method, &path, &pairs).cloned();
            let state = c.data_mut();
            state.next_http_token = state.next_http_token.wrapping_add(1).max(1);
            let token = state.next_http_token;
            let now = w.clock.monotonic_nanos;
            let at_nanos = w.clock.realtime_nanos;
            let index = w.calls.len();
            w.calls.push(HttpCall {
                vm,
                cluster,
                method,
                path,
                authority,
                headers: pairs,
                body,
                timeout,
                at_nanos,
                token,
                result: CallResult::Pending,
            });
            let timeout_at = timeout.map(|t| now.saturating_add(nanos(t)));
            let done = |response: Option<HttpResponse>, result: CallResult| EventKind::HttpDone {
                token,
                context_id,
                response,
                call: index,
                result,
            };
            let timed_out = done(None, CallResult::TimedOut);
            // (due, what happens): whichever of answer and timeout comes first.
            let planned = match reply {
                None => Some((
                    now,
                    done(
                        Some(response(404, &[], b"no scripted response".to_vec())),
                        CallResult::Unmatched,
                    ),
                )),
                Some(Reply::Respond {
                    status,
                    headers,
                    body,
                    delay,
                }) => Some((
                    now.saturating_add(nanos(delay)),
                    done(
                        Some(response(status, &headers, body)),
                        CallResult::Responded(status),
                    ),
                )),
                Some(Reply::Reset { delay }) => Some((
                    now.saturating_add(nanos(delay)),
                    done(None, CallResult::Reset),
                )),
                Some(Reply::Hang) => None,
            };
            let event = match (planned, timeout_at) {
                (Some((due, _)), Some(limit)) if due >= limit => Some((limit, timed_out)),
                (Some(p), _) => Some(p),
                (None, Some(limit)) => Some((limit, timed_out)),
                (None, None) => None,
            };
            if let Some((due, kind)) = event {
                w.post(due, Event { vm, kind });
            }
            drop(w);
            c.data_mut().pending_calls.insert(token, index);
            memory::write_u32(&mut c, token_ptr, token)?;
            Ok(OK)
        },
    )?;

    linker.func_wrap(
        ENV,
        "proxy_register_shared_queue",
        |mut c: Ctx<'_>, name_ptr: u32, name_len: u32, token_ptr: u32| -> Result<u32> {
            let name = memory::read_string(&mut c, name_ptr, name_len)?;
            let state = c.data();
            let token = state.world.lock().queues.register(
                &state.plugin.vm_id,
                &name,
                state.vm,
                super::ROOT_CONTEXT_ID,
            );
            memory::write_u32(&mut c, token_ptr, token)?;
            Ok(OK)
        },
    )?;

    linker.func_wrap(
        ENV,
        "proxy_resolve_shared_queue",
        |mut c: Ctx<'_>,
         vm_ptr: u32,
         vm_len: u32,
         name_ptr: u32,
         name_len: u32,
         token_ptr: u32|
         -> Result<u32> {
            let vm_id = memory::read_string(&mut c, vm_ptr, vm_len)?;
            let name = memory::read_string(&mut c, name_ptr, name_len)?;
            // An empty vm id means this VM's own id.
            let vm_id = if vm_id.is_empty() {
                c.data().plugin.vm_id.clone()
            } else {
                vm_id
            };
            let token = c.data().world.lock().queues.resolve(&vm_id, &name);
            match token {
                Some(t) => {
                    memory::write_u32(&mut c, token_ptr, t)?;
                    Ok(OK)
                }
                None => Ok(NOT_FOUND),
            }
        },
    )?;

    linker.func_wrap(
        ENV,
        "proxy_enqueue_shared_queue",
        |mut c: Ctx<'_>, token: u32, data_ptr: u32, data_len: u32| -> Result<u32> {
            let data = memory::read(&mut c, data_ptr, data_len)?;
            let mut w = c.data().world.lock();
            let Some(queue) = w.queues.queues.get_mut(&token) else {
                return Ok(NOT_FOUND);
            };
            queue.items.push_back(data);
            let (owner, context_id) = (queue.owner, queue.context_id);
            w.post_now(Event {
                vm: owner,
                kind: EventKind::QueueReady { context_id, token },
            });
            Ok(OK)
        },
    )?;

    linker.func_wrap(
        ENV,
        "proxy_dequeue_shared_queue",
        |mut c: Ctx<'_>, token: u32, ptr_ptr: u32, size_ptr: u32| -> Result<u32> {
            let item = {
                let mut w = c.data().world.lock();
                let Some(queue) = w.queues.queues.get_mut(&token) else {
                    return Ok(NOT_FOUND);
                };
                queue.items.pop_front()
            };
            match item {
                Some(data) => {
                    memory::copy_out(&mut c, &data, ptr_ptr, size_ptr)?;
                    Ok(OK)
                }
                None => Ok(EMPTY),
            }
        },
    )?;

    // The harness has no gRPC clusters: every service is unknown, which Envoy reports as
    // ParseFailure for a cluster name; tokens of calls never made are NotFound.
    linker.func_wrap(
        ENV,
        "proxy_grpc_call",
        |_c: Ctx<'_>,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32|
         -> Result<u32> { Ok(PARSE_FAILURE) },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_grpc_stream",
        |_c: Ctx<'_>,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32|
         -> Result<u32> { Ok(PARSE_FAILURE) },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_grpc_send",
        |_c: Ctx<'_>, _: u32, _: u32, _: u32, _: u32| -> Result<u32> { Ok(NOT_FOUND) },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_grpc_cancel",
        |_c: Ctx<'_>, _: u32| -> Result<u32> { Ok(NOT_FOUND) },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_grpc_close",
        |_c: Ctx<'_>, _: u32| -> Result<u32> { Ok(NOT_FOUND) },
    )?;

    // Status of the last gRPC call: there never is one, so code 0 and no message.
    linker.func_wrap(
        ENV,
        "proxy_get_status",
        |mut c: Ctx<'_>, code_ptr: u32, msg_ptr: u32, msg_size: u32| -> Result<u32> {
            memory::write_u32(&mut c, code_ptr, 0)?;
            memory::copy_out(&mut c, &[], msg_ptr, msg_size)?;
            Ok(OK)
        },
    )?;

    // Envoy's foreign functions (compress, declare_property, ...) are not provided.
    linker.func_wrap(
        ENV,
        "proxy_call_foreign_function",
        |_c: Ctx<'_>, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32| -> Result<u32> {
            Ok(NOT_FOUND)
        },
    )?;

    linker.func_wrap(ENV, "proxy_done", |_c: Ctx<'_>| -> Result<u32> { Ok(OK) })?;

    // Envoy resets the stream: the client sees the connection close, no response.
    linker.func_wrap(
        ENV,
        "proxy_close_stream",
        |mut c: Ctx<'_>, stream_type: u32| -> Result<u32> {
            if stream_type > 3 {
                return Ok(BAD_ARGUMENT);
            }
            // 0 and 1 are the HTTP request and response (2 and 3, the network streams,
            // have nothing to close in an HTTP filter).
            if let Some(stream) = c.data_mut().stream.as_mut()
                && stream_type <= 1
            {
                stream.reset = true;
            }
            Ok(OK)
        },
    )?;

    linker.func_wrap(
        ENV,
        "proxy_get_header_map_size",
        |mut c: Ctx<'_>, map_type: u32, size_ptr: u32| -> Result<u32> {
            let size = match c.data().header_map(map_type) {
                Some(map) if map.len() > 0 => headers::serialize(map.entries()).len(),
                _ => 0,
            };
            memory::write_u32(&mut c, size_ptr, u32::try_from(size).unwrap_or(u32::MAX))?;
            Ok(OK)
        },
    )?;

    Ok(())
}

/// An HTTP call response as Envoy's async client hands it over: `:status` first, the
/// upstream's headers, and `content-length`.
fn response(status: u16, headers: &[(String, String)], body: Vec<u8>) -> HttpResponse {
    let mut all = vec![(":status".to_string(), status.to_string().into_bytes())];
    all.extend(
        headers
            .iter()
            .map(|(n, v)| (n.clone(), v.clone().into_bytes())),
    );
    all.push((
        "content-length".to_string(),
        body.len().to_string().into_bytes(),
    ));
    HttpResponse {
        headers: all,
        body,
        trailers: Vec::new(),
    }
}
