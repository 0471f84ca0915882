//! The generation loop: prefill the prompt in the plain attention form, then decode one token
//! per step in the absorbed form over the latent cache.

use anyhow::{bail, Result};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};
use whale_model::{AttentionForm, Checkpoint, Format, Logits, Model};

use crate::reasoning::{Part, ReasoningSplitter};
use crate::sampler::{Sampler, SamplingParams};
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
        let mut sampler = Sampler::new(params.sampling.clone());
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

    /// Text generation from a rendered prompt, streaming reasoning and answer parts.
    pub fn generate_text(
        &self,
        prompt_text: &str,
        prompt_ids: &[u32],
        params: &GenerateParams,
        mut on_part: impl FnMut(&Part),
    ) -> Result<Generation> {
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
        let (ids, mut finish, prefill_time, decode_time) =
            self.generate_ids(prompt_ids, params, |id| {
                let text = decoder.push(tok, id)?;
                let (safe, hit) = stops.push(&text);
                emit(splitter.push(&safe));
                stopped = hit;
                Ok(!hit)
            })?;
        if stopped {
            finish = FinishReason::Stop;
        } else {
            let rest = stops.finish();
            emit(splitter.push(&rest));
        }
        emit(splitter.finish());
        Ok(Generation {
            prompt_tokens: prompt_ids.len(),
            ids,
            reasoning,
            answer,
            finish,
            prefill_time,
            decode_time,
        })
    }

    /// Chat: render the template, then generate.
    pub fn chat(
        &self,
        messages: &[Message],
        params: &GenerateParams,
        on_part: impl FnMut(&Part),
    ) -> Result<Generation> {
        let tok = self.tokenizer()?;
        if messages.is_empty() {
            bail!("no messages to answer");
        }
        let (text, ids) = if tok.has_chat_template() {
            tok.encode_chat(messages, &Value::Null)?
        } else {
            let text = messages
                .iter()
                .map(|m| m.content.as_str())
                .collect::<Vec<_>>()
                .join("\n");
            let ids = tok.encode_prompt(&text)?;
            (text, ids)
        };
        self.generate_text(&text, &ids, params, on_part)
    }
}
