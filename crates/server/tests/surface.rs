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
        ("presence_penalty", json!(2.5)),
        ("frequency_penalty", json!("x")),
        ("repetition_penalty", json!(0)),
        ("logit_bias", json!([5])),
        ("logit_bias.384", json!({"384": 1})),
        ("logit_bias.5", json!({"5": 101})),
        (
            "tools",
            json!([{"type": "function", "function": {"name": "add"}}]),
        ),
        ("frobnicate", json!(true)),
    ] {
        let field = k.split('.').next().unwrap();
        assert_error(with(field, v), 400, k);
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

/// Greedy completions of a token prompt, `n` tokens, with `extra` fields and the top 20 raw
/// logprobs of each step: (ids, per step [(id, logprob)]).
fn greedy_steps(
    addr: &str,
    n: usize,
    extra: serde_json::Value,
) -> (Vec<u32>, Vec<Vec<(u32, f64)>>) {
    let mut r = json!({"prompt": [1, 40, 41, 42, 43], "max_tokens": n, "temperature": 0, "ignore_eos": true, "logprobs": 20, "return_tokens_as_token_ids": true});
    for (k, v) in extra.as_object().unwrap() {
        r[k] = v.clone();
    }
    let (s, v) = post(addr, "/v1/completions", &r);
    assert_eq!(s, 200, "{v}");
    let lp = &v["choices"][0]["logprobs"];
    let id = |t: &str| t.strip_prefix("token_id:").unwrap().parse::<u32>().unwrap();
    let ids: Vec<u32> = lp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| id(x.as_str().unwrap()))
        .collect();
    let tops = lp["top_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| {
            step.as_object()
                .unwrap()
                .iter()
                .map(|(t, l)| (id(t), l.as_f64().unwrap()))
                .collect()
        })
        .collect();
    (ids, tops)
}

#[test]
fn penalties_and_logit_bias_change_the_output_as_specified() {
    let _serial = serial();
    let addr = start(None, None, 8 << 20);
    let (plain, _) = greedy_steps(&addr, 12, json!({}));
    // a bias of 100 all but forces a token; -100 bans one
    let (forced, _) = greedy_steps(&addr, 12, json!({"logit_bias": {"77": 100}}));
    assert_eq!(forced, vec![77; 12]);
    let (banned, _) = greedy_steps(
        &addr,
        12,
        json!({"logit_bias": {plain[0].to_string(): -100}}),
    );
    assert!(!banned.contains(&plain[0]), "{banned:?}");
    // OpenAI's penalties: each step takes the largest raw logprob less
    // frequency * count + presence * (count > 0) over the tokens generated before it
    for (f, p) in [(1.5, 0.0), (0.0, 2.0), (0.7, 0.9)] {
        let (ids, tops) = greedy_steps(
            &addr,
            24,
            json!({"frequency_penalty": f, "presence_penalty": p}),
        );
        assert_ne!(ids, greedy_steps(&addr, 24, json!({})).0);
        for (i, top) in tops.iter().enumerate() {
            let score = |id: u32, lp: f64| {
                let n = ids[..i].iter().filter(|&&x| x == id).count() as f64;
                lp - f * n - if n > 0.0 { p } else { 0.0 }
            };
            let chosen = top.iter().find(|x| x.0 == ids[i]).copied();
            // the chosen token is among the top 20 raw ones, or all of those were penalised
            let best = top
                .iter()
                .map(|&(id, lp)| score(id, lp))
                .fold(f64::MIN, f64::max);
            if let Some((id, lp)) = chosen {
                assert!(score(id, lp) >= best - 1e-4, "step {i}: {ids:?}");
            }
        }
    }
    // the repetition penalty (vLLM's) changes a repetitive greedy path
    let (rep, _) = greedy_steps(&addr, 24, json!({"repetition_penalty": 1.8}));
    assert_ne!(rep, greedy_steps(&addr, 24, json!({})).0);
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
    // this template renders no tool calls: a conversation with them is refused, not mangled
    assert_error(
        conv(json!({"role": "tool", "content": "4", "tool_call_id": "a"})),
        400,
        "messages",
    );
    assert_error(
        conv(
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "a", "type": "function", "function": {"name": "add", "arguments": "{}"}}]}),
        ),
        400,
        "messages",
    );
    assert_error(
        conv(json!({"role": "tool", "content": "4"})),
        400,
        "messages[1].tool_call_id",
    );
    assert_error(
        conv(json!({"role": "assistant", "content": "4", "prefix": true})),
        400,
        "messages[1].prefix",
    );
    assert_error(
        conv(json!({"role": "user", "content": "4", "tool_calls": []})),
        400,
        "messages[1].tool_calls",
    );
    assert_error(
        conv(json!({"role": "assistant", "content": null})),
        400,
        "messages[1].content",
    );
    let mut r = chat("What is 2 + 2?", 2);
    r["tools"] = json!([{"type": "function", "function": {"name": "add"}}]);
    assert_error(post(&addr, "/v1/chat/completions", &r), 400, "tools");
    // what the template reads as transformers passes it: a name, earlier reasoning
    for extra in [
        json!({"role": "assistant", "content": "4", "name": "whale"}),
        json!({"role": "assistant", "content": "4", "reasoning_content": "2 + 2"}),
    ] {
        let (s, v) = conv(extra);
        assert_eq!(s, 200, "{v}");
    }
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

#[test]
fn completions_logprobs_echo_and_suffix_in_the_completions_shape() {
    let _serial = serial();
    let addr = start(None, None, 8 << 20);
    let req = json!({"prompt": "The cat", "max_tokens": 8, "temperature": 0, "ignore_eos": true, "logprobs": 3});
    let (s, v) = post(&addr, "/v1/completions", &req);
    assert_eq!(s, 200, "{v}");
    let c = &v["choices"][0];
    let lp = &c["logprobs"];
    let tokens = lp["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 8, "{v}");
    for k in ["token_logprobs", "top_logprobs", "text_offset"] {
        assert_eq!(lp[k].as_array().unwrap().len(), 8, "{k}: {v}");
    }
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(offsets[0], 0);
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "{offsets:?}");
    for (i, top) in lp["top_logprobs"].as_array().unwrap().iter().enumerate() {
        let top = top.as_object().unwrap();
        assert!(!top.is_empty() && top.len() <= 3, "{top:?}");
        // greedy: the chosen token is the likeliest
        let chosen = lp["token_logprobs"][i].as_f64().unwrap();
        let best = top
            .values()
            .map(|x| x.as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        assert!(chosen <= 0.0 && (chosen - best).abs() < 1e-5, "{v}");
    }
    // streamed: the same tokens and logprobs, chunk by chunk
    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    let (_, body) = http(
        &addr,
        "POST",
        "/v1/completions",
        sreq.to_string().as_bytes(),
        &[],
    );
    let (mut text, mut streamed) = (String::new(), Vec::new());
    for d in body.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if d == "[DONE]" {
            break;
        }
        let ch: serde_json::Value = serde_json::from_str(d).unwrap();
        text.push_str(ch["choices"][0]["text"].as_str().unwrap());
        if let Some(t) = ch["choices"][0]["logprobs"]["tokens"].as_array() {
            streamed.extend(t.iter().cloned());
        }
    }
    assert_eq!(text, c["text"].as_str().unwrap());
    assert_eq!(&streamed, tokens);
    // echo puts the prompt first, streamed and not
    let mut e = json!({"prompt": "The cat", "max_tokens": 8, "temperature": 0, "ignore_eos": true, "echo": true});
    let (_, ev) = post(&addr, "/v1/completions", &e);
    assert_eq!(
        ev["choices"][0]["text"].as_str().unwrap(),
        format!("The cat{}", c["text"].as_str().unwrap())
    );
    e["stream"] = json!(true);
    let (_, body) = http(
        &addr,
        "POST",
        "/v1/completions",
        e.to_string().as_bytes(),
        &[],
    );
    let streamed: String = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| {
            let ch: serde_json::Value = serde_json::from_str(d).unwrap();
            ch["choices"][0]["text"].as_str().unwrap_or("").to_string()
        })
        .collect();
    assert_eq!(streamed, ev["choices"][0]["text"].as_str().unwrap());
    // echo with logprobs: the prompt's tokens come first, the first without a logprob, each
    // other's logprob the one the model gives it after the tokens before it
    let prompt = json!([1, 40, 41, 42, 43]);
    let (s, e) = post(
        &addr,
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 3, "temperature": 0, "ignore_eos": true, "logprobs": 2, "echo": true, "return_tokens_as_token_ids": true}),
    );
    assert_eq!(s, 200, "{e}");
    let lp = &e["choices"][0]["logprobs"];
    let tokens: Vec<&str> = lp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tokens.len(), 5 + 3, "{e}");
    assert_eq!(
        &tokens[..5],
        [
            "token_id:1",
            "token_id:40",
            "token_id:41",
            "token_id:42",
            "token_id:43"
        ]
    );
    assert!(
        lp["token_logprobs"][0].is_null() && lp["top_logprobs"][0].is_null(),
        "{e}"
    );
    for k in 1..5 {
        // the raw logprob of prompt token k after the ones before it: the bias makes the model
        // write it, and logprobs are reported before biases
        let next = prompt[k].to_string();
        let (_, one) = post(
            &addr,
            "/v1/completions",
            &json!({"prompt": prompt.as_array().unwrap()[..k], "max_tokens": 1, "temperature": 0, "ignore_eos": true, "logprobs": 1, "logit_bias": {next: 100}}),
        );
        let want = one["choices"][0]["logprobs"]["token_logprobs"][0]
            .as_f64()
            .unwrap();
        let got = lp["token_logprobs"][k].as_f64().unwrap();
        assert!((want - got).abs() < 1e-4, "token {k}: {want} vs {got}");
    }
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "{offsets:?}");
    // streamed, the same text, tokens, logprobs and offsets, chunk by chunk
    let r = json!({"prompt": prompt, "max_tokens": 3, "temperature": 0, "ignore_eos": true, "logprobs": 2, "echo": true, "return_tokens_as_token_ids": true, "stream": true});
    let (_, body) = http(
        &addr,
        "POST",
        "/v1/completions",
        r.to_string().as_bytes(),
        &[],
    );
    let (mut text, mut joined) = (
        String::new(),
        json!({"tokens": [], "token_logprobs": [], "text_offset": []}),
    );
    for d in body.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if d == "[DONE]" {
            break;
        }
        let ch: serde_json::Value = serde_json::from_str(d).unwrap();
        text.push_str(ch["choices"][0]["text"].as_str().unwrap());
        for k in ["tokens", "token_logprobs", "text_offset"] {
            for x in ch["choices"][0]["logprobs"][k]
                .as_array()
                .into_iter()
                .flatten()
            {
                joined[k].as_array_mut().unwrap().push(x.clone());
            }
        }
    }
    assert_eq!(text, e["choices"][0]["text"].as_str().unwrap());
    for k in ["tokens", "token_logprobs", "text_offset"] {
        assert_eq!(joined[k], lp[k], "{k}");
    }
    // a suffix on a vocabulary without fill-in-the-middle tokens is refused
    let mut bad = req.clone();
    bad["suffix"] = json!(" sat.");
    assert_error(post(&addr, "/v1/completions", &bad), 400, "suffix");
}

#[test]
fn streamed_and_whole_answers_agree_field_by_field_on_50_prompts() {
    let _serial = serial();
    let model = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-r1");
    let addr = serve(&whale_server::Options {
        port: 0,
        cache_mem: 32 << 20,
        ..whale_server::Options::new(model)
    });
    let mut reasoned = 0;
    for i in 0..50u32 {
        let q = format!("What is {} + {}?", 3 + i * 7 % 90, 11 + i * 13 % 80);
        let mut r = json!({"messages": [{"role": "user", "content": q}], "max_tokens": 96, "temperature": 0});
        let (s, whole) = post(&addr, "/v1/chat/completions", &r);
        assert_eq!(s, 200, "{whole}");
        r["stream"] = json!(true);
        let (s, body) = http(
            &addr,
            "POST",
            "/v1/chat/completions",
            r.to_string().as_bytes(),
            &[],
        );
        assert_eq!(s, 200);
        let (reasoning, content, finish, done) = read_stream(&body);
        let m = &whole["choices"][0]["message"];
        assert!(done);
        assert_eq!(
            reasoning,
            m["reasoning_content"].as_str().unwrap_or(""),
            "{q}"
        );
        assert_eq!(content, m["content"].as_str().unwrap(), "{q}");
        assert_eq!(
            finish.as_deref(),
            whole["choices"][0]["finish_reason"].as_str()
        );
        reasoned += !reasoning.is_empty() as usize;
    }
    // the bundled model thinks before it answers: reasoning was compared, not two empty strings
    assert!(reasoned >= 40, "{reasoned}");
}

fn tiny_r1() -> String {
    let model = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-r1");
    serve(&whale_server::Options {
        port: 0,
        cache_mem: 32 << 20,
        ..whale_server::Options::new(model)
    })
}

#[test]
fn response_format_holds_every_answer_to_its_schema_and_leaves_the_reasoning_free() {
    let _serial = serial();
    let addr = tiny_r1();
    let schema = json!({"type": "object", "properties": {"answer": {"type": "integer", "minimum": 0, "maximum": 999}, "unit": {"enum": ["apples", "pears"]}}, "required": ["answer", "unit"], "additionalProperties": false});
    let format = json!({"type": "json_schema", "json_schema": {"name": "sum", "schema": schema, "strict": true}});
    let mut valid = 0;
    for i in 0..100u32 {
        let q = format!("What is {} + {}?", 2 + i * 7 % 90, 5 + i * 13 % 80);
        let mut r = json!({"messages": [{"role": "user", "content": q}], "max_tokens": 200, "temperature": if i < 50 { 0.0 } else { 1.0 }, "seed": i});
        let (_, free) = post(&addr, "/v1/chat/completions", &r);
        r["response_format"] = format.clone();
        let (s, v) = post(&addr, "/v1/chat/completions", &r);
        assert_eq!(s, 200, "{v}");
        let m = &v["choices"][0]["message"];
        let content = m["content"].as_str().unwrap();
        let a: serde_json::Value = serde_json::from_str(content)
            .unwrap_or_else(|e| panic!("{q}: {content:?} is not JSON: {e}"));
        let o = a.as_object().unwrap();
        assert!(
            o.len() == 2 && a["answer"].as_u64().is_some_and(|n| n <= 999),
            "{a}"
        );
        assert!(
            matches!(a["unit"].as_str(), Some("apples" | "pears")),
            "{a}"
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
        // the reasoning is the model's own: the same as without a format, token for token
        assert_eq!(
            m["reasoning_content"], free["choices"][0]["message"]["reasoning_content"],
            "{q}"
        );
        valid += 1;
    }
    assert_eq!(valid, 100);
    // json_object: any object
    let mut r = chat("What is 2 + 2?", 200);
    r["model"] = json!("tiny-r1");
    r["response_format"] = json!({"type": "json_object"});
    let (s, v) = post(&addr, "/v1/chat/completions", &r);
    assert_eq!(s, 200, "{v}");
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    // a free-form object may run out of tokens inside a string; one that ended is whole
    assert!(content.trim_start().starts_with('{'), "{content}");
    if v["choices"][0]["finish_reason"] == "stop" {
        assert!(serde_json::from_str::<serde_json::Value>(content)
            .unwrap()
            .is_object());
    }
    // what cannot be compiled or used is a 400 naming it
    let mut bad = chat("What is 2 + 2?", 20);
    bad["model"] = json!("tiny-r1");
    for (f, param) in [
        (
            json!({"type": "json_schema", "json_schema": {"schema": {"type": "frob"}}}),
            "response_format",
        ),
        (
            json!({"type": "json_schema", "json_schema": {"name": "x"}}),
            "response_format.json_schema.schema",
        ),
        (json!({"type": "yaml"}), "response_format.type"),
        (
            json!({"type": "json_object", "schema": {}}),
            "response_format.schema",
        ),
    ] {
        bad["response_format"] = f;
        assert_error(post(&addr, "/v1/chat/completions", &bad), 400, param);
    }
    bad["response_format"] = json!({"type": "json_object"});
    bad["ignore_eos"] = json!(true);
    assert_error(post(&addr, "/v1/chat/completions", &bad), 400, "ignore_eos");
}
