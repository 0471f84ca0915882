//! What a request may cost the machine: a prompt that cannot fit the context is refused by its
//! size before it is tokenised, and tokenising never runs on the async runtime.

mod common;
use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Peak resident memory of this process so far, in bytes (the server runs in it).
fn peak_rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kb << 10
}

#[test]
fn a_huge_prompt_is_refused_before_it_is_tokenised() {
    let _serial = serial();
    let addr = serve(&whale_server::Options {
        port: 0,
        cache_mem: 8 << 20,
        block_size: 4,
        ..whale_server::Options::new(fixture())
    });
    // warm up: the first request pays for lazily built state
    let (s, _) = post(&addr, "/v1/chat/completions", &chat("What is 2 + 2?", 2));
    assert_eq!(s, 200);
    let words = "many words of a very long message ".repeat(3_900_000 / 34);
    let chat_body = chat(&words, 4).to_string();
    let completion_body = json!({"prompt": words, "max_tokens": 4}).to_string();
    assert!(chat_body.len() > 3_900_000 && chat_body.len() < 4 << 20);
    let before = peak_rss();
    for (path, body, param) in [
        ("/v1/chat/completions", &chat_body, "messages"),
        ("/v1/completions", &completion_body, "prompt"),
    ] {
        let t = Instant::now();
        let (s, b) = http(&addr, "POST", path, body.as_bytes(), &[]);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_error((s, v.clone()), 400, param);
        assert_eq!(v["error"]["code"], "context_length_exceeded", "{v}");
        // a figure for people; the memory is the assertion (a timed test flakes)
        eprintln!("{path}: a {} byte prompt refused in {ms:.0} ms", body.len());
    }
    let grown = peak_rss().saturating_sub(before);
    assert!(grown < 50 << 20, "peak RSS grew by {} MB", grown >> 20);
    // a prompt that fits is still served
    let (s, v) = post(&addr, "/v1/chat/completions", &chat(&"word ".repeat(30), 2));
    assert_eq!(s, 200, "{v}");
}

fn quick(read_timeout_ms: u64, max_batch: usize, max_queued: usize) -> whale_server::Options {
    whale_server::Options {
        port: 0,
        cache_mem: 8 << 20,
        block_size: 4,
        max_batch,
        max_queued,
        read_timeout: Duration::from_millis(read_timeout_ms),
        shutdown_timeout: Duration::from_millis(300),
        ..whale_server::Options::new(fixture())
    }
}

/// Writes `head` and then `trickle` a byte every 100 ms; returns what came back (until the
/// server closed the connection) and how long it took.
fn trickle(addr: &str, head: &str, trickle: &[u8]) -> (String, Duration) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let t = Instant::now();
    s.write_all(head.as_bytes()).unwrap();
    for b in trickle {
        std::thread::sleep(Duration::from_millis(100));
        if s.write_all(&[*b]).is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    (String::from_utf8_lossy(&out).into_owned(), t.elapsed())
}

#[test]
fn slow_clients_are_cut_off_at_the_read_timeout() {
    let _serial = serial();
    let addr = serve(&quick(500, 8, 256));
    let body = chat("What is 2 + 2?", 2).to_string();
    // a body trickled in: 408 at the deadline, long before the trickle would end
    let head = format!("POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
    let (reply, took) = trickle(&addr, &head, body.as_bytes());
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("\"error\""), "{reply}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // headers trickled in: the connection is closed at the deadline
    let (_, took) = trickle(
        &addr,
        "POST /v1/chat/completions HTTP/1.1\r\n",
        &b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"[..],
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    // an idle keep-alive connection is closed too
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let t = Instant::now();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[test]
fn past_max_queued_requests_get_429_with_retry_after() {
    let _serial = serial();
    // steps of marked prompts take 20 ms more, so two of them stay in flight for seconds
    fail::cfg("whale-step", "sleep(20)").unwrap();
    let addr = serve(&quick(30_000, 1, 1));
    // two long streams fill the batch (1) and the queue (1)
    let long: Vec<_> = (0..2)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut p = whale_server::scheduler::FAULT_MARKER.to_vec();
                p.push(9);
                let v = json!({"prompt": p, "max_tokens": 60, "ignore_eos": true, "stream": true});
                http(
                    &addr,
                    "POST",
                    "/v1/completions",
                    v.to_string().as_bytes(),
                    &[],
                )
            })
        })
        .collect();
    // wait until both are in
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&addr, "whale_requests_total") < 2.0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut s = TcpStream::connect(&addr).unwrap();
    let body = chat("What is 9 + 9?", 2).to_string();
    write!(s, "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let reply = String::from_utf8_lossy(&out).to_ascii_lowercase();
    assert!(
        long.iter().all(|h| !h.is_finished()),
        "the long requests ended early"
    );
    assert!(reply.starts_with("http/1.1 429"), "{reply}");
    assert!(reply.contains("retry-after: 1"), "{reply}");
    assert!(reply.contains("rate_limit_error"), "{reply}");
    for h in long {
        let (s, b) = h.join().unwrap();
        assert_eq!(s, 200);
        assert!(!b.contains("\"error\""), "{b}");
    }
    // with room again, requests are served
    let (s, v) = post(&addr, "/v1/chat/completions", &chat("What is 9 + 9?", 2));
    assert_eq!(s, 200, "{v}");
}

#[test]
fn shutdown_ends_at_its_deadline_despite_a_stalled_upload() {
    let _serial = serial();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (addr, server) = serve_until(&quick(30_000, 8, 256), async {
        let _ = stop_rx.await;
    });
    // an upload that stalls half way
    let mut stalled = TcpStream::connect(&addr).unwrap();
    write!(stalled, "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"messages\": ").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    stop_tx.send(()).unwrap();
    while !server.is_finished() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the server did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "exited {:?} after the stop with an upload stalled",
        t.elapsed()
    );
    server.join().unwrap();
}
