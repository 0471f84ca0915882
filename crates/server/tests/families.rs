//! V3.2's sparse attention and V4's compressed attention behind the server: requests batched
//! together answer as each does alone, a repeated prompt is served from cached blocks (in memory
//! and from `--context-cache-dir` after a restart) with the same answer; without a chat template
//! their own formats render the conversation, tool calls (DSML) included.

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

/// A copy of a fixture whose tokenizer_config.json has no chat template, as V3.2 and V4 ship,
/// with room for the tool prompts (the fixtures' byte-level vocabulary spells them in ~1.3K
/// tokens; their weights work at any position).
fn without_template(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(case(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
    }
    let p = tmp.path().join("config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    cfg["max_position_embeddings"] = json!(4096);
    std::fs::write(&p, cfg.to_string()).unwrap();
    let p = tmp.path().join("tokenizer_config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("chat_template");
    std::fs::write(&p, cfg.to_string()).unwrap();
    tmp
}

fn dsml_tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"type": "string", "enum": ["c", "f"]}}, "required": ["city", "unit"]}}},
        {"type": "function", "function": {"name": "add", "description": "a + b",
            "parameters": {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99}, "b": {"type": "integer", "minimum": 0, "maximum": 99}}, "required": ["a", "b"]}}}
    ])
}

/// Forced calls come back as `tool_calls` whose arguments follow their schemas, streamed and
/// whole alike; the conversation goes on with the results in each release's own way.
#[test]
fn dsml_tool_calls_are_forced_parsed_and_answered() {
    let _serial = serial();
    for (name, result_tag) in [
        ("tiny-v32", "<function_results>"),
        ("tiny-v4", "<tool_result>"),
    ] {
        let dir = without_template(name);
        let addr = server(dir.path(), None);
        let req = json!({"messages": [{"role": "user", "content": "Weather in Paris, and 2 + 3?"}],
            "tools": dsml_tools(), "tool_choice": "required", "thinking": false,
            "temperature": 0, "max_tokens": 400});
        let (s, v) = post(&addr, "/v1/chat/completions", &req);
        assert_eq!(s, 200, "{name}: {v}");
        let c = &v["choices"][0];
        assert_eq!(c["finish_reason"], "tool_calls", "{name}: {v}");
        let calls = c["message"]["tool_calls"].as_array().unwrap().clone();
        assert!(!calls.is_empty(), "{name}: {v}");
        for call in &calls {
            let f = &call["function"];
            let args: Value = serde_json::from_str(f["arguments"].as_str().unwrap()).unwrap();
            match f["name"].as_str().unwrap() {
                "get_weather" => {
                    assert!(
                        args["city"].as_str().unwrap().chars().count() <= 12,
                        "{args}"
                    );
                    assert!(args["unit"] == "c" || args["unit"] == "f", "{args}");
                }
                "add" => {
                    for k in ["a", "b"] {
                        assert!(args[k].as_u64().unwrap() <= 99, "{args}");
                    }
                }
                other => panic!("{name}: unknown tool {other}"),
            }
        }
        // streamed: the same calls
        let mut sreq = req.clone();
        sreq["stream"] = json!(true);
        let (s, body) = http(
            &addr,
            "POST",
            "/v1/chat/completions",
            sreq.to_string().as_bytes(),
            &[],
        );
        assert_eq!(s, 200, "{body}");
        let mut streamed: Vec<(String, String)> = Vec::new();
        for d in body.lines().filter_map(|l| l.strip_prefix("data: ")) {
            if d == "[DONE]" {
                break;
            }
            let v: Value = serde_json::from_str(d).unwrap();
            for tc in v["choices"][0]["delta"]["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let k = tc["index"].as_u64().unwrap() as usize;
                if k == streamed.len() {
                    streamed.push((
                        tc["function"]["name"].as_str().unwrap().into(),
                        String::new(),
                    ));
                }
                streamed[k].1 += tc["function"]["arguments"].as_str().unwrap_or("");
            }
        }
        let whole: Vec<(String, String)> = calls
            .iter()
            .map(|c| {
                let f = &c["function"];
                (
                    f["name"].as_str().unwrap().into(),
                    f["arguments"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert_eq!(streamed, whole, "{name}");
        // the results go back in: the release's own result blocks, and an answer
        let mut messages = req["messages"].as_array().unwrap().clone();
        messages.push(c["message"].clone());
        for call in &calls {
            messages.push(json!({"role": "tool", "tool_call_id": call["id"], "content": "21"}));
        }
        let (s, t) = post(
            &addr,
            "/v1/chat/template",
            &json!({"messages": messages, "tools": dsml_tools()}),
        );
        assert_eq!(s, 200, "{name}: {t}");
        let prompt = t["prompt"].as_str().unwrap();
        assert!(
            prompt.contains(result_tag) && prompt.contains("<｜DSML｜invoke name="),
            "{name}: {prompt}"
        );
        let (s, v) = post(
            &addr,
            "/v1/chat/completions",
            &json!({"messages": messages, "tools": dsml_tools(), "max_tokens": 4, "temperature": 0}),
        );
        assert_eq!(s, 200, "{name}: {v}");
        // strict tools under `auto` cannot be held to their schemas in DSML: refused
        let mut strict = dsml_tools();
        strict[0]["function"]["strict"] = json!(true);
        let r = post(
            &addr,
            "/v1/chat/completions",
            &json!({"messages": req["messages"], "tools": strict, "tool_choice": "auto", "max_tokens": 4}),
        );
        assert_error(r, 400, "tools");
    }
}
