//! The proxy-wasm shell: moves bytes between Envoy and the core, decides nothing.
//!
//! `on_configure` parses the policy (Envoy refuses the configuration when it is invalid,
//! and the log line says why) and installs its static keys in shared data.
//! `on_http_request_headers` reads the request headers with one host call, asks
//! [`crate::decision::decide`], and either forwards the request with identity headers or
//! answers with the standard error body.
//!
//! Host calls go through `proxy_wasm::hostcalls` directly, never the trait helpers that
//! `unwrap` host results, and header values are read as bytes: a header that is not UTF-8
//! must not panic the VM (a panic kills it and Envoy then fails every request).

use crate::decision::{Decision, IDENTITY_HEADER_PREFIX, Presented, RequestHead, decide};
use crate::error::Denial;
use crate::key_cache;
use crate::policy::Policy;
use crate::store::{Clock, SharedStore, StoreError};
use crate::time::UnixNanos;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, Status};
use std::rc::Rc;

// `main!` expands to the module's `_initialize` export, which is `#[no_mangle]`.
#[allow(unsafe_code)]
mod entry {
    proxy_wasm::main! {{
        proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
        proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
            Box::new(super::Root { policy: None })
        });
    }}
}

fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

/// Envoy's shared data for this vm_id.
struct HostStore;

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
struct HostClock;

impl Clock for HostClock {
    fn now(&self) -> UnixNanos {
        let nanos = hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        UnixNanos(nanos)
    }
}

pub(crate) struct Root {
    policy: Option<Rc<Policy>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let config = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(Some(bytes)) if !bytes.is_empty() => bytes,
            _ => {
                log(
                    LogLevel::Error,
                    "no plugin configuration: the policy (JSON) is required",
                );
                return false;
            }
        };
        let policy = match Policy::from_json(&config) {
            Ok(policy) => policy,
            Err(errors) => {
                // One line per error: Envoy's log is read line by line.
                let count = errors.len();
                log(
                    LogLevel::Error,
                    &format!("invalid policy, configuration refused ({count} errors):"),
                );
                for line in errors.to_string().lines() {
                    log(LogLevel::Error, &format!("invalid policy: {line}"));
                }
                return false;
            }
        };
        if let Err(e) = key_cache::install_policy_keys(&policy, &HostStore) {
            log(
                LogLevel::Error,
                &format!("could not write the policy's keys to shared data: {e:?}"),
            );
            return false;
        }
        log(
            LogLevel::Info,
            &format!(
                "policy loaded: {} routes, {} static keys, {} plans",
                policy.routes.len(),
                policy.keys.len(),
                policy.plans.len()
            ),
        );
        self.policy = Some(Rc::new(policy));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Envoy creates streams only for a configured plugin; should it not, the filter
        // refuses rather than the SDK panicking on `None`.
        Some(Box::new(Filter {
            policy: self.policy.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    policy: Option<Rc<Policy>>,
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(policy) = self.policy.clone() else {
            send_refusal(Denial::NotConfigured, b"", false);
            return Action::Pause;
        };
        // One host call for the whole map: cheaper than one call per header we need, and
        // we must see every name anyway to strip client-sent identity headers.
        let headers = hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default();

        let mut method: &[u8] = b"";
        let mut path: &[u8] = b"";
        let mut request_id: &[u8] = b"";
        let mut api_key = Presented::None;
        let mut spoofed: Vec<&str> = Vec::new();
        for (name, value) in &headers {
            match name.as_str() {
                ":method" => method = value,
                ":path" => path = value,
                "x-request-id" => request_id = value,
                n if n == policy.api_key_header => {
                    api_key = match api_key {
                        Presented::None => Presented::One(value),
                        _ => Presented::Several,
                    }
                }
                n if n.starts_with(IDENTITY_HEADER_PREFIX) => spoofed.push(n),
                _ => {}
            }
        }

        let head = RequestHead {
            method,
            path,
            api_key,
        };
        match decide(&policy, &head, &HostStore, &HostClock) {
            Decision::Allow(allowed) => {
                for name in spoofed {
                    let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
                }
                if let Some(identity) = &allowed.identity {
                    for (name, value) in identity.headers() {
                        let _ = hostcalls::set_map_value(
                            MapType::HttpRequestHeaders,
                            name,
                            Some(value),
                        );
                    }
                }
                Action::Continue
            }
            Decision::Deny(denial) => {
                send_refusal(denial, request_id, policy.verbose_errors);
                Action::Pause
            }
        }
    }
}

/// The one place that answers a request locally.
fn send_refusal(denial: Denial, request_id: &[u8], verbose: bool) {
    let reply = denial.render(HostClock.now(), request_id, verbose);
    log(
        LogLevel::Debug,
        &format!("refused {} {}", reply.status, denial.reason()),
    );
    let headers: Vec<(&str, &str)> = reply
        .headers
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .collect();
    let _ = hostcalls::send_http_response(reply.status, headers, Some(reply.body.as_bytes()));
}
