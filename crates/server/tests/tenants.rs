//! Tenants cannot read each other: prefix-cache blocks are shared only between requests of
//! the same API key (and `cache_salt`), so cache hits tell nobody what another tenant's prompts
//! hold; `/metrics` needs a key; the key check takes any case of `Bearer`.

mod common;
use common::*;
use serde_json::{json, Value};

fn keyed(keys: &[&str], public_metrics: bool) -> String {
    serve(&whale_server::Options {
        port: 0,
        cache_mem: 8 << 20,
        block_size: 4,
        api_keys: keys.iter().map(|k| k.to_string()).collect(),
        public_metrics,
        ..whale_server::Options::new(fixture())
    })
}

fn ask(addr: &str, key: &str, body: &Value) -> (u16, Value) {
    let auth = format!("Bearer {key}");
    let (s, b) = http(
        addr,
        "POST",
        "/v1/chat/completions",
        body.to_string().as_bytes(),
        &[("Authorization", &auth)],
    );
    (s, serde_json::from_str(&b).unwrap_or(Value::String(b)))
}

fn with_system(system: &str) -> Value {
    json!({"messages": [{"role": "system", "content": system}, {"role": "user", "content": "What is the code?"}], "max_tokens": 1, "temperature": 0})
}

fn hit(v: &Value) -> u64 {
    v["usage"]["prompt_cache_hit_tokens"].as_u64().unwrap()
}

#[test]
fn a_second_tenant_learns_nothing_from_cache_hits() {
    let _serial = serial();
    let addr = keyed(&["key-a", "key-b"], false);
    let secret = "The vault code is 417. Never tell anyone the vault code.";
    let (s, v) = ask(&addr, "key-a", &with_system(secret));
    assert_eq!(s, 200, "{v}");
    // tenant A's own repeat hits its cache
    let (_, v) = ask(&addr, "key-a", &with_system(secret));
    assert!(hit(&v) > 8, "{v}");
    // tenant B probes the codes: its hits are exactly what the same probes get on a server
    // that never saw A's prompt (hits on B's own earlier probes only), the first one none
    let probe = |addr: &str| -> Vec<u64> {
        (410..425)
            .map(|code| {
                let p = format!("The vault code is {code}. Never tell anyone the vault code.");
                let (s, v) = ask(addr, "key-b", &with_system(&p));
                assert_eq!(s, 200, "{v}");
                hit(&v)
            })
            .collect()
    };
    let seen = probe(&addr);
    assert_eq!(seen[0], 0, "tenant B's first probe hit tenant A's blocks");
    let unseen = probe(&keyed(&["key-a", "key-b"], false));
    assert_eq!(
        seen, unseen,
        "the hits of 410..425 depend on tenant A's prompt"
    );
    // and B's own prompts still cache for B
    let (_, v) = ask(&addr, "key-b", &with_system(secret));
    assert!(hit(&v) > 8, "{v}");
    // a cache_salt separates requests of one key too
    let mut salted = with_system(secret);
    salted["cache_salt"] = json!("user-42");
    let (_, v) = ask(&addr, "key-a", &salted);
    assert_eq!(hit(&v), 0, "{v}");
    let (_, v) = ask(&addr, "key-a", &salted);
    assert!(hit(&v) > 8, "{v}");
    salted["cache_salt"] = json!(17);
    assert_error(ask(&addr, "key-a", &salted), 400, "cache_salt");
}

#[test]
fn keys_are_checked_whatever_the_case_of_bearer_and_guard_the_metrics() {
    let _serial = serial();
    let addr = keyed(&["key-a", "key-b"], false);
    let body = chat("What is 2 + 2?", 1).to_string();
    for (auth, want) in [
        ("Bearer key-b", 200),
        ("bearer key-a", 200),
        ("BEARER key-a", 200),
        ("Bearer key-c", 401),
        ("Bearer key-", 401),
        ("Bearer ", 401),
        ("Basic key-a", 401),
        ("key-a", 401),
    ] {
        let (s, b) = http(
            &addr,
            "POST",
            "/v1/chat/completions",
            body.as_bytes(),
            &[("Authorization", auth)],
        );
        assert_eq!(s, want, "{auth}: {b}");
    }
    let (s, b) = http(&addr, "GET", "/metrics", b"", &[]);
    assert_eq!(s, 401, "{b}");
    let (s, b) = http(
        &addr,
        "GET",
        "/metrics",
        b"",
        &[("Authorization", "Bearer key-a")],
    );
    assert_eq!(s, 200);
    assert!(b.contains("whale_requests_total"));
    let open = keyed(&["key-a"], true);
    assert_eq!(http(&open, "GET", "/metrics", b"", &[]).0, 200);
}

/// Status and whole reply (head and body) of a GET with these headers, sent raw so that
/// `Host` is ours to choose.
fn raw(addr: &str, method: &str, path: &str, headers: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: 0\r\n{headers}\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    (text.split(' ').nth(1).unwrap().parse().unwrap(), text)
}

#[test]
fn a_keyless_loopback_server_answers_local_pages_only() {
    let _serial = serial();
    let addr = serve(&whale_server::Options {
        port: 0,
        cache_mem: 8 << 20,
        block_size: 4,
        cors_origins: vec!["https://app.example".into()],
        ..whale_server::Options::new(fixture())
    });
    // DNS rebinding: a page of evil.example resolved to 127.0.0.1
    let (s, b) = raw(&addr, "GET", "/v1/models", "Host: evil.example\r\n");
    assert_eq!(s, 403, "{b}");
    assert!(b.contains("permission_error"), "{b}");
    // a cross-site page
    let (s, b) = raw(
        &addr,
        "GET",
        "/v1/models",
        "Host: localhost\r\nOrigin: http://evil.example\r\n",
    );
    assert_eq!(s, 403, "{b}");
    // local pages, the allowed origin (with its CORS header), and no origin at all are fine
    for h in [
        "Host: localhost:8000\r\n",
        "Host: 127.0.0.1\r\nOrigin: http://localhost:3000\r\n",
        "Host: [::1]:80\r\n",
    ] {
        let (s, b) = raw(&addr, "GET", "/v1/models", h);
        assert_eq!(s, 200, "{h}: {b}");
        assert!(
            !b.to_ascii_lowercase()
                .contains("access-control-allow-origin"),
            "{b}"
        );
    }
    let (s, b) = raw(
        &addr,
        "GET",
        "/v1/models",
        "Host: localhost\r\nOrigin: https://app.example\r\n",
    );
    assert_eq!(s, 200, "{b}");
    assert!(
        b.to_ascii_lowercase()
            .contains("access-control-allow-origin: https://app.example"),
        "{b}"
    );
    let (s, b) = raw(
        &addr,
        "OPTIONS",
        "/v1/chat/completions",
        "Host: localhost\r\nOrigin: https://app.example\r\nAccess-Control-Request-Method: POST\r\n",
    );
    assert_eq!(s, 204, "{b}");
    // a wrong method gets the OpenAI error JSON, not an empty 405
    let (s, b) = raw(&addr, "GET", "/v1/chat/completions", "Host: localhost\r\n");
    assert_eq!(s, 405, "{b}");
    assert!(b.contains("\"error\""), "{b}");
    // with a key, other host names are served (the key is the guard)
    let keyed = keyed(&["key-a"], false);
    let (s, b) = raw(
        &keyed,
        "GET",
        "/v1/models",
        "Host: whale.internal\r\nAuthorization: Bearer key-a\r\n",
    );
    assert_eq!(s, 200, "{b}");
}
