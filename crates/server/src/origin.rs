//! Who may talk to the server from a browser. A key-less server on a loopback address is
//! reachable by any web page the user opens: through DNS rebinding (a page whose host name
//! turns into 127.0.0.1) or a cross-site request. So such a server answers only requests whose
//! `Host` names a loopback address and whose `Origin`, when sent, is a loopback page or one
//! allowed by `--cors-origin`. CORS headers go out only for the allowed origins.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

use crate::api::ApiError;

pub struct Policy {
    /// check `Host` and `Origin` (a key-less server bound to loopback)
    pub loopback_only: bool,
    /// origins (`scheme://host[:port]`) whose pages may call the API
    pub cors_origins: Vec<String>,
}

impl Policy {
    pub fn new(bind_host: &str, keyed: bool, cors_origins: Vec<String>) -> Self {
        Policy {
            loopback_only: !keyed && is_loopback(bind_host),
            cors_origins,
        }
    }
}

fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// The host of a `Host` header value (`name`, `name:port`, `[v6]:port`).
fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

fn loopback_origin(origin: &str) -> bool {
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|a| is_loopback(host_of(a)))
}

fn refuse(what: String) -> Response {
    ApiError::plain(StatusCode::FORBIDDEN, "permission_error", what).into_response()
}

pub async fn guard(State(p): State<Arc<Policy>>, req: Request, next: Next) -> Response {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let allowed = origin
        .as_deref()
        .filter(|o| p.cors_origins.iter().any(|a| a == o));
    if p.loopback_only {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !is_loopback(host_of(host)) {
            return refuse(format!(
                "a server without an API key on a loopback address answers requests for localhost only, not for `{host}` (set --api-key to serve other names)"
            ));
        }
        if let Some(o) = &origin {
            if allowed.is_none() && !loopback_origin(o) {
                return refuse(format!(
                    "requests from pages of `{o}` are not allowed (--cors-origin allows an origin)"
                ));
            }
        }
    }
    let allowed = allowed.and_then(|o| HeaderValue::from_str(o).ok());
    // a CORS preflight from an allowed origin is answered here
    if req.method() == Method::OPTIONS {
        if let Some(o) = allowed {
            let mut r = StatusCode::NO_CONTENT.into_response();
            let h = r.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, OPTIONS"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("authorization, content-type"),
            );
            h.insert(header::VARY, HeaderValue::from_static("origin"));
            return r;
        }
    }
    let mut r = next.run(req).await;
    if let Some(o) = allowed {
        r.headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        r.headers_mut()
            .insert(header::VARY, HeaderValue::from_static("origin"));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_origins() {
        for h in [
            "localhost",
            "127.0.0.1",
            "::1",
            "[::1]",
            "127.0.0.2",
            "LOCALHOST",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in [
            "example.com",
            "0.0.0.0",
            "10.0.0.1",
            "localhost.evil.com",
            "",
        ] {
            assert!(!is_loopback(h), "{h}");
        }
        assert_eq!(host_of("localhost:8000"), "localhost");
        assert_eq!(host_of("[::1]:8000"), "::1");
        assert_eq!(host_of("evil.com"), "evil.com");
        assert!(loopback_origin("http://localhost:3000"));
        assert!(loopback_origin("http://[::1]:3000"));
        assert!(!loopback_origin("http://evil.com"));
        assert!(!loopback_origin("null"));
    }
}
