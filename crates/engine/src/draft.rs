//! Speculative decoding with a draft model (a small distill drafting for a larger one that
//! shares its tokenizer): the draft proposes up to `k` tokens one at a time, the main model
//! reads the current token and all drafts in one step and keeps the longest prefix it agrees
//! with, plus its own next token. One main step then costs about one weight read whatever `k`
//! is, so each accepted draft is a token for the price of a draft step.
//!
//! Greedy only: the main model's verification step runs the absorbed form, whose products sum
//! in the same order as a one-token step's, so the ids are exactly `generate_ids`' greedy ids.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;
use whale_model::{AttentionForm, Logits, Model};

use crate::generate::{Engine, FinishReason, GenerateParams, SpecStats};
use crate::sampler::argmax;

/// Refuses a draft whose tokens mean something else: a `tokenizer.json` whose model (vocabulary
/// and merges) or added tokens differ from the main one's, or, where either has none, another
/// vocabulary size. With the same tokenizer the sizes may differ by their padding rows (the
/// 1.5B distill has 151,936, the 7B 152,064).
pub fn check_draft_matches(
    main: &Path,
    draft: &Path,
    main_vocab: usize,
    draft_vocab: usize,
) -> Result<()> {
    let read = |dir: &Path| -> Result<Option<Value>> {
        let p = dir.join("tokenizer.json");
        if !p.exists() {
            return Ok(None);
        }
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        let v: Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not JSON", p.display()))?;
        Ok(Some(serde_json::json!([
            v.get("model"),
            v.get("added_tokens")
        ])))
    };
    let (a, b) = (read(main)?, read(draft)?);
    if a.is_none() || b.is_none() {
        if main_vocab != draft_vocab {
            bail!(
                "--draft-model {}: vocab_size {draft_vocab} differs from the model's {main_vocab} and there is no tokenizer.json to show they share one",
                draft.display()
            );
        }
    } else if a != b {
        bail!(
            "--draft-model {}: its tokenizer.json differs from the model's (vocabulary, merges or added tokens); a draft must share the tokenizer",
            draft.display()
        );
    }
    Ok(())
}

impl Engine {
    /// Greedy generation drafted by `draft`, `k` tokens a step at most; the same ids as
    /// `generate_ids` with greedy sampling.
    pub fn generate_ids_with_draft(
        &self,
        prompt: &[u32],
        params: &GenerateParams,
        draft: &Model,
        k: usize,
        on_token: impl FnMut(u32) -> Result<bool>,
    ) -> Result<(Vec<u32>, FinishReason, SpecStats)> {
        generate_with_draft(
            &self.model,
            &self.eos_token_ids,
            prompt,
            params,
            draft,
            k,
            on_token,
        )
    }
}

/// `Engine::generate_ids_with_draft` for a bare model and its end-of-sequence ids.
pub fn generate_with_draft(
    m: &Model,
    eos_token_ids: &[u32],
    prompt: &[u32],
    params: &GenerateParams,
    draft: &Model,
    k: usize,
    mut on_token: impl FnMut(u32) -> Result<bool>,
) -> Result<(Vec<u32>, FinishReason, SpecStats)> {
    if params.sampling.temperature != 0.0 {
        bail!("--draft-model is greedy only for now: use --temperature 0 (or --greedy)");
    }
    if k == 0 {
        bail!("--draft-tokens must be at least 1");
    }
    let (v, dv) = (m.config.vocab_size, draft.config.vocab_size);
    // a token past the draft's padded vocabulary (a padding id the main model chose) reaches the
    // draft as id 0: its guesses get worse there, the output does not change
    let to_draft = |t: u32| if (t as usize) < dv { t } else { 0 };
    let max_pos = m
        .config
        .max_position_embeddings
        .min(draft.config.max_position_embeddings);
    if prompt.len() >= max_pos {
        bail!(
                "prompt of {} tokens leaves no room to generate within max_position_embeddings ({max_pos}, the smaller of the model's and the draft's)",
                prompt.len()
            );
    }
    // as in `generate_ids`: drafts never run past the budget, so no position past it is read
    let budget = params.max_tokens.min(max_pos - prompt.len());
    let mut stats = SpecStats::default();
    let mut out = Vec::with_capacity(budget);
    if budget == 0 {
        return Ok((out, FinishReason::Length, stats));
    }
    let mut cache = m.new_cache(prompt.len() + budget + 1);
    let mut dcache = draft.new_cache(prompt.len() + budget + 1);
    let l = m.forward(prompt, &mut cache, AttentionForm::Plain, Logits::Last)?;
    let mut next = argmax(&l);
    let dprompt: Vec<u32> = prompt.iter().map(|&t| to_draft(t)).collect();
    draft.forward(&dprompt, &mut dcache, AttentionForm::Plain, Logits::Last)?;
    // tokens accepted but not yet read by the draft (the last draft of a fully accepted run)
    let mut pending: Vec<u32> = Vec::new();
    let is_eos = |t: u32| !params.ignore_eos && eos_token_ids.contains(&t);
    let mut emit = |tok: u32, out: &mut Vec<u32>| -> Result<Option<FinishReason>> {
        if is_eos(tok) {
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
        let mut feed = std::mem::take(&mut pending);
        feed.push(to_draft(next));
        let base = dcache.len() + feed.len();
        let room = budget - out.len();
        let mut drafts: Vec<u32> = Vec::with_capacity(k);
        // how many of the drafts the draft model has read itself
        let mut read = 0;
        while drafts.len() < k.min(room) {
            let l = draft.forward(&feed, &mut dcache, AttentionForm::Absorbed, Logits::Last)?;
            read = drafts.len();
            let d = argmax(&l);
            // a padding id past the main vocabulary cannot be proposed
            if d as usize >= v {
                break;
            }
            drafts.push(d);
            if is_eos(d) {
                break;
            }
            feed = vec![d];
        }
        let before = cache.len();
        let mut verify = Vec::with_capacity(drafts.len() + 1);
        verify.push(next);
        verify.extend_from_slice(&drafts);
        let l = m.forward(&verify, &mut cache, AttentionForm::Absorbed, Logits::All)?;
        let row = |i: usize| argmax(&l[i * v..(i + 1) * v]);
        let accepted = (0..drafts.len())
            .take_while(|&i| row(i) == drafts[i])
            .count();
        stats.drafted += drafts.len();
        stats.accepted += accepted;
        for &d in &drafts[..accepted] {
            if let Some(f) = emit(d, &mut out)? {
                return Ok((out, f, stats));
            }
        }
        next = row(accepted);
        cache.truncate(before + 1 + accepted);
        // the draft keeps what it read of the accepted drafts and reads the rest next step
        let keep = accepted.min(read);
        dcache.truncate(base + keep);
        pending.extend_from_slice(&drafts[keep..accepted]);
    }
}
