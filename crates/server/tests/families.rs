//! V3.2's sparse attention and V4's compressed attention behind the server: requests batched
//! together answer as each does alone, a repeated prompt is served from cached blocks (in memory
//! and from `--context-cache-dir` after a restart) with the same answer.

mod common;
use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn case(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/fixtures")
        .join(name)
}

fn server(model: &Path, cache_dir: Option<&Path>) -> String {
    serve(&whale_server::Options {
        port: 0,
        cache_mem: 16 << 20,
        block_size: 4,
        context_cache_dir: cache_dir.map(Path::to_path_buf),
        context_cache_flush: Some(Duration::from_millis(50)),
        ..whale_server::Options::new(model.to_path_buf())
    })
}

/// A prompt long enough that V3.2's indexer (top 8) and V4's (top 4 of its CSA entries) choose.
fn request(i: usize) -> Value {
    let system =
        "You are a careful assistant who answers arithmetic questions briefly and shows the steps.";
    json!({"messages": [
        {"role": "system", "content": system},
        {"role": "user", "content": format!("What is {} + {}?", 12 + i, 30 + 7 * i)}
    ], "max_tokens": 10, "temperature": 0, "ignore_eos": true})
}

fn answer(addr: &str, r: &Value) -> (String, u64) {
    let (s, v) = post(addr, "/v1/chat/completions", r);
    assert_eq!(s, 200, "{v}");
    let m = &v["choices"][0]["message"];
    (
        format!("{}|{}", m["reasoning_content"], m["content"]),
        v["usage"]["prompt_cache_hit_tokens"].as_u64().unwrap_or(0),
    )
}

#[test]
fn sparse_and_compressed_attention_serve_batched_and_cached_as_alone() {
    let _serial = serial();
    for name in ["tiny-v32", "tiny-v4"] {
        let model = case(name);
        let tmp = tempfile::tempdir().unwrap();
        let addr = server(&model, Some(tmp.path()));
        let alone: Vec<String> = (0..4).map(|i| answer(&addr, &request(i)).0).collect();
        // the same four at once: continuous batching puts them in the same steps
        let together: Vec<String> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|i| {
                    let addr = addr.clone();
                    s.spawn(move || answer(&addr, &request(i)).0)
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(together, alone, "{name}: batched answers differ from alone");
        // the shared system prompt's blocks came from the cache, and changed nothing
        let (again, hits) = answer(&addr, &request(0));
        assert!(hits > 0, "{name}: no prefix-cache hit");
        assert_eq!(again, alone[0], "{name}");
        // a new server reads the saved blocks back and answers the same
        std::thread::sleep(Duration::from_millis(300));
        let addr = server(&model, Some(tmp.path()));
        let (restarted, hits) = answer(&addr, &request(1));
        assert!(hits > 0, "{name}: nothing read back from the context cache");
        assert_eq!(restarted, alone[1], "{name}");
    }
}
