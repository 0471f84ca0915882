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
    /// sequences decoded together in one batch (each step reads the weights once for all); a
    /// list (`1,4,8,16`) measures each and compares them with the first
    #[arg(long, default_value = "1", value_delimiter = ',')]
    batch: Vec<usize>,
    /// repeat the measurement and report each run
    #[arg(long, default_value_t = 1)]
    repeats: usize,
    /// weight format: auto (as stored), f32, bf16, bf16-fast (bf16 products, not exact), f16, int8, int4
    #[arg(long, default_value = "auto")]
    dtype: String,
    #[arg(long)]
    json: bool,
    /// also decode under a grammar mask (structured output): a JSON schema file, or
    /// `json_object`; decode tok/s with and without the mask are measured in alternation, and
    /// the mask's cost per token reported
    #[arg(long)]
    schema: Option<String>,
    #[command(flatten)]
    draft: crate::chat::DraftArgs,
    /// also decode one sequence at these contexts (`1024,8192,32768,131072`; batch 1 whatever
    /// --batch says): how a decode step's cost grows with the context. The cache is filled by repeating the rows of a real prefill of
    /// --prompt-len tokens (what a step costs does not depend on the cached values), then
    /// --gen-len tokens are decoded
    #[arg(long, value_delimiter = ',')]
    context: Vec<usize>,
}

/// Decode tok/s at each of `--context` (batch 1).
fn bench_context(a: &BenchArgs, model: &Model) -> Result<serde_json::Value> {
    use whale_model::{KvStore, Logits};
    let c = &model.config;
    let v = c.vocab_size as u64;
    let prompt: Vec<u32> = (0..a.prompt_len as u64)
        .map(|i| ((i * 2654435761 + 17) % v) as u32)
        .collect();
    // V4's compressed entries sit at fixed offsets in the rows: the repeated block must be a
    // whole number of every compression window
    if let Some(v4) = &c.v4 {
        for r in [v4.compress_rate_csa, v4.compress_rate_hca] {
            if !a.prompt_len.is_multiple_of(r) {
                bail!("--context on this model needs --prompt-len a multiple of {r} (its compression rates)");
            }
        }
    }
    let mut seed = model.new_cache(a.prompt_len);
    model.forward(&prompt, &mut seed, AttentionForm::Auto, Logits::Last)?;
    let (width, layers) = seed.shape();
    let mut out = Vec::new();
    for &ctx in &a.context {
        if ctx < a.prompt_len || ctx + a.gen_len > c.max_position_embeddings {
            bail!(
                "--context {ctx}: must be at least --prompt-len and, with --gen-len, within max_position_embeddings ({})",
                c.max_position_embeddings
            );
        }
        let mut cache = model.new_cache(ctx + a.gen_len);
        let mut filled = 0;
        while filled < ctx {
            let n = (ctx - filled).min(a.prompt_len);
            for l in 0..layers {
                let rows = &seed.chunks(0, l)[0][..n * width];
                cache.append(l, rows);
            }
            cache.commit(n);
            filled += n;
        }
        let mut next = prompt[0];
        let t = Instant::now();
        for _ in 0..a.gen_len {
            let l = model.forward(&[next], &mut cache, AttentionForm::Auto, Logits::Last)?;
            next = argmax(&l);
        }
        let tok_s = a.gen_len as f64 / t.elapsed().as_secs_f64();
        out.push(serde_json::json!({
            "context": ctx, "decode_tok_s": tok_s,
            "cache_bytes": cache.values() * 4,
        }));
    }
    Ok(serde_json::json!(out))
}

/// Plain greedy decoding as `whale generate` runs it: the prompt in one pass, then one token
/// a step.
fn greedy_ids(model: &Model, prompt: &[u32], n: usize) -> Result<Vec<u32>> {
    use whale_model::Logits;
    let mut cache = model.new_cache(prompt.len() + n);
    let mut l = model.forward(prompt, &mut cache, AttentionForm::Plain, Logits::Last)?;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let t = argmax(&l);
        out.push(t);
        if out.len() < n {
            l = model.forward(&[t], &mut cache, AttentionForm::Absorbed, Logits::Last)?;
        }
    }
    Ok(out)
}

/// Greedy generation of `gen_len` tokens after a `prompt_len` prompt, plain and drafted by
/// `--draft-model`, runs alternating; tokens/s end to end (prefill included: the draft must
/// read the prompt too).
fn bench_draft(a: &BenchArgs, model: &Model, dir: &std::path::Path) -> Result<serde_json::Value> {
    use whale_engine::{draft, GenerateParams};
    let mut ck = Checkpoint::open(dir)?;
    ck.dtype = parse_dtype(a.draft.draft_dtype.as_deref().unwrap_or(&a.dtype))?;
    let dm = Model::load(&ck)?;
    draft::check_draft_matches(&a.model, dir, model.config.vocab_size, dm.config.vocab_size)?;
    let v = model.config.vocab_size as u64;
    let prompt: Vec<u32> = (0..a.prompt_len as u64)
        .map(|i| ((i * 2654435761 + 17) % v) as u32)
        .collect();
    let p = GenerateParams {
        max_tokens: a.gen_len,
        ignore_eos: true,
        ..Default::default()
    };
    let (mut plain, mut drafted, mut stats) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..a.repeats.max(3) {
        let t = Instant::now();
        let want = greedy_ids(model, &prompt, a.gen_len)?;
        plain.push(want.len() as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        let (got, _, s) =
            draft::generate_with_draft(model, &[], &prompt, &p, &dm, a.draft.draft_tokens, |_| {
                Ok(true)
            })?;
        drafted.push(got.len() as f64 / t.elapsed().as_secs_f64());
        if got != want {
            bail!("drafted ids differ from plain greedy ids: a bug, please report it");
        }
        stats.push(s);
    }
    let (accepted, proposed): (usize, usize) = stats
        .iter()
        .fold((0, 0), |(a, d), s| (a + s.accepted, d + s.drafted));
    let (pm, dmed) = (median(plain.clone()), median(drafted.clone()));
    Ok(serde_json::json!({
        "draft_model": dir, "draft_tokens": a.draft.draft_tokens,
        "draft_weight_bytes": dm.weight_bytes(), "accepted": accepted, "drafted": proposed,
        "acceptance": accepted as f64 / proposed.max(1) as f64,
        "plain_tok_s": pm, "drafted_tok_s": dmed, "speedup": dmed / pm,
        "runs_plain": plain, "runs_drafted": drafted,
    }))
}

/// Decode speed with and without a grammar mask, runs alternating, batch 1.
fn bench_mask(a: &BenchArgs, model: &Model, schema: &str) -> Result<serde_json::Value> {
    use whale_engine::grammar::{Grammars, Spec};
    let spec = if schema == "json_object" {
        Spec::JsonObject
    } else {
        let text = std::fs::read_to_string(schema)
            .map_err(|e| anyhow::anyhow!("cannot read --schema {schema}: {e}"))?;
        Spec::JsonSchema(
            serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("--schema {schema} is not JSON: {e}"))?,
        )
    };
    let eos = whale_engine::Engine::eos_for(&a.model, &model.config);
    let grammars = Grammars::load(
        &a.model,
        model.config.vocab_size,
        eos.first().copied().unwrap_or(0),
    )?;
    let (mut plain, mut masked, mut masks) = (Vec::new(), Vec::new(), 0usize);
    for _ in 0..a.repeats.max(3) {
        plain.push(measure(model, a.prompt_len, a.gen_len, 1)?.1);
        // a grammar that is complete starts again, so every step pays for a mask
        let mut c = grammars.start(&spec, false)?;
        let mut choose = |_: usize, l: &mut [f32]| {
            if c.finished() {
                c = grammars.start(&spec, false)?;
            }
            c.mask(l)?;
            let t = argmax(l);
            c.advance(t)?;
            masks += 1;
            Ok(t)
        };
        masked.push(measure_with(model, a.prompt_len, a.gen_len, 1, &mut choose)?.1);
    }
    let (p, m) = (median(plain.clone()), median(masked.clone()));
    Ok(serde_json::json!({
        "schema": schema, "decode_tok_s": p, "masked_decode_tok_s": m,
        "mask_us_per_token": (1.0 / m - 1.0 / p) * 1e6, "masked_vs_plain": m / p,
        "masks_computed": masks, "runs_plain": plain, "runs_masked": masked,
    }))
}

/// One batch size's measurements.
struct BatchRuns {
    batch: usize,
    /// weight bytes one decode step of the whole batch reads
    active: usize,
    /// tokens/s in all if a decode step cost only reading its weights once, at the peak probe's
    /// bandwidth
    roofline: f64,
    runs: Vec<Run>,
}

struct Run {
    prefill: f64,
    decode: f64,
    /// read bandwidth around this run (median of the probe passes just before and after it)
    bandwidth: f64,
}

impl BatchRuns {
    fn best(&self) -> &Run {
        self.runs
            .iter()
            .max_by(|a, b| a.decode.total_cmp(&b.decode))
            .expect("at least one run")
    }

    /// Decode as a share of what the bandwidth measured around the run allows.
    fn pct_of_roofline(&self, r: &Run) -> f64 {
        100.0 * r.decode * self.active as f64 / (self.batch as f64 * r.bandwidth * 1e9)
    }
}

/// Probe passes over the weights just before and just after each run: this machine's read
/// bandwidth moves between ~25 and ~45 GB/s from one second to the next (other tenants), so a
/// run is set against the bandwidth of its own moment, and the start's best-of-3 is reported
/// beside it as the peak.
const PASSES_EACH_SIDE: usize = 2;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    (v[(n - 1) / 2] + v[n / 2]) / 2.0
}

pub fn bench(a: BenchArgs) -> Result<()> {
    if a.prompt_len == 0 || a.gen_len == 0 || a.repeats == 0 || a.batch.contains(&0) {
        bail!("--prompt-len, --gen-len, --repeats and --batch must be positive");
    }
    // the probe's 1 GB buffer is unmapped before the model loads, and the peak RSS mark reset,
    // so the peak counts the model and the runs only
    let bandwidth = whale_kernels::probe::read_bandwidth_gbs(1 << 30, 3);
    reset_peak_rss();
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
    let threads = rayon::current_num_threads();
    let regions = model.weight_regions();
    let probe = || {
        (0..PASSES_EACH_SIDE)
            .map(|_| whale_kernels::probe::read_regions_gbs(&regions, 1 << 30))
            .collect::<Vec<_>>()
    };
    let mut all = Vec::new();
    for &batch in &a.batch {
        let active = model.weight_bytes_per_step(batch);
        let runs = (0..a.repeats)
            .map(|_| {
                let mut passes = probe();
                let (prefill, decode) = measure(&model, a.prompt_len, a.gen_len, batch)?;
                passes.extend(probe());
                Ok(Run {
                    prefill,
                    decode,
                    bandwidth: median(passes),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        all.push(BatchRuns {
            batch,
            active,
            roofline: batch as f64 * bandwidth * 1e9 / active as f64,
            runs,
        });
    }
    let mask = match &a.schema {
        Some(schema) => Some(bench_mask(&a, &model, schema)?),
        None => None,
    };
    let drafted = match &a.draft.draft_model {
        Some(dir) => Some(bench_draft(&a, &model, dir)?),
        None => None,
    };
    let contexts = if a.context.is_empty() {
        None
    } else {
        Some(bench_context(&a, &model)?)
    };
    let first = &all[0];
    if a.json {
        let v = serde_json::json!({
            "model": a.model, "threads": threads, "prompt_len": a.prompt_len, "gen_len": a.gen_len,
            "cpu": cpu_name(), "isa": format!("{:?}", whale_kernels::simd::isa()),
            "load_s": load_s, "dtype": a.dtype, "read_bandwidth_gb_s": bandwidth,
            "weight_bytes": model.weight_bytes(), "peak_rss_bytes": peak_rss(),
            "batches": all.iter().map(|b| serde_json::json!({
                "batch": b.batch, "weight_bytes_per_decode_step": b.active,
                "decode_roofline_tok_s": b.roofline,
                "best_decode_tok_s": b.best().decode,
                "best_decode_vs_first": b.best().decode / first.best().decode,
                "roofline_vs_first": b.roofline / first.roofline,
                "runs": b.runs.iter().map(|r| serde_json::json!({
                    "prefill_tok_s": r.prefill, "decode_tok_s": r.decode,
                    "decode_weight_gb_s": r.decode / b.batch as f64 * b.active as f64 / 1e9,
                    "read_bandwidth_gb_s": r.bandwidth,
                    "decode_pct_roofline": b.pct_of_roofline(r),
                    "decode_pct_peak_roofline": 100.0 * r.decode / b.roofline
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "grammar_mask": mask, "draft": drafted, "contexts": contexts,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "model {} | {} | {} threads | load {:.2}s | weights {:.2} GB, peak RSS {:.2} GB | memory read bandwidth {:.1} GB/s (peak: best of 3 probes at start)",
        a.model.display(),
        a.dtype,
        threads,
        load_s,
        model.weight_bytes() as f64 / 1e9,
        peak_rss() as f64 / 1e9,
        bandwidth,
    );
    for b in &all {
        println!(
            "batch {}: {:.3} GB of weights read per decode step -> decode roofline {:.1} tok/s at the peak",
            b.batch,
            b.active as f64 / 1e9,
            b.roofline
        );
        for (i, r) in b.runs.iter().enumerate() {
            println!(
                "  run {}: prefill {}x{} tok: {:.1} tok/s | decode {}x{} tok: {:.2} tok/s ({:.2} GB/s of weights; {:.1} GB/s read around the run: {:.0}% of roofline, {:.0}% of the peak's)",
                i + 1,
                b.batch,
                a.prompt_len,
                r.prefill,
                b.batch,
                a.gen_len,
                r.decode,
                r.decode / b.batch as f64 * b.active as f64 / 1e9,
                r.bandwidth,
                b.pct_of_roofline(r),
                100.0 * r.decode / b.roofline
            );
        }
    }
    if let Some(m) = &mask {
        println!(
            "grammar mask ({}): decode {:.2} tok/s plain, {:.2} tok/s masked (median of alternating runs): {:.0} us per token, x{:.3}",
            m["schema"].as_str().unwrap_or(""),
            m["decode_tok_s"].as_f64().unwrap_or(0.0),
            m["masked_decode_tok_s"].as_f64().unwrap_or(0.0),
            m["mask_us_per_token"].as_f64().unwrap_or(0.0),
            m["masked_vs_plain"].as_f64().unwrap_or(0.0),
        );
    }
    if let Some(d) = &drafted {
        let f = |k: &str| d[k].as_f64().unwrap_or(0.0);
        println!(
            "draft model {} ({:.2} GB, {} tokens a step): {} of {} drafts accepted ({:.0}%); {:.2} tok/s plain, {:.2} tok/s drafted end to end (median of alternating runs): x{:.2}",
            d["draft_model"].as_str().unwrap_or(""),
            f("draft_weight_bytes") / 1e9,
            a.draft.draft_tokens,
            d["accepted"],
            d["drafted"],
            100.0 * f("acceptance"),
            f("plain_tok_s"),
            f("drafted_tok_s"),
            f("speedup"),
        );
    }
    if let Some(cs) = contexts.as_ref().and_then(|c| c.as_array()) {
        println!(
            "\n| context | decode tok/s | x context {} | cache GB (whale's f32 rows) |",
            a.context[0]
        );
        println!("|---|---|---|---|");
        let base = cs[0]["decode_tok_s"].as_f64().unwrap_or(1.0);
        for c in cs {
            let t = c["decode_tok_s"].as_f64().unwrap_or(0.0);
            println!(
                "| {} | {:.2} | {:.2} | {:.2} |",
                c["context"],
                t,
                t / base,
                c["cache_bytes"].as_f64().unwrap_or(0.0) / 1e9
            );
        }
    }
    if all.len() > 1 {
        // what the memory allows a batch against the first, if both read their weights at the
        // same share of the bandwidth: routed experts make a step of B tokens read more than one
        println!(
            "\n| batch | best decode tok/s | x batch {} | peak roofline tok/s | % of roofline around the run | roofline x batch {} |",
            first.batch, first.batch
        );
        println!("|---|---|---|---|---|---|");
        for b in &all {
            println!(
                "| {} | {:.2} | {:.2} | {:.1} | {:.0}% | {:.2} |",
                b.batch,
                b.best().decode,
                b.best().decode / first.best().decode,
                b.roofline,
                b.pct_of_roofline(b.best()),
                b.roofline / first.roofline
            );
        }
    }
    Ok(())
}

/// One timed run of greedy decoding (see `measure_with`).
pub fn measure(
    model: &Model,
    prompt_len: usize,
    gen_len: usize,
    batch: usize,
) -> Result<(f64, f64)> {
    measure_with(model, prompt_len, gen_len, batch, &mut |_, l| Ok(argmax(l)))
}

/// One timed run: prefill of `batch` prompts of `prompt_len` tokens in one batched pass, then
/// `gen_len` decode steps of the whole batch, each token picked by `choose(sequence, logits)`.
/// Returns (prefill, decode) tokens/s.
pub fn measure_with(
    model: &Model,
    prompt_len: usize,
    gen_len: usize,
    batch: usize,
    choose: &mut dyn FnMut(usize, &mut [f32]) -> Result<u32>,
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
    let d = model.hidden_width();
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
        let mut logits = model.logits(&h);
        next = logits
            .chunks_exact_mut(c.vocab_size)
            .enumerate()
            .map(|(b, l)| choose(b, l))
            .collect::<Result<_>>()?;
    }
    let decode = t1.elapsed().as_secs_f64();
    Ok((
        (batch * prompt_len) as f64 / prefill,
        (batch * gen_len) as f64 / decode,
    ))
}

/// The CPU's model name (/proc/cpuinfo), where there is one.
fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|n| n.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Sets the peak RSS mark (VmHWM) back to the current RSS (Linux: `clear_refs` with 5); a no-op
/// where /proc is not there.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
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
