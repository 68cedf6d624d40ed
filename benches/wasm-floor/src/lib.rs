//! The wasm floor: an HTTP filter that reads one request header (`x-api-key`, one host
//! call) and lets the request continue. It never refuses.
//!
//! With the plugin configuration `gatehouse-host-calls` it instead makes the host calls
//! gatehouse makes for a request with a valid API key (from a caller seen before), and
//! nothing else: the whole request header map once, the clock once, two shared-data
//! reads (the key record, the caller's rate-limit slot) and one write (the slot), four
//! request headers set (the identity sent upstream). The Envoy comparison runs it as a
//! row of its own, to split gatehouse's cost into host calls and the work inside the VM.
//! (Measured and dropped: adding the identity with `add` instead of `replace`, and in one
//! call that writes the whole header map back; neither was cheaper in Envoy.)

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { mimic: false }) });
}}

/// The shared-data entry the mimic reads: about the size of a key-cache entry.
const KEY: &str = "floor.entry";
const VALUE: &[u8] =
    b"key_bench\x00user_bench\x00tenant_bench\x00bench\x00\x00\x00\x00\x00\x00\x00\x00";

struct Root {
    mimic: bool,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        self.mimic = self
            .get_plugin_configuration()
            .is_some_and(|c| c == b"gatehouse-host-calls");
        if self.mimic {
            // Both results ignored on purpose: a CAS race with another worker leaves the
            // entry there all the same.
            let _ = self.set_shared_data(KEY, Some(VALUE), None);
        }
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Floor { mimic: self.mimic }))
    }
}

struct Floor {
    mimic: bool,
}

impl Context for Floor {}

impl HttpContext for Floor {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if !self.mimic {
            std::hint::black_box(self.get_http_request_header("x-api-key"));
            return Action::Continue;
        }
        std::hint::black_box(self.get_http_request_headers_bytes());
        std::hint::black_box(self.get_current_time());
        let mut cas = None;
        for _ in 0..2 {
            let (value, c) = self.get_shared_data(KEY);
            std::hint::black_box(value);
            cas = c;
        }
        let _ = self.set_shared_data(KEY, Some(VALUE), cas);
        for (name, value) in [
            ("x-gatehouse-user", "user_bench"),
            ("x-gatehouse-tenant", "tenant_bench"),
            ("x-gatehouse-plan", "bench"),
            ("x-gatehouse-key-id", "key_bench"),
        ] {
            self.set_http_request_header(name, Some(value));
        }
        Action::Continue
    }
}
