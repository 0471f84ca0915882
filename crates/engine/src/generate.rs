//! The generation loop: prefill the prompt in the plain attention form, then decode one token
//! per step in the absorbed form over the latent cache.

use anyhow::{bail, Result};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};
use whale_model::{AttentionForm, Checkpoint, Format, Logits, Model};

use crate::reasoning::{Part, ReasoningSplitter};
use crate::sampler::{argmax, Sampler, SamplingParams};
use crate::stream::{StopMatcher, StreamDecoder};
use crate::tokenizer::{primes_reasoning, ChatTokenizer, Message};

#[derive(Clone, Debug)]
pub struct GenerateParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_tokens: 256,
            sampling: SamplingParams::default(),
            stop: vec![],
            ignore_eos: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// hit max_tokens or the context limit
    Length,
    /// an end-of-sequence token or a stop string
    Stop,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Length => "length",
            FinishReason::Stop => "stop",
        }
    }
}

/// Proposes the token after next. `draft(hidden, follow)` is called with main-model hidden
/// rows (pre-norm) of consecutive confirmed positions p_i and the confirmed token at each p_i + 1,
/// in order and never repeated; it returns its guess for the token after the last of them.
pub trait Drafter {
    fn draft(&mut self, hidden: &[f32], follow: &[u32]) -> Result<u32>;
}

/// The checkpoint's own MTP module as a drafter.
pub struct MtpDrafter<'a> {
    pub model: &'a Model,
    pub cache: whale_model::LatentCache,
}

impl Drafter for MtpDrafter<'_> {
    fn draft(&mut self, hidden: &[f32], follow: &[u32]) -> Result<u32> {
        let l = self.model.mtp_logits(hidden, follow, &mut self.cache)?;
        Ok(argmax(&l[l.len() - self.model.config.vocab_size..]))
    }
}

/// Drafts proposed by the MTP module and how many the main model confirmed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpecStats {
    pub drafted: usize,
    pub accepted: usize,
}

impl SpecStats {
    pub fn acceptance(&self) -> f64 {
        if self.drafted == 0 {
            0.0
        } else {
            self.accepted as f64 / self.drafted as f64
        }
    }
}

#[derive(Clone, Debug)]
pub struct Generation {
    pub prompt_tokens: usize,
    pub ids: Vec<u32>,
    pub reasoning: String,
    pub answer: String,
    pub finish: FinishReason,
    pub prefill_time: Duration,
    pub decode_time: Duration,
}

pub struct Engine {
    pub model: Model,
    pub tokenizer: Option<ChatTokenizer>,
    pub eos_token_ids: Vec<u32>,
}

fn generation_eos(dir: &Path) -> Vec<u32> {
    let Ok(text) = std::fs::read_to_string(dir.join("generation_config.json")) else {
        return vec![];
    };
    let Ok(v) = serde_json::from_str::<Value>(&text) else {
        return vec![];
    };
    match v.get("eos_token_id") {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => vec![],
    }
}

impl Engine {
    /// Loads the checkpoint; the tokenizer is optional (token-id commands do not need one).
    pub fn load(dir: &Path, need_tokenizer: bool) -> Result<Self> {
        Self::load_as(dir, need_tokenizer, None)
    }

    /// As `load`, with linear layers converted once to `dtype`.
    pub fn load_as(dir: &Path, need_tokenizer: bool, dtype: Option<Format>) -> Result<Self> {
        let mut ck = Checkpoint::open(dir)?;
        ck.dtype = dtype;
        let model = Model::load(&ck)?;
        let tokenizer = if need_tokenizer || dir.join("tokenizer.json").exists() {
            Some(ChatTokenizer::load(dir)?)
        } else {
            None
        };
        let eos_token_ids = Self::eos_for(dir, &model.config);
        Ok(Engine {
            model,
            tokenizer,
            eos_token_ids,
        })
    }

    /// End-of-sequence ids: generation_config.json's, else config.json's.
    pub fn eos_for(dir: &Path, cfg: &whale_model::ModelConfig) -> Vec<u32> {
        let e = generation_eos(dir);
        if e.is_empty() {
            cfg.eos_token_ids.clone()
        } else {
            e
        }
    }

    pub fn tokenizer(&self) -> Result<&ChatTokenizer> {
        self.tokenizer
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("this model directory has no tokenizer.json"))
    }

    /// Token-level generation. `on_token` sees each new id and returns false to stop early.
    pub fn generate_ids(
        &self,
        prompt: &[u32],
        params: &GenerateParams,
        mut on_token: impl FnMut(u32) -> Result<bool>,
    ) -> Result<(Vec<u32>, FinishReason, Duration, Duration)> {
        params.sampling.validate()?;
        let max_pos = self.model.config.max_position_embeddings;
        if prompt.len() >= max_pos {
            bail!(
                "prompt of {} tokens leaves no room to generate within max_position_embeddings ({max_pos})",
                prompt.len()
            );
        }
        let budget = params.max_tokens.min(max_pos - prompt.len());
        let mut out = Vec::with_capacity(budget);
        if budget == 0 {
            return Ok((out, FinishReason::Length, Duration::ZERO, Duration::ZERO));
        }
        let mut sampler = Sampler::for_prompt(params.sampling.clone(), prompt);
        let mut cache = self.model.new_cache(prompt.len() + budget);
        let t0 = Instant::now();
        let mut logits =
            self.model
                .forward(prompt, &mut cache, AttentionForm::Plain, Logits::Last)?;
        let prefill = t0.elapsed();
        let t1 = Instant::now();
        let finish = loop {
            let tok = sampler.sample(&logits);
            if !params.ignore_eos && self.eos_token_ids.contains(&tok) {
                break FinishReason::Stop;
            }
            out.push(tok);
            if !on_token(tok)? {
                break FinishReason::Stop;
            }
            if out.len() >= budget {
                break FinishReason::Length;
            }
            logits =
                self.model
                    .forward(&[tok], &mut cache, AttentionForm::Absorbed, Logits::Last)?;
        };
        Ok((out, finish, prefill, t1.elapsed()))
    }

    /// Greedy generation with MTP speculative decoding: the checkpoint's MTP module drafts one
    /// token, the next main step verifies it together with the current token. The verification
    /// runs the absorbed form, whose every product sums in the same order as a one-token step,
    /// so the ids are exactly those of `generate_ids` with greedy sampling.
    pub fn generate_ids_speculative(
        &self,
        prompt: &[u32],
        params: &GenerateParams,
        on_token: impl FnMut(u32) -> Result<bool>,
    ) -> Result<(Vec<u32>, FinishReason, SpecStats)> {
        let cap = prompt.len()
            + params
                .max_tokens
                .min(self.model.config.max_position_embeddings)
            + 2;
        let mut drafter = MtpDrafter {
            model: &self.model,
            cache: self.model.new_mtp_cache(cap).ok_or_else(|| {
                anyhow::anyhow!("this checkpoint has no MTP module to draft with")
            })?,
        };
        self.generate_ids_drafted(prompt, params, &mut drafter, on_token)
    }

    /// Greedy speculative decoding with any drafter of one token per step.
    pub fn generate_ids_drafted(
        &self,
        prompt: &[u32],
        params: &GenerateParams,
        drafter: &mut dyn Drafter,
        mut on_token: impl FnMut(u32) -> Result<bool>,
    ) -> Result<(Vec<u32>, FinishReason, SpecStats)> {
        if params.sampling.temperature != 0.0 {
            bail!("--speculative mtp is greedy only for now: use --temperature 0 (or --greedy)");
        }
        let m = &self.model;
        let max_pos = m.config.max_position_embeddings;
        if prompt.len() + 1 >= max_pos {
            bail!(
                "prompt of {} tokens leaves no room to generate within max_position_embeddings ({max_pos})",
                prompt.len()
            );
        }
        // verification feeds two tokens, so keep one position spare
        let budget = params.max_tokens.min(max_pos - prompt.len() - 1);
        let mut stats = SpecStats::default();
        let mut out = Vec::with_capacity(budget);
        if budget == 0 {
            return Ok((out, FinishReason::Length, stats));
        }
        let mut cache = m.new_cache(prompt.len() + budget + 2);
        let (d, v) = (m.hidden_width(), m.config.vocab_size);
        let h = m.forward_hidden(prompt, &mut cache, AttentionForm::Plain)?;
        let mut next = argmax(&m.logits(&h[h.len() - d..]));
        // the drafter sees (h_i, x_{i+1}) for every prompt position
        let mut follow: Vec<u32> = prompt[1..].to_vec();
        follow.push(next);
        let mut draft = drafter.draft(&h, &follow)?;
        // emits one token; Some(reason) when generation ends
        let mut emit = |tok: u32, out: &mut Vec<u32>| -> Result<Option<FinishReason>> {
            if !params.ignore_eos && self.eos_token_ids.contains(&tok) {
                return Ok(Some(FinishReason::Stop));
            }
            out.push(tok);
            if !on_token(tok)? {
                return Ok(Some(FinishReason::Stop));
            }
            Ok((out.len() >= budget).then_some(FinishReason::Length))
        };
        loop {
            if let Some(f) = emit(next, &mut out)? {
                return Ok((out, f, stats));
            }
            let hv = m.forward_hidden(&[next, draft], &mut cache, AttentionForm::Absorbed)?;
            let l = m.logits(&hv);
            let truth = argmax(&l[..v]);
            stats.drafted += 1;
            if truth == draft {
                stats.accepted += 1;
                if let Some(f) = emit(draft, &mut out)? {
                    return Ok((out, f, stats));
                }
                let after = argmax(&l[v..]);
                draft = drafter.draft(&hv, &[draft, after])?;
                next = after;
            } else {
                cache.truncate(cache.len() - 1);
                draft = drafter.draft(&hv[..d], &[truth])?;
                next = truth;
            }
        }
    }

    /// Text generation from a rendered prompt, streaming reasoning and answer parts.
    pub fn generate_text(
        &self,
        prompt_text: &str,
        prompt_ids: &[u32],
        params: &GenerateParams,
        on_part: impl FnMut(&Part),
    ) -> Result<Generation> {
        Ok(self
            .generate_text_drafted(prompt_text, prompt_ids, params, None, on_part)?
            .0)
    }

    /// [`Engine::generate_text`], drafted by `draft` (a model with the same tokenizer, `k`
    /// tokens a step, greedy only) where given, with the drafts' acceptance. Drafted, the
    /// prefill is not timed apart: `decode_time` is the whole generation's.
    pub fn generate_text_drafted(
        &self,
        prompt_text: &str,
        prompt_ids: &[u32],
        params: &GenerateParams,
        draft: Option<(&Model, usize)>,
        mut on_part: impl FnMut(&Part),
    ) -> Result<(Generation, Option<SpecStats>)> {
        let tok = self.tokenizer()?;
        let mut decoder = StreamDecoder::default();
        let mut stops = StopMatcher::new(params.stop.clone());
        let mut splitter = ReasoningSplitter::new(primes_reasoning(prompt_text));
        let (mut reasoning, mut answer) = (String::new(), String::new());
        let mut emit = |parts: Vec<Part>| {
            for p in parts {
                match &p {
                    Part::Reasoning(t) => reasoning.push_str(t),
                    Part::Answer(t) => answer.push_str(t),
                }
                on_part(&p);
            }
        };
        let mut stopped = false;
        let on_token = |id| {
            let text = decoder.push(tok, id)?;
            let (safe, hit) = stops.push(&text);
            emit(splitter.push(&safe));
            stopped = hit;
            Ok(!hit)
        };
        let (ids, mut finish, prefill_time, decode_time, stats) = match draft {
            None => {
                let (ids, f, p, d) = self.generate_ids(prompt_ids, params, on_token)?;
                (ids, f, p, d, None)
            }
            Some((dm, k)) => {
                let t = Instant::now();
                let (ids, f, st) =
                    self.generate_ids_with_draft(prompt_ids, params, dm, k, on_token)?;
                (ids, f, Duration::ZERO, t.elapsed(), Some(st))
            }
        };
        if stopped {
            finish = FinishReason::Stop;
        } else {
            let rest = stops.finish();
            emit(splitter.push(&rest));
        }
        emit(splitter.finish());
        let g = Generation {
            prompt_tokens: prompt_ids.len(),
            ids,
            reasoning,
            answer,
            finish,
            prefill_time,
            decode_time,
        };
        Ok((g, stats))
    }

    /// Chat: render the template, then generate.
    pub fn chat(
        &self,
        messages: &[Message],
        params: &GenerateParams,
        on_part: impl FnMut(&Part),
    ) -> Result<Generation> {
        Ok(self.chat_drafted(messages, params, None, on_part)?.0)
    }

    /// [`Engine::chat`], drafted by a smaller model where given (see
    /// [`Engine::generate_text_drafted`]).
    pub fn chat_drafted(
        &self,
        messages: &[Message],
        params: &GenerateParams,
        draft: Option<(&Model, usize)>,
        on_part: impl FnMut(&Part),
    ) -> Result<(Generation, Option<SpecStats>)> {
        let tok = self.tokenizer()?;
        if messages.is_empty() {
            bail!("no messages to answer");
        }
        let (text, ids) = if tok.has_chat_template() {
            tok.encode_chat(messages, &Value::Null)?
        } else {
            let text = messages
                .iter()
                .map(|m| m.text())
                .collect::<Vec<_>>()
                .join("\n");
            let ids = tok.encode_prompt(&text)?;
            (text, ids)
        };
        self.generate_text_drafted(&text, &ids, params, draft, on_part)
    }
}
