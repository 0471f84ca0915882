//! `whale bench`: prefill and decode speed on one sequence, with the weight bytes each decoded
//! token reads so the figure can be set against memory bandwidth.

use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;
use whale_engine::sampler::argmax;
use whale_model::{parse_dtype, AttentionForm, Caches, Checkpoint, LatentCache, Model};

#[derive(Args)]
pub struct BenchArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long, default_value_t = 128)]
    prompt_len: usize,
    #[arg(long, default_value_t = 32)]
    gen_len: usize,
    /// sequences decoded together in one batch (each step reads the weights once for all)
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// repeat the measurement and report each run
    #[arg(long, default_value_t = 1)]
    repeats: usize,
    /// weight format: auto (as stored), f32, bf16, bf16-fast (bf16 products, not exact), f16, int8, int4
    #[arg(long, default_value = "auto")]
    dtype: String,
    #[arg(long)]
    json: bool,
}

pub fn bench(a: BenchArgs) -> Result<()> {
    if a.prompt_len == 0 || a.gen_len == 0 || a.repeats == 0 || a.batch == 0 {
        bail!("--prompt-len, --gen-len, --repeats and --batch must be positive");
    }
    // the probe's buffer is freed before the model loads, so it does not count in peak RSS
    let bandwidth = whale_kernels::probe::read_bandwidth_gbs(1 << 30, 3);
    let t = Instant::now();
    let mut ck = Checkpoint::open(&a.model)?;
    ck.dtype = parse_dtype(&a.dtype)?;
    let model = Model::load(&ck)?;
    let load_s = t.elapsed().as_secs_f64();
    let c = &model.config;
    if a.prompt_len + a.gen_len > c.max_position_embeddings {
        bail!(
            "--prompt-len + --gen-len exceeds max_position_embeddings ({})",
            c.max_position_embeddings
        );
    }
    // touch every page of the weights once so the first timed run does not pay for page faults
    measure(&model, a.prompt_len, 1, 1)?;
    let active = model.weight_bytes_per_step(a.batch);
    let threads = rayon::current_num_threads();
    // tokens per second if a decode step cost only reading its weights once
    let roofline = a.batch as f64 * bandwidth * 1e9 / active as f64;
    let runs = (0..a.repeats)
        .map(|_| measure(&model, a.prompt_len, a.gen_len, a.batch))
        .collect::<Result<Vec<_>>>()?;
    if a.json {
        let v = serde_json::json!({
            "model": a.model, "threads": threads, "prompt_len": a.prompt_len, "gen_len": a.gen_len, "batch": a.batch,
            "load_s": load_s, "weight_bytes_per_decode_step": active, "dtype": a.dtype,
            "read_bandwidth_gb_s": bandwidth, "decode_roofline_tok_s": roofline,
            "weight_bytes": model.weight_bytes(), "peak_rss_bytes": peak_rss(),
            "runs": runs.iter().map(|(p, d)| serde_json::json!({
                "prefill_tok_s": p, "decode_tok_s": d, "decode_weight_gb_s": d / a.batch as f64 * active as f64 / 1e9,
                "decode_pct_roofline": 100.0 * d / roofline
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "model {} | {} | {} threads | batch {} | load {:.2}s | {:.3} GB of weights read per decode step",
        a.model.display(),
        a.dtype,
        threads,
        a.batch,
        load_s,
        active as f64 / 1e9
    );
    println!(
        "memory read bandwidth {:.1} GB/s (measured now) -> decode roofline {:.1} tok/s | weights {:.2} GB, peak RSS {:.2} GB",
        bandwidth,
        roofline,
        model.weight_bytes() as f64 / 1e9,
        peak_rss() as f64 / 1e9
    );
    for (i, (p, d)) in runs.iter().enumerate() {
        println!(
            "run {}: prefill {}x{} tok: {:.1} tok/s | decode {}x{} tok: {:.2} tok/s ({:.2} GB/s of weights, {:.0}% of roofline)",
            i + 1,
            a.batch,
            a.prompt_len,
            p,
            a.batch,
            a.gen_len,
            d,
            d / a.batch as f64 * active as f64 / 1e9,
            100.0 * d / roofline
        );
    }
    Ok(())
}

/// One timed run: prefill of `batch` prompts of `prompt_len` tokens in one batched pass, then
/// `gen_len` greedy decode steps of the whole batch. Returns (prefill, decode) tokens/s.
pub fn measure(
    model: &Model,
    prompt_len: usize,
    gen_len: usize,
    batch: usize,
) -> Result<(f64, f64)> {
    let c = &model.config;
    // fixed pseudo-random prompts, one per sequence
    let prompts: Vec<Vec<u32>> = (0..batch as u64)
        .map(|b| {
            (0..prompt_len as u64)
                .map(|i| ((i * 2654435761 + 17 + b * 7919) % c.vocab_size as u64) as u32)
                .collect()
        })
        .collect();
    let d = c.hidden_size;
    let mut caches: Vec<LatentCache> = (0..batch)
        .map(|_| model.new_cache(prompt_len + gen_len))
        .collect();
    let t0 = Instant::now();
    let toks: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
    let h = model.forward_batch(
        &toks,
        &mut Caches(caches.iter_mut().collect()),
        AttentionForm::Auto,
    )?;
    let mut next: Vec<u32> = (0..batch)
        .map(|b| {
            let end = (b + 1) * prompt_len;
            argmax(&model.logits(&h[(end - 1) * d..end * d]))
        })
        .collect();
    let prefill = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for _ in 0..gen_len {
        let toks: Vec<&[u32]> = next.iter().map(std::slice::from_ref).collect();
        let h = model.forward_batch(
            &toks,
            &mut Caches(caches.iter_mut().collect()),
            AttentionForm::Auto,
        )?;
        let logits = model.logits(&h);
        next = logits.chunks_exact(c.vocab_size).map(argmax).collect();
    }
    let decode = t1.elapsed().as_secs_f64();
    Ok((
        (batch * prompt_len) as f64 / prefill,
        (batch * gen_len) as f64 / decode,
    ))
}

/// Peak resident set size of this process (VmHWM), 0 where /proc is not there.
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}
