//! The chat template and tokenizer of every fixture against transformers' rendering, and
//! text generation end to end on a fixture model.

use serde_json::Value;
use std::path::PathBuf;
use whale_engine::{ChatTokenizer, Engine, GenerateParams, Message, Part};

const CASES: [&str; 4] = ["tiny-v3", "tiny-v2-lite", "tiny-v2-group", "tiny-v3-fp8"];

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/fixtures")
        .join(name)
}

fn chat_case(name: &str) -> (Vec<Message>, String, Vec<u32>) {
    let r: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(name).join("reference.json")).unwrap(),
    )
    .unwrap();
    let chat = &r["chat"];
    let msgs = serde_json::from_value(chat["messages"].clone()).unwrap();
    let ids = chat["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    (msgs, chat["text"].as_str().unwrap().to_string(), ids)
}

#[test]
fn chat_template_renders_and_tokenizes_like_transformers() {
    for name in CASES {
        let tok = ChatTokenizer::load(&fixture(name)).unwrap();
        let (msgs, text, ids) = chat_case(name);
        let (got_text, got_ids) = tok.encode_chat(&msgs, &Value::Null).unwrap();
        assert_eq!(got_text, text, "{name}");
        assert_eq!(got_ids, ids, "{name}");
        assert_eq!(
            got_ids.iter().filter(|&&i| i == 0).count(),
            1,
            "exactly one BOS"
        );
    }
}

#[test]
fn plain_prompt_gets_one_bos() {
    let tok = ChatTokenizer::load(&fixture("tiny-v3")).unwrap();
    let ids = tok.encode_prompt("What is 12 + 30?").unwrap();
    assert_eq!(ids[0], 0);
    let again = tok
        .encode_prompt("<｜begin▁of▁sentence｜>What is 12 + 30?")
        .unwrap();
    assert_eq!(again, ids);
}

#[test]
fn chat_generation_splits_reasoning_from_answer_and_is_seeded() {
    let engine = Engine::load(&fixture("tiny-v3"), true).unwrap();
    let msgs = vec![Message::new("user", "What is 12 + 30?")];
    let mut params = GenerateParams {
        max_tokens: 24,
        ..Default::default()
    };
    params.sampling.temperature = 0.8;
    params.sampling.top_p = 0.95;
    params.sampling.seed = Some(5);
    let mut streamed = (String::new(), String::new());
    let g = engine
        .chat(&msgs, &params, |p| match p {
            Part::Reasoning(t) => streamed.0.push_str(t),
            Part::Answer(t) => streamed.1.push_str(t),
        })
        .unwrap();
    assert_eq!((g.reasoning.clone(), g.answer.clone()), streamed);
    assert!(!g.ids.is_empty() && g.ids.len() <= 24);
    // the template primes <think>, so everything before a </think> is reasoning
    let text = engine.tokenizer().unwrap().decode(&g.ids).unwrap();
    match text.find("</think>") {
        Some(i) => assert_eq!(g.reasoning, text[..i]),
        None => assert_eq!(g.reasoning, text),
    }
    let again = engine.chat(&msgs, &params, |_| {}).unwrap();
    assert_eq!(again.ids, g.ids, "same seed, same tokens");
}

#[test]
fn max_tokens_and_stop_strings_end_generation() {
    let engine = Engine::load(&fixture("tiny-v2-lite"), true).unwrap();
    let tok = engine.tokenizer().unwrap();
    let ids = tok.encode_prompt("What is 12 + 30?").unwrap();
    let params = GenerateParams {
        max_tokens: 10,
        ignore_eos: true,
        ..Default::default()
    };
    let g = engine
        .generate_text("What is 12 + 30?", &ids, &params, |_| {})
        .unwrap();
    assert_eq!(g.ids.len(), 10);
    assert_eq!(g.finish, whale_engine::FinishReason::Length);
    // stop on the text of the 4th..5th generated tokens: generation ends there, the stop
    // string itself is not returned
    let full = tok.decode(&g.ids).unwrap();
    let cut = tok.decode(&g.ids[..3]).unwrap().len();
    let stop = full[cut..].chars().take(2).collect::<String>();
    let params = GenerateParams {
        stop: vec![stop.clone()],
        ..params
    };
    let s = engine
        .generate_text("What is 12 + 30?", &ids, &params, |_| {})
        .unwrap();
    assert_eq!(s.finish, whale_engine::FinishReason::Stop);
    assert!(s.ids.len() < 10);
    assert!(!s.answer.contains(&stop));
    assert!(full.starts_with(&s.answer));
}

#[test]
fn an_end_of_sequence_token_ends_generation_unless_ignored() {
    let mut engine = Engine::load(&fixture("tiny-v3"), true).unwrap();
    let prompt = [0u32, 3];
    let greedy = GenerateParams {
        max_tokens: 12,
        ..Default::default()
    };
    let (free, _, _, _) = engine
        .generate_ids(
            &prompt,
            &GenerateParams {
                ignore_eos: true,
                ..greedy.clone()
            },
            |_| Ok(true),
        )
        .unwrap();
    assert_eq!(free.len(), 12);
    // make the 4th greedy token the end-of-sequence token (if it occurs earlier, stop there)
    let eos = free[3];
    let first = free.iter().position(|&t| t == eos).unwrap();
    engine.eos_token_ids = vec![eos];
    let (ids, finish, _, _) = engine.generate_ids(&prompt, &greedy, |_| Ok(true)).unwrap();
    assert_eq!(
        ids,
        free[..first].to_vec(),
        "stops before the EOS token, which is not returned"
    );
    assert_eq!(finish, whale_engine::FinishReason::Stop);
    let (ids, _, _, _) = engine
        .generate_ids(
            &prompt,
            &GenerateParams {
                ignore_eos: true,
                ..greedy
            },
            |_| Ok(true),
        )
        .unwrap();
    assert_eq!(ids, free);
}
