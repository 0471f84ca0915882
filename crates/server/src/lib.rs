//! `whale serve`: an OpenAI/DeepSeek-compatible HTTP server (axum + tokio) in front of one
//! engine thread that batches every running sequence into each forward pass over a paged,
//! prefix-cached latent cache.

pub mod api;
pub mod listen;
pub mod metrics;
mod origin;
mod reqlog;
pub mod scheduler;
mod tokens;
mod vote;

use anyhow::{Context, Result};
use api::ToolChoice;
use axum::body::to_bytes;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio_stream::wrappers::UnboundedReceiverStream;
use whale_engine::grammar::Spec;
use whale_engine::grammar::{Constraint, Grammars};
use whale_engine::tokenizer::primes_reasoning;
use whale_engine::tools::{calls_grammar, CallFormat, ToolCall, ToolParser};
use whale_engine::{ChatTokenizer, FinishReason, GenerateParams};
use whale_model::paged::BlockPool;
use whale_model::{Checkpoint, Model};

use api::{ApiError, Common};
use metrics::Metrics;
use scheduler::{Engine, EngineConfig, Event, Fault, Submit, TokenLogprob};

pub struct Options {
    pub model: PathBuf,
    pub host: String,
    pub port: u16,
    pub max_batch: usize,
    pub cache_mem: usize,
    pub max_model_len: Option<usize>,
    /// keys a request may present as `Authorization: Bearer KEY`; none: no key is asked for.
    /// Each key is a tenant of its own in the prefix cache.
    pub api_keys: Vec<String>,
    /// serve `/metrics` without a key even when keys are set
    pub public_metrics: bool,
    pub dtype: Option<whale_model::Format>,
    /// tokens per cache block
    pub block_size: usize,
    /// largest request body in bytes
    pub body_limit: usize,
    /// keep cached prefixes here across restarts
    pub context_cache_dir: Option<PathBuf>,
    /// write the context cache this often while serving (when it changed); None: at shutdown
    pub context_cache_flush: Option<std::time::Duration>,
    /// names requests may give as `model` (the first is the one answers carry); none: the
    /// checkpoint directory's name
    pub served_model_names: Vec<String>,
    /// a Jinja file that replaces the checkpoint's chat template
    pub chat_template: Option<PathBuf>,
    /// for a request's head, for its body, and for an idle keep-alive connection
    pub read_timeout: Duration,
    /// requests in flight may finish for this long after SIGTERM
    pub shutdown_timeout: Duration,
    /// sequences that may wait for a place in the batch; past it requests get 429
    pub max_queued: usize,
    /// open connections at once
    pub max_connections: usize,
    /// origins (`scheme://host[:port]`) whose web pages may call the API (CORS)
    pub cors_origins: Vec<String>,
}

impl Options {
    /// `whale serve`'s defaults for `model`.
    pub fn new(model: PathBuf) -> Self {
        Options {
            model,
            host: "127.0.0.1".into(),
            port: 8000,
            max_batch: 16,
            cache_mem: 1 << 30,
            max_model_len: None,
            api_keys: Vec::new(),
            public_metrics: false,
            dtype: None,
            block_size: 16,
            body_limit: 4 << 20,
            context_cache_dir: None,
            context_cache_flush: Some(Duration::from_secs(60)),
            served_model_names: Vec::new(),
            chat_template: None,
            read_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(30),
            max_queued: 256,
            max_connections: 1024,
            cors_origins: Vec::new(),
        }
    }

    pub fn limits(&self) -> listen::Limits {
        listen::Limits {
            header_timeout: self.read_timeout,
            max_connections: self.max_connections,
            shutdown_timeout: self.shutdown_timeout,
        }
    }
}

/// The engine thread, to wait for at shutdown (it writes the context cache on its way out).
pub struct EngineThread {
    thread: std::thread::JoinHandle<()>,
    stop: Arc<AtomicBool>,
}

impl EngineThread {
    pub fn join(self) {
        let _ = self.thread.join();
    }

    /// Ends every request in flight with an error and stops the engine.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

pub(crate) struct AppState {
    submit: Mutex<Sender<Submit>>,
    tokenizer: Arc<ChatTokenizer>,
    /// the served model names; the first is the one answers carry
    names: Vec<String>,
    name: String,
    max_model_len: usize,
    /// token ids a prompt may hold are below this (checked at the edge, so one request's bad
    /// id never fails the batched step it would have joined)
    vocab_size: usize,
    api_keys: Vec<String>,
    public_metrics: bool,
    metrics: Arc<Metrics>,
    body_limit: usize,
    /// tokenisations running at once (each off the async runtime, on a blocking thread)
    tokenize_slots: tokio::sync::Semaphore,
    read_timeout: Duration,
    /// sequences submitted and not yet answered, and how many there may be
    in_flight: AtomicUsize,
    max_in_flight: usize,
    /// the grammar compiler for constrained decoding, or why this model cannot have one
    grammars: Result<Arc<Grammars>, String>,
    /// how the chat template writes tool calls; None: it has no tool support
    call_format: Option<CallFormat>,
}

pub(crate) type Shared = Arc<AppState>;

/// Tokenisations at once: a long text costs hundreds of bytes of memory per byte while it is
/// tokenised, so a burst of them waits its turn instead of growing the process.
const TOKENIZE_SLOTS: usize = 2;

/// Runs `f` with the tokenizer on a blocking thread, at most `TOKENIZE_SLOTS` at a time, so a
/// long prompt never stalls the async runtime (and `/health` with it).
pub(crate) async fn with_tokenizer<T: Send + 'static>(
    st: &Shared,
    f: impl FnOnce(&ChatTokenizer) -> T + Send + 'static,
) -> T {
    let _slot = st
        .tokenize_slots
        .acquire()
        .await
        .expect("the semaphore is never closed");
    let tok = st.tokenizer.clone();
    tokio::task::spawn_blocking(move || f(&tok))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// The error for a prompt that does not fit the context, found before tokenising it.
pub(crate) fn too_long(st: &AppState, param: &str) -> ApiError {
    ApiError::invalid(
        param,
        format!(
            "the prompt is longer than the maximum context length of {} tokens",
            st.max_model_len
        ),
    )
    .with_code("context_length_exceeded")
}

/// Loads the model, starts the engine thread, and returns the router (tests serve it on a
/// port of their own) with the engine thread.
pub fn app(o: &Options) -> Result<(Router, EngineThread)> {
    let mut ck = Checkpoint::open(&o.model)?;
    ck.dtype = o.dtype;
    let model = Model::load(&ck)?;
    let mut tokenizer = ChatTokenizer::load(&o.model)?;
    if let Some(path) = &o.chat_template {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --chat-template {}", path.display()))?;
        tokenizer
            .set_chat_template(text)
            .with_context(|| format!("--chat-template {}", path.display()))?;
    }
    let tokenizer = Arc::new(tokenizer);
    let call_format = CallFormat::learn(&tokenizer);
    let cfg = &model.config;
    let max_model_len = o
        .max_model_len
        .unwrap_or(cfg.max_position_embeddings)
        .min(cfg.max_position_embeddings);
    if max_model_len < 2 {
        anyhow::bail!("--max-model-len must leave room for a prompt token and a generated one");
    }
    let vocab_size = cfg.vocab_size;
    let n_blocks = BlockPool::blocks_for_bytes(cfg, o.block_size, o.cache_mem);
    if n_blocks * o.block_size < 16 {
        anyhow::bail!(
            "--cache-mem {} holds fewer than 16 tokens of this model's latent cache",
            o.cache_mem
        );
    }
    let pool = BlockPool::new(cfg, o.block_size, n_blocks);
    let eos = whale_engine::Engine::eos_for(&o.model, cfg);
    let grammars = match eos.first() {
        None => Err("the model has no end-of-sequence token for a grammar to end with".into()),
        Some(&e) => Grammars::load(&o.model, vocab_size, e)
            .map(Arc::new)
            .map_err(|e| format!("{e:#}")),
    };
    if let Err(why) = &grammars {
        tracing::warn!("structured output and forced tool calls are off for this model: {why}");
    }
    let metrics = Arc::new(Metrics::default());
    // the cache gauges are right before the first request is answered, not only once the
    // engine's loop first goes round (after up to 200 ms of waiting for a request)
    metrics.set_queue(0, 0, pool.used(), pool.available());
    let (tx, rx) = std::sync::mpsc::channel();
    let persist = match &o.context_cache_dir {
        None => None,
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            // the model's config and the cache layout name the file's contents
            let cfg_text = std::fs::read(o.model.join("config.json"))?;
            let fp = cfg_text
                .iter()
                .chain(&(o.block_size as u64).to_le_bytes())
                .fold(0xcbf29ce484222325u64, |h, &b| {
                    (h ^ b as u64).wrapping_mul(0x100000001b3)
                });
            Some((dir.join("prefix-cache.bin"), fp))
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let engine = Engine {
        stop: stop.clone(),
        persist,
        model,
        tokenizer: tokenizer.clone(),
        eos,
        pool,
        cfg: EngineConfig {
            max_batch: o.max_batch.max(1),
            max_model_len,
            prefill_chunk: 256,
            flush_every: o.context_cache_flush,
        },
        metrics: metrics.clone(),
        saved_at: (std::time::Instant::now(), 0),
    };
    // The engine runs on a worker of its own thread pool, so each forward pass's fork-joins are
    // work-stealing joins rather than jobs injected from outside that it sleeps on. Its own: a
    // loop that lives as long as the server would hold a worker of a shared pool for good.
    let workers = rayon::ThreadPoolBuilder::new()
        .num_threads(rayon::current_num_threads())
        .thread_name(|i| format!("whale-engine-{i}"))
        .build()
        .context("cannot start the engine's threads")?;
    let thread = std::thread::Builder::new()
        .name("whale-engine".into())
        .spawn(move || workers.install(|| engine.run(rx)))
        .context("cannot start the engine thread")?;
    let names = if o.served_model_names.is_empty() {
        vec![o
            .model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "whale".into())]
    } else {
        o.served_model_names.clone()
    };
    let state = Arc::new(AppState {
        submit: Mutex::new(tx),
        tokenizer,
        name: names[0].clone(),
        names,
        max_model_len,
        vocab_size,
        api_keys: o.api_keys.clone(),
        public_metrics: o.public_metrics,
        metrics,
        body_limit: o.body_limit,
        tokenize_slots: tokio::sync::Semaphore::new(TOKENIZE_SLOTS),
        read_timeout: o.read_timeout,
        in_flight: AtomicUsize::new(0),
        max_in_flight: o.max_batch.max(1) + o.max_queued,
        grammars,
        call_format,
    });
    let router = Router::new()
        .route("/", get(chat_page))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model_by_id))
        .route("/tokenize", post(tokens::tokenize))
        .route("/detokenize", post(tokens::detokenize))
        .route("/v1/chat/template", post(tokens::chat_template))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .fallback(|| async {
            ApiError::plain(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "no such endpoint",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                "this endpoint does not take that method",
            )
        })
        .with_state(state);
    let policy = Arc::new(origin::Policy::new(
        &o.host,
        !o.api_keys.is_empty(),
        o.cors_origins.clone(),
    ));
    let router = router.layer(axum::middleware::from_fn_with_state(policy, origin::guard));
    Ok((router, EngineThread { thread, stop }))
}

/// The chat page: one static file compiled into the binary (no CDN, no network at run time).
const CHAT_PAGE: &str = include_str!("../static/index.html");

async fn chat_page() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
        CHAT_PAGE,
    )
}

/// Serves until SIGINT or SIGTERM; then stops accepting, lets running requests finish until
/// the shutdown deadline, and waits for the engine to write its context cache.
pub async fn serve(o: Options) -> Result<()> {
    let (router, engine) = app(&o)?;
    let addr = format!("{}:{}", o.host, o.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let shown = match o.host.as_str() {
        "0.0.0.0" | "::" => format!("localhost:{}", listener.local_addr()?.port()),
        _ => listener.local_addr()?.to_string(),
    };
    tracing::info!(model = %o.model.display(), "listening on {addr}");
    // for the person who started it: where to point a browser and a client
    eprintln!("whale serve: chat page  http://{shown}/\nwhale serve: OpenAI API http://{shown}/v1");
    listen::serve_on(
        listener,
        router,
        &o.limits(),
        listen::signalled(),
        Some(&engine),
    )
    .await?;
    // every connection is gone, or the deadline passed and the engine was told to stop
    engine.stop();
    tokio::task::spawn_blocking(move || engine.join()).await?;
    Ok(())
}

/// Checks the request's key; returns the tenant it names (the key itself, empty on a server
/// without keys). Every key is compared in constant time, so the time taken says nothing
/// about how much of a key was right, or which key matched.
fn authorize(st: &AppState, req: &Request) -> Result<Vec<u8>, ApiError> {
    if st.api_keys.is_empty() {
        return Ok(Vec::new());
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim().as_bytes())
        .unwrap_or_default();
    let mut found = subtle::Choice::from(0);
    for key in &st.api_keys {
        found |= key.as_bytes().ct_eq(given);
    }
    if bool::from(found) && !given.is_empty() {
        Ok(given.to_vec())
    } else {
        Err(ApiError::plain(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "missing or wrong API key",
        )
        .with_code("invalid_api_key"))
    }
}

/// The request's JSON body, and the tenant its key names.
pub(crate) async fn read_json(
    st: &AppState,
    req: Request,
) -> Result<(serde_json::Map<String, Value>, Vec<u8>), ApiError> {
    let tenant = authorize(st, &req)?;
    // a body trickled in byte by byte holds a connection and a buffer: it gets a deadline
    let body = tokio::time::timeout(st.read_timeout, to_bytes(req.into_body(), st.body_limit))
        .await
        .map_err(|_| {
            ApiError::plain(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                format!(
                    "the request body did not arrive within {} s",
                    st.read_timeout.as_secs_f64()
                ),
            )
        })?;
    let bytes = body.map_err(|_| {
        ApiError::plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is larger than {} bytes", st.body_limit),
        )
    })?;
    Ok((api::parse_body(&bytes)?, tenant))
}

/// Who shares cached prefix blocks: requests with the same key and the same `cache_salt`.
fn cache_tenant(mut key: Vec<u8>, c: &Common) -> Vec<u8> {
    if let Some(salt) = &c.cache_salt {
        key.push(0);
        key.extend_from_slice(salt.as_bytes());
    }
    key
}

async fn models(State(st): State<Shared>, req: Request) -> Response {
    if let Err(e) = authorize(&st, &req) {
        return e.into_response();
    }
    let data: Vec<Value> = st.names.iter().map(|n| model_card(&st, n)).collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

fn model_card(st: &AppState, name: &str) -> Value {
    json!({"id": name, "object": "model", "created": 0, "owned_by": "whale", "max_model_len": st.max_model_len})
}

/// `GET /v1/models/{id}`: the card of one served name.
async fn model_by_id(
    State(st): State<Shared>,
    axum::extract::Path(id): axum::extract::Path<String>,
    req: Request,
) -> Response {
    if let Err(e) = authorize(&st, &req) {
        return e.into_response();
    }
    if st.names.contains(&id) {
        Json(model_card(&st, &id)).into_response()
    } else {
        model_not_found(&st, &id).into_response()
    }
}

fn model_not_found(st: &AppState, m: &str) -> ApiError {
    ApiError::plain(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!(
            "the model `{m}` does not exist; this server serves {}",
            st.names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
    .with_code("model_not_found")
}

/// Whether the engine can serve: 503 once its thread has stopped.
async fn health(State(st): State<Shared>) -> Response {
    if st
        .metrics
        .engine_up
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        Json(json!({"status": "ok"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "engine stopped"})),
        )
            .into_response()
    }
}

async fn metrics_text(State(st): State<Shared>, req: Request) -> Response {
    // the figures tell one tenant about the others' traffic: behind the key unless asked
    if !st.public_metrics {
        if let Err(e) = authorize(&st, &req) {
            return e.into_response();
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
        .into_response()
}

/// A request turned into engine work: the prompt, how many samples, their parameters.
struct Job {
    prompt: Vec<u32>,
    /// completions with `echo`: the prompt's text, which the answer repeats first
    echo: Option<String>,
    /// what the answer must be, compiled (each sample gets a fork)
    constraint: Option<Constraint>,
    /// the tools the answer may call
    tools: Option<api::Tools>,
    tenant: Vec<u8>,
    primed: bool,
    chat: bool,
    common: Common,
    max_tokens: usize,
}

pub(crate) fn check_model(st: &AppState, model: Option<&String>) -> Result<(), ApiError> {
    match model {
        Some(m) if !st.names.contains(m) => Err(model_not_found(st, m)),
        _ => Ok(()),
    }
}

/// The request's `response_format` compiled into a constraint (off the async runtime: a large
/// schema takes a while); a schema the grammar engine cannot compile is a 400.
async fn constrain(
    st: &Shared,
    o: &serde_json::Map<String, Value>,
    common: &Common,
    tools: Option<&api::Tools>,
    primed: bool,
) -> Result<Option<Constraint>, ApiError> {
    let format = api::response_format(o)?;
    // forced calls, or (auto) strict tools whose arguments must follow their schemas
    let forced = match tools {
        Some(t) if matches!(t.choice, ToolChoice::Required | ToolChoice::Named(_)) => Some(t),
        Some(t) if t.choice == ToolChoice::Auto && t.specs.iter().any(|s| s.strict) => Some(t),
        _ => None,
    };
    let (spec, param) = match (format, forced) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "response_format",
                "`response_format` cannot be combined with a `tool_choice` that forces a call",
            ))
        }
        (Some(f), None) => (f, "response_format"),
        (None, Some(t)) => {
            let format = st.call_format.as_ref().expect("checked with the prompt");
            let specs: Vec<(String, Value)> = t
                .specs
                .iter()
                .filter(|s| match &t.choice {
                    ToolChoice::Named(n) => &s.name == n,
                    _ => true,
                })
                .map(|s| {
                    // under `auto`, only a strict tool's arguments are held to its schema
                    let free = t.choice == ToolChoice::Auto && !s.strict;
                    let schema = if free {
                        json!({"type": "object"})
                    } else {
                        s.parameters.clone()
                    };
                    (s.name.clone(), schema)
                })
                .collect();
            let many = t.parallel && !matches!(t.choice, ToolChoice::Named(_));
            let text_first = t.choice == ToolChoice::Auto;
            if text_first && format.args == whale_engine::tools::Args::Dsml {
                return Err(ApiError::invalid(
                    "tools",
                    "`strict` tools under `tool_choice: auto` are not supported for DSML calls (DeepSeek-V3.2 and V4's own format): use `tool_choice: required` or a named function",
                ));
            }
            let g = calls_grammar(format, &specs, many, text_first, &st.tokenizer).ok_or_else(
                || {
                    ApiError::invalid(
                        "tool_choice",
                        "this model's vocabulary cannot write forced tool calls",
                    )
                },
            )?;
            (Spec::Lark(g), "tools")
        }
    };
    if common.ignore_eos {
        return Err(ApiError::invalid(
            "ignore_eos",
            format!("`ignore_eos` cannot be used with `{param}`: the answer ends where its grammar does"),
        ));
    }
    let grammars = st.grammars.clone().map_err(|why| {
        ApiError::invalid(
            param,
            format!("constrained decoding is not available for this model: {why}"),
        )
    })?;
    let _slot = st
        .tokenize_slots
        .acquire()
        .await
        .expect("the semaphore is never closed");
    tokio::task::spawn_blocking(move || grammars.start(&spec, primed))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
        .map(Some)
        .map_err(|e| ApiError::invalid(param, format!("the schema cannot be compiled: {e:#}")))
}

/// Completion tokens a request may have: what it asked for, or what is left of the context.
/// `prompt_param` names the field that holds the prompt in errors.
fn budget(
    st: &AppState,
    prompt_param: &str,
    prompt: usize,
    asked: Option<usize>,
) -> Result<usize, ApiError> {
    if prompt >= st.max_model_len {
        return Err(ApiError::invalid(
            prompt_param,
            format!(
                "the prompt has {prompt} tokens; the maximum context length is {} tokens",
                st.max_model_len
            ),
        )
        .with_code("context_length_exceeded"));
    }
    let room = st.max_model_len - prompt;
    match asked {
        Some(m) if m > room => Err(ApiError::invalid(
            "max_tokens",
            format!("max_tokens {m} exceeds the {room} tokens left in the context after a {prompt}-token prompt"),
        )
        .with_code("context_length_exceeded")),
        Some(m) => Ok(m),
        None => Ok(room),
    }
}

/// A conversation's prompt as a chat request runs it.
pub(crate) struct ChatPrompt {
    pub rendered: whale_engine::tokenizer::Rendered,
    pub ids: Vec<u32>,
    /// the prompt opens a think block
    pub primed: bool,
    /// the request's tools, when it offers any
    pub tools: Option<api::Tools>,
}

/// Renders and tokenises a conversation; refused when it surely has more than `limit` tokens.
pub(crate) async fn chat_prompt(
    st: &Shared,
    o: &serde_json::Map<String, Value>,
    add_generation_prompt: bool,
    limit: usize,
) -> Result<ChatPrompt, ApiError> {
    let messages = api::messages(o)?;
    let thinking = api::thinking(o)?;
    let vars = api::template_vars(o)?;
    let tools = api::tools(o)?;
    let continues = api::continues_final(o, &messages)?;
    let uses_tools = tools.as_ref().is_some_and(|t| !t.specs.is_empty())
        || messages
            .iter()
            .any(|m| m.role == "tool" || m.extra.contains_key("tool_calls"));
    if uses_tools && st.call_format.is_none() {
        // its template would drop them, or render them as something the model never saw
        return Err(ApiError::invalid(
            if tools.is_some() { "tools" } else { "messages" },
            "this model's chat template does not support tool calls",
        ));
    }
    let mut extra = serde_json::Map::new();
    if let Some(t) = thinking {
        extra.insert("thinking".into(), json!(t));
        extra.insert("enable_thinking".into(), json!(t));
    }
    if let Some(t) = &tools {
        extra.insert("tools".into(), t.defs.clone());
    }
    let (rendered, ids, primed) = with_tokenizer(st, move |tok| {
        for (param, name, v) in vars {
            if !tok.template_mentions(&name) {
                return Err(ApiError::invalid(
                    &param,
                    format!("this model's chat template has no `{name}` (it would be ignored)"),
                ));
            }
            extra.insert(name, v);
        }
        let generation = add_generation_prompt && !continues;
        let mut r = tok
            .render_chat(&messages, generation, &Value::Object(extra))
            .map_err(|e| ApiError::invalid("messages", format!("{e:#}")))?;
        if continues {
            // as transformers' continue_final_message: the text stops where the last
            // message's content does
            let last = messages.last().and_then(|m| m.content.as_deref()).unwrap_or("").trim();
            match r.text.rfind(last) {
                Some(i) if !last.is_empty() => r.text.truncate(i + last.len()),
                _ => {
                    return Err(ApiError::invalid(
                        "messages",
                        "the last message cannot be continued: the template does not render its content as given",
                    ))
                }
            }
        }
        let mut primed = primes_reasoning(&r.text);
        if thinking == Some(false) && primed && !continues {
            // the template opened a think block it cannot skip: close it empty
            r.text.push_str("</think>\n\n");
            primed = false;
        }
        if tok.surely_longer_than(&r.plain(), limit) {
            return Ok(None);
        }
        let ids = tok
            .encode_rendered(&r)
            .map_err(|e| ApiError::invalid("messages", format!("{e:#}")))?;
        Ok::<_, ApiError>(Some((r, ids, primed)))
    })
    .await?
    .ok_or_else(|| too_long(st, "messages"))?;
    Ok(ChatPrompt {
        rendered,
        ids,
        primed,
        tools,
    })
}

async fn chat_completions(State(st): State<Shared>, req: Request) -> Response {
    let job = async {
        let (o, key) = read_json(&st, req).await?;
        let common = api::common(&o, true, st.vocab_size)?;
        let tenant = cache_tenant(key, &common);
        check_model(&st, common.model.as_ref())?;
        // the prompt must leave room for one generated token
        let p = chat_prompt(&st, &o, true, st.max_model_len - 1).await?;
        let (prompt, primed) = (p.ids, p.primed);
        // offered tools are read out of the answer unless the request says `none`
        let tools = p
            .tools
            .filter(|t| t.choice != ToolChoice::None && !t.specs.is_empty());
        let max_tokens = budget(&st, "messages", prompt.len(), common.max_tokens)?;
        let constraint = constrain(&st, &o, &common, tools.as_ref(), primed).await?;
        Ok::<Job, ApiError>(Job {
            echo: None,
            constraint,
            tools,
            prompt,
            tenant,
            primed,
            chat: true,
            common,
            max_tokens,
        })
    }
    .await;
    run(st, "chat", job).await
}

async fn completions(State(st): State<Shared>, req: Request) -> Response {
    let job = async {
        let (o, key) = read_json(&st, req).await?;
        let common = api::common(&o, false, st.vocab_size)?;
        let tenant = cache_tenant(key, &common);
        check_model(&st, common.model.as_ref())?;
        if common.vote {
            return Err(ApiError::invalid(
                "whale_vote",
                "whale_vote is available on chat completions",
            ));
        }
        let text = match o.get("prompt") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
                a[0].as_str().map(String::from)
            }
            _ => None,
        };
        let suffix = match o.get("suffix") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(v) => {
                return Err(ApiError::invalid(
                    "suffix",
                    format!("`suffix` must be a string, got {v}"),
                ))
            }
        };
        // the prompt as given, for `echo` (token ids, and echo with logprobs: decoded below)
        let given = (common.echo && common.top_logprobs.is_none())
            .then(|| text.clone())
            .flatten();
        let text = match (text, suffix) {
            (t, None) => t,
            (Some(prefix), Some(suffix)) => {
                if common.echo {
                    return Err(ApiError::invalid(
                        "echo",
                        "`echo` with `suffix` is not supported",
                    ));
                }
                Some(st.tokenizer.fim_prompt(&prefix, &suffix).ok_or_else(|| {
                    ApiError::invalid(
                        "suffix",
                        "`suffix` needs fill-in-the-middle tokens, which this model's vocabulary does not have",
                    )
                })?)
            }
            (None, Some(_)) => {
                return Err(ApiError::invalid(
                    "suffix",
                    "`suffix` needs the prompt as a string",
                ))
            }
        };
        let limit = st.max_model_len - 1;
        let prompt = match (text, o.get("prompt")) {
            (Some(text), _) => with_tokenizer(&st, move |tok| {
                if tok.surely_longer_than(&text, limit) {
                    return Ok(None);
                }
                tok.encode_prompt(&text)
                    .map(Some)
                    .map_err(|e| ApiError::invalid("prompt", format!("{e:#}")))
            })
            .await?
            .ok_or_else(|| too_long(&st, "prompt"))?,
            (None, Some(Value::Array(a))) if !a.is_empty() && a.iter().all(|x| x.is_u64()) => {
                token_ids(a, st.vocab_size)?
            }
            _ => {
                return Err(ApiError::invalid(
                    "prompt",
                    "`prompt` must be a string or a list of token ids",
                ))
            }
        };
        if prompt.is_empty() {
            return Err(ApiError::invalid("prompt", "`prompt` must not be empty"));
        }
        // OpenAI's default for completions is 16 tokens, less where the context is shorter
        let room = st.max_model_len.saturating_sub(prompt.len());
        let asked = common.max_tokens.or(Some(16.min(room.max(1))));
        let max_tokens = budget(&st, "prompt", prompt.len(), asked)?;
        // with logprobs the echoed text is what the prompt's tokens spell (special tokens
        // included), so the tokens, their offsets and the text agree
        let echo = common
            .echo
            .then(|| given.unwrap_or_else(|| st.tokenizer.decode(&prompt).unwrap_or_default()));
        let constraint = constrain(&st, &o, &common, None, false).await?;
        Ok(Job {
            echo,
            constraint,
            tools: None,
            prompt,
            tenant,
            primed: false,
            chat: false,
            common,
            max_tokens,
        })
    }
    .await;
    run(st, "completions", job).await
}

/// A prompt given as token ids: each must name a token of the model's vocabulary (an id past
/// it would fail the whole batched step, and a cast would wrap ids above 2^32).
pub(crate) fn token_ids(a: &[Value], vocab_size: usize) -> Result<Vec<u32>, ApiError> {
    a.iter()
        .enumerate()
        .map(|(i, x)| match x.as_u64() {
            Some(id) if id < vocab_size as u64 => Ok(id as u32),
            _ => Err(ApiError::invalid(
                "prompt",
                format!(
                    "`prompt[{i}]` = {x} is not a token id of this model (vocab_size {vocab_size})"
                ),
            )),
        })
        .collect()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn request_id(chat: bool) -> String {
    let r: u64 = rand::random();
    format!("{}-{r:016x}", if chat { "chatcmpl" } else { "cmpl" })
}

/// Submits the job's `n` samples and answers, streamed or whole; a rejected request gets its
/// error.
async fn run(st: Shared, endpoint: &'static str, job: Result<Job, ApiError>) -> Response {
    let job = match job {
        Ok(j) => j,
        Err(e) => {
            reqlog::rejected(endpoint, &e);
            return e.into_response();
        }
    };
    let Some(in_flight) = InFlight::take(&st, job.common.n) else {
        let e = ApiError::plain(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "the server is at capacity (--max-queued); retry shortly",
        );
        reqlog::rejected(endpoint, &e);
        let mut r = e.into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return r;
    };
    let mut receivers = Vec::with_capacity(job.common.n);
    let group: u64 = rand::random();
    {
        let tx = st.submit.lock().unwrap();
        for i in 0..job.common.n {
            let (etx, erx) = unbounded_channel();
            let mut sampling = job.common.sampling.clone();
            sampling.seed = sampling.seed.map(|s| s.wrapping_add(i as u64));
            let submit = Submit {
                prompt: job.prompt.clone(),
                primed: job.primed,
                split_reasoning: job.chat,
                params: GenerateParams {
                    max_tokens: job.max_tokens,
                    sampling,
                    stop: job.common.stop.clone(),
                    ignore_eos: job.common.ignore_eos,
                },
                top_logprobs: job.common.top_logprobs,
                prompt_logprobs: job.common.top_logprobs.filter(|_| job.echo.is_some()),
                constraint: job.constraint.as_ref().map(|c| c.fork()),
                tools: job.tools.as_ref().map(|t| {
                    ToolParser::new(
                        st.call_format.clone().expect("checked with the prompt"),
                        t.specs.iter().map(|s| s.name.clone()).collect(),
                        if t.parallel { usize::MAX } else { 1 },
                    )
                }),
                events: etx,
                tenant: job.tenant.clone(),
                group,
            };
            if tx.send(submit).is_err() {
                return ApiError::plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    "the engine has stopped",
                )
                .into_response();
            }
            receivers.push(erx);
        }
    }
    st.metrics.requests.inc();
    st.metrics.prompt_tokens.add(job.prompt.len() as u64);
    let log = reqlog::RequestLog::new(
        request_id(job.chat),
        st.name.clone(),
        endpoint,
        job.common.stream,
        job.common.n,
        job.prompt.len(),
    );
    if job.common.stream {
        if job.common.vote {
            return ApiError::invalid("whale_vote", "whale_vote needs `stream: false`")
                .into_response();
        }
        stream_response(st, job, receivers, in_flight, log).into_response()
    } else {
        let mut in_flight = in_flight;
        let r = whole_response(st, job, receivers, log).await;
        in_flight.answered = true;
        r
    }
}

/// A request's sequences counted as in flight until its answer ends (or its client leaves:
/// then the request counts as cancelled, once, however many samples it had).
struct InFlight {
    st: Shared,
    n: usize,
    answered: bool,
}

impl InFlight {
    /// None when `n` more would pass the server's limit.
    fn take(st: &Shared, n: usize) -> Option<Self> {
        let before = st.in_flight.fetch_add(n, Ordering::AcqRel);
        if before + n > st.max_in_flight {
            st.in_flight.fetch_sub(n, Ordering::AcqRel);
            return None;
        }
        Some(InFlight {
            st: st.clone(),
            n,
            answered: false,
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.answered {
            self.st.metrics.cancelled.inc();
        }
        self.st.in_flight.fetch_sub(self.n, Ordering::AcqRel);
    }
}

/// A token as logprobs name it: its text, or `token_id:N` when the request asks for ids.
fn token_text(st: &AppState, as_ids: bool, id: u32) -> String {
    if as_ids {
        format!("token_id:{id}")
    } else {
        st.tokenizer.decode(&[id]).unwrap_or_default()
    }
}

/// Chat logprobs: `{"content": [{token, logprob, bytes, top_logprobs}]}`.
fn chat_logprobs(st: &AppState, as_ids: bool, lps: &[(TokenLogprob, usize)]) -> Value {
    let entry = |id: u32, l: f32| {
        let t = token_text(st, as_ids, id);
        json!({"token": t, "logprob": l, "bytes": st.tokenizer.decode(&[id]).unwrap_or_default().into_bytes()})
    };
    let content: Vec<Value> = lps
        .iter()
        .map(|(lp, _)| {
            let mut e = entry(lp.id, lp.logprob);
            e["top_logprobs"] = lp.top.iter().map(|&(id, l)| entry(id, l)).collect();
            e
        })
        .collect();
    json!({ "content": content })
}

/// The top alternatives of one token, in the completions shape: token -> logprob.
fn top_alternatives(st: &AppState, as_ids: bool, lp: &TokenLogprob) -> Value {
    let mut m = serde_json::Map::new();
    for &(id, l) in &lp.top {
        // two ids can decode to the same text; the likelier one is kept
        m.entry(token_text(st, as_ids, id)).or_insert(json!(l));
    }
    Value::Object(m)
}

/// Completions logprobs, in OpenAI's legacy shape: parallel lists of tokens, their logprobs,
/// the top alternatives (token -> logprob) and each token's character offset in the text.
fn completion_logprobs(st: &AppState, as_ids: bool, lps: &[(TokenLogprob, usize)]) -> Value {
    json!({
        "tokens": lps.iter().map(|(lp, _)| token_text(st, as_ids, lp.id)).collect::<Vec<_>>(),
        "token_logprobs": lps.iter().map(|(lp, _)| lp.logprob).collect::<Vec<_>>(),
        "top_logprobs": lps.iter().map(|(lp, _)| top_alternatives(st, as_ids, lp)).collect::<Vec<_>>(),
        "text_offset": lps.iter().map(|(_, o)| *o).collect::<Vec<_>>(),
    })
}

/// Puts the prompt's tokens before the answer's in completions logprobs (`echo`): the first
/// has no logprob, as in OpenAI's shape. Offsets count the characters released before each
/// token, as the answer's do (one incremental decode, not a decode per prefix).
fn prepend_prompt(
    st: &AppState,
    as_ids: bool,
    prompt: &[u32],
    lps: &[TokenLogprob],
    v: &mut Value,
) {
    let mut decoder = whale_engine::stream::StreamDecoder::default();
    let mut chars = 0;
    let mut tokens = vec![json!(token_text(st, as_ids, prompt[0]))];
    let mut logprobs = vec![Value::Null];
    let mut tops = vec![Value::Null];
    let mut offsets = vec![json!(0)];
    for (i, lp) in lps.iter().enumerate() {
        chars += decoder
            .push(&st.tokenizer, prompt[i])
            .unwrap_or_default()
            .chars()
            .count();
        tokens.push(json!(token_text(st, as_ids, lp.id)));
        logprobs.push(json!(lp.logprob));
        tops.push(top_alternatives(st, as_ids, lp));
        offsets.push(json!(chars));
    }
    for (k, mut head) in [
        ("tokens", tokens),
        ("token_logprobs", logprobs),
        ("top_logprobs", tops),
        ("text_offset", offsets),
    ] {
        if let Some(rest) = v[k].as_array() {
            head.extend(rest.iter().cloned());
        }
        v[k] = Value::Array(head);
    }
}

#[derive(Default, Clone)]
struct Choice {
    reasoning: String,
    content: String,
    /// each token's logprobs and the character offset of its text in the answer
    logprobs: Vec<(TokenLogprob, usize)>,
    /// tool calls made, each with its id
    calls: Vec<(String, ToolCall)>,
    /// the prompt's logprobs (completions with `echo`)
    prompt_lps: Option<Vec<TokenLogprob>>,
    finish: Option<FinishReason>,
    completion_tokens: usize,
    cached: usize,
    error: Option<Fault>,
}

fn usage(prompt: usize, choices: &[Choice]) -> Value {
    let completion: usize = choices.iter().map(|c| c.completion_tokens).sum();
    // prompt tokens are counted once; the cache hit is the first sample's
    let cached = choices.first().map(|c| c.cached).unwrap_or(0);
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_cache_hit_tokens": cached,
        "prompt_cache_miss_tokens": prompt - cached,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

/// A tool call's id, as OpenAI spells them, where the model's format does not name calls itself.
fn call_id() -> String {
    format!("call_{:024x}", rand::random::<u128>() >> 32)
}

/// `tool_calls` when the answer ended by itself with calls made.
fn finish_reason(f: Option<FinishReason>, called: bool) -> &'static str {
    match f {
        Some(FinishReason::Stop) | None if called => "tool_calls",
        Some(f) => f.as_str(),
        None => "stop",
    }
}

async fn whole_response(
    st: Shared,
    job: Job,
    receivers: Vec<UnboundedReceiver<Event>>,
    mut log: reqlog::RequestLog,
) -> Response {
    let echo = job.echo.clone().unwrap_or_default();
    let mut choices = vec![
        Choice {
            content: echo.clone(),
            ..Choice::default()
        };
        receivers.len()
    ];
    for (c, mut rx) in choices.iter_mut().zip(receivers) {
        let mut chars = echo.chars().count();
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::Delta {
                    reasoning,
                    content,
                    calls,
                    logprob,
                } => {
                    if let Some(lp) = logprob {
                        c.logprobs.push((lp, chars));
                    }
                    if !(reasoning.is_empty() && content.is_empty() && calls.is_empty()) {
                        log.token();
                    }
                    c.calls.extend(
                        calls
                            .into_iter()
                            .map(|k| (k.id.clone().unwrap_or_else(call_id), k)),
                    );
                    c.reasoning.push_str(&reasoning);
                    c.content.push_str(&content);
                    chars += content.chars().count();
                }
                Event::PromptLogprobs(lps) => c.prompt_lps = Some(lps),
                Event::Done {
                    finish,
                    completion_tokens,
                    cached_tokens,
                    ..
                } => {
                    c.finish = Some(finish);
                    c.completion_tokens = completion_tokens;
                    c.cached = cached_tokens;
                    break;
                }
                Event::Error(e) => {
                    c.error = Some(e);
                    break;
                }
            }
        }
    }
    for c in choices.iter_mut() {
        if c.finish.is_none() && c.error.is_none() {
            c.error = Some(Fault {
                message: "the engine stopped before the request finished".into(),
                internal: true,
            });
        }
    }
    log.completion_tokens = choices.iter().map(|c| c.completion_tokens).sum();
    log.cached_tokens = choices.first().map(|c| c.cached).unwrap_or(0);
    if let Some(e) = choices.iter().find_map(|c| c.error.clone()) {
        let status = if e.internal {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        log.finish(status.as_str(), "error");
        return ApiError::plain(status, "server_error", e.message).into_response();
    }
    let id = log.id.clone();
    let finishes: Vec<&str> = choices
        .iter()
        .map(|c| finish_reason(c.finish, !c.calls.is_empty()))
        .collect();
    log.finish("200", &finishes.join(","));
    let body_choices: Vec<Value> = choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let finish = finish_reason(c.finish, !c.calls.is_empty());
            let as_ids = job.common.tokens_as_ids;
            let logprobs = job.common.top_logprobs.map(|_| {
                if job.chat {
                    chat_logprobs(&st, as_ids, &c.logprobs)
                } else {
                    let mut v = completion_logprobs(&st, as_ids, &c.logprobs);
                    if let Some(lps) = &c.prompt_lps {
                        prepend_prompt(&st, as_ids, &job.prompt, lps, &mut v);
                    }
                    v
                }
            });
            if job.chat {
                let mut message = json!({"role": "assistant", "content": c.content, "reasoning_content": if job.primed || !c.reasoning.is_empty() { Some(&c.reasoning) } else { None }});
                if !c.calls.is_empty() {
                    message["tool_calls"] = c
                        .calls
                        .iter()
                        .map(|(id, k)| json!({"id": id, "type": "function", "function": {"name": k.name, "arguments": k.arguments}}))
                        .collect();
                    if c.content.is_empty() {
                        message["content"] = Value::Null;
                    }
                }
                json!({
                    "index": i,
                    "message": message,
                    "logprobs": logprobs,
                    "finish_reason": finish,
                })
            } else {
                json!({"index": i, "text": c.content, "logprobs": logprobs, "finish_reason": finish})
            }
        })
        .collect();
    let mut body = json!({
        "id": id,
        "object": if job.chat { "chat.completion" } else { "text_completion" },
        "created": now(),
        "model": st.name,
        "choices": body_choices,
        "usage": usage(job.prompt.len(), &choices),
    });
    if job.common.vote {
        let answers: Vec<&str> = choices.iter().map(|c| c.content.as_str()).collect();
        body["whale_vote"] = vote::majority(&answers);
    }
    Json(body).into_response()
}

fn stream_response(
    st: Shared,
    job: Job,
    receivers: Vec<UnboundedReceiver<Event>>,
    in_flight: InFlight,
    log: reqlog::RequestLog,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let n = receivers.len();
    let merged = stream::select_all(
        receivers
            .into_iter()
            .enumerate()
            .map(|(i, rx)| UnboundedReceiverStream::new(rx).map(move |e| (i, e))),
    );
    let id = log.id.clone();
    let created = now();
    let object = if job.chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let st_logprobs = st.clone();
    let chunk = move |choices: Value, usage: Option<Value>| {
        let mut v = json!({"id": id, "object": object, "created": created, "model": st.name, "choices": choices});
        if let Some(u) = usage {
            v["usage"] = u;
        }
        SseEvent::default().data(v.to_string())
    };
    struct S<M> {
        merged: M,
        /// the prompt's text, sent first (completions with `echo`)
        echo: Option<String>,
        /// characters of answer text sent so far, per choice
        chars: Vec<usize>,
        /// tool calls sent so far, per choice
        calls_made: Vec<usize>,
        log: reqlog::RequestLog,
        finishes: Vec<&'static str>,
        choices: Vec<Choice>,
        started: Vec<bool>,
        finished: usize,
        ended: bool,
        in_flight: InFlight,
    }
    let state = S {
        in_flight,
        merged,
        echo: job.echo.clone(),
        chars: vec![0; n],
        calls_made: vec![0; n],
        log,
        finishes: vec![""; n],
        choices: vec![Choice::default(); n],
        started: vec![false; n],
        finished: 0,
        ended: false,
    };
    let chat = job.chat;
    let include_usage = job.common.include_usage;
    let prompt_len = job.prompt.len();
    let echo_logprobs = job.echo.is_some() && job.common.top_logprobs.is_some();
    // the prompt's ids, only where its logprobs are sent
    let prompt = Arc::new(if echo_logprobs {
        job.prompt.clone()
    } else {
        Vec::new()
    });
    let want_logprobs = job.common.top_logprobs.is_some();
    let as_ids = job.common.tokens_as_ids;
    let events = stream::unfold(state, move |mut s| {
        let chunk = chunk.clone();
        let st_logprobs = st_logprobs.clone();
        let prompt = prompt.clone();
        async move {
            if s.ended {
                return None;
            }
            let mut out: Vec<SseEvent> = Vec::new();
            // with logprobs, each choice's echo goes out with the prompt's logprobs, when they come
            if let Some(echo) = s.echo.take_if(|_| !echo_logprobs) {
                let choices: Vec<Value> = (0..s.chars.len())
                    .map(|i| json!({"index": i, "text": echo, "logprobs": null, "finish_reason": null}))
                    .collect();
                s.chars.iter_mut().for_each(|c| *c = echo.chars().count());
                out.push(chunk(json!(choices), None));
                return Some((stream::iter(out.into_iter().map(Ok::<_, Infallible>)), s));
            }
            loop {
                let Some((i, ev)) = s.merged.next().await else {
                    // every sample ended (or the engine went away)
                    if include_usage {
                        out.push(chunk(json!([]), Some(usage(prompt_len, &s.choices))));
                    }
                    out.push(SseEvent::default().data("[DONE]"));
                    s.ended = true;
                    s.in_flight.answered = true;
                    let f = s.finishes.join(",");
                    s.log.finish("200", &f);
                    break;
                };
                match ev {
                    Event::Delta {
                        reasoning,
                        content,
                        calls,
                        logprob,
                    } => {
                        if reasoning.is_empty()
                            && content.is_empty()
                            && calls.is_empty()
                            && logprob.is_none()
                        {
                            continue;
                        }
                        if !(reasoning.is_empty() && content.is_empty() && calls.is_empty()) {
                            s.log.token();
                        }
                        let lp = logprob.filter(|_| want_logprobs).map(|l| {
                            let one = [(l, s.chars[i])];
                            if chat {
                                chat_logprobs(&st_logprobs, as_ids, &one)
                            } else {
                                completion_logprobs(&st_logprobs, as_ids, &one)
                            }
                        });
                        s.chars[i] += content.chars().count();
                        let choice = if chat {
                            let mut delta = json!({});
                            if !s.started[i] {
                                delta["role"] = json!("assistant");
                                s.started[i] = true;
                            }
                            if !reasoning.is_empty() {
                                delta["reasoning_content"] = json!(reasoning);
                            }
                            if !content.is_empty() {
                                delta["content"] = json!(content);
                            }
                            json!({"index": i, "delta": delta, "logprobs": lp, "finish_reason": null})
                        } else {
                            json!({"index": i, "text": content, "logprobs": lp, "finish_reason": null})
                        };
                        if !reasoning.is_empty() || !content.is_empty() || lp.is_some() || !chat {
                            out.push(chunk(json!([choice]), None));
                        }
                        // each call: its id and name, then its arguments in the pieces the
                        // model wrote them in
                        for call in calls {
                            let k = s.calls_made[i];
                            s.calls_made[i] += 1;
                            let mut head = json!({"tool_calls": [{"index": k, "id": call.id.clone().unwrap_or_else(call_id), "type": "function", "function": {"name": call.name, "arguments": ""}}]});
                            if !s.started[i] {
                                head["role"] = json!("assistant");
                                s.started[i] = true;
                            }
                            out.push(chunk(json!([{"index": i, "delta": head, "logprobs": null, "finish_reason": null}]), None));
                            for f in call.fragments {
                                out.push(chunk(json!([{"index": i, "delta": {"tool_calls": [{"index": k, "function": {"arguments": f}}]}, "logprobs": null, "finish_reason": null}]), None));
                            }
                        }
                        break;
                    }
                    Event::Done {
                        finish,
                        completion_tokens,
                        cached_tokens,
                        ..
                    } => {
                        s.choices[i].completion_tokens = completion_tokens;
                        s.choices[i].cached = cached_tokens;
                        s.log.completion_tokens += completion_tokens;
                        if i == 0 {
                            s.log.cached_tokens = cached_tokens;
                        }
                        s.finished += 1;
                        let f = finish_reason(Some(finish), s.calls_made[i] > 0);
                        s.finishes[i] = f;
                        let choice = if chat {
                            json!({"index": i, "delta": {}, "logprobs": null, "finish_reason": f})
                        } else {
                            json!({"index": i, "text": "", "logprobs": null, "finish_reason": finish.as_str()})
                        };
                        out.push(chunk(json!([choice]), None));
                        break;
                    }
                    Event::PromptLogprobs(lps) => {
                        let echo = s.echo.clone().unwrap_or_default();
                        let mut lp = json!({});
                        prepend_prompt(&st_logprobs, as_ids, &prompt, &lps, &mut lp);
                        s.chars[i] = echo.chars().count();
                        out.push(chunk(json!([{"index": i, "text": echo, "logprobs": lp, "finish_reason": null}]), None));
                        break;
                    }
                    Event::Error(e) => {
                        s.log.finish(if e.internal { "500" } else { "503" }, "error");
                        out.push(SseEvent::default().data(json!({"error": {"message": e.message, "type": "server_error", "param": null, "code": null}}).to_string()));
                        break;
                    }
                }
            }
            Some((stream::iter(out.into_iter().map(Ok::<_, Infallible>)), s))
        }
    })
    .flatten();
    Sse::new(events)
}
