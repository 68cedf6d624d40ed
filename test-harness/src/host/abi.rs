//! The proxy-wasm ABI 0.2.1 host functions (module `env`), with Envoy's semantics.
//!
//! Each function decodes guest arguments, acts on the [`HostState`] of this harness and
//! returns a proxy-wasm status. Statuses are the ones Envoy returns in the same situation
//! (e.g. `BadArgument` for a header map Envoy no longer holds, `NotFound` for an absent
//! header or key), because the SDK panics on any status it does not expect and a test
//! must see that panic exactly where Envoy would cause it. Imports not listed here are
//! linked by [`super::linking`] as traps naming the call.

use super::headers::{self, HeaderMap};
use super::log::LogLevel;
use super::memory::{self, Ctx};
use super::state::{HostState, LocalResponse, MetricError, MetricKind, Phase};
use super::world::{Event, EventKind};
use wasmtime::{Linker, Result};

/// proxy-wasm `WasmResult` codes (proxy-wasm-0.2.5 `types::Status`).
pub(crate) mod status {
    pub const OK: u32 = 0;
    pub const NOT_FOUND: u32 = 1;
    pub const BAD_ARGUMENT: u32 = 2;
    pub const SERIALIZATION_FAILURE: u32 = 3;
    pub const PARSE_FAILURE: u32 = 4;
    pub const EMPTY: u32 = 7;
    pub const CAS_MISMATCH: u32 = 8;
}
use status::*;

fn metric_status(r: std::result::Result<(), MetricError>) -> u32 {
    match r {
        Ok(()) => OK,
        Err(MetricError::NotFound) => NOT_FOUND,
        Err(MetricError::BadArgument) => BAD_ARGUMENT,
    }
}

/// Adds every implemented `env.proxy_*` function to `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> Result<()> {
    const ENV: &str = "env";

    linker.func_wrap(
        ENV,
        "proxy_log",
        |mut c: Ctx<'_>, level: u32, ptr: u32, len: u32| -> Result<u32> {
            let Some(level) = LogLevel::from_abi(level) else {
                return Ok(BAD_ARGUMENT);
            };
            let message = memory::read_string(&mut c, ptr, len)?;
            c.data_mut().log(level, message);
            Ok(OK)
        },
    )?;

    linker.func_wrap(
        ENV,
        "proxy_get_log_level",
        |mut c: Ctx<'_>, ret: u32| -> Result<u32> {
            let level = c.data().world.lock().log_level.to_abi();
            memory::write_u32(&mut c, ret, level)?;
            Ok(OK)
        },
    )?;

    linker.func_wrap(
        ENV,
        "proxy_get_current_time_nanoseconds",
        |mut c: Ctx<'_>, ret: u32| -> Result<u32> {
            let now = c.data().world.lock().clock.realtime_nanos;
            memory::write_u64(&mut c, ret, now)?;
            Ok(OK)
        },
    )?;

    linker.func_wrap(
        ENV,
        "proxy_set_tick_period_milliseconds",
        |mut c: Ctx<'_>, period: u32| -> Result<u32> {
            // Envoy re-arms the root context's timer: the first tick comes one period from
            // now; 0 stops ticking.
            let state = c.data_mut();
            state.tick_period_ms = period;
            let vm = state.vm;
            let mut world = state.world.lock();
            world.cancel_ticks(vm);
            if period > 0 {
                let due = world.clock.monotonic_nanos + u64::from(period) * 1_000_000;
                world.post(
                    due,
                    Event {
                        vm,
                        kind: EventKind::Tick,
                    },
                );
            }
            Ok(OK)
        },
    )?;

    // Envoy: absent buffer NotFound; the range is clipped to the buffer; nothing is written
    // for an empty result (the SDK's out-pointers start null).
    linker.func_wrap(
        ENV,
        "proxy_get_buffer_bytes",
        |mut c: Ctx<'_>,
         ty: u32,
         start: u32,
         max: u32,
         ret_ptr: u32,
         ret_size: u32|
         -> Result<u32> {
            let Some(buffer) = c.data().buffer(ty) else {
                return Ok(NOT_FOUND);
            };
            let start = start as usize;
            if start > buffer.len() {
                return Ok(BAD_ARGUMENT);
            }
            let end = start.saturating_add(max as usize).min(buffer.len());
            let bytes = buffer.get(start..end).unwrap_or_default().to_vec();
            if !bytes.is_empty() {
                memory::copy_out(&mut c, &bytes, ret_ptr, ret_size)?;
            }
            Ok(OK)
        },
    )?;

    // Envoy's `Buffer::copyFrom`: start 0 replaces the first `size` bytes (prepends when
    // size is 0), start at or past the end appends, anything else is BadArgument.
    linker.func_wrap(
        ENV,
        "proxy_set_buffer_bytes",
        |mut c: Ctx<'_>, ty: u32, start: u32, size: u32, ptr: u32, len: u32| -> Result<u32> {
            let data = memory::read(&mut c, ptr, len)?;
            let Some(buffer) = c.data_mut().buffer_mut(ty) else {
                return Ok(NOT_FOUND);
            };
            if start == 0 {
                let drop = (size as usize).min(buffer.len());
                buffer.splice(..drop, data);
            } else if start as usize >= buffer.len() {
                buffer.extend_from_slice(&data);
            } else {
                return Ok(BAD_ARGUMENT);
            }
            Ok(OK)
        },
    )?;

    linker.func_wrap(
        ENV,
        "proxy_get_header_map_pairs",
        |mut c: Ctx<'_>, ty: u32, ret_ptr: u32, ret_size: u32| -> Result<u32> {
            // Envoy answers Ok with an empty map when the map is not reachable.
            let bytes = match c.data().header_map(ty) {
                Some(map) if map.len() > 0 => headers::serialize(map.entries()),
                _ => Vec::new(),
            };
            memory::copy_out(&mut c, &bytes, ret_ptr, ret_size)?;
            Ok(OK)
        },
    )?;

    linker.func_wrap(
        ENV,
        "proxy_set_header_map_pairs",
        |mut c: Ctx<'_>, ty: u32, ptr: u32, len: u32| -> Result<u32> {
            let bytes = memory::read(&mut c, ptr, len)?;
            let Ok(pairs) = headers::deserialize(&bytes) else {
                return Ok(SERIALIZATION_FAILURE);
            };
            let Some(map) = c.data_mut().header_map_mut(ty) else {
                return Ok(BAD_ARGUMENT);
            };
            *map = HeaderMap::from_pairs(pairs);
            Ok(OK)
        },
    )?;

    linker.func_wrap(
        ENV,
        "proxy_get_header_map_value",
        |mut c: Ctx<'_>,
         ty: u32,
         kptr: u32,
         klen: u32,
         ret_ptr: u32,
         ret_size: u32|
         -> Result<u32> {
            let key = memory::read(&mut c, kptr, klen)?;
            let state = c.data();
            let value = match state.header_map(ty) {
                Some(map) => map.get(&key).map(<[u8]>::to_vec),
                // Envoy: an unreachable map is NotFound in the access-log phase (maps may be
                // null there), BadArgument otherwise.
                None if state.phase == Phase::Log => None,
                None => return Ok(BAD_ARGUMENT),
            };
            match value {
                Some(v) => {
                    memory::copy_out(&mut c, &v, ret_ptr, ret_size)?;
                    Ok(OK)
                }
                None => Ok(NOT_FOUND),
            }
        },
    )?;

    linker.func_wrap(
        ENV,
        "proxy_replace_header_map_value",
        |mut c: Ctx<'_>, ty: u32, kptr: u32, klen: u32, vptr: u32, vlen: u32| -> Result<u32> {
            let key = memory::read(&mut c, kptr, klen)?;
            let value = memory::read(&mut c, vptr, vlen)?;
            match c.data_mut().header_map_mut(ty) {
                Some(map) => {
                    map.replace(&key, &value);
                    Ok(OK)
                }
                None => Ok(BAD_ARGUMENT),
            }
        },
    )?;

    linker.func_wrap(
        ENV,
        "proxy_add_header_map_value",
        |mut c: Ctx<'_>, ty: u32, kptr: u32, klen: u32, vptr: u32, vlen: u32| -> Result<u32> {
            let key = memory::read(&mut c, kptr, klen)?;
            let value = memory::read(&mut c, vptr, vlen)?;
            match c.data_mut().header_map_mut(ty) {
                Some(map) => {
                    map.add(&key, &value);
                    Ok(OK)
                }
                None => Ok(BAD_ARGUMENT),
            }
        },
    )?;

    linker.func_wrap(
        ENV,
        "proxy_remove_header_map_value",
        |mut c: Ctx<'_>, ty: u32, kptr: u32, klen: u32| -> Result<u32> {
            let key = memory::read(&mut c, kptr, klen)?;
            match c.data_mut().header_map_mut(ty) {
                Some(map) => {
                    map.remove(&key);
                    Ok(OK)
                }
                None => Ok(BAD_ARGUMENT),
            }
        },
    )?;

    linker.func_wrap(
        ENV,
        "proxy_get_property",
        |mut c: Ctx<'_>, pptr: u32, plen: u32, ret_ptr: u32, ret_size: u32| -> Result<u32> {
            let raw = memory::read(&mut c, pptr, plen)?;
            let path = property_path(&raw);
            match property(c.data(), &path) {
                Some(value) => {
                    memory::copy_out(&mut c, &value, ret_ptr, ret_size)?;
                    Ok(OK)
                }
                None => Ok(NOT_FOUND),
            }
        },
    )?;

    linker.func_wrap(
        ENV,
        "proxy_set_property",
        |mut c: Ctx<'_>, pptr: u32, plen: u32, vptr: u32, vlen: u32| -> Result<u32> {
            let raw = memory::read(&mut c, pptr, plen)?;
            let value = memory::read(&mut c, vptr, vlen)?;
            // Envoy keeps these in the stream's filter state: no stream, nowhere to put it.
            match c.data_mut().stream.as_mut() {
                Some(stream) => {
                    stream.properties.insert(property_path(&raw), value);
                    Ok(OK)
                }
                None => Ok(NOT_FOUND),
            }
        },
    )?;

    linker.func_wrap(
        ENV,
        "proxy_get_shared_data",
        |mut c: Ctx<'_>,
         kptr: u32,
         klen: u32,
         ret_ptr: u32,
         ret_size: u32,
         ret_cas: u32|
         -> Result<u32> {
            let key = memory::read(&mut c, kptr, klen)?;
            let found = c
                .data()
                .world
                .lock()
                .shared
                .get(&key)
                .map(|(v, cas)| (v.to_vec(), cas));
            let Some((value, cas)) = found else {
                return Ok(NOT_FOUND);
            };
            memory::copy_out(&mut c, &value, ret_ptr, ret_size)?;
            memory::write_u32(&mut c, ret_cas, cas)?;
            Ok(OK)
        },
    )?;

    linker.func_wrap(
        ENV,
        "proxy_set_shared_data",
        |mut c: Ctx<'_>, kptr: u32, klen: u32, vptr: u32, vlen: u32, cas: u32| -> Result<u32> {
            let key = memory::read(&mut c, kptr, klen)?;
            let value = memory::read(&mut c, vptr, vlen)?;
            let result = c.data().world.lock().shared.set(&key, &value, cas);
            match result {
                Ok(()) => Ok(OK),
                Err(_) => Ok(CAS_MISMATCH),
            }
        },
    )?;

    // Envoy defers continueDecoding/continueEncoding until the callback returns; the stream
    // driver reads these flags then.
    linker.func_wrap(
        ENV,
        "proxy_continue_stream",
        |mut c: Ctx<'_>, stream_type: u32| -> Result<u32> {
            let Some(stream) = c.data_mut().stream.as_mut() else {
                return Ok(OK);
            };
            match stream_type {
                0 => stream.resume_request = true,
                1 => stream.resume_response = true,
                _ => return Ok(BAD_ARGUMENT),
            }
            Ok(OK)
        },
    )?;

    linker.func_wrap(
        ENV,
        "proxy_send_local_response",
        |mut c: Ctx<'_>,
         status_code: u32,
         dptr: u32,
         dlen: u32,
         bptr: u32,
         blen: u32,
         hptr: u32,
         hlen: u32,
         _grpc_status: i32|
         -> Result<u32> {
            // Details only feed Envoy's access log (%RESPONSE_CODE_DETAILS%); read to
            // check the pointer like Envoy does, then dropped.
            memory::read(&mut c, dptr, dlen)?;
            let body = memory::read(&mut c, bptr, blen)?;
            let raw_headers = memory::read(&mut c, hptr, hlen)?;
            let Ok(headers) = headers::deserialize(&raw_headers) else {
                return Ok(BAD_ARGUMENT);
            };
            let state = c.data_mut();
            // Envoy answers Ok and does nothing when there is no HTTP stream to reply on.
            if let Some(stream) = state.stream.as_mut() {
                // Envoy would queue both; only the first can reach the client.
                if stream.local_response.is_none() {
                    stream.local_response = Some(LocalResponse {
                        status: status_code,
                        body,
                        headers,
                    });
                }
            }
            Ok(OK)
        },
    )?;

    linker.func_wrap(
        ENV,
        "proxy_define_metric",
        |mut c: Ctx<'_>, ty: u32, nptr: u32, nlen: u32, ret_id: u32| -> Result<u32> {
            let kind = match ty {
                0 => MetricKind::Counter,
                1 => MetricKind::Gauge,
                2 => MetricKind::Histogram,
                _ => return Ok(BAD_ARGUMENT),
            };
            let name = memory::read_string(&mut c, nptr, nlen)?;
            let id = c.data().world.lock().metrics.define(kind, name);
            memory::write_u32(&mut c, ret_id, id)?;
            Ok(OK)
        },
    )?;

    linker.func_wrap(
        ENV,
        "proxy_increment_metric",
        |c: Ctx<'_>, id: u32, offset: i64| -> Result<u32> {
            Ok(metric_status(
                c.data().world.lock().metrics.increment(id, offset),
            ))
        },
    )?;

    linker.func_wrap(
        ENV,
        "proxy_record_metric",
        |c: Ctx<'_>, id: u32, value: u64| -> Result<u32> {
            Ok(metric_status(
                c.data().world.lock().metrics.record(id, value),
            ))
        },
    )?;

    linker.func_wrap(
        ENV,
        "proxy_get_metric",
        |mut c: Ctx<'_>, id: u32, ret: u32| -> Result<u32> {
            let value = c.data().world.lock().metrics.get(id);
            match value {
                Ok(v) => {
                    memory::write_u64(&mut c, ret, v)?;
                    Ok(OK)
                }
                Err(e) => Ok(metric_status(Err(e))),
            }
        },
    )?;

    linker.func_wrap(
        ENV,
        "proxy_set_effective_context",
        |c: Ctx<'_>, context_id: u32| -> Result<u32> {
            let known = context_id == super::ROOT_CONTEXT_ID
                || c.data()
                    .stream
                    .as_ref()
                    .is_some_and(|s| s.context_id == context_id);
            Ok(if known { OK } else { BAD_ARGUMENT })
        },
    )?;

    super::calls::add_to_linker(linker)?;
    Ok(())
}

/// The SDK sends a property path as NUL-separated segments; we key properties by the
/// dotted form people write (`source.address`).
fn property_path(raw: &[u8]) -> String {
    raw.split(|b| *b == 0)
        .map(String::from_utf8_lossy)
        .collect::<Vec<_>>()
        .join(".")
}

/// Properties Envoy would answer for this plugin. Strings are raw bytes, integers 8-byte
/// little-endian, as Envoy serializes CEL values for the ABI.
fn property(state: &HostState, path: &str) -> Option<Vec<u8>> {
    match path {
        "plugin_name" => return Some(state.plugin.name.as_bytes().to_vec()),
        "plugin_root_id" => return Some(state.plugin.root_id.as_bytes().to_vec()),
        "plugin_vm_id" => return Some(state.plugin.vm_id.as_bytes().to_vec()),
        // Envoy 1.40 answers `xds.node`; older versions `node`.
        "xds.node.id" | "node.id" => return Some(state.plugin.node_id.as_bytes().to_vec()),
        _ => {}
    }
    let stream = state.stream.as_ref()?;
    if let Some(v) = stream.properties.get(path) {
        return Some(v.clone());
    }
    match path {
        "source.address" => Some(stream.source_address.as_bytes().to_vec()),
        "source.port" => {
            let port: i64 = stream
                .source_address
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse().ok())
                .unwrap_or(0);
            Some(port.to_le_bytes().to_vec())
        }
        "request.path" => Some(stream.path.clone()),
        "request.url_path" => {
            let end = stream
                .path
                .iter()
                .position(|b| *b == b'?')
                .unwrap_or(stream.path.len());
            Some(stream.path.get(..end).unwrap_or_default().to_vec())
        }
        "request.query" => {
            let start = stream.path.iter().position(|b| *b == b'?')?;
            Some(stream.path.get(start + 1..).unwrap_or_default().to_vec())
        }
        "request.host" => stream
            .request_headers
            .get(b":authority")
            .map(<[u8]>::to_vec),
        "request.scheme" => Some(b"http".to_vec()),
        "request.protocol" => Some(b"HTTP/1.1".to_vec()),
        "request.useragent" => stream
            .request_headers
            .get(b"user-agent")
            .map(<[u8]>::to_vec),
        "request.referer" => stream.request_headers.get(b"referer").map(<[u8]>::to_vec),
        "destination.address" => Some(b"127.0.0.1:10000".to_vec()),
        "destination.port" => Some(10000i64.to_le_bytes().to_vec()),
        "connection.mtls" => Some(vec![0]),
        "response.code" => {
            let code: i64 = stream
                .response_headers
                .as_ref()?
                .get(b":status")
                .and_then(|s| std::str::from_utf8(s).ok())
                .and_then(|s| s.parse().ok())?;
            Some(code.to_le_bytes().to_vec())
        }
        "request.method" => Some(stream.method.clone()),
        "request.id" => Some(stream.request_id.clone()),
        _ => None,
    }
}
