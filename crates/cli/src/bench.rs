//! `whale bench`: prefill and decode speed on one sequence, with the weight bytes each decoded
//! token reads so the figure can be set against memory bandwidth.

use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;
use whale_engine::sampler::argmax;
use whale_model::{parse_dtype, AttentionForm, Checkpoint, Logits, Model};

#[derive(Args)]
pub struct BenchArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long, default_value_t = 128)]
    prompt_len: usize,
    #[arg(long, default_value_t = 32)]
    gen_len: usize,
    /// repeat the measurement and report each run
    #[arg(long, default_value_t = 1)]
    repeats: usize,
    /// weight format: auto (as stored), f32, bf16, f16, int8, int4
    #[arg(long, default_value = "auto")]
    dtype: String,
    #[arg(long)]
    json: bool,
}

pub fn bench(a: BenchArgs) -> Result<()> {
    if a.prompt_len == 0 || a.gen_len == 0 || a.repeats == 0 {
        bail!("--prompt-len, --gen-len and --repeats must be positive");
    }
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
    // a fixed pseudo-random prompt
    let prompt: Vec<u32> = (0..a.prompt_len as u64)
        .map(|i| ((i * 2654435761 + 17) % c.vocab_size as u64) as u32)
        .collect();
    // touch every page of the weights once so the first timed run does not pay for page faults
    {
        let mut cache = model.new_cache(a.prompt_len + 1);
        model.forward(&prompt, &mut cache, AttentionForm::Plain, Logits::Last)?;
    }
    let active = model.active_weight_bytes_per_token();
    let threads = rayon::current_num_threads();
    let bandwidth = whale_kernels::probe::read_bandwidth_gbs(1 << 30, 3);
    let roofline = bandwidth * 1e9 / active as f64;
    let mut runs = vec![];
    for _ in 0..a.repeats {
        let mut cache = model.new_cache(a.prompt_len + a.gen_len);
        let t0 = Instant::now();
        let mut logits = model.forward(&prompt, &mut cache, AttentionForm::Plain, Logits::Last)?;
        let prefill = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        for _ in 0..a.gen_len {
            let next = argmax(&logits);
            logits = model.forward(&[next], &mut cache, AttentionForm::Absorbed, Logits::Last)?;
        }
        let decode = t1.elapsed().as_secs_f64();
        runs.push((a.prompt_len as f64 / prefill, a.gen_len as f64 / decode));
    }
    if a.json {
        let v = serde_json::json!({
            "model": a.model, "threads": threads, "prompt_len": a.prompt_len, "gen_len": a.gen_len,
            "load_s": load_s, "active_weight_bytes_per_token": active, "dtype": a.dtype,
            "read_bandwidth_gb_s": bandwidth, "decode_roofline_tok_s": roofline,
            "weight_bytes": model.weight_bytes(), "peak_rss_bytes": peak_rss(),
            "runs": runs.iter().map(|(p, d)| serde_json::json!({
                "prefill_tok_s": p, "decode_tok_s": d, "decode_weight_gb_s": d * active as f64 / 1e9,
                "decode_pct_roofline": 100.0 * d / roofline
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "model {} | {} | {} threads | load {:.2}s | {:.3} GB of weights read per decoded token",
        a.model.display(),
        a.dtype,
        threads,
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
            "run {}: prefill {} tok: {:.1} tok/s | decode {} tok: {:.2} tok/s ({:.2} GB/s of weights, {:.0}% of roofline)",
            i + 1,
            a.prompt_len,
            p,
            a.gen_len,
            d,
            d * active as f64 / 1e9,
            100.0 * d / roofline
        );
    }
    Ok(())
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
