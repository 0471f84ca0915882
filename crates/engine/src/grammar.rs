//! Constrained decoding: a token mask per step from a grammar, by llguidance. It serves
//! structured output (`response_format`) and forced tool calls. The reasoning is left free: on a
//! prompt that opens a `<think>` block, the constraint starts once the model has closed it.

use anyhow::{anyhow, bail, Context, Result};
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;

/// What the answer must be.
#[derive(Clone, Debug, PartialEq)]
pub enum Spec {
    /// any JSON object (`response_format: {"type": "json_object"}`)
    JsonObject,
    /// a JSON value valid against this schema
    JsonSchema(Value),
    /// a grammar in llguidance's Lark dialect (`<[id]>` names a token by id)
    Lark(String),
}

/// The grammar compiler for one model's vocabulary, built once.
pub struct Grammars {
    factory: ParserFactory,
    /// the token that closes a reasoning block, when the vocabulary has it as one token
    think_end: Option<u32>,
    eos: u32,
}

impl Grammars {
    /// From the model directory's tokenizer (`tokenizer.json`, or `tiktoken.model` converted);
    /// `vocab_size` is the model's (its logits' width, which may exceed the tokenizer's), `eos`
    /// the id the grammar ends with.
    pub fn load(dir: &Path, vocab_size: usize, eos: u32) -> Result<Self> {
        // the file the vocabulary came from, for the errors
        let path = match dir.join("tokenizer.json") {
            p if p.exists() => p,
            _ => dir.join(crate::tiktoken::RANK_FILE),
        };
        let json: Value = serde_json::from_str(&crate::tiktoken::tokenizer_source(dir)?)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        let mut words = llguidance::token_bytes_from_tokenizer_json(&json)
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        // special tokens past the model's logits (Kimi's tokenizer names two more ids than
        // Kimi-K2's 163,840 logits) can never be sampled: they leave the trie
        let added: std::collections::HashSet<u64> = json["added_tokens"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["id"].as_u64())
            .collect();
        while words.len() > vocab_size && added.contains(&(words.len() as u64 - 1)) {
            words.pop();
        }
        if words.len() > vocab_size {
            bail!(
                "{} has {} tokens, more than the model's vocab_size {vocab_size}",
                path.display(),
                words.len()
            );
        }
        // ids past the tokenizer's are never allowed: an empty token is no path in the trie
        words.resize(vocab_size, vec![]);
        let think_end = words
            .iter()
            .position(|w| w.as_slice() == b"\xFF</think>" || w.as_slice() == b"</think>")
            .map(|i| i as u32);
        let info = TokRxInfo::new(vocab_size as u32, eos);
        let env: Arc<dyn TokenizerEnv + Sync> =
            Arc::new(ApproximateTokEnv::new(TokTrie::from(&info, &words)));
        let mut factory = ParserFactory::new_simple(&env)?;
        factory.quiet();
        Ok(Grammars {
            factory,
            think_end,
            eos,
        })
    }

    /// A constraint for one sequence; an error names what does not compile. `primed`: the
    /// prompt opens a `<think>` block, and the constraint starts after `</think>`.
    pub fn start(&self, spec: &Spec, primed: bool) -> Result<Constraint> {
        let grammar = match spec {
            Spec::JsonObject => TopLevelGrammar::from_json_schema(json_options(
                serde_json::json!({"type": "object"}),
            )),
            Spec::JsonSchema(s) => TopLevelGrammar::from_json_schema(json_options(s.clone())),
            Spec::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
        };
        let parser = self.factory.create_parser(grammar)?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            bail!("{e}");
        }
        let waiting = match (primed, self.think_end) {
            (false, _) => None,
            (true, Some(t)) => Some(t),
            (true, None) => bail!(
                "the reasoning cannot be left free: `</think>` is not one token of this vocabulary"
            ),
        };
        Ok(Constraint {
            matcher,
            waiting,
            eos: self.eos,
        })
    }
}

/// JSON as whale writes it under a schema: whitespace between tokens is bounded (a space, or a
/// newline and up to 20 spaces or tabs of indent, as llama.cpp's JSON grammar has it), since a
/// free-whitespace grammar lets a model pad the answer until it runs out of tokens. A schema's
/// own `x-guidance` options are kept.
pub(crate) fn json_options(schema: Value) -> Value {
    let mut schema = match schema {
        Value::Bool(true) => serde_json::json!({}),
        s => s,
    };
    if let Some(o) = schema.as_object_mut() {
        o.entry("x-guidance").or_insert_with(
            || serde_json::json!({"whitespace_pattern": "\\x20|\\n[\\x20\\t]{0,20}"}),
        );
    }
    schema
}

/// One sequence's grammar state.
pub struct Constraint {
    matcher: Matcher,
    /// the token the reasoning ends with, until the model has written it
    waiting: Option<u32>,
    eos: u32,
}

impl Constraint {
    /// A copy for another sample of the same request.
    pub fn fork(&self) -> Self {
        Constraint {
            matcher: self.matcher.deep_clone(),
            waiting: self.waiting,
            eos: self.eos,
        }
    }

    /// Whether the grammar applies to the next token (the reasoning is over).
    pub fn active(&self) -> bool {
        self.waiting.is_none()
    }

    /// Bans every token the grammar does not allow next (its logit becomes -inf). While the
    /// reasoning runs only the end of the sequence is banned: the answer the grammar wants is
    /// still to come.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<()> {
        if !self.active() {
            if let Some(l) = logits.get_mut(self.eos as usize) {
                *l = f32::NEG_INFINITY;
            }
            return Ok(());
        }
        // once the grammar is complete, only the end of the sequence is allowed
        let allowed = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| anyhow!("the grammar failed: {e}"))?;
        if allowed.is_zero() {
            bail!("the grammar allows no token here");
        }
        for (i, l) in logits.iter_mut().enumerate() {
            if !allowed.is_allowed(i as u32) {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Moves past the token that was chosen.
    pub fn advance(&mut self, tok: u32) -> Result<()> {
        if self.matcher.is_stopped() {
            return Ok(()); // the end of the sequence, the one token a complete grammar allows
        }
        match self.waiting {
            Some(t) if t == tok => self.waiting = None,
            Some(_) => {}
            None => self
                .matcher
                .consume_token(tok)
                .map_err(|e| anyhow!("the grammar refused token {tok}: {e}"))?,
        }
        Ok(())
    }

    /// Whether the grammar is complete (only the end of the sequence may follow).
    pub fn finished(&self) -> bool {
        self.active() && self.matcher.is_stopped()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> std::path::PathBuf {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/fixtures/tiny-v3")
    }

    /// Greedy decoding over a made-up model that prefers `wish` at every step, masked.
    fn decode(c: &mut Constraint, wish: &[u8], tok: &crate::ChatTokenizer) -> String {
        let mut out = vec![];
        for step in 0..200 {
            let mut logits = vec![0f32; 384];
            // the model wants the wished-for text's bytes in turn (ids of single chars)
            let want = wish[step % wish.len()] as char;
            if let Some(id) = tok.token_id(&want.to_string()) {
                logits[id as usize] = 5.0;
            }
            c.mask(&mut logits).unwrap();
            let id = crate::sampler::argmax(&logits);
            if id == 1 {
                break;
            }
            c.advance(id).unwrap();
            out.push(id);
        }
        tok.decode(&out).unwrap()
    }

    #[test]
    fn a_schema_is_obeyed_whatever_the_model_wants() {
        let tok = crate::ChatTokenizer::load(&fixture()).unwrap();
        let g = Grammars::load(&fixture(), 384, 1).unwrap();
        let schema = serde_json::json!({"type": "object", "properties": {"n": {"type": "integer"}, "ok": {"type": "boolean"}}, "required": ["n", "ok"], "additionalProperties": false});
        let mut c = g.start(&Spec::JsonSchema(schema), false).unwrap();
        let text = decode(&mut c, b"hello world", &tok);
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert!(v["n"].as_f64().is_some_and(|n| n.fract() == 0.0), "{text}");
        assert!(v["ok"].is_boolean(), "{text}");
        assert!(c.finished());
    }

    #[test]
    fn the_reasoning_is_free_until_think_closes() {
        let tok = crate::ChatTokenizer::load(&fixture()).unwrap();
        let g = Grammars::load(&fixture(), 384, 1).unwrap();
        let mut c = g.start(&Spec::JsonObject, true).unwrap();
        let think_end = tok.token_id("</think>").unwrap();
        let mut logits = vec![0f32; 384];
        logits[7] = 1.0;
        c.mask(&mut logits).unwrap();
        // while reasoning only the end of the sequence is banned: the answer is still to come
        assert_eq!(logits[1], f32::NEG_INFINITY);
        logits[1] = 0.0;
        assert!(
            logits.iter().all(|l| l.is_finite()),
            "masked while reasoning"
        );
        c.advance(7).unwrap();
        c.advance(think_end).unwrap();
        assert!(c.active());
        let text = decode(&mut c, b"}", &tok);
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert!(v.is_object(), "{text}");
    }

    #[test]
    fn what_does_not_compile_is_an_error() {
        let g = Grammars::load(&fixture(), 384, 1).unwrap();
        let bad =
            serde_json::json!({"type": "object", "properties": {"a": {"type": "frobnicate"}}});
        assert!(g.start(&Spec::JsonSchema(bad), false).is_err());
        assert!(g
            .start(&Spec::Lark("start: <[999999]>".into()), false)
            .is_err());
    }
}
