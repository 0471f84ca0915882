//! Token-id level commands, used to check the engine against reference outputs.

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use safetensors::{serialize_to_file, tensor::TensorView, Dtype};
use std::path::PathBuf;
use whale_engine::{Engine, GenerateParams, SamplingParams};
use whale_model::{parse_dtype, AttentionForm, Logits};

#[derive(Clone, Copy, ValueEnum)]
pub enum Form {
    Plain,
    Absorbed,
}

#[derive(Args)]
pub struct LogitsArgs {
    #[arg(long)]
    model: PathBuf,
    /// comma-separated token ids, e.g. 0,5,7
    #[arg(long)]
    ids: String,
    #[arg(long)]
    out: PathBuf,
    /// weight format: auto (as stored), f32, bf16, bf16-fast (bf16 products, not exact), f16, int8, int4
    #[arg(long, default_value = "auto")]
    dtype: String,
    /// attention form for the prompt
    #[arg(long, value_enum, default_value = "plain")]
    attention: Form,
}

#[derive(Args)]
pub struct GenerateArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    ids: String,
    #[arg(long, default_value_t = 16)]
    max_tokens: usize,
    /// weight format: auto (as stored), f32, bf16, bf16-fast (bf16 products, not exact), f16, int8, int4
    #[arg(long, default_value = "auto")]
    dtype: String,
    /// always take the most likely token (the default when no --temperature is given)
    #[arg(long)]
    greedy: bool,
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long)]
    seed: Option<u64>,
    /// keep going past end-of-sequence tokens
    #[arg(long)]
    ignore_eos: bool,
    /// draft with the checkpoint's MTP module and verify (greedy only; same ids as without)
    #[arg(long, value_parser = ["mtp"], conflicts_with = "draft_model")]
    speculative: Option<String>,
    #[command(flatten)]
    draft: crate::chat::DraftArgs,
}

pub fn parse_ids(s: &str) -> Result<Vec<u32>> {
    let ids = s
        .split(',')
        .map(|x| x.trim())
        .filter(|x| !x.is_empty())
        .map(|x| {
            x.parse::<u32>()
                .with_context(|| format!("--ids: `{x}` is not a token id"))
        })
        .collect::<Result<Vec<_>>>()?;
    if ids.is_empty() {
        bail!("--ids: no token ids given");
    }
    Ok(ids)
}

pub fn logits(a: LogitsArgs) -> Result<()> {
    let ids = parse_ids(&a.ids)?;
    let engine = Engine::load_as(&a.model, false, parse_dtype(&a.dtype)?)?;
    let model = &engine.model;
    let form = match a.attention {
        Form::Plain => AttentionForm::Plain,
        Form::Absorbed => AttentionForm::Absorbed,
    };
    let mut cache = model.new_cache(ids.len());
    let logits = model.forward(&ids, &mut cache, form, Logits::All)?;
    let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = TensorView::new(Dtype::F32, vec![ids.len(), model.config.vocab_size], &bytes)?;
    serialize_to_file([("logits", view)], None, &a.out)
        .with_context(|| format!("cannot write {}", a.out.display()))?;
    Ok(())
}

pub fn generate(a: GenerateArgs) -> Result<()> {
    let ids = parse_ids(&a.ids)?;
    if a.greedy && a.temperature != 0.0 {
        bail!(
            "--greedy and --temperature {} contradict each other",
            a.temperature
        );
    }
    let engine = Engine::load_as(&a.model, false, parse_dtype(&a.dtype)?)?;
    let params = GenerateParams {
        max_tokens: a.max_tokens,
        sampling: SamplingParams {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            min_p: 0.0,
            seed: a.seed,
            ..Default::default()
        },
        stop: vec![],
        ignore_eos: a.ignore_eos,
    };
    let out = if let Some(dir) = &a.draft.draft_model {
        let draft_dtype = a.draft.draft_dtype.as_deref().unwrap_or(&a.dtype);
        let draft = crate::chat::load_draft(&a.model, &engine, dir, draft_dtype)?;
        let t = std::time::Instant::now();
        let (out, _, stats) = engine.generate_ids_with_draft(
            &ids,
            &params,
            &draft.model,
            a.draft.draft_tokens,
            |_| Ok(true),
        )?;
        crate::chat::report_draft(&stats, out.len(), t.elapsed().as_secs_f64());
        out
    } else if a.speculative.is_some() {
        let t = std::time::Instant::now();
        let (out, _, stats) = engine.generate_ids_speculative(&ids, &params, |_| Ok(true))?;
        eprintln!(
            "mtp speculative decoding: {} of {} drafts accepted ({:.0}%), {} tokens in {:.2}s",
            stats.accepted,
            stats.drafted,
            100.0 * stats.acceptance(),
            out.len(),
            t.elapsed().as_secs_f64()
        );
        out
    } else {
        engine.generate_ids(&ids, &params, |_| Ok(true))?.0
    };
    println!("{}", serde_json::json!({ "ids": out }));
    Ok(())
}
