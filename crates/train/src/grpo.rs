//! `whale rl`: GRPO as in DeepSeekMath / R1-Zero. Each step samples G responses to each of P
//! prompts with the engine, scores them with rule rewards (answer correct; format: reasoning, then
//! `</think>`, then an answer), normalises the rewards within each group into advantages, and
//! maximises the clipped surrogate minus beta times the k3 KL estimate to a frozen reference.

use crate::config::positive;
use crate::data::{prompt_ids, read_sources, write_sources, Batch, Example, Source};
use crate::metrics::{read_jsonl, series, JsonlLog};
use crate::ops::token_logprobs;
use crate::optim::{clip_grad_norm, AdamW};
use crate::{Options, Store, TrainModel};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::Path;
use whale_engine::Engine;
use whale_model::ModelConfig;
use whale_tasks::{check, Task};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GrpoConfig {
    pub tasks: Vec<String>,
    pub steps: usize,
    /// prompts per step (P)
    pub prompts: usize,
    /// samples per prompt (G)
    pub group: usize,
    pub lr: f64,
    /// KL weight
    pub beta: f64,
    /// ratio clip epsilon
    pub clip: f64,
    pub temperature: f32,
    pub max_tokens: usize,
    /// policy updates per batch of samples (1: plain on-policy)
    pub inner: usize,
    pub seed: u64,
    /// distinct training prompts per task
    pub pool: usize,
    /// reward for a well-formed response (the answer is worth 1)
    pub format_reward: f64,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        GrpoConfig {
            tasks: vec!["add4".into()],
            steps: 60,
            prompts: 16,
            group: 8,
            lr: 2e-4,
            beta: 0.04,
            clip: 0.2,
            temperature: 1.0,
            max_tokens: 200,
            inner: 1,
            seed: 7,
            pool: 5000,
            format_reward: 0.1,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct GrpoSummary {
    pub steps: usize,
    pub first_reward: f64,
    pub last_reward: f64,
    pub first_accuracy: f64,
    pub last_accuracy: f64,
    pub seconds: f64,
}

/// Rule reward of one response.
pub fn reward(p: &whale_tasks::Problem, response: &str, format_reward: f64) -> (f64, bool, bool) {
    let o = check(p, response);
    (
        o.correct as u8 as f64 + format_reward * o.format as u8 as f64,
        o.correct,
        o.format,
    )
}

/// Group-normalised advantages: (r - mean) / (std + eps); all zero when the group agrees.
pub fn advantages(rewards: &[f64]) -> Vec<f64> {
    let n = rewards.len() as f64;
    let mean = rewards.iter().sum::<f64>() / n;
    let std = (rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
    rewards
        .iter()
        .map(|r| {
            if std < 1e-9 {
                0.0
            } else {
                (r - mean) / (std + 1e-4)
            }
        })
        .collect()
}

/// The GRPO loss over sequences with per-sequence advantages: -mean_seq mean_tok [min(rho A,
/// clip(rho) A) - beta * k3], rho = pi / pi_old, k3 = exp(ref - lp) - (ref - lp) - 1.
pub fn grpo_loss(
    policy: &TrainModel,
    batch: &Batch,
    adv: &[f64],
    old_lp: Option<&Tensor>,
    ref_lp: &Tensor,
    beta: f64,
    clip: f64,
) -> Result<(Tensor, f64)> {
    let lp = sequence_logprobs(policy, batch)?;
    let old = match old_lp {
        Some(o) => o.clone(),
        None => lp.detach(),
    };
    let (b, s) = lp.dims2()?;
    let dev = lp.device();
    let mut w = vec![0f32; b * s];
    let mut a = vec![0f32; b * s];
    for (i, row) in batch.weights.iter().enumerate() {
        let n: f32 = row.iter().sum();
        for (t, &x) in row.iter().enumerate() {
            if x > 0.0 {
                w[i * s + t] = 1.0 / (n * b as f32);
                a[i * s + t] = adv[i] as f32;
            }
        }
    }
    let w = Tensor::from_vec(w, (b, s), dev)?.to_dtype(lp.dtype())?;
    let a = Tensor::from_vec(a, (b, s), dev)?.to_dtype(lp.dtype())?;
    let ratio = (&lp - &old)?.exp()?;
    let surr = (&ratio * &a)?.minimum(&(ratio.clamp(1.0 - clip, 1.0 + clip)? * &a)?)?;
    let d = (ref_lp - &lp)?;
    let k3 = ((d.exp()? - &d)? - 1.0)?;
    let obj = (surr - (&k3 * beta)?)?;
    let loss = (obj * &w)?.sum_all()?.neg()?;
    let kl = (k3.detach() * &w)?
        .sum_all()?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?;
    Ok((loss, kl))
}

/// log pi(token) at every position: [B, S] (zero weight where the batch has none).
pub fn sequence_logprobs(model: &TrainModel, b: &Batch) -> Result<Tensor> {
    let out = model.forward(&b.inputs, &b.lens, Options::default())?;
    let (bn, s, v) = out.logits.dims3()?;
    let t: Vec<u32> = b.targets.iter().flatten().copied().collect();
    let t = Tensor::from_vec(t, bn * s, out.logits.device())?;
    Ok(token_logprobs(&out.logits.reshape((bn * s, v))?, &t)?.reshape((bn, s))?)
}

/// Copies what a checkpoint needs besides weights from `src` to `dst`.
pub fn copy_model_files(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst)?;
    for f in [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "training_data.json",
    ] {
        if src.join(f).exists() {
            std::fs::copy(src.join(f), dst.join(f)).with_context(|| format!("cannot copy {f}"))?;
        }
    }
    Ok(())
}

pub fn run(init: &Path, out: &Path, c: &GrpoConfig, progress: bool) -> Result<GrpoSummary> {
    if c.steps == 0 || c.prompts == 0 || c.group < 2 {
        bail!("rl: steps and prompts must be positive and the group at least 2");
    }
    if !positive(c.temperature as f64)
        || !positive(c.lr)
        || c.beta < 0.0
        || !positive(c.clip)
        || c.inner == 0
    {
        bail!("rl: temperature, lr and clip must be positive, beta >= 0, inner >= 1");
    }
    let cfg = ModelConfig::from_file(&init.join("config.json"))?;
    let tasks = c
        .tasks
        .iter()
        .map(|t| Task::parse(t))
        .collect::<Result<Vec<_>>>()?;
    // training prompts: a fresh pool per task, recorded so held-out sets exclude it too
    let mut sources = read_sources(init)?;
    let mut pool = vec![];
    for (i, &task) in tasks.iter().enumerate() {
        let src = Source {
            task: task.name(),
            pool: c.pool,
            seed: c.seed.wrapping_mul(7919).wrapping_add(i as u64 + 1),
        };
        pool.extend(src.problems()?);
        sources.push(src);
    }
    copy_model_files(init, out)?;
    write_sources(out, &sources)?;
    let policy = TrainModel::new(cfg.clone(), Store::load(init, &cfg, DType::F32)?)?;
    let reference = TrainModel::new(cfg.clone(), policy.store.snapshot()?)?;
    let mut opt = AdamW::new(0.0);
    let live = out.join("policy");
    copy_model_files(init, &live)?;
    let mut log = JsonlLog::open(&out.join("rl_metrics.jsonl"), false)?;
    let bar = if progress {
        ProgressBar::new(c.steps as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("rl [{bar:30}] {pos}/{len} {msg} ({eta})")?
            .progress_chars("=> "),
    );
    let t0 = std::time::Instant::now();
    let mut rng = StdRng::seed_from_u64(c.seed);
    for step in 0..c.steps {
        policy.store.save(&cfg, &live, DType::F32)?;
        let engine = Engine::load(&live, true)?;
        let tok = engine.tokenizer()?;
        let problems: Vec<_> = pool.choose_multiple(&mut rng, c.prompts).cloned().collect();
        let prompts = problems
            .iter()
            .map(|p| prompt_ids(tok, &p.question))
            .collect::<Result<Vec<_>>>()?;
        let samples = crate::rollout::generate(
            &engine,
            &prompts,
            c.group,
            c.temperature,
            c.seed ^ (step as u64 + 1) << 20,
            c.max_tokens,
        )?;
        let (mut examples, mut adv) = (vec![], vec![]);
        let (mut rsum, mut correct, mut formatted, mut len) = (0.0, 0usize, 0usize, 0usize);
        for ((p, prompt), group) in problems.iter().zip(&prompts).zip(&samples) {
            let rs: Vec<f64> = group
                .iter()
                .map(|r| {
                    let (x, ok, f) = reward(p, &r.text, c.format_reward);
                    correct += ok as usize;
                    formatted += f as usize;
                    len += r.ids.len();
                    x
                })
                .collect();
            rsum += rs.iter().sum::<f64>();
            for (r, a) in group.iter().zip(advantages(&rs)) {
                if a == 0.0 {
                    continue; // no signal from a group that agrees
                }
                let mut ids = prompt.clone();
                ids.extend(&r.ids);
                if r.finished {
                    ids.push(engine.eos_token_ids.first().copied().unwrap_or(1));
                }
                examples.push(Example {
                    ids,
                    prompt_len: prompt.len(),
                });
                adv.push(a);
            }
        }
        let total = (c.prompts * c.group) as f64;
        let mut kl = 0.0;
        let mut grad_norm = 0.0;
        if !examples.is_empty() {
            let batch = Batch::new(&examples, true, 2);
            let ref_lp = sequence_logprobs(&reference, &batch)?.detach();
            let old = if c.inner > 1 {
                Some(sequence_logprobs(&policy, &batch)?.detach())
            } else {
                None
            };
            for _ in 0..c.inner {
                let (loss, k) =
                    grpo_loss(&policy, &batch, &adv, old.as_ref(), &ref_lp, c.beta, c.clip)?;
                kl = k;
                let mut grads = loss.backward()?;
                grad_norm =
                    clip_grad_norm(policy.store.trainable().map(|(_, v)| v), &mut grads, 1.0)?;
                opt.step(policy.store.trainable(), &grads, c.lr)?;
            }
        }
        let row = json!({
            "step": step + 1, "reward": rsum / total, "accuracy": correct as f64 / total,
            "format_rate": formatted as f64 / total, "response_length": len as f64 / total,
            "kl": kl, "grad_norm": grad_norm, "trained_sequences": examples.len(),
            "seconds": t0.elapsed().as_secs_f64(),
        });
        log.write(&row)?;
        bar.set_message(format!(
            "reward {:.3} acc {:.3} kl {kl:.4}",
            rsum / total,
            correct as f64 / total
        ));
        bar.inc(1);
    }
    bar.finish_and_clear();
    policy.store.save(&cfg, out, DType::F32)?;
    std::fs::remove_dir_all(&live).ok();
    plot(out)?;
    let rows = read_jsonl(&out.join("rl_metrics.jsonl"))?;
    let k = (rows.len() / 5).max(1);
    let mean = |r: &[serde_json::Value], key: &str| {
        r.iter().filter_map(|x| x[key].as_f64()).sum::<f64>() / r.len() as f64
    };
    Ok(GrpoSummary {
        steps: c.steps,
        first_reward: mean(&rows[..k], "reward"),
        last_reward: mean(&rows[rows.len() - k..], "reward"),
        first_accuracy: mean(&rows[..k], "accuracy"),
        last_accuracy: mean(&rows[rows.len() - k..], "accuracy"),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// rl.png: reward, accuracy, format rate; response length; KL.
pub fn plot(out: &Path) -> Result<()> {
    use whale_plot::{save_png, Chart};
    let rows = read_jsonl(&out.join("rl_metrics.jsonl"))?;
    let w = (rows.len() / 30).max(1);
    let a = Chart::new(
        "GRPO: reward and accuracy (training samples)",
        "step",
        "mean",
    )
    .line("reward", series(&rows, "reward", w))
    .line("accuracy", series(&rows, "accuracy", w))
    .line("format rate", series(&rows, "format_rate", w));
    let b = Chart::new("response length", "step", "tokens")
        .line("mean response", series(&rows, "response_length", w));
    let k = Chart::new("KL to the reference (k3)", "step", "KL").line("KL", series(&rows, "kl", w));
    save_png(&out.join("rl.png"), &[a, b, k], 1400, 400)
}
