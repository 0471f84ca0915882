//! The request surface is honest: a field whale does not implement is refused with a 400 that
//! names it (its neutral value, which leaves the output unchanged, is accepted); DeepSeek's
//! `thinking` object works; a server answers to the names it is given.

mod common;
use common::*;
use serde_json::json;

#[test]
fn fields_that_would_change_the_output_are_refused_by_name() {
    let _serial = serial();
    let addr = start(None, None, 8 << 20);
    let with = |k: &str, v: serde_json::Value| {
        let mut r = chat("What is 2 + 2?", 2);
        r[k] = v;
        post(&addr, "/v1/chat/completions", &r)
    };
    for (k, v) in [
        ("presence_penalty", json!(0.5)),
        ("frequency_penalty", json!(-1)),
        ("logit_bias", json!({"5": 100})),
        (
            "tools",
            json!([{"type": "function", "function": {"name": "add"}}]),
        ),
        ("response_format", json!({"type": "json_object"})),
        ("frobnicate", json!(true)),
    ] {
        assert_error(with(k, v), 400, k);
    }
    let mut r = chat("What is 2 + 2?", 2);
    r["stream_options"] = json!({"include_usage": true, "continuous_usage_stats": true});
    assert_error(
        post(&addr, "/v1/chat/completions", &r),
        400,
        "stream_options.continuous_usage_stats",
    );
    let mut r = chat("What is 2 + 2?", 2);
    r["chat_template_kwargs"] = json!({"tools_in_user_message": true});
    assert_error(
        post(&addr, "/v1/chat/completions", &r),
        400,
        "chat_template_kwargs.tools_in_user_message",
    );
    // neutral values and fields that cannot change the output are served, with the same text
    let (_, plain) = post(&addr, "/v1/chat/completions", &chat("What is 2 + 2?", 2));
    for (k, v) in [
        ("presence_penalty", json!(0)),
        ("frequency_penalty", json!(0.0)),
        ("logit_bias", json!({})),
        ("response_format", json!({"type": "text"})),
        ("tool_choice", json!("none")),
        ("user", json!("someone")),
        ("metadata", json!({"a": "b"})),
        ("presence_penalty", json!(null)),
    ] {
        let (s, v2) = with(k, v.clone());
        assert_eq!(s, 200, "{k}: {v}: {v2}");
        assert_eq!(
            v2["choices"][0]["message"], plain["choices"][0]["message"],
            "{k}"
        );
    }
    // completions have their own fields: chat-only ones are refused there
    let r = post(
        &addr,
        "/v1/completions",
        &json!({"prompt": "hi", "top_logprobs": 2}),
    );
    assert_error(r, 400, "top_logprobs");
}

#[test]
fn deepseek_thinking_object_and_served_model_names() {
    let _serial = serial();
    let addr = serve(&whale_server::Options {
        port: 0,
        cache_mem: 8 << 20,
        block_size: 4,
        served_model_names: vec!["deepseek-reasoner".into(), "whale-tiny".into()],
        ..whale_server::Options::new(fixture())
    });
    let ask = |model: &str, thinking: serde_json::Value| {
        let mut r = chat("What is 2 + 2?", 6);
        r["model"] = json!(model);
        r["thinking"] = thinking;
        post(&addr, "/v1/chat/completions", &r)
    };
    let (s, off) = ask("deepseek-reasoner", json!(false));
    assert_eq!(s, 200, "{off}");
    assert_eq!(off["model"], "deepseek-reasoner");
    let (s, disabled) = ask("whale-tiny", json!({"type": "disabled"}));
    assert_eq!(s, 200, "{disabled}");
    assert_eq!(
        disabled["choices"][0]["message"],
        off["choices"][0]["message"]
    );
    let (_, on) = ask("whale-tiny", json!(true));
    let (_, enabled) = ask("whale-tiny", json!({"type": "enabled"}));
    assert_eq!(
        enabled["choices"][0]["message"],
        on["choices"][0]["message"]
    );
    assert_error(
        ask("whale-tiny", json!({"type": "sometimes"})),
        400,
        "thinking",
    );
    let (s, e) = ask("tiny-v3", json!(true));
    assert_eq!(s, 404, "{e}");
    let (s, b) = http(&addr, "GET", "/v1/models", b"", &[]);
    assert_eq!(s, 200);
    let list: serde_json::Value = serde_json::from_str(&b).unwrap();
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["deepseek-reasoner", "whale-tiny"]);
    let (s, b) = http(&addr, "GET", "/v1/models/whale-tiny", b"", &[]);
    assert_eq!(s, 200, "{b}");
    assert!(b.contains("\"id\":\"whale-tiny\""), "{b}");
    let (s, b) = http(&addr, "GET", "/v1/models/gpt-9", b"", &[]);
    assert_eq!(s, 404, "{b}");
    assert!(b.contains("model_not_found"), "{b}");
}

#[test]
fn message_fields_that_would_change_the_prompt_are_refused() {
    let _serial = serial();
    let addr = start(None, None, 8 << 20);
    let conv = |extra: serde_json::Value| {
        let mut msgs = vec![json!({"role": "user", "content": "What is 2 + 2?"})];
        msgs.push(extra);
        msgs.push(json!({"role": "user", "content": "And 3 + 3?"}));
        post(
            &addr,
            "/v1/chat/completions",
            &json!({"messages": msgs, "max_tokens": 2, "temperature": 0}),
        )
    };
    assert_error(
        conv(json!({"role": "tool", "content": "4", "tool_call_id": "a"})),
        400,
        "messages[1].role",
    );
    assert_error(
        conv(
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "a", "type": "function", "function": {"name": "add", "arguments": "{}"}}]}),
        ),
        400,
        "messages[1].tool_calls",
    );
    assert_error(
        conv(json!({"role": "assistant", "content": "4", "reasoning_content": "2 + 2"})),
        400,
        "messages[1].reasoning_content",
    );
    assert_error(
        conv(json!({"role": "assistant", "content": "4", "prefix": true})),
        400,
        "messages[1].prefix",
    );
    assert_error(
        conv(json!({"role": "assistant", "content": "4", "name": "whale"})),
        400,
        "messages[1].name",
    );
    // `developer` reaches the template as it is: DeepSeek's templates leave it out
    let (s, with_dev) = conv(json!({"role": "developer", "content": "Answer in French."}));
    assert_eq!(s, 200, "{with_dev}");
    let (_, without) = post(
        &addr,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "What is 2 + 2?"}, {"role": "user", "content": "And 3 + 3?"}], "max_tokens": 2, "temperature": 0}),
    );
    assert_eq!(
        with_dev["usage"]["prompt_tokens"],
        without["usage"]["prompt_tokens"]
    );
}

#[test]
fn tokenize_detokenize_and_the_chat_template_without_generating() {
    let _serial = serial();
    let addr = start(None, None, 8 << 20);
    let msgs = json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]);
    let (s, t) = post(&addr, "/v1/chat/template", &json!({"messages": msgs}));
    assert_eq!(s, 200, "{t}");
    assert!(
        t["prompt"].as_str().unwrap().contains("What is 2 + 2?"),
        "{t}"
    );
    let ids = t["prompt_token_ids"].as_array().unwrap().clone();
    // the ids are the ones a chat request runs
    let (_, c) = post(
        &addr,
        "/v1/chat/completions",
        &json!({"messages": msgs, "max_tokens": 1}),
    );
    assert_eq!(c["usage"]["prompt_tokens"], ids.len());
    let (s, k) = post(&addr, "/tokenize", &json!({"messages": msgs}));
    assert_eq!(s, 200, "{k}");
    assert_eq!(k["tokens"].as_array().unwrap(), &ids);
    assert_eq!(k["count"], ids.len());
    assert_eq!(k["max_model_len"], 256);
    // the rendered text reads back from its ids
    let (s, d) = post(&addr, "/detokenize", &json!({"tokens": ids}));
    assert_eq!(s, 200, "{d}");
    assert_eq!(d["prompt"], t["prompt"]);
    let (s, k) = post(
        &addr,
        "/tokenize",
        &json!({"prompt": "hello there", "add_special_tokens": false}),
    );
    assert_eq!(s, 200, "{k}");
    let (_, d) = post(&addr, "/detokenize", &json!({"tokens": k["tokens"]}));
    assert_eq!(d["prompt"], "hello there");
    assert_error(
        post(&addr, "/detokenize", &json!({"tokens": [5, 400]})),
        400,
        "tokens",
    );
    assert_error(
        post(&addr, "/tokenize", &json!({"prompt": "x", "frob": 1})),
        400,
        "frob",
    );
    assert_error(post(&addr, "/tokenize", &json!({})), 400, "prompt");
    assert_error(
        post(&addr, "/tokenize", &json!({"prompt": "x ".repeat(20_000)})),
        400,
        "prompt",
    );
    let (s, _) = post(
        &addr,
        "/tokenize",
        &json!({"prompt": "x", "model": "gpt-9"}),
    );
    assert_eq!(s, 404);
}
