//! CORS (the Fetch standard's protocol) for a policy's routes: which origins may call,
//! the answer to a preflight, and the headers on an actual response. Never reflect an
//! origin that is not listed, or send a CORS header on a refusal of a preflight.
//! Behaviour: `docs/policy.md#cors`.

pub mod preflight;

/// Which origins a CORS policy allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowedOrigins {
    /// `*`: every origin, never with credentials.
    Any,
    /// Normalised origins ([`normalize_origin`]), `null` only when listed.
    Exact(Vec<String>),
}

/// A route's CORS rules, validated and normalised at configure time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorsPolicy {
    /// Required.
    pub origins: AllowedOrigins,
    /// Methods an actual request may use (upper case). Defaults to [`DEFAULT_METHODS`].
    pub methods: Vec<String>,
    /// Request headers an actual request may carry (lower case). Defaults to
    /// `authorization`, `content-type` and the policy's API key header.
    pub headers: Vec<String>,
    /// Response headers scripts may read (lower case). Defaults to none.
    pub expose_headers: Vec<String>,
    /// How long a browser may cache a preflight answer. Defaults to
    /// [`DEFAULT_MAX_AGE_SECS`]; at most [`MAX_MAX_AGE_SECS`].
    pub max_age_secs: u64,
    /// Cookies and HTTP authentication may be sent. Defaults to false.
    pub allow_credentials: bool,
}

/// The methods allowed when a policy names none: the CORS-safelisted ones.
pub const DEFAULT_METHODS: [&str; 3] = ["GET", "HEAD", "POST"];
/// `Access-Control-Max-Age` when a policy gives none: 5 minutes.
pub const DEFAULT_MAX_AGE_SECS: u64 = 300;
/// Browsers cap the preflight cache anyway (Firefox 24 h, Chromium 2 h).
pub const MAX_MAX_AGE_SECS: u64 = 86_400;

/// Why a preflight was refused; clients only see `CORS_REJECTED`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CorsRefusal {
    /// The origin is not listed for the route.
    Origin,
    /// The requested method is not in the route's `allowed_methods`.
    Method,
    /// A requested header is not in the route's `allowed_headers`.
    Headers,
    /// No route matches the requested method and path, or the route says `cors: false`.
    Route,
}

impl CorsRefusal {
    /// The precise reason, for logs only.
    pub fn reason(self) -> &'static str {
        match self {
            CorsRefusal::Origin => "cors_origin",
            CorsRefusal::Method => "cors_method",
            CorsRefusal::Headers => "cors_headers",
            CorsRefusal::Route => "cors_route",
        }
    }
}

/// Why a policy entry is not an origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OriginError {
    /// `https://*.example.com` and the like.
    Wildcard,
    /// Not `scheme://host[:port]` (a path, a trailing slash, user info, a bad port...).
    NotAnOrigin,
}

/// The RFC 6454 serialization of `raw`, normalised for comparison: scheme and host in
/// lower case, a default port dropped. `null` stays `null`. `Err` for anything with a
/// path, query, user info, wildcard or bytes outside visible ASCII.
pub fn normalize_origin(raw: &str) -> Result<String, OriginError> {
    if raw == "null" {
        return Ok(raw.to_string());
    }
    if raw.contains('*') {
        return Err(OriginError::Wildcard);
    }
    let (scheme, rest) = raw.split_once("://").ok_or(OriginError::NotAnOrigin)?;
    let scheme = scheme.to_ascii_lowercase();
    let scheme_ok = scheme
        .as_bytes()
        .first()
        .is_some_and(u8::is_ascii_lowercase)
        && scheme
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
    if !scheme_ok {
        return Err(OriginError::NotAnOrigin);
    }
    let (host, port) = split_host_port(rest).ok_or(OriginError::NotAnOrigin)?;
    let host = host.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => Some("443"),
        "http" => Some("80"),
        _ => None,
    };
    Ok(match port {
        Some(p) if Some(p) != default_port => format!("{scheme}://{host}:{p}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// `host` or `host:port` or `[v6]` or `[v6]:port`, validated.
fn split_host_port(s: &str) -> Option<(&str, Option<&str>)> {
    let (host, port) = if s.starts_with('[') {
        let end = s.find(']')?;
        let (host, after) = s.split_at(end + 1);
        let inner = host.get(1..host.len() - 1)?;
        let v6 = !inner.is_empty()
            && inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        if !v6 {
            return None;
        }
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':')?)),
        }
    } else {
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        let reg_name = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !reg_name {
            return None;
        }
        (host, port)
    };
    if let Some(p) = port {
        let valid = !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| (1..=65_535).contains(&n));
        if !valid {
            return None;
        }
    }
    Some((host, port))
}

/// Whether a normalised origin points at the developer's own machine (`localhost`,
/// `*.localhost`, `127.0.0.0/8`, `[::1]`, `0.0.0.0`): fine in development, a mistake in
/// a production policy.
pub fn is_local_origin(origin: &str) -> bool {
    let Some((_, rest)) = origin.split_once("://") else {
        return false;
    };
    let host = match split_host_port(rest) {
        Some((host, _)) => host,
        None => return false,
    };
    host == "localhost"
        || host.ends_with(".localhost")
        || host == "[::1]"
        || host == "0.0.0.0"
        || host.strip_prefix("127.").is_some_and(|r| {
            r.split('.').count() == 3 && r.split('.').all(|o| o.parse::<u8>().is_ok())
        })
}

impl CorsPolicy {
    /// Whether `origin` (the request's `Origin` header, as sent) may call.
    pub fn allows_origin(&self, origin: &[u8]) -> bool {
        let Ok(text) = std::str::from_utf8(origin) else {
            return false;
        };
        match &self.origins {
            // `null` is an opaque origin: `*` does not cover it.
            AllowedOrigins::Any => text != "null" && normalize_origin(text).is_ok(),
            AllowedOrigins::Exact(list) => normalize_origin(text).is_ok_and(|o| list.contains(&o)),
        }
    }

    /// Whether responses differ by origin (and so need `Vary: Origin`).
    pub fn varies_by_origin(&self) -> bool {
        matches!(self.origins, AllowedOrigins::Exact(_))
    }

    fn allow_origin_value(&self, origin: &str) -> String {
        match self.origins {
            AllowedOrigins::Any => "*".to_string(),
            AllowedOrigins::Exact(_) => origin.to_string(),
        }
    }

    /// The CORS headers of an actual response to `origin`, which [`allows_origin`]
    /// accepted (`Vary` is merged by the caller, it may already have one).
    ///
    /// [`allows_origin`]: CorsPolicy::allows_origin
    pub fn response_headers(&self, origin: &str) -> Vec<(&'static str, String)> {
        let mut out = vec![(
            "access-control-allow-origin",
            self.allow_origin_value(origin),
        )];
        if self.allow_credentials {
            out.push(("access-control-allow-credentials", "true".to_string()));
        }
        if !self.expose_headers.is_empty() {
            out.push((
                "access-control-expose-headers",
                self.expose_headers.join(", "),
            ));
        }
        out
    }

    fn preflight_headers(&self, origin: &str) -> Vec<(&'static str, String)> {
        let mut out = vec![
            (
                "access-control-allow-origin",
                self.allow_origin_value(origin),
            ),
            ("access-control-allow-methods", self.methods.join(", ")),
        ];
        if !self.headers.is_empty() {
            out.push(("access-control-allow-headers", self.headers.join(", ")));
        }
        out.push(("access-control-max-age", self.max_age_secs.to_string()));
        if self.allow_credentials {
            out.push(("access-control-allow-credentials", "true".to_string()));
        }
        if self.varies_by_origin() {
            out.push(("vary", "Origin".to_string()));
        }
        out
    }
}

/// The headers that are gatehouse's on a CORS route: the upstream's are removed.
pub const RESPONSE_HEADER_NAMES: [&str; 6] = [
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-expose-headers",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-max-age",
];

/// A CORS preflight, as the request carried it.
#[derive(Clone, Copy, Debug)]
pub struct Preflight<'a> {
    /// The raw `:path`, query string included.
    pub path: &'a [u8],
    pub origin: &'a [u8],
    /// `Access-Control-Request-Method`.
    pub method: &'a [u8],
    /// Every `Access-Control-Request-Headers` line (each a comma-separated list).
    pub headers: &'a [&'a [u8]],
}

impl<'a> Preflight<'a> {
    /// The preflight in a request, if it is one: `OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`. Any other `OPTIONS` is an ordinary request.
    pub fn from_request(
        method: &[u8],
        path: &'a [u8],
        origin: Option<&'a [u8]>,
        request_method: Option<&'a [u8]>,
        request_headers: &'a [&'a [u8]],
    ) -> Option<Preflight<'a>> {
        if method != b"OPTIONS" {
            return None;
        }
        Some(Preflight {
            path,
            origin: origin?,
            method: request_method?,
            headers: request_headers,
        })
    }
}

/// The `Vary` value once `Origin` is added to what the response already has (every
/// `Vary` line, joined); `None` when it already varies by origin (or by everything).
pub fn vary_with_origin(existing: &[&[u8]]) -> Option<String> {
    let mut tokens = existing
        .iter()
        .flat_map(|line| line.split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
        .peekable();
    if tokens.peek().is_none() {
        return Some("Origin".to_string());
    }
    let mut kept = Vec::new();
    for t in tokens {
        if t == b"*" || t.eq_ignore_ascii_case(b"origin") {
            return None;
        }
        kept.push(String::from_utf8_lossy(t).into_owned());
    }
    kept.push("Origin".to_string());
    Some(kept.join(", "))
}

/// The precise reason, as logs and metrics name it.
impl std::fmt::Display for CorsRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(origins: &[&str]) -> CorsPolicy {
        CorsPolicy {
            origins: AllowedOrigins::Exact(
                origins
                    .iter()
                    .map(|o| normalize_origin(o).unwrap())
                    .collect(),
            ),
            methods: vec!["GET".into(), "POST".into(), "DELETE".into()],
            headers: vec!["content-type".into(), "x-api-key".into()],
            expose_headers: vec!["ratelimit-remaining".into()],
            max_age_secs: 600,
            allow_credentials: true,
        }
    }

    #[test]
    fn origins_are_normalised_as_rfc_6454_serializations() {
        assert_eq!(
            normalize_origin("HTTPS://App.Example.COM").unwrap(),
            "https://app.example.com"
        );
        assert_eq!(
            normalize_origin("https://app.example.com:443").unwrap(),
            "https://app.example.com"
        );
        assert_eq!(
            normalize_origin("http://localhost:80").unwrap(),
            "http://localhost"
        );
        assert_eq!(
            normalize_origin("http://localhost:3000").unwrap(),
            "http://localhost:3000"
        );
        assert_eq!(
            normalize_origin("https://[::1]:8443").unwrap(),
            "https://[::1]:8443"
        );
        assert_eq!(normalize_origin("null").unwrap(), "null");
    }

    #[test]
    fn things_that_are_not_origins_are_refused() {
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "https://user@app.example.com",
            "https://app.example.com?x",
            "https://app.example.com:0",
            "https://app.example.com:99999",
            "https://app.example.com:",
            "https://",
            "https://app example.com",
            "https://app.exämple.com",
            "1https://x",
            "Null",
        ] {
            assert_eq!(
                normalize_origin(bad),
                Err(OriginError::NotAnOrigin),
                "{bad}"
            );
        }
        assert_eq!(
            normalize_origin("https://*.example.com"),
            Err(OriginError::Wildcard)
        );
        assert_eq!(normalize_origin("*"), Err(OriginError::Wildcard));
    }

    #[test]
    fn a_listed_origin_matches_whatever_the_case_of_scheme_and_host() {
        let c = exact(&["https://app.example.com", "http://localhost:3000"]);
        assert!(c.allows_origin(b"https://app.example.com"));
        assert!(c.allows_origin(b"HTTPS://APP.example.com"));
        assert!(c.allows_origin(b"https://app.example.com:443"));
        assert!(c.allows_origin(b"http://localhost:3000"));
        assert!(!c.allows_origin(b"http://app.example.com"));
        assert!(!c.allows_origin(b"https://app.example.com.evil.com"));
        assert!(!c.allows_origin(b"https://evil-app.example.com"));
        assert!(!c.allows_origin(b"http://localhost:3001"));
        assert!(!c.allows_origin(b"null"));
        assert!(!c.allows_origin(b"https://app.example.com\xff"));
    }

    #[test]
    fn null_is_allowed_only_when_listed_and_never_by_the_wildcard() {
        assert!(exact(&["null"]).allows_origin(b"null"));
        let any = CorsPolicy {
            origins: AllowedOrigins::Any,
            allow_credentials: false,
            ..exact(&[])
        };
        assert!(any.allows_origin(b"https://anything.example"));
        assert!(!any.allows_origin(b"null"));
        assert!(!any.allows_origin(b"not an origin"));
        assert_eq!(
            any.response_headers("https://anything.example")[0],
            ("access-control-allow-origin", "*".to_string())
        );
        assert!(!any.varies_by_origin());
    }

    #[test]
    fn an_actual_response_echoes_the_origin_with_credentials_and_exposed_headers() {
        let c = exact(&["https://app.example.com"]);
        assert_eq!(
            c.response_headers("https://app.example.com"),
            vec![
                (
                    "access-control-allow-origin",
                    "https://app.example.com".to_string()
                ),
                ("access-control-allow-credentials", "true".to_string()),
                (
                    "access-control-expose-headers",
                    "ratelimit-remaining".to_string()
                ),
            ]
        );
    }

    #[test]
    fn local_origins_are_recognised() {
        for local in [
            "http://localhost:3000",
            "http://localhost",
            "http://app.localhost:8080",
            "http://127.0.0.1:5173",
            "http://127.1.2.3",
            "http://[::1]:3000",
            "http://0.0.0.0:8000",
        ] {
            assert!(is_local_origin(local), "{local}");
        }
        for remote in [
            "https://app.example.com",
            "https://localhost.example.com",
            "http://127.0.0.1.example.com",
            "null",
        ] {
            assert!(!is_local_origin(remote), "{remote}");
        }
    }

    #[test]
    fn vary_gets_origin_added_once() {
        assert_eq!(vary_with_origin(&[]), Some("Origin".to_string()));
        assert_eq!(
            vary_with_origin(&[b"Accept-Encoding"]),
            Some("Accept-Encoding, Origin".to_string())
        );
        assert_eq!(
            vary_with_origin(&[b"accept-encoding, Accept", b"Cookie"]),
            Some("accept-encoding, Accept, Cookie, Origin".to_string())
        );
        assert_eq!(vary_with_origin(&[b"Accept, origin"]), None);
        assert_eq!(vary_with_origin(&[b"*"]), None);
    }

    #[test]
    fn a_preflight_is_an_options_request_with_origin_and_request_method() {
        let h: [&[u8]; 0] = [];
        assert!(
            Preflight::from_request(b"OPTIONS", b"/", Some(b"https://a.b"), Some(b"PUT"), &h)
                .is_some()
        );
        assert!(
            Preflight::from_request(b"OPTIONS", b"/", Some(b"https://a.b"), None, &h).is_none()
        );
        assert!(Preflight::from_request(b"OPTIONS", b"/", None, Some(b"PUT"), &h).is_none());
        assert!(
            Preflight::from_request(b"GET", b"/", Some(b"https://a.b"), Some(b"PUT"), &h).is_none()
        );
    }

    #[test]
    fn refusal_reasons_name_the_failed_check() {
        assert_eq!(CorsRefusal::Origin.reason(), "cors_origin");
        assert_eq!(CorsRefusal::Method.reason(), "cors_method");
        assert_eq!(CorsRefusal::Headers.reason(), "cors_headers");
        assert_eq!(CorsRefusal::Route.reason(), "cors_route");
    }
}
