//! What the server's test files share: a server on a loopback port and raw HTTP to it.
#![allow(dead_code)] // each test file uses its own part of these

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

/// One server test at a time: each starts its own engine, and timing-sensitive checks (a
/// disconnect noticed before a 200-token generation ends) should not compete for two cores.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/fixtures/tiny-v3")
}

/// Starts a server on a free port in a background runtime; returns its address.
pub fn start(api_key: Option<&str>, max_model_len: Option<usize>, cache_mem: usize) -> String {
    start_with(api_key, max_model_len, cache_mem, 8)
}

pub fn start_with(
    api_key: Option<&str>,
    max_model_len: Option<usize>,
    cache_mem: usize,
    max_batch: usize,
) -> String {
    let opts = whale_server::Options {
        port: 0,
        max_batch,
        cache_mem,
        max_model_len,
        api_keys: api_key.map(String::from).into_iter().collect(),
        block_size: 4,
        body_limit: 64 << 10,
        ..whale_server::Options::new(fixture())
    };
    serve(&opts)
}

/// Serves `opts` on a free loopback port from a background runtime; returns the address.
pub fn serve(opts: &whale_server::Options) -> String {
    serve_until(opts, std::future::pending()).0
}

/// Serves `opts` until `stop` resolves, then shuts down as `whale serve` does (the deadline,
/// the engine's end); returns the address and the thread that ends when the server has.
pub fn serve_until(
    opts: &whale_server::Options,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> (String, std::thread::JoinHandle<()>) {
    let (router, engine) = whale_server::app(opts).unwrap();
    let limits = opts.limits();
    let (tx, rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap().to_string()).unwrap();
            whale_server::listen::serve_on(l, router, &limits, stop, Some(&engine))
                .await
                .unwrap();
            engine.stop();
            tokio::task::spawn_blocking(move || engine.join())
                .await
                .unwrap();
        });
        rt.shutdown_timeout(Duration::from_secs(1));
    });
    (rx.recv().unwrap(), server)
}

pub fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(nl) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..nl]).unwrap().trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + size]);
        b = &b[nl + 2 + size + 2..];
    }
}

/// (status, body) of one request.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, String::from_utf8_lossy(&body).to_string())
}

pub fn post(addr: &str, path: &str, v: &Value) -> (u16, Value) {
    let (s, b) = http(addr, "POST", path, v.to_string().as_bytes(), &[]);
    (s, serde_json::from_str(&b).unwrap_or(Value::String(b)))
}

pub fn chat(q: &str, max: usize) -> Value {
    json!({"model": "tiny-v3", "messages": [{"role": "user", "content": q}], "max_tokens": max, "temperature": 0})
}

pub fn metric(addr: &str, name: &str) -> f64 {
    let (_, m) = http(addr, "GET", "/metrics", b"", &[]);
    m.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap()
        .parse()
        .unwrap()
}

pub fn assert_error(r: (u16, Value), status: u16, param: &str) {
    assert_eq!(r.0, status, "{}", r.1);
    let e = &r.1["error"];
    assert!(e["message"].is_string() && e["type"].is_string(), "{}", r.1);
    if !param.is_empty() {
        assert_eq!(e["param"], param, "{}", r.1);
    }
}

/// Reads a streamed chat response and returns (reasoning, content, finish_reason, saw [DONE]).
pub fn read_stream(body: &str) -> (String, String, Option<String>, bool) {
    let (mut r, mut a, mut f, mut done) = (String::new(), String::new(), None, false);
    for d in body.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if d == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(d).unwrap();
        if let Some(c) = v["choices"].get(0) {
            r += c["delta"]["reasoning_content"].as_str().unwrap_or("");
            a += c["delta"]["content"].as_str().unwrap_or("");
            if let Some(x) = c["finish_reason"].as_str() {
                f = Some(x.to_string());
            }
        }
    }
    (r, a, f, done)
}

/// `n` greedy chat streams of `tokens` tokens each (past end-of-sequence), started at once.
pub fn victims(addr: &str, n: usize, tokens: usize) -> Vec<std::thread::JoinHandle<(u16, String)>> {
    (0..n)
        .map(|i| {
            let addr = addr.to_string();
            std::thread::spawn(move || {
                let mut v = chat(&format!("What is {i} + 30?"), tokens);
                v["stream"] = json!(true);
                v["ignore_eos"] = json!(true);
                http(
                    &addr,
                    "POST",
                    "/v1/chat/completions",
                    v.to_string().as_bytes(),
                    &[],
                )
            })
        })
        .collect()
}

/// Each stream ran to its length, saw no error and ended with `[DONE]`.
pub fn assert_unharmed(v: Vec<std::thread::JoinHandle<(u16, String)>>) {
    for v in v {
        let (s, body) = v.join().unwrap();
        assert_eq!(s, 200);
        assert!(!body.contains("\"error\""), "a victim saw an error: {body}");
        let (_, _, finish, done) = read_stream(&body);
        assert_eq!(finish.as_deref(), Some("length"), "{body}");
        assert!(done);
    }
}
