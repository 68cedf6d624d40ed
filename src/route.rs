//! Route matching: which policy route a request (method + path) belongs to.
//!
//! Routes are compiled once at configure time and matched in order; the first match
//! wins. Matching uses the path without its query string. A path that is not in normal
//! form (`//`, `.` or `..` segments, percent-encoded `/` or `\` or unreserved characters,
//! a backslash, bytes outside visible ASCII) is refused before matching: such paths are
//! how prefix rules get bypassed when the gateway and the upstream normalise differently.
//! RFC 3986 §6.2.2.2 makes `%61dmin` the same path as `admin` (an encoded letter, digit,
//! `-`, `.`, `_` or `~` is that character), so an upstream that decodes it would serve
//! `/admin` to a request that matched no internal route here.

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience {
    /// The caller must present a valid identity.
    Internal,
    /// Anonymous callers are let through.
    External,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    /// The whole path must be equal.
    Exact(String),
    /// The path starts with it; without a trailing `/`, only whole segments match.
    Prefix(String),
}

impl PathMatch {
    fn matches(&self, path: &[u8]) -> bool {
        match self {
            PathMatch::Exact(p) => path == p.as_bytes(),
            PathMatch::Prefix(p) => {
                let p = p.as_bytes();
                match path.strip_prefix(p) {
                    None => false,
                    Some(rest) => p.ends_with(b"/") || rest.is_empty() || rest.starts_with(b"/"),
                }
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub name: String,
    pub path: PathMatch,
    /// Upper-case method names; empty means any method.
    pub methods: Vec<String>,
    pub audience: Audience,
    /// The route group API-key scopes name; `None`: in no group (a scoped key may not
    /// call it).
    pub group: Option<String>,
    /// Limits on top of the plan's (`limits:`). Defaults to none.
    pub limits: Vec<RouteLimit>,
    /// CORS on this route: the policy's `cors` with the route's overrides; `None` with
    /// `cors: false` or no CORS anywhere. Defaults to the policy's.
    pub cors: Option<crate::cors::CorsPolicy>,
    /// Security headers on this route's responses, merged like `cors`. Defaults to the
    /// policy's.
    pub security_headers: Option<crate::response::SecurityHeaders>,
    /// Upstream error responses are replaced by the standard body. Defaults to the
    /// policy's `upstream_errors.replace`.
    pub upstream_errors: bool,
    /// Size limit and JSON caps (`body:`): the policy's `body` with the route's
    /// overrides. Defaults to 1 MiB and no JSON caps ([`crate::body`]).
    pub body: crate::body::BodyPolicy,
    /// A webhook's signature rules (`webhook:`). Defaults to none ([`crate::signature`]).
    pub webhook: Option<crate::signature::Webhook>,
}

/// A route's own limit, e.g. login 10 per minute per client address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteLimit {
    pub rate: crate::rate_limit::Rate,
    pub by: crate::policy::LimitBy,
}

impl Route {
    fn matches(&self, method: &[u8], path: &[u8]) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| m.as_bytes() == method))
            && self.path.matches(path)
    }
}

/// Why a request's path was refused before matching.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AmbiguousPath;

/// The path part of a `:path` header, without query or fragment.
pub fn path_only(raw: &[u8]) -> &[u8] {
    let end = raw
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(raw.len());
    raw.get(..end).unwrap_or(raw)
}

/// Refuses paths that could mean something else to the upstream (see the module doc).
pub fn check_normal_form(path: &[u8]) -> Result<(), AmbiguousPath> {
    if !path.starts_with(b"/") || !path.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(AmbiguousPath);
    }
    if path.contains(&b'\\') {
        return Err(AmbiguousPath);
    }
    for w in path.windows(3) {
        if let [b'%', hi, lo] = *w
            && let (Some(hi), Some(lo)) = (hex_digit(hi), hex_digit(lo))
        {
            let decoded = (hi << 4) | lo;
            if decoded.is_ascii_alphanumeric() || b"-._~/\\".contains(&decoded) {
                return Err(AmbiguousPath);
            }
        }
    }
    // Segments after the leading slash; a trailing slash gives one empty last segment,
    // which is fine.
    let mut segments = path
        .get(1..)
        .unwrap_or_default()
        .split(|&b| b == b'/')
        .peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if seg == b"." || seg == b".." || (seg.is_empty() && !last) {
            return Err(AmbiguousPath);
        }
    }
    Ok(())
}

fn hex_digit(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// The first `max` bytes of `raw` with `%XX` decoded (a malformed escape kept as it is),
/// borrowed when there is no escape.
pub fn percent_decoded(raw: &[u8], max: usize) -> std::borrow::Cow<'_, [u8]> {
    let raw = raw.get(..max).unwrap_or(raw);
    if !raw.contains(&b'%') {
        return std::borrow::Cow::Borrowed(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        let escaped = match (b, raw.get(i + 1), raw.get(i + 2)) {
            (b'%', Some(&hi), Some(&lo)) => hex_digit(hi).zip(hex_digit(lo)),
            _ => None,
        };
        match escaped {
            Some((hi, lo)) => {
                out.push((hi << 4) | lo);
                i += 3;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Finds the first route that matches, by index into `routes`.
pub fn find(routes: &[Route], method: &[u8], path: &[u8]) -> Option<usize> {
    routes.iter().position(|r| r.matches(method, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: PathMatch, methods: &[&str]) -> Route {
        Route {
            group: None,
            limits: Vec::new(),
            cors: None,
            security_headers: None,
            upstream_errors: false,
            body: Default::default(),
            webhook: None,
            name: "r".into(),
            path,
            methods: methods.iter().map(|m| m.to_string()).collect(),
            audience: Audience::Internal,
        }
    }

    #[test]
    fn prefix_without_slash_matches_whole_segments_only() {
        let r = route(PathMatch::Prefix("/v1".into()), &[]);
        assert!(r.matches(b"GET", b"/v1"));
        assert!(r.matches(b"GET", b"/v1/x"));
        assert!(!r.matches(b"GET", b"/v10"));
        let r = route(PathMatch::Prefix("/v1/".into()), &[]);
        assert!(r.matches(b"GET", b"/v1/x"));
        assert!(!r.matches(b"GET", b"/v1"));
    }

    #[test]
    fn exact_paths_and_methods_must_both_match() {
        let r = route(PathMatch::Exact("/healthz".into()), &["GET", "HEAD"]);
        assert!(r.matches(b"HEAD", b"/healthz"));
        assert!(!r.matches(b"POST", b"/healthz"));
        assert!(!r.matches(b"get", b"/healthz"));
        assert!(!r.matches(b"GET", b"/healthz/"));
    }

    #[test]
    fn the_first_matching_route_wins() {
        let routes = vec![
            route(PathMatch::Exact("/v1/login".into()), &[]),
            route(PathMatch::Prefix("/v1/".into()), &[]),
        ];
        assert_eq!(find(&routes, b"GET", b"/v1/login"), Some(0));
        assert_eq!(find(&routes, b"GET", b"/v1/other"), Some(1));
        assert_eq!(find(&routes, b"GET", b"/v2/other"), None);
    }

    #[test]
    fn the_query_string_is_not_part_of_the_path() {
        assert_eq!(path_only(b"/a/b?x=/c#f"), b"/a/b");
        assert_eq!(path_only(b"/a#f?x"), b"/a");
    }

    #[test]
    fn paths_not_in_normal_form_are_refused() {
        for bad in [
            &b""[..],
            b"v1/x",
            b"//v1/x",
            b"/v1//x",
            b"/v1/./x",
            b"/v1/../admin",
            b"/v1/..",
            b"/v1/%2e%2e/admin",
            b"/v1/%2E/x",
            b"/v1%2fadmin",
            b"/v1%5Cadmin",
            b"/v1\\admin",
            b"/v1/\xc3\xa9",
            b"/v1/a b",
            // Encoded unreserved characters are the characters themselves (RFC 3986).
            b"/%61dmin/users",
            b"/%41DMIN",
            b"/v1/%7euser",
            b"/v1/%5F",
            b"/v%31/x",
            b"/v1/a%2Db",
        ] {
            assert_eq!(
                check_normal_form(bad),
                Err(AmbiguousPath),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        for good in [
            &b"/"[..],
            b"/v1/x",
            b"/v1/x/",
            b"/v1/a%20b",
            b"/v1/.well-known",
            b"/v1/a..b",
            // Encoded reserved and other characters keep their meaning.
            b"/v1/a%3Ab",
            b"/v1/a%25b",
            b"/v1/%E2%82%AC",
            b"/v1/50%",
            b"/v1/%zz",
        ] {
            assert_eq!(
                check_normal_form(good),
                Ok(()),
                "{:?}",
                String::from_utf8_lossy(good)
            );
        }
    }
}
