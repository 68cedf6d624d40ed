//! The request as the core sees it: the head (method, path, credential headers, client
//! address), and which header names gatehouse owns in any spelling an upstream may read.

pub mod header_map;
pub mod query;

use crate::authn::api_key::check_format;

/// Identity headers set for the upstream. Client-sent `x-gatehouse-*` headers are always
/// removed first, so an upstream can trust every header with this prefix.
pub const IDENTITY_HEADER_PREFIX: &str = "x-gatehouse-";
pub const HEADER_USER: &str = "x-gatehouse-user";
pub const HEADER_TENANT: &str = "x-gatehouse-tenant";
pub const HEADER_PLAN: &str = "x-gatehouse-plan";
pub const HEADER_KEY_ID: &str = "x-gatehouse-key-id";
/// The JWT provider (`jwt.providers[].name`) whose token authenticated the caller; absent
/// for an API key. An upstream that takes tokens of several issuers tells users apart by
/// this header and `x-gatehouse-user` together.
pub const HEADER_ISSUER: &str = "x-gatehouse-issuer";
/// Whether `name` is one of the identity headers gatehouse sets itself.
pub fn is_identity_header(name: &str) -> bool {
    [
        HEADER_USER,
        HEADER_TENANT,
        HEADER_PLAN,
        HEADER_KEY_ID,
        HEADER_ISSUER,
    ]
    .contains(&name)
}
/// A header name that is another spelling of one gatehouse owns ([`classify_spelling`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spelling {
    /// An `x-gatehouse-*` name: stripped like the name itself.
    Identity,
    /// The API key header: a second presentation of the credential, refused.
    ApiKey,
}
/// Whether `name` (not byte-equal to the key header or `x-gatehouse-` prefixed, which the
/// caller has matched already) reads as one of those names to an upstream that takes `_`
/// for `-` and ignores case, as CGI-style servers do (uWSGI, gunicorn's WSGI environ,
/// PHP-FPM: `x_gatehouse_user` is `HTTP_X_GATEHOUSE_USER`). Only names with `_` or an
/// upper-case letter can; others cost one byte scan.
pub fn classify_spelling(api_key_header: &str, name: &[u8]) -> Option<Spelling> {
    let fold = |b: u8| {
        if b == b'_' {
            b'-'
        } else {
            b.to_ascii_lowercase()
        }
    };
    // Most names are neither by their first byte and length: one comparison each.
    let first = fold(*name.first()?);
    let prefix = IDENTITY_HEADER_PREFIX.as_bytes();
    let key = api_key_header.as_bytes();
    let maybe_identity = first == b'x' && name.len() > prefix.len();
    let maybe_key = name.len() == key.len() && key.first() == Some(&first);
    if !(maybe_identity || maybe_key) || !name.iter().any(|&b| b == b'_' || b.is_ascii_uppercase())
    {
        return None;
    }
    let same =
        |a: &[u8], b: &[u8]| a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| fold(x) == y);
    if maybe_identity
        && name
            .get(..prefix.len())
            .is_some_and(|head| same(head, prefix))
    {
        return Some(Spelling::Identity);
    }
    (maybe_key && same(name, key)).then_some(Spelling::ApiKey)
}
/// The credential header as the request carried it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Presented<'a> {
    #[default]
    None,
    One(&'a [u8]),
    /// Sent more than once: refused, since proxies and upstreams may pick different ones.
    Several,
}
impl<'a> Presented<'a> {
    /// This one and another value of the same header.
    pub fn and(self, value: &'a [u8]) -> Presented<'a> {
        match self {
            Presented::None => Presented::One(value),
            _ => Presented::Several,
        }
    }
}

/// A request's headers, classified in one pass over the host's map: what the request
/// path reads, and the client-sent names gatehouse owns, to be removed.
#[derive(Clone, Debug, Default)]
pub struct Headers<'a> {
    pub method: &'a [u8],
    pub path: &'a [u8],
    pub request_id: &'a [u8],
    pub api_key: Presented<'a>,
    pub authorization: Presented<'a>,
    pub method_override: Presented<'a>,
    /// Every `x-forwarded-for` line, in order.
    pub forwarded: Vec<&'a [u8]>,
    pub origin: Option<&'a [u8]>,
    /// `access-control-request-method` and `-headers`, for a CORS preflight.
    pub cors_method: Option<&'a [u8]>,
    pub cors_headers: Vec<&'a [u8]>,
    /// Client-sent `x-gatehouse-*` names, in any spelling an upstream reads as one:
    /// removed before the request passes, so the upstream can trust every such header.
    pub spoofed: Vec<&'a str>,
}

impl<'a> Headers<'a> {
    /// Classifies the host's serialized header map ([`header_map`]). A second value of
    /// the key header, `Authorization` or a method override is kept as
    /// [`Presented::Several`], and so is a name that reads as the key header to a
    /// CGI-style upstream (`x_api_key`): a second credential.
    pub fn read(api_key_header: &str, raw: &'a [u8]) -> Headers<'a> {
        let mut h = Headers::default();
        for (name, value) in header_map::pairs(raw) {
            match name {
                b":method" => h.method = value,
                b":path" => h.path = value,
                b"x-request-id" => h.request_id = value,
                n if n == api_key_header.as_bytes() => h.api_key = h.api_key.and(value),
                b"authorization" => h.authorization = h.authorization.and(value),
                b"x-forwarded-for" => h.forwarded.push(value),
                b"x-http-method-override" | b"x-http-method" | b"x-method-override" => {
                    h.method_override = h.method_override.and(value)
                }
                b"origin" => h.origin = Some(value),
                b"access-control-request-method" => h.cors_method = Some(value),
                b"access-control-request-headers" => h.cors_headers.push(value),
                // Envoy's codecs admit only token characters in names, so a name is
                // always UTF-8 here; one that is not could not be removed by name.
                n if n.starts_with(IDENTITY_HEADER_PREFIX.as_bytes()) => {
                    if let Ok(n) = std::str::from_utf8(n) {
                        h.spoofed.push(n);
                    }
                }
                // Another spelling of a name gatehouse owns (`x_gatehouse_user`,
                // `X-Api_Key`): CGI-style upstreams read `_` as `-` in any case.
                n => match classify_spelling(api_key_header, n) {
                    Some(Spelling::Identity) => {
                        if let Ok(n) = std::str::from_utf8(n) {
                            h.spoofed.push(n);
                        }
                    }
                    Some(Spelling::ApiKey) => h.api_key = Presented::Several,
                    None => {}
                },
            }
        }
        h
    }

    /// Repeated `x-forwarded-for` lines as the one list they are (RFC 9110 §5.3).
    pub fn forwarded_for(&self) -> Option<Vec<u8>> {
        (!self.forwarded.is_empty()).then(|| self.forwarded.join(&b","[..]))
    }

    /// The head the decision reads, with the client address the host gave (empty when
    /// it was not asked for) and [`Headers::forwarded_for`].
    pub fn head(
        &self,
        source_address: &'a [u8],
        forwarded_for: Option<&'a [u8]>,
    ) -> RequestHead<'a> {
        RequestHead {
            method: self.method,
            path: self.path,
            api_key: self.api_key,
            authorization: self.authorization,
            source_address,
            forwarded_for,
            method_override: self.method_override,
        }
    }
}

/// What the core needs from a request's headers.
#[derive(Clone, Copy, Debug)]
pub struct RequestHead<'a> {
    pub method: &'a [u8],
    /// The raw `:path`, query string included.
    pub path: &'a [u8],
    pub api_key: Presented<'a>,
    /// The `Authorization` header. Read only when the policy has a `jwt` section.
    pub authorization: Presented<'a>,
    /// Envoy's `source.address` property (`ip:port`), for limits by client address.
    pub source_address: &'a [u8],
    /// The `x-forwarded-for` header, read when the policy trusts proxies in front.
    pub forwarded_for: Option<&'a [u8]>,
    /// A method override header (`x-http-method-override`, `x-http-method`,
    /// `x-method-override`), which frameworks behind gatehouse may take as the method.
    pub method_override: Presented<'a>,
}
/// Query parameter names that carry API keys in other gateways (Kong's `apikey` among
/// them), besides the policy's own key header name.
const QUERY_KEY_NAMES: [&[u8]; 3] = [b"api_key", b"apikey", b"api-key"];
/// The query name or value bytes worth decoding: three times the longest key a request may
/// present (every byte escaped); nothing past it could change the answer.
const MAX_QUERY_TEXT: usize = crate::authn::api_key::MAX_PRESENTED_KEY_LEN * 3;
/// Whether the query string carries a credential: a parameter named like the policy's key
/// header or [`QUERY_KEY_NAMES`], `access_token` (RFC 6750 2.3) when the policy takes
/// JWTs (`takes_jwt`), or any parameter whose value is a key of gatehouse's format (prefix, checksum),
/// whatever its name. Names and values are compared percent-decoded (`+` is a space), and
/// names as the frameworks behind gatehouse read them ([`same_param_name`]). Costs
/// nothing on a path without `?`.
pub fn query_carries_credential(api_key_header: &str, takes_jwt: bool, raw_path: &[u8]) -> bool {
    if !raw_path.contains(&b'?') {
        return false;
    }
    let header = api_key_header.as_bytes();
    query::query_pairs(raw_path).any(|(name, value)| {
        let value = query::percent_decoded(value.unwrap_or_default(), MAX_QUERY_TEXT);
        if value.is_empty() {
            return false;
        }
        let name = query::percent_decoded(name, MAX_QUERY_TEXT);
        let named = same_param_name(&name, header)
            || QUERY_KEY_NAMES.iter().any(|n| same_param_name(&name, n))
            || (takes_jwt && same_param_name(&name, b"access_token"));
        named || check_format(&value).is_ok()
    })
}
/// Whether a query parameter name reads as `canonical` to some framework: PHP turns `.`
/// and spaces (`+`) in names into `_` and reads `api_key[]` or `api_key[x]` as `api_key`;
/// Rails reads `api_key[]` alike; CGI-style servers do not tell `-` from `_`. So a
/// bracketed suffix is cut, `.`, space, `+`, `[`, `-` and `_` compare equal, and case is
/// ignored.
fn same_param_name(name: &[u8], canonical: &[u8]) -> bool {
    let name = match (name.iter().position(|&b| b == b'['), name.last()) {
        (Some(open), Some(b']')) if open > 0 => name.get(..open).unwrap_or(name),
        _ => name,
    };
    let fold = |b: u8| match b {
        b'.' | b' ' | b'+' | b'[' | b'-' => b'_',
        other => other.to_ascii_lowercase(),
    };
    name.len() == canonical.len()
        && name
            .iter()
            .zip(canonical)
            .all(|(&a, &b)| fold(a) == fold(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    use header_map::serialize_text as map;

    #[test]
    fn headers_are_read_in_one_pass_and_repeats_are_several() {
        let raw = map(&[
            (":method", "GET"),
            (":path", "/v1/x?y=1"),
            ("x-request-id", "r-1"),
            ("x-api-key", "k1"),
            ("authorization", "Bearer a"),
            ("authorization", "Bearer b"),
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2, 3.3.3.3"),
            ("x-http-method", "DELETE"),
            ("origin", "https://a.example"),
        ]);
        let h = Headers::read("x-api-key", &raw);
        assert_eq!(
            (h.method, h.path, h.request_id),
            (&b"GET"[..], &b"/v1/x?y=1"[..], &b"r-1"[..])
        );
        assert_eq!(h.api_key, Presented::One(b"k1"));
        assert_eq!(h.authorization, Presented::Several);
        assert_eq!(h.method_override, Presented::One(b"DELETE"));
        assert_eq!(h.origin, Some(&b"https://a.example"[..]));
        assert_eq!(
            h.forwarded_for().as_deref(),
            Some(&b"1.1.1.1,2.2.2.2, 3.3.3.3"[..])
        );
        assert!(h.spoofed.is_empty());
        let head = h.head(b"9.9.9.9:1", None);
        assert_eq!(head.source_address, b"9.9.9.9:1");
    }

    #[test]
    fn every_spelling_of_a_gatehouse_name_is_stripped_or_a_second_key() {
        let raw = map(&[
            ("x-gatehouse-user", "admin"),
            ("x_gatehouse_tenant", "t"),
            ("X-Gatehouse-Plan", "enterprise"),
            ("x-api-key", "k1"),
            ("x_api_key", "k2"),
            ("x-other", "v"),
        ]);
        let h = Headers::read("x-api-key", &raw);
        assert_eq!(
            h.spoofed,
            ["x-gatehouse-user", "x_gatehouse_tenant", "X-Gatehouse-Plan"]
        );
        assert_eq!(h.api_key, Presented::Several, "x_api_key is a second key");
        let alone = map(&[("x_api_key", "k2")]);
        assert_eq!(
            Headers::read("x-api-key", &alone).api_key,
            Presented::Several
        );
    }

    #[test]
    fn a_preflights_headers_are_kept_for_cors() {
        let raw = map(&[
            (":method", "OPTIONS"),
            ("access-control-request-method", "PUT"),
            ("access-control-request-headers", "a"),
            ("access-control-request-headers", "b"),
        ]);
        let h = Headers::read("x-api-key", &raw);
        assert_eq!(h.cors_method, Some(&b"PUT"[..]));
        assert_eq!(h.cors_headers, [&b"a"[..], &b"b"[..]]);
        assert_eq!(h.forwarded_for(), None);
    }
}
