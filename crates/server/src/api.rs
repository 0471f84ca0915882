//! OpenAI request parsing and error bodies. Every malformed field is answered with the OpenAI
//! error JSON `{"error": {"message", "type", "param", "code"}}` and a 4xx status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use whale_engine::grammar::Spec;
use whale_engine::{Message, SamplingParams};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.to_string()),
            code: None,
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn status(mut self, s: StatusCode) -> Self {
        self.status = s;
        self
    }

    pub fn plain(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}});
        (self.status, axum::Json(body)).into_response()
    }
}

type R<T> = Result<T, ApiError>;

fn num(o: &Map<String, Value>, k: &str, lo: f64, hi: f64) -> R<Option<f64>> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if x >= lo && x <= hi => Ok(Some(x)),
            _ => Err(ApiError::invalid(
                k,
                format!("`{k}` must be a number in [{lo}, {hi}], got {v}"),
            )),
        },
    }
}

fn int(o: &Map<String, Value>, k: &str, lo: u64, hi: u64) -> R<Option<u64>> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(x) if x >= lo && x <= hi => Ok(Some(x)),
            _ => Err(ApiError::invalid(
                k,
                format!("`{k}` must be an integer in [{lo}, {hi}], got {v}"),
            )),
        },
    }
}

fn boolean(o: &Map<String, Value>, k: &str) -> R<Option<bool>> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(ApiError::invalid(
            k,
            format!("`{k}` must be true or false, got {v}"),
        )),
    }
}

/// Parameters shared by chat and text completions.
#[derive(Debug, Clone)]
pub struct Common {
    pub model: Option<String>,
    pub max_tokens: Option<usize>,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub n: usize,
    pub top_logprobs: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
    pub ignore_eos: bool,
    /// extension: majority vote over the `n` final answers
    pub vote: bool,
    /// vLLM's `cache_salt`: only requests with the same salt (and API key) share cached
    /// prefix blocks
    pub cache_salt: Option<String>,
    /// vLLM's `return_tokens_as_token_ids`: logprobs name tokens as `token_id:N`
    pub tokens_as_ids: bool,
    /// completions: the prompt's text comes first in the answer
    pub echo: bool,
}

pub const MAX_N: u64 = 16;
pub const MAX_TOP_LOGPROBS: u64 = 20;

pub fn parse_body(bytes: &[u8]) -> R<Map<String, Value>> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid("body", format!("the body is not valid JSON: {e}")))?;
    match v {
        Value::Object(o) => Ok(o),
        _ => Err(ApiError::invalid("body", "the body must be a JSON object")),
    }
}

/// Fields whale reads, on both endpoints, on chat only and on completions only.
pub const FIELDS: &[&str] = &[
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "stop",
    "n",
    "logprobs",
    "stream",
    "stream_options",
    "ignore_eos",
    "cache_salt",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "logit_bias",
    "return_tokens_as_token_ids",
    "response_format",
];
pub const CHAT_FIELDS: &[&str] = &[
    "messages",
    "max_completion_tokens",
    "top_logprobs",
    "whale_vote",
    "thinking",
    "chat_template_kwargs",
    "reasoning_effort",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "continue_final_message",
];
pub const COMPLETION_FIELDS: &[&str] = &["prompt", "echo", "suffix"];
/// Fields that cannot change what is generated: accepted and not used.
pub const INERT_FIELDS: &[&str] = &["user", "metadata", "store", "service_tier"];

/// Whether a field's value leaves the output as if the field were absent.
type IsNeutral = fn(&Value) -> bool;

/// Fields whale does not implement, and the value of each that leaves the output as if it were
/// absent (a client library that always sends `best_of: 1` is served).
const NEUTRAL: &[(&str, IsNeutral)] = &[
    ("functions", |v| v.as_array().is_some_and(|a| a.is_empty())),
    ("best_of", |v| v.as_u64() == Some(1)),
];

/// Nothing silently ignored: a field that would change the result and that whale does not
/// implement is a 400 naming it (or its neutral value is accepted); inert fields pass.
pub fn known_fields(o: &Map<String, Value>, chat: bool) -> R<()> {
    let own = if chat { CHAT_FIELDS } else { COMPLETION_FIELDS };
    for (k, v) in o {
        let k = k.as_str();
        if v.is_null() || FIELDS.contains(&k) || own.contains(&k) || INERT_FIELDS.contains(&k) {
            continue;
        }
        match NEUTRAL.iter().find(|(name, _)| *name == k) {
            Some((_, neutral)) if neutral(v) => continue,
            Some(_) => {
                return Err(ApiError::invalid(
                    k,
                    format!("`{k}` is not supported by whale yet (it would change the output); leave it out or give its default"),
                ))
            }
            None => {
                return Err(ApiError::invalid(
                    k,
                    format!("unknown field `{k}` for {}", if chat { "chat completions" } else { "completions" }),
                ))
            }
        }
    }
    if let Some(Value::Object(m)) = o.get("stream_options") {
        if let Some(k) = m.keys().find(|k| k.as_str() != "include_usage") {
            return Err(ApiError::invalid(
                &format!("stream_options.{k}"),
                format!("`stream_options.{k}` is not supported (whale reads include_usage)"),
            ));
        }
    }
    Ok(())
}

/// OpenAI's `logit_bias`: token ids (as strings, or numbers) mapped to a bias in [-100, 100].
fn logit_bias(o: &Map<String, Value>, vocab_size: usize) -> R<Vec<(u32, f32)>> {
    let m = match o.get("logit_bias") {
        None | Some(Value::Null) => return Ok(vec![]),
        Some(Value::Object(m)) => m,
        Some(v) => {
            return Err(ApiError::invalid(
                "logit_bias",
                format!("`logit_bias` must be an object of token ids to biases, got {v}"),
            ))
        }
    };
    let mut out = Vec::with_capacity(m.len());
    for (k, v) in m {
        let param = format!("logit_bias.{k}");
        let id = match k.parse::<u64>() {
            Ok(id) if id < vocab_size as u64 => id as u32,
            _ => {
                return Err(ApiError::invalid(
                    &param,
                    format!("`logit_bias` key {k:?} is not a token id of this model (vocab_size {vocab_size})"),
                ))
            }
        };
        match v.as_f64() {
            Some(b) if (-100.0..=100.0).contains(&b) => out.push((id, b as f32)),
            _ => {
                return Err(ApiError::invalid(
                    &param,
                    format!("a logit bias must be a number in [-100, 100], got {v}"),
                ))
            }
        }
    }
    Ok(out)
}

/// The common fields of a request; token ids are checked against `vocab_size`.
pub fn common(o: &Map<String, Value>, chat: bool, vocab_size: usize) -> R<Common> {
    known_fields(o, chat)?;
    let model = match o.get("model") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(v) => {
            return Err(ApiError::invalid(
                "model",
                format!("`model` must be a string, got {v}"),
            ))
        }
    };
    let max_tokens = match int(o, "max_completion_tokens", 1, u32::MAX as u64)? {
        Some(x) => Some(x as usize),
        None => int(o, "max_tokens", 1, u32::MAX as u64)?.map(|x| x as usize),
    };
    let stop = match o.get("stop") {
        None | Some(Value::Null) => vec![],
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.len() <= 4 && a.iter().all(|s| s.is_string()) => {
            a.iter().map(|s| s.as_str().unwrap().to_string()).collect()
        }
        Some(v) => {
            return Err(ApiError::invalid(
                "stop",
                format!("`stop` must be a string or up to 4 strings, got {v}"),
            ))
        }
    };
    let logprobs = if chat {
        boolean(o, "logprobs")?.unwrap_or(false)
    } else {
        // completions: `logprobs` is the number of top alternatives
        int(o, "logprobs", 0, MAX_TOP_LOGPROBS)?.is_some()
    };
    let top = if chat {
        int(o, "top_logprobs", 0, MAX_TOP_LOGPROBS)?
    } else {
        int(o, "logprobs", 0, MAX_TOP_LOGPROBS)?
    };
    if chat && top.is_some() && !logprobs {
        return Err(ApiError::invalid(
            "top_logprobs",
            "`top_logprobs` needs `logprobs: true`",
        ));
    }
    let top_logprobs = if logprobs {
        Some(top.unwrap_or(0) as usize)
    } else {
        None
    };
    let include_usage = match o.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(so)) => boolean(so, "include_usage")?.unwrap_or(false),
        Some(v) => {
            return Err(ApiError::invalid(
                "stream_options",
                format!("`stream_options` must be an object, got {v}"),
            ))
        }
    };
    Ok(Common {
        model,
        max_tokens,
        sampling: SamplingParams {
            temperature: num(o, "temperature", 0.0, 2.0)?.unwrap_or(1.0) as f32,
            top_p: num(o, "top_p", 1e-9, 1.0)?.unwrap_or(1.0) as f32,
            top_k: int(o, "top_k", 0, u32::MAX as u64)?.unwrap_or(0) as usize,
            min_p: num(o, "min_p", 0.0, 1.0)?.unwrap_or(0.0) as f32,
            seed: match o.get("seed") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_i64().ok_or_else(|| {
                    ApiError::invalid("seed", format!("`seed` must be an integer, got {v}"))
                })? as u64),
            },
            presence_penalty: num(o, "presence_penalty", -2.0, 2.0)?.unwrap_or(0.0) as f32,
            frequency_penalty: num(o, "frequency_penalty", -2.0, 2.0)?.unwrap_or(0.0) as f32,
            repetition_penalty: match num(o, "repetition_penalty", 0.0, 2.0)? {
                Some(x) if x <= 0.0 => {
                    return Err(ApiError::invalid(
                        "repetition_penalty",
                        "`repetition_penalty` must be in (0, 2]",
                    ))
                }
                x => x.unwrap_or(1.0) as f32,
            },
            logit_bias: logit_bias(o, vocab_size)?,
        },
        stop,
        n: int(o, "n", 1, MAX_N)?.unwrap_or(1) as usize,
        top_logprobs,
        stream: boolean(o, "stream")?.unwrap_or(false),
        include_usage,
        ignore_eos: boolean(o, "ignore_eos")?.unwrap_or(false),
        vote: boolean(o, "whale_vote")?.unwrap_or(false),
        tokens_as_ids: boolean(o, "return_tokens_as_token_ids")?.unwrap_or(false),
        echo: !chat && boolean(o, "echo")?.unwrap_or(false),
        cache_salt: match o.get("cache_salt") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => Some(s.clone()),
            Some(v) => {
                return Err(ApiError::invalid(
                    "cache_salt",
                    format!("`cache_salt` must be a string of 1 to 256 bytes, got {v}"),
                ))
            }
        },
    })
}

/// `response_format`: `{"type": "text"}` (none), `{"type": "json_object"}`, or
/// `{"type": "json_schema", "json_schema": {"name", "schema", "strict", "description"}}`.
pub fn response_format(o: &Map<String, Value>) -> R<Option<Spec>> {
    fn bad<T>(param: &str, m: String) -> R<T> {
        Err(ApiError::invalid(param, m))
    }
    let f = match o.get("response_format") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(f)) => f,
        Some(v) => {
            return bad(
                "response_format",
                format!("`response_format` must be an object, got {v}"),
            )
        }
    };
    let only = |keys: &[&str]| match f.keys().find(|k| !keys.contains(&k.as_str())) {
        Some(k) => bad(
            &format!("response_format.{k}"),
            format!("unknown field `response_format.{k}`"),
        ),
        None => Ok(()),
    };
    match f.get("type").and_then(|t| t.as_str()) {
        Some("text") => only(&["type"]).map(|_| None),
        Some("json_object") => only(&["type"]).map(|_| Some(Spec::JsonObject)),
        Some("json_schema") => {
            only(&["type", "json_schema"])?;
            let Some(Value::Object(js)) = f.get("json_schema") else {
                return bad(
                    "response_format.json_schema",
                    "`json_schema` must be an object with a `schema`".into(),
                );
            };
            if let Some(k) = js
                .keys()
                .find(|k| !matches!(k.as_str(), "name" | "schema" | "strict" | "description"))
            {
                return bad(
                    &format!("response_format.json_schema.{k}"),
                    format!("unknown field `json_schema.{k}`"),
                );
            }
            match js.get("schema") {
                Some(s @ (Value::Object(_) | Value::Bool(_))) => {
                    Ok(Some(Spec::JsonSchema(s.clone())))
                }
                // OpenAI's `strict: false` still means "follow the schema": whale always enforces it
                None => bad(
                    "response_format.json_schema.schema",
                    "`json_schema.schema` is required".into(),
                ),
                Some(v) => bad(
                    "response_format.json_schema.schema",
                    format!("`schema` must be a JSON schema object, got {v}"),
                ),
            }
        }
        _ => bad(
            "response_format.type",
            "`response_format.type` must be text, json_object or json_schema".into(),
        ),
    }
}

/// `messages` of a chat request: roles system, user, assistant, developer and tool; content a
/// string or a list of text parts (`null` on an assistant turn). An assistant turn may carry
/// `tool_calls` (and `reasoning_content`, `prefix` on the last one); a tool turn needs its
/// `tool_call_id`. What a message carries reaches the template as transformers passes it.
pub fn messages(o: &Map<String, Value>) -> R<Vec<Message>> {
    let Some(Value::Array(a)) = o.get("messages") else {
        return Err(ApiError::invalid(
            "messages",
            "`messages` must be an array of messages",
        ));
    };
    if a.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` must not be empty",
        ));
    }
    let mut out = Vec::with_capacity(a.len());
    for (i, m) in a.iter().enumerate() {
        let param = format!("messages[{i}]");
        let Some(m) = m.as_object() else {
            return Err(ApiError::invalid(&param, "each message must be an object"));
        };
        let role = match m.get("role").and_then(|r| r.as_str()) {
            Some(r @ ("system" | "user" | "assistant" | "developer" | "tool")) => r,
            _ => {
                return Err(ApiError::invalid(
                    &format!("{param}.role"),
                    "`role` must be system, user, assistant, developer or tool",
                ))
            }
        };
        let content = match m.get("content") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(parts)) => {
                let mut s = String::new();
                for p in parts {
                    match (
                        p.get("type").and_then(|t| t.as_str()),
                        p.get("text").and_then(|t| t.as_str()),
                    ) {
                        (Some("text"), Some(t)) => s.push_str(t),
                        _ => {
                            return Err(ApiError::invalid(
                                &format!("{param}.content"),
                                "only text content parts are supported",
                            ))
                        }
                    }
                }
                Some(s)
            }
            None | Some(Value::Null) if role == "assistant" => None,
            _ => {
                return Err(ApiError::invalid(
                    &format!("{param}.content"),
                    "`content` must be a string or a list of text parts",
                ))
            }
        };
        let mut msg = Message::new(role, "");
        msg.content = content;
        for (k, v) in m {
            if v.is_null() || matches!(k.as_str(), "role" | "content") {
                continue;
            }
            let field = format!("{param}.{k}");
            let v = match (role, k.as_str()) {
                (_, "name") => match v {
                    Value::String(_) => v.clone(),
                    _ => return Err(ApiError::invalid(&field, "`name` must be a string")),
                },
                ("assistant", "tool_calls") => assistant_calls(&field, v)?,
                ("assistant", "reasoning_content") => match v {
                    Value::String(_) => v.clone(),
                    _ => {
                        return Err(ApiError::invalid(
                            &field,
                            "`reasoning_content` must be a string",
                        ))
                    }
                },
                ("assistant", "prefix") => match v {
                    Value::Bool(_) if i + 1 == a.len() => v.clone(),
                    Value::Bool(_) => {
                        return Err(ApiError::invalid(
                            &field,
                            "`prefix` is for the last message only (the model continues it)",
                        ))
                    }
                    _ => return Err(ApiError::invalid(&field, "`prefix` must be true or false")),
                },
                ("tool", "tool_call_id") => match v {
                    Value::String(s) if !s.is_empty() => v.clone(),
                    _ => {
                        return Err(ApiError::invalid(
                            &field,
                            "`tool_call_id` must be a non-empty string",
                        ))
                    }
                },
                _ => {
                    return Err(ApiError::invalid(
                        &field,
                        format!("`{k}` is not a field of a {role} message"),
                    ))
                }
            };
            msg.extra.insert(k.clone(), v);
        }
        if role == "tool" && !msg.extra.contains_key("tool_call_id") {
            return Err(ApiError::invalid(
                &format!("{param}.tool_call_id"),
                "a `tool` message needs the `tool_call_id` of the call it answers",
            ));
        }
        if role == "assistant" && msg.content.is_none() && !msg.extra.contains_key("tool_calls") {
            return Err(ApiError::invalid(
                &format!("{param}.content"),
                "an assistant message needs `content` or `tool_calls`",
            ));
        }
        // `developer` goes to the template as it is, as transformers passes it
        out.push(msg);
    }
    Ok(out)
}

/// An assistant turn's `tool_calls`, in OpenAI's shape; arguments given as an object are
/// written as the JSON string the templates expect.
fn assistant_calls(param: &str, v: &Value) -> R<Value> {
    let Value::Array(calls) = v else {
        return Err(ApiError::invalid(param, "`tool_calls` must be an array"));
    };
    let mut out = Vec::with_capacity(calls.len());
    for (j, c) in calls.iter().enumerate() {
        let p = format!("{param}[{j}]");
        let f = c.get("function").and_then(|f| f.as_object());
        let name = f.and_then(|f| f.get("name")).and_then(|n| n.as_str());
        let (Some(f), Some(name)) = (f, name) else {
            return Err(ApiError::invalid(
                &format!("{p}.function"),
                "a tool call needs `function.name`",
            ));
        };
        let arguments = match f.get("arguments") {
            Some(Value::String(s)) => s.clone(),
            Some(o @ Value::Object(_)) => o.to_string(),
            None | Some(Value::Null) => "{}".into(),
            Some(_) => {
                return Err(ApiError::invalid(
                    &format!("{p}.function.arguments"),
                    "`arguments` must be a JSON string",
                ))
            }
        };
        let id = match c.get("id") {
            None | Some(Value::Null) => format!("call_{j}"),
            Some(Value::String(s)) => s.clone(),
            Some(_) => {
                return Err(ApiError::invalid(
                    &format!("{p}.id"),
                    "`id` must be a string",
                ))
            }
        };
        if !matches!(
            c.get("type").and_then(|t| t.as_str()),
            None | Some("function")
        ) {
            return Err(ApiError::invalid(
                &format!("{p}.type"),
                "`type` must be \"function\"",
            ));
        }
        out.push(serde_json::json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}));
    }
    Ok(Value::Array(out))
}

/// One function a request offers the model.
#[derive(Debug, Clone)]
pub struct ToolSpec {
    pub name: String,
    /// its JSON schema (`{"type": "object"}` when none was given)
    pub parameters: Value,
    /// OpenAI's `strict`: the arguments must follow the schema
    pub strict: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    None,
    Auto,
    Required,
    Named(String),
}

/// The request's `tools`, `tool_choice` and `parallel_tool_calls`.
#[derive(Debug, Clone)]
pub struct Tools {
    /// the definitions as given: the template renders them
    pub defs: Value,
    pub specs: Vec<ToolSpec>,
    pub choice: ToolChoice,
    pub parallel: bool,
}

pub fn tools(o: &Map<String, Value>) -> R<Option<Tools>> {
    let defs = match o.get("tools") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => Some(a),
        Some(v) => {
            return Err(ApiError::invalid(
                "tools",
                format!("`tools` must be an array, got {v}"),
            ))
        }
    };
    let mut specs = Vec::new();
    for (i, t) in defs.into_iter().flatten().enumerate() {
        let p = format!("tools[{i}]");
        if t.get("type").and_then(|x| x.as_str()) != Some("function") {
            return Err(ApiError::invalid(
                &format!("{p}.type"),
                "a tool's `type` must be \"function\"",
            ));
        }
        let Some(f) = t.get("function").and_then(|f| f.as_object()) else {
            return Err(ApiError::invalid(
                &format!("{p}.function"),
                "a tool needs a `function` object",
            ));
        };
        let name = match f.get("name").and_then(|n| n.as_str()) {
            Some(n)
                if !n.is_empty()
                    && n.len() <= 64
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') =>
            {
                n
            }
            _ => {
                return Err(ApiError::invalid(
                    &format!("{p}.function.name"),
                    "`function.name` must be 1 to 64 letters, digits, _ or -",
                ))
            }
        };
        if specs.iter().any(|s: &ToolSpec| s.name == name) {
            return Err(ApiError::invalid(
                &format!("{p}.function.name"),
                format!("two tools are named `{name}`"),
            ));
        }
        if let Some(k) = f
            .keys()
            .find(|k| !matches!(k.as_str(), "name" | "description" | "parameters" | "strict"))
        {
            return Err(ApiError::invalid(
                &format!("{p}.function.{k}"),
                format!("unknown field `function.{k}`"),
            ));
        }
        let parameters = match f.get("parameters") {
            None | Some(Value::Null) => serde_json::json!({"type": "object"}),
            Some(s @ Value::Object(_)) => s.clone(),
            Some(v) => {
                return Err(ApiError::invalid(
                    &format!("{p}.function.parameters"),
                    format!("`parameters` must be a JSON schema object, got {v}"),
                ))
            }
        };
        let strict = match f.get("strict") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ApiError::invalid(
                    &format!("{p}.function.strict"),
                    "`strict` must be true or false",
                ))
            }
        };
        specs.push(ToolSpec {
            name: name.to_string(),
            parameters,
            strict,
        });
    }
    let choice = match o.get("tool_choice") {
        None | Some(Value::Null) => if specs.is_empty() { ToolChoice::None } else { ToolChoice::Auto },
        Some(Value::String(s)) if s == "none" => ToolChoice::None,
        Some(Value::String(s)) if s == "auto" => ToolChoice::Auto,
        Some(Value::String(s)) if s == "required" => ToolChoice::Required,
        Some(Value::Object(c)) if c.get("type").and_then(|t| t.as_str()) == Some("function") => {
            match c.get("function").and_then(|f| f.get("name")).and_then(|n| n.as_str()) {
                Some(n) if specs.iter().any(|s| s.name == n) => ToolChoice::Named(n.to_string()),
                Some(n) => {
                    return Err(ApiError::invalid(
                        "tool_choice",
                        format!("`tool_choice` names `{n}`, which is not one of `tools`"),
                    ))
                }
                None => return Err(ApiError::invalid("tool_choice", "`tool_choice.function.name` is required")),
            }
        }
        Some(v) => {
            return Err(ApiError::invalid(
                "tool_choice",
                format!("`tool_choice` must be none, auto, required or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, got {v}"),
            ))
        }
    };
    if specs.is_empty() && !matches!(choice, ToolChoice::None) {
        return Err(ApiError::invalid(
            "tool_choice",
            "`tool_choice` needs `tools`",
        ));
    }
    let parallel = boolean(o, "parallel_tool_calls")?.unwrap_or(true);
    if specs.is_empty() && defs.is_none() {
        return Ok(None);
    }
    Ok(Some(Tools {
        defs: Value::Array(defs.cloned().unwrap_or_default()),
        specs,
        choice,
        parallel,
    }))
}

/// Whether the request asks to think: DeepSeek's `thinking: {"type": "enabled" | "disabled"}`,
/// `thinking: true | false`, or vLLM style `chat_template_kwargs: {"thinking": false}` (also
/// `enable_thinking`).
pub fn thinking(o: &Map<String, Value>) -> R<Option<bool>> {
    if let Some(Value::Object(t)) = o.get("thinking") {
        return match (t.get("type").and_then(|v| v.as_str()), t.len()) {
            (Some("enabled"), 1) => Ok(Some(true)),
            (Some("disabled"), 1) => Ok(Some(false)),
            _ => Err(ApiError::invalid(
                "thinking",
                "`thinking` must be true, false, {\"type\": \"enabled\"} or {\"type\": \"disabled\"}",
            )),
        };
    }
    if let Some(b) = boolean(o, "thinking")? {
        return Ok(Some(b));
    }
    match o.get("chat_template_kwargs") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(k)) => Ok(boolean(k, "thinking")?.or(boolean(k, "enable_thinking")?)),
        Some(v) => Err(ApiError::invalid(
            "chat_template_kwargs",
            format!("`chat_template_kwargs` must be an object, got {v}"),
        )),
    }
}

/// Variables for the template besides the thinking switch: `chat_template_kwargs` (but
/// `thinking` / `enable_thinking`) and `reasoning_effort`, each with the field that gave it.
pub fn template_vars(o: &Map<String, Value>) -> R<Vec<(String, String, Value)>> {
    let mut out = Vec::new();
    if let Some(Value::Object(k)) = o.get("chat_template_kwargs") {
        for (name, v) in k {
            if !matches!(name.as_str(), "thinking" | "enable_thinking") {
                out.push((
                    format!("chat_template_kwargs.{name}"),
                    name.clone(),
                    v.clone(),
                ));
            }
        }
    }
    match o.get("reasoning_effort") {
        None | Some(Value::Null) => {}
        Some(Value::String(e)) if matches!(e.as_str(), "minimal" | "low" | "medium" | "high") => {
            out.push((
                "reasoning_effort".into(),
                "reasoning_effort".into(),
                Value::String(e.clone()),
            ))
        }
        Some(v) => {
            return Err(ApiError::invalid(
                "reasoning_effort",
                format!("`reasoning_effort` must be minimal, low, medium or high, got {v}"),
            ))
        }
    }
    Ok(out)
}

/// Whether the model is to continue the last (assistant) message rather than answer it:
/// DeepSeek's `prefix: true` on that message, or transformers' / vLLM's
/// `continue_final_message`.
pub fn continues_final(o: &Map<String, Value>, messages: &[Message]) -> R<bool> {
    let flag = boolean(o, "continue_final_message")?.unwrap_or(false);
    let last = messages.last().expect("messages are not empty");
    let prefix = last.extra.get("prefix") == Some(&Value::Bool(true));
    if (flag || prefix) && (last.role != "assistant" || last.content.is_none()) {
        return Err(ApiError::invalid(
            if prefix {
                "messages"
            } else {
                "continue_final_message"
            },
            "only a last assistant message with content can be continued",
        ));
    }
    Ok(flag || prefix)
}
