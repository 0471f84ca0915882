//! Property tests of the request parser: any body, any JSON, any field of any type gets an
//! answer (a parsed request or an OpenAI-shaped 400), never a panic. `PROPTEST_CASES` sets
//! the number of cases (CI runs the default; a long run is in docs/robustness.md).

use proptest::prelude::*;
use serde_json::{Map, Value};
use whale_server::api;

/// Any JSON value, a few levels deep, numbers of every kind included.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::String),
        prop::sample::select(vec![
            "user",
            "system",
            "assistant",
            "developer",
            "tool",
            "text",
            "enabled",
            "disabled",
            "<｜User｜>",
            ""
        ])
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// The request fields, and some that are not.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        // the fields whale reads or accepts, some it refuses, and nested keys
        prop::sample::select(
            [
                api::FIELDS,
                api::CHAT_FIELDS,
                api::COMPLETION_FIELDS,
                api::INERT_FIELDS
            ]
            .concat()
            .into_iter()
            .chain([
                "presence_penalty",
                "logit_bias",
                "tools",
                "include_usage",
                "type",
                "role",
                "content",
                "text",
                "enable_thinking",
                "name",
                "tool_calls",
            ])
            .collect::<Vec<_>>(),
        )
        .prop_map(String::from),
        "[a-z_]{1,12}",
    ]
}

fn request() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::vec((key(), json()), 0..10).prop_map(|kv| kv.into_iter().collect())
}

fn check(o: &Map<String, Value>) {
    for chat in [true, false] {
        if let Ok(c) = api::common(o, chat, 384) {
            assert!(c.n >= 1 && c.n as u64 <= api::MAX_N);
            assert!(c.sampling.temperature.is_finite());
        }
    }
    if let Ok(m) = api::messages(o) {
        let _ = api::continues_final(o, &m);
    }
    let _ = api::thinking(o);
    let _ = api::template_vars(o);
    let _ = api::tools(o);
    let _ = api::response_format(o);
}

proptest! {
    #[test]
    fn any_bytes_are_a_body_or_a_400(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(o) = api::parse_body(&bytes) {
            check(&o);
        }
    }

    #[test]
    fn any_json_request_is_parsed_or_refused(o in request()) {
        let body = serde_json::to_vec(&Value::Object(o)).unwrap();
        let o = api::parse_body(&body).expect("a JSON object is a body");
        check(&o);
    }
}
