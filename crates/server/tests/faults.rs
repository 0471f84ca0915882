//! A fault stays with its request: a sequence the engine fails on is dropped alone while the
//! rest of its batch goes on, a panicking step answers its requests with a 500 and the engine
//! starts afresh, and `/health` says when the engine can no longer serve. Faults are injected
//! through fail points that only hit prompts opening with `FAULT_MARKER`.

mod common;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;
use whale_server::scheduler::FAULT_MARKER;

fn arm_fault_points() {
    static ARMED: std::sync::Once = std::sync::Once::new();
    ARMED.call_once(|| {
        fail::cfg("whale-forward", "return").unwrap();
        fail::cfg("whale-step", "panic").unwrap();
    });
}

fn marked_prompt() -> Value {
    let mut p: Vec<u32> = FAULT_MARKER.to_vec();
    p.extend([5, 6, 7]);
    json!({"prompt": p, "max_tokens": 4})
}

#[test]
fn a_sequence_the_engine_fails_on_is_dropped_alone() {
    let _serial = serial();
    arm_fault_points();
    fail::cfg("whale-step", "off").unwrap();
    let addr = start(None, None, 8 << 20);
    let v = victims(&addr, 8, 40);
    std::thread::sleep(Duration::from_millis(50));
    let (s, e) = post(&addr, "/v1/completions", &marked_prompt());
    assert_eq!(s, 500, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("injected"),
        "{e}"
    );
    assert_unharmed(v);
    assert_eq!(metric(&addr, "whale_sequence_faults_total"), 1.0);
    fail::cfg("whale-step", "panic").unwrap();
}

#[test]
fn a_panicking_step_answers_500_and_the_engine_starts_afresh() {
    let _serial = serial();
    arm_fault_points();
    let addr = start(None, None, 8 << 20);
    let (s, e) = post(&addr, "/v1/completions", &marked_prompt());
    assert_eq!(s, 500, "{e}");
    assert_eq!(e["error"]["type"], "server_error", "{e}");
    // the engine goes on: a later request is served, and /health says so
    let (s, v) = post(&addr, "/v1/chat/completions", &chat("What is 2 + 2?", 4));
    assert_eq!(s, 200, "{v}");
    assert_eq!(http(&addr, "GET", "/health", b"", &[]).0, 200);
    assert_eq!(metric(&addr, "whale_engine_panics_total"), 1.0);
    assert_eq!(metric(&addr, "whale_engine_up"), 1.0);
}

#[test]
fn an_engine_that_keeps_panicking_stops_and_health_says_so() {
    let _serial = serial();
    arm_fault_points();
    let addr = start(None, None, 8 << 20);
    for _ in 0..3 {
        let (s, e) = post(&addr, "/v1/completions", &marked_prompt());
        assert_eq!(s, 500, "{e}");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while http(&addr, "GET", "/health", b"", &[]).0 == 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "/health still says ok"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (s, b) = http(&addr, "GET", "/health", b"", &[]);
    assert_eq!(s, 503, "{b}");
    // a request now gets a clear 503, not a hang
    let (s, e) = post(&addr, "/v1/chat/completions", &chat("What is 2 + 2?", 4));
    assert_eq!(s, 503, "{e}");
    assert_eq!(metric(&addr, "whale_engine_up"), 0.0);
}

/// The queue gauges say what the last step left: once an answer is back, no sequence is
/// counted as running for long (they were left for up to 200 ms while the engine waited).
#[test]
fn gauges_are_fresh_once_an_answer_is_back() {
    let _serial = serial();
    let addr = start(None, None, 8 << 20);
    for i in 0..5 {
        let (s, v) = post(
            &addr,
            "/v1/chat/completions",
            &chat(&format!("What is {i} + 2?"), 3),
        );
        assert_eq!(s, 200, "{v}");
        let t = std::time::Instant::now();
        while metric(&addr, "whale_running_sequences") != 0.0 {
            assert!(
                t.elapsed() < Duration::from_millis(100),
                "a finished sequence still counted as running after 100 ms"
            );
        }
    }
}
