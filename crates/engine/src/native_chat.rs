//! The conversation formats DeepSeek-V3.2 and V4 ship as Python code (`encoding_dsv32.py`,
//! `encoding_dsv4.py`'s `encode_messages`) instead of a chat template, for checkpoints whose
//! tokenizer_config.json has none. Rendered as those encoders render them with
//! `drop_thinking=True`, in "thinking" or "chat" mode (tests: testdata/encodings, made from the
//! released encoders by tools/encoding_references.py).
//!
//! Tools are DSML: the request's tool definitions go on the conversation's system message when
//! it opens with one (as DeepSeek's own V3.2 test conversation carries them), else on an empty
//! one put first (as vLLM hands them to the encoders); an assistant's calls are `<｜DSML｜invoke>` blocks
//! inside `function_calls` (V3.2) or `tool_calls` (V4), and results come back as
//! `<function_results>` after the calls (V3.2) or as `<tool_result>` blocks merged into the next
//! user turn (V4). V4's task and reminder turns, `developer` messages and per-message
//! `response_format` are refused, never dropped.

use anyhow::{bail, Result};
use serde_json::Value;

use crate::pyjson;
use crate::tokenizer::Message;

const BOS: &str = "<｜begin▁of▁sentence｜>";
const EOS: &str = "<｜end▁of▁sentence｜>";
const USER: &str = "<｜User｜>";
const ASSISTANT: &str = "<｜Assistant｜>";
const THINK: &str = "<think>";
const END_THINK: &str = "</think>";
/// DSML's marker, inside every tag of a call block
pub const DSML: &str = "｜DSML｜";

/// The tool section V3.2's encoder appends to the system prompt (its `TOOLS_SYSTEM_TEMPLATE`).
const V32_TOOLS: &str = r##"## Tools

You have access to a set of tools you can use to answer the user's question.
You can invoke functions by writing a "<{dsml_token}function_calls>" block like the following as part of your reply to the user:
<{dsml_token}function_calls>
<{dsml_token}invoke name="$FUNCTION_NAME">
<{dsml_token}parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE</{dsml_token}parameter>
...
</{dsml_token}invoke>
<{dsml_token}invoke name="$FUNCTION_NAME2">
...
</{dsml_token}invoke>
</{dsml_token}function_calls>

String and scalar parameters should be specified as is without any escaping or quotes, while lists and objects should use JSON format. The "string" attribute should be set to "true" for string type parameters and "false" for other types (numbers, booleans, arrays, objects).

If the thinking_mode is enabled, then after function results you should strongly consider outputting a thinking block. Here is an example:

<{dsml_token}function_calls>
...
</{dsml_token}function_calls>

<function_results>
...
</function_results>

{thinking_start_token}...thinking about results{thinking_end_token}

Here are the functions available in JSONSchema format:
<functions>
{tool_schemas}
</functions>
"##;

/// The tool section V4's encoder appends to the system prompt (its `TOOLS_TEMPLATE`).
const V4_TOOLS: &str = r##"## Tools

You have access to a set of tools to help answer the user's question. You can invoke tools by writing a "<{dsml_token}tool_calls>" block like the following:

<{dsml_token}tool_calls>
<{dsml_token}invoke name="$TOOL_NAME">
<{dsml_token}parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE</{dsml_token}parameter>
...
</{dsml_token}invoke>
<{dsml_token}invoke name="$TOOL_NAME2">
...
</{dsml_token}invoke>
</{dsml_token}tool_calls>

String parameters should be specified as is and set `string="true"`. For all other types (numbers, booleans, arrays, objects), pass the value in JSON format and set `string="false"`.

If thinking_mode is enabled (triggered by {thinking_start_token}), you MUST output your complete reasoning inside {thinking_start_token}...{thinking_end_token} BEFORE any tool calls or final response.

Otherwise, output directly after {thinking_end_token} with tool calls or final response.

### Available Tool Schemas

{tool_schemas}

You MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls.
"##;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NativeFormat {
    /// DeepSeek-V3.2's `encoding_dsv32`
    V32,
    /// DeepSeek-V4's `encoding_dsv4`
    V4,
}

impl NativeFormat {
    /// The format of a checkpoint with no chat template, from its config.json `model_type`.
    pub fn for_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "deepseek_v32" => Some(NativeFormat::V32),
            "deepseek_v4" => Some(NativeFormat::V4),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            NativeFormat::V32 => "DeepSeek-V3.2's encoding_dsv32",
            NativeFormat::V4 => "DeepSeek-V4's encoding_dsv4",
        }
    }

    /// The tag of the block that holds an answer's calls: `<｜DSML｜{block}>`.
    pub fn calls_block(self) -> &'static str {
        match self {
            NativeFormat::V32 => "function_calls",
            NativeFormat::V4 => "tool_calls",
        }
    }

    /// The prompt for `messages` with the request's `tools` (OpenAI's `[{"type": "function",
    /// "function": {...}}]`, or none); `thinking` picks the encoder's "thinking" mode (the model
    /// reasons in `<think>` first) over "chat".
    pub fn render(
        self,
        messages: &[Message],
        thinking: bool,
        tools: Option<&Value>,
    ) -> Result<String> {
        let name = self.name();
        for m in messages {
            for key in [
                "task",
                "tools",
                "response_format",
                "content_blocks",
                "wo_eos",
            ] {
                if m.extra.contains_key(key) {
                    bail!("{name}: the message field `{key}` is not supported");
                }
            }
            if !matches!(m.role.as_str(), "system" | "user" | "assistant" | "tool") {
                bail!(
                    "{name}: role `{}` is not supported (system, user, assistant, tool)",
                    m.role
                );
            }
        }
        let functions: Vec<&Value> = match tools {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|t| match t.get("function") {
                    Some(f) if f.is_object() => Ok(f),
                    _ => Err(anyhow::anyhow!(
                        "{name}: a tool without a `function` object"
                    )),
                })
                .collect::<Result<_>>()?,
            Some(v) => bail!("{name}: `tools` must be an array, got {v}"),
        };
        // the tools ride on the opening system message, one made for them where there is none
        let mut turns: Vec<Message> = Vec::with_capacity(messages.len() + 1);
        if !functions.is_empty() && messages.first().is_none_or(|m| m.role != "system") {
            let mut sys = Message::new("system", "");
            sys.content = None;
            turns.push(sys);
        }
        turns.extend(messages.iter().cloned());
        let tools_text = (!functions.is_empty()).then(|| {
            let schemas: Vec<String> = functions.iter().map(|f| to_json(f)).collect();
            let template = match self {
                NativeFormat::V32 => V32_TOOLS,
                NativeFormat::V4 => V4_TOOLS,
            };
            template
                .replace("{dsml_token}", DSML)
                .replace("{thinking_start_token}", THINK)
                .replace("{thinking_end_token}", END_THINK)
                .replace("{tool_schemas}", &schemas.join("\n"))
        });
        match self {
            NativeFormat::V32 => v32(&turns, thinking, tools_text.as_deref()),
            NativeFormat::V4 => v4(&turns, thinking, tools_text.as_deref()),
        }
    }
}

/// Python's `json.dumps(v, ensure_ascii=False)`, as the encoders write schemas and arguments.
fn to_json(v: &Value) -> String {
    pyjson::dumps(v, &pyjson::Options::default())
}

fn last_user(messages: &[Message]) -> Option<usize> {
    messages
        .iter()
        .rposition(|m| m.role == "user" || m.role == "developer")
}

fn reasoning(m: &Message) -> &str {
    m.extra
        .get("reasoning_content")
        .and_then(|r| r.as_str())
        .unwrap_or("")
}

fn tool_calls(m: &Message) -> &[Value] {
    m.extra
        .get("tool_calls")
        .and_then(|c| c.as_array())
        .map(|a| a.as_slice())
        .unwrap_or(&[])
}

/// An assistant's calls as the encoders write them: `\n\n<｜DSML｜{block}>` then one
/// `<｜DSML｜invoke name="...">` per call, each argument a `<｜DSML｜parameter>` (strings as
/// they are, anything else as JSON), or "" without calls. V4 takes arguments that are not JSON as
/// one `arguments` string; V3.2's encoder fails on them.
fn calls_text(f: NativeFormat, calls: &[Value]) -> Result<String> {
    if calls.is_empty() {
        return Ok(String::new());
    }
    let mut invokes = Vec::with_capacity(calls.len());
    for c in calls {
        let func = c.get("function").unwrap_or(c);
        let Some(name) = func.get("name").and_then(|n| n.as_str()) else {
            bail!("{}: a tool call without a function name", f.name());
        };
        let args = match func.get("arguments") {
            Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
                Ok(v) => v,
                Err(_) if f == NativeFormat::V4 => serde_json::json!({ "arguments": s }),
                Err(e) => bail!(
                    "{}: the arguments of call `{name}` are not JSON: {e}",
                    f.name()
                ),
            },
            Some(v) => v.clone(),
            None => serde_json::json!({}),
        };
        let Value::Object(args) = args else {
            bail!(
                "{}: the arguments of call `{name}` are not a JSON object",
                f.name()
            );
        };
        let params: Vec<String> = args
            .iter()
            .map(|(k, v)| {
                let (is_str, value) = match v {
                    Value::String(s) => ("true", s.clone()),
                    v => ("false", to_json(v)),
                };
                format!(
                    "<{DSML}parameter name=\"{k}\" string=\"{is_str}\">{value}</{DSML}parameter>"
                )
            })
            .collect();
        invokes.push(format!(
            "<{DSML}invoke name=\"{name}\">\n{}\n</{DSML}invoke>",
            params.join("\n")
        ));
    }
    let block = f.calls_block();
    Ok(format!(
        "\n\n<{DSML}{block}>\n{}\n</{DSML}{block}>",
        invokes.join("\n")
    ))
}

/// `encoding_dsv32.encode_messages`: every user turn opens the assistant's and says whether it
/// thinks (`<think>` after the last user turn in thinking mode, `</think>` otherwise); reasoning
/// is written only for assistant turns after the last user turn; a call's results follow it in
/// one `<function_results>` block, which reopens the assistant's turn the same way.
fn v32(messages: &[Message], thinking: bool, tools: Option<&str>) -> Result<String> {
    let name = NativeFormat::V32.name();
    let last = last_user(messages);
    let think_after = |i: usize, at_or_after: bool| {
        let after = last.is_none_or(|l| if at_or_after { i >= l } else { i > l });
        thinking && after
    };
    let mut out = String::from(BOS);
    for (i, m) in messages.iter().enumerate() {
        match m.role.as_str() {
            "system" => {
                out.push_str(m.text());
                if let (0, Some(t)) = (i, tools) {
                    out.push_str("\n\n");
                    out.push_str(t);
                }
            }
            "user" => {
                out.push_str(USER);
                out.push_str(m.text());
                out.push_str(ASSISTANT);
                out.push_str(if Some(i) == last && thinking {
                    THINK
                } else {
                    END_THINK
                });
            }
            "tool" => {
                // the assistant turn whose calls these results answer
                let Some(a) = messages[..i].iter().rposition(|p| p.role != "tool") else {
                    bail!(
                        "{name}: a tool message must follow an assistant message with tool_calls"
                    );
                };
                let calls = tool_calls(&messages[a]).len();
                let order = i - a;
                if messages[a].role != "assistant" || order > calls {
                    bail!("{name}: message {i} is a tool result with no tool call of the assistant's before it to answer");
                }
                if order == 1 {
                    out.push_str("\n\n<function_results>");
                }
                out.push_str("\n<result>");
                out.push_str(m.text());
                out.push_str("</result>");
                if order == calls {
                    out.push_str("\n</function_results>\n\n");
                    out.push_str(if think_after(i, true) {
                        THINK
                    } else {
                        END_THINK
                    });
                }
            }
            _ => {
                let calls = tool_calls(m);
                if think_after(i, false) {
                    if reasoning(m).is_empty() && calls.is_empty() {
                        bail!("{name}: in thinking mode an assistant message after the last user message needs `reasoning_content` or `tool_calls`");
                    }
                    out.push_str(reasoning(m));
                    out.push_str(END_THINK);
                }
                out.push_str(m.text());
                out.push_str(&calls_text(NativeFormat::V32, calls)?);
                out.push_str(EOS);
            }
        }
    }
    Ok(out)
}

/// One turn of V4's merged conversation.
enum Turn<'a> {
    System(&'a Message),
    /// consecutive user messages and tool results: texts as they are, results as
    /// `<tool_result>` blocks, joined by blank lines
    User(Vec<Part<'a>>),
    Assistant(&'a Message),
}

enum Part<'a> {
    Text(&'a str),
    /// a tool result and the id of the call it answers
    Result(&'a str, &'a str),
}

/// `merge_tool_messages` then `sort_tool_results_by_call_order`: tool results and user
/// messages join the user turn before them; the results of one turn are put in the order of
/// the calls they answer (by id, where the calls carry ids).
fn v4_turns(messages: &[Message]) -> Vec<Turn<'_>> {
    let mut turns: Vec<Turn> = Vec::new();
    for m in messages {
        let part = match m.role.as_str() {
            "system" => {
                turns.push(Turn::System(m));
                continue;
            }
            "assistant" => {
                turns.push(Turn::Assistant(m));
                continue;
            }
            "tool" => Part::Result(
                m.text(),
                m.extra
                    .get("tool_call_id")
                    .and_then(|i| i.as_str())
                    .unwrap_or(""),
            ),
            _ => Part::Text(m.text()),
        };
        match turns.last_mut() {
            Some(Turn::User(parts)) => parts.push(part),
            _ => turns.push(Turn::User(vec![part])),
        }
    }
    let mut order: Vec<&str> = Vec::new();
    for t in &mut turns {
        match t {
            Turn::Assistant(m) if !tool_calls(m).is_empty() => {
                // `tc.get("id") or tc["function"].get("id", "")`
                fn id(v: Option<&Value>) -> Option<&str> {
                    v.and_then(|i| i.as_str()).filter(|i| !i.is_empty())
                }
                order = tool_calls(m)
                    .iter()
                    .map(|c| {
                        id(c.get("id"))
                            .or_else(|| id(c.get("function").and_then(|f| f.get("id"))))
                            .unwrap_or("")
                    })
                    .collect();
            }
            Turn::User(parts) => {
                // a dict of id -> position: a repeated id ranks by its last call
                let rank = |id: &str| {
                    (!id.is_empty())
                        .then(|| order.iter().rposition(|o| *o == id))
                        .flatten()
                        .unwrap_or(0)
                };
                let slots: Vec<usize> = (0..parts.len())
                    .filter(|&k| matches!(parts[k], Part::Result(..)))
                    .collect();
                if slots.len() > 1 && order.iter().any(|o| !o.is_empty()) {
                    let mut results: Vec<(&str, &str)> = slots
                        .iter()
                        .map(|&k| match parts[k] {
                            Part::Result(c, id) => (c, id),
                            Part::Text(_) => unreachable!("a result slot"),
                        })
                        .collect();
                    results.sort_by_key(|(_, id)| rank(id));
                    for (&k, (c, id)) in slots.iter().zip(results) {
                        parts[k] = Part::Result(c, id);
                    }
                }
            }
            _ => {}
        }
    }
    turns
}

/// `encoding_dsv4.encode_messages`: consecutive user messages and tool results merge into one
/// turn; a turn that an assistant turn follows, or that ends the conversation, opens it with
/// `<think>` (thinking mode: the last user turn, or every turn where tools are offered, since
/// the encoder then keeps all reasoning) or `</think>`.
fn v4(messages: &[Message], thinking: bool, tools: Option<&str>) -> Result<String> {
    let turns = v4_turns(messages);
    // with tools on offer the encoder keeps every turn's reasoning (`drop_thinking` off)
    let drop = tools.is_none();
    let last = turns.iter().rposition(|t| matches!(t, Turn::User(_)));
    let mut out = String::from(BOS);
    for (i, t) in turns.iter().enumerate() {
        match t {
            Turn::System(m) => {
                out.push_str(m.text());
                if let (0, Some(t)) = (i, tools) {
                    out.push_str("\n\n");
                    out.push_str(t);
                }
            }
            Turn::User(parts) => {
                out.push_str(USER);
                let texts: Vec<String> = parts
                    .iter()
                    .map(|p| match p {
                        Part::Text(t) => t.to_string(),
                        Part::Result(c, _) => format!("<tool_result>{c}</tool_result>"),
                    })
                    .collect();
                out.push_str(&texts.join("\n\n"));
            }
            Turn::Assistant(m) => {
                // with drop_thinking, reasoning survives only after the last user turn
                if thinking && (!drop || last.is_none_or(|l| i > l)) {
                    out.push_str(reasoning(m));
                    out.push_str(END_THINK);
                }
                out.push_str(m.text());
                out.push_str(&calls_text(NativeFormat::V4, tool_calls(m))?);
                out.push_str(EOS);
            }
        }
        if turns
            .get(i + 1)
            .is_some_and(|n| !matches!(n, Turn::Assistant(_)))
        {
            continue;
        }
        if let Turn::User(_) = t {
            out.push_str(ASSISTANT);
            let opens = thinking && (!drop || last.is_some_and(|l| i >= l));
            out.push_str(if opens { THINK } else { END_THINK });
        }
    }
    Ok(out)
}
