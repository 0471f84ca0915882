//! `whale recipe tiny-r1`: the whole pipeline that makes the bundled model, end to end and
//! seeded: SFT on worked solutions -> evaluation -> GRPO on the edge task -> evaluation, plus the
//! MTP check, then the shipped checkpoint (bf16) with its report card (markdown + PNGs); and
//! `whale recipe side-runs`, the pretraining comparisons (bias balancing on/off, FP8 vs f32).

use crate::config::TrainConfig;
use crate::eval::{evaluate, held_out_set, EvalReport, EvalSpec};
use crate::grpo::GrpoConfig;
use crate::metrics::{read_jsonl, series};
use crate::pretrain::Summary;
use crate::Store;
use anyhow::{Context, Result};
use candle_core::DType;
use serde_json::json;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;
use whale_engine::generate::GenerateParams;
use whale_engine::Engine;
use whale_model::ModelConfig;
use whale_tasks::Task;

/// The SFT stage's config (also in the repo as configs/tiny-r1.toml).
pub const TINY_R1_CONFIG: &str = include_str!("../../../configs/tiny-r1.toml");

/// Tasks the report evaluates; RL_TASK is at the edge of what SFT reaches (one more digit than
/// most of the SFT data).
const EVAL_TASKS: [&str; 7] = ["add1", "add2", "add3", "add4", "sub2", "sub3", "mul3"];
const RL_TASK: &str = "add4";
/// GRPO prompts: the edge task, mixed with add3 so the skill SFT taught is kept (RL on add4
/// alone raised add4 and cost add3 ten points, measured).
const RL_TASKS: [&str; 2] = ["add3", "add4"];
const EVAL_N: usize = 500;

fn rl_config() -> GrpoConfig {
    GrpoConfig {
        tasks: RL_TASKS.iter().map(|s| s.to_string()).collect(),
        steps: 100,
        lr: 1e-4,
        ..GrpoConfig::default()
    }
}
const SAMPLES: usize = 4;
/// As long as the tiny-r1 SFT run, whose loss has flattened by then: shorter runs end inside the
/// tasks' sharp loss drops, whose timing moves from run to run by more than the effects measured.
const SIDE_STEPS: usize = 700;
/// The side runs are hundreds of steps, not V3's many thousands, so the bias moves faster than
/// V3's 0.001.
const SIDE_GAMMA: f64 = 0.003;

pub struct RecipeOptions {
    pub out: std::path::PathBuf,
    /// scratch directory for intermediate checkpoints
    pub work: std::path::PathBuf,
    pub progress: bool,
}

pub fn tiny_r1(o: &RecipeOptions) -> Result<()> {
    let t0 = Instant::now();
    let (out, work) = (&o.out, &o.work);
    std::fs::create_dir_all(out)?;
    std::fs::create_dir_all(work)?;
    let tc = TrainConfig::parse(TINY_R1_CONFIG)?;
    let mut timings = vec![];
    let stage = |name: &str| eprintln!("[recipe {:>5.0}s] {name}", t0.elapsed().as_secs_f64());

    stage("SFT on worked solutions");
    let ts = Instant::now();
    let sft_dir = work.join("sft");
    let sft = crate::pretrain::run(&tc, &sft_dir, false, o.progress)?;
    timings.push(("SFT", ts.elapsed().as_secs_f64()));

    stage("evaluating the SFT model");
    let ts = Instant::now();
    let before = eval_all(&sft_dir)?;
    timings.push(("eval SFT", ts.elapsed().as_secs_f64()));

    stage("GRPO");
    let ts = Instant::now();
    let rl_dir = work.join("rl");
    let rl_cfg = rl_config();
    let rl = crate::grpo::run(&sft_dir, &rl_dir, &rl_cfg, o.progress)?;
    timings.push(("GRPO", ts.elapsed().as_secs_f64()));

    stage("writing the bf16 checkpoint");
    let cfg = ModelConfig::from_file(&rl_dir.join("config.json"))?;
    let store = Store::load(&rl_dir, &cfg, DType::F32)?;
    crate::grpo::copy_model_files(&rl_dir, out)?;
    store.save(&cfg, out, DType::BF16)?;
    let cfg_path = out.join("config.json");
    let mut hub: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path)?)?;
    hub["torch_dtype"] = json!("bfloat16");
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&hub)?)?;

    stage("evaluating the shipped model");
    let ts = Instant::now();
    let after = eval_all(out)?;
    timings.push(("eval shipped", ts.elapsed().as_secs_f64()));

    stage("MTP check");
    let mtp = mtp_check(out)?;

    for (src, dst) in [
        (sft_dir.join("loss.png"), "sft-loss.png"),
        (sft_dir.join("balance.png"), "sft-balance.png"),
        (rl_dir.join("rl.png"), "rl.png"),
    ] {
        std::fs::copy(&src, out.join(dst))
            .with_context(|| format!("cannot copy {}", src.display()))?;
    }
    plot_accuracy(&before, &after, out)?;
    let wall = t0.elapsed().as_secs_f64();
    let report = report_card(&sft, &rl, &before, &after, &mtp, &timings, wall, &tc)?;
    std::fs::write(out.join("README.md"), &report)?;
    let figures = json!({
        "wall_seconds": wall, "sft": sft, "rl": rl, "before_rl": before, "after_rl": after,
        "mtp": mtp,
    });
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&figures)?,
    )?;
    stage("done");
    println!("{report}");
    Ok(())
}

fn eval_all(dir: &Path) -> Result<Vec<EvalReport>> {
    let engine = Engine::load(dir, true)?;
    let mut v = vec![];
    for name in EVAL_TASKS {
        let task = Task::parse(name)?;
        // add1 has 100 problems and SFT trains on all of them: it is scored on those, labelled so
        let (label, set) = match held_out_set(dir, task, EVAL_N) {
            Ok(set) => (name.to_string(), set),
            Err(_) => {
                let all = whale_tasks::problems(task, EVAL_N, 1, &Default::default());
                (format!("{name} (all {}, trained on)", all.len()), all)
            }
        };
        let samples = if name == RL_TASK || name == "add3" {
            SAMPLES
        } else {
            0
        };
        let spec = EvalSpec {
            samples,
            temperature: 0.6,
            seed: 1,
            max_tokens: 256,
        };
        v.push(evaluate(&engine, &label, &set, &spec)?);
    }
    Ok(v)
}

#[derive(Debug, serde::Serialize)]
pub struct MtpCheck {
    pub prompts: usize,
    pub identical: usize,
    pub acceptance: f64,
}

/// Greedy generation with and without MTP speculation on held-out questions: the ids must be
/// identical; the acceptance rate is how often the MTP draft was right.
fn mtp_check(dir: &Path) -> Result<MtpCheck> {
    let engine = Engine::load(dir, true)?;
    let tok = engine.tokenizer()?;
    let set = held_out_set(dir, Task::parse("add3")?, 100)?;
    let params = GenerateParams {
        max_tokens: 256,
        ..GenerateParams::default()
    };
    let (mut identical, mut accepted, mut drafted) = (0, 0usize, 0usize);
    for p in &set {
        let ids = crate::data::prompt_ids(tok, &p.question)?;
        let (plain, _, _, _) = engine.generate_ids(&ids, &params, |_| Ok(true))?;
        let (spec, _, stats) = engine.generate_ids_speculative(&ids, &params, |_| Ok(true))?;
        identical += (plain == spec) as usize;
        accepted += stats.accepted;
        drafted += stats.drafted;
    }
    Ok(MtpCheck {
        prompts: set.len(),
        identical,
        acceptance: accepted as f64 / drafted.max(1) as f64,
    })
}

/// The same short run three ways: gamma > 0 (V3), gamma = 0 with no auxiliary loss, and
/// gamma > 0 through simulated FP8.
fn side_runs(tc: &TrainConfig, work: &Path, progress: bool) -> Result<Vec<(String, Summary)>> {
    let mut v = vec![];
    for (name, gamma, fp8) in [
        ("balanced-f32", SIDE_GAMMA, false),
        ("unbalanced-f32", 0.0, false),
        ("balanced-fp8", SIDE_GAMMA, true),
    ] {
        let mut c = tc.clone();
        c.train.steps = SIDE_STEPS;
        c.train.warmup = SIDE_STEPS / 10;
        c.train.save_every = 100;
        c.train.bias_update_speed = gamma;
        c.train.balance_alpha = 0.0;
        c.train.fp8 = fp8;
        // pretraining, as in V3: the loss is on every token, the questions' random digits included
        c.train.response_only = false;
        // an arm interrupted (or finished) with this same config continues from its last save
        let dir = work.join(name);
        let same = std::fs::read_to_string(dir.join("train_config.toml"))
            .is_ok_and(|saved| saved == toml::to_string(&c).unwrap_or_default());
        let resume = same && dir.join("trainer_state.json").exists();
        v.push((
            name.to_string(),
            crate::pretrain::run(&c, &dir, resume, progress)?,
        ));
    }
    Ok(v)
}

/// `whale recipe side-runs`: the pretraining comparisons (bias balancing on/off, FP8 vs f32) over
/// several seeds, with every seed, the mean and the spread: one run per arm cannot tell the
/// effects asked about from run-to-run noise. Arms resume from their last save, so an
/// interrupted report is finished by running the same command again.
pub fn side_runs_over_seeds(o: &RecipeOptions, seeds: usize) -> Result<()> {
    use whale_plot::{save_png, Chart};
    if seeds == 0 {
        anyhow::bail!("--seeds must be positive");
    }
    let t0 = Instant::now();
    let mut tc = TrainConfig::parse(TINY_R1_CONFIG)?;
    std::fs::create_dir_all(&o.out)?;
    let arms = ["balanced-f32", "unbalanced-f32", "balanced-fp8"];
    let mut runs: Vec<Vec<(String, Summary)>> = vec![];
    for seed in 1..=seeds as u64 {
        eprintln!(
            "[side runs {:>5.0}s] seed {seed} of {seeds}",
            t0.elapsed().as_secs_f64()
        );
        tc.train.seed = seed;
        runs.push(side_runs(
            &tc,
            &o.work.join(format!("seed-{seed}")),
            o.progress,
        )?);
    }
    let get = |r: &[(String, Summary)], arm: &str| -> Summary {
        r.iter()
            .find(|x| x.0 == arm)
            .expect("every arm ran")
            .1
            .clone()
    };
    let stats = |v: &[f64]| -> (f64, f64) {
        let n = v.len() as f64;
        let m = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
        (m, var.sqrt())
    };
    let column = |arm: &str, f: fn(&Summary) -> f64| -> Vec<f64> {
        runs.iter().map(|r| f(&get(r, arm))).collect()
    };
    let mut s = String::new();
    writeln!(s, "# Side runs over {seeds} seeds

`whale recipe side-runs --seeds {seeds}`: the tiny-r1 model and task mix pretrained for {SIDE_STEPS} steps (the length of its SFT run) with the loss on every token as V3's pretraining has it, three arms per seed (bias balancing with gamma {SIDE_GAMMA}; gamma 0 and no auxiliary loss; gamma {SIDE_GAMMA} through simulated FP8). Training loss and MaxVio: means over the last 10% of steps; validation loss: the final weights on the seed's fixed batch of {} examples, on every token and on the responses alone. {:.0} s wall.
", crate::pretrain::VALIDATION_EXAMPLES, t0.elapsed().as_secs_f64())?;
    writeln!(s, "| seed | arm | final MaxVio | final training loss | validation loss | validation loss, responses |\n|---|---|---|---|---|---|")?;
    for (i, r) in runs.iter().enumerate() {
        for arm in arms {
            let x = get(r, arm);
            writeln!(
                s,
                "| {} | {arm} | {:.3} | {:.4} | {:.4} | {:.4} |",
                i + 1,
                x.final_max_vio,
                x.final_loss,
                x.val_loss,
                x.val_response_loss
            )?;
        }
    }
    writeln!(s, "\n| arm | MaxVio mean +- sd | training loss mean +- sd | validation loss mean +- sd |\n|---|---|---|---|")?;
    let mut means = serde_json::Map::new();
    for arm in arms {
        let (v, l, val) = (
            stats(&column(arm, |x| x.final_max_vio)),
            stats(&column(arm, |x| x.final_loss)),
            stats(&column(arm, |x| x.val_loss)),
        );
        writeln!(
            s,
            "| {arm} | {:.3} +- {:.3} | {:.4} +- {:.4} | {:.4} +- {:.4} |",
            v.0, v.1, l.0, l.1, val.0, val.1
        )?;
        means.insert(
            arm.into(),
            json!({"max_vio": v, "train_loss": l, "val_loss": val}),
        );
    }
    // paired differences: the arms of one seed share initial weights, data order and validation set
    let paired = |a: &str, b: &str, f: fn(&Summary) -> f64| -> Vec<f64> {
        runs.iter()
            .map(|r| 100.0 * (f(&get(r, a)) / f(&get(r, b)) - 1.0))
            .collect()
    };
    let fp8_val = stats(&paired("balanced-fp8", "balanced-f32", |x| x.val_loss));
    let bal_val = stats(&paired("balanced-f32", "unbalanced-f32", |x| x.val_loss));
    let fp8_resp = stats(&paired("balanced-fp8", "balanced-f32", |x| {
        x.val_response_loss
    }));
    let bal_resp = stats(&paired("balanced-f32", "unbalanced-f32", |x| {
        x.val_response_loss
    }));
    let vio = stats(&paired("balanced-f32", "unbalanced-f32", |x| {
        x.final_max_vio
    }));
    writeln!(s, "\nPaired over seeds (mean +- sd of the per-seed relative difference; validation loss on every token, then on the responses):\n\n- FP8 vs f32: {:+.2}% +- {:.2}%; responses {:+.2}% +- {:.2}%\n- balanced vs unbalanced: {:+.2}% +- {:.2}%; responses {:+.2}% +- {:.2}%\n- balanced vs unbalanced MaxVio: {:+.1}% +- {:.1}%\n\n![side runs](side-runs.png)", fp8_val.0, fp8_val.1, fp8_resp.0, fp8_resp.1, bal_val.0, bal_val.1, bal_resp.0, bal_resp.1, vio.0, vio.1)?;
    // curves: the mean over seeds of each arm's smoothed series
    let mean_series = |arm: &str, key: &str| -> Result<Vec<(f64, f64)>> {
        let all: Vec<Vec<(f64, f64)>> = (1..=seeds)
            .map(|k| {
                let rows = read_jsonl(
                    &o.work
                        .join(format!("seed-{k}"))
                        .join(arm)
                        .join("metrics.jsonl"),
                )?;
                Ok(series(&rows, key, 10))
            })
            .collect::<Result<_>>()?;
        let n = all.iter().map(|v| v.len()).min().unwrap_or(0);
        Ok((0..n)
            .map(|i| {
                (
                    all[0][i].0,
                    all.iter().map(|v| v[i].1).sum::<f64>() / seeds as f64,
                )
            })
            .collect())
    };
    let vio_chart = Chart::new(
        "MaxVio (mean over seeds)",
        "step",
        "max load / mean load - 1",
    )
    .line(
        format!("gamma {SIDE_GAMMA}"),
        mean_series("balanced-f32", "max_vio")?,
    )
    .line(
        "gamma 0, no aux loss",
        mean_series("unbalanced-f32", "max_vio")?,
    );
    let loss_chart = Chart::new("training loss (mean over seeds)", "step", "cross-entropy")
        .line("f32, gamma > 0", mean_series("balanced-f32", "loss")?)
        .line("f32, gamma 0", mean_series("unbalanced-f32", "loss")?)
        .line("FP8, gamma > 0", mean_series("balanced-fp8", "loss")?)
        .log_y();
    save_png(
        &o.out.join("side-runs.png"),
        &[vio_chart, loss_chart],
        1000,
        400,
    )?;
    std::fs::write(o.out.join("README.md"), &s)?;
    let figures = json!({
        "seeds": seeds, "steps": SIDE_STEPS, "gamma": SIDE_GAMMA, "means": means,
        "paired_pct": {"fp8_vs_f32_val": fp8_val, "balanced_vs_unbalanced_val": bal_val, "fp8_vs_f32_val_responses": fp8_resp, "balanced_vs_unbalanced_val_responses": bal_resp, "balanced_vs_unbalanced_max_vio": vio},
        "runs": runs.iter().map(|r| r.iter().map(|(n, x)| json!({"run": n, "summary": x})).collect::<Vec<_>>()).collect::<Vec<_>>(),
    });
    std::fs::write(
        o.out.join("report.json"),
        serde_json::to_string_pretty(&figures)?,
    )?;
    println!("{s}");
    Ok(())
}

fn plot_accuracy(before: &[EvalReport], after: &[EvalReport], out: &Path) -> Result<()> {
    use whale_plot::{save_png, Chart};
    let pts = |r: &[EvalReport]| -> Vec<(f64, f64)> {
        r.iter()
            .enumerate()
            .map(|(i, e)| (i as f64, e.greedy_pass1))
            .collect()
    };
    let c = Chart::new(
        &format!("greedy pass@1 by task ({})", EVAL_TASKS.join(", ")),
        "task index",
        "accuracy",
    )
    .line("after SFT", pts(before))
    .line("after GRPO (shipped)", pts(after));
    save_png(&out.join("accuracy.png"), &[c], 800, 400)
}

#[allow(clippy::too_many_arguments)]
fn report_card(
    sft: &Summary,
    rl: &crate::grpo::GrpoSummary,
    before: &[EvalReport],
    after: &[EvalReport],
    mtp: &MtpCheck,
    timings: &[(&str, f64)],
    wall: f64,
    tc: &TrainConfig,
) -> Result<String> {
    let mut s = String::new();
    let m = tc.model_config()?;
    let moe = m.moe.as_ref();
    writeln!(s, "# tiny-r1: the bundled reasoning model\n")?;
    writeln!(s, "Made by `whale recipe tiny-r1 --out models/tiny-r1` in {:.1} minutes on this machine (seeded: the same command reproduces these figures within noise). DeepSeek-V3's architecture at toy size: {} layers (first dense), hidden {}, MLA (q rank {:?}, kv rank {}, rope dims {}), {} routed experts + {} shared, top-{} in {} groups (keep {}), sigmoid router with `e_score_correction_bias`, one MTP module; {} trained parameters. Weights are bf16.\n",
        wall / 60.0, m.num_hidden_layers, m.hidden_size, m.q_lora_rank, m.kv_lora_rank, m.qk_rope_head_dim,
        moe.map_or(0, |x| x.n_routed_experts), moe.map_or(0, |x| x.n_shared_experts), moe.map_or(0, |x| x.num_experts_per_tok),
        moe.map_or(0, |x| x.n_group), moe.map_or(0, |x| x.topk_group), sft.params)?;
    writeln!(s, "## Stages\n\n| stage | seconds |\n|---|---|")?;
    for (n, t) in timings {
        writeln!(s, "| {n} | {t:.0} |")?;
    }
    writeln!(s, "\nSFT: {} steps, {} training tokens at {:.0} tokens/s, final loss {:.4}, next-next-token (MTP) accuracy {:.1}%.\n",
        sft.steps, sft.tokens, sft.tokens_per_second, sft.final_loss, 100.0 * sft.final_mtp_accuracy.unwrap_or(0.0))?;
    writeln!(
        s,
        "![SFT loss](sft-loss.png)\n\n![expert load](sft-balance.png)\n"
    )?;
    writeln!(
        s,
        "## Accuracy on held-out problems ({} each, never seen in training)\n",
        EVAL_N
    )?;
    writeln!(s, "After SFT:\n\n{}", EvalReport::table(before))?;
    writeln!(
        s,
        "After GRPO on {} prompts (the shipped model):\n\n{}",
        RL_TASKS.join(" + "),
        EvalReport::table(after)
    )?;
    writeln!(s, "pass@1 T is the mean over {SAMPLES} samples at temperature 0.6; maj@K and pass@K use the same samples.\n\n![accuracy](accuracy.png)\n")?;
    writeln!(s, "## GRPO\n\n{} steps, {} prompts x {} samples, rewards: 1 for a correct answer + {} for the format. Training-sample reward {:.3} -> {:.3}, accuracy {:.3} -> {:.3} (first vs last fifth of the steps).\n\n![GRPO curves](rl.png)\n",
        rl.steps, rl_config().prompts, rl_config().group, rl_config().format_reward, rl.first_reward, rl.last_reward, rl.first_accuracy, rl.last_accuracy)?;
    writeln!(s, "## Bias balancing and FP8\n\nThe pretraining comparisons (auxiliary-loss-free balancing on/off, simulated FP8 vs f32) are their own command over several seeds, `whale recipe side-runs`: see [docs/side-runs](../../docs/side-runs/README.md). The expert load of the SFT run above is balanced by the same bias (gamma {}).\n", tc.train.bias_update_speed)?;
    writeln!(s, "## MTP\n\nThe MTP module predicts the token after next with {:.1}% accuracy on training text. Engine speculative decoding with it on {} held-out add3 questions: {} of {} greedy outputs identical to plain decoding, {:.1}% of drafts accepted.\n",
        100.0 * sft.final_mtp_accuracy.unwrap_or(0.0), mtp.prompts, mtp.identical, mtp.prompts, 100.0 * mtp.acceptance)?;
    Ok(s)
}
