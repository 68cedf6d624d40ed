//! Host glue: the entry point, the raw header-map read, logging, and the host-backed
//! shared data and clock the core runs on.

use gatehouse_core::clock::Clock;
use gatehouse_core::refusal::Denial;
use gatehouse_core::store::{SharedStore, StoreError};
use gatehouse_core::time::UnixNanos;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{LogLevel, Status};

// The one place with `unsafe`: `main!` expands to the module's `_initialize` export,
// which is `#[no_mangle]`, and the header map is read with the raw host call.
#[allow(unsafe_code)]
pub(crate) mod entry {
    proxy_wasm::main! {{
        proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
        proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
            Box::new(crate::root::Root::default())
        });
    }}

    // The SDK declares the same import with its own enums; here the map type and the
    // status are plain integers (a status the enum does not know must not be UB).
    #[allow(clashing_extern_declarations)]
    #[link(wasm_import_module = "env")]
    unsafe extern "C" {
        fn proxy_get_header_map_pairs(
            map_type: u32,
            return_map_data: *mut *mut u8,
            return_map_size: *mut usize,
        ) -> u32;
    }

    /// A header map as the host serializes it ([`gatehouse_core::request::header_map`] reads it in place),
    /// empty when the host has none. The SDK's reader copies every header into a `String`
    /// and a `Vec` and panics on a name that is not UTF-8.
    pub(crate) fn header_map(map: proxy_wasm::types::MapType) -> Vec<u8> {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: the host writes a pointer and a size into the two locals; the buffer
        // is one it got from `proxy_on_memory_allocate` (the SDK's allocator: a boxed
        // byte slice of exactly `size` bytes), so it is ours to own as a `Vec` of that
        // length and capacity, as the SDK itself does.
        unsafe {
            let status = proxy_get_header_map_pairs(map as u32, &mut data, &mut size);
            if status != 0 || data.is_null() {
                return Vec::new();
            }
            Vec::from_raw_parts(data, size, size)
        }
    }
}

std::thread_local! {
    /// The host's log level, read on configure: a message below it is not even formatted
    /// (a refusal's debug line was a `format!` and a host call on every refused request,
    /// dropped by Envoy at its default level).
    static LOG_LEVEL: std::cell::Cell<u32> = const { std::cell::Cell::new(LogLevel::Trace as u32) };
}

pub(crate) fn read_log_level() {
    if let Ok(level) = hostcalls::get_log_level() {
        LOG_LEVEL.with(|l| l.set(level as u32));
    }
}

pub(crate) fn log_enabled(level: LogLevel) -> bool {
    level as u32 >= LOG_LEVEL.with(std::cell::Cell::get)
}

pub(crate) fn log(level: LogLevel, message: &str) {
    if log_enabled(level) {
        let _ = hostcalls::log(level, message);
    }
}

/// Envoy's shared data for this vm_id.
pub(crate) struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(value), cas)) => Some((value, cas.unwrap_or(0))),
            Ok((None, Some(cas))) => Some((Vec::new(), cas)),
            _ => None,
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        match hostcalls::set_shared_data(key, Some(value), Some(cas)) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(StoreError::CasMismatch),
            Err(_) => Err(StoreError::Failed),
        }
    }
}

/// The host's wall clock.
pub(crate) struct HostClock;

impl Clock for HostClock {
    fn now(&self) -> UnixNanos {
        let nanos = hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        UnixNanos(nanos)
    }
}

pub(crate) fn now_secs() -> u64 {
    HostClock.now().secs()
}

pub(crate) fn host_level(level: gatehouse_core::policy::LogLevel) -> LogLevel {
    match level {
        gatehouse_core::policy::LogLevel::Debug => LogLevel::Debug,
        gatehouse_core::policy::LogLevel::Info => LogLevel::Info,
        gatehouse_core::policy::LogLevel::Warn => LogLevel::Warn,
    }
}

/// The one place that refuses a request.
pub(crate) fn send_refusal(denial: Denial, request_id: &[u8], verbose: bool) {
    send_refusal_at(HostClock.now(), denial, request_id, verbose);
}

/// [`send_refusal`] with the time already read for the request.
pub(crate) fn send_refusal_at(now: UnixNanos, denial: Denial, request_id: &[u8], verbose: bool) {
    let reply = denial.render(now, request_id, verbose);
    if log_enabled(LogLevel::Debug) {
        log(
            LogLevel::Debug,
            &format!("refused {} {}", reply.status, denial.reason()),
        );
    }
    send_reply(&reply);
}

/// The one place that answers locally: refusals, preflights, replaced upstream errors.
pub(crate) fn send_reply(reply: &gatehouse_core::refusal::LocalReply) {
    let headers: Vec<(&str, &str)> = reply
        .headers
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .collect();
    let _ = hostcalls::send_http_response(reply.status, headers, Some(reply.body.as_bytes()));
}
