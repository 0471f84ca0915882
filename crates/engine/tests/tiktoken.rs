//! tiktoken vocabularies in Kimi-K2's released layout (testdata/tiktoken, made by
//! tools/make_tiktoken_fixture.py): ids equal to Python tiktoken's on 1,000 varied strings
//! (ASCII, CJK, emoji, code, special tokens), text back from the ids, and damaged rank files
//! refused with the line named.

use std::path::{Path, PathBuf};
use whale_engine::ChatTokenizer;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tiktoken/kimi-k2")
}

#[test]
fn ids_equal_python_tiktoken_on_a_thousand_strings() {
    let tok = ChatTokenizer::load(&fixture()).unwrap();
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("strings.json")).unwrap())
            .unwrap();
    assert_eq!(cases.len(), 1000);
    let mut specials = 0;
    for c in &cases {
        let text = c["text"].as_str().unwrap();
        let want: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap() as u32)
            .collect();
        let got = tok.encode(text).unwrap();
        assert_eq!(got, want, "{text:?}");
        assert_eq!(tok.decode(&got).unwrap(), text, "{text:?}");
        specials += want.iter().filter(|&&i| i >= 2048).count();
    }
    assert!(
        specials > 50,
        "the strings hold special tokens ({specials})"
    );
    // the named special tokens sit at Kimi-K2's offsets past the ranks; unnamed ones are reserved
    assert_eq!(tok.token_id("<|im_end|>"), Some(2048 + 2));
    assert_eq!(tok.token_id("<|im_middle|>"), Some(2048 + 17));
    assert_eq!(tok.token_id("<|reserved_token_2053|>"), Some(2053));
    assert_eq!(tok.token_id("[PAD]"), Some(2048 + 255));
}

fn copy(tag: &str) -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix(&format!("whale-tiktoken-{tag}-"))
        .tempdir()
        .unwrap();
    for e in std::fs::read_dir(fixture()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), d.path().join(e.file_name())).unwrap();
    }
    d
}

fn load_error(dir: &Path) -> String {
    match ChatTokenizer::load(dir) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn damaged_rank_files_are_refused_with_the_line_named() {
    let ranks = std::fs::read_to_string(fixture().join("tiktoken.model")).unwrap();
    let lines: Vec<&str> = ranks.lines().collect();
    let cases: Vec<(&str, String, &str)> = vec![
        // cut in the middle of a line
        (
            "truncated",
            ranks[..ranks.len() / 2 + 3].to_string(),
            "line",
        ),
        (
            "not-base64",
            format!("{}\n@@@ 2048\n", ranks.trim_end()),
            "line 2049",
        ),
        (
            "duplicate-rank",
            format!("{}\n{} 7\n", ranks.trim_end(), "QUJDREVGR0g="),
            "rank 7 given twice",
        ),
        (
            "duplicate-token",
            format!(
                "{}\n{} 2048\n",
                ranks.trim_end(),
                lines[300].split(' ').next().unwrap()
            ),
            "again",
        ),
        (
            "gap",
            lines[..lines.len() - 2].join("\n") + "\n" + lines[lines.len() - 1],
            "missing",
        ),
        // byte 0's token replaced by another: text with a NUL byte could not be encoded
        (
            "single-bytes",
            format!("QUJDREVGR0g= 0\n{}", lines[1..].join("\n")),
            "single byte",
        ),
        ("empty", String::new(), "no ranks"),
    ];
    for (tag, text, named) in cases {
        let d = copy(tag);
        std::fs::write(d.path().join("tiktoken.model"), text).unwrap();
        let err = load_error(d.path());
        assert!(err.contains(named), "{tag}: `{err}` does not say {named}");
        assert!(
            err.contains("tiktoken.model"),
            "{tag}: `{err}` names no file"
        );
    }
    // without its tokenization_*.py there is no split pattern
    let d = copy("nopy");
    std::fs::remove_file(d.path().join("tokenization_kimi.py")).unwrap();
    assert!(load_error(d.path()).contains("tokenization_kimi.py"));
}

/// Kimi-K2's and Moonlight's chat templates, rendered by transformers 5.23 with this tokenizer
/// (chat.json): whale writes the same text (tool lists through `tojson` as Python's
/// `json.dumps` writes them) and the same ids.
#[test]
fn chat_templates_render_as_transformers_renders_them() {
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("chat.json")).unwrap())
            .unwrap();
    let cases = doc["cases"].as_array().unwrap();
    let mut templates = std::collections::BTreeSet::new();
    let mut tok = ChatTokenizer::load(&fixture()).unwrap();
    for c in cases {
        let name = c["template"].as_str().unwrap();
        templates.insert(name);
        let src = std::fs::read_to_string(fixture().join("..").join(name)).unwrap();
        tok.set_chat_template(src).unwrap();
        let messages: Vec<whale_engine::Message> =
            serde_json::from_value(c["messages"].clone()).unwrap();
        let extra = match &c["tools"] {
            serde_json::Value::Null => serde_json::json!({}),
            t => serde_json::json!({ "tools": t }),
        };
        let gen = c["add_generation_prompt"].as_bool().unwrap();
        let r = tok.render_chat(&messages, gen, &extra).unwrap();
        let case = format!("{name} {}", c["name"]);
        assert_eq!(r.plain(), c["text"].as_str().unwrap(), "{case}");
        let want: Vec<u32> = serde_json::from_value(c["ids"].clone()).unwrap();
        assert_eq!(tok.encode_rendered(&r).unwrap(), want, "{case}");
    }
    assert_eq!(cases.len(), 12);
    assert_eq!(templates.len(), 2, "Kimi-K2's and Moonlight's templates");
}

/// Kimi-K2's template writes calls in its own section markers, each named by its id: the shape
/// read off the template is the one Kimi's models write.
#[test]
fn kimi_tool_calls_are_read_off_its_template() {
    use whale_engine::tools::{CallFormat, KIMI};
    let tok = ChatTokenizer::load(&fixture()).unwrap();
    let f = CallFormat::learn(&tok).expect("the template writes tool calls");
    assert_eq!(f.markers, KIMI);
    assert!(f.indexed);
    assert_eq!(
        (f.prefix.as_str(), f.middle.as_str(), f.suffix.as_str()),
        ("functions.", "<|tool_call_argument_begin|>", "")
    );
    assert_eq!(
        (f.open.as_str(), f.sep.as_str(), f.close.as_str()),
        ("", "", "")
    );
}
