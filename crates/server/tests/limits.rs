//! What a request may cost the machine: a prompt that cannot fit the context is refused by its
//! size before it is tokenised, and tokenising never runs on the async runtime.

mod common;
use common::*;
use serde_json::json;
use std::time::Instant;

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
