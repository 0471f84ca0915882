//! The conversation formats DeepSeek-V3.2 and V4 ship as Python code (`encoding_dsv32.py`,
//! `encoding_dsv4.py`'s `encode_messages`) instead of a chat template, for checkpoints whose
//! tokenizer_config.json has none. Rendered as those encoders render them with
//! `drop_thinking=True`, in "thinking" or "chat" mode (tests: testdata/encodings, made from the
//! released encoders by tools/encoding_references.py). Tool definitions, tool calls and results
//! (DSML) and V4's task and reminder turns are refused for now, never dropped.

use anyhow::{bail, Result};

use crate::tokenizer::Message;

const BOS: &str = "<｜begin▁of▁sentence｜>";
const EOS: &str = "<｜end▁of▁sentence｜>";
const USER: &str = "<｜User｜>";
const ASSISTANT: &str = "<｜Assistant｜>";
const THINK: &str = "<think>";
const END_THINK: &str = "</think>";

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

    /// The prompt for `messages`; `thinking` picks the encoder's "thinking" mode (the model
    /// reasons in `<think>` first) over "chat".
    pub fn render(self, messages: &[Message], thinking: bool) -> Result<String> {
        for m in messages {
            if m.role == "tool" || m.extra.contains_key("tool_calls") {
                bail!(
                    "{}: tool calls and results are not supported yet",
                    self.name()
                );
            }
            for key in [
                "task",
                "tools",
                "response_format",
                "content_blocks",
                "wo_eos",
            ] {
                if m.extra.contains_key(key) {
                    bail!(
                        "{}: the message field `{key}` is not supported yet",
                        self.name()
                    );
                }
            }
            if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
                bail!(
                    "{}: role `{}` is not supported (system, user, assistant)",
                    self.name(),
                    m.role
                );
            }
        }
        match self {
            NativeFormat::V32 => v32(messages, thinking),
            NativeFormat::V4 => Ok(v4(messages, thinking)),
        }
    }
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

/// `encoding_dsv32.encode_messages`: every user turn opens the assistant's and says whether it
/// thinks (`<think>` after the last user turn in thinking mode, `</think>` otherwise); reasoning
/// is written only for assistant turns after the last user turn.
fn v32(messages: &[Message], thinking: bool) -> Result<String> {
    let last = last_user(messages);
    let mut out = String::from(BOS);
    for (i, m) in messages.iter().enumerate() {
        match m.role.as_str() {
            "system" => out.push_str(m.text()),
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
            _ => {
                if thinking && last.is_none_or(|l| i > l) {
                    if !m.extra.contains_key("reasoning_content") {
                        bail!("{}: in thinking mode an assistant message after the last user message needs `reasoning_content`", NativeFormat::V32.name());
                    }
                    out.push_str(reasoning(m));
                    out.push_str(END_THINK);
                }
                out.push_str(m.text());
                out.push_str(EOS);
            }
        }
    }
    Ok(out)
}

/// `encoding_dsv4.encode_messages`: consecutive user messages merge into one turn (their texts
/// joined by a blank line); a turn that an assistant turn follows, or that ends the
/// conversation, opens it with `<think>` (the last user turn, thinking mode) or `</think>`.
fn v4(messages: &[Message], thinking: bool) -> String {
    // merge_tool_messages: a user message joins the user turn before it
    let mut merged: Vec<(String, String, &str)> = Vec::new();
    for m in messages {
        match merged.last_mut() {
            Some((role, text, _)) if m.role == "user" && role == "user" => {
                text.push_str("\n\n");
                text.push_str(m.text());
            }
            _ => merged.push((m.role.clone(), m.text().to_string(), reasoning(m))),
        }
    }
    let last = merged.iter().rposition(|(r, _, _)| r == "user");
    let mut out = String::from(BOS);
    for (i, (role, text, rc)) in merged.iter().enumerate() {
        match role.as_str() {
            "system" => out.push_str(text),
            "user" => {
                out.push_str(USER);
                out.push_str(text);
            }
            _ => {
                // with drop_thinking, reasoning survives only after the last user turn
                if thinking && last.is_none_or(|l| i > l) {
                    out.push_str(rc);
                    out.push_str(END_THINK);
                }
                out.push_str(text);
                out.push_str(EOS);
            }
        }
        let next = merged.get(i + 1).map(|(r, _, _)| r.as_str());
        if next.is_some_and(|r| r != "assistant") {
            continue;
        }
        if role == "user" {
            out.push_str(ASSISTANT);
            out.push_str(if thinking && last.is_some_and(|l| i >= l) {
                THINK
            } else {
                END_THINK
            });
        }
    }
    out
}
