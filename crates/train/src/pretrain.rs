//! `whale train`: pretraining / SFT of the V3 architecture from a config file. AdamW with a
//! schedule and clipping, auxiliary-loss-free bias balancing, optional sequence-wise balance
//! loss, MTP, simulated FP8; seeded, resumable; JSONL metrics and PNG plots.

use crate::config::TrainConfig;
use crate::data::{example, Batch, History, TaskMix};
use crate::metrics::{read_jsonl, series, JsonlLog};
use crate::model::masked_cross_entropy;
use crate::optim::{clip_grad_norm, AdamW, LrSchedule};
use crate::{Options, Store, TrainModel};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor, D};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::Rng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::Path;
use std::time::Instant;
use whale_engine::tokenizer::ChatTokenizer;
use whale_model::ModelConfig;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TrainerState {
    pub step: usize,
    pub tokens: u64,
    pub seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub steps: usize,
    pub params: usize,
    /// mean over the last 10% of steps
    pub final_loss: f64,
    pub final_max_vio: f64,
    pub final_mtp_accuracy: Option<f64>,
    /// cross-entropy of the final weights on a fixed batch of VALIDATION_EXAMPLES examples (the
    /// same for every run of one config and seed, computed with the run's own numerics), so two
    /// runs compare without batch-to-batch noise
    pub val_loss: f64,
    /// the same on the response tokens only (equal to `val_loss` for SFT)
    pub val_response_loss: f64,
    pub tokens: u64,
    pub seconds: f64,
    pub tokens_per_second: f64,
}

/// Everything a checkpoint directory needs besides the weights.
pub fn write_model_files(cfg: &ModelConfig, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let mut hub = cfg.to_hub_json();
    hub["architectures"] = json!(["DeepseekV3ForCausalLM"]);
    hub["torch_dtype"] = json!("float32");
    std::fs::write(out.join("config.json"), serde_json::to_string_pretty(&hub)?)?;
    let gen = json!({"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_ids.first()});
    std::fs::write(
        out.join("generation_config.json"),
        serde_json::to_string_pretty(&gen)?,
    )?;
    Ok(())
}

/// What a run trains on: worked solutions of a task mix, or fixed (question, response) traces
/// (distillation), which come with the teacher's tokenizer.
pub enum Data<'a> {
    Tasks(TaskMix),
    Traces {
        traces: &'a [(String, String)],
        tokenizer_from: &'a Path,
    },
}

impl Data<'_> {
    /// One conversation: with probability `multi_turn`, one or two earlier turns (drawn from the
    /// same data) before the question whose response is trained on.
    fn conversation(&self, rng: &mut StdRng, multi_turn: f64) -> (History, String, String) {
        let mut history = vec![];
        if multi_turn > 0.0 && rng.gen::<f64>() < multi_turn {
            for _ in 0..rng.gen_range(1..=2) {
                let (q, r) = self.sample(rng);
                // the answer after `</think>`, as the R1 template sends an earlier turn
                let answer = whale_tasks::answer_part(&r).unwrap_or(r.trim()).to_string();
                history.push((q, answer));
            }
        }
        let (q, r) = self.sample(rng);
        (history, q, r)
    }

    fn sample(&self, rng: &mut StdRng) -> (String, String) {
        match self {
            Data::Tasks(mix) => {
                let (task, p) = mix.sample(rng);
                (p.question.clone(), task.solve(p))
            }
            Data::Traces { traces, .. } => {
                let (q, r) = &traces[rng.gen_range(0..traces.len())];
                (q.clone(), r.clone())
            }
        }
    }
}

/// Trains per `tc` into `out`; with `resume`, continues from the state saved there.
pub fn run(tc: &TrainConfig, out: &Path, resume: bool, progress: bool) -> Result<Summary> {
    let mix = TaskMix::new(&tc.data.tasks, tc.train.seed)?;
    run_on(tc, &Data::Tasks(mix), out, resume, progress)
}

pub fn run_on(
    tc: &TrainConfig,
    data: &Data,
    out: &Path,
    resume: bool,
    progress: bool,
) -> Result<Summary> {
    let mut cfg = tc.model_config()?;
    // the task tokenizer puts BOS and EOS at ids 0 and 1
    cfg.bos_token_id = Some(0);
    cfg.eos_token_ids = vec![1];
    let t = &tc.train;
    let state_path = out.join("trainer_state.json");
    let resuming = resume && state_path.exists();
    if resume && !resuming {
        bail!("--resume: {} has no trainer_state.json", out.display());
    }
    let (store, mut opt, mut state) = if resuming {
        let state: TrainerState = serde_json::from_str(&std::fs::read_to_string(&state_path)?)
            .context("trainer_state.json is corrupt")?;
        let store = Store::load(out, &cfg, DType::F32)?;
        let mut opt = AdamW::new(t.weight_decay);
        opt.load(&out.join("optimizer.safetensors"), DType::F32)?;
        (store, opt, state)
    } else {
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        match data {
            Data::Tasks(mix) => {
                let tok = crate::tokenizer::train(&mix.corpus(3000), cfg.vocab_size)?;
                crate::tokenizer::save(&tok, out, cfg.max_position_embeddings)?;
                crate::data::write_sources(out, &mix.sources)?;
            }
            Data::Traces {
                traces,
                tokenizer_from,
            } => {
                if traces.is_empty() {
                    bail!("no traces to train on");
                }
                for f in [
                    "tokenizer.json",
                    "tokenizer_config.json",
                    "training_data.json",
                ] {
                    if tokenizer_from.join(f).exists() {
                        std::fs::copy(tokenizer_from.join(f), out.join(f))?;
                    }
                }
            }
        }
        write_model_files(&cfg, out)?;
        let store = Store::init(&cfg, t.seed, DType::F32)?;
        (store, AdamW::new(t.weight_decay), TrainerState::default())
    };
    std::fs::write(out.join("train_config.toml"), toml::to_string(tc)?)?;
    let tok = ChatTokenizer::load(out)?;
    let model = TrainModel::new(cfg.clone(), store)?;
    let sched = LrSchedule {
        lr: t.lr,
        min_lr: t.min_lr,
        warmup: t.warmup,
        steps: t.steps,
        schedule: t.schedule,
        decay_frac: t.decay_frac,
    };
    let opts = Options {
        fp8: t.fp8,
        balance_alpha: t.balance_alpha,
        mtp: t.mtp_lambda > 0.0,
    };
    let log_path = out.join("metrics.jsonl");
    if resuming {
        // a run stopped after its last save logged steps the resumed run does again
        let kept: String = read_jsonl(&log_path)?
            .iter()
            .filter(|r| r["step"].as_u64().is_some_and(|s| s <= state.step as u64))
            .map(|r| format!("{r}\n"))
            .collect();
        std::fs::write(&log_path, kept)?;
    }
    let mut log = JsonlLog::open(&log_path, resuming)?;
    let bar = if progress {
        ProgressBar::new(t.steps as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("train [{bar:30}] {pos}/{len} {msg} ({eta})")?
            .progress_chars("=> "),
    );
    bar.set_position(state.step as u64);
    let bias_names = moe_bias_names(&cfg, opts.mtp);
    let t0 = Instant::now();
    let seconds_before = state.seconds;
    let stop = t.stop_at.unwrap_or(t.steps).min(t.steps);
    while state.step < stop {
        let step = state.step;
        let mut rng =
            StdRng::seed_from_u64(t.seed.wrapping_mul(1_000_003).wrapping_add(step as u64));
        let examples = (0..t.batch_size)
            .map(|_| {
                let (h, q, r) = data.conversation(&mut rng, t.multi_turn);
                example(&tok, &h, &q, &r, 1)
            })
            .collect::<Result<Vec<_>>>()?;
        let batch = Batch::new(&examples, t.response_only, 2);
        let ts = Instant::now();
        let r = train_step(&model, &batch, opts, t.mtp_lambda)?;
        let lr = sched.at(step);
        let tf = ts.elapsed().as_secs_f64();
        let mut grads = r.loss.backward()?;
        let tb = ts.elapsed().as_secs_f64();
        let grad_norm = clip_grad_norm(
            model.store.trainable().map(|(_, v)| v),
            &mut grads,
            t.grad_clip,
        )?;
        opt.step(model.store.trainable(), &grads, lr)?;
        let max_vio = update_biases(&model.store, &bias_names, &r.loads, t.bias_update_speed)?;
        let dt = ts.elapsed().as_secs_f64();
        if std::env::var_os("WHALE_TIMING").is_some() {
            eprintln!(
                "fwd {tf:.3} bwd {:.3} opt {:.3} S {} real {} of {}",
                tb - tf,
                dt - tb,
                batch.inputs[0].len(),
                batch.tokens(),
                batch.inputs.len() * batch.inputs[0].len()
            );
        }
        state.step += 1;
        state.tokens += batch.tokens() as u64;
        state.seconds = seconds_before + t0.elapsed().as_secs_f64();
        let row = json!({
            "step": state.step, "loss": r.ce, "mtp_loss": r.mtp_loss, "mtp_accuracy": r.mtp_acc,
            "token_accuracy": r.acc, "balance_loss": r.balance, "lr": lr, "grad_norm": grad_norm,
            "max_vio": (max_vio.iter().sum::<f64>() / max_vio.len().max(1) as f64).max(0.0),
            "max_vio_layers": max_vio, "loads": r.loads,
            "tokens": state.tokens, "tokens_per_second": batch.tokens() as f64 / dt,
        });
        log.write(&row)?;
        bar.set_message(format!(
            "loss {:.3} acc {:.3} vio {:.2}",
            r.ce,
            r.acc,
            row["max_vio"].as_f64().unwrap_or(0.0)
        ));
        bar.inc(1);
        if state.step % t.save_every == 0 || state.step == stop {
            save(&model, &opt, &state, out)?;
        }
    }
    bar.finish_and_clear();
    let (val_loss, val_response_loss) = validation_loss(&model, data, &tok, t, opts)?;
    plot(out)?;
    let rows = read_jsonl(&out.join("metrics.jsonl"))?;
    let tail = (rows.len() / 10).max(1);
    let mean = |k: &str| -> Option<f64> {
        let v: Vec<f64> = rows[rows.len() - tail..]
            .iter()
            .filter_map(|r| r.get(k)?.as_f64())
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    Ok(Summary {
        steps: state.step,
        params: model.store.num_params(),
        final_loss: mean("loss").unwrap_or(f64::NAN),
        final_max_vio: mean("max_vio").unwrap_or(0.0),
        final_mtp_accuracy: mean("mtp_accuracy"),
        val_loss,
        val_response_loss,
        tokens: state.tokens,
        seconds: state.seconds,
        tokens_per_second: state.tokens as f64 / state.seconds.max(1e-9),
    })
}

/// Examples in the fixed validation batch.
pub const VALIDATION_EXAMPLES: usize = 512;

/// Token-weighted cross-entropy on VALIDATION_EXAMPLES examples drawn with a seed no training
/// step uses: on the run's own objective, and on the response tokens only.
fn validation_loss(
    model: &TrainModel,
    data: &Data,
    tok: &ChatTokenizer,
    t: &crate::config::TrainSettings,
    opts: Options,
) -> Result<(f64, f64)> {
    let mut rng = StdRng::seed_from_u64(t.seed ^ 0x7a11_da7e_0000_0000);
    let examples = (0..VALIDATION_EXAMPLES)
        .map(|_| {
            let (h, q, r) = data.conversation(&mut rng, t.multi_turn);
            example(tok, &h, &q, &r, 1)
        })
        .collect::<Result<Vec<_>>>()?;
    // [objective, response only]: (sum of token losses, tokens)
    let mut sums = [(0f64, 0f64); 2];
    for part in examples.chunks(t.batch_size.max(1)) {
        let objective = Batch::new(part, t.response_only, 2);
        let response = Batch::new(part, true, 2);
        let out = model.forward(
            &objective.inputs,
            &objective.lens,
            Options {
                balance_alpha: 0.0,
                mtp: false,
                ..opts
            },
        )?;
        for (b, (sum, n)) in [&objective, &response].into_iter().zip(sums.iter_mut()) {
            let (loss, count) = masked_cross_entropy(&out.logits, &b.targets, &b.weights)?;
            *sum += loss.to_dtype(DType::F64)?.to_scalar::<f64>()? * count as f64;
            *n += count as f64;
        }
    }
    let [a, r] = sums.map(|(sum, n)| sum / n.max(1.0));
    Ok((a, r))
}

pub struct StepResult {
    pub loss: Tensor,
    pub ce: f64,
    pub acc: f64,
    pub mtp_loss: Option<f64>,
    pub mtp_acc: Option<f64>,
    pub balance: f64,
    pub loads: Vec<Vec<f32>>,
}

/// Forward pass and losses of one batch: cross-entropy + lambda * MTP + balance.
pub fn train_step(
    model: &TrainModel,
    b: &Batch,
    opts: Options,
    mtp_lambda: f64,
) -> Result<StepResult> {
    let out = model.forward(&b.inputs, &b.lens, opts)?;
    let (ce, _) = masked_cross_entropy(&out.logits, &b.targets, &b.weights)?;
    let acc = accuracy(&out.logits, &b.targets, &b.weights)?;
    let mut loss = (&ce + &out.balance_loss)?;
    let (mut mtp_loss, mut mtp_acc) = (None, None);
    if let Some(ml) = &out.mtp_logits {
        // row i of the MTP logits predicts input token i+2 = target i+1
        let t2: Vec<Vec<u32>> = b.targets.iter().map(|r| r[1..].to_vec()).collect();
        let w2: Vec<Vec<f32>> = b.weights.iter().map(|r| r[1..].to_vec()).collect();
        let (l, _) = masked_cross_entropy(ml, &t2, &w2)?;
        mtp_acc = Some(accuracy(ml, &t2, &w2)?);
        mtp_loss = Some(l.to_dtype(DType::F64)?.to_scalar::<f64>()?);
        loss = (loss + (l * mtp_lambda)?)?;
    }
    Ok(StepResult {
        ce: ce.to_dtype(DType::F64)?.to_scalar()?,
        balance: out.balance_loss.to_dtype(DType::F64)?.to_scalar()?,
        loss,
        acc,
        mtp_loss,
        mtp_acc,
        loads: out.loads,
    })
}

/// Share of weighted positions whose argmax is the target.
pub fn accuracy(logits: &Tensor, targets: &[Vec<u32>], weights: &[Vec<f32>]) -> Result<f64> {
    let am: Vec<u32> = logits.argmax(D::Minus1)?.flatten_all()?.to_vec1()?;
    let (mut hit, mut n) = (0usize, 0usize);
    for (i, (t, w)) in targets
        .iter()
        .flatten()
        .zip(weights.iter().flatten())
        .enumerate()
    {
        if *w > 0.0 {
            n += 1;
            hit += (am[i] == *t) as usize;
        }
    }
    Ok(hit as f64 / n.max(1) as f64)
}

/// The MoE layers' bias tensor names in the order `forward` reports loads.
pub fn moe_bias_names(cfg: &ModelConfig, mtp: bool) -> Vec<String> {
    let mut v: Vec<usize> = (0..cfg.num_hidden_layers)
        .filter(|&i| cfg.is_moe_layer(i))
        .collect();
    if mtp && cfg.moe.is_some() {
        v.extend((0..cfg.num_nextn_predict_layers.min(1)).map(|k| cfg.num_hidden_layers + k));
    }
    v.into_iter()
        .map(|i| format!("model.layers.{i}.mlp.gate.e_score_correction_bias"))
        .collect()
}

/// Spec §4.1: b_i += gamma * sign(mean load - load_i) after each step. Returns each layer's
/// MaxVio (max load / mean load - 1) for the batch, measured before the update.
pub fn update_biases(
    store: &Store,
    names: &[String],
    loads: &[Vec<f32>],
    gamma: f64,
) -> Result<Vec<f64>> {
    let mut vio = vec![];
    for (name, load) in names.iter().zip(loads) {
        let mean = load.iter().sum::<f32>() / load.len() as f32;
        let max = load.iter().cloned().fold(0f32, f32::max);
        vio.push(if mean > 0.0 {
            (max / mean - 1.0) as f64
        } else {
            0.0
        });
        if gamma > 0.0 {
            if let Some(var) = store.vars.get(name) {
                let step: Vec<f32> = load
                    .iter()
                    .map(|&l| gamma as f32 * sign(mean - l))
                    .collect();
                let delta =
                    Tensor::from_vec(step, load.len(), var.device())?.to_dtype(var.dtype())?;
                var.set(&(var.as_tensor() + delta)?)?;
            }
        }
    }
    Ok(vio)
}

/// -1, 0 or 1 (f32::signum gives 1 for 0, which would move the bias of a balanced expert).
fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

fn save(model: &TrainModel, opt: &AdamW, state: &TrainerState, out: &Path) -> Result<()> {
    model.store.save(&model.cfg, out, DType::F32)?;
    opt.save(&out.join("optimizer.safetensors"))?;
    std::fs::write(
        out.join("trainer_state.json"),
        serde_json::to_string_pretty(state)?,
    )?;
    Ok(())
}

/// loss.png (loss, MTP loss) and balance.png (MaxVio) from metrics.jsonl.
pub fn plot(out: &Path) -> Result<()> {
    use whale_plot::{save_png, Chart};
    let rows = read_jsonl(&out.join("metrics.jsonl"))?;
    let w = (rows.len() / 50).max(1);
    let mut loss = Chart::new("training loss", "step", "cross-entropy")
        .line("next token", series(&rows, "loss", w));
    let mtp = series(&rows, "mtp_loss", w);
    if !mtp.is_empty() {
        loss = loss.line("MTP (token after next)", mtp);
    }
    let acc = Chart::new("token accuracy", "step", "accuracy")
        .line("next token", series(&rows, "token_accuracy", w))
        .line("MTP", series(&rows, "mtp_accuracy", w));
    save_png(&out.join("loss.png"), &[loss, acc], 1000, 400)?;
    let vio = Chart::new("expert load balance", "step", "MaxVio (max/mean - 1)")
        .line("mean over MoE layers", series(&rows, "max_vio", w));
    save_png(&out.join("balance.png"), &[vio], 700, 400)?;
    Ok(())
}
