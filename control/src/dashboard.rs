//! `GET /`: the dashboard, one self-contained HTML page for people: keys, recent
//! refusals, per-plan request counts and cache versions. Its HTML, script and style are
//! compiled into the binary (`dashboard/`); it loads nothing from elsewhere.
//!
//! The page holds no data and needs no token to load: its script reads the admin API
//! with the admin token the person enters. The Content-Security-Policy allows exactly
//! the page's own inline script and style (by their SHA-256, computed once here), fetches
//! to this origin only, no frames, no forms posting anywhere, and requires Trusted Types,
//! so no string can become markup even by mistake.

use axum::http::{HeaderName, HeaderValue, header};
use axum::response::IntoResponse;
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

const HTML: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");

/// The page and its Content-Security-Policy, made once.
static PAGE: LazyLock<(String, HeaderValue)> = LazyLock::new(|| {
    let page = HTML
        .replace("/*STYLE*/", STYLE)
        .replace("/*SCRIPT*/", SCRIPT);
    (
        page,
        HeaderValue::from_str(&csp()).unwrap_or(HeaderValue::from_static("default-src 'none'")),
    )
});

/// Standard base64 (RFC 4648, padded), as CSP hash sources are written.
fn base64(bytes: &[u8]) -> String {
    use ::base64::Engine as _;
    ::base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn sha256_source(text: &str) -> String {
    format!("'sha256-{}'", base64(&Sha256::digest(text.as_bytes())))
}

/// The policy: nothing but this page's own script and style, and requests to this origin.
pub fn csp() -> String {
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'none'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'; \
         require-trusted-types-for 'script'; trusted-types 'none'",
        sha256_source(SCRIPT),
        sha256_source(STYLE)
    )
}

pub async fn page() -> impl IntoResponse {
    let (page, csp) = &*PAGE;
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CONTENT_SECURITY_POLICY, csp.clone()),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (
                HeaderName::from_static("cross-origin-opener-policy"),
                HeaderValue::from_static("same-origin"),
            ),
        ],
        page.as_str(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }

    #[test]
    fn the_page_is_whole_and_its_csp_names_exactly_its_script_and_style() {
        let (page, csp) = &*PAGE;
        assert!(!page.contains("/*SCRIPT*/") && !page.contains("/*STYLE*/"));
        assert!(page.contains(SCRIPT) && page.contains(STYLE));
        let csp = csp.to_str().unwrap_or_default();
        assert!(csp.contains(&sha256_source(SCRIPT)), "{csp}");
        assert!(csp.contains(&sha256_source(STYLE)), "{csp}");
        assert!(csp.starts_with("default-src 'none';"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
        // Nothing loaded from anywhere else. The SVG namespace, which the charts' elements
        // are made in, is a name written as a URL, never fetched: it is the one allowed,
        // once.
        const SVG_NS: &str = "'http://www.w3.org/2000/svg'";
        assert_eq!(page.matches(SVG_NS).count(), 1);
        let page = page.replace(SVG_NS, "");
        for needle in ["http://", "https://", "src=", "<link", "@import", "url("] {
            assert!(!page.contains(needle), "{needle}");
        }
        // No data is ever written as markup.
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
        ] {
            assert!(!SCRIPT.contains(sink), "{sink}");
        }
    }
}
