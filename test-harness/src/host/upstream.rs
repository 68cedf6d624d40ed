//! Scripted upstreams for `proxy_http_call`: clusters by name, each with routes matched on
//! method, path and headers, answering after a virtual delay, never (so the call times
//! out), or with a connection failure. Every call is recorded for assertions.
//!
//! ```
//! use gatehouse_harness::host::{Reply, Route, Upstream};
//! use std::time::Duration;
//! let control = Upstream::new("control")
//!     .route(Route::get("/v1/keys").reply(Reply::json(200, r#"{"keys":[]}"#).delay(Duration::from_millis(30))))
//!     .route(Route::any().reply(Reply::status(404)));
//! ```

use super::world::VmId;
use std::time::Duration;

/// A cluster HTTP calls can name. A call to a cluster the harness does not know fails with
/// `BadArgument`, as in Envoy.
#[derive(Clone, Debug)]
pub struct Upstream {
    pub cluster: String,
    pub routes: Vec<Route>,
}

/// Which calls a route answers: every given part must match. Paths match exactly
/// (including the query string) unless written with a trailing `*`, a prefix.
#[derive(Clone, Debug, Default)]
pub struct Route {
    pub method: Option<String>,
    pub path: Option<String>,
    pub headers: Vec<(String, String)>,
    pub reply: Reply,
}

/// What the upstream does with a matched call.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Answers after `delay` of virtual time. If the call's timeout is shorter, the call
    /// times out instead.
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        delay: Duration,
    },
    /// Never answers: the call ends at its timeout (or never, with timeout 0).
    Hang,
    /// The connection fails (reset) after `delay`: the module gets a response with no
    /// headers, as on a timeout.
    Reset { delay: Duration },
}

impl Default for Reply {
    fn default() -> Self {
        Reply::status(200)
    }
}

impl Upstream {
    pub fn new(cluster: &str) -> Upstream {
        Upstream {
            cluster: cluster.to_string(),
            routes: Vec::new(),
        }
    }

    /// Adds a route; routes are tried in the order added.
    pub fn route(mut self, route: Route) -> Upstream {
        self.routes.push(route);
        self
    }

    pub(crate) fn answer(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, Vec<u8>)],
    ) -> Option<&Reply> {
        self.routes
            .iter()
            .find(|r| r.matches(method, path, headers))
            .map(|r| &r.reply)
    }
}

impl Route {
    /// Matches every call.
    pub fn any() -> Route {
        Route::default()
    }

    pub fn new(method: &str, path: &str) -> Route {
        Route {
            method: Some(method.to_string()),
            path: Some(path.to_string()),
            ..Route::default()
        }
    }

    pub fn get(path: &str) -> Route {
        Route::new("GET", path)
    }

    pub fn post(path: &str) -> Route {
        Route::new("POST", path)
    }

    /// The call must carry this header with this value.
    pub fn header(mut self, name: &str, value: &str) -> Route {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    pub fn reply(mut self, reply: Reply) -> Route {
        self.reply = reply;
        self
    }

    fn matches(&self, method: &str, path: &str, headers: &[(String, Vec<u8>)]) -> bool {
        let method_ok = self
            .method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method));
        let path_ok = match self.path.as_deref() {
            None => true,
            Some(p) => match p.strip_suffix('*') {
                Some(prefix) => path.starts_with(prefix),
                None => p == path,
            },
        };
        let headers_ok = self.headers.iter().all(|(name, value)| {
            headers
                .iter()
                .any(|(n, v)| n.eq_ignore_ascii_case(name) && v.as_slice() == value.as_bytes())
        });
        method_ok && path_ok && headers_ok
    }
}

impl Reply {
    /// A response with this status and no body.
    pub fn status(status: u16) -> Reply {
        Reply::Respond {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    /// A JSON response.
    pub fn json(status: u16, body: &str) -> Reply {
        Reply::Respond {
            status,
            headers: vec![("content-type".to_string(), "application/json".to_string())],
            body: body.as_bytes().to_vec(),
            delay: Duration::ZERO,
        }
    }

    /// A response with a text body.
    pub fn text(status: u16, body: &str) -> Reply {
        Reply::Respond {
            status,
            headers: vec![("content-type".to_string(), "text/plain".to_string())],
            body: body.as_bytes().to_vec(),
            delay: Duration::ZERO,
        }
    }

    pub fn hang() -> Reply {
        Reply::Hang
    }

    pub fn reset() -> Reply {
        Reply::Reset {
            delay: Duration::ZERO,
        }
    }

    /// Adds a response header (no effect on `hang`/`reset`).
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        if let Reply::Respond { headers, .. } = &mut self {
            headers.push((name.to_ascii_lowercase(), value.to_string()));
        }
        self
    }

    /// Answers (or fails) after this much virtual time.
    pub fn delay(mut self, d: Duration) -> Reply {
        match &mut self {
            Reply::Respond { delay, .. } | Reply::Reset { delay } => *delay = d,
            Reply::Hang => {}
        }
        self
    }
}

/// How a recorded call ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallResult {
    /// Not ended yet.
    Pending,
    Responded(u16),
    TimedOut,
    Reset,
    /// The cluster is known but no route matched: answered 404 (and a case fails).
    Unmatched,
}

/// One `proxy_http_call` the module made.
#[derive(Clone, Debug)]
pub struct HttpCall {
    pub vm: VmId,
    pub cluster: String,
    pub method: String,
    pub path: String,
    pub authority: String,
    /// All headers the module sent, pseudo-headers included.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    pub timeout: Option<Duration>,
    /// Virtual wall-clock time of the call, ns since the epoch.
    pub at_nanos: u64,
    pub token: u32,
    pub result: CallResult,
}

impl HttpCall {
    /// The first value of a header the module sent, if UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}
