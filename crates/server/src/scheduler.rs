//! The engine loop: one thread owns the model and the block pool. Between steps it admits
//! waiting requests; every step runs all running sequences through one batched forward pass
//! (decode tokens plus chunks of prompts being prefilled), samples, and streams events back.
//! When the pool is full, new requests wait; a decode that cannot get a block preempts the
//! newest running sequence, which is recomputed later.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;
use whale_engine::grammar::Constraint;
use whale_engine::reasoning::{Part, ReasoningSplitter};
use whale_engine::sampler::Sampler;
use whale_engine::stream::{StopMatcher, StreamDecoder};
use whale_engine::tools::{ToolCall, ToolOut, ToolParser};
use whale_engine::{ChatTokenizer, FinishReason, GenerateParams};
use whale_model::paged::{BlockPool, PagedBatch, SeqBlocks};
use whale_model::{AttentionForm, Model};

use crate::metrics::Metrics;

/// What the HTTP side hands the engine.
pub struct Submit {
    pub prompt: Vec<u32>,
    /// the rendered prompt opens a `<think>` block
    pub primed: bool,
    /// split the output at `</think>` into reasoning and content (chat); false: all content
    pub split_reasoning: bool,
    pub params: GenerateParams,
    pub top_logprobs: Option<usize>,
    /// the prompt's own logprobs, with this many alternatives (completions with `echo`)
    pub prompt_logprobs: Option<usize>,
    /// what the answer must be (structured output, forced tool calls)
    pub constraint: Option<Constraint>,
    /// reads tool calls out of the answer, when the request offers tools
    pub tools: Option<ToolParser>,
    pub events: UnboundedSender<Event>,
    /// who the prefix cache keeps this request's blocks for: requests of other tenants never
    /// share (or see hits on) its blocks; empty for a server without keys
    pub tenant: Vec<u8>,
    /// samples of one request share a group: later ones start once the first has its prompt
    /// in the cache, so they reuse its full prefix blocks instead of recomputing them
    pub group: u64,
}

#[derive(Clone, Debug)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

#[derive(Debug)]
pub enum Event {
    /// text released by one step, split into reasoning and answer
    Delta {
        reasoning: String,
        content: String,
        /// tool calls completed by this step
        calls: Vec<ToolCall>,
        logprob: Option<TokenLogprob>,
    },
    /// the logprob of every prompt token after the first, once the prompt is prefilled
    PromptLogprobs(Vec<TokenLogprob>),
    Done {
        finish: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
        cached_tokens: usize,
    },
    Error(Fault),
}

/// Why the engine gave up on a sequence.
#[derive(Debug, Clone)]
pub struct Fault {
    pub message: String,
    /// a bug in the engine (a panic), not a lack of room: HTTP 500 rather than 503
    pub internal: bool,
}

impl Fault {
    fn capacity(message: impl Into<String>) -> Event {
        Event::Error(Fault {
            message: message.into(),
            internal: false,
        })
    }

    fn internal(message: impl Into<String>) -> Event {
        Event::Error(Fault {
            message: message.into(),
            internal: true,
        })
    }
}

/// Steps that panic one after another before the engine gives up.
const MAX_PANICS_IN_A_ROW: u32 = 3;

pub struct EngineConfig {
    pub max_batch: usize,
    pub max_model_len: usize,
    /// prompt tokens prefilled per step across all sequences (chunked prefill)
    pub prefill_chunk: usize,
    /// write the context cache this often (when it changed), not only at shutdown
    pub flush_every: Option<Duration>,
}

struct Seq {
    /// tokens that must be in the cache before `pending` (prompt, then fed generations)
    ctx: Vec<u32>,
    prompt_len: usize,
    /// sampled but not yet fed through the model
    pending: Option<u32>,
    blocks: SeqBlocks,
    generated: usize,
    cached_tokens: usize,
    sampler: Sampler,
    params: GenerateParams,
    top_logprobs: Option<usize>,
    prompt_logprobs: Option<usize>,
    /// the prompt's logprobs so far (position p holds token p + 1's)
    prompt_lps: Vec<TokenLogprob>,
    constraint: Option<Constraint>,
    tools: Option<ToolParser>,
    decoder: StreamDecoder,
    stops: StopMatcher,
    splitter: Option<ReasoningSplitter>,
    events: UnboundedSender<Event>,
    started: Instant,
    last_token: Option<Instant>,
    admitted_once: bool,
    group: u64,
    tenant: Vec<u8>,
}

impl Seq {
    fn new(s: Submit) -> Self {
        Seq {
            prompt_len: s.prompt.len(),
            sampler: Sampler::for_prompt(s.params.sampling.clone(), &s.prompt),
            ctx: s.prompt,
            pending: None,
            blocks: SeqBlocks::default(),
            generated: 0,
            cached_tokens: 0,
            stops: StopMatcher::new(s.params.stop.clone()),
            splitter: s.split_reasoning.then(|| ReasoningSplitter::new(s.primed)),
            params: s.params,
            top_logprobs: s.top_logprobs,
            prompt_logprobs: s.prompt_logprobs,
            prompt_lps: Vec::new(),
            constraint: s.constraint,
            tools: s.tools,
            decoder: StreamDecoder::default(),
            events: s.events,
            started: Instant::now(),
            last_token: None,
            admitted_once: false,
            group: s.group,
            tenant: s.tenant,
        }
    }

    /// New text split into reasoning and answer (all answer without a splitter).
    fn parts(&mut self, text: &str) -> Vec<Part> {
        match &mut self.splitter {
            Some(sp) => sp.push(text),
            None if text.is_empty() => vec![],
            None => vec![Part::Answer(text.to_string())],
        }
    }

    /// New text as an event: reasoning, answer, and the tool calls read out of the answer.
    fn split(&mut self, text: &str, logprob: Option<TokenLogprob>) -> Event {
        let parts = self.parts(text);
        self.delta(parts, false, logprob)
    }

    /// What the splitter and the tool parser still hold, at the end.
    fn split_finish(&mut self, rest: &str) -> Event {
        let mut parts = self.parts(rest);
        parts.extend(
            self.splitter
                .as_mut()
                .map(|sp| sp.finish())
                .unwrap_or_default(),
        );
        self.delta(parts, true, None)
    }

    fn delta(&mut self, parts: Vec<Part>, last: bool, logprob: Option<TokenLogprob>) -> Event {
        let (mut reasoning, mut content, mut calls) = (String::new(), String::new(), Vec::new());
        let mut answer = |outs: Vec<ToolOut>, content: &mut String| {
            for o in outs {
                match o {
                    ToolOut::Content(t) => content.push_str(&t),
                    ToolOut::Call(c) => calls.push(c),
                }
            }
        };
        for p in parts {
            match p {
                Part::Reasoning(t) => reasoning.push_str(&t),
                Part::Answer(t) => match &mut self.tools {
                    Some(tp) => answer(tp.push(&t), &mut content),
                    None => content.push_str(&t),
                },
            }
        }
        if last {
            if let Some(tp) = &mut self.tools {
                answer(tp.finish(), &mut content);
            }
        }
        Event::Delta {
            reasoning,
            content,
            calls,
            logprob,
        }
    }

    /// Tokens of `ctx` already in the cache.
    fn in_cache(&self) -> usize {
        self.blocks.len
    }
}

/// Token `id`'s logprob under `logits` and the `k` likeliest tokens'.
fn token_logprob(logits: &[f32], id: u32, k: usize) -> TokenLogprob {
    let lp = log_softmax(logits);
    let mut top: Vec<(u32, f32)> = lp.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    top.truncate(k);
    TokenLogprob {
        id,
        logprob: lp[id as usize],
        top,
    }
}

fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let z = logits.iter().map(|&x| (x - m).exp()).sum::<f32>().ln() + m;
    logits.iter().map(|&x| x - z).collect()
}

pub struct Engine {
    /// where cached prefixes are kept across restarts, and the fingerprint of this model
    pub persist: Option<(std::path::PathBuf, u64)>,
    pub model: Model,
    pub tokenizer: Arc<ChatTokenizer>,
    pub eos: Vec<u32>,
    pub pool: BlockPool,
    pub cfg: EngineConfig,
    pub metrics: Arc<Metrics>,
    /// when the context cache was last written, and the pool's prefix changes then
    pub saved_at: (Instant, u64),
    /// set at the shutdown deadline: every request left gets an error and the loop ends
    pub stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Engine {
    /// Runs until every sender of `rx` is gone and no sequence is left; cached prefixes are
    /// read from and written back to the context-cache directory when there is one.
    pub fn run(mut self, rx: Receiver<Submit>) {
        // `/health` reads this: the engine is down once this thread leaves, however it leaves
        struct Up(Arc<Metrics>);
        impl Drop for Up {
            fn drop(&mut self) {
                self.0
                    .engine_up
                    .store(false, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let _up = Up(self.metrics.clone());
        if let Some((path, fp)) = &self.persist {
            match self.pool.load_prefixes(path, *fp) {
                Ok(r) => {
                    if r.loaded > 0 || r.skipped > 0 {
                        tracing::info!(
                            "{} cached prefix blocks loaded from {}, {} skipped",
                            r.loaded,
                            path.display(),
                            r.skipped
                        );
                    }
                    for n in r.notes {
                        tracing::warn!("context cache {}: {n}", path.display());
                    }
                }
                Err(e) => tracing::error!("cannot read {}: {e}", path.display()),
            }
        }
        self.saved_at = (Instant::now(), self.pool.prefix_changes());
        let clean = self.run_loop(rx);
        // after repeated panics the pool was emptied: keep the file as it was
        if clean {
            self.save(true);
        }
    }

    /// Writes the context cache if it changed since the last write, and (unless `always`)
    /// the flush interval has passed.
    fn save(&mut self, always: bool) {
        let Some((path, fp)) = &self.persist else {
            return;
        };
        let (at, changes) = self.saved_at;
        let due = match self.cfg.flush_every {
            _ if always => true,
            Some(every) => at.elapsed() >= every,
            None => false,
        };
        if !due || changes == self.pool.prefix_changes() {
            return;
        }
        match self.pool.save_prefixes(path, *fp) {
            Ok(n) if always => {
                tracing::info!("{n} cached prefix blocks saved to {}", path.display())
            }
            Ok(_) => {}
            Err(e) => tracing::error!("cannot write {}: {e}", path.display()),
        }
        self.saved_at = (Instant::now(), self.pool.prefix_changes());
    }

    /// Serves until the senders are gone (true) or steps keep panicking (false).
    fn run_loop(&mut self, rx: Receiver<Submit>) -> bool {
        let mut waiting: VecDeque<Seq> = VecDeque::new();
        let mut running: Vec<Seq> = Vec::new();
        let mut open = true;
        let mut panics_in_a_row = 0;
        loop {
            if self.stop.load(std::sync::atomic::Ordering::Relaxed) {
                for mut s in running.drain(..) {
                    self.pool.finish(&mut s.blocks);
                    let _ = s
                        .events
                        .send(Fault::capacity("the server is shutting down"));
                }
                for s in waiting.drain(..) {
                    let _ = s
                        .events
                        .send(Fault::capacity("the server is shutting down"));
                }
                return true;
            }
            // take new requests; block only when there is nothing to do
            loop {
                let next = if running.is_empty() && waiting.is_empty() {
                    if !open {
                        return true;
                    }
                    match rx.recv_timeout(Duration::from_millis(200)) {
                        Ok(s) => Some(s),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => {
                            open = false;
                            None
                        }
                    }
                } else {
                    match rx.try_recv() {
                        Ok(s) => Some(s),
                        Err(std::sync::mpsc::TryRecvError::Empty) => break,
                        Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                            open = false;
                            break;
                        }
                    }
                };
                match next {
                    Some(s) => waiting.push_back(Seq::new(s)),
                    None => break,
                }
            }
            // cancelled requests leave at once and free their blocks
            running.retain_mut(|s| {
                let gone = s.events.is_closed();
                if gone {
                    self.pool.finish(&mut s.blocks);
                }
                !gone
            });
            // (cancelled requests are counted at the edge, once per request)
            waiting.retain(|s| !s.events.is_closed());
            // admit in arrival order while there is room in the batch and the pool
            while running.len() < self.cfg.max_batch {
                // a sibling still prefilling the same prompt: wait for its blocks
                let sibling_busy = |w: &Seq| {
                    running
                        .iter()
                        .any(|r| r.group == w.group && r.in_cache() < r.prompt_len)
                };
                let Some(pos) = waiting.iter().position(|w| !sibling_busy(w)) else {
                    break;
                };
                let mut s = waiting.remove(pos).expect("position is in range");
                // a prompt whose logprobs are wanted is computed whole: no cached prefix for it
                let salt = match s.prompt_logprobs {
                    Some(_) => rand::random(),
                    None => self.pool.salt_for(&s.tenant),
                };
                let (blocks, hit) = self.pool.start(&s.ctx, salt);
                s.blocks = blocks;
                if !s.admitted_once {
                    s.cached_tokens = hit;
                    s.admitted_once = true;
                    self.metrics.prefix_lookup(s.ctx.len(), hit);
                }
                // the first chunk must fit; otherwise wait for blocks to come back
                let first = (s.ctx.len() - s.in_cache())
                    .min(self.cfg.prefill_chunk)
                    .max(1);
                if !self.pool.reserve(&mut s.blocks, first) {
                    self.pool.finish(&mut s.blocks);
                    if running.is_empty() {
                        let _ = s.events.send(Fault::capacity(
                            "the prompt does not fit in the cache pool (raise --cache-mem)",
                        ));
                    } else {
                        waiting.push_front(s);
                    }
                    break;
                }
                running.push(s);
            }
            self.metrics.set_queue(
                running.len(),
                waiting.len(),
                self.pool.used(),
                self.pool.available(),
            );
            self.save(false);
            if running.is_empty() {
                continue;
            }
            // A panic in a step (a bug) fails that step's requests, not the server: the pool's
            // bookkeeping may be half-updated, so it starts afresh; waiting requests go on.
            // Steps that keep panicking stop the engine, and `/health` says so.
            let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.step(&mut running, &mut waiting)
            }));
            // the gauges say what the step left, not what the next request finds
            self.metrics.set_queue(
                running.len(),
                waiting.len(),
                self.pool.used(),
                self.pool.available(),
            );
            match step {
                Ok(()) => panics_in_a_row = 0,
                Err(p) => {
                    let what = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic".into());
                    tracing::error!(
                        "an engine step panicked ({what}); failing its {} requests",
                        running.len()
                    );
                    self.metrics.engine_panics.inc();
                    for s in running.drain(..) {
                        let _ = s
                            .events
                            .send(Fault::internal(format!("the engine failed: {what}")));
                    }
                    for s in waiting.iter_mut() {
                        s.blocks = SeqBlocks::default();
                    }
                    self.pool = self.pool.emptied();
                    panics_in_a_row += 1;
                    if panics_in_a_row >= MAX_PANICS_IN_A_ROW {
                        tracing::error!(
                            "{panics_in_a_row} engine steps in a row panicked; the engine stops"
                        );
                        for s in waiting.drain(..) {
                            let _ = s.events.send(Fault::internal("the engine has stopped"));
                        }
                        return false;
                    }
                }
            }
        }
    }

    /// One batched forward pass over every running sequence.
    fn step(&mut self, running: &mut Vec<Seq>, waiting: &mut VecDeque<Seq>) {
        fail::fail_point!("whale-step", running.iter().any(fault_marked), |_| {});
        // what each sequence feeds this step
        let mut budget = self.cfg.prefill_chunk;
        let mut feeds: Vec<Vec<u32>> = Vec::with_capacity(running.len());
        let mut prefilled = 0;
        let mut i = 0;
        while i < running.len() {
            let s = &running[i];
            let feed: Vec<u32> = if s.in_cache() < s.ctx.len() {
                let n = (s.ctx.len() - s.in_cache()).min(budget.max(1));
                budget = budget.saturating_sub(n);
                s.ctx[s.in_cache()..s.in_cache() + n].to_vec()
            } else {
                vec![s
                    .pending
                    .expect("a sequence with its context cached has a pending token")]
            };
            if !self.pool.reserve(&mut running[i].blocks, feed.len()) {
                // the newest running sequence yields its blocks (it may be this one) and is
                // recomputed later; alone and still short: give up on it
                if running.len() > 1 {
                    let victim = running.len() - 1;
                    let mut v = running.remove(victim);
                    self.pool.finish(&mut v.blocks);
                    self.metrics.preempted.inc();
                    tracing::warn!(
                        running = running.len(),
                        "the cache pool is full: the newest sequence is preempted, to be recomputed"
                    );
                    waiting.push_front(v);
                    // the victim comes after every sequence already given a feed (it is the
                    // last), so `feeds` is unchanged; retry `i` unless it was the victim
                    continue;
                }
                let mut s = running.remove(i);
                self.pool.finish(&mut s.blocks);
                let _ = s.events.send(Fault::capacity(
                    "the sequence no longer fits in the cache pool",
                ));
                continue;
            }
            if running[i].in_cache() < running[i].ctx.len() {
                prefilled += feed.len();
            }
            feeds.push(feed);
            i += 1;
        }
        if running.is_empty() {
            return;
        }
        self.metrics.prefill_tokens.add(prefilled as u64);
        let d = self.model.hidden_width();
        let h = match self.forward(running, &feeds) {
            Ok(h) => h,
            Err(e) => {
                // `forward_batch` commits nothing when it fails, so the step can go again one
                // sequence at a time: only a sequence that fails alone is dropped
                tracing::warn!("a batched step failed ({e:#}); retrying its sequences one by one");
                let mut h = Vec::new();
                let mut ok = vec![true; running.len()];
                for i in 0..running.len() {
                    match self.forward(&mut running[i..i + 1], &feeds[i..i + 1]) {
                        Ok(hi) => h.extend_from_slice(&hi),
                        Err(e) => {
                            ok[i] = false;
                            self.metrics.seq_faults.inc();
                            self.pool.finish(&mut running[i].blocks);
                            let _ = running[i].events.send(Fault::internal(format!("{e:#}")));
                        }
                    }
                }
                let mut k = 0;
                running.retain(|_| {
                    k += 1;
                    ok[k - 1]
                });
                let mut k = 0;
                feeds.retain(|_| {
                    k += 1;
                    ok[k - 1]
                });
                h
            }
        };
        if running.is_empty() {
            return;
        }
        self.prompt_logprobs(running, &feeds, &h);
        // sequences whose context is now complete get logits and a new token
        let mut end = 0;
        let mut rows = Vec::new();
        let mut who = Vec::new();
        for (i, (s, f)) in running.iter_mut().zip(&feeds).enumerate() {
            end += f.len();
            if s.pending.is_some() && s.in_cache() == s.ctx.len() + 1 {
                // the pending token went in: it joins the context
                let t = s.pending.take().unwrap();
                s.ctx.push(t);
            }
            if s.in_cache() == s.ctx.len() && s.pending.is_none() {
                rows.extend_from_slice(&h[(end - 1) * d..end * d]);
                who.push(i);
            }
        }
        if !who.is_empty() {
            let logits = self.model.logits(&rows);
            let v = self.model.config.vocab_size;
            let mut done = vec![false; running.len()];
            for (k, &i) in who.iter().enumerate() {
                done[i] = self.emit(&mut running[i], &logits[k * v..(k + 1) * v]);
            }
            let mut i = 0;
            running.retain_mut(|s| {
                let keep = !done[i];
                i += 1;
                if !keep {
                    self.pool.finish(&mut s.blocks);
                }
                keep
            });
        }
    }

    /// The logprobs of the prompt tokens this step's prefill rows predict, for the sequences
    /// that want them; sent once the whole prompt is done.
    fn prompt_logprobs(&mut self, running: &mut [Seq], feeds: &[Vec<u32>], h: &[f32]) {
        let d = self.model.hidden_width();
        let mut row = 0;
        for (s, f) in running.iter_mut().zip(feeds) {
            let first_row = row;
            row += f.len();
            let Some(k) = s.prompt_logprobs else {
                continue;
            };
            // position p predicts token p + 1; a recomputed prefix is not counted twice
            let start = s.in_cache() - f.len();
            let from = start.max(s.prompt_lps.len());
            let to = (start + f.len()).min(s.prompt_len - 1);
            if from < to {
                let rows = &h[(first_row + from - start) * d..(first_row + to - start) * d];
                let v = self.model.config.vocab_size;
                let logits = self.model.logits(rows);
                for (p, l) in (from..to).zip(logits.chunks_exact(v)) {
                    s.prompt_lps.push(token_logprob(l, s.ctx[p + 1], k));
                }
            }
            if s.prompt_lps.len() + 1 == s.prompt_len && s.in_cache() == s.prompt_len {
                let _ = s
                    .events
                    .send(Event::PromptLogprobs(std::mem::take(&mut s.prompt_lps)));
                s.prompt_logprobs = None;
            }
        }
    }

    /// Runs one forward pass over `seqs`, each feeding its `feeds` entry.
    fn forward(&mut self, seqs: &mut [Seq], feeds: &[Vec<u32>]) -> anyhow::Result<Vec<f32>> {
        fail::fail_point!("whale-forward", seqs.iter().any(fault_marked), |_| {
            Err(anyhow::anyhow!("injected forward fault"))
        });
        let feed_refs: Vec<&[u32]> = feeds.iter().map(|f| f.as_slice()).collect();
        let mut batch = PagedBatch::new(
            &mut self.pool,
            seqs.iter_mut().map(|s| &mut s.blocks).collect(),
            feed_refs.clone(),
        );
        self.model
            .forward_batch(&feed_refs, &mut batch, AttentionForm::Auto)
    }

    /// Samples the next token of `s` and streams what it releases; true when `s` is finished.
    fn emit(&mut self, s: &mut Seq, logits: &[f32]) -> bool {
        let tok = match s.constraint.as_mut() {
            None => s.sampler.sample(logits),
            Some(c) => {
                let mut masked = logits.to_vec();
                let tok = c.mask(&mut masked).map(|()| s.sampler.sample(&masked));
                match tok.and_then(|t| c.advance(t).map(|()| t)) {
                    Ok(t) => t,
                    Err(e) => {
                        self.metrics.seq_faults.inc();
                        let _ = s.events.send(Fault::internal(format!("{e:#}")));
                        return true;
                    }
                }
            }
        };
        let now = Instant::now();
        match s.last_token {
            None => self
                .metrics
                .ttft
                .observe(now.duration_since(s.started).as_secs_f64()),
            Some(t) => self
                .metrics
                .itl
                .observe(now.duration_since(t).as_secs_f64()),
        }
        s.last_token = Some(now);
        let finish = |s: &mut Seq, m: &Metrics, reason: FinishReason, events: &mut Vec<Event>| {
            let rest = s.stops.finish();
            events.push(s.split_finish(&rest));
            events.push(Event::Done {
                finish: reason,
                prompt_tokens: s.prompt_len,
                completion_tokens: s.generated,
                cached_tokens: s.cached_tokens,
            });
            m.requests_done.inc();
        };
        let mut events = Vec::new();
        let mut finished = false;
        if !s.params.ignore_eos && self.eos.contains(&tok) {
            finish(s, &self.metrics, FinishReason::Stop, &mut events);
            finished = true;
        } else {
            s.generated += 1;
            self.metrics.generated_tokens.inc();
            let logprob = s.top_logprobs.map(|k| token_logprob(logits, tok, k));
            let text = s.decoder.push(&self.tokenizer, tok).unwrap_or_default();
            let (safe, hit) = s.stops.push(&text);
            events.push(s.split(&safe, logprob));
            let total = s.ctx.len() + 1;
            if hit {
                finish(s, &self.metrics, FinishReason::Stop, &mut events);
                finished = true;
            } else if s.generated >= s.params.max_tokens || total >= self.cfg.max_model_len {
                finish(s, &self.metrics, FinishReason::Length, &mut events);
                finished = true;
            } else {
                s.pending = Some(tok);
            }
        }
        for e in events {
            if s.events.send(e).is_err() {
                // the client is gone
                return true;
            }
        }
        finished
    }
}

/// Fault injection (the `failpoints` feature, in tests): only sequences whose prompt opens
/// with these tokens are hit, so tests running beside them are not.
pub const FAULT_MARKER: [u32; 4] = [377, 376, 375, 374];

#[allow(dead_code)] // read only where fail points are compiled in (tests)
fn fault_marked(s: &Seq) -> bool {
    s.ctx.starts_with(&FAULT_MARKER)
}
