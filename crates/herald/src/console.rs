//! The operator console: static files embedded in the binary, served at
//! `/console` by every process that serves the notification API. They hold
//! no data and need no token; every answer the console shows comes from a
//! `/v1` call carrying the operator's bearer token, which the page keeps in
//! `sessionStorage` (never in a cookie).
//!
//! The content security policy allows scripts, styles and connections to
//! this origin only: no inline script, no third-party code, no framing.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

/// What every console answer carries.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

const INDEX: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/app.js");
const STYLE: &str = include_str!("../console/app.css");

/// The file at `/console/<path>`, or `None`.
pub fn asset(path: &[&str]) -> Option<Response<Full<Bytes>>> {
    let (body, content_type) = match path {
        [] | ["index.html"] => (INDEX, "text/html; charset=utf-8"),
        ["app.js"] => (SCRIPT, "text/javascript; charset=utf-8"),
        ["app.css"] => (STYLE, "text/css; charset=utf-8"),
        _ => return None,
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    let set = |h: &mut hyper::HeaderMap, name, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    set(h, header::CONTENT_TYPE, content_type);
    set(h, header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY);
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    // A new binary's console is used at once.
    set(h, header::CACHE_CONTROL, "no-cache");
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_served_with_the_policy_and_nothing_else_is() {
        for (path, ty) in [
            (&[][..], "text/html"),
            (&["app.js"][..], "text/javascript"),
            (&["app.css"][..], "text/css"),
        ] {
            let resp = asset(path).expect("served");
            let h = resp.headers();
            assert!(h[header::CONTENT_TYPE].to_str().unwrap().starts_with(ty));
            assert_eq!(h[header::CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY);
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        }
        assert!(asset(&["../Cargo.toml"]).is_none());
        assert!(asset(&["app.js", "x"]).is_none());
    }

    #[test]
    fn the_page_loads_no_inline_script_and_nothing_from_elsewhere() {
        // The policy would block them; the page must not depend on them.
        assert!(!INDEX.contains("<script>"), "inline script");
        assert!(!INDEX.contains(" style="), "inline style");
        assert!(!INDEX.contains("http://") && !INDEX.contains("https://"));
        assert!(
            !SCRIPT.contains("innerHTML"),
            "build DOM nodes, never HTML strings"
        );
        assert!(!SCRIPT.contains("eval("));
        assert!(
            !SCRIPT.contains("localStorage"),
            "the token lives in sessionStorage"
        );
    }
}
