//! Route matching: which policy route a request (method + path) belongs to, first match
//! wins, and the 400 refusal of requests an upstream could read as another route.
//! Every rule and why: `docs/policy.md#writing-a-policy` ("One request, one meaning").

use crate::request::query::hex_digit;

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
    /// Whether `path` is this route's, comparing bytes with `eq` (exact, or ignoring ASCII
    /// case). An exact path owns its trailing-slash twin; a prefix ending in `/` owns the
    /// path without that slash; a prefix without one matches whole segments only.
    fn matches_by(&self, path: &[u8], eq: fn(&[u8], &[u8]) -> bool) -> bool {
        match self {
            PathMatch::Exact(p) => {
                let (p, path) = (strip_slash(p.as_bytes()), strip_slash(path));
                eq(path, p)
            }
            PathMatch::Prefix(p) => {
                let p = p.as_bytes();
                let Some(head) = path.get(..p.len()) else {
                    // Shorter than the prefix: only `/admin` against `/admin/`.
                    return p.len() > 1 && p.ends_with(b"/") && eq(path, strip_slash(p));
                };
                if !eq(head, p) {
                    return false;
                }
                let rest = path.get(p.len()..).unwrap_or_default();
                p.ends_with(b"/") || rest.is_empty() || rest.starts_with(b"/")
            }
        }
    }
}

/// `path` without one trailing `/` (but `/` stays `/`, and `/a//` keeps both).
fn strip_slash(path: &[u8]) -> &[u8] {
    match path.strip_suffix(b"/") {
        Some(rest) if !rest.is_empty() && !rest.ends_with(b"/") => rest,
        _ => path,
    }
}

fn exact(a: &[u8], b: &[u8]) -> bool {
    a == b
}

fn folded(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
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
    pub security_headers: Option<crate::response::headers::SecurityHeaders>,
    /// Upstream error responses are replaced by the standard body. Defaults to the
    /// policy's `upstream_errors.replace`.
    pub upstream_errors: bool,
    /// Size limit and JSON caps (`body:`): the policy's `body` with the route's
    /// overrides. Defaults to 1 MiB and no JSON caps ([`crate::body`]).
    pub body: crate::body::BodyPolicy,
    /// A webhook's signature rules (`webhook:`). Defaults to none ([`crate::body::webhook`]).
    pub webhook: Option<crate::body::webhook::Webhook>,
    /// The webhook check's mode (`webhook.mode`; a lever `webhook:<route name>` overrides
    /// it). Defaults to `enforce`.
    pub webhook_mode: crate::levers::Mode,
    /// The body limit's mode (`body.mode`; a lever `body:<route name>` overrides it).
    /// Defaults to `enforce`.
    pub body_mode: crate::levers::Mode,
    /// Requests with servlet path parameters (`/cars;color=red/x`) may reach this route
    /// (`match.path_parameters: allow`), matched with the parameters cut from every
    /// segment, as the upstream reads them. Defaults to false: such a path is refused.
    pub path_parameters: bool,
}

/// A route's own limit, e.g. login 10 per minute per client address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteLimit {
    pub rate: crate::limit::Rate,
    pub by: crate::limit::LimitBy,
    /// Its own `scope`, when it gives one (else the `rate_limit` section's).
    pub scope: Option<crate::limit::Scope>,
    /// Its name (`name:`, else the route's when it is the route's one unnamed limit):
    /// unique among the policy's limits, what levers and shadow counts call it.
    pub name: String,
    /// Its mode (`mode:`; a lever for its name overrides it). Defaults to `enforce`.
    pub mode: crate::levers::Mode,
}

impl Route {
    fn matches(&self, method: &[u8], path: &[u8]) -> bool {
        self.matches_by(method, path, exact)
    }

    fn matches_by(&self, method: &[u8], path: &[u8], eq: fn(&[u8], &[u8]) -> bool) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| m.as_bytes() == method))
            && self.path.matches_by(path, eq)
    }
}

/// Why a request was refused before matching: what in it could mean something else to
/// the upstream (`docs/policy.md`, "One request, one meaning"). Each is a 400 `BAD_REQUEST`; the name is the reason
/// logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unclear {
    /// Not in normal form ([`check_normal_form`]).
    Path,
    /// A segment ends in `.` or an encoded space.
    TrailingDot,
    /// A path parameter (`;`) on a route that does not allow them.
    PathParameter,
    /// The path's letter case is all that tells it from an earlier route's.
    Case,
    /// The method is not an upper-case RFC 9110 token.
    Method,
}

impl Unclear {
    /// The reason logged and counted.
    pub fn reason(self) -> &'static str {
        match self {
            Unclear::Path => "ambiguous_path",
            Unclear::TrailingDot => "path_trailing_dot",
            Unclear::PathParameter => "path_parameter",
            Unclear::Case => "path_case",
            Unclear::Method => "bad_method",
        }
    }
}

/// The longest method accepted (Envoy's own bound is far larger; no real method is).
pub const MAX_METHOD_LEN: usize = 32;

/// RFC 9110 §5.6.2 `tchar`, less the lower-case letters.
fn is_method_char(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether `method` is an upper-case RFC 9110 token, the only kind routes are matched on.
pub fn is_method(method: &[u8]) -> bool {
    !method.is_empty()
        && method.len() <= MAX_METHOD_LEN
        && method.iter().all(|&b| is_method_char(b))
}

/// The route a request belongs to: `Ok(Some(index))`, `Ok(None)` when no route matches,
/// or why the request could mean something else upstream. `raw_path` is the `:path`
/// header, query included; matching ignores the query. The one entry point, so no
/// caller can match a route without the "one request, one meaning" checks.
pub fn resolve(routes: &[Route], method: &[u8], raw_path: &[u8]) -> Result<Option<usize>, Unclear> {
    if !is_method(method) {
        return Err(Unclear::Method);
    }
    let path = path_only(raw_path);
    if raw_path.get(path.len()) == Some(&b'#') {
        return Err(Unclear::Path);
    }
    if path.contains(&b';') {
        return resolve_parameters(routes, method, path);
    }
    check_normal_form(path)?;
    find_unambiguous(routes, method, path)
}

/// A path with `;`: matched as a servlet container reads it, parameters cut, and served
/// only by a route that allows them.
fn resolve_parameters(
    routes: &[Route],
    method: &[u8],
    path: &[u8],
) -> Result<Option<usize>, Unclear> {
    let mut cut = Vec::with_capacity(path.len());
    for (i, seg) in path.split(|&b| b == b'/').enumerate() {
        if i > 0 {
            cut.push(b'/');
        }
        let end = seg.iter().position(|&b| b == b';').unwrap_or(seg.len());
        cut.extend_from_slice(seg.get(..end).unwrap_or(seg));
    }
    check_normal_form(&cut)?;
    match find_unambiguous(routes, method, &cut)? {
        Some(i) if routes.get(i).is_some_and(|r| r.path_parameters) => Ok(Some(i)),
        _ => Err(Unclear::PathParameter),
    }
}

/// The first route that matches, unless a route before it matches when letter case is
/// ignored: a case-insensitive upstream would serve that one instead.
fn find_unambiguous(
    routes: &[Route],
    method: &[u8],
    path: &[u8],
) -> Result<Option<usize>, Unclear> {
    // Exact matches are case-insensitive matches, so the first case-insensitive match is
    // at or before the first exact one; it must be the same route.
    match routes
        .iter()
        .position(|r| r.matches_by(method, path, folded))
    {
        Some(i) if routes.get(i).is_some_and(|r| r.matches(method, path)) => Ok(Some(i)),
        Some(_) => Err(Unclear::Case),
        None => Ok(None),
    }
}

/// The path part of a `:path` header, without query or fragment.
pub fn path_only(raw: &[u8]) -> &[u8] {
    let end = raw
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(raw.len());
    raw.get(..end).unwrap_or(raw)
}

/// Refuses paths not in normal form, which could mean something else to the upstream
/// (RFC 3986 §6.2.2.2 makes `%61dmin` the path `admin`; IIS decodes `%uXXXX`, servlets
/// cut `;...`, Windows drops trailing dots);
/// `;` is refused too ([`resolve`] cuts path parameters first where a route allows them).
pub fn check_normal_form(path: &[u8]) -> Result<(), Unclear> {
    if !path.starts_with(b"/") || !path.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(Unclear::Path);
    }
    if path.contains(&b'\\') || path.contains(&b';') || path.contains(&b'#') {
        return Err(Unclear::Path);
    }
    let mut i = 0;
    while let Some(at) = path
        .get(i..)
        .and_then(|rest| rest.iter().position(|&b| b == b'%'))
    {
        i += at + 1;
        match (path.get(i), path.get(i + 1)) {
            (Some(b'u' | b'U'), _) => return Err(Unclear::Path),
            (Some(&hi), Some(&lo)) => {
                if let (Some(hi), Some(lo)) = (hex_digit(hi), hex_digit(lo)) {
                    let decoded = (hi << 4) | lo;
                    if decodes_to_another_route(decoded)
                        || (decoded == b'%' && double_escape(path.get(i + 2..)))
                    {
                        return Err(Unclear::Path);
                    }
                }
            }
            _ => {}
        }
    }
    if path.contains(&b'%') && folds_into_ascii(path) {
        return Err(Unclear::Case);
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
            return Err(Unclear::Path);
        }
        if seg.ends_with(b".") || seg.ends_with(b"%20") {
            return Err(Unclear::TrailingDot);
        }
        // An NTFS stream name (`admin.aspx::$DATA`): IIS serves the file it names.
        if seg.windows(3).any(|w| w == b"::$") {
            return Err(Unclear::Path);
        }
    }
    Ok(())
}

/// The UTF-8 of the non-ASCII characters whose case mapping is ASCII: `ı` (U+0131,
/// upper case `I`), `ſ` (U+017F, upper case `S`) and the Kelvin sign (U+212A, lower case
/// `k`). A router that compares with Unicode case-insensitivity (ASP.NET's
/// `OrdinalIgnoreCase` upper-cases invariantly) serves `/adm%C4%B1n` as `/ADMIN`.
const FOLDS_INTO_ASCII: [&[u8]; 3] = [&[0xc4, 0xb1], &[0xc5, 0xbf], &[0xe2, 0x84, 0xaa]];

/// Whether `path` holds a percent-escaped [`FOLDS_INTO_ASCII`] character.
fn folds_into_ascii(path: &[u8]) -> bool {
    // The last three escaped bytes, in order, with no allocation; an unescaped byte between
    // two of them can only make a false alarm on text that is not UTF-8 anyway.
    let mut last = [0u8; 3];
    path.windows(3).any(|w| {
        let [b'%', hi, lo] = *w else {
            return false;
        };
        let (Some(hi), Some(lo)) = (hex_digit(hi), hex_digit(lo)) else {
            return false;
        };
        last = [last[1], last[2], (hi << 4) | lo];
        FOLDS_INTO_ASCII.iter().any(|seq| last.ends_with(seq))
    })
}

/// A byte whose percent-escape an upstream would decode into a different route: an
/// unreserved character (RFC 3986 §6.2.2.2), a separator (`/`, `\`, `;`), a control
/// byte, or an overlong UTF-8 lead (`%C0%AE` is `.` to lax decoders).
fn decodes_to_another_route(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || b"-._~/\\;".contains(&b)
        || b.is_ascii_control()
        || b == 0xc0
        || b == 0xc1
}

/// After `%25`: whether the escape is a second escape of a byte [`decodes_to_another_route`]
/// (`%252e` is `%2e` after one decoding and `.` after two).
fn double_escape(rest: Option<&[u8]>) -> bool {
    match rest {
        Some([b'u' | b'U', ..]) => true,
        Some([hi, lo, ..]) => match (hex_digit(*hi), hex_digit(*lo)) {
            (Some(hi), Some(lo)) => decodes_to_another_route((hi << 4) | lo),
            _ => false,
        },
        _ => false,
    }
}

/// Finds the first route that matches `path` (already in normal form), by index into
/// `routes`, with no ambiguity check: [`resolve`] is the request path's entry.
pub fn find(routes: &[Route], method: &[u8], path: &[u8]) -> Option<usize> {
    routes.iter().position(|r| r.matches(method, path))
}

/// The precise reason, as logs and metrics name it.
impl std::fmt::Display for Unclear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
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
            webhook_mode: Default::default(),
            body_mode: Default::default(),
            path_parameters: false,
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
        assert!(!r.matches(b"GET", b"/v10"));
        assert!(!r.matches(b"GET", b"/v"));
        let root = route(PathMatch::Prefix("/".into()), &[]);
        assert!(root.matches(b"GET", b"/"));
        assert!(root.matches(b"GET", b"/anything"));
    }

    #[test]
    fn a_route_owns_its_trailing_slash_twin() {
        let login = route(PathMatch::Exact("/login".into()), &[]);
        assert!(login.matches(b"POST", b"/login"));
        assert!(login.matches(b"POST", b"/login/"));
        assert!(!login.matches(b"POST", b"/login//"));
        assert!(!login.matches(b"POST", b"/login/x"));
        assert!(!login.matches(b"POST", b"/logins"));
        let slashed = route(PathMatch::Exact("/login/".into()), &[]);
        assert!(slashed.matches(b"POST", b"/login"));
        assert!(slashed.matches(b"POST", b"/login/"));
        let admin = route(PathMatch::Prefix("/admin/".into()), &[]);
        assert!(admin.matches(b"GET", b"/admin"));
        assert!(admin.matches(b"GET", b"/admin/"));
        assert!(admin.matches(b"GET", b"/admin/users"));
        assert!(!admin.matches(b"GET", b"/administrator"));
        let root = route(PathMatch::Exact("/".into()), &[]);
        assert!(root.matches(b"GET", b"/"));
        assert!(!root.matches(b"GET", b"//"));
    }

    #[test]
    fn exact_paths_and_methods_must_both_match() {
        let r = route(PathMatch::Exact("/healthz".into()), &["GET", "HEAD"]);
        assert!(r.matches(b"HEAD", b"/healthz"));
        assert!(!r.matches(b"POST", b"/healthz"));
        assert!(!r.matches(b"get", b"/healthz"));
        assert!(r.matches(b"GET", b"/healthz/"));
    }

    #[test]
    fn the_first_matching_route_wins() {
        let routes = vec![
            route(PathMatch::Exact("/v1/login".into()), &[]),
            route(PathMatch::Prefix("/v1/".into()), &[]),
        ];
        assert_eq!(find(&routes, b"GET", b"/v1/login"), Some(0));
        assert_eq!(find(&routes, b"GET", b"/v1/login/"), Some(0));
        assert_eq!(find(&routes, b"GET", b"/v1/other"), Some(1));
        assert_eq!(find(&routes, b"GET", b"/v2/other"), None);
    }

    #[test]
    fn the_query_string_is_not_part_of_the_path() {
        assert_eq!(path_only(b"/a/b?x=/c#f"), b"/a/b");
        assert_eq!(path_only(b"/a#f?x"), b"/a");
    }

    #[test]
    fn methods_must_be_upper_case_tokens() {
        for good in [
            &b"GET"[..],
            b"DELETE",
            b"M-SEARCH",
            b"PROPFIND",
            b"BREW!",
            b"X_1",
        ] {
            assert!(is_method(good), "{:?}", String::from_utf8_lossy(good));
        }
        for bad in [
            &b""[..],
            b"get",
            b"delete",
            b"Delete",
            b"GET ",
            b"G(ET",
            b"GE\x00T",
            b"GE/T",
            b"\xc3\x89T",
            &[b'A'; 33],
        ] {
            assert!(!is_method(bad), "{:?}", String::from_utf8_lossy(bad));
        }
        let routes = vec![route(PathMatch::Prefix("/".into()), &[])];
        assert_eq!(resolve(&routes, b"delete", b"/x"), Err(Unclear::Method));
        assert_eq!(resolve(&routes, b"DELETE", b"/x"), Ok(Some(0)));
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
            // Separators, controls and the spellings lax decoders read as one.
            b"/admin%3Bx=1/users",
            b"/admin%3bx",
            b"/admin%00.json",
            b"/admin%0a",
            b"/admin%7F",
            b"/%u0061dmin",
            b"/%U002e%U002e/admin",
            b"/%C0%AE%C0%AE/admin",
            b"/%c1%9c",
            b"/%252e%252e/admin",
            b"/v1%252fadmin",
            b"/%2561dmin",
            b"/a%25u002e",
            b"/admin#frag",
            b"/admin.aspx::$DATA",
            // Unicode characters whose case mapping is ASCII.
            b"/adm%C4%B1n/users",
            b"/%c5%bfecret",
            b"/%E2%84%AAeys",
            b"/admin::$INDEX_ALLOCATION/users",
        ] {
            assert!(
                check_normal_form(bad).is_err(),
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
            b"/v1/file.json",
            b"/v1/projects/p:run",
            b"/v1/a::b",
            // Encoded reserved and other characters keep their meaning.
            b"/v1/a%3Ab",
            b"/v1/a%25b",
            b"/v1/a%2525",
            b"/v1/%25zz",
            b"/v1/%E2%82%AC",
            b"/v1/%C4%B0",
            b"/v1/%C3%A9t%C3%A9",
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

    #[test]
    fn segments_ending_in_a_dot_or_an_encoded_space_are_refused() {
        for bad in [
            &b"/admin./users"[..],
            b"/admin.",
            b"/admin..",
            b"/admin.../x",
            b"/v1/users./",
            b"/admin%20/users",
            b"/admin%20",
        ] {
            assert_eq!(
                check_normal_form(bad),
                Err(Unclear::TrailingDot),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    fn routes_with_internal_admin() -> Vec<Route> {
        let mut admin = route(PathMatch::Prefix("/admin".into()), &[]);
        admin.name = "admin".into();
        let mut login = route(PathMatch::Exact("/login".into()), &["POST"]);
        login.name = "login".into();
        let mut cars = route(PathMatch::Prefix("/cars/".into()), &[]);
        cars.path_parameters = true;
        let mut public = route(PathMatch::Prefix("/".into()), &[]);
        public.audience = Audience::External;
        vec![admin, login, cars, public]
    }

    /// The class: whatever a servlet container, IIS or a case-insensitive framework would
    /// route to the internal `/admin` never falls through to the external catch-all.
    #[test]
    fn requests_an_upstream_reads_as_another_route_are_refused() {
        let routes = routes_with_internal_admin();
        for (path, why) in [
            ("/public/..;/admin/users", Unclear::Path),
            ("/admin;jsessionid=x/users", Unclear::PathParameter),
            ("/admin;/users", Unclear::PathParameter),
            ("/login;x=1", Unclear::PathParameter),
            ("/public;x=1", Unclear::PathParameter),
            ("/v1/billing/..;/admin/keys", Unclear::Path),
            ("/admin./users", Unclear::TrailingDot),
            ("/admin%20/users", Unclear::TrailingDot),
            ("/ADMIN/users", Unclear::Case),
            ("/Admin", Unclear::Case),
            ("/LOGIN", Unclear::Case),
            ("/cars;x=1/..;/admin", Unclear::Path),
        ] {
            let method: &[u8] = if path.to_ascii_lowercase().starts_with("/login") {
                b"POST"
            } else {
                b"GET"
            };
            assert_eq!(
                resolve(&routes, method, path.as_bytes()),
                Err(why),
                "{path}"
            );
        }
        // The same routes in their own spelling, twins and all.
        for (method, path, want) in [
            (&b"GET"[..], "/admin/users", 0),
            (b"GET", "/admin", 0),
            (b"GET", "/admin/", 0),
            (b"POST", "/login", 1),
            (b"POST", "/login/", 1),
            (b"GET", "/login", 3),
            (b"GET", "/public/x?y=;", 3),
            (b"GET", "/public/Mixed/Case/ID", 3),
            (b"GET", "/cars;color=red/x", 2),
            (b"GET", "/cars/x;v=1", 2),
            (b"GET", "/cars;a=b", 2),
        ] {
            assert_eq!(
                resolve(&routes, method, path.as_bytes()),
                Ok(Some(want)),
                "{path}"
            );
        }
    }
}
