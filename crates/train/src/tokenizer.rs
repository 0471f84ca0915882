//! The tiny model's tokenizer: byte-level BPE (any text encodes) trained on the task corpus, with
//! digits always split one per token (column arithmetic needs to see each digit), DeepSeek's
//! special tokens first, and the R1 chat template.

use anyhow::{anyhow, Context, Result};
use serde_json::json;
use std::path::Path;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

pub const BOS: &str = "<｜begin▁of▁sentence｜>";
pub const EOS: &str = "<｜end▁of▁sentence｜>";
pub const PAD: &str = "<｜▁pad▁｜>";
/// In this order they take ids 0..7.
pub const SPECIALS: [&str; 7] = [
    BOS,
    EOS,
    PAD,
    "<｜User｜>",
    "<｜Assistant｜>",
    "<think>",
    "</think>",
];

/// DeepSeek-R1's template: earlier turns' reasoning is dropped, the generation prompt primes
/// `<think>\n`.
pub const R1_CHAT_TEMPLATE: &str = "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{% set ns = namespace(system_prompt='') %}{%- for message in messages %}{%- if message['role'] == 'system' %}{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}{{ bos_token }}{{ ns.system_prompt }}{%- for message in messages %}{%- if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}{%- endif %}{%- if message['role'] == 'assistant' %}{% set content = message['content'] %}{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}{{ '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}{%- endif %}{%- endfor %}{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}";

/// Trains a byte-level BPE of `vocab_size` tokens (specials included) on `corpus`.
pub fn train(corpus: &[String], vocab_size: usize) -> Result<Tokenizer> {
    let specials: Vec<AddedToken> = SPECIALS
        .iter()
        .map(|s| AddedToken::from(*s, true))
        .collect();
    let mut trainer = TrainerWrapper::BpeTrainer(
        BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(specials)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build(),
    );
    let mut tok = Tokenizer::new(BPE::default());
    tok.with_pre_tokenizer(Some(Sequence::new(vec![
        Digits::new(true).into(),
        ByteLevel::new(false, true, true).into(),
    ])));
    tok.with_decoder(Some(ByteLevel::default()));
    tok.train(&mut trainer, corpus.iter())
        .map_err(|e| anyhow!("tokenizer training failed: {e}"))?;
    tok.add_special_tokens(
        &SPECIALS
            .iter()
            .map(|s| AddedToken::from(*s, true))
            .collect::<Vec<_>>(),
    );
    Ok(tok)
}

/// Writes tokenizer.json and tokenizer_config.json (R1 template) into `dir`.
pub fn save(tok: &Tokenizer, dir: &Path, max_len: usize) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    tok.save(dir.join("tokenizer.json"), false)
        .map_err(|e| anyhow!("cannot write tokenizer.json: {e}"))?;
    let cfg = json!({
        "add_bos_token": true,
        "add_eos_token": false,
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "model_max_length": max_len,
        "legacy": true,
        "tokenizer_class": "LlamaTokenizerFast",
        "chat_template": R1_CHAT_TEMPLATE,
    });
    let path = dir.join("tokenizer_config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&cfg)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specials_come_first_digits_split_and_any_text_round_trips() {
        let corpus: Vec<String> = (0..300)
            .map(|i| format!("What is {} + {}? carry digits 12345", i * 7, i * 13))
            .collect();
        let tok = train(&corpus, 300).unwrap();
        for (i, s) in SPECIALS.iter().enumerate() {
            assert_eq!(tok.token_to_id(s), Some(i as u32), "{s}");
        }
        let enc = tok.encode("What is 482 + 739?", false).unwrap();
        let toks = enc.get_tokens();
        for d in ["4", "8", "2", "7", "3", "9"] {
            assert!(
                toks.iter().any(|t| t == d),
                "{d} should be its own token: {toks:?}"
            );
        }
        assert!(
            toks.len() < "What is 482 + 739?".len(),
            "merges shorten text: {toks:?}"
        );
        for text in ["<think>\nünïcødé 🐳\n</think>\n\nok", "Ωmega 42"] {
            let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
            assert_eq!(tok.decode(&ids, false).unwrap(), text);
        }
    }
}
