//! The real server on a loopback port, driven over raw HTTP: OpenAI shapes, streaming,
//! batching that never changes greedy results, prefix-cache hits, cancellation that frees
//! blocks, and every bad input answered with the OpenAI error JSON and a 4xx status.

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

mod common;
use common::*;

/// What the engine alone gives for the same chat, greedy.
fn solo(q: &str, max: usize) -> (String, String) {
    let e = whale_engine::Engine::load(&fixture(), true).unwrap();
    let p = whale_engine::GenerateParams {
        max_tokens: max,
        ..Default::default()
    };
    let g = e
        .chat(&[whale_engine::Message::new("user", q)], &p, |_| {})
        .unwrap();
    (g.reasoning, g.answer)
}

#[test]
fn chat_completion_shape_and_greedy_text_match_the_engine() {
    let _serial = serial();
    let addr = start(None, None, 8 << 20);
    let (s, v) = post(&addr, "/v1/chat/completions", &chat("What is 12 + 30?", 12));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    let m = &v["choices"][0]["message"];
    let (r, a) = solo("What is 12 + 30?", 12);
    assert_eq!(m["reasoning_content"].as_str().unwrap(), r.trim());
    assert_eq!(m["content"].as_str().unwrap(), a.trim_start());
    let u = &v["usage"];
    assert_eq!(u["completion_tokens"], 12);
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(u["prompt_tokens"].as_u64().unwrap() + 12)
    );
    assert_eq!(
        u["prompt_cache_hit_tokens"].as_u64().unwrap()
            + u["prompt_cache_miss_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap()
    );
    let (s, v) = http(&addr, "GET", "/v1/models", b"", &[]);
    assert_eq!(s, 200);
    assert!(v.contains("tiny-v3"));
    let (s, _) = http(&addr, "GET", "/health", b"", &[]);
    assert_eq!(s, 200);
}

#[test]
fn the_chat_page_is_served_self_contained() {
    let _serial = serial();
    // the page is public even when the API wants a key (it asks for the key itself)
    let addr = start(Some("sk-x"), None, 8 << 20);
    let (s, page) = http(&addr, "GET", "/", b"", &[]);
    assert_eq!(s, 200);
    assert!(page.starts_with("<!doctype html>") && page.contains("<title>whale chat</title>"));
    // nothing fetched from elsewhere: every src/href is local or inline
    for attr in ["src=\"", "href=\""] {
        for (i, _) in page.match_indices(attr) {
            let v = &page[i + attr.len()..];
            assert!(
                !v.starts_with("http") && !v.starts_with("//"),
                "{}",
                &v[..40.min(v.len())]
            );
        }
    }
    assert!(!page.contains("@import") && !page.contains("url(http"));
}

#[test]
fn streaming_carries_the_same_text_and_ends_with_done() {
    let _serial = serial();
    let addr = start(None, None, 8 << 20);
    let mut req = chat("Tell me about latent attention", 16);
    req["stream"] = json!(true);
    req["stream_options"] = json!({"include_usage": true});
    let (s, body) = http(
        &addr,
        "POST",
        "/v1/chat/completions",
        req.to_string().as_bytes(),
        &[],
    );
    assert_eq!(s, 200);
    let datas: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(*datas.last().unwrap(), "[DONE]");
    let (mut r, mut a) = (String::new(), String::new());
    let mut finish = None;
    let mut usage = None;
    for d in &datas[..datas.len() - 1] {
        let v: Value = serde_json::from_str(d).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
        if let Some(c) = v["choices"].get(0) {
            r += c["delta"]["reasoning_content"].as_str().unwrap_or("");
            a += c["delta"]["content"].as_str().unwrap_or("");
            if !c["finish_reason"].is_null() {
                finish = Some(c["finish_reason"].clone());
            }
        } else {
            usage = Some(v["usage"].clone());
        }
    }
    let (sr, sa) = solo("Tell me about latent attention", 16);
    assert_eq!((r, a), (sr, sa));
    assert_eq!(finish, Some(json!("length")));
    assert_eq!(usage.unwrap()["completion_tokens"], 16);
}

#[test]
fn concurrent_requests_get_exactly_their_solo_results() {
    let _serial = serial();
    let addr = start(None, None, 8 << 20);
    let qs: Vec<String> = (0..8)
        .map(|i| format!("Question number {i}: what is {} + {}?", i * 7, 30 - i))
        .collect();
    let handles: Vec<_> = qs
        .iter()
        .map(|q| {
            let (addr, q) = (addr.clone(), q.clone());
            std::thread::spawn(move || {
                post(&addr, "/v1/chat/completions", &chat(&q, 10 + q.len() % 5))
            })
        })
        .collect();
    for (q, h) in qs.iter().zip(handles) {
        let (s, v) = h.join().unwrap();
        assert_eq!(s, 200);
        let (r, a) = solo(q, 10 + q.len() % 5);
        let m = &v["choices"][0]["message"];
        assert_eq!(m["reasoning_content"].as_str().unwrap(), r.trim(), "{q}");
        assert_eq!(m["content"].as_str().unwrap(), a.trim_start(), "{q}");
    }
}

#[test]
fn a_repeated_system_prompt_hits_the_prefix_cache() {
    let _serial = serial();
    let addr = start(None, None, 8 << 20);
    let system = "You are whale, a careful assistant. Think step by step about every question and answer briefly. ".repeat(3);
    let ask = |q: &str| json!({"messages": [{"role": "system", "content": system}, {"role": "user", "content": q}], "max_tokens": 2, "temperature": 0});
    let (_, a) = post(&addr, "/v1/chat/completions", &ask("What is 1 + 1?"));
    assert_eq!(a["usage"]["prompt_cache_hit_tokens"], 0);
    let (_, b) = post(&addr, "/v1/chat/completions", &ask("What is 2 + 2?"));
    let hit = b["usage"]["prompt_cache_hit_tokens"].as_u64().unwrap();
    assert!(hit > 40, "{b}");
    assert_eq!(hit % 4, 0, "whole blocks only");
}

#[test]
fn a_client_that_disconnects_frees_its_blocks() {
    let _serial = serial();
    // a model slow enough that 200 tokens take far longer than noticing the disconnect
    let addr = start_synthetic();
    // read at once: the cache gauges are set before the engine has seen a request
    let free = metric(&addr, "whale_cache_blocks_free");
    assert!(free > 0.0, "no free cache blocks reported at start");
    let mut req = chat("Write a long story", 200);
    req.as_object_mut().unwrap().remove("model"); // served under its directory name
    req["stream"] = json!(true);
    req["ignore_eos"] = json!(true);
    // three samples, one request: it counts as one cancelled request
    req["n"] = json!(3);
    let body = req.to_string();
    let mut s = TcpStream::connect(&addr).unwrap();
    write!(s, "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    // wait for the first generated chunk: headers alone may come before the scheduler admits it
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while !String::from_utf8_lossy(&seen).contains("data: ") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "stream closed early");
        seen.extend_from_slice(&buf[..n]);
    }
    drop(s);
    let t = Instant::now();
    while metric(&addr, "whale_cache_blocks_used") > 0.0
        || metric(&addr, "whale_running_sequences") > 0.0
    {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "blocks were not freed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(metric(&addr, "whale_requests_cancelled_total"), 1.0);
    assert_eq!(metric(&addr, "whale_cache_blocks_free"), free);
    // it stopped early rather than running to its 200 tokens
    assert!(metric(&addr, "whale_generation_tokens_total") < 200.0);
    assert_eq!(metric(&addr, "whale_requests_finished_total"), 0.0);
}

#[test]
fn completions_and_the_vote_extension() {
    let _serial = serial();
    let addr = start(None, None, 8 << 20);
    let (s, v) = post(
        &addr,
        "/v1/completions",
        &json!({"prompt": "What is 12 + 30?", "max_tokens": 5, "temperature": 0}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["usage"]["completion_tokens"], 5);
    let mut req = chat("What is 12 + 30?", 6);
    req["n"] = json!(3);
    req["temperature"] = json!(0.9);
    req["seed"] = json!(1);
    req["whale_vote"] = json!(true);
    let (s, v) = post(&addr, "/v1/chat/completions", &req);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["choices"].as_array().unwrap().len(), 3);
    // the three samples share the prompt: the later two reuse its full blocks
    assert!(
        metric(&addr, "whale_prefix_cache_hit_tokens_total") >= 8.0,
        "samples did not share the prefix"
    );
    let counts: u64 = v["whale_vote"]["votes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["count"].as_u64().unwrap())
        .sum();
    assert_eq!(counts, 3);
}

#[test]
fn bad_requests_get_openai_errors() {
    let _serial = serial();
    let addr = start(Some("sesame"), Some(64), 8 << 20);
    let auth = [("Authorization", "Bearer sesame")];
    let send = |v: &Value| {
        let (s, b) = http(
            &addr,
            "POST",
            "/v1/chat/completions",
            v.to_string().as_bytes(),
            &auth,
        );
        (s, serde_json::from_str::<Value>(&b).unwrap())
    };
    // authentication
    let (s, b) = http(
        &addr,
        "POST",
        "/v1/chat/completions",
        chat("hi", 2).to_string().as_bytes(),
        &[],
    );
    assert_error((s, serde_json::from_str(&b).unwrap()), 401, "");
    let (s, b) = http(
        &addr,
        "POST",
        "/v1/chat/completions",
        chat("hi", 2).to_string().as_bytes(),
        &[("Authorization", "Bearer nope")],
    );
    assert_error((s, serde_json::from_str(&b).unwrap()), 401, "");
    assert_eq!(send(&chat("hi", 2)).0, 200);
    // malformed JSON and wrong types
    let (s, b) = http(
        &addr,
        "POST",
        "/v1/chat/completions",
        b"{\"messages\": [",
        &auth,
    );
    assert_error((s, serde_json::from_str(&b).unwrap()), 400, "body");
    let mut v = chat("hi", 2);
    v["temperature"] = json!("hot");
    assert_error(send(&v), 400, "temperature");
    let mut v = chat("hi", 2);
    v["messages"] = json!("hello");
    assert_error(send(&v), 400, "messages");
    let mut v = chat("hi", 2);
    v["messages"] = json!([]);
    assert_error(send(&v), 400, "messages");
    let mut v = chat("hi", 2);
    v["messages"] = json!([{"role": "wizard", "content": "x"}]);
    assert_error(send(&v), 400, "messages[0].role");
    let mut v = chat("hi", 2);
    v["model"] = json!("gpt-17");
    assert_error(send(&v), 404, "");
    // limits
    let long = "word ".repeat(100);
    assert_error(send(&chat(&long, 2)), 400, "messages");
    assert_error(send(&chat("hi", 60)), 400, "max_tokens");
    let mut v = chat("hi", 2);
    v["n"] = json!(99);
    assert_error(send(&v), 400, "n");
    let mut v = chat("hi", 2);
    v["logprobs"] = json!(true);
    v["top_logprobs"] = json!(50);
    assert_error(send(&v), 400, "top_logprobs");
    let big = json!({"messages": [{"role": "user", "content": "x".repeat(100_000)}]});
    let (s, b) = http(
        &addr,
        "POST",
        "/v1/chat/completions",
        big.to_string().as_bytes(),
        &auth,
    );
    assert_error((s, serde_json::from_str(&b).unwrap()), 413, "");
    // and the server is still fine
    let (s, v) = send(&chat("hi", 3));
    assert_eq!(s, 200, "{v}");
}

#[test]
fn sixty_four_streaming_clients_under_a_small_cache() {
    let _serial = serial();
    // 132 tokens of cache (33 blocks of 4) for 64 clients whose longest request needs 121:
    // requests wait, and any two running together run out, so sequences get preempted
    let addr = start_with(None, None, 64_000, 16);
    let prompts: Vec<String> = (0..16)
        .map(|i| {
            format!(
                "{} question {i}?",
                "Tell me more about mixture of experts and latent attention. ".repeat(i % 4)
            )
        })
        .collect();
    let max_for = |i: usize| 6 + (i * 5) % 17;
    let engine = whale_engine::Engine::load(&fixture(), true).unwrap();
    let want: Vec<(String, String)> = (0..64)
        .map(|i| {
            let p = whale_engine::GenerateParams {
                max_tokens: max_for(i),
                ..Default::default()
            };
            let g = engine
                .chat(
                    &[whale_engine::Message::new("user", &prompts[i % 16])],
                    &p,
                    |_| {},
                )
                .unwrap();
            (g.reasoning, g.answer)
        })
        .collect();
    let handles: Vec<_> = (0..64)
        .map(|i| {
            let addr = addr.clone();
            let mut req = chat(&prompts[i % 16], max_for(i));
            req["stream"] = json!(true);
            std::thread::spawn(move || {
                let body = req.to_string();
                let mut s = TcpStream::connect(&addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
                write!(s, "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
                if i % 7 == 3 {
                    // an impatient client: leaves after the headers
                    let mut buf = [0u8; 64];
                    let _ = s.read(&mut buf);
                    return None;
                }
                let mut raw = Vec::new();
                s.read_to_end(&mut raw).unwrap();
                let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
                Some(String::from_utf8_lossy(&dechunk(&raw[split + 4..])).to_string())
            })
        })
        .collect();
    let mut complete = 0;
    for (i, h) in handles.into_iter().enumerate() {
        let Some(body) = h.join().unwrap() else {
            continue;
        };
        let (r, a, f, done) = read_stream(&body);
        assert!(done, "client {i} did not get [DONE]");
        assert!(f.is_some(), "client {i} got no finish_reason");
        assert_eq!(
            (r, a),
            want[i],
            "client {i} got another stream's text or a changed result"
        );
        complete += 1;
    }
    assert_eq!(complete, 64 - (0..64).filter(|i| i % 7 == 3).count());
    let t = Instant::now();
    while metric(&addr, "whale_cache_blocks_used") > 0.0
        || metric(&addr, "whale_running_sequences") > 0.0
        || metric(&addr, "whale_waiting_sequences") > 0.0
    {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the pool was not freed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // the small pool really did force preemption and recomputation
    assert!(metric(&addr, "whale_preemptions_total") >= 1.0);
}

/// A server on a synthetic V2-Lite-shaped model (2 layers, hidden 512) that is slow enough for
/// timing checks: ~400 prompt tokens take visible time, 200 generated tokens take seconds.
fn start_synthetic() -> String {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| {
        // under target/tmp, written once and reused by later runs
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("whale-synthetic");
        if dir.join("config.json").exists() {
            return dir;
        }
        let cfg = whale_model::synth::shaped_config(
            whale_model::synth::Preset::V2Lite,
            &whale_model::synth::Overrides {
                layers: Some(2),
                experts: Some(8),
                vocab: Some(512),
                hidden: Some(512),
                mtp: None,
            },
        )
        .unwrap();
        whale_model::synth::write_checkpoint(&cfg, &dir, 1, 1 << 30, false).unwrap();
        dir
    });
    serve(&whale_server::Options {
        port: 0,
        max_batch: 4,
        cache_mem: 64 << 20,
        max_model_len: Some(2048),
        body_limit: 1 << 20,
        ..whale_server::Options::new(dir.clone())
    })
}

/// Milliseconds from sending a streamed chat request to its first data line, and the usage.
fn timed_first_token(addr: &str, req: &Value) -> (f64, Value) {
    let mut req = req.clone();
    req["stream"] = json!(true);
    req["stream_options"] = json!({"include_usage": true});
    let body = req.to_string();
    let mut s = TcpStream::connect(addr).unwrap();
    let t = Instant::now();
    write!(s, "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut raw = Vec::new();
    let mut first = None;
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if first.is_none() && raw.windows(6).any(|w| w == b"data: ") {
            first = Some(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let text = String::from_utf8_lossy(&dechunk(&raw[split + 4..])).to_string();
    let usage = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|v| v["usage"].is_object())
        .map(|v| v["usage"].clone())
        .unwrap();
    (first.unwrap(), usage)
}

#[test]
fn a_cached_system_prompt_is_not_prefilled_again() {
    let _serial = serial();
    // a model big enough that prefilling ~400 tokens takes visible time
    let addr = start_synthetic();
    let system =
        "You are a meticulous assistant that explains mixture-of-experts models. ".repeat(8);
    let ask = |q: &str| json!({"messages": [{"role": "system", "content": system}, {"role": "user", "content": q}], "max_tokens": 2, "temperature": 0});
    let (cold, u1) = timed_first_token(&addr, &ask("What is a router?"));
    let computed_cold = metric(&addr, "whale_prefill_tokens_total");
    let (warm, u2) = timed_first_token(&addr, &ask("What is a shared expert?"));
    let computed_warm = metric(&addr, "whale_prefill_tokens_total") - computed_cold;
    assert_eq!(u1["prompt_cache_hit_tokens"], 0);
    assert_eq!(computed_cold, u1["prompt_tokens"].as_f64().unwrap());
    let hit = u2["prompt_cache_hit_tokens"].as_u64().unwrap();
    let prompt = u2["prompt_tokens"].as_u64().unwrap();
    assert!(hit * 10 >= prompt * 8, "hit {hit} of {prompt}");
    // the cached blocks are not computed again: only the tail of the prompt is prefilled
    assert_eq!(computed_warm, (prompt - hit) as f64);
    // the time is a figure for people, not an assertion (a timed test flakes on a busy machine)
    eprintln!("time to first token: cold {cold:.1} ms, with {hit}/{prompt} prompt tokens cached {warm:.1} ms");
}

#[test]
fn logprobs_come_per_token_streamed_or_not() {
    let _serial = serial();
    let addr = start(None, None, 8 << 20);
    let mut req = chat("What is 12 + 30?", 6);
    req["logprobs"] = json!(true);
    req["top_logprobs"] = json!(3);
    let (s, v) = post(&addr, "/v1/chat/completions", &req);
    assert_eq!(s, 200, "{v}");
    let whole = v["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(whole.len(), 6);
    for e in &whole {
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // the chosen token is greedy: it is the most likely one
        assert_eq!(e["logprob"], top[0]["logprob"]);
        assert!(e["logprob"].as_f64().unwrap() <= 0.0);
    }
    req["stream"] = json!(true);
    let (_, body) = http(
        &addr,
        "POST",
        "/v1/chat/completions",
        req.to_string().as_bytes(),
        &[],
    );
    let streamed: Vec<Value> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter_map(|v| v["choices"][0]["logprobs"]["content"].as_array().cloned())
        .flatten()
        .collect();
    assert_eq!(streamed, whole);
}

#[test]
fn an_out_of_vocabulary_prompt_fails_alone_with_a_400() {
    let _serial = serial();
    let addr = start(None, None, 8 << 20);
    // eight victims stream while the bad requests arrive; none may see an error
    let victims = victims(&addr, 8, 40);
    std::thread::sleep(Duration::from_millis(50));
    for prompt in [json!([5, 384]), json!([5, 400]), json!([5, 4294967301u64])] {
        let r = post(
            &addr,
            "/v1/completions",
            &json!({"prompt": prompt, "max_tokens": 2}),
        );
        assert_error(r, 400, "prompt");
    }
    assert_unharmed(victims);
    // the last id of the vocabulary is fine
    let (s, v) = post(
        &addr,
        "/v1/completions",
        &json!({"prompt": [5, 383], "max_tokens": 2}),
    );
    assert_eq!(s, 200, "{v}");
}
