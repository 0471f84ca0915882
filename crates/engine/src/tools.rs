//! Tool calls in the formats of DeepSeek's and Kimi's templates. The shape of one call is read
//! off the checkpoint's own chat template (a probe conversation with a call is rendered, and the
//! text around the name and the arguments kept), so the parser and the grammar that forces calls
//! follow whatever the template writes: V3/R1 put `function<｜tool▁sep｜>NAME` and a ```json
//! block between `<｜tool▁call▁begin｜>` and `<｜tool▁call▁end｜>`, V3.1 puts
//! `NAME<｜tool▁sep｜>ARGS`, and Kimi-K2 writes the call's id, `functions.NAME:IDX`, then
//! `<|tool_call_argument_begin|>ARGS` inside its own section markers.
//!
//! DeepSeek-V3.2 and V4 ship no template: their calls are DSML (see `native_chat`), each
//! argument a `<｜DSML｜parameter>` element, turned into the JSON object the API returns.
//!
//! The parser reads the answer as it streams. A call is released once its end marker arrives
//! and it has been checked (a known function, arguments that are a JSON object); anything else
//! in the calls block is handed back as plain text. Markers split across chunks are held back.

use crate::grammar::json_options;
use crate::native_chat::NativeFormat;
use crate::reasoning::partial_tag_suffix;
use crate::tokenizer::{ChatTokenizer, Message};
use serde_json::{json, Value};

/// The special tokens a family's templates put around tool calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Markers {
    pub calls_begin: &'static str,
    pub calls_end: &'static str,
    pub call_begin: &'static str,
    pub call_end: &'static str,
    /// the special tokens that may sit inside a call (between its name and its arguments)
    pub inner: &'static [&'static str],
}

pub const DEEPSEEK: Markers = Markers {
    calls_begin: "<｜tool▁calls▁begin｜>",
    calls_end: "<｜tool▁calls▁end｜>",
    call_begin: "<｜tool▁call▁begin｜>",
    call_end: "<｜tool▁call▁end｜>",
    inner: &["<｜tool▁sep｜>"],
};

/// V3.2's DSML call blocks (V4's name the block `tool_calls`; see `CallFormat::dsml`).
pub const DSML_V32: Markers = Markers {
    calls_begin: "<｜DSML｜function_calls>",
    calls_end: "</｜DSML｜function_calls>",
    call_begin: "<｜DSML｜invoke",
    call_end: "</｜DSML｜invoke>",
    inner: &[],
};

pub const DSML_V4: Markers = Markers {
    calls_begin: "<｜DSML｜tool_calls>",
    calls_end: "</｜DSML｜tool_calls>",
    call_begin: "<｜DSML｜invoke",
    call_end: "</｜DSML｜invoke>",
    inner: &[],
};

pub const KIMI: Markers = Markers {
    calls_begin: "<|tool_calls_section_begin|>",
    calls_end: "<|tool_calls_section_end|>",
    call_begin: "<|tool_call_begin|>",
    call_end: "<|tool_call_end|>",
    inner: &["<|tool_call_argument_begin|>"],
};

/// How a call's arguments are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Args {
    /// a JSON object
    Json,
    /// DSML `<｜DSML｜parameter name="K" string="true|false">V</｜DSML｜parameter>` elements, one
    /// per line: a string as it is, any other value as JSON
    Dsml,
}

/// How the template writes calls: `calls_begin open (call_begin prefix NAME [:IDX] middle ARGS
/// suffix call_end) (sep ...)* close calls_end`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallFormat {
    pub markers: Markers,
    pub args: Args,
    /// the call is named by its id, `prefix NAME:IDX` (Kimi-K2's `functions.NAME:IDX`): the
    /// parsed call keeps that id, so the conversation sent back renders as the model wrote it
    pub indexed: bool,
    pub open: String,
    pub prefix: String,
    pub middle: String,
    pub suffix: String,
    pub sep: String,
    pub close: String,
}

const PROBE_NAME: &str = "probe_fn";
const PROBE_ARGS: &str = "{\"probe\": 1}";

impl CallFormat {
    /// The format the tokenizer's chat template writes, or None when it writes no tool calls
    /// in a known family's markers (a template without tool support) or the vocabulary lacks
    /// them.
    pub fn learn(tok: &ChatTokenizer) -> Option<CallFormat> {
        if let Some(f) = tok.native_format() {
            return Some(Self::dsml(f));
        }
        [DEEPSEEK, KIMI]
            .into_iter()
            .find_map(|m| Self::learn_with(tok, m))
    }

    fn learn_with(tok: &ChatTokenizer, markers: Markers) -> Option<CallFormat> {
        let Markers {
            calls_begin,
            calls_end,
            call_begin,
            call_end,
            ..
        } = markers;
        if [calls_begin, calls_end, call_begin, call_end]
            .iter()
            .any(|m| tok.token_id(m).is_none())
        {
            return None;
        }
        // ids in Kimi's convention: templates that write the id instead of the name show it
        let call = |k: usize| json!({"id": format!("functions.{PROBE_NAME}:{k}"), "type": "function", "function": {"name": PROBE_NAME, "arguments": PROBE_ARGS}});
        // an assistant turn that only calls tools; templates that cannot take `content: none`
        // (R1-0528 tests `'</think>' in content`) are probed with empty content
        let probe = |calls: Vec<Value>| {
            [None, Some(String::new())].into_iter().find_map(|content| {
                let mut m = Message::new("assistant", "");
                m.content = content;
                m.extra
                    .insert("tool_calls".into(), Value::Array(calls.clone()));
                let msgs = vec![Message::new("user", "probe"), m];
                tok.render_chat(&msgs, false, &Value::Null)
                    .ok()
                    .map(|r| r.plain().into_owned())
            })
        };
        let one = probe(vec![call(0)])?;
        let two = probe(vec![call(0), call(1)])?;
        let block = |t: &str| {
            let a = t.find(calls_begin)? + calls_begin.len();
            let b = a + t[a..].find(calls_end)?;
            Some(t[a..b].to_string())
        };
        let (one, two) = (block(&one)?, block(&two)?);
        let b = one.find(call_begin)?;
        let e = one.find(call_end)?;
        let inner = &one[b + call_begin.len()..e];
        let n = inner.find(PROBE_NAME)?;
        let after = &inner[n + PROBE_NAME.len()..];
        let indexed = after.starts_with(":0");
        let after = if indexed { &after[2..] } else { after };
        let a = after.find(PROBE_ARGS)?;
        let first_end = two.find(call_end)? + call_end.len();
        let second = first_end + two[first_end..].find(call_begin)?;
        Some(CallFormat {
            markers,
            args: Args::Json,
            indexed,
            open: one[..b].to_string(),
            prefix: inner[..n].to_string(),
            middle: after[..a].to_string(),
            suffix: after[a + PROBE_ARGS.len()..].to_string(),
            sep: two[first_end..second].to_string(),
            close: one[e + call_end.len()..].to_string(),
        })
    }

    /// The DSML calls of V3.2's or V4's own format: `\n\n<｜DSML｜{block}>\n` then
    /// `<｜DSML｜invoke name="NAME">\nPARAMS\n</｜DSML｜invoke>` per call, one a line.
    pub fn dsml(f: NativeFormat) -> CallFormat {
        CallFormat {
            markers: match f {
                NativeFormat::V32 => DSML_V32,
                NativeFormat::V4 => DSML_V4,
            },
            args: Args::Dsml,
            indexed: false,
            open: "\n".into(),
            prefix: " name=\"".into(),
            middle: "\">".into(),
            suffix: String::new(),
            sep: "\n".into(),
            close: "\n".into(),
        }
    }

    /// A call's text between its markers split into (name, id where the format names calls by
    /// id, arguments), where it has the shape.
    fn split<'a>(&self, inner: &'a str) -> Option<(&'a str, Option<String>, &'a str)> {
        let inner = inner.strip_prefix(self.prefix.as_str()).unwrap_or(inner);
        let (name, rest) = inner.split_once(self.middle.as_str())?;
        let rest = rest.trim_end();
        let args = rest
            .strip_suffix(self.suffix.trim_end())
            .unwrap_or(rest)
            .trim();
        let name = name.trim();
        if !self.indexed {
            return Some((name, None, args));
        }
        let (name, k) = name.rsplit_once(':')?;
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some((name, Some(format!("{}{name}:{k}", self.prefix)), args))
    }
}

/// A call the model made, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    pub name: String,
    /// the id the model gave the call, in formats that name calls by id (Kimi-K2)
    pub id: Option<String>,
    /// the arguments as the model wrote them (a JSON object)
    pub arguments: String,
    /// `arguments` cut where the model's tokens were, for streaming
    pub fragments: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolOut {
    Content(String),
    Call(ToolCall),
}

/// Splits a streamed answer into content and tool calls.
#[derive(Clone, Debug)]
pub struct ToolParser {
    format: CallFormat,
    names: Vec<String>,
    /// calls accepted at most (1 without parallel calls); later ones are text
    limit: usize,
    made: usize,
    in_calls: bool,
    /// text not yet decided; in a calls block, what follows `calls_begin`
    buf: String,
    /// bytes already drained from the front of `buf`, over the whole stream
    drained: usize,
    /// stream positions where pushed chunks ended (where the arguments may be cut)
    cuts: Vec<usize>,
    /// DSML: the whitespace before a calls block, given back if the block is no call
    held: String,
}

impl ToolParser {
    /// Calls are accepted for these function names only, `limit` of them at most.
    pub fn new(format: CallFormat, names: Vec<String>, limit: usize) -> Self {
        ToolParser {
            format,
            names,
            limit,
            made: 0,
            in_calls: false,
            buf: String::new(),
            drained: 0,
            cuts: Vec::new(),
            held: String::new(),
        }
    }

    fn drain(&mut self, n: usize) -> String {
        self.drained += n;
        self.buf.drain(..n).collect()
    }

    pub fn push(&mut self, text: &str) -> Vec<ToolOut> {
        let Markers {
            calls_begin,
            calls_end,
            call_begin,
            call_end,
            ..
        } = self.format.markers;
        self.buf.push_str(text);
        self.cuts.push(self.drained + self.buf.len());
        let mut out = Vec::new();
        loop {
            if !self.in_calls {
                if let Some(i) = self.buf.find(calls_begin) {
                    let mut before = self.drain(i);
                    if self.format.args == Args::Dsml {
                        self.held = before.split_off(before.trim_end().len());
                    }
                    if !before.is_empty() {
                        out.push(ToolOut::Content(before));
                    }
                    self.drain(calls_begin.len());
                    self.in_calls = true;
                    continue;
                }
                let mut keep = partial_tag_suffix(&self.buf, calls_begin);
                if self.format.args == Args::Dsml {
                    // the blank line DSML writes before a calls block is not content
                    let body = &self.buf[..self.buf.len() - keep];
                    keep += body.len() - body.trim_end().len();
                }
                let emit = self.drain(self.buf.len() - keep);
                if !emit.is_empty() {
                    out.push(ToolOut::Content(emit));
                }
                return out;
            }
            // in a calls block: whitespace and the template's separators between calls
            let lead = self.buf.len() - self.buf.trim_start().len();
            let t = &self.buf[lead..];
            if let Some(rest) = t.strip_prefix(calls_end) {
                let _ = rest;
                self.drain(lead + calls_end.len());
                self.in_calls = false;
                continue;
            }
            if t.starts_with(call_begin) {
                let Some(e) = t.find(call_end) else {
                    return out; // the call is still being written
                };
                let start = lead + call_begin.len();
                let end = lead + e;
                let call = self.check(start, end);
                let raw = self.drain(end + call_end.len());
                let held = std::mem::take(&mut self.held);
                out.push(match call {
                    Some(c) => ToolOut::Call(c),
                    None => ToolOut::Content(format!("{held}{}", raw.trim_start())),
                });
                continue;
            }
            if t.is_empty() || calls_end.starts_with(t) || call_begin.starts_with(t) {
                return out; // undecided
            }
            // not a call: the block so far is text
            let rest = std::mem::take(&mut self.buf);
            self.drained += rest.len();
            self.in_calls = false;
            let held = std::mem::take(&mut self.held);
            out.push(ToolOut::Content(format!("{held}{calls_begin}{rest}")));
            return out;
        }
    }

    /// The call whose inner text is `buf[start..end]`, if it is a valid one.
    fn check(&mut self, start: usize, end: usize) -> Option<ToolCall> {
        if self.made >= self.limit {
            return None;
        }
        let inner = &self.buf[start..end];
        let (name, id, args) = self.format.split(inner)?;
        if !self.names.iter().any(|n| n == name) {
            return None;
        }
        if self.format.args == Args::Dsml {
            // the JSON object the API returns is whale's, written whole when the call is
            let arguments = crate::pyjson::dumps(
                &Value::Object(dsml_params(args)?),
                &crate::pyjson::Options::default(),
            );
            self.made += 1;
            return Some(ToolCall {
                name: name.to_string(),
                id,
                fragments: vec![arguments.clone()],
                arguments,
            });
        }
        if !serde_json::from_str::<Value>(args).ok()?.is_object() {
            return None;
        }
        // where the arguments sit in the stream, to cut them at the chunk ends inside them
        let a0 = self.drained + start + (args.as_ptr() as usize - inner.as_ptr() as usize);
        let a1 = a0 + args.len();
        let mut fragments = Vec::new();
        let mut at = a0;
        for &c in self.cuts.iter().filter(|&&c| c > a0 && c < a1) {
            if args.is_char_boundary(c - a0) && args.is_char_boundary(at - a0) {
                fragments.push(args[at - a0..c - a0].to_string());
                at = c;
            }
        }
        fragments.push(args[at - a0..].to_string());
        self.made += 1;
        Some(ToolCall {
            name: name.to_string(),
            id,
            arguments: args.to_string(),
            fragments,
        })
    }

    /// What is left at the end of the stream: an unfinished calls block is text.
    pub fn finish(&mut self) -> Vec<ToolOut> {
        let rest = std::mem::take(&mut self.buf);
        let text = if self.in_calls {
            format!(
                "{}{}{rest}",
                std::mem::take(&mut self.held),
                self.format.markers.calls_begin
            )
        } else {
            rest
        };
        self.in_calls = false;
        if text.is_empty() {
            vec![]
        } else {
            vec![ToolOut::Content(text)]
        }
    }
}

/// DSML parameter elements as a JSON object: `string="true"` values as the text they are,
/// `string="false"` ones parsed as JSON; None where the text is not such elements (or names
/// one twice).
fn dsml_params(s: &str) -> Option<serde_json::Map<String, Value>> {
    const OPEN: &str = "<｜DSML｜parameter name=\"";
    const CLOSE: &str = "</｜DSML｜parameter>";
    let mut out = serde_json::Map::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let (name, r) = rest.strip_prefix(OPEN)?.split_once('"')?;
        let (is_str, r) = r.strip_prefix(" string=\"")?.split_once("\">")?;
        let (value, r) = r.split_once(CLOSE)?;
        let v = match is_str {
            "true" => Value::String(value.to_string()),
            "false" => serde_json::from_str(value.trim()).ok()?,
            _ => return None,
        };
        if out.insert(name.to_string(), v).is_some() {
            return None;
        }
        rest = r.trim_start();
    }
    Some(out)
}

/// A Lark grammar (llguidance's dialect) for an answer that is tool calls in `format`, each of
/// one of `tools` (`(name, parameters schema)`): one call, or one or more when `many`. With
/// `text_first`, any text comes first and the calls are optional (`tool_choice: auto` with
/// strict tools: a call the model chooses to make has arguments that follow its schema).
pub fn calls_grammar(
    format: &CallFormat,
    tools: &[(String, Value)],
    many: bool,
    text_first: bool,
    tok: &ChatTokenizer,
) -> Option<String> {
    if format.args == Args::Dsml {
        return (!text_first).then(|| dsml_grammar(format, tools, many));
    }
    let m = &format.markers;
    let id = |m: &str| tok.token_id(m).map(|i| format!("<[{i}]>"));
    let lit = |s: &str| serde_json::to_string(s).expect("a string serialises");
    // the text around names and arguments, with any marker in it as its token
    let piece = |s: &str| -> Option<String> {
        let mut parts = Vec::new();
        let mut rest = s;
        while !rest.is_empty() {
            let next = m
                .inner
                .iter()
                .chain([&m.call_begin, &m.call_end])
                .filter_map(|m| rest.find(m).map(|i| (i, *m)))
                .min();
            match next {
                Some((i, m)) => {
                    if i > 0 {
                        parts.push(lit(&rest[..i]));
                    }
                    parts.push(id(m)?);
                    rest = &rest[i + m.len()..];
                }
                None => {
                    parts.push(lit(rest));
                    rest = "";
                }
            }
        }
        Some(parts.join(" "))
    };
    let f = format;
    let mut rules = Vec::new();
    let mut alts = Vec::new();
    for (k, (name, schema)) in tools.iter().enumerate() {
        // the arguments are JSON as whale writes it under any schema
        let schema = json_options(if schema.is_null() {
            json!({"type": "object"})
        } else {
            schema.clone()
        });
        rules.push(format!(
            "call_{k}: {} {} {}{} {} %json {} {} {}",
            id(m.call_begin)?,
            piece(&f.prefix)?,
            lit(name),
            // an index of a few digits: a call's number in the conversation
            if f.indexed { " \":\" /[0-9]{1,5}/" } else { "" },
            piece(&f.middle)?,
            schema,
            piece(&f.suffix)?,
            id(m.call_end)?,
        ));
        alts.push(format!("call_{k}"));
    }
    let many = if !many {
        "call".to_string()
    } else {
        format!("call ({} call)*", piece(&f.sep)?)
    };
    let start = if text_first {
        format!(
            "start: free block?\nfree: <[^{}]>*\nblock:",
            tok.token_id(m.calls_begin)?
        )
    } else {
        "start:".to_string()
    };
    let mut g = format!(
        "{start} {} {} {many} {} {}\ncall: {}\n",
        id(m.calls_begin)?,
        piece(&f.open)?,
        piece(&f.close)?,
        id(m.calls_end)?,
        alts.join(" | ")
    );
    for r in rules {
        g.push_str(&r);
        g.push('\n');
    }
    // empty literals ("") are not allowed between items
    Some(g.replace(" \"\"", ""))
}

/// `calls_grammar` for DSML calls (no text before them): the blank line and the block the
/// encoders write, each call's parameters in its schema's order (required ones always, the
/// others optional), string properties as one of their `enum` or as text without `<` (at most
/// `maxLength` characters), the rest as JSON under their schemas; a tool without listed
/// properties takes any parameters.
fn dsml_grammar(format: &CallFormat, tools: &[(String, Value)], many: bool) -> String {
    let lit = |s: &str| serde_json::to_string(s).expect("a string serialises");
    let m = &format.markers;
    let param = |name: &str, schema: &Value| {
        let open = lit(&format!("<｜DSML｜parameter name=\"{name}\" string="));
        let close = lit("</｜DSML｜parameter>\n");
        if schema.get("type").and_then(|t| t.as_str()) == Some("string") {
            // an enum's values, else text of at most maxLength characters
            let value = match schema.get("enum").and_then(|e| e.as_array()) {
                Some(vals) if vals.iter().all(|v| v.is_string()) => format!(
                    "({})",
                    vals.iter()
                        .map(|v| lit(v.as_str().expect("checked")))
                        .collect::<Vec<_>>()
                        .join(" | ")
                ),
                _ => match schema.get("maxLength").and_then(|n| n.as_u64()) {
                    Some(n) => format!("/[^<]{{0,{n}}}/"),
                    None => "/[^<]*/".into(),
                },
            };
            format!("{open} \"\\\"true\\\">\" {value} {close}")
        } else {
            format!(
                "{open} \"\\\"false\\\">\" %json {} {close}",
                json_options(schema.clone())
            )
        }
    };
    let mut rules = vec![format!(
        "any_param: {} /[A-Za-z0-9_.-]+/ {} (\"true\\\">\" /[^<]*/ | \"false\\\">\" %json {{}}) {}",
        lit("<｜DSML｜parameter name=\""),
        lit("\" string=\""),
        lit("</｜DSML｜parameter>\n"),
    )];
    let mut alts = Vec::new();
    for (k, (name, schema)) in tools.iter().enumerate() {
        let props = schema.get("properties").and_then(|p| p.as_object());
        let required: Vec<&str> = schema
            .get("required")
            .and_then(|r| r.as_array())
            .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        let (params, may_be_empty) = match props {
            None => ("any_param+".to_string(), true),
            Some(p) if p.is_empty() => (String::new(), true),
            Some(p) => (
                p.iter()
                    .map(|(pn, ps)| {
                        let one = format!("({})", param(pn, ps));
                        if required.contains(&pn.as_str()) {
                            one
                        } else {
                            format!("{one}?")
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
                !p.keys().any(|k| required.contains(&k.as_str())),
            ),
        };
        // no parameters at all: the empty line the encoders write between the tags
        let params = match (params.is_empty(), may_be_empty) {
            (true, _) => lit("\n"),
            (false, true) => format!("(({params}) | {})", lit("\n")),
            (false, false) => params,
        };
        rules.push(format!(
            "call_{k}: {} {params} {}",
            lit(&format!(
                "{}{}{name}{}\n",
                m.call_begin, format.prefix, format.middle
            )),
            lit(m.call_end),
        ));
        alts.push(format!("call_{k}"));
    }
    // the block as `CallFormat::dsml` spells it, after the blank line the encoders write
    let calls = if many {
        format!("call ({} call)*", lit(&format.sep))
    } else {
        "call".to_string()
    };
    let mut g = format!(
        "start: {} {calls} {}\ncall: {}\n",
        lit(&format!("\n\n{}{}", m.calls_begin, format.open)),
        lit(&format!("{}{}", format.close, m.calls_end)),
        alts.join(" | ")
    );
    for r in rules {
        g.push_str(&r);
        g.push('\n');
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v3() -> CallFormat {
        CallFormat {
            markers: DEEPSEEK,
            args: Args::Json,
            indexed: false,
            open: String::new(),
            prefix: "function<｜tool▁sep｜>".into(),
            middle: "\n```json\n".into(),
            suffix: "\n```".into(),
            sep: "\n".into(),
            close: String::new(),
        }
    }

    fn v31() -> CallFormat {
        CallFormat {
            markers: DEEPSEEK,
            args: Args::Json,
            indexed: false,
            open: String::new(),
            prefix: String::new(),
            middle: "<｜tool▁sep｜>".into(),
            suffix: String::new(),
            sep: String::new(),
            close: String::new(),
        }
    }

    fn run(f: &CallFormat, chunks: &[&str]) -> (String, Vec<ToolCall>) {
        let mut p = ToolParser::new(f.clone(), vec!["get_weather".into(), "add".into()], 8);
        let mut outs: Vec<ToolOut> = chunks.iter().flat_map(|c| p.push(c)).collect();
        outs.extend(p.finish());
        let (mut text, mut calls) = (String::new(), vec![]);
        for o in outs {
            match o {
                ToolOut::Content(t) => text += &t,
                ToolOut::Call(c) => calls.push(c),
            }
        }
        (text, calls)
    }

    /// Every cut of `s` into two chunks, and into one chunk per character, parses the same.
    fn every_cut(f: &CallFormat, s: &str) -> (String, Vec<(String, String)>) {
        let strip = |(t, c): (String, Vec<ToolCall>)| {
            let calls: Vec<(String, String)> = c
                .iter()
                .map(|c| {
                    assert_eq!(c.fragments.concat(), c.arguments);
                    (c.name.clone(), c.arguments.clone())
                })
                .collect();
            (t, calls)
        };
        let whole = strip(run(f, &[s]));
        for cut in (0..=s.len()).filter(|&c| s.is_char_boundary(c)) {
            assert_eq!(
                strip(run(f, &[&s[..cut], &s[cut..]])),
                whole,
                "cut at {cut}"
            );
        }
        let chars: Vec<String> = s.chars().map(String::from).collect();
        let refs: Vec<&str> = chars.iter().map(|c| c.as_str()).collect();
        assert_eq!(strip(run(f, &refs)), whole);
        whole
    }

    #[test]
    fn v3_calls_parse_at_every_cut() {
        let s = "Let me check.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Tōkyō \\\"}\"}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>add\n```json\n{\"a\": 1, \"b\": 2}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
        let (text, calls) = every_cut(&v3(), s);
        assert_eq!(text, "Let me check.");
        assert_eq!(
            calls,
            [
                ("get_weather".into(), "{\"city\": \"Tōkyō \\\"}\"}".into()),
                ("add".into(), "{\"a\": 1, \"b\": 2}".into())
            ]
        );
    }

    #[test]
    fn v31_calls_parse_at_every_cut() {
        let s = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>add<｜tool▁sep｜>{\"a\": 3}<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
        let (text, calls) = every_cut(&v31(), s);
        assert_eq!(text, "");
        assert_eq!(calls, [("add".into(), "{\"a\": 3}".into())]);
    }

    fn kimi() -> CallFormat {
        CallFormat {
            markers: KIMI,
            args: Args::Json,
            indexed: true,
            open: String::new(),
            prefix: "functions.".into(),
            middle: "<|tool_call_argument_begin|>".into(),
            suffix: String::new(),
            sep: String::new(),
            close: String::new(),
        }
    }

    #[test]
    fn kimi_calls_parse_at_every_cut_and_keep_their_ids() {
        let s = "Checking.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{\"city\": \"巴黎\"}<|tool_call_end|><|tool_call_begin|>functions.add:1<|tool_call_argument_begin|>{\"a\": 2, \"b\": 3}<|tool_call_end|><|tool_calls_section_end|>";
        let (text, calls) = every_cut(&kimi(), s);
        assert_eq!(text, "Checking.");
        assert_eq!(
            calls,
            [
                ("get_weather".into(), "{\"city\": \"巴黎\"}".into()),
                ("add".into(), "{\"a\": 2, \"b\": 3}".into())
            ]
        );
        let ids: Vec<_> = run(&kimi(), &[s]).1.into_iter().map(|c| c.id).collect();
        assert_eq!(
            ids,
            [
                Some("functions.get_weather:0".into()),
                Some("functions.add:1".into())
            ]
        );
        // a call without its index, or with another family's markers, is text
        for s in [
            "<|tool_calls_section_begin|><|tool_call_begin|>functions.add<|tool_call_argument_begin|>{}<|tool_call_end|><|tool_calls_section_end|>",
            "<|tool_calls_section_begin|><|tool_call_begin|>functions.add:x<|tool_call_argument_begin|>{}<|tool_call_end|><|tool_calls_section_end|>",
        ] {
            let (text, calls) = every_cut(&kimi(), s);
            assert!(calls.is_empty() && !text.is_empty(), "{s}");
        }
        let s = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>add<｜tool▁sep｜>{}<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
        assert_eq!(every_cut(&kimi(), s), (s.to_string(), vec![]));
    }

    #[test]
    fn malformed_calls_come_back_as_text() {
        // unknown function, arguments that are not JSON, an unterminated call
        for s in [
            "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>launch\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
            "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>add\n```json\n{\"a\": \n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
            "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>add\n```json\n{\"a\": 1",
            "<｜tool▁calls▁begin｜>just words",
        ] {
            let (text, calls) = every_cut(&v3(), s);
            assert!(calls.is_empty(), "{s}");
            assert!(!text.is_empty() && s.contains(text.trim()), "{s}: {text}");
        }
        // plain text that only looks like the start of a marker is released at the end
        assert_eq!(run(&v3(), &["a <｜tool"]).0, "a <｜tool");
    }

    /// The DSML blocks V3.2 and V4 write (as `native_chat` renders them; testdata/encodings has
    /// the released encoders' text): arguments come back as the JSON object they stand for.
    #[test]
    fn dsml_calls_parse_at_every_cut() {
        for f in [NativeFormat::V32, NativeFormat::V4] {
            let b = f.calls_block();
            let s = format!(
                "Checking both.\n\n<｜DSML｜{b}>\n<｜DSML｜invoke name=\"get_weather\">\n<｜DSML｜parameter name=\"city\" string=\"true\">São \"Paulo\" <b></｜DSML｜parameter>\n</｜DSML｜invoke>\n<｜DSML｜invoke name=\"add\">\n<｜DSML｜parameter name=\"a\" string=\"false\">1.5</｜DSML｜parameter>\n<｜DSML｜parameter name=\"b\" string=\"false\">[true, {{\"x\": null}}]</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜{b}>"
            );
            let (text, calls) = every_cut(&CallFormat::dsml(f), &s);
            assert_eq!(text, "Checking both.", "{f:?}");
            assert_eq!(
                calls,
                [
                    (
                        "get_weather".into(),
                        "{\"city\": \"São \\\"Paulo\\\" <b>\"}".into()
                    ),
                    (
                        "add".into(),
                        "{\"a\": 1.5, \"b\": [true, {\"x\": null}]}".into()
                    )
                ]
            );
            // a call with no parameters
            let s = format!(
                "<｜DSML｜{b}>\n<｜DSML｜invoke name=\"add\">\n\n</｜DSML｜invoke>\n</｜DSML｜{b}>"
            );
            assert_eq!(
                every_cut(&CallFormat::dsml(f), &s).1,
                [("add".into(), "{}".into())]
            );
            // not JSON where string="false", a name given twice, an unknown tool, the other
            // release's block: text; so is a blank line not followed by calls
            for bad in [
                format!("<｜DSML｜{b}>\n<｜DSML｜invoke name=\"add\">\n<｜DSML｜parameter name=\"a\" string=\"false\">one</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜{b}>"),
                format!("<｜DSML｜{b}>\n<｜DSML｜invoke name=\"add\">\n<｜DSML｜parameter name=\"a\" string=\"true\">1</｜DSML｜parameter>\n<｜DSML｜parameter name=\"a\" string=\"true\">2</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜{b}>"),
                format!("<｜DSML｜{b}>\n<｜DSML｜invoke name=\"launch\">\n</｜DSML｜invoke>\n</｜DSML｜{b}>"),
            ] {
                let (text, calls) = every_cut(&CallFormat::dsml(f), &bad);
                assert!(calls.is_empty() && !text.is_empty(), "{bad}");
            }
            let other = if f == NativeFormat::V32 {
                "tool_calls"
            } else {
                "function_calls"
            };
            let s = format!("<｜DSML｜{other}>\n<｜DSML｜invoke name=\"add\">\n\n</｜DSML｜invoke>\n</｜DSML｜{other}>");
            assert_eq!(every_cut(&CallFormat::dsml(f), &s), (s.clone(), vec![]));
            assert_eq!(
                run(&CallFormat::dsml(f), &["so\n\n", "done"]).0,
                "so\n\ndone"
            );
            // the blank line before a block that is no call stays in the text
            let s = format!("x\n\n<｜DSML｜{b}>junk");
            assert_eq!(every_cut(&CallFormat::dsml(f), &s), (s.clone(), vec![]));
            let s = format!("x\n\n<｜DSML｜{b}>\n<｜DSML｜invoke name=\"add\">");
            assert_eq!(every_cut(&CallFormat::dsml(f), &s), (s.clone(), vec![]));
        }
    }

    #[test]
    fn fragments_follow_the_chunks() {
        let (_, calls) = run(
            &v31(),
            &[
                "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>add<｜tool▁sep｜>{\"a\"",
                ": 3",
                "}<｜tool▁call▁end｜>",
            ],
        );
        assert_eq!(calls[0].fragments, ["{\"a\"", ": 3", "}"]);
    }
}
