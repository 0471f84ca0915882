//! DeepSeek-V3.2's and V4's conversation formats, shipped by their releases as Python code:
//! whale's encoders against the strings the released `encode_messages` returned for the same
//! conversations (testdata/encodings, made by tools/encoding_references.py).

use serde_json::{json, Value};
use std::path::PathBuf;
use whale_engine::native_chat::NativeFormat;
use whale_engine::tokenizer::{ChatTokenizer, Message};

fn data(name: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/encodings")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn messages(v: &Value) -> Vec<Message> {
    serde_json::from_value(v.clone()).unwrap()
}

#[test]
fn both_formats_render_as_the_released_encoders_do() {
    for (file, format) in [
        ("dsv32.json", NativeFormat::V32),
        ("dsv4.json", NativeFormat::V4),
    ] {
        let d = data(file);
        let cases = d["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 26);
        assert_eq!(
            cases.iter().filter(|c| c.get("tools").is_some()).count(),
            14
        );
        for c in cases {
            let thinking = c["thinking_mode"] == "thinking";
            let got = format
                .render(&messages(&c["messages"]), thinking, c.get("tools"))
                .unwrap();
            assert_eq!(
                got,
                c["text"].as_str().unwrap(),
                "{file} {} {}",
                c["name"],
                c["thinking_mode"]
            );
        }
    }
}

/// A V3.2 checkpoint without a chat template renders through its format, `thinking: false`
/// picking chat mode, the request's tools offered through it; what the format cannot say is
/// refused, not dropped.
#[test]
fn a_checkpoint_without_a_template_takes_its_release_format() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/fixtures/tiny-v32");
    let tmp = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("tokenizer_config.json")).unwrap())
            .unwrap();
    cfg.as_object_mut().unwrap().remove("chat_template");
    std::fs::write(tmp.path().join("tokenizer_config.json"), cfg.to_string()).unwrap();
    let tok = ChatTokenizer::load(tmp.path()).unwrap();
    assert!(tok.has_chat_template());
    let d = data("dsv32.json");
    for c in d["cases"].as_array().unwrap() {
        let mut extra = json!({"thinking": c["thinking_mode"] == "thinking"});
        if let Some(t) = c.get("tools") {
            extra["tools"] = t.clone();
        }
        let r = tok
            .render_chat(&messages(&c["messages"]), true, &extra)
            .unwrap();
        assert_eq!(r.plain(), c["text"].as_str().unwrap(), "{}", c["name"]);
    }
    // a result with no call before it, arguments that are not an object, V4's task turns
    let err = tok
        .render_chat(
            &[Message::new("user", "hi"), Message::new("tool", "3")],
            true,
            &json!({}),
        )
        .unwrap_err();
    assert!(format!("{err:#}").contains("tool call"), "{err:#}");
    let mut call = Message::new("assistant", "");
    call.extra.insert(
        "tool_calls".into(),
        json!([{"type": "function", "function": {"name": "f", "arguments": "[1]"}}]),
    );
    let err = tok
        .render_chat(&[Message::new("user", "hi"), call], true, &json!({}))
        .unwrap_err();
    assert!(format!("{err:#}").contains("not a JSON object"), "{err:#}");
    // thinking mode: an answer after the last user turn with no reasoning and no calls
    let mut answer = Message::new("assistant", "4");
    answer.extra.insert("reasoning_content".into(), json!(""));
    let err = tok
        .render_chat(&[Message::new("user", "2+2"), answer], true, &json!({}))
        .unwrap_err();
    assert!(format!("{err:#}").contains("reasoning_content"), "{err:#}");
    let mut task = Message::new("user", "hi");
    task.extra.insert("task".into(), json!("query"));
    let err = tok.render_chat(&[task], true, &json!({})).unwrap_err();
    assert!(format!("{err:#}").contains("task"), "{err:#}");
    let err = tok
        .render_chat(&[Message::new("developer", "hi")], true, &json!({}))
        .unwrap_err();
    assert!(format!("{err:#}").contains("developer"), "{err:#}");
}
