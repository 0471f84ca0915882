//! Tokenizer endpoints for clients and debugging, with no generation: `POST /tokenize` and
//! `POST /detokenize` in vLLM's shapes, and `POST /v1/chat/template`, which renders a
//! conversation to the exact text and ids a chat request would run.

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use crate::api::ApiError;
use crate::{chat_prompt, check_model, read_json, token_ids, too_long, with_tokenizer, Shared};

fn reply(r: Result<Value, ApiError>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

fn only(o: &Map<String, Value>, fields: &[&str]) -> Result<(), ApiError> {
    match o.keys().find(|k| !fields.contains(&k.as_str())) {
        Some(k) => Err(ApiError::invalid(
            k,
            format!(
                "unknown field `{k}` (this endpoint reads {})",
                fields.join(", ")
            ),
        )),
        None => Ok(()),
    }
}

/// `model`, when given, must be a served name.
fn model(st: &Shared, o: &Map<String, Value>) -> Result<(), ApiError> {
    match o.get("model") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(m)) => check_model(st, Some(m)),
        Some(v) => Err(ApiError::invalid(
            "model",
            format!("`model` must be a string, got {v}"),
        )),
    }
}

fn flag(o: &Map<String, Value>, k: &str, default: bool) -> Result<bool, ApiError> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(ApiError::invalid(
            k,
            format!("`{k}` must be true or false, got {v}"),
        )),
    }
}

/// What a conversation's rendering reads, on the endpoints that render without generating.
const PROMPT_FIELDS: &[&str] = &[
    "model",
    "messages",
    "add_generation_prompt",
    "continue_final_message",
    "thinking",
    "chat_template_kwargs",
    "reasoning_effort",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
];

pub async fn tokenize(State(st): State<Shared>, req: Request) -> Response {
    let r = async {
        let (o, _) = read_json(&st, req).await?;
        model(&st, &o)?;
        let ids = match (o.get("prompt"), o.get("messages")) {
            (Some(Value::String(p)), None) => {
                only(&o, &["model", "prompt", "add_special_tokens"])?;
                let special = flag(&o, "add_special_tokens", true)?;
                let (p, limit) = (p.clone(), st.max_model_len);
                with_tokenizer(&st, move |tok| {
                    if tok.surely_longer_than(&p, limit) {
                        return Ok(None);
                    }
                    if special {
                        tok.encode_prompt(&p)
                    } else {
                        tok.encode(&p)
                    }
                    .map(Some)
                    .map_err(|e| ApiError::invalid("prompt", format!("{e:#}")))
                })
                .await?
                .ok_or_else(|| too_long(&st, "prompt"))?
            }
            (None, Some(_)) => {
                only(&o, PROMPT_FIELDS)?;
                let generation = flag(&o, "add_generation_prompt", true)?;
                chat_prompt(&st, &o, generation, st.max_model_len)
                    .await?
                    .ids
            }
            _ => {
                return Err(ApiError::invalid(
                    "prompt",
                    "give either `prompt` (a string) or `messages`",
                ))
            }
        };
        Ok(json!({"count": ids.len(), "max_model_len": st.max_model_len, "tokens": ids}))
    }
    .await;
    reply(r)
}

pub async fn detokenize(State(st): State<Shared>, req: Request) -> Response {
    let r = async {
        let (o, _) = read_json(&st, req).await?;
        model(&st, &o)?;
        only(&o, &["model", "tokens"])?;
        let ids = match o.get("tokens") {
            Some(Value::Array(a)) if a.iter().all(|x| x.is_u64()) => {
                token_ids(a, st.vocab_size).map_err(|e| ApiError::invalid("tokens", e.message))?
            }
            _ => {
                return Err(ApiError::invalid(
                    "tokens",
                    "`tokens` must be a list of token ids",
                ))
            }
        };
        let text = with_tokenizer(&st, move |tok| tok.decode(&ids))
            .await
            .map_err(|e| ApiError::invalid("tokens", format!("{e:#}")))?;
        Ok(json!({"prompt": text}))
    }
    .await;
    reply(r)
}

pub async fn chat_template(State(st): State<Shared>, req: Request) -> Response {
    let r = async {
        let (o, _) = read_json(&st, req).await?;
        model(&st, &o)?;
        only(&o, PROMPT_FIELDS)?;
        let generation = flag(&o, "add_generation_prompt", true)?;
        let p = chat_prompt(&st, &o, generation, st.max_model_len).await?;
        Ok::<_, ApiError>(json!({"prompt": p.rendered.plain(), "prompt_token_ids": p.ids}))
    }
    .await;
    reply(r)
}
