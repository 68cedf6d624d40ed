//! The security headers a response gets (`security_headers:`), as configured.

/// `Strict-Transport-Security` (RFC 6797).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hsts {
    /// Defaults to [`DEFAULT_HSTS_MAX_AGE_SECS`].
    pub max_age_secs: u64,
    /// Defaults to false.
    pub include_subdomains: bool,
    /// Asks to be preloaded into browsers; needs `include_subdomains` and a max age of a
    /// year or more (the preload list's rules). Defaults to false.
    pub preload: bool,
}

/// One year, the preload list's minimum.
pub const DEFAULT_HSTS_MAX_AGE_SECS: u64 = 31_536_000;

impl Hsts {
    pub fn value(&self) -> String {
        let mut v = format!("max-age={}", self.max_age_secs);
        if self.include_subdomains {
            v.push_str("; includeSubDomains");
        }
        if self.preload {
            v.push_str("; preload");
        }
        v
    }
}

/// The `security_headers` section, as it applies to one route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecurityHeaders {
    /// Defaults to one year, without subdomains or preload; `hsts: false` turns it off.
    pub hsts: Option<Hsts>,
    /// `X-Content-Type-Options: nosniff`. Defaults to true.
    pub nosniff: bool,
    /// Sent on HTML responses only. Defaults to none.
    pub content_security_policy: Option<String>,
    /// Response headers removed (lower case). Defaults to [`DEFAULT_REMOVE`].
    pub remove: Vec<String>,
}

/// Headers that name the software behind the gateway.
pub const DEFAULT_REMOVE: [&str; 2] = ["server", "x-powered-by"];

impl Default for SecurityHeaders {
    fn default() -> Self {
        SecurityHeaders {
            hsts: Some(Hsts {
                max_age_secs: DEFAULT_HSTS_MAX_AGE_SECS,
                include_subdomains: false,
                preload: false,
            }),
            nosniff: true,
            content_security_policy: None,
            remove: DEFAULT_REMOVE.iter().map(|s| (*s).to_string()).collect(),
        }
    }
}
