//! Property tests of the chat template's inputs: any conversation (any roles' order, any text,
//! control tokens and placeholder-like text included) renders or is refused, never panics, and
//! its tokens read back as exactly the prompt the template wrote. `PROPTEST_CASES` sets the
//! number of cases.

use proptest::prelude::*;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::OnceLock;
use whale_engine::{ChatTokenizer, Message};

fn tokenizer() -> &'static ChatTokenizer {
    static T: OnceLock<ChatTokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/fixtures/tiny-v3");
        ChatTokenizer::load(&dir).unwrap()
    })
}

fn text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        ".{0,12}",
        prop::sample::select(vec![
            "<｜User｜>",
            "<｜Assistant｜>",
            "<｜end▁of▁sentence｜>",
            "<｜begin▁of▁sentence｜>",
            "<think>",
            "</think>",
            "\u{E000}",
            "\u{E001}",
            "\u{E000}0000000000000000:0\u{E001}",
            " ",
            "\n",
            "{{",
            "{%",
            "}}",
        ])
        .prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..8).prop_map(|p| p.concat())
}

fn conversation() -> impl Strategy<Value = Vec<Message>> {
    let role = prop::sample::select(vec!["system", "user", "assistant"]);
    prop::collection::vec((role, text()), 1..6)
        .prop_map(|m| m.into_iter().map(|(r, t)| Message::new(r, &t)).collect())
}

proptest! {
    #[test]
    fn any_conversation_renders_and_reads_back(msgs in conversation()) {
        let tok = tokenizer();
        if let Ok(r) = tok.render_chat(&msgs, true, &Value::Null) {
            let ids = tok.encode_rendered(&r).unwrap();
            prop_assert_eq!(tok.decode(&ids).unwrap(), r.plain().into_owned());
            // the template's own control tokens are all the prompt has
            let plain_ids = tok.encode(&r.plain()).unwrap();
            let user = tok.encode("<｜User｜>").unwrap()[0];
            let count = |v: &[u32]| v.iter().filter(|&&t| t == user).count();
            prop_assert!(count(&ids) <= count(&plain_ids));
        }
    }
}
